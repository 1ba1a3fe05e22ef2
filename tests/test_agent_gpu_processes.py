"""GPU agents as real processes (``python -m agentd``) against a real coordinator, with the
pynvml module replaced by tests/fake_pynvml (the fake at the pynvml call boundary, in the
agent's own process): a GPU job re-adopted after SIGKILL keeps its GPUs by UUID, and two
agents on one host never hand out the same GPU."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from agentd.exits import EX_CONFIG
from tests.procs import AgentProc, Coordinator, wait_for, wait_terminal

FAKE_PYNVML = Path(__file__).resolve().parent / "fake_pynvml"
H100 = "NVIDIA H100 80GB HBM3"
HOST = [{"uuid": "GPU-h100-b", "name": H100, "minor": 3}, {"uuid": "GPU-h100-a", "name": H100, "minor": 1}]


def _gpu_agent(coordinator: Coordinator, tmp_path: Path, name: str, pool: str) -> AgentProc:
    host = tmp_path / "host.json"
    host.write_text(json.dumps({"gpus": HOST}))
    data_dir = tmp_path / name
    data_dir.mkdir(parents=True, exist_ok=True)
    config = tmp_path / f"{name}.toml"
    config.write_text("\n".join([
        "[agent]", 'cgroups = "none"', f'gpu_lock_dir = "{tmp_path / "locks"}"', "gpu_poll_seconds = 0.2",
        "usage_report_seconds = 0.5", f'name = "{name}"', "",
    ]))
    return AgentProc(coordinator, data_dir, labels=(f"pool={pool}",), extra_args=("--config", str(config)),
                     env={"PYTHONPATH": os.pathsep.join([str(FAKE_PYNVML), os.environ.get("PYTHONPATH", "")]),
                          "FAKE_NVML_HOST": str(host)})


def _submit(api: httpx.Client, pool: str, gate: Path, gpus: int) -> str:
    command = f'echo "gpus=$CUDA_VISIBLE_DEVICES"; while [ ! -e {gate} ]; do sleep 0.05; done'
    response = api.post("/v0/jobs", json={"type": "COMMAND", "command": command, "labels": {"pool": pool},
                                          "resources": {"gpus": gpus, "cpus": 0.1, "memoryMb": 64}})
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def _told(api: httpx.Client, job_id: str) -> list[str] | None:
    text = api.get(f"/v0/jobs/{job_id}/logs").text
    line = next((line for line in text.splitlines() if line.startswith("gpus=")), None)
    return None if line is None else line.removeprefix("gpus=").split(",")


def _state(api: httpx.Client, job_id: str) -> str:
    return str(api.get(f"/v0/jobs/{job_id}").json()["state"])


def test_a_gpu_job_keeps_its_gpus_by_uuid_through_an_agent_sigkill(
        quick_heartbeat_coordinator: Coordinator, agents: list[AgentProc], tmp_path: Path) -> None:
    coordinator = quick_heartbeat_coordinator
    agent = _gpu_agent(coordinator, tmp_path, "gpu-restart", "gpu-restart").start()
    agents.append(agent)
    with coordinator.client() as api:
        first = _submit(api, "gpu-restart", tmp_path / "go-first", gpus=2)
        assert wait_for(lambda: _told(api, first), message="first job running") == ["GPU-h100-b", "GPU-h100-a"]
        second = _submit(api, "gpu-restart", tmp_path / "go-second", gpus=1)
        agent.stop(signal.SIGKILL)
        before = (api.get(f"/v0/jobs/{first}").json()["usage"] or {}).get("gpuSeconds", 0.0)
        agents.append(agent.start())  # the same data dir: it re-adopts the running job

        def reported_after_restart() -> bool:
            # Two reports (0.5 s apart) after the restart: the agent has been claiming meanwhile.
            usage = api.get(f"/v0/jobs/{first}").json()["usage"] or {}
            return "job re-adopted" in agent.log() and usage.get("gpuSeconds", 0.0) > before + 2 * 2 * 0.5
        wait_for(reported_after_restart, message="the job re-adopted and reporting")
        # Both GPUs are the re-adopted job's again (restored by UUID, relocked): nothing for the second.
        assert _state(api, second) == "QUEUED"
        (tmp_path / "go-first").touch()
        done = wait_terminal(api, first, timeout=60)
        assert done["state"] == "SUCCEEDED"
        (tmp_path / "go-second").touch()
        assert wait_terminal(api, second, timeout=60)["state"] == "SUCCEEDED"
        assert _told(api, second) in (["GPU-h100-b"], ["GPU-h100-a"])
    with sqlite3.connect(coordinator.data_dir / "coordinator.sqlite3") as db:
        models = {row[0] for row in db.execute("SELECT gpu_model FROM usage_records WHERE job_id = ?", (first,))}
    assert models == {H100}


def _moment(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def test_two_agents_on_one_host_never_hand_out_the_same_gpu(
        quick_heartbeat_coordinator: Coordinator, agents: list[AgentProc], tmp_path: Path) -> None:
    coordinator = quick_heartbeat_coordinator
    for name in ("gpu-left", "gpu-right"):  # one host: the same GPUs, the same lock directory
        agents.append(_gpu_agent(coordinator, tmp_path, name, "gpu-shared").start())
    gate = tmp_path / "go"
    with coordinator.client() as api:
        ids = [_submit(api, "gpu-shared", gate, gpus=1) for _ in range(4)]
        wait_for(lambda: sum(_state(api, j) == "RUNNING" for j in ids) >= 2, message="two jobs running")
        gate.touch()
        jobs: list[dict[str, Any]] = [wait_terminal(api, j, timeout=90) for j in ids]
        assert [job["state"] for job in jobs] == ["SUCCEEDED"] * 4
        told = [_told(api, j) for j in ids]
    # Jobs on the same GPU never overlapped in time, whichever agent ran them.
    for i, (job, gpus) in enumerate(zip(jobs, told, strict=True)):
        assert gpus is not None and len(gpus) == 1
        for other, other_gpus in list(zip(jobs, told, strict=True))[i + 1:]:
            if other_gpus == gpus:
                assert (_moment(job["finishedAt"]) <= _moment(other["startedAt"])
                        or _moment(other["finishedAt"]) <= _moment(job["startedAt"])), (job, other, gpus)
    assert {job["agentId"] for job in jobs} <= {a.agent_id for a in agents}


def test_configured_gpus_beyond_what_nvml_detects_stop_the_agent_at_start(
        quick_heartbeat_coordinator: Coordinator, agents: list[AgentProc], tmp_path: Path) -> None:
    agent = _gpu_agent(quick_heartbeat_coordinator, tmp_path, "gpu-overclaim", "gpu-overclaim")
    with (tmp_path / "gpu-overclaim.toml").open("a") as config:
        config.write("gpus = 3\n")
    agents.append(agent.start())
    assert agent.process is not None
    assert agent.process.wait(timeout=60) == EX_CONFIG  # not restarted by systemd: a person must fix it
    log = agent.log()
    assert ("tanvrit-agentd: gpus = 3 is configured, but NVML detects 2 usable GPU(s): an agent never offers GPUs "
            "it does not have\n") in log
    assert "Traceback" not in log
    assert not (agent.data_dir / "agent.json").exists()  # it never registered, so never offered them
