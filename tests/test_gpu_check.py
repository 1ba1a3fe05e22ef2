"""bench/gpu_check.py: it cannot prove anything here (no GPU), so it must say so clearly; and
its comparison runs end to end against the NVML fake, so on a GPU host only libcuda is new."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

from tests.fake_nvml import FakeGpu, FakeNvml

SCRIPT = Path(__file__).resolve().parent.parent / "bench" / "gpu_check.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_without_a_gpu_it_says_so_and_exits_2(tmp_path: Path) -> None:
    out = tmp_path / "figures.json"
    result = subprocess.run([sys.executable, str(SCRIPT), "--json", str(out)], capture_output=True, text=True,
                            timeout=120, check=False)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("gpu_check: no NVIDIA GPU on this host: "), result.stderr
    assert result.stderr.rstrip().endswith("Run it on a GPU host.")
    assert "Traceback" not in result.stderr
    assert not out.exists()


def test_the_comparison_runs_end_to_end_against_the_fake(tmp_path: Path) -> None:
    nvml = FakeNvml([FakeGpu("GPU-0001", "NVIDIA H200", minor=0, memory_mb=143771)], from_environment=True)
    out = tmp_path / "figures.json"
    # The fake driver shows the job's one process holding 512 MiB on its GPU for its life.
    job = "FAKE_GPU_MEMORY_MB=512 exec python3 -c 'import time; time.sleep(2)'"
    assert _load().main(["--json", str(out)], nvml=nvml, command=job) == 0
    figures = json.loads(out.read_text())
    assert figures["detected"]["labels"]["gpus"] == "1"
    assert [unit["uuid"] for unit in figures["detected"]["units"]] == ["GPU-0001"]
    job_figures = figures["job"]
    # 1 GPU x wall time: the agent's figure is allocation x its own wall time; the script's wall
    # time also holds the job's spawn and teardown (long on a loaded machine, for a 2 s job).
    assert abs(job_figures["gpuSeconds"]["error"]) < 0.6
    truth = job_figures["gpuMemoryGbSeconds"]["truth"]
    assert 0.5 * 1.5 < truth <= 0.5 * 6  # 0.5 GiB for the 2 s and more the process lived (start-up)
    # Both integrate NVML's per-process figure; the agent reads it less often (every 0.5 s), so
    # on a process that lives ~2 s it may miss a read's worth. A real check runs for 10 s and more.
    assert abs(job_figures["gpuMemoryGbSeconds"]["error"]) < 0.6
