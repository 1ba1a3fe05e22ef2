"""The cgroup interface the executor and metering use, and the filesystem editor under it.

A job's life in its cgroup::

    manager.create(name, limits) ─▶ JobCgroup ─ procs_files ─▶ the job writes its own pid
          │                            │                         there before it execs
          │                            ├─ sample()      cumulative CPU, working set now, peak
          │                            ├─ signal(sig)   every process in the group
          │                            ├─ pids()/empty  what still lives there
          │                            └─ oom_killed()  did the kernel OOM-kill in it
          └─ manager.open(name) (a restarted agent re-adopts) ─▶ JobCgroup ─▶ remove()

    manager.sweep(keep) at start: what an earlier life of this agent left (killed, removed)
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

NVIDIA_MAJOR = 195


class CgroupError(Exception):
    """A cgroup could not be created or configured."""


@dataclass(frozen=True)
class Limits:
    """What a job may use; ``None`` means no limit of that kind."""

    memory_bytes: int | None = None
    cpus: float | None = None
    pids: int | None = None
    # Character devices (major, minor) the job must not open, e.g. GPUs given to other jobs.
    denied_devices: tuple[tuple[int, int], ...] = ()


@dataclass(frozen=True)
class Sample:
    """One reading of a group.

    ``memory_bytes`` is the working set now: memory in use minus the inactive file cache (as
    the kubelet and cAdvisor define it), the same on v1 and v2, so a job is not billed for
    page cache the kernel can drop at will. ``peak_bytes`` is the peak of memory *in use*
    (cache included) since the previous reading, or, with ``peak_is_lifetime``, since the
    group was created (cgroup v2 ``memory.peak`` cannot be reset by a new reader); None where
    the kernel does not say. ``inactive_file_bytes`` is the cache now, for estimating the
    working set at that peak."""

    cpu_seconds: float
    memory_bytes: int
    peak_bytes: int | None = None
    peak_is_lifetime: bool = False
    inactive_file_bytes: int = 0


def stat_field(text: str, key: str) -> int:
    """One counter of a ``memory.stat``-style file (``key value`` lines); 0 if absent."""
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name == key:
            return int(value)
    return 0


class CgroupFs:
    """Reads and writes cgroupfs files below ``root`` (paths are relative to it)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, rel: str) -> Path:
        return self.root / rel.lstrip("/")

    def exists(self, rel: str) -> bool:
        return self.path(rel).exists()

    def read(self, rel: str) -> str:
        return self.path(rel).read_text()

    def write(self, rel: str, value: str) -> None:
        with open(self.path(rel), "w") as handle:
            handle.write(value)

    def mkdir(self, rel: str) -> None:
        with contextlib.suppress(FileExistsError):
            self.path(rel).mkdir()

    def rmdir(self, rel: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.rmdir(self.path(rel))

    def children(self, rel: str) -> list[str]:
        try:
            # Not through a link: cgroupfs has none, and a tree that does must not lead elsewhere.
            return sorted(entry.name for entry in os.scandir(self.path(rel)) if entry.is_dir(follow_symlinks=False))
        except FileNotFoundError:
            return []


def read_pids(fs: CgroupFs, rel: str) -> list[int]:
    """The pids listed in a ``cgroup.procs`` file; [] if the group is gone."""
    try:
        return [int(line) for line in fs.read(rel).split()]
    except FileNotFoundError:
        return []


def find_groups(fs: CgroupFs, name: str, *, max_depth: int = 8) -> list[str]:
    """Every group called ``name`` in ``fs`` (relative paths, not looking below a match nor
    deeper than ``max_depth`` levels): where an agent's subtree of that name was left."""
    found: list[str] = []

    def walk(rel: str, depth: int) -> None:
        for child in fs.children(rel):
            path = f"{rel.rstrip('/')}/{child}"
            if child == name:
                found.append(path)
            elif depth < max_depth:
                walk(path, depth + 1)

    walk("/", 1)
    return found


def deepest_first(fs: CgroupFs, rel: str) -> list[str]:
    """``rel`` and every group below it, children before their parent: the order of removal.

    Without recursion: a job that may make groups (one running as a non-root agent's own user
    in a delegated subtree) can nest them deeper than Python's recursion limit."""
    order: list[str] = []
    pending = [rel]
    while pending:  # parents before children, reversed at the end
        group = pending.pop()
        order.append(group)
        pending.extend(f"{group}/{child}" for child in fs.children(group))
    order.reverse()
    return order


# Members pinned (a pidfd each) at once by ``signal_members``: a job may hold up to its pids
# limit (4096 by default) of processes, more open files than an agent run outside its systemd
# unit (LimitNOFILE) may have; pinned and signalled a batch at a time, a bounded number is open.
PIN_BATCH = 64


def signal_members(list_pids: Callable[[], list[int]], signum: int) -> int:
    """Send ``signum`` to each process ``list_pids()`` lists; returns how many were signalled.

    A pid read from ``cgroup.procs`` may belong to another process by the time it is signalled:
    the member exits, is reaped, and the kernel hands its number to a new process elsewhere (a
    hostile job can churn pids to aim for that). So each pid is first pinned with a pidfd, the
    group is listed again, and only the pinned processes still listed are signalled, through
    their pidfds: a pidfd names one process, never its successor. ``PIN_BATCH`` pids at a time
    (the group listed again for each batch). Where the kernel has no pidfds (before Linux 5.3)
    it falls back to ``os.kill``, race and all."""
    listed = list_pids()
    signalled = 0
    for start in range(0, len(listed), PIN_BATCH):
        pinned: dict[int, int] = {}
        try:
            for pid in listed[start:start + PIN_BATCH]:
                try:
                    pinned[pid] = os.pidfd_open(pid)
                except ProcessLookupError:
                    continue  # already gone
                except OSError as exc:
                    if exc.errno != errno.ENOSYS:
                        raise
                    return signalled + _kill_listed(list_pids(), signum)
            still_listed = set(list_pids())
            for pid, pidfd in pinned.items():
                if pid in still_listed:
                    with contextlib.suppress(ProcessLookupError):
                        signal.pidfd_send_signal(pidfd, signum)
                        signalled += 1
        finally:
            for pidfd in pinned.values():
                os.close(pidfd)
    return signalled


def _kill_listed(pids: list[int], signum: int) -> int:
    signalled = 0
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)
            signalled += 1
    return signalled


