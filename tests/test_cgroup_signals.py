"""Signalling a cgroup's members never reaches a process that only inherited a member's pid."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Iterator

import pytest

from agentd.cgroups.base import signal_members


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        yield process
    finally:
        process.kill()
        process.wait()


def test_a_pid_that_left_the_group_before_it_was_pinned_is_not_signalled(
        sleeper: subprocess.Popen[bytes]) -> None:
    # The race: the group listed this pid, then its member exited and the number went to an
    # unrelated process (here: the sleeper, never in any group). The second listing no longer
    # has it, so the process the pidfd pinned must be left alone.
    listings = iter([[sleeper.pid], []])
    assert signal_members(lambda: next(listings), signal.SIGKILL) == 0
    assert sleeper.poll() is None


def test_a_member_still_listed_is_signalled_through_its_pidfd(sleeper: subprocess.Popen[bytes]) -> None:
    assert signal_members(lambda: [sleeper.pid], signal.SIGKILL) == 1
    assert sleeper.wait(timeout=30) == -signal.SIGKILL

