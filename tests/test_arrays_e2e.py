"""Job arrays and fair share with a real coordinator and real agents (issue 16).

The limit is checked from the coordinator's own record of the run, not from timing: every job
transition queues a webhook event in the transaction that makes it, so the outbox, read in
order, replays how many of the array's tasks were ASSIGNED or RUNNING after each commit."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.procs import AgentProc, Coordinator, wait_for
from tests.receiver import Receiver, running_receiver

ACTIVE = {"ASSIGNED", "RUNNING"}


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with running_receiver() as found:
        yield found


@pytest.fixture
def webhook_coordinator(tmp_path: Path) -> Iterator[Coordinator]:
    coordinator = Coordinator(tmp_path / "coordinator", extra_args=("--allow-private-webhooks",)).start()
    try:
        yield coordinator
    finally:
        coordinator.stop()


def _transitions(coordinator: Coordinator) -> list[dict[str, Any]]:
    """Every job.transitioned event's job, in the order the coordinator committed them."""
    with sqlite3.connect(f"file:{coordinator.data_dir / 'coordinator.sqlite3'}?mode=ro", uri=True) as db:
        rows = db.execute(
            """SELECT e.body FROM webhook_deliveries d JOIN webhook_events e ON e.id = d.event_id
               WHERE e.type = 'job.transitioned' ORDER BY d.id"""
        ).fetchall()
    return [json.loads(body)["data"] for (body,) in rows]


def _peak_active(events: list[dict[str, Any]], array_id: str) -> int:
    active: set[str] = set()
    peak = 0
    for job in events:
        if job["arrayId"] != array_id:
            continue
        if job["state"] in ACTIVE:
            active.add(job["id"])
        else:
            active.discard(job["id"])
        peak = max(peak, len(active))
    return peak


def _register_hook(api: httpx.Client, receiver: Receiver, events: list[str]) -> None:
    created = api.post("/v0/webhooks", json={"url": receiver.url + "/hook", "events": events})
    assert created.status_code == 201, created.text
    receiver.secrets.append(created.json()["secret"])


def _agents(coordinator: Coordinator, tmp_path: Path, agents: list[AgentProc], count: int) -> None:
    for n in range(count):
        agents.append(AgentProc(coordinator, tmp_path / f"agent-{n}").start())
    for proc in agents:
        assert proc.agent_id


def test_an_array_of_1000_with_max_parallel_3_on_two_agents(webhook_coordinator: Coordinator, receiver: Receiver,
                                                            agents: list[AgentProc], tmp_path: Path) -> None:
    coordinator = webhook_coordinator
    with coordinator.client() as api:
        _register_hook(api, receiver, ["job.transitioned"])
        created = api.post("/v0/jobs", json={
            "type": "COMMAND", "command": 'echo "$TANVRIT_ARRAY_INDEX/$TANVRIT_ARRAY_COUNT"', "timeoutSeconds": 60,
            "array": {"count": 1000, "maxParallel": 3}})
        assert created.status_code == 201, created.text
        array_id = created.json()["id"]
        _agents(coordinator, tmp_path, agents, 2)

        def finished() -> dict[str, Any] | None:
            array: dict[str, Any] = api.get(f"/v0/arrays/{array_id}").json()
            return array if array["state"] not in ("QUEUED", "RUNNING") else None

        array = wait_for(finished, timeout=900, interval=1.0, message="the array to finish")
        assert array["state"] == "SUCCEEDED" and array["summary"]["SUCCEEDED"] == 1000, array

        events = _transitions(coordinator)
        assert len([job for job in events if job["arrayId"] == array_id and job["state"] == "SUCCEEDED"]) == 1000
        peak = _peak_active(events, array_id)
        assert 1 <= peak <= 3, peak
        # Both agents took part.
        assert len({job["agentId"] for job in events if job["state"] == "ASSIGNED"}) == 2
        # Each task saw its own index and the count in its environment.
        logs = api.get(f"/v0/arrays/{array_id}/logs").text
        for index in (0, 1, 499, 999):
            assert f"==> task {index} (" in logs and f"\n{index}/1000\n" in logs
        assert logs.count("/1000\n") == 1000
        assert api.get(f"/v0/arrays/{array_id}/logs", params={"index": 7}).text == "7/1000\n"


