"""The agent process against a real coordinator process: concurrency up to capacity, usage
upstream, coordinator outages, SIGTERM, SIGKILL mid-job with re-adoption, drain and resume.

Jobs wait on a "go" file the test creates, so every step is driven by a condition, not a sleep.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import threading
import time
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from agentd.cgroups.base import Limits
from agentd.cgroups.v1 import SPARE_PREFIX, V1Manager
from agentd.daemon import batch_events
from common.clock import parse_rfc3339
from tests.cgroup_fixtures import MemoryTruth, agent_cgroups
from tests.procs import AgentProc, Coordinator, kill_jobs_left_by, running_records, wait_for, wait_terminal

LABELS = {"arch": "arm64"}
REPO = Path(__file__).resolve().parent.parent


def _gated(gate: Path, before: str = "before", after: str = "after") -> str:
    return f"echo {before}; while [ ! -e {gate} ]; do sleep 0.05; done; echo {after}"


@pytest.fixture
def gates(tmp_path: Path) -> Path:
    directory = tmp_path / "gates"
    directory.mkdir()
    return directory


def _agent(coordinator: Coordinator, data_dir: Path, **settings: Any) -> AgentProc:
    data_dir.mkdir(parents=True, exist_ok=True)
    config = data_dir.parent / f"{data_dir.name}.toml"
    lines = ["[agent]"] + [f"{key} = {json.dumps(value)}" for key, value in settings.items()]
    config.write_text("\n".join(lines) + "\n")
    return AgentProc(coordinator, data_dir, labels=("arch=arm64",), extra_args=("--config", str(config)))


def _submit(api: httpx.Client, command: str, **extra: Any) -> str:
    response = api.post("/v0/jobs", json={"type": "COMMAND", "command": command, "labels": LABELS, **extra})
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def _start_gated(api: httpx.Client, gates: Path) -> str:
    """Submit a job that prints ``before`` and waits for ``gates/go``; return once it runs."""
    job_id = _submit(api, _gated(gates / "go"))
    wait_for(lambda: "before" in _logs(api, job_id), message="job running")
    return job_id


def _state(api: httpx.Client, job_id: str) -> str:
    return str(api.get(f"/v0/jobs/{job_id}").json()["state"])


def _logs(api: httpx.Client, job_id: str) -> str:
    return api.get(f"/v0/jobs/{job_id}/logs").text


def test_runs_jobs_concurrently_up_to_capacity(coordinator: Coordinator, agents: list[AgentProc], tmp_path: Path,
                                               gates: Path) -> None:
    agent = _agent(coordinator, tmp_path / "agent", cpus=2, memory_mb=4096).start()
    agents.append(agent)
    with coordinator.client() as api:
        ids = [_submit(api, _gated(gates / "go"), resources={"cpus": 1, "memoryMb": 256}) for _ in range(3)]
        wait_for(lambda: sum(_state(api, j) == "RUNNING" for j in ids) == 2, message="two jobs running")
        # The third does not fit while two run: it stays queued (the agent claims only what fits).
        assert sorted(_state(api, j) for j in ids) == ["QUEUED", "RUNNING", "RUNNING"]
        (gates / "go").touch()
        for job_id in ids:
            assert wait_terminal(api, job_id, timeout=60)["state"] == "SUCCEEDED"
        job = api.get(f"/v0/jobs/{ids[0]}").json()
        assert job["usage"] is not None and job["usage"]["cpuSeconds"] > 0
    labels = api_agent_labels(coordinator)
    assert labels["isolation"] in {"cgroupv1", "cgroupv2", "none"}


def api_agent_labels(coordinator: Coordinator) -> dict[str, str]:
    with coordinator.client() as api:
        [agent] = api.get("/v0/agents").json()["items"]
        return dict(agent["labels"])


def test_usage_reaches_the_coordinator(coordinator: Coordinator, agents: list[AgentProc], tmp_path: Path) -> None:
    agents.append(_agent(coordinator, tmp_path / "agent").start())
    burn = "python3 -c 'import time\nend = time.process_time() + 1.0\nwhile time.process_time() < end: pass'"
    with coordinator.client() as api:
        job = wait_terminal(api, _submit(api, burn), timeout=60)
    assert job["state"] == "SUCCEEDED"
    assert 0.9 <= job["usage"]["cpuSeconds"] <= 1.5
    assert job["usage"]["gbSeconds"] > 0
    assert job["usage"]["gpuSeconds"] == 0
    # The agent's usage records are the billing ledger: the workspace's only job is all of it.
    with coordinator.client() as api:
        billed = api.get("/v0/billing/usage").json()
    assert billed["cpuSeconds"] == pytest.approx(job["usage"]["cpuSeconds"], abs=1e-6)
    assert billed["gbSeconds"] == pytest.approx(job["usage"]["gbSeconds"], abs=1e-6)
    assert billed["gpuSeconds"] == 0


def test_outage_spools_and_replays_exactly_once(tmp_path: Path, agents: list[AgentProc], gates: Path) -> None:
    coordinator = Coordinator(tmp_path / "coordinator").start()
    try:
        agent = _agent(coordinator, tmp_path / "agent").start()
        agents.append(agent)
        with coordinator.client() as api:
            job_id = _submit(api, "; ".join(f"echo line{i}" for i in range(3)) + "; " + _gated(gates / "go"))
            wait_for(lambda: "before" in _logs(api, job_id), message="job running")
        port = coordinator.url.rsplit(":", 1)[1]
        assert coordinator.stop() == 0
        # The coordinator is gone: the job goes on, finishes, and everything waits in the spool.
        (gates / "go").touch()
        wait_for(lambda: not running_records(agent.data_dir), timeout=60, message="job finished offline")
        assert agent.process is not None and agent.process.poll() is None
        init = coordinator.init
        coordinator = Coordinator(tmp_path / "coordinator", extra_args=("--bind", f"127.0.0.1:{port}"))
        coordinator.start()
        coordinator.init = init
        with coordinator.client() as api:
            job = wait_terminal(api, job_id, timeout=90)
            assert job["state"] == "SUCCEEDED"
            assert _logs(api, job_id) == "line0\nline1\nline2\nbefore\nafter\n"
            assert job["usage"] is not None
            # Usage of a job that ended during the partition counts once it arrives.
            billed = api.get("/v0/billing/usage").json()
            assert billed["cpuSeconds"] == pytest.approx(job["usage"]["cpuSeconds"], abs=1e-6)
            assert billed["gbSeconds"] == pytest.approx(job["usage"]["gbSeconds"], abs=1e-6)
    finally:
        coordinator.stop()


def test_sigterm_finishes_running_jobs_then_exits_zero(coordinator: Coordinator, agents: list[AgentProc],
                                                      tmp_path: Path, gates: Path) -> None:
    agent = _agent(coordinator, tmp_path / "agent").start()
    agents.append(agent)
    with coordinator.client() as api:
        job_id = _start_gated(api, gates)
        assert agent.process is not None
        agent.process.send_signal(signal.SIGTERM)
        queued = _submit(api, "echo never")
        (gates / "go").touch()
        assert agent.process.wait(timeout=60) == 0
        job = api.get(f"/v0/jobs/{job_id}").json()
        assert job["state"] == "SUCCEEDED"  # flushed before exit
        assert _logs(api, job_id) == "before\nafter\n"
        assert _state(api, queued) == "QUEUED"  # nothing claimed after SIGTERM


def test_sigterm_with_handback_requeues_jobs_for_another_agent(coordinator: Coordinator, agents: list[AgentProc],
                                                               tmp_path: Path, gates: Path) -> None:
    agent = _agent(coordinator, tmp_path / "agent", shutdown="handback", kill_grace_seconds=1.0).start()
    agents.append(agent)
    with coordinator.client() as api:
        job_id = _start_gated(api, gates)
        first_agent = api.get(f"/v0/jobs/{job_id}").json()["agentId"]
        assert agent.process is not None
        agent.process.send_signal(signal.SIGTERM)
        assert agent.process.wait(timeout=60) == 0
        handed_back = api.get(f"/v0/jobs/{job_id}").json()
        assert (handed_back["state"], handed_back["agentId"], handed_back["startedAt"]) == ("QUEUED", None, None)
        # Another agent takes it and runs it to the end.
        (gates / "go").touch()
        successor = _agent(coordinator, tmp_path / "successor").start()
        agents.append(successor)
        job = wait_terminal(api, job_id, timeout=60)
        assert job["state"] == "SUCCEEDED"
        assert job["agentId"] == successor.agent_id != first_agent
        # Two attempts, each billed what it used; the job's usage is their sum.
        first, second = job["attempts"]
        assert (first["agentId"], first["state"], first["reason"]) == (first_agent, "QUEUED", "handed_back")
        assert (second["agentId"], second["state"], second["exitCode"]) == (successor.agent_id, "SUCCEEDED", 0)
        assert second["epoch"] > first["epoch"]
        assert first["usage"]["cpuSeconds"] > 0 and second["usage"]["cpuSeconds"] > 0
        assert job["usage"]["cpuSeconds"] == pytest.approx(
            first["usage"]["cpuSeconds"] + second["usage"]["cpuSeconds"])


def test_agent_killed_mid_job_re_adopts_it(coordinator: Coordinator, agents: list[AgentProc], tmp_path: Path,
                                           gates: Path) -> None:
    agent = _agent(coordinator, tmp_path / "agent", meter_interval_seconds=0.2, usage_report_seconds=0.5).start()
    agents.append(agent)
    with coordinator.client() as api:
        job_id = _start_gated(api, gates)
        assert agent.stop(signal.SIGKILL) == -signal.SIGKILL
        [record] = running_records(agent.data_dir).values()
        wrapper = psutil.Process(record["launched"]["pid"])
        assert wrapper.is_running(), "the job died with the agent"
        # A group no record speaks for (the agent died between creating and recording it), with
        # a process in it: the restarted agent kills it and removes the group before it re-adopts.
        cgroups = agent_cgroups(agent.data_dir)
        orphan = None if cgroups.kind == "none" else cgroups.create("job_orphaned", Limits())
        stray = subprocess.Popen(["sleep", "60"], start_new_session=True)
        try:
            for procs in orphan.procs_files if orphan is not None else []:
                procs.write_text(str(stray.pid))
            restarted = _agent(coordinator, tmp_path / "agent", meter_interval_seconds=0.2).start()
            agents.append(restarted)
            wait_for(lambda: "re-adopted" in restarted.log(), message="job re-adopted")
            if orphan is not None:
                assert stray.wait(timeout=30) == -signal.SIGKILL
                assert cgroups.open("job_orphaned") is None
        finally:
            stray.kill()
            stray.wait()
        (gates / "go").touch()
        job = wait_terminal(api, job_id, timeout=60)
        assert job["state"] == "SUCCEEDED" and job["exitCode"] == 0
        assert _logs(api, job_id) == "before\nafter\n"  # nothing twice, nothing lost
        assert job["usage"] is not None


def test_job_that_died_while_the_agent_was_down_is_failed_agent_restarted(
        coordinator: Coordinator, agents: list[AgentProc], tmp_path: Path, gates: Path) -> None:
    agent = _agent(coordinator, tmp_path / "agent").start()
    agents.append(agent)
    with coordinator.client() as api:
        job_id = _start_gated(api, gates)
        agent.stop(signal.SIGKILL)
        kill_jobs_left_by(agent.data_dir)
        [record] = running_records(agent.data_dir).values()
        wait_for(lambda: not psutil.pid_exists(record["launched"]["pid"])
                 or psutil.Process(record["launched"]["pid"]).status() == psutil.STATUS_ZOMBIE, message="job dead")
        agents.append(_agent(coordinator, tmp_path / "agent").start())
        job = wait_terminal(api, job_id, timeout=60)
        assert job["state"] == "FAILED" and job["reason"] == "agent_restarted"
        assert _logs(api, job_id) == "before\n"


def test_drain_finishes_current_jobs_claims_none_and_resume_works(
        coordinator: Coordinator, agents: list[AgentProc], tmp_path: Path, gates: Path) -> None:
    agent = _agent(coordinator, tmp_path / "agent").start()
    agents.append(agent)
    with coordinator.client() as api:
        job_id = _start_gated(api, gates)
        agent_id = agent.agent_id
        assert api.post(f"/v0/agents/{agent_id}:drain").status_code == 200

        def agent_state() -> str:
            return str(api.get(f"/v0/agents/{agent_id}").json()["state"])

        wait_for(lambda: agent_state() == "DRAINING", message="agent draining")
        waiting = _submit(api, "echo later")
        (gates / "go").touch()
        assert wait_terminal(api, job_id, timeout=60)["state"] == "SUCCEEDED"
        wait_for(lambda: agent_state() == "DRAINED", timeout=60, message="agent drained")
        assert _state(api, waiting) == "QUEUED"
        assert api.post(f"/v0/agents/{agent_id}:resume").status_code == 200
        assert wait_terminal(api, waiting, timeout=60)["state"] == "SUCCEEDED"
        assert agent_state() == "READY"


def test_a_job_with_megabytes_of_output_ships_all_of_it(coordinator: Coordinator, agents: list[AgentProc],
                                                         tmp_path: Path) -> None:
    # Log chunks are up to 64 KiB: a batch bounded only by event count would pass the
    # coordinator's 1 MiB body limit and be refused forever.
    agents.append(_agent(coordinator, tmp_path / "agent").start())
    with coordinator.client() as api:
        job_id = _submit(api, "head -c 3000000 /dev/zero | tr '\\0' 'x' | fold -w 99")
        job = wait_terminal(api, job_id, timeout=60)
        assert job["state"] == "SUCCEEDED"
        text = _logs(api, job_id)
    assert len(text) == 3_000_000 + 3_000_000 // 99
    assert set(text) == {"x", "\n"}


def test_the_agent_logs_its_share_of_each_job(coordinator: Coordinator, agents: list[AgentProc],
                                              tmp_path: Path) -> None:
    # bench/e2e.py reads these figures: claim answer to spawn, and exit to the coordinator's ack.
    agent = _agent(coordinator, tmp_path / "agent").start()
    agents.append(agent)
    with coordinator.client() as api:
        job_id = _submit(api, "true")
        assert wait_terminal(api, job_id, timeout=60)["state"] == "SUCCEEDED"
    log = agent.data_dir / "agent.log"
    line = wait_for(lambda: next((text for text in log.read_text().splitlines()
                                  if "job reported" in text and job_id in text), None),
                    message="the job reported line")
    figures = dict(part.split("=", 1) for part in line.split() if "=" in part)
    legs = {name: float(figures[name]) for name in ("claim_to_spawn_ms", "run_ms", "exit_to_result_ms",
                                                     "result_to_sent_ms", "sent_to_ack_ms", "exit_to_sent_ms",
                                                     "exit_to_ack_ms")}
    assert all(value >= 0 for value in legs.values()), legs
    assert legs["exit_to_sent_ms"] == pytest.approx(legs["exit_to_result_ms"] + legs["result_to_sent_ms"], abs=0.05)
    assert legs["exit_to_ack_ms"] == pytest.approx(legs["exit_to_sent_ms"] + legs["sent_to_ack_ms"], abs=0.05)


def test_the_next_jobs_cgroup_is_made_ahead_and_an_earlier_lifes_spares_are_swept(
        coordinator: Coordinator, agents: list[AgentProc], tmp_path: Path) -> None:
    cgroups = agent_cgroups(tmp_path / "agent")
    if not isinstance(cgroups, V1Manager):
        pytest.skip("spare cgroups are made on cgroup v1 (root with v1 hierarchies)")
    first_hierarchy = cgroups._hierarchies[0]

    def spares() -> list[str]:
        return [name for name in first_hierarchy.fs.children(first_hierarchy.base) if name.startswith(SPARE_PREFIX)]

    agent = _agent(coordinator, tmp_path / "agent").start()
    agents.append(agent)
    with coordinator.client() as api:
        wait_for(lambda: spares() or None, message="a spare made at start")
        made_at_start = spares()
        job_id = _submit(api, "cat /proc/self/cgroup")
        assert wait_terminal(api, job_id, timeout=60)["state"] == "SUCCEEDED"
        # The job ran in the spare, renamed to its own name; a new one is made after it.
        memory_line = next(line for line in _logs(api, job_id).splitlines() if ":memory:" in line)
        assert memory_line.endswith(f"/{job_id}")
        wait_for(lambda: set(spares()) - set(made_at_start) or None, message="a spare made after the job")
        left = spares()
        assert agent.stop(signal.SIGKILL) == -signal.SIGKILL
        restarted = _agent(coordinator, tmp_path / "agent").start()
        agents.append(restarted)
        wait_for(lambda: (set(spares()) and not set(spares()) & set(left)) or None,
                 message="the earlier life's spares swept, the new life's made")


def test_batches_stay_under_the_byte_bound() -> None:
    chunk = "y" * 65_536
    pending = [(seq, "log", {"type": "log", "jobId": "job_1", "epoch": 1, "data": chunk}) for seq in range(1, 40)]
    first = batch_events(pending, 512 * 1024)
    assert [event["seq"] for event in first] == list(range(1, 8))  # 7 chunks of 64 KiB and their JSON
    assert sum(len(json.dumps(event)) + 1 for event in first) <= 512 * 1024
    huge = [(1, "log", {"type": "log", "jobId": "job_1", "epoch": 1, "data": chunk * 10})]
    assert [event["seq"] for event in batch_events(huge, 512 * 1024)] == [1]  # always at least one


# Holds 300 MiB (touched) until the gate exists, then 3 s more; records when it ended. Long
# enough that a loaded machine's scheduling delays (the wrapper noting the exit) stay small.
HOLDER = (
    "import os, sys, time\n"
    "gate, done = sys.argv[1], sys.argv[2]\n"
    "block = bytearray(300 * 2**20)\n"
    "print('holding', flush=True)\n"
    "while not os.path.exists(gate):\n"
    "    time.sleep(0.05)\n"
    "time.sleep(3.0)\n"
    "with open(done + '.tmp', 'w') as f:\n"
    "    f.write(repr(time.time()))\n"
    "os.rename(done + '.tmp', done)\n"
    "os._exit(0)\n"
)
FAKE_GPU_ENV = {"PYTHONPATH": f"{REPO / 'tests' / 'fake_pynvml'}:{REPO}", "TANVRIT_FAKE_GPUS": "1"}


def _gpu_agent(coordinator: Coordinator, data_dir: Path) -> AgentProc:
    # Its own GPU lock directory: the default (/run/tanvrit-agentd/gpus) is host-wide, and other
    # tests' fake agents hold locks on the same fake UUIDs.
    agent = _agent(coordinator, data_dir, meter_interval_seconds=0.5, usage_report_seconds=1.0,
                   gpu_lock_dir=str(data_dir.parent / f"{data_dir.name}-gpu-locks"))
    agent.env = FAKE_GPU_ENV
    return agent


def _submit_holder(api: httpx.Client, tmp_path: Path, gates: Path) -> tuple[str, Path]:
    script = tmp_path / "holder.py"
    script.write_text(HOLDER)
    done = tmp_path / "done"
    job_id = _submit(api, f"python3 {script} {gates / 'go'} {done}", resources={"gpus": 1, "memoryMb": 1024})
    return job_id, done


def _watch_exit(pid: int) -> Future[float]:
    """When the job's wrapper process is gone (epoch seconds), watched from a thread every 5 ms."""
    ended: Future[float] = Future()

    def watch() -> None:
        with contextlib.suppress(psutil.NoSuchProcess):
            process = psutil.Process(pid)
            while process.is_running() and process.status() != psutil.STATUS_ZOMBIE:
                time.sleep(0.005)
        ended.set_result(time.time())

    threading.Thread(target=watch, daemon=True).start()
    return ended


