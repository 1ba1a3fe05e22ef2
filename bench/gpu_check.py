"""GPU check, to run on a real GPU host: what the agent detects, and whether it meters a GPU
job as NVML itself sees it.

1. Discovery exactly as the agent does it (``agentd.fingerprint.gpu.discover``): each unit
   by UUID with its minor number (MIG instances as units of their own), devices left out as
   failing, the labels the agent would send, MIG capability devices, and which GPU isolation
   the agent would label (``devices`` on cgroup v1 with a devices hierarchy, else ``env``).
2. A 1-GPU job through the agent's execution path (``agentd.executor.execute`` with the
   agent's NVML meter): a small Python program that allocates GPU memory through the CUDA
   driver API (``libcuda`` by ctypes; no torch, no nvidia-smi), touches it, holds it for a
   while and exits. While it runs this script samples NVML on its own every 50 ms.
3. Compares the agent's figures with NVML's own: GPU-seconds against the job's wall time on
   its one GPU, GPU-memory GB-seconds against the integral of NVML's per-process memory of
   the job's processes (and NVML's accounting stats, where accounting mode is on).

Prints the figures and writes JSON (``--json``). On a host without an NVIDIA GPU it says so
and exits 2. The job runs without a cgroup (the agent's fallback metering by process tree),
so no root is needed.

    .venv/bin/python bench/gpu_check.py [--seconds 10] [--megabytes 1024] [--json bench-gpu-check.json]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psutil
import trio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agentd.cgroups.none import NoCgroups  # noqa: E402
from agentd.executor import ExecSpec, Launched, execute  # noqa: E402
from agentd.fingerprint.gpu import GpuInventory, GpuUnit, discover  # noqa: E402
from agentd.gpus import read_mig_caps  # noqa: E402
from agentd.metering import NvmlUtilisation, Usage  # noqa: E402
from agentd.nvml import OffLoopNvml  # noqa: E402

SAMPLE_SECONDS = 0.05

# The job: allocate and touch GPU memory through the CUDA driver API, hold it, free it.
CUDA_PROGRAM = r"""
import ctypes, sys, time
size, hold = int(sys.argv[1]), float(sys.argv[2])
cuda = ctypes.CDLL("libcuda.so.1")
def check(result, what):
    if result != 0:
        sys.exit(f"{what} failed: CUresult {result}")
check(cuda.cuInit(0), "cuInit")
device, context, pointer = ctypes.c_int(), ctypes.c_void_p(), ctypes.c_uint64()
check(cuda.cuDeviceGet(ctypes.byref(device), 0), "cuDeviceGet")
check(cuda.cuCtxCreate_v2(ctypes.byref(context), 0, device), "cuCtxCreate")
check(cuda.cuMemAlloc_v2(ctypes.byref(pointer), ctypes.c_size_t(size)), "cuMemAlloc")
check(cuda.cuMemsetD8_v2(pointer, ctypes.c_ubyte(1), ctypes.c_size_t(size)), "cuMemsetD8")
check(cuda.cuCtxSynchronize(), "cuCtxSynchronize")
print(f"allocated {size} bytes on the GPU; holding for {hold} s", flush=True)
time.sleep(hold)
check(cuda.cuMemFree_v2(pointer), "cuMemFree")
check(cuda.cuCtxDestroy_v2(context), "cuCtxDestroy")
"""


class NoGpu(Exception):
    """This host has no NVIDIA GPU the agent could offer."""


@dataclass
class Truth:
    """What NVML itself showed for the job's processes, sampled by this script."""

    gpu_memory_gb_seconds: float = 0.0
    peak_gpu_memory_bytes: int = 0
    seen_seconds: float = 0.0  # how long NVML showed a process of the job on the GPU
    samples: int = 0
    accounting: dict[str, Any] | None = None


def load_nvml() -> Any:
    try:
        import pynvml
    except ImportError as exc:
        raise NoGpu(f"pynvml (nvidia-ml-py) cannot be imported: {exc}") from exc
    return pynvml


