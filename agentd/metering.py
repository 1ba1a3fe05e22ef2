"""Per-job usage: CPU-seconds, GB-seconds of memory, GPU-seconds (docs/metering.md).

A ``Meter`` is fed readings and keeps cumulative figures for one attempt at a job:

- CPU-seconds: the cgroup's cumulative CPU time (v2 ``cpu.stat usage_usec``, v1
  ``cpuacct.usage``), or psutil's over the job's process tree where there is no cgroup.
- GB-seconds: the working set (memory in use minus inactive file cache, as the kubelet and
  cAdvisor define it; see ``Sample``) integrated over time with the trapezoid rule; GB = 2^30
  bytes. The last stretch of a job that ended ends at the cgroup's peak since the previous
  reading (a short or OOM-killed job's memory is gone by the time its exit is seen), and a
  stretch the agent did not see (it was down) is billed at the highest of the working sets at
  both ends and that peak.
- GPU-seconds: GPUs allocated x wall time from the job's start, computed (not integrated), so
  time the agent was away is billed exactly; with NVML, also utilisation x wall time
  (``gpu_util_seconds``) and GPU-memory GB-seconds (``gpu_memory_gb_seconds``: the GPU
  memory NVML's per-process data shows the job's processes holding, integrated like
  GB-seconds) as extra figures. NVML is read off the event loop (``GpuUtilisation.refresh``);
  the meter only integrates the latest reading.

What the meter needs to go on after the agent restarts is ``MeterState``; reported figures
are bounded by physics (``Allocation`` x wall time) and never go down, so a re-sent or late
``usage`` event cannot reduce an attempt's total.
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


@dataclass(frozen=True)
class Allocation:
    """What the job was given; ``None`` means unbounded. The agent never reports more than
    this times the job's wall time (the coordinator refuses such figures)."""

    gpus: int = 0
    cpus: float | None = None
    memory_bytes: int | None = None


@dataclass(frozen=True)
class MeterState:
    """What a meter needs to go on where it stopped: persisted with every sample.

    Times are wall-clock epoch seconds (a restarted agent has a new monotonic origin)."""

    usage: Usage  # unbounded integrals so far
    started: float  # the job's start
    at: float  # the last sample
    working_set: int | None  # bytes at the last sample
    lifetime_peak: int | None  # the last lifetime peak seen (cgroup v2), bytes

    def to_dict(self) -> dict[str, Any]:
        return {"usage": self.usage.to_event(), "started": self.started, "at": self.at,
                "workingSet": self.working_set, "lifetimePeak": self.lifetime_peak}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MeterState:
        def opt_int(value: Any) -> int | None:
            return None if value is None else int(value)

        return cls(Usage.from_event(data["usage"]), float(data["started"]), float(data["at"]),
                   opt_int(data.get("workingSet")), opt_int(data.get("lifetimePeak")))


def sample_delay(age: float, interval: float, first: float = 0.05) -> float:
    """Seconds until the next sample of a job ``age`` seconds old: every ``first`` s at the
    start, then a tenth of the age, up to ``interval``. A short job is sampled densely, and
    the integral's relative error stays small at every age."""
    return min(interval, max(first, age / 10))


