"""GPU assignment: which of the host's GPU units (whole GPUs or MIG instances) each job gets.

A unit's life on one host::

    free ── allocate (host-wide lock taken) ──▶ held by a job ── release ──▶ settling
     ▲                                                                          │
     └──────────── NVML shows no process on it (lock released) ─────────────────┘
    free ── NVML shows a process we did not start, or another agent holds the lock ──▶ busy
    busy ── NVML shows it empty and the lock free ──▶ free

Two jobs never share a unit; a unit whose previous job's processes are still in the driver
is not handed out until NVML shows it empty; and the lock file per UUID (``flock``, so a
dead agent's locks go with it) keeps two agents on one host from handing out the same unit.
A job's units are all of one model, so its GPU-seconds have one price.

Device nodes: ``/dev/nvidia<minor>`` per GPU (``nvmlDeviceGetMinorNumber``); a MIG instance
is reached through its parent's node plus its GPU- and compute-instance capabilities under
``/dev/nvidia-caps`` (numbered in ``/proc/driver/nvidia-caps/mig-minors``).
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import structlog

from agentd.cgroups.base import NVIDIA_MAJOR
from agentd.fingerprint.gpu import GpuUnit
from common.files import PRIVATE_FILE, private_dir

log = structlog.get_logger("tanvrit.agentd.gpus")

PROC_DEVICES = Path("/proc/devices")
MIG_MINORS = Path("/proc/driver/nvidia-caps/mig-minors")


@dataclass(frozen=True)
class MigCaps:
    """The ``nvidia-caps`` character-device major and the minors of each MIG capability."""

    major: int
    minors: Mapping[str, int]  # "gpu0/gi1/access" -> 12, "gpu0/gi1/ci0/access" -> 13

    def of(self, unit: GpuUnit) -> tuple[tuple[int, int], ...]:
        """The capability devices a MIG unit needs (its GPU instance's and compute instance's)."""
        if not unit.mig:
            return ()
        gi = f"gpu{unit.minor}/gi{unit.gpu_instance}"
        names = (f"{gi}/access", f"{gi}/ci{unit.compute_instance}/access")
        return tuple((self.major, self.minors[name]) for name in names if name in self.minors)


def read_mig_caps(proc_devices: Path = PROC_DEVICES, mig_minors: Path = MIG_MINORS) -> MigCaps | None:
    """The host's MIG capability devices, or None where the driver exposes none."""
    try:
        major = next(int(line.split()[0]) for line in proc_devices.read_text().splitlines()
                     if line.split()[1:] == ["nvidia-caps"])
        minors = {parts[0]: int(parts[1]) for parts in (line.split() for line in mig_minors.read_text().splitlines())
                  if len(parts) == 2 and parts[1].isdigit()}
    except (OSError, StopIteration, ValueError):
        return None
    return MigCaps(major, minors)


class GpuLocks:
    """One lock file per unit UUID in ``directory``, held with ``flock`` while a job (or its
    leftovers) has the unit. ``flock`` locks belong to the open file: the kernel drops them
    when the agent dies, and two agents in one process still exclude each other."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._held: dict[str, int] = {}

    def prepare(self) -> None:
        """Create the directory and check a lock file can be made there; raises ``OSError``."""
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o755)
        probe = self.directory / f".probe-{os.getpid()}"
        os.close(os.open(probe, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644))
        probe.unlink()

    def _open(self, uuid: str) -> int:
        # Private, like the files in them: flock needs only a read-only descriptor, so a lock
        # file anyone can open is a lock any job (or local user) can hold, keeping the GPU from
        # every job. The agents sharing a host's GPUs run as root (or as one user).
        private_dir(self.directory)
        fd = os.open(self.directory / f"{uuid}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW,
                     PRIVATE_FILE)
        os.fchmod(fd, PRIVATE_FILE)  # one made by an older agent was 0644
        return fd

    def acquire(self, uuid: str) -> bool:
        """Take the unit's lock without waiting; False if another holder has it."""
        if uuid in self._held:
            return True
        fd = self._open(uuid)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._held[uuid] = fd
        return True

    def release(self, uuid: str) -> None:
        fd = self._held.pop(uuid, None)
        if fd is not None:
            os.close(fd)  # closing the only descriptor drops the flock

    def held_elsewhere(self, uuid: str) -> bool:
        """Whether another holder has the unit's lock now (we do not keep it)."""
        if uuid in self._held:
            return False
        if not self.acquire(uuid):
            return True
        self.release(uuid)
        return False

    def close(self) -> None:
        for uuid in list(self._held):
            self.release(uuid)


