"""Signalling a cgroup's members never reaches a process that only inherited a member's pid."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Iterator

import pytest

from agentd.cgroups.base import PIN_BATCH, signal_members


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



def test_more_members_than_the_agent_may_open_files_are_all_signalled() -> None:
    """A job may hold up to its pids limit (4096 by default) of processes, more than an agent
    outside its systemd unit (a soft limit of 1024 open files) can hold pidfds at once: all are
    still signalled (before: the first ``pidfd_open`` over the limit raised EMFILE, so a job
    with that many processes could be neither stopped nor killed)."""
    import os
    import resource

    members = [subprocess.Popen(["sleep", "600"]) for _ in range(3 * PIN_BATCH)]
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        # Room for a batch and a few more descriptors than are open now: fewer than the members.
        resource.setrlimit(resource.RLIMIT_NOFILE, (len(os.listdir("/proc/self/fd")) + PIN_BATCH + 10, hard))
        try:
            signalled = signal_members(lambda: [member.pid for member in members], signal.SIGKILL)
        finally:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        assert signalled == len(members)
        assert all(member.wait(timeout=30) == -signal.SIGKILL for member in members)
    finally:
        for member in members:
            member.kill()
            member.wait()