def test_cancelling_an_array_stops_its_running_tasks_and_drops_the_rest(
        webhook_coordinator: Coordinator, receiver: Receiver, agents: list[AgentProc], tmp_path: Path) -> None:
    coordinator = webhook_coordinator
    with coordinator.client() as api:
        _register_hook(api, receiver, ["job.transitioned"])
        array_id = api.post("/v0/jobs", json={"type": "COMMAND", "command": "sleep 120", "timeoutSeconds": 300,
                                              "array": {"count": 20, "maxParallel": 2}}).json()["id"]
        _agents(coordinator, tmp_path, agents, 2)
        wait_for(lambda: api.get(f"/v0/arrays/{array_id}").json()["summary"]["RUNNING"] == 2, timeout=120,
                 message="two tasks running")
        cancelled = api.post(f"/v0/arrays/{array_id}:cancel")
        assert cancelled.status_code == 200, cancelled.text
        assert cancelled.json()["summary"]["CANCELLED"] == 18  # the queued ones at once

        def settled() -> dict[str, Any] | None:
            array: dict[str, Any] = api.get(f"/v0/arrays/{array_id}").json()
            return array if array["summary"]["CANCELLED"] == 20 else None

        array = wait_for(settled, timeout=120, message="the running tasks to be stopped")
        assert array["state"] == "CANCELLED"
        assert _peak_active(_transitions(coordinator), array_id) <= 2
        # The agents ran nothing else of it.
        tasks = api.get("/v0/jobs", params={"arrayId": array_id, "limit": 100}).json()["items"]
        assert sum(1 for task in tasks if task["attempts"]) == 2


def _member_token(api: httpx.Client) -> str:
    workspace = api.get("/v0/workspaces").json()["items"][0]["id"]
    invited = api.post(f"/v0/workspaces/{workspace}/members", json={"email": "bob@example.test", "role": "member"})
    assert invited.status_code == 201, invited.text
    redeemed = api.post("/v0/invitations:redeem", json={"code": invited.json()["invitation"]["code"]})
    assert redeemed.status_code in (200, 201), redeemed.text
    return str(redeemed.json()["token"]["access_token"])


def test_another_users_job_is_dispatched_at_the_next_claim(webhook_coordinator: Coordinator, receiver: Receiver,
                                                           agents: list[AgentProc], tmp_path: Path) -> None:
    coordinator = webhook_coordinator
    gate = tmp_path / "gate"
    with coordinator.client() as alice:
        _register_hook(alice, receiver, ["job.created", "job.transitioned"])
        _agents(coordinator, tmp_path, agents, 2)
        capacity = alice.get(f"/v0/agents/{agents[0].agent_id}").json()["capacity"]
        # Each job takes a whole agent, and Alice's wait at a gate: her first two hold both
        # agents, so 28 of hers are queued when Bob submits, however fast the machine is.
        whole = {"cpus": capacity["cpus"], "memoryMb": 64}
        wait = f"while [ ! -e {gate} ]; do sleep 0.05; done"
        alice_jobs = [alice.post("/v0/jobs", json={"type": "COMMAND", "command": wait, "resources": whole,
                                                   "timeoutSeconds": 120}).json()["id"] for _ in range(30)]
        wait_for(lambda: all(alice.get(f"/v0/jobs/{job_id}").json()["state"] == "RUNNING"
                             for job_id in alice_jobs[:2]), timeout=120, message="Alice's first jobs to run")
        with coordinator.client(_member_token(alice)) as bob:
            bob_job = bob.post("/v0/jobs", json={"type": "COMMAND", "command": "true", "resources": whole,
                                                 "timeoutSeconds": 60}).json()["id"]
            # Next in line, ahead of Alice's 28 queued before it.
            assert bob.get(f"/v0/jobs/{bob_job}").json()["position"] == 1
            assert alice.get(f"/v0/jobs/{alice_jobs[2]}").json()["position"] == 2
            gate.touch()
            done = wait_for(lambda: (job := bob.get(f"/v0/jobs/{bob_job}").json())["state"] == "SUCCEEDED" and job,
                            timeout=120, message="Bob's job to finish")
            assert done["submittedBy"] != alice.get(f"/v0/jobs/{alice_jobs[0]}").json()["submittedBy"]
        # In commit order: the first job assigned after Bob's was created is Bob's, while 28 of
        # Alice's were queued before it.
        with sqlite3.connect(f"file:{coordinator.data_dir / 'coordinator.sqlite3'}?mode=ro", uri=True) as db:
            rows = db.execute("""SELECT e.type, e.body FROM webhook_deliveries d
                                 JOIN webhook_events e ON e.id = d.event_id ORDER BY d.id""").fetchall()
        order = [(kind, json.loads(body)["data"]) for kind, body in rows]
        created = next(i for i, (kind, job) in enumerate(order) if kind == "job.created" and job["id"] == bob_job)
        assigned = [job["id"] for kind, job in order if kind == "job.transitioned" and job["state"] == "ASSIGNED"]
        assert next(job["id"] for kind, job in order[created:]
                if kind == "job.transitioned" and job["state"] == "ASSIGNED") == bob_job
        assert assigned.index(bob_job) == 2  # only Alice's two running jobs were assigned before it
