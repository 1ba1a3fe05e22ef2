"""What one ``POST /v0/jobs`` costs the store, on both backends: an upper bound on its statements
(a round trip each on PostgreSQL, docs/deployment.md), so the count cannot creep back up; and
the one-statement submission on PostgreSQL (coordinator/store/postgres_submit.py) keeps what
the general transaction guarantees: the audit row with the job, ``job.created`` for a
workspace's webhooks, exactly one job when the connection is lost around the statement."""

from __future__ import annotations

import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

import psycopg
import pytest
import trio

from common.states import JobState
from coordinator.store.base import AuditRecord, IdempotencyConflict, JobRecord, Store
from coordinator.store.factory import open_store
from coordinator.store.postgresql import PgStore
from tests.inproc import InProcess, running_coordinator
from tests.statement_count import store_statements

JOB = {"type": "COMMAND", "command": "true"}
SUBMISSIONS = 16
# Background work (leases, liveness, the meter) may send a few statements meanwhile: half a
# statement per submission of slack, so one statement more per submission still fails.
SLACK = 0.5
# Statements per plain submission (no Idempotency-Key, no dependsOn, no webhook), the identity
# lookups cached: on PostgreSQL one read (the hard cap and the agents, for the queue reason)
# and the one-statement write; on SQLite the same read and the group commit's write (BEGIN, a
# SAVEPOINT, the job's INSERT, the webhooks lookup, the audit row's INSERT, RELEASE, COMMIT),
# which are function calls there.
MOST_STATEMENTS = {"sqlite": 8, "postgresql": 2}
# With an Idempotency-Key (the CLI sends one with every submission), two lookups more: an
# earlier job and an earlier array holding the key, one query each while none does; on SQLite
# the write also looks the key up.
MOST_STATEMENTS_KEYED = {"sqlite": 11, "postgresql": 4}


async def _submit(coordinator: InProcess, count: int, *, keyed: bool = False) -> list[str]:
    async with coordinator.client() as api:
        ids = []
        for _ in range(count):
            headers = {"Idempotency-Key": f"key-{uuid.uuid4()}"} if keyed else {}
            answer = await api.post("/v0/jobs", json=JOB, headers=headers)
            assert answer.status_code == 201, answer.text
            ids.append(answer.json()["id"])
        return ids


async def _statements_per_submission(coordinator: InProcess, *, keyed: bool) -> tuple[float, list[str]]:
    """Statements per submission, and the ids of every job submitted."""
    ids = await _submit(coordinator, 2, keyed=keyed)  # the identity lookups cached, statements prepared
    with store_statements(coordinator.store) as count:
        ids += await _submit(coordinator, SUBMISSIONS, keyed=keyed)
    return count() / SUBMISSIONS, ids


@pytest.mark.parametrize("keyed", [False, True], ids=["plain", "keyed"])
@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
async def test_a_submission_runs_at_most_its_statements(tmp_path: Path, backend: str, keyed: bool,
                                                        request: pytest.FixtureRequest) -> None:
    url = request.getfixturevalue("migrated_postgres_url") if backend == "postgresql" else None
    async with running_coordinator(tmp_path, database_url=url) as coordinator:
        per_submission, ids = await _statements_per_submission(coordinator, keyed=keyed)
        assert per_submission <= (MOST_STATEMENTS_KEYED if keyed else MOST_STATEMENTS)[backend] + SLACK, \
            per_submission
        # The audit row of each submission committed with its job.
        audit = await coordinator.store._read("SELECT target FROM audit_events WHERE action = 'job.submit'")
        assert sorted(row["target"] for row in audit) == sorted(ids)


async def test_one_statement_submissions_keep_the_audit_row_and_webhook_events(tmp_path: Path,
                                                                               migrated_postgres_url: str) -> None:
    async with running_coordinator(tmp_path, database_url=migrated_postgres_url,
                                   allow_private_webhooks=True) as coordinator:
        store = coordinator.store
        assert isinstance(store, PgStore)
        [plain] = await _submit(coordinator, 1)
        async with coordinator.client() as api:
            hook = await api.post("/v0/webhooks", json={"url": "http://127.0.0.1:9/hook", "events": ["job.created"]})
            assert hook.status_code == 201, hook.text
        # A workspace with a webhook: the one statement writes nothing, the general path queues
        # job.created with the job.
        [hooked] = await _submit(coordinator, 1)
        events = await store._read("SELECT type, body FROM webhook_events WHERE workspace_id = ?",
                                   (coordinator.workspace_id,))
        assert [row["type"] for row in events] == ["job.created"]
        assert hooked.encode() in bytes(events[0]["body"]) and plain.encode() not in bytes(events[0]["body"])
        targets = await store._read("SELECT target FROM audit_events WHERE action = 'job.submit' ORDER BY seq")
        assert [row["target"] for row in targets] == [plain, hooked]


def _job(n: int) -> JobRecord:
    return JobRecord(id=f"job_lost_{n}", workspace_id="ws_1", state=JobState.QUEUED, command="true", name=None,
                     labels={"a": "b"}, resources=None, env={}, timeout_seconds=60, created_at=n)


def _audit(n: int) -> AuditRecord:
    return AuditRecord(id=f"aud_lost_{n}", workspace_id="ws_1", at=n, actor="usr_1", action="job.submit",
                       target=None, result="success", status=201, error_code=None, request_id=f"req_{n}",
                       source="127.0.0.1", method="POST", path="/v0/jobs")


