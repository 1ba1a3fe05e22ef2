"""Fingerprint probes; NVML is faked at the pynvml call boundary (tests/fake_nvml.py), the probe
code is the real one."""

from __future__ import annotations

import pytest

from agentd.fingerprint import Facts, collect
from agentd.fingerprint.cpu import CpuProbe
from agentd.fingerprint.gpu import NvmlGpuProbe
from agentd.fingerprint.host import HostProbe, normalise_arch
from agentd.fingerprint.memory import MemoryProbe
from tests.fake_nvml import FakeGpu, FakeNvml


@pytest.mark.parametrize(("machine", "expected"), [
    ("x86_64", "amd64"), ("aarch64", "arm64"), ("ppc64le", "ppc64le"), ("s390x", "s390x"), ("riscv64", "riscv64"),
])
def test_arch_is_normalised(machine: str, expected: str) -> None:
    assert normalise_arch(machine) == expected
    facts = Facts()
    HostProbe(machine=machine, system="Linux", hostname="h1").probe(facts)
    assert facts.labels == {"arch": expected, "os": "linux", "hostname": "h1"}


def test_host_without_driver_has_zero_gpus(caplog: pytest.LogCaptureFixture) -> None:
    nvml = FakeNvml([], no_driver=True)
    facts = collect([NvmlGpuProbe(nvml)])
    assert facts.gpus == 0
    assert facts.labels["gpus"] == "0"
    assert "gpuModel" not in facts.labels


def test_one_gpu() -> None:
    nvml = FakeNvml([FakeGpu("GPU-1", "NVIDIA H200", minor=0, memory_mb=141 * 1024)])
    facts = collect([NvmlGpuProbe(nvml)])
    assert facts.gpus == 1
    assert facts.labels["gpus"] == "1"
    assert facts.labels["gpuModel"] == "NVIDIA H200"
    assert facts.gpu_memory_mb == [141 * 1024]
    assert nvml.shutdowns == 1


def test_several_gpus_of_two_models() -> None:
    nvml = FakeNvml([FakeGpu("GPU-1", "NVIDIA A100", 0, 40960), FakeGpu("GPU-2", "NVIDIA A100", 1, 40960),
                     FakeGpu("GPU-3", "NVIDIA L4", 2, 24576)])
    facts = collect([NvmlGpuProbe(nvml)])
    assert facts.gpus == 3
    assert facts.labels["gpuModel"] == "NVIDIA A100,NVIDIA L4"
    assert facts.labels["gpuMemoryMb"] == "40960,40960,24576"


def test_real_host_probes_report_cpus_and_memory() -> None:
    facts = collect([CpuProbe(), MemoryProbe()])
    assert facts.cpus >= 1 and facts.labels["cpus"] == str(int(facts.cpus))
    assert facts.memory_mb > 0 and facts.labels["memoryMb"] == str(facts.memory_mb)


def test_a_broken_probe_does_not_stop_fingerprinting() -> None:
    class Broken:
        name = "broken"

        def probe(self, facts: Facts) -> None:
            raise RuntimeError("boom")

    facts = collect([Broken(), HostProbe(machine="x86_64", system="Linux", hostname="h")])
    assert facts.labels["arch"] == "amd64"
