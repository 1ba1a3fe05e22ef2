"""cgroup v1: one hierarchy per controller (``cpu``, ``cpuacct``, ``memory``, ``pids``,
``devices``), each mounted on its own. The agent keeps a subtree ``<base_name>`` below its
own group in each hierarchy, and a job has a group of the same name in every one of them::

    <memory mount>/<agent's memory group>/tanvrit-agentd/job_01H.../   memory.limit_in_bytes
    <cpu mount>/<agent's cpu group>/tanvrit-agentd/job_01H.../         cpu.cfs_quota_us
    <pids mount>/...                                                   pids.max

The agent's own group may differ from one life to the next (a restart in another memory
group, as a sandbox or a test runner gives each process): its subtree is then found by name
elsewhere in the hierarchy by ``sweep``, which removes it, or keeps it for a job re-adopted
there (``open`` looks there too).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import threading
from collections.abc import Collection
from dataclasses import dataclass, replace
from pathlib import Path

from agentd.cgroups.base import (
    CgroupError,
    CgroupFs,
    Limits,
    Sample,
    Swept,
    deepest_first,
    find_groups,
    kill_and_remove,
    read_pids,
    signal_members,
    stat_field,
)

WANTED = ("memory", "cpuacct", "cpu", "pids", "devices")
CPU_PERIOD_US = 100_000
# Spare groups (``V1Manager.prepare``) are named with this prefix, which no job id has.
SPARE_PREFIX = "spare-"
MAX_SPARES = 4


@dataclass(frozen=True)
class Hierarchy:
    """One mounted v1 hierarchy: its editor, and the agent's subtree in it (relative path)."""

    controllers: frozenset[str]
    fs: CgroupFs
    base: str


class V1JobCgroup:
    def __init__(self, hierarchies: list[Hierarchy], name: str) -> None:
        self._hierarchies = hierarchies
        self.name = name

    def _find(self, controller: str) -> Hierarchy | None:
        return next((h for h in self._hierarchies if controller in h.controllers), None)

    def _rel(self, hierarchy: Hierarchy, file: str = "") -> str:
        return f"{hierarchy.base}/{self.name}" + (f"/{file}" if file else "")

    @property
    def procs_files(self) -> list[Path]:
        return [h.fs.path(self._rel(h, "cgroup.procs")) for h in self._hierarchies]

    def pids(self) -> list[int]:
        found: set[int] = set()
        for hierarchy in self._hierarchies:
            found.update(read_pids(hierarchy.fs, self._rel(hierarchy, "cgroup.procs")))
        return sorted(found)

    def signal(self, signum: int) -> None:
        signal_members(self.pids, signum)

    def sample(self) -> Sample | None:
        """Working set = ``memory.usage_in_bytes - total_inactive_file`` (cAdvisor's v1
        definition); the peak is ``memory.max_usage_in_bytes``, reset after each reading so
        that the next one covers only the time since (root may; elsewhere it stays lifetime)."""
        cpuacct, memory = self._find("cpuacct"), self._find("memory")
        if cpuacct is None or memory is None:
            return None
        try:
            cpu_ns = int(cpuacct.fs.read(self._rel(cpuacct, "cpuacct.usage")))
            in_use = int(memory.fs.read(self._rel(memory, "memory.usage_in_bytes")))
            inactive = stat_field(memory.fs.read(self._rel(memory, "memory.stat")), "total_inactive_file")
        except (OSError, ValueError):
            return None
        peak: int | None = None
        reset = False
        with contextlib.suppress(OSError, ValueError):
            peak = int(memory.fs.read(self._rel(memory, "memory.max_usage_in_bytes")))
            memory.fs.write(self._rel(memory, "memory.max_usage_in_bytes"), "0")
            reset = True
        return Sample(cpu_seconds=cpu_ns / 1e9, memory_bytes=max(0, in_use - inactive), peak_bytes=peak,
                      peak_is_lifetime=not reset, inactive_file_bytes=inactive)

    def oom_killed(self) -> bool:
        memory = self._find("memory")
        if memory is None:
            return False
        try:
            control = dict(line.split() for line in memory.fs.read(self._rel(memory, "memory.oom_control")).splitlines()
                           if line)
        except (OSError, ValueError):
            return False
        if "oom_kill" in control:  # Linux 4.13+
            return int(control["oom_kill"]) > 0
        # Older kernels: the limit was hit and something died of it.
        try:
            return int(memory.fs.read(self._rel(memory, "memory.failcnt"))) > 0
        except (OSError, ValueError):
            return False

    def remove(self) -> None:
        for hierarchy in self._hierarchies:
            with contextlib.suppress(OSError):
                hierarchy.fs.rmdir(self._rel(hierarchy))


