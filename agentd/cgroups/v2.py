"""cgroup v2: job groups in the subtree delegated to the agent (systemd ``Delegate=yes``).

The unified hierarchy forbids processes in a group whose controllers are enabled for its
children, so the agent first moves itself into a leaf ``agent`` of its own group, then
enables ``cpu``, ``memory`` and ``pids`` for the children, and creates one sibling leaf
per job::

    <delegated group>/          cgroup.subtree_control = +cpu +memory +pids
        agent/                  the agent process
        job_01H.../             memory.max, cpu.max, pids.max; the job's processes

At the root of the hierarchy (no systemd) the delegated group is ``/<base_name>``, one per
agent (the name comes from its data directory), so that two agents never share one; a
subtree of that name left elsewhere by an earlier life is removed by ``sweep``.
"""

from __future__ import annotations

import contextlib
import os
import signal as signals
from collections.abc import Collection
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
    kill_pids,
    read_pids,
    signal_members,
    stat_field,
)

AGENT_LEAF = "agent"
WANTED = ("cpu", "memory", "pids")
CPU_PERIOD_US = 100_000


def own_v2_path(proc_self_cgroup: str) -> str | None:
    """The ``0::/path`` entry of /proc/self/cgroup, or None if there is none."""
    for line in proc_self_cgroup.splitlines():
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if hierarchy == "0" and controllers == "":
            return path or "/"
    return None


class V2JobCgroup:
    def __init__(self, fs: CgroupFs, rel: str, name: str) -> None:
        self._fs = fs
        self._rel = rel
        self.name = name

    @property
    def procs_files(self) -> list[Path]:
        return [self._fs.path(f"{self._rel}/cgroup.procs")]

    def pids(self) -> list[int]:
        return read_pids(self._fs, f"{self._rel}/cgroup.procs")

    def signal(self, signum: int) -> None:
        if signum == signals.SIGKILL and self._fs.exists(f"{self._rel}/cgroup.kill"):
            # Atomic against forks racing the kill (Linux 5.14+).
            with contextlib.suppress(FileNotFoundError):
                self._fs.write(f"{self._rel}/cgroup.kill", "1")
            return
        signal_members(self.pids, signum)

    def sample(self) -> Sample | None:
        """Working set = ``memory.current - inactive_file`` (``memory.stat``), as on v1; the
        peak is ``memory.peak`` (Linux 5.19+), which a new reader cannot reset: lifetime."""
        try:
            stat = dict(line.split() for line in self._fs.read(f"{self._rel}/cpu.stat").splitlines() if line)
            memory = int(self._fs.read(f"{self._rel}/memory.current"))
            inactive = stat_field(self._fs.read(f"{self._rel}/memory.stat"), "inactive_file")
        except (OSError, ValueError):
            return None
        peak: int | None = None
        with contextlib.suppress(OSError, ValueError):
            peak = int(self._fs.read(f"{self._rel}/memory.peak"))
        return Sample(cpu_seconds=int(stat.get("usage_usec", 0)) / 1e6, memory_bytes=max(0, memory - inactive),
                      peak_bytes=peak, peak_is_lifetime=True, inactive_file_bytes=inactive)

    def oom_killed(self) -> bool:
        try:
            events = dict(line.split() for line in self._fs.read(f"{self._rel}/memory.events").splitlines() if line)
        except (OSError, ValueError):
            return False
        return int(events.get("oom_kill", 0)) > 0

    def remove(self) -> None:
        self._fs.rmdir(self._rel)


def _kill_group(fs: CgroupFs, rel: str) -> None:
    if fs.exists(f"{rel}/cgroup.kill"):
        with contextlib.suppress(FileNotFoundError):
            fs.write(f"{rel}/cgroup.kill", "1")
    else:
        kill_pids(fs, rel)


def _agent_alive(fs: CgroupFs, base: str) -> bool:
    """Whether an agent still runs in the subtree ``base`` (in its leaf). Two agents in two
    containers with the same data directory path share the subtree's name, so a name alone does
    not make a subtree ours; a live one is left alone (an earlier life of ours has left its leaf,
    or it would hold our data directory's lock). ``populated`` also counts processes that
    another pid namespace hides from ``cgroup.procs`` (and ``cgroup.kill`` would reach)."""
    leaf = f"{base}/{AGENT_LEAF}"
    if read_pids(fs, f"{leaf}/cgroup.procs"):
        return True
    with contextlib.suppress(OSError):
        return "populated 1" in fs.read(f"{leaf}/cgroup.events").splitlines()
    return False


