"""Per-job usage: CPU-seconds, GB-seconds of memory, GPU-seconds.

A ``Meter`` is fed readings at an interval and keeps cumulative figures:

- CPU-seconds: the cgroup's cumulative CPU time (v2 ``cpu.stat usage_usec``, v1
  ``cpuacct.usage``), or psutil's over the job's process tree where there is no cgroup.
- GB-seconds: memory in use (v2 ``memory.current``, v1 ``memory.usage_in_bytes``, or the
  tree's RSS) integrated over time with the trapezoid rule; GB = 2^30 bytes.
- GPU-seconds: GPUs allocated x wall time; with NVML, also utilisation x wall time
  (``gpu_util_seconds``) and GPU-memory GB-seconds (``gpu_memory_gb_seconds``: the GPU
  memory NVML's per-process data shows the job's processes holding, integrated like
  GB-seconds) as extra figures. NVML is read off the event loop (``GpuUtilisation.refresh``);
  the meter only integrates the latest reading.

Figures never go down, so a re-sent or late ``usage`` event cannot reduce a job's total.
"""

from __future__ import annotations

import contextlib
from collections.abc import Collection
from dataclasses import dataclass, replace
from typing import Any, Protocol

import psutil
import structlog

from agentd.cgroups.base import JobCgroup, Sample
from agentd.nvml import JobGpuReading, OffLoopNvml, read_job_gpus

log = structlog.get_logger("tanvrit.agentd.metering")

GIB = float(2**30)


@dataclass(frozen=True)
class Usage:
    cpu_seconds: float = 0.0
    gb_seconds: float = 0.0
    gpu_seconds: float = 0.0
    gpu_util_seconds: float | None = None
    gpu_memory_gb_seconds: float | None = None

    def to_event(self) -> dict[str, Any]:
        fields: dict[str, Any] = {"cpuSeconds": round(self.cpu_seconds, 6), "gbSeconds": round(self.gb_seconds, 6),
                                  "gpuSeconds": round(self.gpu_seconds, 6)}
        if self.gpu_util_seconds is not None:
            fields["gpuUtilSeconds"] = round(self.gpu_util_seconds, 6)
        if self.gpu_memory_gb_seconds is not None:
            fields["gpuMemoryGbSeconds"] = round(self.gpu_memory_gb_seconds, 6)
        return fields

    @classmethod
    def from_event(cls, fields: dict[str, Any]) -> Usage:
        util = fields.get("gpuUtilSeconds")
        gpu_memory = fields.get("gpuMemoryGbSeconds")
        return cls(float(fields.get("cpuSeconds", 0.0)), float(fields.get("gbSeconds", 0.0)),
                   float(fields.get("gpuSeconds", 0.0)), None if util is None else float(util),
                   None if gpu_memory is None else float(gpu_memory))


def trapezoid_gb_seconds(t0: float, bytes0: int, t1: float, bytes1: int) -> float:
    """GB-seconds between two readings of memory in use (seconds, bytes)."""
    return max(0.0, t1 - t0) * (bytes0 + bytes1) / 2 / GIB


class UsageSource(Protocol):
    def read(self) -> Sample | None:
        """Cumulative CPU seconds and memory in use now, or None if nothing can be read."""
        ...


class CgroupSource:
    def __init__(self, cgroup: JobCgroup) -> None:
        self._cgroup = cgroup

    def read(self) -> Sample | None:
        return self._cgroup.sample()


class ProcessTreeSource:
    """psutil over the tree below ``pid``: the fallback without a cgroup. CPU of children
    that exited without being waited for is lost, so this undercounts where the cgroup would not."""

    def __init__(self, pid: int) -> None:
        self._pid = pid

    def read(self) -> Sample | None:
        try:
            root = psutil.Process(self._pid)
            processes = [root, *root.children(recursive=True)]
        except psutil.Error:
            return None
        cpu, rss = 0.0, 0
        for index, process in enumerate(processes):
            with contextlib.suppress(psutil.Error):
                times = process.cpu_times()
                cpu += times.user + times.system
                if index == 0:
                    cpu += times.children_user + times.children_system
                rss += process.memory_info().rss
        return Sample(cpu_seconds=cpu, memory_bytes=rss)