def kill_pids(fs: CgroupFs, rel: str) -> None:
    """SIGKILL every process listed in the group ``rel`` (not below it)."""
    signal_members(lambda: read_pids(fs, f"{rel}/cgroup.procs"), signal.SIGKILL)


@dataclass(frozen=True)
class Swept:
    """What ``CgroupManager.sweep`` did: the groups it removed (absolute paths) and those it
    could not (still busy after the wait, or refused), with the processes it killed."""

    removed: tuple[Path, ...] = ()
    kept_busy: tuple[Path, ...] = ()
    killed: int = 0


def kill_and_remove(groups: list[tuple[CgroupFs, str]], *, kill: Callable[[CgroupFs, str], None] = kill_pids,
                    timeout: float = 5.0) -> Swept:
    """Kill every process in ``groups`` (each a group and its subgroups, listed deepest first),
    wait up to ``timeout`` seconds for them to leave, then remove the groups in that order.

    SIGKILL cannot be ignored, so the wait is for the kernel to finish the exits; a group still
    busy after it (a process stuck in uninterruptible sleep) is left and reported, never
    waited on for longer: the agent must start."""
    killed = len({pid for fs, rel in groups for pid in read_pids(fs, f"{rel}/cgroup.procs")})
    deadline = time.monotonic() + timeout
    busy = [(fs, rel) for fs, rel in groups if read_pids(fs, f"{rel}/cgroup.procs")]
    while busy:  # signalled at least once, whatever the timeout: it bounds only the wait
        for fs, rel in busy:
            kill(fs, rel)
        if time.monotonic() >= deadline:
            break
        time.sleep(0.01)
        busy = [(fs, rel) for fs, rel in groups if read_pids(fs, f"{rel}/cgroup.procs")]
    removed: list[Path] = []
    kept: list[Path] = []
    for fs, rel in groups:
        try:
            fs.rmdir(rel)
        except OSError:
            kept.append(fs.path(rel))
        else:
            removed.append(fs.path(rel))
    return Swept(tuple(removed), tuple(kept), killed)


class JobCgroup(Protocol):
    """One job's control group (in every controller hierarchy the backend uses)."""

    name: str

    @property
    def procs_files(self) -> list[Path]:
        """Absolute ``cgroup.procs`` paths; a process joins the group by writing its pid to each."""
        ...

    def pids(self) -> list[int]:
        """Processes now in the group (empty once the job left nothing behind)."""
        ...

    def signal(self, signum: int) -> None:
        """Send ``signum`` to every process in the group (SIGKILL uses ``cgroup.kill`` where it exists)."""
        ...

    def sample(self) -> Sample | None:
        """Cumulative CPU, the working set now and the peak since the last sample (see
        ``Sample``), or None where the backend cannot measure. May reset the peak counter."""
        ...

    def oom_killed(self) -> bool:
        """True if the kernel's OOM killer killed a process of this group."""
        ...

    def remove(self) -> None:
        """Remove the group (it must be empty); never raises for a group already gone."""
        ...


class CgroupManager(Protocol):
    """Creates and finds job cgroups below the agent's own subtree."""

    kind: str  # "v2", "v1" or "none"

    def create(self, name: str, limits: Limits) -> JobCgroup:
        """A new, empty group with ``limits`` applied; raises ``CgroupError``."""
        ...

    def prepare(self) -> None:
        """Make ahead of a job what lets the next ``create`` be quicker (v1: a spare group it
        renames); nothing where that gains nothing. Blocking: call it from a worker thread."""
        ...

    def open(self, name: str) -> JobCgroup | None:
        """The existing group ``name`` (left by a previous agent process), or None."""
        ...

    def job_names(self) -> list[str]:
        """Names of the job groups that exist now."""
        ...

    def sweep(self, keep: Collection[str], *, timeout: float = 5.0) -> Swept:
        """At start, before any job runs: kill the processes in, and remove (deepest first),
        every group this agent (its subtree's name, which the data directory decides) left
        behind in an earlier life, except the job groups named in ``keep`` (the jobs it is
        about to re-adopt), wherever they are. Never touches another agent's subtree."""
        ...

    def close(self) -> None:
        """The agent is leaving with no jobs: remove what it created for itself, if it may."""
        ...