def _metered_records(data_dir: Path, job_id: str) -> bool:
    return "meter" in running_records(data_dir).get(job_id, {})


@pytest.mark.cgroups
@pytest.mark.parametrize("finishes_while_away", [False, True], ids=["re-adopted", "finished-while-away"])
def test_time_the_agent_was_away_is_billed(coordinator: Coordinator, agents: list[AgentProc], tmp_path: Path,
                                           gates: Path, finishes_while_away: bool) -> None:
    # Ground truth: the job cgroup's working set read every 10 ms by this test; GPU: 1 x wall
    # time from the job's start to the moment it recorded its end.
    if os.geteuid() != 0:
        pytest.skip("needs real cgroups (root)")
    agent = _gpu_agent(coordinator, tmp_path / "agent").start()
    agents.append(agent)
    with coordinator.client() as api:
        job_id, done = _submit_holder(api, tmp_path, gates)
        truth = MemoryTruth(agent_cgroups(agent.data_dir), job_id)
        with truth.in_thread():
            wait_for(lambda: "holding" in _logs(api, job_id), message="job holding its memory")
            wait_for(lambda: _metered_records(agent.data_dir, job_id), message="meter state persisted")
            ended = _watch_exit(running_records(agent.data_dir)[job_id]["launched"]["pid"])
            agent.stop(signal.SIGKILL)
            away_until = time.monotonic() + 3.0  # the outage itself (the bench uses 15 s)
            if finishes_while_away:
                (gates / "go").touch()
                wait_for(done.exists, message="job ended while its agent was down")
            wait_for(lambda: time.monotonic() >= away_until, message="agent away for a while")
            restarted = _gpu_agent(coordinator, tmp_path / "agent").start()
            agents.append(restarted)
            wait_for(lambda: "re-adopted" in restarted.log(), message="job re-adopted")
            (gates / "go").touch()
            job = wait_terminal(api, job_id, timeout=60)
    assert job["state"] == "SUCCEEDED", job
    wall = ended.result(timeout=30) - parse_rfc3339(job["startedAt"]).timestamp()
    usage = job["usage"]
    print(f"GPU-s billed {usage['gpuSeconds']:.3f} truth {wall:.3f}; "
          f"GB-s billed {usage['gbSeconds']:.4f} truth {truth.gb_seconds:.4f}")
    assert usage["gpuSeconds"] == pytest.approx(wall, rel=0.01)
    assert usage["gbSeconds"] == pytest.approx(truth.gb_seconds, rel=0.10 if finishes_while_away else 0.05)
    [attempt] = job["attempts"]
    assert attempt["usage"] == usage


