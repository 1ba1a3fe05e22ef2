"""An agent's batch of events through the store, on both databases: without a savepoint per
event unless one fails (then the batch runs again, each event in its own), and the workspace's
webhooks read once per transaction; either way every event is applied exactly once."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from common.protocol import CapacityMsg, FinishedEvent, StartedEvent
from common.states import AgentState, JobState
from coordinator.services import job_events
from coordinator.store.base import AgentRecord, JobRecord, Store, TokenRecord
from coordinator.store.base_billing import WebhookRecord
from coordinator.store.factory import open_store

FREE = CapacityMsg(cpus=64, memoryMb=1 << 20, gpus=0)
NOW = 1_780_000_000_000
AT = "2026-05-28T20:26:40+00:00"  # NOW


@pytest.fixture
async def world(store_url: str) -> AsyncIterator[Store]:
    """A workspace with one agent, a webhook on every job event, and two jobs it holds."""
    async with open_store(store_url) as store:
        await store.bootstrap(user_id="usr_1", email="o@x", workspace_id="ws_1", workspace_name="w",
                              plan="payg", tokens=[], now=NOW)
        await store.register_agent(
            AgentRecord(id="agt_1", workspace_id="ws_1", name="a", state=AgentState.READY, labels={},
                        capacity=FREE.model_dump(), version="t", registered_at=0),
            TokenRecord(id="tok_a", kind="agent", token_hash="h", workspace_id="ws_1", user_id=None,
                        agent_id="agt_1", name="a", created_at=0),
        )
        await store.insert_webhook(WebhookRecord(id="whk_1", workspace_id="ws_1", url="http://r/",
                                                 events=["job.transitioned", "job.terminal"], created_at=0), "whsec_x")
        for job_id in ("job_1", "job_2"):
            await store.insert_job(JobRecord(id=job_id, workspace_id="ws_1", state=JobState.QUEUED, command="true",
                                             name=None, labels={}, resources={}, env={}, timeout_seconds=60,
                                             created_at=NOW - 10))
            assert await store.claim_job("agt_1", FREE, None, NOW - 5) is not None
        yield store


def _finished(seq: int, job_id: str) -> FinishedEvent:
    return FinishedEvent(seq=seq, jobId=job_id, epoch=1, at=AT, state=JobState.SUCCEEDED, exitCode=0, runtimeMs=1)


async def _outbox(store: Store) -> list[tuple[str, str]]:
    rows = await store._read(  # type: ignore[attr-defined]
        "SELECT d.ordering_key, e.type FROM webhook_events e JOIN webhook_deliveries d ON d.event_id = e.id "
        "ORDER BY e.created_at")  # the events of one moment in no particular order
    return [(row[0], row[1]) for row in rows]


async def test_a_batch_moves_jobs_and_queues_each_webhook_event_once(world: Store) -> None:
    """Started and finished of one job in one transaction: each transition queues its events
    (the webhooks were read once, and still seen by the second transition)."""
    before = await _outbox(world)
    response = await world.apply_events("agt_1", [StartedEvent(seq=1, jobId="job_1", epoch=1, at=AT),
                                                  _finished(2, "job_1")], NOW)
    assert response.appliedThrough == 2 and response.rejected == []
    job = await world.get_job("ws_1", "job_1")
    assert job is not None and job.state == JobState.SUCCEEDED
    assert sorted((await _outbox(world))[len(before):]) == [
        ("job_1", "job.terminal"), ("job_1", "job.transitioned"), ("job_1", "job.transitioned")]


async def test_an_event_that_raises_is_undone_alone_and_the_rest_applied_once(
        world: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """An event that raises half-way (after its own writes) is refused (``invalid_event``) and
    undone whole; the events before and after it are applied once, not twice, although the
    batch ran again with a savepoint per event."""
    real_end_attempt = job_events.end_attempt
    runs: list[str] = []

    def end_then_fail(tx: Any, job: Any, *args: Any, **kwargs: Any) -> None:
        runs.append(job["id"])
        real_end_attempt(tx, job, *args, **kwargs)  # writes the job's end ...
        if job["id"] == "job_1":
            raise ValueError("a figure the database cannot take")  # ... then fails

    monkeypatch.setattr(job_events, "end_attempt", end_then_fail)
    before = await _outbox(world)
    response = await world.apply_events("agt_1", [
        StartedEvent(seq=1, jobId="job_1", epoch=1, at=AT), _finished(2, "job_1"),
        StartedEvent(seq=3, jobId="job_2", epoch=1, at=AT), _finished(4, "job_2"),
    ], NOW, request_id="req_1")

    assert response.appliedThrough == 4
    assert [(r.seq, r.code) for r in response.rejected] == [(2, "invalid_event")]
    assert runs == ["job_1", "job_1", "job_2"]  # without savepoints, then with them
    first, second = await world.get_job("ws_1", "job_1"), await world.get_job("ws_1", "job_2")
    assert first is not None and first.state == JobState.RUNNING and first.finished_at is None
    assert second is not None and second.state == JobState.SUCCEEDED
    assert sorted((await _outbox(world))[len(before):]) == [
        ("job_1", "job.transitioned"), ("job_2", "job.terminal"), ("job_2", "job.transitioned"),
        ("job_2", "job.transitioned")]
    refusals = await world._read(  # type: ignore[attr-defined]
        "SELECT target, error_code FROM audit_events WHERE action = 'agent.event_refused'")
    assert [(row[0], row[1]) for row in refusals] == [("job_1", "invalid_event")]
    agent = await world._read("SELECT last_seq FROM agents WHERE id = 'agt_1'")  # type: ignore[attr-defined]
    assert agent[0][0] == 4
