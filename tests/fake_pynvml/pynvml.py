"""``import pynvml`` for an agent *process* started by a test: the fake of
``tests/fake_nvml.py`` behind pynvml's module-level functions. Put this directory (and the
repository root) first on ``PYTHONPATH``. The host is the JSON file named by ``FAKE_NVML_HOST``
(``{"gpus": [{"uuid", "name", "minor", "memory_mb", "lost"}], "fromEnvironment": bool,
"processesFile": path}``), else ``TANVRIT_FAKE_GPUS`` H100s (default 1). The agent's real code
path runs unchanged above it, in its own process."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from tests.fake_nvml import (
    FakeGpu,
    FakeNvml,
    NVMLError,
    NVMLError_GpuIsLost,
    NVMLError_NotFound,
    NVMLError_NotSupported,
)

__all__ = ["NVMLError", "NVMLError_GpuIsLost", "NVMLError_NotFound", "NVMLError_NotSupported"]


def _host() -> FakeNvml:
    described = os.environ.get("FAKE_NVML_HOST")
    if described is None:
        return FakeNvml([FakeGpu(f"GPU-fake-{index}", "NVIDIA H100 80GB HBM3", minor=index)
                         for index in range(int(os.environ.get("TANVRIT_FAKE_GPUS", "1")))])
    spec = json.loads(Path(described).read_text())
    processes = spec.get("processesFile")
    return FakeNvml([FakeGpu(**gpu) for gpu in spec["gpus"]], from_environment=bool(spec.get("fromEnvironment")),
                    processes_file=Path(processes) if processes else None)


_host_nvml = _host()


def __getattr__(name: str) -> Any:
    if name.startswith("nvml"):
        return getattr(_host_nvml, name)
    raise AttributeError(name)
