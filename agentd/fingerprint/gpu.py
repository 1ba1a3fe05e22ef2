"""NVIDIA GPUs through NVML (pynvml, from the nvidia-ml-py package).

The module is passed in, so tests replace it at the pynvml call boundary and the code path
stays the real one. A host without the driver has ``gpus=0`` and one log line saying why.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import structlog

from agentd.fingerprint import Facts

log = structlog.get_logger("tanvrit.agentd.fingerprint")


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class NvmlGpuProbe:
    name = "gpu"

    def __init__(self, nvml: ModuleType | Any | None = None) -> None:
        self._nvml = nvml

    def _module(self) -> Any:
        if self._nvml is None:
            import pynvml

            self._nvml = pynvml
        return self._nvml

    def probe(self, facts: Facts) -> None:
        nvml = self._module()
        try:
            nvml.nvmlInit()
        except Exception as exc:  # NVMLError_LibraryNotFound, DriverNotLoaded, ...
            log.info("no NVIDIA GPUs: NVML is not available", reason=str(exc))
            facts.labels["gpus"] = "0"
            return
        try:
            count = int(nvml.nvmlDeviceGetCount())
            models: list[str] = []
            for index in range(count):
                handle = nvml.nvmlDeviceGetHandleByIndex(index)
                models.append(_text(nvml.nvmlDeviceGetName(handle)))
                memory = nvml.nvmlDeviceGetMemoryInfo(handle)
                facts.gpu_memory_mb.append(int(memory.total) // (1024 * 1024))
        finally:
            nvml.nvmlShutdown()
        facts.gpus = count
        facts.labels["gpus"] = str(count)
        if models:
            # Mixed hosts list each distinct model once, in index order.
            facts.labels["gpuModel"] = ",".join(dict.fromkeys(models))
            facts.labels["gpuMemoryMb"] = ",".join(str(mb) for mb in facts.gpu_memory_mb)