class GpuUtilisation(Protocol):
    """NVML figures for one job's GPU units: ``refresh`` reads them off the event loop, the
    meter then takes the latest with the synchronous getters (cheap, no NVML call)."""

    async def refresh(self, pids: Collection[int]) -> None:
        """Read NVML now for the job's processes ``pids``; keep the last figures on failure."""
        ...

    def busy_fraction(self) -> float | None:
        """Sum over the job's GPUs of utilisation (0..1 each), or None if unknown."""
        ...

    def memory_bytes(self) -> int | None:
        """GPU memory the job's processes hold, or None if the driver does not say."""
        ...


class NvmlUtilisation:
    """Utilisation and GPU memory of the given units (by UUID) through off-loop NVML."""

    def __init__(self, nvml: OffLoopNvml, uuids: tuple[str, ...]) -> None:
        self._nvml = nvml
        self._uuids = uuids
        self._reading = JobGpuReading(None, None)

    async def refresh(self, pids: Collection[int]) -> None:
        wanted = frozenset(pids)
        try:
            self._reading = await self._nvml.call(lambda module: read_job_gpus(module, self._uuids, wanted))
        except Exception as exc:  # NVMLError or a timeout: the figures are extra, never worth failing a job
            log.warning("cannot read GPU utilisation and memory; keeping the last figures", error=str(exc))

    def busy_fraction(self) -> float | None:
        return self._reading.busy_fraction

    def memory_bytes(self) -> int | None:
        return self._reading.memory_bytes


class Meter:
    """Cumulative usage of one job. ``now`` is monotonic seconds, passed in by the caller."""

    def __init__(self, source: UsageSource, *, gpus: int, now: float, start: Usage | None = None,
                 gpu_util: GpuUtilisation | None = None) -> None:
        self._source = source
        self._gpus = gpus
        self._gpu_util = gpu_util
        self.usage = start or Usage(gpu_util_seconds=0.0 if gpu_util is not None else None)
        self._last_time = now
        self._last_memory: int | None = None
        self._last_busy: float | None = None
        self._last_gpu_memory: int | None = None

    def sample(self, now: float) -> Usage:
        """Take one reading at ``now`` and return the cumulative usage so far."""
        reading = self._source.read()
        elapsed = max(0.0, now - self._last_time)
        usage = self.usage
        if reading is not None:
            cpu = max(usage.cpu_seconds, reading.cpu_seconds)
            previous = reading.memory_bytes if self._last_memory is None else self._last_memory
            gb = usage.gb_seconds + trapezoid_gb_seconds(self._last_time, previous, now, reading.memory_bytes)
            usage = replace(usage, cpu_seconds=cpu, gb_seconds=gb)
            self._last_memory = reading.memory_bytes
        usage = replace(usage, gpu_seconds=usage.gpu_seconds + self._gpus * elapsed)
        if self._gpu_util is not None:
            busy = self._gpu_util.busy_fraction()
            if busy is not None:
                before = busy if self._last_busy is None else self._last_busy
                usage = replace(usage, gpu_util_seconds=(usage.gpu_util_seconds or 0.0) + elapsed * (before + busy) / 2)
                self._last_busy = busy
            gpu_memory = self._gpu_util.memory_bytes()
            if gpu_memory is not None:
                before_bytes = gpu_memory if self._last_gpu_memory is None else self._last_gpu_memory
                usage = replace(usage, gpu_memory_gb_seconds=(usage.gpu_memory_gb_seconds or 0.0)
                                + trapezoid_gb_seconds(self._last_time, before_bytes, now, gpu_memory))
                self._last_gpu_memory = gpu_memory
        self._last_time = now
        self.usage = usage
        return usage
