"""``POST /v0/jobs/{id}:cancel`` in every state: QUEUED and ASSIGNED at once, RUNNING through a
real agent process (promptly, not at its next heartbeat), and every terminal state unchanged."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from common.clock import ManualClock, to_millis
from common.protocol import CapacityMsg, ClaimRequest, EventBatch
from coordinator.liveness import LivenessPolicy, liveness_tick
from tests.inproc import open_inprocess
from tests.procs import AgentProc, Coordinator, wait_for, wait_terminal

# Heartbeats a minute apart: a cancel that waited for the agent's next beat would take ~a
# minute; the held heartbeat delivers it at once.
SLOW_HEARTBEATS = """
[server]
heartbeat_interval_seconds = 60.0
agent_grace_seconds = 600.0
"""


@pytest.fixture(scope="module")
def slow_beats(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Coordinator, AgentProc]]:
    root = tmp_path_factory.mktemp("cancel")
    config = root / "coordinator.toml"
    config.write_text(SLOW_HEARTBEATS)
    coordinator = Coordinator(root / "coordinator", extra_args=("--config", str(config))).start()
    agent = AgentProc(coordinator, root / "agent", labels=("pool=cancel",)).start()
    try:
        yield coordinator, agent
    finally:
        agent.stop()
        coordinator.stop()


def _submit(api: httpx.Client, command: str, **extra: Any) -> str:
    body = {"type": "COMMAND", "command": command, "labels": {"pool": "cancel"}, **extra}
    response = api.post("/v0/jobs", json=body)
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def _cancel_leaves_unchanged(api: httpx.Client, job_id: str, state: str) -> None:
    before = api.get(f"/v0/jobs/{job_id}").json()
    assert before["state"] == state
    for _ in range(2):
        response = api.post(f"/v0/jobs/{job_id}:cancel")
        assert response.status_code == 200
        assert response.json() == before


def test_cancel_queued_is_immediate_and_idempotent(slow_beats: tuple[Coordinator, AgentProc]) -> None:
    coordinator, _ = slow_beats
    with coordinator.client() as api:
        job_id = _submit(api, "true", labels={"pool": "nobody"})
        first = api.post(f"/v0/jobs/{job_id}:cancel")
        assert first.status_code == 200
        assert (first.json()["state"], first.json()["reason"]) == ("CANCELLED", "cancelled")
        _cancel_leaves_unchanged(api, job_id, "CANCELLED")
        assert api.post("/v0/jobs/job_01jt9nosuchjobxxxxxxxxxxxx:cancel").status_code == 404


def test_cancel_running_reaches_the_agent_at_once(slow_beats: tuple[Coordinator, AgentProc]) -> None:
    coordinator, agent = slow_beats
    with coordinator.client() as api:
        job_id = _submit(api, "echo started; sleep 300")
        wait_for(lambda: api.get(f"/v0/jobs/{job_id}/logs").text == "started\n", message="job running")
        answer = api.post(f"/v0/jobs/{job_id}:cancel")
        assert answer.status_code == 200
        assert answer.json()["state"] == "RUNNING"  # the agent stops it, then reports
        # Well inside the 60 s heartbeat interval (TERM ends `sleep` at once).
        job = wait_terminal(api, job_id, timeout=20)
        assert job["state"] == "CANCELLED"
        # TERM was enough (within the grace), and killed the job's shell: 128 + 15.
        assert (job["signal"], job["exitCode"]) == ("TERM", 143)
        assert job["agentId"] == agent.agent_id
        _cancel_leaves_unchanged(api, job_id, "CANCELLED")


@pytest.mark.parametrize(("command", "extra", "state"), [
    ("true", {}, "SUCCEEDED"),
    ("exit 4", {}, "FAILED"),
    ("sleep 60", {"timeoutSeconds": 1}, "TIMED_OUT"),
])
def test_cancel_terminal_job_returns_it_unchanged(slow_beats: tuple[Coordinator, AgentProc], command: str,
                                                  extra: dict[str, Any], state: str) -> None:
    coordinator, _ = slow_beats
    with coordinator.client() as api:
        job_id = _submit(api, command, **extra)
        assert wait_terminal(api, job_id)["state"] == state
        _cancel_leaves_unchanged(api, job_id, state)


async def test_cancel_assigned_and_lost(tmp_path: Path) -> None:
    clock = ManualClock()
    async with open_inprocess(tmp_path, clock=clock) as co, co.client() as api:
        _, agent = await co.register_agent()
        async with agent:
            ids = []
            for _ in range(2):
                created = await api.post("/v0/jobs", json={"type": "COMMAND", "command": "sleep 5"})
                ids.append(created.json()["id"])
            claim = ClaimRequest(free=CapacityMsg(cpus=4, memoryMb=8192, gpus=0), waitSeconds=0)
            claimed = []
            for _ in ids:
                response = await agent.post("/agent/v0/claim", content=claim.model_dump_json(),
                                            headers={"Content-Type": "application/json"})
                claimed.append(response.json())
            assigned, running = ids
            # ASSIGNED: cancelled at once.
            assert (await api.get(f"/v0/jobs/{assigned}")).json()["state"] == "ASSIGNED"
            cancelled = (await api.post(f"/v0/jobs/{assigned}:cancel")).json()
            assert cancelled["state"] == "CANCELLED" and cancelled["finishedAt"] is not None
            # The other starts, then its agent falls silent past grace and lease: LOST.
            batch = EventBatch.model_validate({"events": [
                {"type": "started", "seq": 1, "jobId": running, "epoch": claimed[1]["epoch"],
                 "at": "2026-01-01T00:00:00Z"}]})
            await agent.post("/agent/v0/events", content=batch.model_dump_json(),
                             headers={"Content-Type": "application/json"})
            clock.advance(400)
            policy = LivenessPolicy()
            await liveness_tick(co.store, co.svc.notifier, to_millis(clock.now()), policy)
            before = (await api.get(f"/v0/jobs/{running}")).json()
            assert before["state"] == "LOST"
            for _ in range(2):
                response = await api.post(f"/v0/jobs/{running}:cancel")
                assert response.status_code == 200 and response.json() == before
