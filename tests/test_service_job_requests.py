"""``coordinator.services.job_requests`` and ``queue_reasons`` on a real SQLite transaction,
with an injected ``now``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from common.states import JobState
from coordinator import scheduler
from coordinator.services import job_requests, queue_reasons
from coordinator.store.base import IdempotencyConflict, JobRecord
from coordinator.store.db import Tx
from tests.service_tx import add_agent, add_job, add_workspace, one, open_tx

T0 = 1_775_001_600_000
WINDOW_MS = 86_400_000


def job(job_id: str, created_at: int = T0) -> JobRecord:
    return JobRecord(id=job_id, workspace_id="ws_1", state=JobState.QUEUED, command="true", name=None, labels={},
                     resources=None, env={}, timeout_seconds=60, created_at=created_at)


def submit(tx: Tx, record: JobRecord, key: str | None, body_hash: str) -> JobRecord:
    return job_requests.submit_job(tx, record, idempotency_key=key, request_hash=body_hash,
                                   idempotency_window_ms=WINDOW_MS, audit=None)


def test_an_idempotency_key_returns_the_earlier_job_within_its_window_only(tmp_path: Path) -> None:
    with open_tx(tmp_path / "store.db") as tx:
        add_workspace(tx, "ws_1", created_at=T0)
        assert submit(tx, job("job_1"), "key", "hash_a").id == "job_1"
        assert submit(tx, job("job_2", T0 + WINDOW_MS), "key", "hash_a").id == "job_1"  # the same request again
        with pytest.raises(IdempotencyConflict):
            submit(tx, job("job_3", T0 + 10), "key", "hash_b")  # the key with another body
        # Past the window the key is released to a new job.
        assert submit(tx, job("job_4", T0 + WINDOW_MS + 1), "key", "hash_b").id == "job_4"
        keys = [tuple(row) for row in tx.execute("SELECT id, idempotency_key FROM jobs ORDER BY id").fetchall()]
        assert keys == [("job_1", None), ("job_4", "key")]


def test_cancel_ends_a_waiting_job_at_once_and_flags_a_running_one_for_its_agent(tmp_path: Path) -> None:
    with open_tx(tmp_path / "store.db") as tx:
        add_workspace(tx, "ws_1", created_at=T0)
        add_agent(tx, "agt_1", "ws_1")
        add_job(tx, "job_queued", "ws_1", created_at=T0)
        add_job(tx, "job_running", "ws_1", state="RUNNING", created_at=T0, agent_id="agt_1", epoch=1)
        add_job(tx, "job_done", "ws_1", state="SUCCEEDED", created_at=T0)
        assert job_requests.cancel_job(tx, "ws_other", "job_queued", T0 + 5) is None
        cancelled = job_requests.cancel_job(tx, "ws_1", "job_queued", T0 + 5)
        assert cancelled is not None
        assert (cancelled.state, cancelled.finished_at, cancelled.reason) == (JobState.CANCELLED, T0 + 5, "cancelled")
        running = job_requests.cancel_job(tx, "ws_1", "job_running", T0 + 6)
        assert running is not None and (running.state, running.cancel_requested) == (JobState.RUNNING, True)
        done = job_requests.cancel_job(tx, "ws_1", "job_done", T0 + 7)
        assert done is not None and done.state == JobState.SUCCEEDED


def test_queue_reasons_follow_the_agents_and_the_hard_cap(tmp_path: Path) -> None:
    with open_tx(tmp_path / "store.db") as tx:
        add_workspace(tx, "ws_1", created_at=T0)
        add_job(tx, "job_gpu", "ws_1", created_at=T0, labels=json.dumps({"gpu": "h100"}))
        add_job(tx, "job_any", "ws_1", created_at=T0)
        add_job(tx, "job_backoff", "ws_1", created_at=T0, not_before=T0 + 1000, reason="retry_backoff")
        add_agent(tx, "agt_1", "ws_1")
        assert queue_reasons.refresh_queued_reasons(tx, T0) == 2
        reasons = dict(tx.execute("SELECT id, reason FROM jobs").fetchall())
        assert reasons == {"job_gpu": scheduler.NO_MATCHING_AGENT, "job_any": scheduler.WAITING_FOR_CAPACITY,
                           "job_backoff": "retry_backoff"}  # a held job keeps its own reason
        assert queue_reasons.refresh_queued_reasons(tx, T0) == 0  # nothing changed since
        tx.execute("INSERT INTO billing_state (workspace_id, hard_cap_reached) VALUES ('ws_1', 1)")
        queue_reasons.refresh_queued_reasons(tx, T0)
        assert one(tx, "SELECT reason FROM jobs WHERE id = 'job_any'") == scheduler.HELD_BY_CAP
