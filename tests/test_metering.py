"""Metering: the pure integration, the meter over injected readings, and accuracy against
what jobs measure about themselves in real cgroups (and with psutil without one)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from agentd.cgroups.base import Sample
from agentd.cgroups.v1 import V1Manager
from agentd.executor import ExecSpec, execute
from agentd.metering import GIB, Meter, Usage, trapezoid_gb_seconds
from common.states import JobState
from tests.cgroup_fixtures import real_v1_manager


class Readings:
    def __init__(self, samples: list[Sample | None]) -> None:
        self._samples = samples

    def read(self) -> Sample | None:
        return self._samples.pop(0)


def test_trapezoid_is_exact_for_linear_growth() -> None:
    assert trapezoid_gb_seconds(0, 0, 10, 2 * 2**30) == pytest.approx(10.0)
    assert trapezoid_gb_seconds(5, 2**30, 5, 2**30) == 0.0
    assert trapezoid_gb_seconds(6, 2**30, 5, 2**30) == 0.0  # a clock step back adds nothing


def test_meter_accumulates_and_never_goes_down() -> None:
    source = Readings([Sample(0.0, 0), Sample(1.0, 2**30), Sample(0.5, 2**30), None, Sample(3.0, 0)])
    meter = Meter(source, gpus=2, now=0.0)
    assert meter.sample(0.0) == Usage(0.0, 0.0, 0.0)
    assert meter.sample(2.0) == Usage(1.0, 1.0, 4.0)
    third = meter.sample(4.0)  # CPU reading went down (psutil lost an exited child): keep the max
    assert (third.cpu_seconds, third.gb_seconds, third.gpu_seconds) == (1.0, 3.0, 8.0)
    fourth = meter.sample(5.0)  # nothing readable: GPU time still runs
    assert (fourth.cpu_seconds, fourth.gb_seconds, fourth.gpu_seconds) == (1.0, 3.0, 10.0)
    last = meter.sample(6.0)
    assert (last.cpu_seconds, last.gb_seconds) == (3.0, 3.5)


def test_meter_resumes_from_a_persisted_figure() -> None:
    meter = Meter(Readings([Sample(5.0, 0), Sample(6.0, 0)]), gpus=0, now=100.0, start=Usage(4.0, 7.0, 0.0))
    meter.sample(100.0)
    assert meter.sample(101.0) == Usage(6.0, 7.0, 0.0)


# A job that reports its own CPU time (getrusage, including its interpreter's start-up), then
# leaves at once: interpreter teardown would be CPU the job spends after measuring itself.
# The cgroup also counts the wrapper shell that starts the job (tens of ms on a loaded
# machine), which the job cannot see in its own rusage: 5 s keeps that well inside 2%.
CPU_BURNER = (
    "import os, resource, sys, time\n"
    "end = time.process_time() + 5.0\n"
    "while time.process_time() < end:\n"
    "    pass\n"
    "r = resource.getrusage(resource.RUSAGE_SELF)\n"
    "print(r.ru_utime + r.ru_stime)\n"
    "sys.stdout.flush()\n"
    "os._exit(0)\n"
)

# Holds 512 MiB (touched, so resident) for a known time and reports how long it held it, from
# before allocating to just before leaving (at once: freeing it at teardown would add time).
MEMORY_HOLDER = (
    "import os, sys, time\n"
    "start = time.monotonic()\n"
    "block = bytearray(512 * 2**20)\n"
    "time.sleep(4.0)\n"
    "print(time.monotonic() - start)\n"
    "sys.stdout.flush()\n"
    "os._exit(0)\n"
)


@pytest.fixture
def v1() -> Iterator[V1Manager]:
    yield from real_v1_manager()


async def _metered(tmp_path: Path, script: str, manager: Any, interval: float) -> tuple[float, Usage]:
    (tmp_path / "job.py").write_text(script)
    output = bytearray()
    spec = ExecSpec(job_id=f"job_{os.urandom(4).hex()}", command=f"python3 {tmp_path / 'job.py'}", env={},
                    timeout_seconds=120, workdir=tmp_path / "work", meter_interval=interval)
    reported: list[Usage] = []
    with trio.fail_after(120):
        outcome = await execute(spec, output.extend, trio.Event(), cgroups=manager, on_usage=reported.append)
    assert outcome.state == JobState.SUCCEEDED, output
    assert reported and reported[-1] == outcome.usage  # the last report is the final figure
    assert [u.cpu_seconds for u in reported] == sorted(u.cpu_seconds for u in reported)
    return float(output.decode().split()[-1]), outcome.usage


@pytest.mark.cgroups
async def test_cpu_metered_within_two_percent_in_a_cgroup(tmp_path: Path, v1: V1Manager) -> None:
    measured, usage = await _metered(tmp_path, CPU_BURNER, v1, interval=0.5)
    assert usage.cpu_seconds == pytest.approx(measured, rel=0.02)


@pytest.mark.cgroups
async def test_memory_metered_within_ten_percent_in_a_cgroup(tmp_path: Path, v1: V1Manager) -> None:
    held_seconds, usage = await _metered(tmp_path, MEMORY_HOLDER, v1, interval=0.2)
    expected = 512 * 2**20 / GIB * held_seconds
    assert usage.gb_seconds == pytest.approx(expected, rel=0.10)


async def test_cpu_metered_with_psutil_without_cgroups(tmp_path: Path) -> None:
    measured, usage = await _metered(tmp_path, CPU_BURNER, None, interval=0.2)
    # The tree's figure lags by up to one sampling interval at the end; it never exceeds the truth much.
    assert measured * 0.8 <= usage.cpu_seconds <= measured * 1.05