def test_a_job_whose_result_was_not_yet_on_disk_when_the_agent_died_keeps_its_exit_status(
        coordinator: Coordinator, agents: list[AgentProc], tmp_path: Path, gates: Path) -> None:
    """The job's state dir (its exit status, its output) is what a restarted agent re-adopts
    the job from while the spool still lists it running: it must outlive the agent's uncommitted
    result. The test holds the spool's write lock, so the result stays queued, not committed.
    (Before: the restarted agent found no state dir and the job stayed RUNNING for ever.)"""

    agent = _agent(coordinator, tmp_path / "agent").start()
    agents.append(agent)
    with coordinator.client() as api:
        job_id = _start_gated(api, gates)
        state_dir = tmp_path / "agent" / "jobs" / job_id
        assert state_dir.is_dir()
        blocker = sqlite3.connect(tmp_path / "agent" / "spool.sqlite3", isolation_level=None)
        try:
            blocker.execute("BEGIN IMMEDIATE")  # the agent's next commit waits behind it
            (gates / "go").touch()
            wait_for(lambda: "job finished" in agent.log(), message="result queued")
            # An agent that removes the state dir before its result is committed does so at once;
            # one that waits for the commit never does while the lock is held (a bounded negative
            # check, not a synchronisation: the assertions below do not depend on it; short, well
            # inside the spool connection's 5 s SQLite busy timeout).
            with contextlib.suppress(Exception):
                wait_for(lambda: not state_dir.exists(), timeout=1, message="state dir removed")
            assert agent.stop(signal.SIGKILL) == -signal.SIGKILL
        finally:
            blocker.rollback()
            blocker.close()
        assert job_id in running_records(tmp_path / "agent")  # the result never reached the disk
        agents.append(_agent(coordinator, tmp_path / "agent").start())
        job = wait_terminal(api, job_id, timeout=60)
        assert (job["state"], job["exitCode"], job.get("reason")) == ("SUCCEEDED", 0, None)
        assert _logs(api, job_id) == "before\nafter\n"
