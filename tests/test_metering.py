"""Metering: the pure integration, the meter over injected readings, and accuracy against
what jobs measure about themselves in real cgroups (and with psutil without one)."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import trio

from agentd.cgroups.base import Limits, Sample
from agentd.cgroups.v1 import V1Manager
from agentd.executor import ExecSpec, execute
from agentd.metering import (
    GIB,
    Allocation,
    Meter,
    MeterState,
    NvmlUtilisation,
    Usage,
    sample_delay,
    trapezoid_gb_seconds,
)
from agentd.nvml import OffLoopNvml
from common.states import JobState
from tests.cgroup_fixtures import MemoryTruth, real_v1_manager
from tests.fake_nvml import FakeGpu, FakeNvml


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
    source = Readings([Sample(0.0, 0), Sample(1.0, 2**30), Sample(0.5, 2**30), None, Sample(3.0, 0), None])
    meter = Meter(source, allocation=Allocation(gpus=2), start=0.0)
    assert meter.sample(0.0) == Usage(0.0, 0.0, 0.0)
    assert meter.sample(2.0) == Usage(1.0, 1.0, 4.0)
    third = meter.sample(4.0)  # CPU reading went down (psutil lost an exited child): keep the max
    assert (third.cpu_seconds, third.gb_seconds, third.gpu_seconds) == (1.0, 3.0, 8.0)
    fourth = meter.sample(5.0)  # nothing readable: GPU time still runs
    assert (fourth.cpu_seconds, fourth.gb_seconds, fourth.gpu_seconds) == (1.0, 3.0, 10.0)
    last = meter.sample(6.0)
    assert (last.cpu_seconds, last.gb_seconds) == (3.0, 3.5)
    assert meter.sample(5.0).gpu_seconds == 12.0  # a clock stepping back bills nothing twice


def test_meter_resumes_after_the_agent_was_away_gpu_exact_memory_at_the_peak() -> None:
    # Persisted at t=110 with 1 GiB in use; the agent was down until t=125. The cgroup's peak
    # since that sample (v1, reset at each reading) was 1.5 GiB, 0.25 GiB of it cache now.
    state = MeterState(Usage(4.0, 7.0, 20.0), started=100.0, at=110.0, working_set=2**30, lifetime_peak=None)
    restored = MeterState.from_dict(state.to_dict())
    assert restored == state
    peak = Sample(9.0, 2**30, peak_bytes=3 * 2**29, inactive_file_bytes=2**28)
    meter = Meter(Readings([peak, Sample(9.5, 2**30)]), allocation=Allocation(gpus=2), start=999.0, resume=restored)
    after_gap = meter.sample(125.0)
    assert after_gap.gpu_seconds == 50.0  # 2 GPUs x 25 s since the job's own start, exactly
    assert after_gap.gb_seconds == pytest.approx(7.0 + 15 * 1.25)
    assert after_gap.cpu_seconds == 9.0
    # From then on, ordinary trapezoids again.
    assert meter.sample(126.0).gb_seconds == pytest.approx(7.0 + 15 * 1.25 + 1.0)


def test_the_last_stretch_of_a_job_ends_at_its_peak() -> None:
    # A short job: started with nothing in the group, gone (and its memory with it) at its end;
    # the peak since the start sample is all that says what it held.
    start = Sample(0.0, 0, peak_bytes=0)
    end = Sample(0.05, 0, peak_bytes=64 * 2**20 + 2**20, inactive_file_bytes=2**20)
    meter = Meter(Readings([start, end]), allocation=Allocation(), start=0.0)
    meter.sample(0.0)
    usage = meter.sample(0.1, final=True)
    assert usage.gb_seconds == pytest.approx(0.1 * (64 / 1024) / 2)


def test_cgroup2_lifetime_peak_only_counts_when_it_grew() -> None:
    meter = Meter(Readings([Sample(0, 2**30, peak_bytes=2 * 2**30, peak_is_lifetime=True),
                            Sample(0, 0, peak_bytes=2 * 2**30, peak_is_lifetime=True)]),
                  allocation=Allocation(), start=0.0)
    assert meter.sample(1.0).gb_seconds == pytest.approx(1.0)
    # The lifetime peak is old news: the last stretch ends at what is in use (0), not at 2 GiB.
    assert meter.sample(2.0, final=True).gb_seconds == pytest.approx(1.0 + 0.5)


def test_reports_never_exceed_allocation_times_wall_time() -> None:
    # A burst above the quota (or a job without isolation) is reported at the allocation.
    readings = Readings([Sample(0.0, 0), Sample(5.0, 4 * 2**30), Sample(6.0, 0)])
    meter = Meter(readings, allocation=Allocation(gpus=1, cpus=2.0, memory_bytes=2**30), start=10.0)
    meter.sample(10.0)
    usage = meter.sample(12.0)
    assert (usage.cpu_seconds, usage.gb_seconds, usage.gpu_seconds) == (4.0, 2.0, 2.0)
    later = meter.sample(20.0)
    assert (later.cpu_seconds, later.gpu_seconds) == (6.0, 10.0)
    assert later.gb_seconds == pytest.approx(min(10.0, 4.0 + 8 * 2))


async def test_gpu_memory_of_a_job_whose_launcher_forks_is_metered_once() -> None:
    """The job holds 1 GiB on each of its two GPUs; its launcher has a forked child (as a pyenv
    shim's subshells are, while ``python3`` starts), which inherits the environment the fake
    driver reads but holds no CUDA context. One NVML look while the child lives once billed
    4 GiB, and the meter carried that figure to the next look: 3-4 GiB x runtime end to end."""
    nvml = FakeNvml([FakeGpu("GPU-a", "NVIDIA H100 80GB HBM3", minor=0),
                     FakeGpu("GPU-b", "NVIDIA H100 80GB HBM3", minor=1)], from_environment=True)
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "GPU-a,GPU-b", "FAKE_GPU_MEMORY_MB": "1024"}
    launcher = await trio.lowlevel.open_process(["/bin/sh", "-c", "sleep 60 & echo forked; wait"], env=env,
                                                stdout=subprocess.PIPE, start_new_session=True)
    try:
        assert launcher.stdout is not None
        with trio.fail_after(10):
            assert (await launcher.stdout.receive_some()).strip() == b"forked"  # the child exists now
        pids = [launcher.pid, *(child.pid for child in psutil.Process(launcher.pid).children(recursive=True))]
        util = NvmlUtilisation(OffLoopNvml(nvml), ("GPU-a", "GPU-b"))
        meter = Meter(Readings([None] * 3), allocation=Allocation(gpus=2), start=100.0, gpu_util=util)
        await util.refresh(pids)
        assert util.memory_bytes() == 2 * 2**30
        meter.sample(100.0)  # the first figure starts the integral
        meter.sample(101.5)
        usage = meter.sample(103.0, final=True)
        assert usage.gpu_memory_gb_seconds == pytest.approx(2 * 3.0)
    finally:
        os.killpg(launcher.pid, signal.SIGKILL)
        await launcher.wait()


def test_sampling_is_dense_at_the_start() -> None:
    assert sample_delay(0.0, 1.0) == 0.05
    assert sample_delay(3.0, 1.0) == pytest.approx(0.3)
    assert sample_delay(60.0, 1.0) == 1.0


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


async def _against_truth(tmp_path: Path, manager: V1Manager, command: str, *, memory_mb: int = 1024,
                         interval: float = 1.0) -> tuple[Usage, MemoryTruth, JobState, float]:
    """Run ``command`` in a real v1 cgroup with a ground-truth reader beside the meter."""
    spec = ExecSpec(job_id=f"job_{os.urandom(4).hex()}", command=command, env={}, timeout_seconds=120,
                    workdir=tmp_path / "work", meter_interval=interval,
                    limits=Limits(memory_bytes=memory_mb * 2**20, cpus=1.0))
    truth = MemoryTruth(manager, spec.job_id)
    output = bytearray()
    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(truth.run)
            outcome = await execute(spec, output.extend, trio.Event(), cgroups=manager)
    print(f"{command!r}: billed {outcome.usage.gb_seconds:.5f} GB-s, truth {truth.gb_seconds:.5f} GB-s "
          f"({truth.readings} readings), wall {outcome.runtime_ms} ms")
    return outcome.usage, truth, outcome.state, outcome.runtime_ms / 1000


@pytest.mark.cgroups
async def test_a_100_ms_job_has_a_plausible_gb_seconds(tmp_path: Path, v1: V1Manager) -> None:
    usage, truth, state, wall = await _against_truth(
        tmp_path, v1, "python3 -c 'import time; b = bytearray(64 * 2**20); time.sleep(0.1)'")
    assert state == JobState.SUCCEEDED
    # Shorter than the sampling interval, and its memory gone before its exit is seen: the
    # start sample, the dense early samples and the peak at the end still see what it held.
    assert 0 < usage.gb_seconds <= 1.0 * wall  # never beyond its 1 GiB limit x wall time
    assert usage.gb_seconds == pytest.approx(truth.gb_seconds, rel=0.5)


@pytest.mark.cgroups
async def test_an_oom_killed_job_within_20_percent(tmp_path: Path, v1: V1Manager) -> None:
    # Grows 8 MiB every 20 ms into a 256 MiB limit: killed well under a second after it started.
    grow = ("python3 -c 'import time\nb = []\nwhile True:\n    b.append(bytearray(8 * 2**20))\n"
            "    time.sleep(0.02)'")
    usage, truth, state, _ = await _against_truth(tmp_path, v1, grow, memory_mb=256)
    assert state == JobState.FAILED
    assert truth.gb_seconds > 0.02
    assert usage.gb_seconds == pytest.approx(truth.gb_seconds, rel=0.2)


@pytest.mark.cgroups
async def test_400_mb_held_for_2_s_within_10_percent(tmp_path: Path, v1: V1Manager) -> None:
    usage, truth, state, _ = await _against_truth(
        tmp_path, v1, "python3 -c 'import time; b = bytearray(400 * 2**20); time.sleep(2)'")
    assert state == JobState.SUCCEEDED
    assert truth.gb_seconds > 400 / 1024 * 2 * 0.9  # held at least that long (start-up and exit add more)
    assert usage.gb_seconds == pytest.approx(truth.gb_seconds, rel=0.1)


@pytest.mark.cgroups
async def test_page_cache_is_not_billed_as_memory(tmp_path: Path, v1: V1Manager) -> None:
    # 400 MB written to a file, then asleep: the cgroup's usage counts the cache the kernel can
    # drop at will; the working set (what is billed) does not.
    usage, truth, state, _ = await _against_truth(
        tmp_path, v1, "dd if=/dev/zero of=blob bs=1M count=400 status=none && sleep 4")
    assert state == JobState.SUCCEEDED
    in_use_gb_seconds = 400 / 1024 * 4  # what billing "memory in use" would have charged
    assert usage.gb_seconds < 0.05 * in_use_gb_seconds
    assert truth.gb_seconds < 0.05 * in_use_gb_seconds