@pytest.mark.parametrize("commits_first", [False, True])
async def test_a_connection_lost_around_the_statement_writes_the_job_once(migrated_postgres_url: str,
                                                                          monkeypatch: pytest.MonkeyPatch,
                                                                          commits_first: bool) -> None:
    """The connection dies as the statement is sent: before the server ran it, or after it
    committed (its answer lost). Either way the job and its audit row are there once."""
    from coordinator.store import postgres_submit

    original = psycopg.Connection.execute
    lost: list[bool] = []

    def execute(self: psycopg.Connection[Any], query: Any, *args: Any, **kwargs: Any) -> Any:
        if query is postgres_submit.SUBMIT_SQL and not lost:
            lost.append(True)
            if commits_first:
                original(self, query, *args, **kwargs)
            self.close()
            raise psycopg.OperationalError("the connection was lost")
        return original(self, query, *args, **kwargs)

    async with open_store(migrated_postgres_url) as store:
        await store.bootstrap(user_id="usr_1", email="o@x", workspace_id="ws_1", workspace_name="w", plan="hobby",
                              tokens=[], now=0)
        monkeypatch.setattr(psycopg.Connection, "execute", execute)
        stored = await store.insert_job(_job(1), audit=_audit(1))
        monkeypatch.undo()
        assert lost and stored.id == "job_lost_1" and stored.labels == {"a": "b"}
        jobs = await store._read("SELECT id FROM jobs WHERE workspace_id = 'ws_1'")  # type: ignore[attr-defined]
        audit = await store._read("SELECT target FROM audit_events WHERE id = 'aud_lost_1'")  # type: ignore[attr-defined]
        assert [row["id"] for row in jobs] == ["job_lost_1"]
        assert [row["target"] for row in audit] == ["job_lost_1"]


async def test_idempotency_keys_with_the_audit_row(store: Store) -> None:
    """What ``test_idempotency`` (the store contract) checks, on the path a keyed API submission
    takes (its audit row given): the one statement on PostgreSQL, the transaction on SQLite."""
    await store.bootstrap(user_id="usr_1", email="o@x", workspace_id="ws_1", workspace_name="w", plan="hobby",
                          tokens=[], now=0)
    first = await store.insert_job(_job(1), idempotency_key="k", request_hash="h1", idempotency_window_ms=1000,
                                   audit=_audit(1))
    again = await store.insert_job(_job(500), idempotency_key="k", request_hash="h1", idempotency_window_ms=1000,
                                   audit=_audit(500))
    assert first.id == again.id == "job_lost_1"
    with pytest.raises(IdempotencyConflict):
        await store.insert_job(_job(600), idempotency_key="k", request_hash="h2", idempotency_window_ms=1000,
                               audit=_audit(600))
    # Past the window the key is released and taken by the new job.
    later = await store.insert_job(_job(5000), idempotency_key="k", request_hash="h2", idempotency_window_ms=1000,
                                   audit=_audit(5000))
    assert later.id == "job_lost_5000"
    assert await store.find_idempotent_job("ws_1", "k", 0) is not None
    found = await store.find_idempotent_job("ws_1", "k", 0)
    assert found is not None and found[0].id == "job_lost_5000" and found[1] == "h2"
    assert await store.find_idempotent_job("ws_1", "other", 0) is None
    # An audit row per answered submission (the replay's targets the earlier job), none for the
    # refused one: as the general path has always written them.
    audit = await store._read("SELECT target FROM audit_events WHERE action = 'job.submit'")  # type: ignore[attr-defined]
    assert sorted(row["target"] for row in audit) == ["job_lost_1", "job_lost_1", "job_lost_5000"]


async def test_concurrent_submissions_with_one_key_store_one_job(store: Store) -> None:
    await store.bootstrap(user_id="usr_1", email="o@x", workspace_id="ws_1", workspace_name="w", plan="hobby",
                          tokens=[], now=0)
    stored: list[str] = []

    async def submit(n: int) -> None:
        job = await store.insert_job(_job(n), idempotency_key="same", request_hash="h", idempotency_window_ms=60_000,
                                     audit=_audit(n))
        stored.append(job.id)

    async with trio.open_nursery() as nursery:
        for n in range(1, 9):
            nursery.start_soon(submit, n)
    assert len(stored) == 8 and len(set(stored)) == 1
    jobs = await store._read("SELECT id FROM jobs WHERE idempotency_key = 'same'")  # type: ignore[attr-defined]
    assert [row["id"] for row in jobs] == [stored[0]]


async def test_label_rows_follow_jobs_with_labels_only(store: Store) -> None:
    """Migration 0081 runs the label triggers only for jobs with labels: the rows are as before."""
    from coordinator.store.base import JobFilter

    await store.bootstrap(user_id="usr_1", email="o@x", workspace_id="ws_1", workspace_name="w", plan="hobby",
                          tokens=[], now=0)
    plain = await store.insert_job(replace(_job(1), labels={}), audit=_audit(1))
    labelled = await store.insert_job(replace(_job(2), labels={"team": "x", "gpu": "h100"}), audit=_audit(2))
    rows = await store._read("SELECT job_id, key, value FROM job_labels ORDER BY key")  # type: ignore[attr-defined]
    assert [tuple(row) for row in rows] == [(labelled.id, "gpu", "h100"), (labelled.id, "team", "x")]
    found = await store.list_jobs("ws_1", JobFilter(labels=(("team", "x"),)), limit=10, before_id=None)
    assert [job.id for job in found] == [labelled.id]

    def delete(tx: Any) -> None:
        tx.execute("DELETE FROM jobs WHERE id IN (?, ?)", (plain.id, labelled.id))

    await store._write(delete)  # type: ignore[attr-defined]
    assert await store._read("SELECT job_id FROM job_labels") == []  # type: ignore[attr-defined]