def detect(nvml: Any) -> GpuInventory:
    """The agent's own discovery; raises ``NoGpu`` when it finds nothing to offer."""
    inventory = discover(nvml)
    if not inventory.units:
        reason = inventory.unavailable or "NVML detects no usable GPU"
        failed = f" (left out as failing: {'; '.join(inventory.failed)})" if inventory.failed else ""
        raise NoGpu(f"{reason}{failed}")
    return inventory


def gpu_isolation() -> str:
    return "devices" if Path("/sys/fs/cgroup/devices/devices.deny").exists() else "env"


def describe(inventory: GpuInventory) -> dict[str, Any]:
    caps = read_mig_caps()
    return {
        "units": [asdict(unit) | {"mig": unit.mig} for unit in inventory.units],
        "failed": inventory.failed,
        "labels": {**inventory.labels(), "gpuIsolation": gpu_isolation()},
        "migCaps": None if caps is None else {unit.uuid: caps.of(unit) for unit in inventory.units if unit.mig},
    }


def _job_pids(launched: Launched | None) -> set[int]:
    if launched is None:
        return set()
    try:
        root = psutil.Process(launched.pid)
        return {root.pid, *(child.pid for child in root.children(recursive=True))}
    except psutil.Error:
        return set()


def _nvml_memory(nvml: Any, uuid: str, pids: set[int]) -> int | None:
    handle = nvml.nvmlDeviceGetHandleByUUID(uuid)
    held: int | None = None
    for process in nvml.nvmlDeviceGetComputeRunningProcesses(handle):
        if int(process.pid) in pids:
            used = getattr(process, "usedGpuMemory", None)
            held = (held or 0) + (int(used) if used is not None else 0)
    return held


def _accounting(nvml: Any, uuid: str, pids: set[int]) -> dict[str, Any] | None:
    """NVML's own per-process accounting (max memory, time), where accounting mode is on."""
    try:
        handle = nvml.nvmlDeviceGetHandleByUUID(uuid)
        if not nvml.nvmlDeviceGetAccountingMode(handle):
            return None
        stats = {}
        for pid in sorted(pids):
            try:
                entry = nvml.nvmlDeviceGetAccountingStats(handle, pid)
            except Exception:
                continue
            stats[str(pid)] = {"maxMemoryUsage": int(entry.maxMemoryUsage), "timeMs": int(entry.time)}
        return stats or None
    except Exception:
        return None


async def run_job(nvml: Any, unit: GpuUnit, command: str, workdir: Path, *,
                  meter_interval: float = 1.0) -> tuple[Usage, float, Truth, str]:
    """Run ``command`` on ``unit`` as the agent would; return the agent's usage, the job's
    wall time, what NVML showed meanwhile, and the job's output."""
    off_loop = OffLoopNvml(nvml)
    await off_loop.call(lambda module: module.nvmlInit())
    output = bytearray()
    launched: Launched | None = None
    truth = Truth()
    seen_pids: set[int] = set()
    spec = ExecSpec(job_id=f"gpu_check_{os.getpid()}", command=command, env={}, timeout_seconds=3600,
                    workdir=workdir / "work", state_dir=workdir / "state", gpus=(unit,), host_has_gpus=True,
                    meter_interval=meter_interval)

    def on_launched(job: Launched) -> None:
        nonlocal launched
        launched = job

    async def sample_nvml() -> None:
        last_time, last_bytes = time.monotonic(), 0
        while True:
            await trio.sleep(SAMPLE_SECONDS)
            pids = _job_pids(launched)
            seen_pids.update(pids)
            held = await off_loop.call(functools.partial(_nvml_memory, uuid=unit.uuid, pids=pids))
            now = time.monotonic()
            current = held or 0
            truth.gpu_memory_gb_seconds += (now - last_time) * (last_bytes + current) / 2 / 2**30
            truth.peak_gpu_memory_bytes = max(truth.peak_gpu_memory_bytes, current)
            if held is not None:
                truth.seen_seconds += now - last_time
            truth.samples += 1
            last_time, last_bytes = now, current

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sample_nvml)
            begin = time.monotonic()
            outcome = await execute(spec, output.extend, trio.Event(), cgroups=NoCgroups("gpu_check"),
                                    on_launched=on_launched,
                                    gpu_util=NvmlUtilisation(off_loop, (unit.uuid,)))
            wall = time.monotonic() - begin
            nursery.cancel_scope.cancel()
        truth.accounting = await off_loop.call(lambda module: _accounting(module, unit.uuid, seen_pids))
    finally:
        await off_loop.call(lambda module: module.nvmlShutdown())
    if outcome.exit_code != 0:
        raise RuntimeError(f"the GPU job failed ({outcome.state.value}, exit {outcome.exit_code}): "
                           f"{output.decode(errors='replace')[-2000:]}")
    return outcome.usage, wall, truth, output.decode(errors="replace")