class Meter:
    """Cumulative usage of one attempt. Times are wall-clock seconds, passed in by the caller.

    ``resume`` continues from a persisted state: the first sample then covers the time the
    agent was away."""

    def __init__(self, source: UsageSource, *, allocation: Allocation, start: float,
                 resume: MeterState | None = None, gpu_util: GpuUtilisation | None = None) -> None:
        self._source = source
        self._allocation = allocation
        self._gpu_util = gpu_util
        self._last_busy: float | None = None
        if resume is not None:
            self._raw = resume.usage
            if gpu_util is not None and self._raw.gpu_util_seconds is None:
                self._raw = replace(self._raw, gpu_util_seconds=0.0)
            self._start, self._last_time = resume.started, resume.at
            self._last_memory, self._lifetime_peak = resume.working_set, resume.lifetime_peak
        else:
            self._raw = Usage(gpu_util_seconds=0.0 if gpu_util is not None else None)
            self._start, self._last_time = start, start
            self._last_memory, self._lifetime_peak = None, None
        self._unseen = resume is not None
        self.usage = self._bounded(self._last_time)
        self._last_gpu_memory: int | None = None

    @property
    def state(self) -> MeterState:
        return MeterState(self._raw, self._start, self._last_time, self._last_memory, self._lifetime_peak)

    def _recent_peak(self, reading: Sample) -> int | None:
        """The working set at the peak since the last sample, if the reading tells it."""
        if reading.peak_bytes is None:
            return None
        if reading.peak_is_lifetime:
            seen = self._lifetime_peak
            self._lifetime_peak = max(seen or 0, reading.peak_bytes)
            if seen is not None and reading.peak_bytes <= seen:
                return None  # the lifetime peak was reached earlier: nothing known about this stretch
        return max(0, reading.peak_bytes - reading.inactive_file_bytes)

    def sample(self, now: float, *, final: bool = False) -> Usage:
        """Take one reading at ``now`` and return the cumulative usage so far. ``final``: the
        job has ended (at ``now``); its memory is gone, so the stretch ends at its peak."""
        now = max(now, self._last_time)  # a clock stepping back bills nothing twice
        reading = self._source.read()
        elapsed = now - self._last_time
        raw = self._raw
        if reading is not None:
            current = reading.memory_bytes
            previous = current if self._last_memory is None else self._last_memory
            peak = self._recent_peak(reading)
            if self._unseen:
                level = max(previous, current, peak or 0)
                added = elapsed * level / GIB
            elif final:
                added = trapezoid_gb_seconds(self._last_time, previous, now, max(current, peak or 0))
            else:
                added = trapezoid_gb_seconds(self._last_time, previous, now, current)
            raw = replace(raw, cpu_seconds=max(raw.cpu_seconds, reading.cpu_seconds), gb_seconds=raw.gb_seconds + added)
            self._last_memory = current
        if self._gpu_util is not None:
            busy = self._gpu_util.busy_fraction()
            if busy is not None:
                before = busy if self._last_busy is None or self._unseen else self._last_busy
                raw = replace(raw, gpu_util_seconds=(raw.gpu_util_seconds or 0.0) + elapsed * (before + busy) / 2)
                self._last_busy = busy
            gpu_memory = self._gpu_util.memory_bytes()
            if gpu_memory is not None:
                # The first figure NVML gives starts the integral: when in the stretch before it
                # the job took that memory is unknown, and billing it all would over-count.
                before_bytes = gpu_memory if self._unseen else self._last_gpu_memory
                added_gpu = 0.0 if before_bytes is None else trapezoid_gb_seconds(self._last_time, before_bytes, now,
                                                                                   gpu_memory)
                raw = replace(raw, gpu_memory_gb_seconds=(raw.gpu_memory_gb_seconds or 0.0) + added_gpu)
                self._last_gpu_memory = gpu_memory
        self._raw = raw
        self._last_time = now
        self._unseen = False
        self.usage = self._bounded(now)
        return self.usage

    def _bounded(self, now: float) -> Usage:
        """The figures to report at ``now``: GPU-seconds exactly allocation x wall time, the
        others at most their allocation x wall time, and none below what was reported before."""
        wall = max(0.0, now - self._start)
        allocation, raw = self._allocation, self._raw
        cpu, gb = raw.cpu_seconds, raw.gb_seconds
        if allocation.cpus is not None:
            cpu = min(cpu, allocation.cpus * wall)
        if allocation.memory_bytes is not None:
            gb = min(gb, allocation.memory_bytes / GIB * wall)
        gpu = allocation.gpus * wall
        util = raw.gpu_util_seconds
        if util is not None:
            util = min(util, gpu)
        previous = getattr(self, "usage", None)
        if previous is not None:
            cpu, gb, gpu = max(cpu, previous.cpu_seconds), max(gb, previous.gb_seconds), max(gpu, previous.gpu_seconds)
            if util is not None and previous.gpu_util_seconds is not None:
                util = max(util, previous.gpu_util_seconds)
        return Usage(cpu, gb, gpu, util, raw.gpu_memory_gb_seconds)
