"""Real cgroup v1 managers for tests, in subtrees named uniquely for this run, removed
afterwards (with anything left in them killed) even when the test fails."""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from agentd.cgroups.base import CgroupManager, stat_field
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


def agent_cgroups(data_dir: Path) -> CgroupManager:
    """The cgroup manager an agent process with ``data_dir`` uses (as ``Agent`` names its subtree)."""
    digest = hashlib.sha256(str(data_dir.resolve()).encode()).hexdigest()[:8]
    return detect_cgroups(base_name=f"tanvrit-agentd-{digest}")


class MemoryTruth:
    """Ground truth for GB-seconds, independent of the agent's meter: a job's v1 cgroup read
    every ``period`` seconds (``memory.usage_in_bytes - total_inactive_file``, the working
    set) and integrated with the trapezoid rule from the group's creation to its removal. It
    only reads (the peak counter the meter resets is never touched)."""

    def __init__(self, manager: CgroupManager, name: str, period: float = 0.01) -> None:
        self._manager = manager
        self._name = name
        self._period = period
        self.gb_seconds = 0.0
        self.peak_bytes = 0
        self.readings = 0
        self._directory: Path | None = None
        self._last: tuple[float, int] | None = None
        self._ended = False

    def _memory_dir(self) -> Path | None:
        group = self._manager.open(self._name)
        if group is None:
            return None
        for procs in group.procs_files:
            if (procs.parent / "memory.usage_in_bytes").exists():
                return procs.parent
        return None

    @staticmethod
    def _working_set(directory: Path) -> int | None:
        try:
            usage = int((directory / "memory.usage_in_bytes").read_text())
            stat = (directory / "memory.stat").read_text()
        except (OSError, ValueError):
            return None
        return max(0, usage - stat_field(stat, "total_inactive_file"))

    def step(self) -> bool:
        """Take one reading; False once the group has been removed (or has not appeared)."""
        if self._directory is None:
            self._directory = self._memory_dir()
            if self._directory is None:
                return not self._ended
        current = self._working_set(self._directory)
        if current is None:
            self._ended = True
            return False
        now = time.monotonic()
        if self._last is not None:
            self.gb_seconds += (now - self._last[0]) * (self._last[1] + current) / 2 / 2**30
        self._last = (now, current)
        self.peak_bytes = max(self.peak_bytes, current)
        self.readings += 1
        return True

    async def run(self, *, appear_within: float = 60.0) -> None:
        """Integrate until the group is removed (wait up to ``appear_within`` s for it first)."""
        with trio.move_on_after(appear_within):
            while self._memory_dir() is None:  # noqa: ASYNC110 (a directory has no event)
                await trio.sleep(self._period / 2)
        if self._memory_dir() is None:
            raise AssertionError(f"cgroup {self._name} never appeared")
        while self.step():  # noqa: ASYNC110 (a cgroup's removal has no event)
            await trio.sleep(self._period)

    @contextlib.contextmanager
    def in_thread(self) -> Iterator[MemoryTruth]:
        """Integrate in a thread (for tests that block) until the group is removed; joined on exit."""
        stop = threading.Event()

        def loop() -> None:
            while not stop.is_set() and self.step():
                time.sleep(self._period)

        thread = threading.Thread(target=loop, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            thread.join(timeout=30)
            stop.set()
            thread.join()