def _owner_alive(fs: CgroupFs, base: str) -> bool:
    """Whether the agent whose subtree ``base`` is may still run: a process in the group the
    subtree hangs from (that agent's own group, where it stays on v1). Two agents in two
    containers with the same data directory path share the subtree's name, so a name alone does
    not make a subtree ours; a live one is left alone (an earlier life of ours left its group
    empty, or it would hold our data directory's lock)."""
    parent = base.rsplit("/", 1)[0] or "/"
    return bool(read_pids(fs, f"{parent}/cgroup.procs"))


class V1Manager:
    kind = "v1"

    def __init__(self, hierarchies: list[Hierarchy]) -> None:
        self._hierarchies = hierarchies
        self.controllers = frozenset().union(*(h.controllers for h in hierarchies))
        # Per hierarchy: this agent's subtrees from earlier lives that ``sweep`` kept (they
        # hold a job being re-adopted).
        self._elsewhere: dict[int, list[str]] = {}
        # Spare groups made ahead by ``prepare`` (in every hierarchy, no limits, never a
        # process): ``create`` renames one instead of making the job's group from nothing.
        self._spares: list[str] = []
        self._spares_lock = threading.Lock()  # ``prepare`` runs in a worker thread
        self._spare_numbers = itertools.count()

    def setup(self) -> None:
        """Create the agent's subtree in every hierarchy; raise ``CgroupError``."""
        if "memory" not in self.controllers:
            raise CgroupError("no cgroup v1 memory hierarchy is mounted")
        for hierarchy in self._hierarchies:
            try:
                hierarchy.fs.mkdir(hierarchy.base)
            except OSError as exc:
                raise CgroupError(f"cannot create {hierarchy.fs.path(hierarchy.base)}: {exc}") from exc

    def prepare(self) -> None:
        """Make one spare group ahead of a job, unless ``MAX_SPARES`` are ready: a ``mkdir`` in
        v1 (the memory controller's above all) costs about 0.3 ms of kernel time, five of them
        per job, on the way from a claim's answer to the job's start; a rename costs a few
        microseconds. A spare has no limits and no processes (only root may put one there, and
        nothing does before ``create`` has renamed it and written the job's limits), and a
        spare left by a crash is removed by the next start's ``sweep`` (it is in our subtree
        and no job of ``keep`` has its name). Blocks on cgroupfs: call it from a worker thread."""
        with self._spares_lock:
            if len(self._spares) >= MAX_SPARES:
                return
        name = f"{SPARE_PREFIX}{os.getpid()}-{next(self._spare_numbers)}"
        made: list[Hierarchy] = []
        try:
            for hierarchy in self._hierarchies:
                hierarchy.fs.mkdir(f"{hierarchy.base}/{name}")
                made.append(hierarchy)
        except OSError:
            for hierarchy in made:
                with contextlib.suppress(OSError):
                    hierarchy.fs.rmdir(f"{hierarchy.base}/{name}")
            return
        with self._spares_lock:
            self._spares.append(name)

    def spares(self) -> list[str]:
        """The spare groups ready now (names)."""
        with self._spares_lock:
            return list(self._spares)

    def _use_spare(self, hierarchy: Hierarchy, spare: str | None, rel: str) -> None:
        """Make the group ``rel``: by renaming ``spare`` where there is one (within the agent's
        subtree: the parent, and so what the group inherits, is the same), else ``mkdir``."""
        if spare is not None:
            try:
                os.rename(hierarchy.fs.path(f"{hierarchy.base}/{spare}"), hierarchy.fs.path(rel))
                return
            except OSError:
                # (The job's group exists already, or the spare went.) No use for it any more.
                with contextlib.suppress(OSError):
                    hierarchy.fs.rmdir(f"{hierarchy.base}/{spare}")
        hierarchy.fs.mkdir(rel)

    def create(self, name: str, limits: Limits) -> V1JobCgroup:
        group = V1JobCgroup(self._hierarchies, name)
        with self._spares_lock:
            spare = self._spares.pop() if self._spares else None
        try:
            for hierarchy in self._hierarchies:
                rel = f"{hierarchy.base}/{name}"
                self._use_spare(hierarchy, spare, rel)
                self._limit(hierarchy, rel, limits)
        except OSError as exc:
            group.remove()
            if spare is not None:
                for hierarchy in self._hierarchies:  # where it was not renamed yet
                    with contextlib.suppress(OSError):
                        hierarchy.fs.rmdir(f"{hierarchy.base}/{spare}")
            raise CgroupError(f"cannot create cgroup {name}: {exc}") from exc
        return group

    @staticmethod
    def _limit(hierarchy: Hierarchy, rel: str, limits: Limits) -> None:
        fs, has = hierarchy.fs, hierarchy.controllers
        if "memory" in has and limits.memory_bytes is not None:
            fs.write(f"{rel}/memory.limit_in_bytes", str(limits.memory_bytes))
            if fs.exists(f"{rel}/memory.memsw.limit_in_bytes"):
                # Memory plus swap at the same figure: the job cannot dodge its limit by swapping.
                fs.write(f"{rel}/memory.memsw.limit_in_bytes", str(limits.memory_bytes))
        if "cpu" in has and limits.cpus is not None:
            fs.write(f"{rel}/cpu.cfs_period_us", str(CPU_PERIOD_US))
            fs.write(f"{rel}/cpu.cfs_quota_us", str(max(1000, int(limits.cpus * CPU_PERIOD_US))))
        if "pids" in has and limits.pids is not None:
            fs.write(f"{rel}/pids.max", str(limits.pids))
        if "devices" in has:
            for major, minor in limits.denied_devices:
                fs.write(f"{rel}/devices.deny", f"c {major}:{minor} rwm")

    def open(self, name: str) -> V1JobCgroup | None:
        found = []
        for index, hierarchy in enumerate(self._hierarchies):
            if not hierarchy.fs.exists(f"{hierarchy.base}/{name}"):
                # Created by an earlier life in another subtree: supervise it where it is.
                earlier = next((base for base in self._elsewhere.get(index, ())
                                if hierarchy.fs.exists(f"{base}/{name}")), None)
                if earlier is not None:
                    hierarchy = replace(hierarchy, base=earlier)
            found.append(hierarchy)
        first = found[0]
        return V1JobCgroup(found, name) if first.fs.exists(f"{first.base}/{name}") else None

    def sweep(self, keep: Collection[str], *, timeout: float = 5.0) -> Swept:
        groups: list[tuple[CgroupFs, str]] = []
        for index, hierarchy in enumerate(self._hierarchies):
            fs, name = hierarchy.fs, hierarchy.base.rsplit("/", 1)[-1]
            earlier = [rel for rel in find_groups(fs, name) if rel != hierarchy.base and not _owner_alive(fs, rel)]
            self._elsewhere[index] = []
            for base in [hierarchy.base, *earlier]:
                kept = False
                for job in fs.children(base):
                    if job in keep:
                        kept = True
                        continue
                    groups.extend((fs, rel) for rel in deepest_first(fs, f"{base}/{job}"))
                if base == hierarchy.base:
                    continue
                if kept:
                    self._elsewhere[index].append(base)
                else:
                    groups.append((fs, base))  # after its job groups
        return kill_and_remove(groups, timeout=timeout)

    def job_names(self) -> list[str]:
        first = self._hierarchies[0]
        return [name for name in first.fs.children(first.base) if not name.startswith(SPARE_PREFIX)]

    def close(self) -> None:
        self.remove_base()

    def remove_base(self) -> None:
        """Remove the agent's (empty) subtree in every hierarchy: for tests and uninstall."""
        for hierarchy in self._hierarchies:
            for name in hierarchy.fs.children(hierarchy.base):
                with contextlib.suppress(OSError):
                    hierarchy.fs.rmdir(f"{hierarchy.base}/{name}")
            with contextlib.suppress(OSError):
                hierarchy.fs.rmdir(hierarchy.base)