class GpuAllocator:
    """The host's units and who has them. ``units`` are offered in the order given."""

    def __init__(self, units: Iterable[GpuUnit], *, host_units: Iterable[GpuUnit] | None = None,
                 locks: GpuLocks | None = None, mig_caps: MigCaps | None = None) -> None:
        self.units = tuple(units)
        # Every unit on the host, offered or not: a job is denied the device nodes of all it was not given.
        self.host_units = tuple(host_units) if host_units is not None else self.units
        self._by_uuid = {unit.uuid: unit for unit in self.units}
        self._locks = locks
        self._mig_caps = mig_caps
        self._held: dict[str, tuple[GpuUnit, ...]] = {}
        self._settling: set[str] = set()  # released, waiting for NVML to show them empty
        self._busy: set[str] = set()  # in use by someone else, or failing
        self._stuck: set[str] = set()  # settling ones whose stuck processes were reported

    def unit(self, uuid: str) -> GpuUnit | None:
        return self._by_uuid.get(uuid)

    @property
    def free(self) -> tuple[GpuUnit, ...]:
        taken = {unit.uuid for held in self._held.values() for unit in held} | self._settling | self._busy
        return tuple(unit for unit in self.units if unit.uuid not in taken)

    def free_count(self) -> int:
        """The most units one job can get now: jobs get units of one model only."""
        counts: dict[str, int] = {}
        for unit in self.free:
            counts[unit.model] = counts.get(unit.model, 0) + 1
        return max(counts.values(), default=0)

    @property
    def settling(self) -> frozenset[str]:
        return frozenset(self._settling)

    def idle_uuids(self) -> list[str]:
        """Units no job of ours holds: the ones NVML is asked about."""
        held = {unit.uuid for units in self._held.values() for unit in units}
        return [unit.uuid for unit in self.units if unit.uuid not in held]

    def held_by(self, job_id: str) -> tuple[GpuUnit, ...]:
        return self._held.get(job_id, ())

    def allocate(self, job_id: str, count: int) -> tuple[GpuUnit, ...] | None:
        """``count`` free units of one model for ``job_id`` (the first model, in host order,
        with enough free), each locked host-wide; None if that many are not free.

        Idempotent per job: asking again returns what the job already holds. A unit whose
        lock another agent holds is marked busy and skipped.
        """
        if job_id in self._held:
            return self._held[job_id]
        if count == 0:
            self._held[job_id] = ()
            return ()
        by_model: dict[str, list[GpuUnit]] = {}
        for unit in self.free:
            by_model.setdefault(unit.model, []).append(unit)
        for candidates in by_model.values():
            taken: list[GpuUnit] = []
            for unit in candidates:
                if len(taken) == count:
                    break
                if self._locks is not None and not self._locks.acquire(unit.uuid):
                    log.warning("GPU is held by another agent on this host; skipping it", uuid=unit.uuid)
                    self._busy.add(unit.uuid)
                    continue
                taken.append(unit)
            if len(taken) == count:
                self._held[job_id] = tuple(taken)
                return self._held[job_id]
            for unit in taken:
                self._unlock(unit.uuid)
        return None

    def restore(self, job_id: str, uuids: Iterable[str]) -> tuple[GpuUnit, ...]:
        """Record what a re-adopted job already holds; raises ``ValueError`` on a clash or a
        unit this host does not have (any more)."""
        wanted = tuple(uuids)
        units = tuple(self._by_uuid[uuid] for uuid in wanted if uuid in self._by_uuid)
        if len(units) != len(wanted):
            raise ValueError(f"GPUs {list(wanted)} are not all on this host")
        free = {unit.uuid for unit in self.free}
        if any(unit.uuid not in free for unit in units):
            raise ValueError(f"GPUs {list(wanted)} are not all free")
        if self._locks is not None:
            for unit in units:
                if not self._locks.acquire(unit.uuid):
                    log.error("a re-adopted job's GPU is locked by another agent", uuid=unit.uuid, job_id=job_id)
        self._held[job_id] = units
        return units

    def release(self, job_id: str) -> None:
        """The job is over; its units settle until NVML shows no process left on them."""
        for unit in self._held.pop(job_id, ()):
            self._settling.add(unit.uuid)

    def observe(self, processes: Mapping[str, int | None]) -> bool:
        """Apply one NVML look at the units not held by a job: ``processes[uuid]`` is how many
        processes NVML shows on it (None: NVML failed for that unit). Returns True when a unit
        became free."""
        held = {unit.uuid for units in self._held.values() for unit in units}
        freed = False
        for unit in self.units:
            if unit.uuid in held or unit.uuid not in processes:
                continue
            count = processes[unit.uuid]
            if count is None or count > 0:
                if unit.uuid in self._settling and count and unit.uuid not in self._stuck:
                    log.warning("GPU still has processes of a finished job; not handing it out", uuid=unit.uuid,
                                processes=count)
                    self._stuck.add(unit.uuid)  # said once, not at every look
                if unit.uuid not in self._settling and unit.uuid not in self._busy:
                    log.warning("GPU is busy or failing; not offering it", uuid=unit.uuid, processes=count)
                    self._busy.add(unit.uuid)
                continue
            if unit.uuid in self._settling:
                if unit.uuid in self._stuck:
                    log.info("GPU free again: its previous job's processes have left", uuid=unit.uuid)
                    self._stuck.discard(unit.uuid)
                self._settling.discard(unit.uuid)
                self._unlock(unit.uuid)
                freed = True
                continue
            elsewhere = self._locks is not None and self._locks.held_elsewhere(unit.uuid)
            if unit.uuid in self._busy and not elsewhere:
                self._busy.discard(unit.uuid)
                freed = True
            elif elsewhere:
                self._busy.add(unit.uuid)  # another agent on this host has it
        return freed

    def _unlock(self, uuid: str) -> None:
        if self._locks is not None:
            self._locks.release(uuid)

    def close(self) -> None:
        if self._locks is not None:
            self._locks.close()

    def denied_devices(self, assigned: Iterable[GpuUnit]) -> tuple[tuple[int, int], ...]:
        """Device numbers the job must not open: the GPUs none of its units live on
        (``/dev/nvidia<minor>`` is 195:minor) and other MIG instances' capabilities."""
        mine = tuple(assigned)
        minors = {unit.minor for unit in mine}
        denied = sorted({(NVIDIA_MAJOR, unit.minor) for unit in self.host_units if unit.minor not in minors})
        if self._mig_caps is not None:
            allowed = {dev for unit in mine for dev in self._mig_caps.of(unit)}
            others = {dev for unit in self.host_units for dev in self._mig_caps.of(unit)} - allowed
            denied.extend(sorted(others))
        return tuple(denied)


def gpu_environment(units: Iterable[GpuUnit], *, host_has_gpus: bool) -> dict[str, str]:
    """What tells CUDA and the NVIDIA container runtime which units the job has: UUIDs in PCI
    order, never indices. A job without GPUs on a GPU host is told it has none."""
    uuids = ",".join(unit.uuid for unit in units)
    if not uuids:
        return {"CUDA_VISIBLE_DEVICES": "", "NVIDIA_VISIBLE_DEVICES": "void"} if host_has_gpus else {}
    return {"CUDA_DEVICE_ORDER": "PCI_BUS_ID", "CUDA_VISIBLE_DEVICES": uuids, "NVIDIA_VISIBLE_DEVICES": uuids}