class V2Manager:
    """Job groups under ``base`` (the agent's delegated group) on the cgroup2 mount ``fs``."""

    kind = "v2"

    def __init__(self, fs: CgroupFs, own_path: str, *, pid: int | None = None,
                 base_name: str = "tanvrit-agentd") -> None:
        self._fs = fs
        self._base_name = base_name
        # At the root of the hierarchy (no systemd), keep to a subtree of our own.
        self._base = own_path.rstrip("/") if own_path.strip("/") else f"/{base_name}"
        if self._base.endswith(f"/{AGENT_LEAF}"):
            # A previous start of this process tree already moved us into the leaf.
            self._base = self._base[: -len(AGENT_LEAF) - 1] or "/"
        self._elsewhere: list[str] = []  # earlier lives' subtrees kept by ``sweep`` for a re-adopted job
        self._pid = pid if pid is not None else os.getpid()
        self.controllers: tuple[str, ...] = ()

    @property
    def base(self) -> str:
        return self._base

    def setup(self) -> None:
        """Move the agent into its leaf and enable the controllers; raise ``CgroupError``."""
        try:
            self._fs.mkdir(self._base)
            available = self._fs.read(f"{self._base}/cgroup.controllers").split()
            wanted = [c for c in WANTED if c in available]
            if "memory" not in wanted:
                raise CgroupError(f"the memory controller is not available in {self._fs.path(self._base)}")
            self._fs.mkdir(f"{self._base}/{AGENT_LEAF}")
            self._fs.write(f"{self._base}/{AGENT_LEAF}/cgroup.procs", str(self._pid))
            self._fs.write(f"{self._base}/cgroup.subtree_control", " ".join(f"+{c}" for c in wanted))
        except OSError as exc:
            raise CgroupError(f"cannot set up cgroup v2 delegation at {self._fs.path(self._base)}: {exc}") from exc
        self.controllers = tuple(wanted)

    def _rel(self, name: str) -> str:
        return f"{self._base}/{name}"

    def create(self, name: str, limits: Limits) -> V2JobCgroup:
        rel = self._rel(name)
        try:
            self._fs.mkdir(rel)
            if limits.memory_bytes is not None:
                self._fs.write(f"{rel}/memory.max", str(limits.memory_bytes))
                if self._fs.exists(f"{rel}/memory.swap.max"):
                    # A limit the job could dodge by swapping is no limit.
                    self._fs.write(f"{rel}/memory.swap.max", "0")
            if limits.cpus is not None and "cpu" in self.controllers:
                self._fs.write(f"{rel}/cpu.max", f"{max(1000, int(limits.cpus * CPU_PERIOD_US))} {CPU_PERIOD_US}")
            if limits.pids is not None and "pids" in self.controllers:
                self._fs.write(f"{rel}/pids.max", str(limits.pids))
        except OSError as exc:
            self._fs.rmdir(rel)
            raise CgroupError(f"cannot create cgroup {self._fs.path(rel)}: {exc}") from exc
        return V2JobCgroup(self._fs, rel, name)

    def prepare(self) -> None:
        # Not done on v2 yet (v1's spare groups: ``V1Manager.prepare``): a job's group is made
        # by ``create``, on its way to start.
        return None

    def open(self, name: str) -> V2JobCgroup | None:
        for base in [self._base, *self._elsewhere]:
            rel = f"{base}/{name}"
            if self._fs.exists(rel):
                return V2JobCgroup(self._fs, rel, name)
        return None

    def sweep(self, keep: Collection[str], *, timeout: float = 5.0) -> Swept:
        groups: list[tuple[CgroupFs, str]] = []
        self._elsewhere = []
        earlier = [rel for rel in find_groups(self._fs, self._base_name)
                   if rel != self._base and not _agent_alive(self._fs, rel)]
        for base in [self._base, *earlier]:
            kept = False
            for job in self._fs.children(base):
                if job in keep:
                    kept = True
                elif not (base == self._base and job == AGENT_LEAF):  # the leaf this process runs in
                    groups.extend((self._fs, rel) for rel in deepest_first(self._fs, f"{base}/{job}"))
            if base != self._base:
                if kept:
                    self._elsewhere.append(base)
                else:
                    groups.append((self._fs, base))
        return kill_and_remove(groups, kill=_kill_group, timeout=timeout)

    def job_names(self) -> list[str]:
        return [name for name in self._fs.children(self._base) if name != AGENT_LEAF]

    def close(self) -> None:
        # The delegated group is systemd's; it removes it when the service stops.
        return None
