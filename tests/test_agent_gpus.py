"""GPUs on real hosts, against a fake at the pynvml call boundary (tests/fake_nvml.py) that
models several models, MIG, a failing device, a stuck process and a hung driver: discovery by
UUID and minor number, allocation (one model per job, never shared, host-wide locks,
settling until NVML shows a GPU empty), what a job is told and denied, and off-loop NVML."""

from __future__ import annotations

import os
import pwd
import re
import shutil
import sqlite3
import stat
import subprocess
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import trio
from structlog.testing import capture_logs

from agentd.cgroups.none import NoCgroups
from agentd.config import DEFAULT_JOB_USER, AgentConfig
from agentd.daemon import Agent, AgentFatal
from agentd.executor import ExecSpec, job_environment
from agentd.fingerprint.gpu import GpuUnit, discover
from agentd.gpus import GpuAllocator, GpuLocks, MigCaps, read_mig_caps
from agentd.metering import Allocation, Meter, NvmlUtilisation
from agentd.nvml import NvmlTimeout, OffLoopNvml, process_counts, read_job_gpus
from tests.fake_nvml import FakeGpu, FakeNvml, FakeProcess, mixed_host
from tests.procs import Coordinator

T = TypeVar("T")

H100 = "NVIDIA H100 80GB HBM3"
MIG_3G = "NVIDIA A100-SXM4-40GB MIG 3g.20gb"


def _units() -> list[GpuUnit]:
    return discover(mixed_host()).units


def test_discovery_by_uuid_and_minor_with_mig_and_a_failing_device() -> None:
    nvml = mixed_host()
    with capture_logs() as logs:
        inventory = discover(nvml)
    assert [(e["event"], e["gpu"]) for e in logs if e["log_level"] == "warning"] == [
        ("GPU left out: NVML cannot query it; the others are still offered", 2)]
    # NVML index order, each GPU by UUID; the A100 in MIG mode is its two instances; the lost L4 is left out.
    assert [(u.uuid, u.model, u.minor) for u in inventory.units] == [
        ("GPU-h100-b", H100, 3),
        ("MIG-a100-gi1", MIG_3G, 0),
        ("MIG-a100-gi2", MIG_3G, 0),
        ("GPU-h100-a", H100, 1),
    ]
    mig = inventory.units[1]
    assert (mig.parent_uuid, mig.gpu_instance, mig.compute_instance, mig.memory_mb) == ("GPU-a100", 1, 0, 19968)
    assert inventory.failed == ["GPU 2: GPU is lost"]
    assert inventory.labels() == {
        "gpus": "4", "gpuModel": f"{H100},{MIG_3G}", "gpuModels": f"{H100}:2,{MIG_3G}:2",
        "gpuMemoryMb": "81920,19968,19968,81920", "gpuMig": "true", "gpusFailed": "1",
    }
    assert nvml.inits == nvml.shutdowns == 1


def test_no_driver_means_no_gpus() -> None:
    inventory = discover(FakeNvml([], no_driver=True))
    assert inventory.units == [] and inventory.unavailable == "NVML Shared Library Not Found"
    assert inventory.labels() == {"gpus": "0"}


def test_a_job_gets_gpus_of_one_model_and_two_jobs_never_share() -> None:
    gpus = GpuAllocator(_units())
    assert gpus.free_count() == 2  # two H100s, or two MIG instances: never one of each
    first = gpus.allocate("job_a", 2)
    assert [u.uuid for u in first or ()] == ["GPU-h100-b", "GPU-h100-a"]
    assert gpus.free_count() == 2
    second = gpus.allocate("job_b", 1)
    assert [u.uuid for u in second or ()] == ["MIG-a100-gi1"]
    assert gpus.allocate("job_c", 2) is None  # one MIG instance left
    assert gpus.allocate("job_a", 2) == first  # asking again is not a second grant
    assert gpus.allocate("job_d", 0) == ()


def test_a_released_gpu_waits_until_nvml_shows_it_empty() -> None:
    gpus = GpuAllocator(_units())
    gpus.allocate("job_a", 2)
    gpus.release("job_a")
    assert gpus.settling == {"GPU-h100-b", "GPU-h100-a"}
    assert gpus.free_count() == 2  # the MIG instances only
    # The previous job's process is still in the driver on one H100: that one stays out.
    with capture_logs() as logs:
        assert gpus.observe({"GPU-h100-b": 1, "GPU-h100-a": 0}) is True
    assert [u.uuid for u in gpus.free if u.model == H100] == ["GPU-h100-a"]
    assert [e["event"] for e in logs] == ["GPU still has processes of a finished job; not handing it out"]
    with capture_logs() as logs:
        assert gpus.observe({"GPU-h100-b": 1}) is False
        assert gpus.observe({"GPU-h100-b": 0}) is True
    assert [e["event"] for e in logs] == ["GPU free again: its previous job's processes have left"]
    assert gpus.free_count() == 2 and not gpus.settling