def _error(measured: float | None, truth: float) -> float | None:
    return None if measured is None or truth == 0 else (measured - truth) / truth


def compare(usage: Usage, wall: float, truth: Truth) -> dict[str, Any]:
    return {
        "gpuSeconds": {"truth": wall, "metered": usage.gpu_seconds, "error": _error(usage.gpu_seconds, wall),
                       "truthIs": "1 GPU x the job's wall time"},
        "gpuMemoryGbSeconds": {"truth": truth.gpu_memory_gb_seconds, "metered": usage.gpu_memory_gb_seconds,
                               "error": _error(usage.gpu_memory_gb_seconds, truth.gpu_memory_gb_seconds),
                               "truthIs": f"NVML per-process memory every {SAMPLE_SECONDS * 1000:g} ms, integrated"},
        "gpuUtilSeconds": {"metered": usage.gpu_util_seconds},
        "nvml": asdict(truth),
    }


def main(argv: Sequence[str] | None = None, *, nvml: Any = None, command: str | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=10.0, help="how long the job holds its GPU memory")
    parser.add_argument("--megabytes", type=int, default=1024, help="GPU memory the job allocates, MiB")
    parser.add_argument("--json", type=Path, default=Path("bench-gpu-check.json"), help="where to write the figures")
    args = parser.parse_args(argv)
    try:
        module = nvml if nvml is not None else load_nvml()
        inventory = detect(module)
    except NoGpu as exc:
        print(f"gpu_check: no NVIDIA GPU on this host: {exc}. Run it on a GPU host.", file=sys.stderr)
        return 2
    detected = describe(inventory)
    print("detected (as the agent labels it):")
    for unit in inventory.units:
        kind = f"MIG instance of {unit.parent_uuid}" if unit.mig else "GPU"
        print(f"  {unit.uuid}  {unit.model}  {unit.memory_mb} MiB  /dev/nvidia{unit.minor}  ({kind})")
    for failed in inventory.failed:
        print(f"  left out: {failed}")
    print(f"  labels: {detected['labels']}")
    unit = inventory.units[0]
    job = command or f"exec {sys.executable} -c '{CUDA_PROGRAM}' {args.megabytes * 2**20} {args.seconds}"
    print(f"running a 1-GPU job on {unit.uuid}: {args.megabytes} MiB for {args.seconds:g} s")
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as scratch:
        usage, wall, truth, output = trio.run(run_job, module, unit, job, Path(scratch))
    figures = compare(usage, wall, truth)
    print(output.strip())
    for name in ("gpuSeconds", "gpuMemoryGbSeconds"):
        row = figures[name]
        error = "n/a" if row["error"] is None else f"{row['error'] * 100:+.2f}%"
        print(f"  {name:20} NVML/truth {row['truth']:.4f}  metered {row['metered']}  error {error}")
    print(f"  gpuUtilSeconds       metered {usage.gpu_util_seconds}")
    if truth.accounting:
        print(f"  NVML accounting: {truth.accounting}")
    args.json.write_text(json.dumps({"detected": detected, "job": figures}, indent=2, default=str) + "\n")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
