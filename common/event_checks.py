"""What an agent may report: pure checks of one job event against what the coordinator knows.

The coordinator runs them before applying an event (``coordinator/store/queries/agents.py``);
an agent may run the same ones before spooling, so that it never reports what the
coordinator would refuse. Each check returns a rejection code, or None when the event is sane.

Physics, not policy: usage is bounded by the agent's registered capacity over the attempt's
wall time (an allotment is enforced by cgroups only where the host has them, but no job can
use more than the host has), times are bounded by the clock-skew allowance, and sequence
numbers are contiguous. Times are epoch milliseconds; usage is in seconds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from common.clock import parse_rfc3339, to_millis

# How far an agent's clock may be from the coordinator's. Times from the two clocks are compared
# with this much slack; a time this far in the coordinator's future is refused.
CLOCK_SKEW_MS = 120_000
# Usage may exceed capacity x wall time by this fraction plus this many seconds: sampling and
# the cgroup quota period both let a reading run slightly ahead.
USAGE_TOLERANCE = 0.05
USAGE_SLACK_SECONDS = 5.0
# More memory than any GPU has (the largest hold under 200 GB): the bound on GPU-memory GB-seconds.
MAX_GPU_MEMORY_GB = 1024
# Largest sequence number, runtime or time accepted: exact in a double, far inside SQLite's int64.
MAX_INTEGER = 2**53

SEQUENCE_GAP = "sequence_gap"
USAGE_BEYOND_CAPACITY = "usage_beyond_capacity"
TIME_IN_FUTURE = "time_in_future"
TIME_OUT_OF_ORDER = "time_out_of_order"
INVALID_RUNTIME = "invalid_runtime"
INVALID_TIME = "invalid_time"
INVALID_EVENT = "invalid_event"


@dataclass(frozen=True)
class Capacity:
    """What the agent registered (or last reported in a heartbeat)."""

    cpus: float
    memory_mb: int
    gpus: int


@dataclass(frozen=True)
class Attempt:
    """What the coordinator knows of one attempt of a job (coordinator times unless noted)."""

    created_at: int  # the job's creation
    assigned_at: int  # this attempt's assignment
    started_at: int | None = None  # as the agent reported it (agent clock)
    # When the attempt ended, for an attempt that is over (None while it runs, or may still run
    # unseen, as a LOST one may): its usage cannot grow past this, however late it is reported.
    ended_at: int | None = None
    # The GPUs the attempt was given (None: unknown, bounded by the agent's capacity only).
    gpus: int | None = None


def sequence_problem(seq: int, last_applied: int) -> str | None:
    """The next event must carry ``last_applied + 1``; a gap is refused, never skipped over.

    An agent that has applied nothing yet (``last_applied`` 0: just registered, perhaps again
    with a spool that already counted past 1) sets its base with its first event.
    Replays (``seq <= last_applied``) are the caller's to skip before asking."""
    if seq > MAX_INTEGER:
        return SEQUENCE_GAP
    if last_applied == 0 or seq == last_applied + 1:
        return None
    return SEQUENCE_GAP


def event_time(text: str) -> int | None:
    """An event's RFC 3339 time in epoch ms, or None when it does not parse or is out of range."""
    try:
        millis = to_millis(parse_rfc3339(text))
    except (ValueError, OverflowError):
        return None
    return millis if 0 <= millis <= MAX_INTEGER else None


def time_problem(at: int, attempt: Attempt, now: int, *, after_start: bool = False) -> str | None:
    """A reported time must not be in the future (beyond the skew allowance) nor before the
    job was created; a finishing time (``after_start``) not before the reported start either."""
    if at > now + CLOCK_SKEW_MS:
        return TIME_IN_FUTURE
    if at < attempt.created_at - CLOCK_SKEW_MS:
        return TIME_OUT_OF_ORDER
    if after_start and attempt.started_at is not None and at < attempt.started_at - CLOCK_SKEW_MS:
        return TIME_OUT_OF_ORDER
    return None


def runtime_problem(runtime_ms: int, attempt: Attempt, now: int) -> str | None:
    """A runtime is at least 0 and no longer than the attempt has existed (plus the skew)."""
    if runtime_ms < 0 or runtime_ms > max(0, now - attempt.assigned_at) + CLOCK_SKEW_MS:
        return INVALID_RUNTIME
    return None


def usage_bound(per_second: float, attempt: Attempt, now: int) -> float:
    """The most of a resource ``per_second`` wide an attempt can have used by ``now``, in
    resource-seconds, tolerance included. The wall time is the coordinator's, from the
    assignment to ``now``: the agent measures a duration inside it, so clock skew does not
    enter. For an attempt that ended, the wall time stops at its (agent-reported) end plus the
    skew allowance: usage reported late does not grow with the time since."""
    end = now if attempt.ended_at is None else min(now, attempt.ended_at + CLOCK_SKEW_MS)
    wall_seconds = max(0, end - attempt.assigned_at) / 1000
    return per_second * wall_seconds * (1 + USAGE_TOLERANCE) + USAGE_SLACK_SECONDS


def usage_problem(*, cpu_seconds: float, gb_seconds: float, gpu_seconds: float,
                  gpu_util_seconds: float | None, gpu_memory_gb_seconds: float | None,
                  capacity: Capacity, attempt: Attempt, now: int) -> str | None:
    """Cumulative usage of an attempt must fit the agent's capacity over its wall time: CPU
    seconds within cpus x wall, GB-seconds within memory x wall, GPU seconds (and GPU
    utilisation seconds) within the attempt's GPUs x wall (GPUs are allocated whole, and billed
    at GPU prices: a 1-GPU job on an 8-GPU host is billed for one). GPU-memory GB-seconds are
    only checked for being finite, not negative and within ``MAX_GPU_MEMORY_GB`` per GPU: the
    coordinator does not know the GPUs' memory."""
    figures = [cpu_seconds, gb_seconds, gpu_seconds, gpu_util_seconds or 0.0, gpu_memory_gb_seconds or 0.0]
    if any(not math.isfinite(value) or value < 0 for value in figures):
        return USAGE_BEYOND_CAPACITY
    gpus = capacity.gpus if attempt.gpus is None else min(capacity.gpus, attempt.gpus)
    gpu_bound = usage_bound(gpus, attempt, now)
    if (cpu_seconds > usage_bound(capacity.cpus, attempt, now)
            # Not a check of the GPUs' memory (unknown here), but a bound: a figure of 1e300
            # became micro-units beyond 64 bits, which neither database can store.
            or (gpu_memory_gb_seconds or 0.0) > gpu_bound * MAX_GPU_MEMORY_GB
            or gb_seconds > usage_bound(capacity.memory_mb / 1024, attempt, now)
            or gpu_seconds > gpu_bound or (gpu_util_seconds or 0.0) > gpu_bound):
        return USAGE_BEYOND_CAPACITY
    return None
