"""A real cgroup v1 manager for tests, in a subtree named uniquely for this run, removed
afterwards (with anything left in it killed) even when the test fails."""

from __future__ import annotations

import os
import signal
import uuid
from collections.abc import Iterator

import pytest

from agentd.cgroups.detect import detect_cgroups
from agentd.cgroups.v1 import V1Manager
from tests.procs import wait_for


def real_v1_manager() -> Iterator[V1Manager]:
    if os.geteuid() != 0:
        pytest.skip("cgroup v1 tests need root (cgroupfs is not writable for this user)")
    manager = detect_cgroups(base_name=f"tanvrit-test-{uuid.uuid4().hex[:10]}")
    if not isinstance(manager, V1Manager):
        pytest.skip(f"no writable cgroup v1 hierarchies here: {getattr(manager, 'reason', manager.kind)}")
    try:
        yield manager
    finally:
        for name in manager.job_names():
            group = manager.open(name)
            if group is not None:
                def emptied(group=group) -> bool:  # type: ignore[no-untyped-def]
                    group.signal(signal.SIGKILL)
                    return not group.pids()
                wait_for(emptied, message=f"cgroup {name} to empty")
        manager.remove_base()
