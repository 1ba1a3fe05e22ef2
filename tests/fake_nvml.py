"""A fake at the pynvml call boundary: the functions of pynvml the agent calls, over a host
described in data. It models what real hosts do that a single clean GPU does not: NVML index
order unlike minor-number (PCI) order, several models, MIG instances, a device that fails,
processes that stay in the driver after their job, and a driver that hangs."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import psutil


class NVMLError(Exception):
    pass


class NVMLError_NotFound(NVMLError):
    pass


class NVMLError_NotSupported(NVMLError):
    pass


class NVMLError_GpuIsLost(NVMLError):
    pass


@dataclass
class FakeMig:
    uuid: str
    name: str
    memory_mb: int
    gpu_instance: int
    compute_instance: int = 0


@dataclass
class FakeGpu:
    uuid: str
    name: str
    minor: int
    memory_mb: int = 81920
    mig: list[FakeMig] | None = None  # MIG mode on, with these instances (slots in order)
    lost: bool = False  # NVML answers "GPU is lost" for everything about it


@dataclass
class FakeProcess:
    pid: int
    usedGpuMemory: int | None


@dataclass
class FakeNvml:
    gpus: list[FakeGpu]
    # uuid (GPU or MIG) -> processes NVML shows on it; util: uuid -> percent
    processes: dict[str, list[FakeProcess]] = field(default_factory=dict)
    util: dict[str, int] = field(default_factory=dict)
    graphics: dict[str, list[FakeProcess]] = field(default_factory=dict)  # uuid -> graphics processes
    # Also show, on each unit, the live processes whose environment names it in
    # CUDA_VISIBLE_DEVICES and sets FAKE_GPU_MEMORY_MB: a job "using" its GPUs, as the driver sees it
    # (not their forked children, which inherit the variable but not the CUDA context: see _using).
    from_environment: bool = False
    # Also show what this JSON file lists ({uuid: [[pid, bytes], ...]}), read at every call:
    # how a test changes what the driver shows to an agent in another process.
    processes_file: Path | None = None
    no_driver: bool = False
    inits: int = 0
    shutdowns: int = 0
    # While set, every call blocks until ``release`` is set (a wedged driver).
    hang: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)

    NVMLError = NVMLError

    def _enter(self) -> None:
        if self.hang.is_set():
            self.release.wait(timeout=60)

    def _gpu(self, handle: Any) -> FakeGpu:
        gpu = handle.gpu
        if gpu.lost:
            raise NVMLError_GpuIsLost("GPU is lost")
        return gpu  # type: ignore[no-any-return]

    # --- library ---
    def nvmlInit(self) -> None:
        self._enter()
        if self.no_driver:
            raise NVMLError("NVML Shared Library Not Found")
        self.inits += 1

    def nvmlShutdown(self) -> None:
        self.shutdowns += 1

    def nvmlDeviceGetCount(self) -> int:
        self._enter()
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> Any:
        self._enter()
        return SimpleNamespace(gpu=self.gpus[index], mig=None)

    def nvmlDeviceGetHandleByUUID(self, uuid: str | bytes) -> Any:
        self._enter()
        text = uuid.decode() if isinstance(uuid, bytes) else uuid
        for gpu in self.gpus:
            if gpu.uuid == text:
                return SimpleNamespace(gpu=gpu, mig=None)
            for mig in gpu.mig or ():
                if mig.uuid == text:
                    return SimpleNamespace(gpu=gpu, mig=mig)
        raise NVMLError_NotFound("Not Found")

    # --- device facts ---
    def nvmlDeviceGetUUID(self, handle: Any) -> str:
        self._enter()
        gpu = self._gpu(handle)
        return handle.mig.uuid if handle.mig else gpu.uuid  # type: ignore[no-any-return]

    def nvmlDeviceGetMinorNumber(self, handle: Any) -> int:
        return self._gpu(handle).minor

    def nvmlDeviceGetName(self, handle: Any) -> bytes:
        gpu = self._gpu(handle)
        return (handle.mig.name if handle.mig else gpu.name).encode()  # old bindings return bytes

    def nvmlDeviceGetMemoryInfo(self, handle: Any) -> Any:
        gpu = self._gpu(handle)
        total = (handle.mig.memory_mb if handle.mig else gpu.memory_mb) * 2**20
        return SimpleNamespace(total=total, used=0, free=total)

    def nvmlDeviceGetMigMode(self, handle: Any) -> tuple[int, int]:
        gpu = self._gpu(handle)
        if gpu.mig is None:
            raise NVMLError_NotSupported("Not Supported")
        return (1, 1)

    def nvmlDeviceGetMaxMigDeviceCount(self, handle: Any) -> int:
        return 7 if self._gpu(handle).mig is not None else 0

    def nvmlDeviceGetMigDeviceHandleByIndex(self, handle: Any, index: int) -> Any:
        gpu = self._gpu(handle)
        if gpu.mig is None or index >= len(gpu.mig):
            raise NVMLError_NotFound("Not Found")
        return SimpleNamespace(gpu=gpu, mig=gpu.mig[index])

    def nvmlDeviceGetGpuInstanceId(self, handle: Any) -> int:
        return handle.mig.gpu_instance  # type: ignore[no-any-return]

    def nvmlDeviceGetComputeInstanceId(self, handle: Any) -> int:
        return handle.mig.compute_instance  # type: ignore[no-any-return]

    # --- use ---
    def _uuid(self, handle: Any) -> str:
        gpu = self._gpu(handle)
        return handle.mig.uuid if handle.mig else gpu.uuid  # type: ignore[no-any-return]

    def nvmlDeviceGetComputeRunningProcesses(self, handle: Any) -> list[FakeProcess]:
        self._enter()
        uuid = self._uuid(handle)
        found = list(self.processes.get(uuid, []))
        if self.from_environment:
            found.extend(_using(uuid))
        if self.processes_file is not None and self.processes_file.exists():
            listed = json.loads(self.processes_file.read_text() or "{}").get(uuid, [])
            found.extend(FakeProcess(int(pid), used) for pid, used in listed)
        return found

    def nvmlDeviceGetGraphicsRunningProcesses(self, handle: Any) -> list[FakeProcess]:
        return list(self.graphics.get(self._uuid(handle), []))

    def nvmlDeviceGetUtilizationRates(self, handle: Any) -> Any:
        if handle.mig is not None:
            raise NVMLError_NotSupported("Not Supported")
        return SimpleNamespace(gpu=self.util.get(self._uuid(handle), 0), memory=0)


def _using(uuid: str) -> list[FakeProcess]:
    """The processes that hold memory on ``uuid``, as the driver would show them.

    A forked child inherits its parent's environment but not its CUDA context: the driver
    shows only the process that made the context. So a process whose parent carries the
    variable too is not shown. Without this, the short-lived subshells of a launcher that
    execs the real program later (a pyenv shim for ``python3``) each "held" the memory too,
    and one NVML look during a job's start-up saw it twice."""
    found = []
    for process in psutil.process_iter(["pid"]):
        memory_mb = _holding(process, uuid)
        if memory_mb is None:
            continue
        try:
            parent = process.parent()
        except psutil.Error:
            continue  # it has just exited
        if _holding(parent, uuid) is not None:
            continue
        found.append(FakeProcess(process.pid, memory_mb * 2**20))
    return found


