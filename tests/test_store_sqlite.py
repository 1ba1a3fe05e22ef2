"""The store in-process, on SQLite and on PostgreSQL (``store_url``): exactly-once claims,
idempotency, events; group commit on SQLite."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from common.protocol import (
    CapacityMsg,
    FinishedEvent,
    HandbackEvent,
    HeartbeatRequest,
    LogEvent,
    RunningJob,
    StartedEvent,
)
from common.states import AgentState, JobState
from coordinator.store.base import AgentRecord, IdempotencyConflict, JobFilter, JobRecord, TokenRecord
from coordinator.store.factory import open_store
from coordinator.store.sqlite import SqliteStore

FREE = CapacityMsg(cpus=64, memoryMb=1 << 20, gpus=0)


async def _workspace(store: SqliteStore) -> str:
    await store.bootstrap(user_id="usr_1", email="o@x", workspace_id="ws_1", workspace_name="w", plan="hobby",
                          tokens=[], now=0)
    return "ws_1"


def _job(job_id: str, created: int = 1, **extra: object) -> JobRecord:
    return JobRecord(id=job_id, workspace_id="ws_1", state=JobState.QUEUED, command="true", name=None,
                     labels={}, resources=None, env={}, timeout_seconds=60, created_at=created, **extra)  # type: ignore[arg-type]


async def _agent(store: SqliteStore, agent_id: str) -> None:
    await store.register_agent(
        AgentRecord(id=agent_id, workspace_id="ws_1", name=agent_id, state=AgentState.READY, labels={},
                    capacity=FREE.model_dump(), version="t", registered_at=0),
        TokenRecord(id=f"tok_{agent_id}", kind="agent", token_hash=f"h{agent_id}", workspace_id="ws_1", user_id=None,
                    agent_id=agent_id, name="a", created_at=0),
    )


async def test_concurrent_claims_run_each_job_exactly_once(store_url: str) -> None:
    async with open_store(store_url) as store:
        await _workspace(store)
        for index in range(200):
            await store.insert_job(_job(f"job_{index:04d}", created=index))
        agents = [f"agt_{n:02d}" for n in range(20)]
        for agent_id in agents:
            await _agent(store, agent_id)
        claimed: list[str] = []

        async def claimer(agent_id: str) -> None:
            while (assignment := await store.claim_job(agent_id, FREE, None, 1)) is not None:
                claimed.append(assignment.jobId)

        async with trio.open_nursery() as nursery:
            for agent_id in agents:
                nursery.start_soon(claimer, agent_id)
        assert sorted(claimed) == [f"job_{index:04d}" for index in range(200)]
        # Claims that arrived together were committed together.
        if store.dialect.name == "sqlite":  # writes that arrive together share a commit
            assert store.commits < 200 + 20 + 200


async def test_oldest_job_first(store_url: str) -> None:
    async with open_store(store_url) as store:
        await _workspace(store)
        await store.insert_job(_job("job_b", created=2))
        await store.insert_job(_job("job_a", created=1))
        await _agent(store, "agt_1")
        first = await store.claim_job("agt_1", FREE, None, 3)
        assert first is not None and first.jobId == "job_a" and first.epoch == 1


async def test_idempotency(store_url: str) -> None:
    async with open_store(store_url) as store:
        await _workspace(store)
        first = await store.insert_job(_job("job_1"), idempotency_key="k", request_hash="h1",
                                       idempotency_window_ms=1000)
        again = await store.insert_job(_job("job_2", created=500), idempotency_key="k", request_hash="h1",
                                       idempotency_window_ms=1000)
        assert again.id == first.id == "job_1"
        with pytest.raises(IdempotencyConflict):
            await store.insert_job(_job("job_3", created=600), idempotency_key="k", request_hash="h2",
                                   idempotency_window_ms=1000)
        # Past the window the key is free again.
        later = await store.insert_job(_job("job_4", created=5000), idempotency_key="k", request_hash="h2",
                                       idempotency_window_ms=1000)
        assert later.id == "job_4"
        assert len(await store.list_jobs("ws_1", JobFilter(), limit=10, before_id=None)) == 2


async def test_events_apply_once_and_stale_epochs_are_refused(store_url: str) -> None:
    async with open_store(store_url) as store:
        await _workspace(store)
        await store.insert_job(_job("job_1"))
        await _agent(store, "agt_1")
        assignment = await store.claim_job("agt_1", FREE, None, 1)
        assert assignment is not None
        events = [
            StartedEvent(seq=1, jobId="job_1", epoch=1, at="1970-01-01T00:00:00Z"),
            LogEvent(seq=2, jobId="job_1", epoch=1, data="hi\n"),
            LogEvent(seq=3, jobId="job_1", epoch=7, data="stale\n"),
            FinishedEvent(seq=4, jobId="job_1", epoch=1, at="1970-01-01T00:00:01Z", state=JobState.SUCCEEDED,
                          exitCode=0, runtimeMs=1000),
        ]
        first = await store.apply_events("agt_1", list(events), 2)
        replay = await store.apply_events("agt_1", list(events), 3)
        assert first.appliedThrough == replay.appliedThrough == 4
        assert [(r.seq, r.code) for r in first.rejected] == [(3, "stale_epoch")]
        assert replay.rejected == []
        chunks = await store.read_log("ws_1", "job_1", 0)
        assert b"".join(c.data for c in chunks) == b"hi\n"
        job = await store.get_job("ws_1", "job_1")
        assert job is not None and job.state == JobState.SUCCEEDED and job.runtime_ms == 1000


async def test_reads_are_scoped_to_the_workspace(store_url: str) -> None:
    async with open_store(store_url) as store:
        await _workspace(store)
        await store.insert_job(_job("job_1"))
        assert await store.get_job("ws_other", "job_1") is None
        assert await store.list_jobs("ws_other", JobFilter(), limit=10, before_id=None) == []
        assert await store.cancel_job("ws_other", "job_1", 1) is None


async def test_handback_requeues_under_a_new_epoch_or_cancels_if_asked(store_url: str) -> None:
    async with open_store(store_url) as store:
        await _workspace(store)
        await store.insert_job(_job("job_1"))
        await store.insert_job(_job("job_2", created=2))
        await _agent(store, "agt_1")
        for job_id in ("job_1", "job_2"):
            assignment = await store.claim_job("agt_1", FREE, None, 1)
            assert assignment is not None and assignment.jobId == job_id
        await store.apply_events("agt_1", [
            StartedEvent(seq=1, jobId="job_1", epoch=1, at="1970-01-01T00:00:00Z"),
            StartedEvent(seq=2, jobId="job_2", epoch=1, at="1970-01-01T00:00:00Z"),
        ], 2)
        cancelled = await store.cancel_job("ws_1", "job_2", 3)
        assert cancelled is not None and cancelled.cancel_requested
        result = await store.apply_events("agt_1", [
            HandbackEvent(seq=3, jobId="job_1", epoch=1, at="1970-01-01T00:00:05Z"),
            HandbackEvent(seq=4, jobId="job_2", epoch=1, at="1970-01-01T00:00:05Z"),
        ], 4)
        assert result.rejected == []
        requeued = await store.get_job("ws_1", "job_1")
        assert requeued is not None
        assert (requeued.state, requeued.agent_id, requeued.started_at) == (JobState.QUEUED, None, None)
        stopped = await store.get_job("ws_1", "job_2")
        assert stopped is not None and stopped.state == JobState.CANCELLED
        again = await store.claim_job("agt_1", FREE, None, 5)
        assert again is not None and (again.jobId, again.epoch) == ("job_1", 2)
        # The old attempt can no longer report anything.
        late = await store.apply_events("agt_1", [
            FinishedEvent(seq=5, jobId="job_1", epoch=1, at="1970-01-01T00:00:06Z", state=JobState.SUCCEEDED,
                          exitCode=0, runtimeMs=1)], 6)
        assert [(r.seq, r.code) for r in late.rejected] == [(5, "stale_epoch")]


async def test_a_bad_event_is_refused_alone_and_the_rest_applies(store_url: str) -> None:
    async with open_store(store_url) as store:
        await _workspace(store)
        await store.insert_job(_job("job_1"))
        await _agent(store, "agt_1")
        assert await store.claim_job("agt_1", FREE, None, 1) is not None
        result = await store.apply_events("agt_1", [
            StartedEvent(seq=1, jobId="job_1", epoch=1, at="not a time"),
            StartedEvent(seq=2, jobId="job_1", epoch=1, at="1970-01-01T00:00:00Z"),
            # A "result" that is no result: refused, the job stays RUNNING.
            FinishedEvent(seq=3, jobId="job_1", epoch=1, at="1970-01-01T00:00:01Z", state=JobState.QUEUED,
                          exitCode=0, runtimeMs=1),
            LogEvent(seq=4, jobId="job_1", epoch=1, data="still here\n"),
            FinishedEvent(seq=5, jobId="job_1", epoch=1, at="1970-01-01T00:00:02Z", state=JobState.SUCCEEDED,
                          exitCode=0, runtimeMs=2000),
        ], 2)
        assert result.appliedThrough == 5
        assert [(r.seq, r.code) for r in result.rejected] == [(1, "invalid_time"), (3, "invalid_state")]
        job = await store.get_job("ws_1", "job_1")
        assert job is not None and job.state == JobState.SUCCEEDED and job.exit_code == 0
        assert b"".join(c.data for c in await store.read_log("ws_1", "job_1", 0)) == b"still here\n"


async def test_a_running_job_its_live_agent_stops_reporting_becomes_lost(store_url: str) -> None:
    async with open_store(store_url) as store:
        await _workspace(store)
        await store.insert_job(_job("job_1"))
        await _agent(store, "agt_1")
        assert await store.claim_job("agt_1", FREE, None, 1) is not None
        await store.apply_events("agt_1", [StartedEvent(seq=1, jobId="job_1", epoch=1, at="1970-01-01T00:00:00Z")], 2)
        listed = HeartbeatRequest(state=AgentState.READY, runningJobs=[RunningJob(jobId="job_1", epoch=1)])
        silent = HeartbeatRequest(state=AgentState.READY, runningJobs=[])
        await store.record_heartbeat("agt_1", listed, 1_000)
        await store.record_heartbeat("agt_1", silent, 2_000)  # not listed from here on
        await store.record_heartbeat("agt_1", listed, 50_000)  # listed again: the clock restarts
        await store.record_heartbeat("agt_1", silent, 60_000)
        await store.record_heartbeat("agt_1", silent, 60_000 + 60_000)  # exactly the grace: still RUNNING
        job = await store.get_job("ws_1", "job_1")
        assert job is not None and job.state == JobState.RUNNING
        await store.record_heartbeat("agt_1", silent, 60_000 + 60_001)
        job = await store.get_job("ws_1", "job_1")
        assert job is not None and (job.state, job.reason) == (JobState.LOST, "agent_forgot")
        # Its result, should it still come at the job's own epoch, replaces LOST.
        await store.apply_events("agt_1", [
            FinishedEvent(seq=2, jobId="job_1", epoch=1, at="1970-01-01T00:02:00Z", state=JobState.SUCCEEDED,
                          exitCode=0, runtimeMs=120_000)], 130_000)
        job = await store.get_job("ws_1", "job_1")
        assert job is not None and job.state == JobState.SUCCEEDED


def test_migration_numbers_are_unique() -> None:
    """A migration whose number another already uses would be skipped on every store that applied the first."""
    from coordinator.store.sqlite_core import _migrations

    numbers = [number for number, _ in _migrations()]
    assert numbers == sorted(set(numbers))


def test_a_duplicate_migration_number_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from coordinator.store import sqlite_core

    folder = tmp_path / "migrations"
    folder.mkdir()
    (folder / "0001_a.sql").write_text("CREATE TABLE a (x INTEGER);")
    (folder / "0001_b.sql").write_text("CREATE TABLE b (x INTEGER);")
    monkeypatch.setattr(sqlite_core.resources, "files", lambda _package: tmp_path)
    with pytest.raises(RuntimeError, match=r"^two migrations share number 1: 0001_\w\.sql and 0001_\w\.sql$"):
        sqlite_core._migrations()