def test_a_gpu_with_someone_elses_process_or_failing_is_not_offered() -> None:
    gpus = GpuAllocator(_units())
    gpus.observe({"GPU-h100-b": 1, "MIG-a100-gi1": None})  # a stranger's process; NVML fails on the MIG
    assert [u.uuid for u in gpus.free] == ["MIG-a100-gi2", "GPU-h100-a"]
    gpus.observe({"GPU-h100-b": 0, "MIG-a100-gi1": 0})
    assert len(gpus.free) == 4


def test_two_agents_on_one_host_never_hand_out_the_same_gpu(tmp_path: Path) -> None:
    locks = tmp_path / "locks"
    one = GpuAllocator(_units(), locks=GpuLocks(locks))
    two = GpuAllocator(_units(), locks=GpuLocks(locks))
    assert [u.uuid for u in one.allocate("job_a", 1) or ()] == ["GPU-h100-b"]
    assert [u.uuid for u in two.allocate("job_b", 1) or ()] == ["GPU-h100-a"]  # skipped the locked one
    assert two.allocate("job_c", 2) is not None  # both MIG instances
    assert two.allocate("job_d", 1) is None  # every unit is taken, by one agent or the other
    one.release("job_a")
    one.observe({"GPU-h100-b": 0})  # settled: the lock file is free again
    two.observe({"GPU-h100-b": 0})
    assert [u.uuid for u in two.allocate("job_d", 1) or ()] == ["GPU-h100-b"]
    assert one.observe({"GPU-h100-b": 0}) is False  # one now sees it locked elsewhere
    assert "GPU-h100-b" not in {u.uuid for u in one.free}
    assert sorted(p.name for p in locks.iterdir()) == sorted(f"{u.uuid}.lock" for u in _units())
    one.close()
    two.close()


def test_the_job_user_cannot_hold_a_gpu_lock() -> None:
    # A GPU whose lock file someone else holds is never handed out: a job that could take a
    # lock (flock needs only a read-only descriptor) could keep every other GPU from every job.
    if os.geteuid() != 0:
        pytest.skip("switching to the job user needs root")
    try:
        job_user = pwd.getpwnam(DEFAULT_JOB_USER)
    except KeyError:
        pytest.skip(f"no {DEFAULT_JOB_USER} user")
    # Under /tmp, traversable by anyone, as /run is: the lock dir's own modes must keep jobs out.
    parent = Path(tempfile.mkdtemp(prefix="tanvrit-gpu-locks-"))
    os.chmod(parent, 0o755)
    try:
        locks = GpuLocks(parent / "gpus")
        assert not locks.held_elsewhere("GPU-a")  # creates its lock file
        lock = parent / "gpus" / "GPU-a.lock"
        grab = ("import fcntl, os, sys\ntry:\n    fcntl.flock(os.open(sys.argv[1], os.O_RDONLY), fcntl.LOCK_EX)\n"
                "except OSError as exc:\n    print(type(exc).__name__)\nelse:\n    print('held')")
        result = subprocess.run(["setpriv", f"--reuid={job_user.pw_uid}", f"--regid={job_user.pw_gid}", "--init-groups",
                                 "--", "/usr/bin/python3", "-c", grab, str(lock)],
                                capture_output=True, text=True, timeout=60, check=False)
        assert result.stdout.strip() == "PermissionError", result
        assert (stat.S_IMODE(lock.parent.stat().st_mode), stat.S_IMODE(lock.stat().st_mode)) == (0o700, 0o600)
        locks.close()
    finally:
        shutil.rmtree(parent)


