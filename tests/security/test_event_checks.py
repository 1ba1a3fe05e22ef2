"""The pure checks of ``common.event_checks`` at their exact boundaries."""

from __future__ import annotations

import math

import pytest

from common import event_checks as ec

CAPACITY = ec.Capacity(cpus=2, memory_mb=4096, gpus=1)
ATTEMPT = ec.Attempt(created_at=1_000_000, assigned_at=1_010_000, started_at=1_011_000)
NOW = ATTEMPT.assigned_at + 60_000  # one minute into the attempt


def _usage(cpu: float = 0.0, gb: float = 0.0, gpu: float = 0.0, util: float | None = None,
           mem: float | None = None) -> str | None:
    return ec.usage_problem(cpu_seconds=cpu, gb_seconds=gb, gpu_seconds=gpu, gpu_util_seconds=util,
                            gpu_memory_gb_seconds=mem, capacity=CAPACITY, attempt=ATTEMPT, now=NOW)


def test_sequence_numbers_must_follow_on() -> None:
    assert ec.sequence_problem(8, 7) is None
    assert ec.sequence_problem(9, 7) == "sequence_gap"
    assert ec.sequence_problem(500, 0) is None  # a fresh agent's first event sets its base
    assert ec.sequence_problem(2**53 + 1, 0) == "sequence_gap"


def test_usage_bounds_are_capacity_times_wall_time_with_tolerance() -> None:
    cpu_bound = 2 * 60 * 1.05 + 5
    assert _usage(cpu=cpu_bound) is None
    assert _usage(cpu=math.nextafter(cpu_bound, math.inf)) == "usage_beyond_capacity"
    assert _usage(gb=4 * 60 * 1.05 + 5) is None
    assert _usage(gb=4 * 60 * 1.05 + 5.01) == "usage_beyond_capacity"
    assert _usage(gpu=1 * 60 * 1.05 + 5) is None
    assert _usage(gpu=1 * 60 * 1.05 + 5.01) == "usage_beyond_capacity"
    assert _usage(util=68.01) == "usage_beyond_capacity"
    # GPU memory size is not known to the coordinator: only bounded (1 TB per GPU x wall), so
    # that no figure overflows the ledger's 64-bit micro-units.
    assert _usage(mem=(1 * 60 * 1.05 + 5) * ec.MAX_GPU_MEMORY_GB) is None
    assert _usage(mem=(1 * 60 * 1.05 + 5) * ec.MAX_GPU_MEMORY_GB + 1) == "usage_beyond_capacity"


@pytest.mark.parametrize("value", [math.inf, math.nan, -0.5])
def test_usage_must_be_finite_and_not_negative(value: float) -> None:
    assert _usage(cpu=value) == "usage_beyond_capacity"
    assert _usage(mem=value) == "usage_beyond_capacity"


def test_times_are_ordered_within_the_skew_allowance() -> None:
    skew = ec.CLOCK_SKEW_MS
    assert ec.time_problem(NOW + skew, ATTEMPT, NOW) is None
    assert ec.time_problem(NOW + skew + 1, ATTEMPT, NOW) == "time_in_future"
    assert ec.time_problem(ATTEMPT.created_at - skew, ATTEMPT, NOW) is None
    assert ec.time_problem(ATTEMPT.created_at - skew - 1, ATTEMPT, NOW) == "time_out_of_order"
    assert ATTEMPT.started_at is not None
    before_start = ATTEMPT.started_at - skew - 1
    assert ec.time_problem(before_start, ATTEMPT, NOW) is None
    assert ec.time_problem(before_start, ATTEMPT, NOW, after_start=True) == "time_out_of_order"


def test_runtimes_are_not_negative_nor_longer_than_the_attempt() -> None:
    assert ec.runtime_problem(0, ATTEMPT, NOW) is None
    assert ec.runtime_problem(-1, ATTEMPT, NOW) == "invalid_runtime"
    assert ec.runtime_problem(60_000 + ec.CLOCK_SKEW_MS, ATTEMPT, NOW) is None
    assert ec.runtime_problem(60_000 + ec.CLOCK_SKEW_MS + 1, ATTEMPT, NOW) == "invalid_runtime"


def test_event_times_parse_or_are_refused() -> None:
    assert ec.event_time("1970-01-01T00:00:01Z") == 1000
    assert ec.event_time("yesterday") is None
    assert ec.event_time("1960-01-01T00:00:00Z") is None
