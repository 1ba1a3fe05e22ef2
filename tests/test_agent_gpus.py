"""GPU assignment over fake multi-GPU hosts: no sharing, lowest free first, release, restore,
and what a job is told (CUDA_VISIBLE_DEVICES) and denied (the other GPUs' device nodes)."""

from __future__ import annotations

from pathlib import Path

import pytest

from agentd.executor import ExecSpec, job_environment
from agentd.gpus import GpuAllocator


def test_two_jobs_never_share_a_gpu() -> None:
    gpus = GpuAllocator(range(4))
    first = gpus.allocate("job_a", 2)
    second = gpus.allocate("job_b", 2)
    assert first == (0, 1) and second == (2, 3)
    assert gpus.allocate("job_c", 1) is None
    assert gpus.allocate("job_a", 2) == (0, 1)  # asking again is not a second grant
    gpus.release("job_a")
    assert gpus.allocate("job_c", 1) == (0,)
    assert set(gpus.allocate("job_d", 1) or ()).isdisjoint({0, 2, 3})


def test_zero_gpus_is_always_granted_and_holds_nothing() -> None:
    gpus = GpuAllocator(range(1))
    assert gpus.allocate("job_a", 0) == ()
    assert gpus.allocate("job_b", 1) == (0,)
    assert gpus.free == ()


def test_restore_refuses_a_clash() -> None:
    gpus = GpuAllocator(range(2))
    gpus.restore("job_a", [1])
    assert gpus.allocate("job_b", 1) == (0,)
    with pytest.raises(ValueError, match="not all free"):
        gpus.restore("job_c", [0])


def test_a_job_is_told_its_gpus_and_denied_the_others() -> None:
    gpus = GpuAllocator(range(3))
    mine = gpus.allocate("job_a", 2) or ()
    assert gpus.denied_devices(mine) == ((195, 2),)
    env = job_environment(ExecSpec(job_id="job_a", command="true", env={}, timeout_seconds=1,
                                   workdir=Path("/tmp/x"), gpus=mine))
    assert env["CUDA_VISIBLE_DEVICES"] == "0,1"
    no_gpu = job_environment(ExecSpec(job_id="job_b", command="true", env={}, timeout_seconds=1,
                                      workdir=Path("/tmp/y")))
    assert "CUDA_VISIBLE_DEVICES" not in no_gpu
