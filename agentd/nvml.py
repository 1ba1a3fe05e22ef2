"""NVML off the event loop: every call runs in a worker thread and is abandoned after a timeout.

A wedged GPU driver can block an NVML call for minutes (or for ever). The agent's loop must
go on heartbeating, so callers never call pynvml directly::

    nvml = OffLoopNvml(pynvml, timeout=5.0)
    units = await nvml.call(discover_units)        # discover_units(module) runs in a thread
        └─ NvmlTimeout after 5 s: the thread is abandoned (it may finish later, unseen)

At most one worker thread is in NVML at a time (a capacity limiter of one), so a hung
driver holds one thread, not one per attempt: while it hangs, later calls wait for the
limiter and time out in turn, without starting threads of their own.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import trio

T = TypeVar("T")

DEFAULT_TIMEOUT_SECONDS = 5.0


class NvmlUnavailable(Exception):
    """NVML could not answer: no driver, an error from the library, or a timeout."""


class NvmlTimeout(NvmlUnavailable):
    """An NVML call did not return within its timeout; its thread was abandoned."""


class OffLoopNvml:
    """The pynvml module (or a fake at its boundary) behind bounded, off-loop calls."""

    def __init__(self, module: Any, *, timeout: float = DEFAULT_TIMEOUT_SECONDS) -> None:
        self.module = module
        self.timeout = timeout
        self._limiter = trio.CapacityLimiter(1)
        self.timeouts = 0  # how many calls were abandoned: a sign of a hung driver

    async def call(self, fn: Callable[[Any], T]) -> T:
        """``fn(module)`` in a worker thread; returns its result or re-raises what it raised.

        Raises ``NvmlTimeout`` when it takes longer than the instance's timeout. ``fn`` may
        make several NVML calls; the bound is on all of them together.
        """
        limit = self.timeout
        with trio.move_on_after(limit):
            return await trio.to_thread.run_sync(fn, self.module, limiter=self._limiter, abandon_on_cancel=True)
        self.timeouts += 1
        raise NvmlTimeout(f"NVML did not answer within {limit:g} s (is the GPU driver hung?)")


# --- queries, each run whole inside ``OffLoopNvml.call`` ------------------------------------

_COMPUTE = ("nvmlDeviceGetComputeRunningProcesses",)
_ALL = ("nvmlDeviceGetComputeRunningProcesses", "nvmlDeviceGetGraphicsRunningProcesses")


def _processes(nvml: Any, handle: Any, queries: Sequence[str] = _ALL) -> dict[int, int | None]:
    """pid -> GPU memory in bytes (None where the driver does not say) of the processes NVML
    shows on ``handle`` (compute and graphics together, unless ``queries`` says otherwise)."""
    found: dict[int, int | None] = {}
    for query in queries:
        if not hasattr(nvml, query):
            continue
        for process in getattr(nvml, query)(handle):
            used = getattr(process, "usedGpuMemory", None)
            pid, before = int(process.pid), found.get(int(process.pid))
            # A process with compute and graphics contexts holds both.
            found[pid] = before if used is None else (before or 0) + int(used)
    return found


def process_counts(nvml: Any, uuids: Sequence[str]) -> dict[str, int | None]:
    """How many compute processes NVML shows on each unit; None for a unit NVML fails to
    query. Graphics processes do not count: a display server lives on a workstation's GPU
    for good, and would otherwise keep it from every job."""
    counts: dict[str, int | None] = {}
    for uuid in uuids:
        try:
            counts[uuid] = len(_processes(nvml, nvml.nvmlDeviceGetHandleByUUID(uuid), _COMPUTE))
        except Exception:  # a failing unit: the caller keeps it out of the free pool
            counts[uuid] = None
    return counts


@dataclass(frozen=True)
class JobGpuReading:
    """One look at a job's units: utilisation summed over them (0..1 each) and GPU memory
    its processes hold; either is None where NVML does not give it."""

    busy_fraction: float | None
    memory_bytes: int | None


def read_job_gpus(nvml: Any, uuids: Sequence[str], pids: Collection[int]) -> JobGpuReading:
    """Utilisation of ``uuids`` and the GPU memory held on them by processes in ``pids``
    (NVML's per-process figures; a unit is the job's alone, so utilisation is too)."""
    busy: float | None = 0.0
    held, unknown = 0, False
    for uuid in uuids:
        handle = nvml.nvmlDeviceGetHandleByUUID(uuid)
        try:
            rate = float(nvml.nvmlDeviceGetUtilizationRates(handle).gpu) / 100
            busy = None if busy is None else busy + rate
        except Exception:  # NVMLError_NotSupported on MIG instances: utilisation unknown
            busy = None
        for pid, used in _processes(nvml, handle).items():
            if pid in pids:
                unknown = unknown or used is None
                held += used or 0
    # No figure at all from the driver (e.g. without the privilege to see other users'
    # processes' memory) is unknown, not zero.
    memory = None if unknown and not held else held
    return JobGpuReading(busy, memory)
