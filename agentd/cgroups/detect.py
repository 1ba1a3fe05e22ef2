"""Pick the cgroup backend at start from what this process sees in /proc.

The inputs are text (``/proc/self/mountinfo``, ``/proc/self/cgroup``) and a prefix that
mount points are resolved under, so tests feed a fake host.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import structlog

from agentd.cgroups.base import CgroupError, CgroupFs, CgroupManager
from agentd.cgroups.none import NoCgroups
from agentd.cgroups.v1 import WANTED as V1_WANTED
from agentd.cgroups.v1 import Hierarchy, V1Manager
from agentd.cgroups.v2 import V2Manager, own_v2_path

log = structlog.get_logger("tanvrit.agentd.cgroups")

DEFAULT_BASE_NAME = "tanvrit-agentd"


@dataclass(frozen=True)
class Mount:
    fstype: str
    mount_point: str
    root: str
    options: frozenset[str]


def parse_mountinfo(text: str) -> list[Mount]:
    """The cgroup and cgroup2 mounts listed in a /proc/self/mountinfo text."""
    mounts = []
    for line in text.splitlines():
        head, sep, tail = line.partition(" - ")
        fields, rest = head.split(), tail.split()
        if not sep or len(fields) < 5 or len(rest) < 3 or rest[0] not in {"cgroup", "cgroup2"}:
            continue
        mounts.append(Mount(rest[0], fields[4], fields[3], frozenset(rest[2].split(","))))
    return mounts


def own_v1_paths(proc_self_cgroup: str) -> dict[str, str]:
    """Controller name → this process's group path, from /proc/self/cgroup (v1 lines)."""
    paths = {}
    for line in proc_self_cgroup.splitlines():
        parts = line.split(":", 2)
        if len(parts) == 3 and parts[1]:
            for controller in parts[1].split(","):
                paths[controller] = parts[2]
    return paths


def _relative(path: str, mount_root: str) -> str:
    # In a container the mount's root may be our own group: /proc paths are then relative to it.
    if mount_root != "/" and path.startswith(mount_root):
        path = path[len(mount_root):]
    return path if path.startswith("/") else "/" + path


def detect_cgroups(*, mountinfo: str | None = None, proc_self_cgroup: str | None = None, prefix: Path = Path("/"),
                   base_name: str = DEFAULT_BASE_NAME, pid: int | None = None) -> CgroupManager:
    """Set up the best backend that works here; ``NoCgroups`` (with its ``reason``) otherwise."""
    mountinfo = mountinfo if mountinfo is not None else Path("/proc/self/mountinfo").read_text()
    proc_self_cgroup = proc_self_cgroup if proc_self_cgroup is not None else Path("/proc/self/cgroup").read_text()
    mounts = parse_mountinfo(mountinfo)
    reasons = []

    def at(mount_point: str) -> CgroupFs:
        return CgroupFs(prefix / mount_point.lstrip("/"))

    own2 = own_v2_path(proc_self_cgroup)
    for mount in (m for m in mounts if m.fstype == "cgroup2"):
        if own2 is None:
            break
        fs = at(mount.mount_point)
        own = _relative(own2, mount.root)
        try:
            if "memory" not in fs.read(f"{own}/cgroup.controllers").split():
                reasons.append(f"cgroup2 at {mount.mount_point} has no memory controller for us")
                continue
            manager = V2Manager(fs, own, pid=pid, base_name=base_name)
            manager.setup()
            return manager
        except (OSError, CgroupError) as exc:
            reasons.append(str(exc))

    own1 = own_v1_paths(proc_self_cgroup)
    hierarchies: list[Hierarchy] = []
    for mount in (m for m in mounts if m.fstype == "cgroup"):
        controllers = frozenset(c for c in mount.options if c in V1_WANTED)
        if not controllers:
            continue
        own = _relative(own1.get(next(iter(sorted(controllers))), "/"), mount.root)
        base = f"{own.rstrip('/')}/{base_name}"
        hierarchies.append(Hierarchy(controllers, at(mount.mount_point), base))
    if hierarchies:
        # The memory hierarchy first: it is the one that lists a job's groups.
        hierarchies.sort(key=lambda h: "memory" not in h.controllers)
        try:
            v1 = V1Manager(hierarchies)
            v1.setup()
            return v1
        except CgroupError as exc:
            reasons.append(str(exc))
    else:
        reasons.append("no cgroup v1 controller hierarchies are mounted")
    return NoCgroups("; ".join(reasons))