def _holding(process: psutil.Process | None, uuid: str) -> int | None:
    """FAKE_GPU_MEMORY_MB of a process whose environment names ``uuid``; None otherwise."""
    try:
        env = process.environ() if process is not None else {}
    except psutil.Error:
        return None
    if uuid not in env.get("CUDA_VISIBLE_DEVICES", "").split(",") or "FAKE_GPU_MEMORY_MB" not in env:
        return None
    return int(env["FAKE_GPU_MEMORY_MB"])


def mixed_host() -> FakeNvml:
    """Two H100s, one A100 in MIG mode with two instances, and one L4 that is lost. NVML's
    index order is deliberately not the minor-number order."""
    return FakeNvml([
        FakeGpu("GPU-h100-b", "NVIDIA H100 80GB HBM3", minor=3),
        FakeGpu("GPU-a100", "NVIDIA A100-SXM4-40GB", minor=0, memory_mb=40960, mig=[
            FakeMig("MIG-a100-gi1", "NVIDIA A100-SXM4-40GB MIG 3g.20gb", 19968, gpu_instance=1),
            FakeMig("MIG-a100-gi2", "NVIDIA A100-SXM4-40GB MIG 3g.20gb", 19968, gpu_instance=2),
        ]),
        FakeGpu("GPU-l4", "NVIDIA L4", minor=2, lost=True),
        FakeGpu("GPU-h100-a", "NVIDIA H100 80GB HBM3", minor=1),
    ])
