"""NVIDIA GPUs through NVML (pynvml, from the nvidia-ml-py package): what can be allocated.

``discover(module)`` walks the devices NVML reports and returns the allocatable units:

    GPU (MIG off) ─────────▶ one unit: its UUID, model, memory, /dev/nvidia<minor>
    GPU (MIG on)  ─────────▶ one unit per MIG instance: its own MIG-... UUID, the instance's
                             model ("<GPU> MIG 1g.10gb") and memory, the parent's minor and
                             the GPU/compute instance ids (for /dev/nvidia-caps rules)
    a device that errors ──▶ left out, with a warning; the others are still offered

Units are identified by UUID and mapped to device nodes by ``nvmlDeviceGetMinorNumber``,
never by NVML index: the index order is not the PCI order CUDA or the device nodes use.

The module is passed in, so tests replace it at the pynvml call boundary and the code path
stays the real one. ``discover`` makes blocking NVML calls: the agent runs it off the event
loop with a timeout (``agentd.nvml``). A host without the driver has no units and one log
line saying why.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import structlog

from agentd.fingerprint import Facts

log = structlog.get_logger("tanvrit.agentd.fingerprint")

MIG_ENABLED = 1  # pynvml.NVML_DEVICE_MIG_ENABLE


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@dataclass(frozen=True)
class GpuUnit:
    """One allocatable GPU: a whole device, or one MIG instance of a device."""

    uuid: str  # GPU-... or MIG-...: what CUDA_VISIBLE_DEVICES names
    model: str  # NVML's name; for a MIG instance it names the profile, so it prices apart
    minor: int  # /dev/nvidia<minor>: the device, or a MIG instance's parent device
    memory_mb: int
    index: int  # NVML index of the device (or parent): for messages only, never for mapping
    parent_uuid: str | None = None  # set for a MIG instance
    gpu_instance: int | None = None
    compute_instance: int | None = None

    @property
    def mig(self) -> bool:
        return self.parent_uuid is not None


@dataclass
class GpuInventory:
    units: list[GpuUnit] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)  # "GPU <index>: <error>" per device left out
    unavailable: str | None = None  # why NVML itself could not be used, if it could not

    def models(self) -> dict[str, int]:
        """Allocatable units per model, in discovery order."""
        return dict(Counter(unit.model for unit in self.units))

    def labels(self) -> dict[str, str]:
        labels = {"gpus": str(len(self.units))}
        if self.units:
            # Mixed hosts list each distinct model once, in discovery order.
            labels["gpuModel"] = ",".join(self.models())
            labels["gpuModels"] = ",".join(f"{model}:{count}" for model, count in self.models().items())
            labels["gpuMemoryMb"] = ",".join(str(unit.memory_mb) for unit in self.units)
            if any(unit.mig for unit in self.units):
                labels["gpuMig"] = "true"
        if self.failed:
            labels["gpusFailed"] = str(len(self.failed))
        return labels


def _mig_enabled(nvml: Any, handle: Any) -> bool:
    try:
        current, _pending = nvml.nvmlDeviceGetMigMode(handle)
    except Exception:  # NVMLError_NotSupported on GPUs without MIG; old bindings lack the call
        return False
    return int(current) == MIG_ENABLED


def _mig_units(nvml: Any, parent: Any, parent_uuid: str, minor: int, index: int, failed: list[str]) -> list[GpuUnit]:
    units: list[GpuUnit] = []
    for slot in range(int(nvml.nvmlDeviceGetMaxMigDeviceCount(parent))):
        try:
            handle = nvml.nvmlDeviceGetMigDeviceHandleByIndex(parent, slot)
        except Exception:  # NVMLError_NotFound: an empty slot, the normal case
            continue
        try:
            units.append(GpuUnit(
                uuid=_text(nvml.nvmlDeviceGetUUID(handle)), model=_text(nvml.nvmlDeviceGetName(handle)),
                minor=minor, memory_mb=int(nvml.nvmlDeviceGetMemoryInfo(handle).total) // 2**20, index=index,
                parent_uuid=parent_uuid, gpu_instance=int(nvml.nvmlDeviceGetGpuInstanceId(handle)),
                compute_instance=int(nvml.nvmlDeviceGetComputeInstanceId(handle)),
            ))
        except Exception as exc:
            failed.append(f"GPU {index} MIG slot {slot}: {exc}")
            log.warning("MIG instance left out: NVML cannot query it", gpu=index, slot=slot, error=str(exc))
    return units


def discover(nvml: Any) -> GpuInventory:
    """The allocatable units NVML reports (blocking: run it off the event loop)."""
    inventory = GpuInventory()
    try:
        nvml.nvmlInit()
    except Exception as exc:  # NVMLError_LibraryNotFound, DriverNotLoaded, ...
        inventory.unavailable = str(exc) or type(exc).__name__
        log.info("no NVIDIA GPUs: NVML is not available", reason=inventory.unavailable)
        return inventory
    try:
        for index in range(int(nvml.nvmlDeviceGetCount())):
            try:
                handle = nvml.nvmlDeviceGetHandleByIndex(index)
                uuid = _text(nvml.nvmlDeviceGetUUID(handle))
                minor = int(nvml.nvmlDeviceGetMinorNumber(handle))
                if _mig_enabled(nvml, handle):
                    inventory.units.extend(_mig_units(nvml, handle, uuid, minor, index, inventory.failed))
                    continue
                inventory.units.append(GpuUnit(
                    uuid=uuid, model=_text(nvml.nvmlDeviceGetName(handle)), minor=minor,
                    memory_mb=int(nvml.nvmlDeviceGetMemoryInfo(handle).total) // 2**20, index=index,
                ))
            except Exception as exc:  # NVMLError_GpuIsLost, _Unknown, ...: this device only
                inventory.failed.append(f"GPU {index}: {exc}")
                log.warning("GPU left out: NVML cannot query it; the others are still offered",
                            gpu=index, error=str(exc) or type(exc).__name__)
    finally:
        nvml.nvmlShutdown()
    return inventory


class NvmlGpuProbe:
    """``discover`` as a synchronous fingerprint probe (for tools; the agent itself runs
    discovery off its event loop)."""

    name = "gpu"

    def __init__(self, nvml: ModuleType | Any | None = None) -> None:
        self._nvml = nvml

    def _module(self) -> Any:
        if self._nvml is None:
            import pynvml

            self._nvml = pynvml
        return self._nvml

    def probe(self, facts: Facts) -> None:
        inventory = discover(self._module())
        facts.gpus = len(inventory.units)
        facts.gpu_memory_mb = [unit.memory_mb for unit in inventory.units]
        facts.labels.update(inventory.labels())
