"""``import pynvml`` for an agent *process* on a host without GPUs: the fake of
``tests/fake_nvml.py`` behind pynvml's module-level functions. Put this directory (and the
repository root) first on ``PYTHONPATH``; ``TANVRIT_FAKE_GPUS`` says how many H100s the host
has (default 1). The agent's real code path runs unchanged above it."""

from __future__ import annotations

import os
from typing import Any

from tests.fake_nvml import (
    FakeGpu,
    FakeNvml,
    NVMLError,
    NVMLError_GpuIsLost,
    NVMLError_NotFound,
    NVMLError_NotSupported,
)

_host = FakeNvml([FakeGpu(f"GPU-fake-{index}", "NVIDIA H100 80GB HBM3", minor=index)
                  for index in range(int(os.environ.get("TANVRIT_FAKE_GPUS", "1")))])

__all__ = ["NVMLError", "NVMLError_GpuIsLost", "NVMLError_NotFound", "NVMLError_NotSupported"]


def __getattr__(name: str) -> Any:
    if name.startswith("nvml"):
        return getattr(_host, name)
    raise AttributeError(name)
