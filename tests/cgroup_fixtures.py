"""Real cgroup v1 managers for tests, in subtrees named uniquely for this run, removed
afterwards (with anything left in them killed) even when the test fails."""

from __future__ import annotations

import hashlib
import os
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from agentd.cgroups.detect import detect_cgroups
from agentd.cgroups.v1 import V1Manager
from tests.procs import wait_for


def remove_v1_subtree(manager: V1Manager) -> None:
    """Kill whatever is left in the manager's job groups, then remove its whole subtree."""
    for name in manager.job_names():
        group = manager.open(name)
        if group is not None:
            def emptied(group=group) -> bool:  # type: ignore[no-untyped-def]
                group.signal(signal.SIGKILL)
                return not group.pids()
            wait_for(emptied, message=f"cgroup {name} to empty")
    manager.remove_base()


def real_v1_manager() -> Iterator[V1Manager]:
    if os.geteuid() != 0:
        pytest.skip("cgroup v1 tests need root (cgroupfs is not writable for this user)")
    manager = detect_cgroups(base_name=f"tanvrit-test-{uuid.uuid4().hex[:10]}")
    if not isinstance(manager, V1Manager):
        pytest.skip(f"no writable cgroup v1 hierarchies here: {getattr(manager, 'reason', manager.kind)}")
    try:
        yield manager
    finally:
        remove_v1_subtree(manager)


def cleanup_agent_cgroups(data_dir: Path) -> None:
    """Remove the subtree an agent process with ``data_dir`` uses (as ``Agent`` names it)."""
    if os.geteuid() != 0:
        return
    digest = hashlib.sha256(str(data_dir.resolve()).encode()).hexdigest()[:8]
    manager = detect_cgroups(base_name=f"tanvrit-agentd-{digest}")
    if isinstance(manager, V1Manager):
        remove_v1_subtree(manager)
