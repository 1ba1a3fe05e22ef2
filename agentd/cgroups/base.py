"""The cgroup interface the executor and metering use, and the filesystem editor under it.

A job's life in its cgroup::

    manager.create(name, limits) ─▶ JobCgroup ─ procs_files ─▶ the job writes its own pid
          │                            │                         there before it execs
          │                            ├─ sample()      cumulative CPU, working set now, peak
          │                            ├─ signal(sig)   every process in the group
          │                            ├─ pids()/empty  what still lives there
          │                            └─ oom_killed()  did the kernel OOM-kill in it
          └─ manager.open(name) (a restarted agent re-adopts) ─▶ JobCgroup ─▶ remove()
"""

from __future__ import annotations

import contextlib
import os
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
            return sorted(entry.name for entry in os.scandir(self.path(rel)) if entry.is_dir())
        except FileNotFoundError:
            return []


def read_pids(fs: CgroupFs, rel: str) -> list[int]:
    """The pids listed in a ``cgroup.procs`` file; [] if the group is gone."""
    try:
        return [int(line) for line in fs.read(rel).split()]
    except FileNotFoundError:
        return []


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

    def open(self, name: str) -> JobCgroup | None:
        """The existing group ``name`` (left by a previous agent process), or None."""
        ...

    def job_names(self) -> list[str]:
        """Names of the job groups that exist now."""
        ...

    def close(self) -> None:
        """The agent is leaving with no jobs: remove what it created for itself, if it may."""
        ...