def test_a_job_is_told_its_gpus_by_uuid_and_denied_the_others(tmp_path: Path) -> None:
    units = _units()
    caps = MigCaps(major=509, minors={"gpu0/gi1/access": 12, "gpu0/gi1/ci0/access": 13,
                                      "gpu0/gi2/access": 21, "gpu0/gi2/ci0/access": 22})
    gpus = GpuAllocator(units, mig_caps=caps)
    h100s = gpus.allocate("job_a", 2) or ()
    # By minor number (the device node), not by NVML index: /dev/nvidia0 is the A100.
    assert gpus.denied_devices(h100s) == ((195, 0), (509, 12), (509, 13), (509, 21), (509, 22))
    mig = gpus.allocate("job_b", 1) or ()
    assert gpus.denied_devices(mig) == ((195, 1), (195, 3), (509, 21), (509, 22))
    assert gpus.denied_devices(()) == ((195, 0), (195, 1), (195, 3), (509, 12), (509, 13), (509, 21), (509, 22))

    def env(gpu_units: tuple[GpuUnit, ...], **extra: str) -> dict[str, str]:
        return job_environment(ExecSpec(job_id="job_x", command="true", env=extra, timeout_seconds=1,
                                        workdir=tmp_path / "w", gpus=gpu_units, host_has_gpus=True))

    told = env(h100s, CUDA_VISIBLE_DEVICES="0,1,2,3")  # the job's own env cannot widen it
    assert told["CUDA_VISIBLE_DEVICES"] == told["NVIDIA_VISIBLE_DEVICES"] == "GPU-h100-b,GPU-h100-a"
    assert told["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
    assert env(mig)["CUDA_VISIBLE_DEVICES"] == "MIG-a100-gi1"
    none = env(())
    assert (none["CUDA_VISIBLE_DEVICES"], none["NVIDIA_VISIBLE_DEVICES"]) == ("", "void")
    no_gpu_host = job_environment(ExecSpec(job_id="job_y", command="true", env={}, timeout_seconds=1,
                                           workdir=tmp_path / "y"))
    assert "CUDA_VISIBLE_DEVICES" not in no_gpu_host


def test_mig_capability_minors_are_read_from_the_driver_files(tmp_path: Path) -> None:
    devices = tmp_path / "devices"
    devices.write_text("Character devices:\n  1 mem\n195 nvidia-frontend\n509 nvidia-caps\n\nBlock devices:\n")
    minors = tmp_path / "mig-minors"
    minors.write_text("config 1\nmonitor 2\ngpu0/gi1/access 12\ngpu0/gi1/ci0/access 13\n")
    caps = read_mig_caps(devices, minors)
    assert caps is not None and caps.major == 509
    assert caps.of(_units()[1]) == ((509, 12), (509, 13))
    assert caps.of(_units()[0]) == ()
    assert read_mig_caps(devices, tmp_path / "absent") is None


def test_job_gpu_memory_and_utilisation_from_per_process_data() -> None:
    nvml = mixed_host()
    nvml.processes = {"GPU-h100-b": [FakeProcess(100, 2 * 2**30), FakeProcess(999, 5 * 2**30)],
                      "GPU-h100-a": [FakeProcess(101, 2**30)],
                      "MIG-a100-gi1": [FakeProcess(102, None)]}
    nvml.util = {"GPU-h100-b": 100, "GPU-h100-a": 50}
    # Only the job's own processes count (999 is someone else's on the same device).
    assert read_job_gpus(nvml, ["GPU-h100-b", "GPU-h100-a"], {100, 101}) == \
        read_job_gpus(nvml, ["GPU-h100-b", "GPU-h100-a"], {100, 101, 7})
    reading = read_job_gpus(nvml, ["GPU-h100-b", "GPU-h100-a"], {100, 101})
    assert (reading.busy_fraction, reading.memory_bytes) == (1.5, 3 * 2**30)
    # A MIG instance has no utilisation, and this driver gives no per-process memory: unknown, not 0.
    mig = read_job_gpus(nvml, ["MIG-a100-gi1"], {102})
    assert (mig.busy_fraction, mig.memory_bytes) == (None, None)
    assert process_counts(nvml, ["GPU-h100-b", "MIG-a100-gi2", "GPU-nope"]) == \
        {"GPU-h100-b": 2, "MIG-a100-gi2": 0, "GPU-nope": None}
    # A display server's graphics process does not make a GPU busy; a job's own counts in its memory.
    nvml.graphics = {"GPU-h100-a": [FakeProcess(1, 2**28), FakeProcess(101, 2**29)]}
    assert process_counts(nvml, ["GPU-h100-a"]) == {"GPU-h100-a": 1}
    assert read_job_gpus(nvml, ["GPU-h100-a"], {101}).memory_bytes == 2**30 + 2**29


async def test_gpu_memory_gb_seconds_are_metered_beside_gpu_seconds() -> None:
    nvml = mixed_host()
    nvml.util = {"GPU-h100-b": 100, "GPU-h100-a": 50}
    gpu = NvmlUtilisation(OffLoopNvml(nvml), ("GPU-h100-b", "GPU-h100-a"))

    class NoCgroupReadings:
        def read(self) -> None:
            return None

    meter = Meter(NoCgroupReadings(), allocation=Allocation(gpus=2), start=0.0, gpu_util=gpu)
    nvml.processes = {"GPU-h100-b": [FakeProcess(100, 2 * 2**30)]}
    await gpu.refresh({100})
    meter.sample(0.0)
    await gpu.refresh({100})
    usage = meter.sample(10.0)
    assert usage.gpu_seconds == 20.0
    assert usage.gpu_util_seconds == pytest.approx(15.0)
    assert usage.gpu_memory_gb_seconds == pytest.approx(20.0)  # 2 GiB for 10 s
    nvml.processes = {}
    await gpu.refresh({100})
    usage = meter.sample(12.0)
    assert usage.gpu_memory_gb_seconds == pytest.approx(22.0)  # freed: 2 -> 0 GiB over 2 s
    assert usage.to_event() == {"cpuSeconds": 0.0, "gbSeconds": 0.0, "gpuSeconds": 24.0,
                                "gpuUtilSeconds": 18.0, "gpuMemoryGbSeconds": 22.0}


async def test_a_hung_driver_times_out_and_the_loop_goes_on() -> None:
    nvml = mixed_host()
    off_loop = OffLoopNvml(nvml, timeout=0.5)
    nvml.hang.set()
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await trio.sleep(0.01)

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(tick)
            with pytest.raises(NvmlTimeout, match=r"^NVML did not answer within 0.5 s \(is the GPU driver hung\?\)$"):
                await off_loop.call(discover)
            # One thread is stuck in the driver; the next call does not start another, it times out too.
            with pytest.raises(NvmlTimeout):
                await off_loop.call(lambda module: process_counts(module, ["GPU-h100-a"]))
            nursery.cancel_scope.cancel()
        assert ticks > 5  # the loop ran while both calls waited
        assert off_loop.timeouts == 2
    finally:
        nvml.release.set()
    nvml.hang.clear()
    with trio.fail_after(30):
        while True:  # the abandoned thread finishes; NVML answers again
            try:
                assert len((await off_loop.call(discover)).units) == 4
                break
            except NvmlTimeout:
                continue


def _config(tmp_path: Path, **settings: object) -> AgentConfig:
    settings.setdefault("gpu_lock_dir", tmp_path / "locks")
    return AgentConfig(coordinator="http://127.0.0.1:9", registration_token="t", data_dir=tmp_path / "agent",
                       **settings)  # type: ignore[arg-type]


async def test_configured_gpus_can_never_exceed_what_nvml_detects(tmp_path: Path) -> None:
    agent = Agent(_config(tmp_path, gpus=5), nvml=mixed_host(), cgroups=NoCgroups())
    message = ("gpus = 5 is configured, but NVML detects 4 usable GPU(s); left out as failing: GPU 2: GPU is lost: "
               "an agent never offers GPUs it does not have")
    with pytest.raises(AgentFatal, match=f"^{re.escape(message)}$"):
        await agent._fingerprint()
    (tmp_path / "a-file").write_text("")
    unlockable = Agent(_config(tmp_path, gpu_lock_dir=tmp_path / "a-file" / "locks"), nvml=mixed_host(),
                       cgroups=NoCgroups())
    with pytest.raises(AgentFatal, match=r"^gpu_lock_dir .*/a-file/locks cannot be used \(.*\): GPUs are locked"):
        await unlockable._fingerprint()
    no_driver = Agent(_config(tmp_path, gpus=1), nvml=FakeNvml([], no_driver=True), cgroups=NoCgroups())
    with pytest.raises(AgentFatal, match=r"NVML detects 0 usable GPU\(s\) \(NVML Shared Library Not Found\)"):
        await no_driver._fingerprint()


async def test_labels_and_capacity_per_model_with_honest_isolation(tmp_path: Path) -> None:
    agent = Agent(_config(tmp_path), nvml=mixed_host(), cgroups=NoCgroups())
    await agent._fingerprint()
    assert agent.capacity.gpus == 4
    assert agent.capacity.gpuModels == {H100: 2, MIG_3G: 2}
    assert [(u.uuid, u.parentUuid) for u in agent.capacity.gpuUnits or ()] == [
        ("GPU-h100-b", None), ("MIG-a100-gi1", "GPU-a100"), ("MIG-a100-gi2", "GPU-a100"), ("GPU-h100-a", None)]
    assert agent.labels["gpuIsolation"] == "env"  # no devices controller: only the environment says
    assert agent.labels["gpusFailed"] == "1"
    assert agent.free().gpus == 2
    busy_host = mixed_host()
    busy_host.processes = {"GPU-h100-a": [FakeProcess(4242, 2**30)]}  # someone else computes on it
    busy = Agent(_config(tmp_path), nvml=busy_host, cgroups=NoCgroups())
    await busy._fingerprint()
    assert [u.uuid for u in busy._gpus.free] == ["GPU-h100-b", "MIG-a100-gi1", "MIG-a100-gi2"]
    await busy._close_nvml()
    fewer = Agent(_config(tmp_path, gpus=1), nvml=mixed_host(), cgroups=NoCgroups())
    await fewer._fingerprint()
    assert (fewer.capacity.gpus, fewer.labels["gpus"], fewer.capacity.gpuModels) == (1, "1", {H100: 1})
    assert fewer._gpus.denied_devices(()) == ((195, 0), (195, 1), (195, 3))  # the unoffered ones too
    none = Agent(_config(tmp_path), nvml=FakeNvml([FakeGpu("GPU-1", "NVIDIA L4", 0)], no_driver=True),
                 cgroups=NoCgroups())
    await none._fingerprint()
    assert none.capacity.gpus == 0 and "gpuIsolation" not in none.labels


async def test_a_hung_driver_at_start_offers_no_gpus_instead_of_hanging(tmp_path: Path) -> None:
    nvml = mixed_host()
    nvml.hang.set()
    try:
        agent = Agent(_config(tmp_path, nvml_timeout_seconds=0.3), nvml=nvml, cgroups=NoCgroups())
        with trio.fail_after(20):
            await agent._fingerprint()
        assert agent.capacity.gpus == 0
    finally:
        nvml.release.set()


# --- the agent in-process against a real coordinator process, NVML faked at its boundary ---

H100_HOST = [FakeGpu("GPU-h100-b", H100, minor=3), FakeGpu("GPU-l4", "NVIDIA L4", minor=2, lost=True),
             FakeGpu("GPU-h100-a", H100, minor=1)]


async def _until(condition: Callable[[], Awaitable[T | None]], what: str) -> T:
    with trio.move_on_after(60):  # generous: the machine is shared
        while True:
            value = await condition()
            if value:
                return value
            await trio.sleep(0.05)
    raise AssertionError(f"timed out waiting for: {what}")


async def test_gpu_jobs_end_to_end_stuck_process_and_hung_driver(
        quick_heartbeat_coordinator: Coordinator, tmp_path: Path) -> None:
    coordinator = quick_heartbeat_coordinator
    nvml = FakeNvml(list(H100_HOST), from_environment=True)
    config = AgentConfig(coordinator=coordinator.url, registration_token=coordinator.registration_token,
                         data_dir=tmp_path / "agent", gpu_lock_dir=tmp_path / "locks", nvml_timeout_seconds=2.0,
                         gpu_poll_seconds=0.2, meter_interval_seconds=0.2, usage_report_seconds=0.2,
                         labels={"pool": "gpu-e2e"}, work_dir=tmp_path / "agent-work",
                         # As the test's own user: the gate lives in pytest's private temp dir.
                         run_as=pwd.getpwuid(os.geteuid()).pw_name, allow_root_jobs=True)
    agent = Agent(config, nvml=nvml, cgroups=NoCgroups("tests"))
    gate = tmp_path / "go"
    # One process of the job "holds 1 GiB" on each of its GPUs (the fake reads its environment).
    gated = (f'echo "$CUDA_VISIBLE_DEVICES|$CUDA_DEVICE_ORDER"; FAKE_GPU_MEMORY_MB=1024 exec python3 -c '
             f'"import os, time\nwhile not os.path.exists(\'{gate}\'): time.sleep(0.05)"')
    stop = trio.Event()
    headers = {"Authorization": f"Bearer {coordinator.token}"}
    try:
        async with httpx.AsyncClient(base_url=coordinator.url, headers=headers, timeout=30) as api, \
                trio.open_nursery() as nursery:
            await nursery.start(agent.serve, stop)

            async def job(job_id: str) -> dict[str, Any]:
                return (await api.get(f"/v0/jobs/{job_id}")).json()  # type: ignore[no-any-return]

            async def submit(gpus: int) -> str:
                response = await api.post("/v0/jobs", json={
                    "type": "COMMAND", "command": gated, "labels": {"pool": "gpu-e2e"},
                    "resources": {"gpus": gpus, "cpus": 0.1, "memoryMb": 64}})
                assert response.status_code == 201, response.text
                return str(response.json()["id"])

            agent_view = (await api.get(f"/v0/agents/{agent.agent_id}")).json()
            assert agent_view["capacity"]["gpus"] == 2
            assert agent_view["capacity"]["gpuModels"] == {H100: 2}
            assert [u["uuid"] for u in agent_view["capacity"]["gpuUnits"]] == ["GPU-h100-b", "GPU-h100-a"]
            assert (agent_view["labels"]["gpuIsolation"], agent_view["labels"]["gpusFailed"]) == ("env", "1")

            first = await submit(2)

            async def first_told() -> str | None:
                text = (await api.get(f"/v0/jobs/{first}/logs")).text
                return text if "|" in text else None

            assert (await _until(first_told, "job running")).strip() == "GPU-h100-b,GPU-h100-a|PCI_BUS_ID"


            async def gpu_memory_metered() -> bool:
                usage = (await job(first))["usage"] or {}
                return bool(usage.get("gpuMemoryGbSeconds"))

            await _until(gpu_memory_metered, "GPU memory metered from NVML's per-process figures")
            # The driver hangs: NVML calls time out off the loop, heartbeats go on.
            nvml.hang.set()

            async def beat() -> str:
                return str((await api.get(f"/v0/agents/{agent.agent_id}")).json()["lastHeartbeatAt"])

            seen = {await beat()}
            await _until(lambda: _grew(seen, beat, 3), "heartbeats while NVML hangs")
            nvml.release.set()
            nvml.hang.clear()

            # The job's process outlives it in the driver on one GPU: that GPU is not handed out.
            nvml.processes["GPU-h100-b"] = [FakeProcess(4_000_000, 2**30)]
            gate.touch()
            done = await _until(lambda: _terminal(job, first), "first job done")
            assert done["state"] == "SUCCEEDED"
            usage = done["usage"]
            runtime = done["runtimeMs"] / 1000
            assert usage["gpuSeconds"] == pytest.approx(2 * runtime, rel=0.2)
            # 1 GiB seen on each of its two GPUs for (nearly) all its run, never more: not the stuck
            # process of another pid, nor the subshells of the pyenv shim `python3` may be (they
            # inherit FAKE_GPU_MEMORY_MB, not a CUDA context; tests/fake_nvml.py's _using). The 2%
            # is runtimeMs's truncation to whole milliseconds and wall clock against monotonic.
            assert 0 < usage["gpuMemoryGbSeconds"] <= 2 * runtime * 1.02, done["attempts"]
            assert usage["gpuUtilSeconds"] == 0.0

            gate.unlink()
            second = await submit(2)
            await _until(lambda: _settled_free(agent, 1), "the clean GPU free again")
            assert (await job(second))["state"] == "QUEUED"  # only one clean GPU
            nvml.processes.clear()  # the stuck process finally leaves the driver
            await _until(lambda: _state_is(job, second, "RUNNING"), "second job runs once NVML shows both free")
            gate.touch()
            assert (await _until(lambda: _terminal(job, second), "second job done"))["state"] == "SUCCEEDED"
            stop.set()
    finally:
        nvml.release.set()
    with sqlite3.connect(coordinator.data_dir / "coordinator.sqlite3") as db:
        models = {row[0] for row in db.execute("SELECT gpu_model FROM usage_records WHERE job_id IN (?, ?)",
                                               (first, second))}
    assert models == {H100}  # priced as the model the job ran on, not the agent's label list


async def _grew(seen: set[str], read: Callable[[], Awaitable[str]], count: int) -> bool:
    seen.add(await read())
    return len(seen) >= count


async def _terminal(job: Callable[[str], Awaitable[dict[str, Any]]], job_id: str) -> dict[str, Any] | None:
    body = await job(job_id)
    return body if body["state"] in {"SUCCEEDED", "FAILED", "CANCELLED", "TIMED_OUT", "LOST"} else None


async def _state_is(job: Callable[[str], Awaitable[dict[str, Any]]], job_id: str, state: str) -> bool:
    return (await job(job_id))["state"] == state


async def _settled_free(agent: Agent, count: int) -> bool:
    return agent.free().gpus == count and not agent.running
