"""Queries for jobs and their logs, and ``transition_job``, the hook every job state
change goes through.

What a submission or a cancel does is decided in ``coordinator.services.job_requests``, the
queue reasons in ``coordinator.services.queue_reasons``; their SQL is in
``coordinator.store.repo.jobs``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from common.states import JobState, check_transition
from coordinator.scheduler import AgentSnapshot
from coordinator.services import arrays, dependencies, job_requests, queue_reasons, wakeups
from coordinator.services.webhook_events import enqueue_job_event
from coordinator.store.base import (
    AuditRecord,
    JobFilter,
    JobRecord,
    LogChunk,
)
from coordinator.store.db import Row, Tx
from coordinator.store.errors import StaleState
from coordinator.store.repo.job_lists import list_jobs_query
from coordinator.store.repo.jobs import (
    AGENT_SNAPSHOTS_SQL,
    SUBMISSION_STATE_SQL,
    agent_snapshots_of,
    attempts_of,
    dependencies_of,
)
from coordinator.store.repo.jobs import CLAIMABLE_NOW_SQL as CLAIMABLE_NOW_SQL  # re-exported
from coordinator.store.repo.jobs import job_record as _job
from coordinator.store.sqlite_core import SqliteCore

LOG_RETENTION_BYTES = 8 * 1024 * 1024
T = TypeVar("T")


class JobQueries(SqliteCore):
    async def _write(self, fn: Callable[[Tx], T]) -> T:
        # Rules that make jobs claimable (dependencies met, retries) say so inside the write;
        # the waiting claims of those workspaces are woken once it has committed.
        news = wakeups.News()

        def collected(tx: Tx) -> T:
            with wakeups.collecting(news):
                return fn(tx)

        result = await super()._write(collected)
        for key, items in (("_work_listener", news.workspaces), ("_jobs_listener", news.jobs)):
            listener: Callable[[str], None] | None = self.__dict__.get(key)
            if listener is not None:
                for item in items:
                    listener(item)
        return result

    def on_work_released(self, listener: Callable[[str], None]) -> None:
        self.__dict__["_work_listener"] = listener

    def on_jobs_changed(self, listener: Callable[[str], None]) -> None:
        self.__dict__["_jobs_listener"] = listener

    async def insert_job(self, job: JobRecord, *, idempotency_key: str | None = None,
                         request_hash: str | None = None, idempotency_window_ms: int = 0,
                         audit: AuditRecord | None = None) -> JobRecord:
        return await self._write(lambda tx: job_requests.submit_job(
            tx, job, idempotency_key=idempotency_key, request_hash=request_hash,
            idempotency_window_ms=idempotency_window_ms, audit=audit))

    async def find_idempotent_job(self, workspace_id: str, key: str, since: int) -> tuple[JobRecord, str | None] | None:
        # Most keys are new: one query says so (on PostgreSQL a snapshot's BEGIN and COMMIT
        # are two round trips more); a job found is read whole, with its attempts, in one.
        if not await self._read("SELECT 1 FROM jobs WHERE workspace_id = ? AND idempotency_key = ? AND created_at >= ?",
                                (workspace_id, key, since)):
            return None

        def read(tx: Tx) -> tuple[JobRecord, str | None] | None:
            row = tx.execute(
                "SELECT * FROM jobs WHERE workspace_id = ? AND idempotency_key = ? AND created_at >= ?",
                (workspace_id, key, since),
            ).fetchone()
            return (_job(row, tx), row["request_hash"]) if row is not None else None

        return await self._read_with(read)

    async def get_job(self, workspace_id: str, job_id: str) -> JobRecord | None:
        def read(tx: Tx) -> JobRecord | None:
            row = tx.execute("SELECT * FROM jobs WHERE id = ? AND workspace_id = ?", (job_id, workspace_id)).fetchone()
            return _job(row, tx) if row is not None else None

        return await self._read_with(read)

    async def job_created_at(self, workspace_id: str, job_id: str) -> int | None:
        rows = await self._read("SELECT created_at FROM jobs WHERE id = ? AND workspace_id = ?", (job_id, workspace_id))
        return int(rows[0]["created_at"]) if rows else None

    async def list_jobs(self, workspace_id: str, filters: JobFilter, *, limit: int,
                        before_id: str | None) -> list[JobRecord]:
        sql, params = list_jobs_query(workspace_id, filters, limit=limit, before_id=before_id)

        def read(tx: Tx) -> list[JobRecord]:
            rows = tx.execute(sql, params).fetchall()
            ids = [row["id"] for row in rows]
            attempts = attempts_of(tx, ids)
            depends = dependencies_of(tx, ids)
            return [_job(row, attempts=attempts.get(row["id"], []), depends_on=depends.get(row["id"], []))
                    for row in rows]

        return await self._read_with(read)

    async def has_queued(self, workspace_id: str) -> bool:
        rows = await self._read("SELECT 1 FROM jobs WHERE workspace_id = ? AND state = 'QUEUED' LIMIT 1",
                                (workspace_id,))
        return bool(rows)

    async def next_claimable_at(self, workspace_id: str, now: int) -> int | None:
        rows = await self._read(
            """SELECT MIN(not_before) FROM jobs
               WHERE workspace_id = ? AND state = 'QUEUED' AND not_before IS NOT NULL AND not_before > ?""",
            (workspace_id, now),
        )
        return int(rows[0][0]) if rows and rows[0][0] is not None else None

    async def agent_snapshots(self, workspace_id: str) -> list[AgentSnapshot]:
        # One query: no read snapshot needed (on PostgreSQL its BEGIN and COMMIT were two more
        # round trips per submission).
        return agent_snapshots_of(await self._read(AGENT_SNAPSHOTS_SQL, (workspace_id,)))

    async def submission_state(self, workspace_id: str) -> tuple[bool, list[AgentSnapshot]]:
        # One query for the two reads a submission makes before its write: a round trip and a
        # hop to a database thread less on PostgreSQL.
        rows = await self._read(SUBMISSION_STATE_SQL, (workspace_id, workspace_id))
        hard_cap_reached = bool(rows and rows[0]["hard_cap_reached"])
        return hard_cap_reached, agent_snapshots_of([row for row in rows if row["labels"] is not None])

    async def refresh_queued_reasons(self, now: int | None = None) -> int:
        return await self._write(lambda tx: queue_reasons.refresh_queued_reasons(tx, now))

    async def cancel_job(self, workspace_id: str, job_id: str, now: int) -> JobRecord | None:
        return await self._write(lambda tx: job_requests.cancel_job(tx, workspace_id, job_id, now))

    async def read_log(self, workspace_id: str, job_id: str, offset: int) -> list[LogChunk]:
        rows = await self._read(
            """SELECT l."offset", l.data FROM job_logs l JOIN jobs j ON j.id = l.job_id
               WHERE l.job_id = ? AND j.workspace_id = ? AND l."offset" + length(l.data) > ?
               ORDER BY l."offset\"""",
            (job_id, workspace_id, offset),
        )
        chunks = [LogChunk(row["offset"], bytes(row["data"])) for row in rows]
        if chunks and chunks[0].offset < offset:
            first = chunks[0]
            chunks[0] = LogChunk(offset, first.data[offset - first.offset:])
        return chunks


def transition_job(tx: Tx, job: Row, new_state: JobState, *, now: int,
                   attempt_reason: str | None = None, attempt_ended_at: int | None = None,
                   attempt_result: dict[str, Any] | None = None, **fields: Any) -> Row:
    """Move ``job`` (its current row) to ``new_state``, setting ``fields`` (column names) with it;
    return the job's row as changed (the UPDATE's own ``RETURNING``: no read).

    Every job state change in the store goes through here, inside the caller's
    transaction, checked against the state machine in ``common.states`` (raises
    ``InvalidTransition``) and made as a compare-and-set on the state and epoch ``job`` was
    read with: raises ``StaleState`` (and changes nothing) when another transaction changed
    the job first. Observers of transitions (webhooks, billing, the job's attempts)
    hook in here, so that what they record commits or rolls back with the change itself.

    A claim (→ ASSIGNED with a new ``epoch``) opens an attempt; every later change of that
    epoch is recorded on it. Going back to QUEUED ends the attempt at ``attempt_ended_at``
    (default ``now``) with ``attempt_reason`` (default "requeued"), or, for a retry, with the
    attempt's own result (``attempt_result``: its columns). A terminal state decides the job's
    waiting dependents (``services.dependencies``).
    """
    old = JobState(job["state"])
    check_transition(old, new_state)
    # First: may refuse a claim (ArrayFull) before anything is written.
    arrays.on_transition(tx, job["workspace_id"], job["array_id"], old, new_state)
    columns: dict[str, Any] = {"state": new_state.value, **fields}
    if old == JobState.QUEUED and "reason" not in columns:
        columns["reason"] = None  # why it waited (a queue reason) is over
    assignments = ", ".join(f"{name} = ?" for name in columns)
    # Compare-and-set: the change was decided on ``job`` as read; if another transaction has
    # moved the job (or started another attempt) since, it changes nothing and says so.
    update = f"UPDATE jobs SET {assignments} WHERE id = ? AND state = ? AND epoch = ? RETURNING *"
    params: tuple[Any, ...] = (*columns.values(), job["id"], job["state"], job["epoch"])
    one_statement = tx.dialect.name == "postgresql"
    attempt = _attempt_write(job, old, new_state, now, fields, attempt_reason, attempt_ended_at, attempt_result,
                             if_changed=one_statement)
    if attempt is not None and one_statement:
        # The attempt's write in the same statement (a round trip each on PostgreSQL), made
        # only where the job's compare-and-set changed its row.
        attempt_sql, attempt_params = attempt
        changed = tx.execute(f"WITH changed AS ({update}), attempt AS ({attempt_sql}) SELECT * FROM changed",
                             (*params, *attempt_params)).fetchall()
        attempt = None
    else:
        changed = tx.execute(update, params).fetchall()
    if len(changed) != 1:
        raise StaleState(f"job {job['id']} is no longer {old.value} at epoch {job['epoch']}")
    if attempt is not None:
        tx.execute(*attempt)
    # The row, not its id: its workspace is known (a job never changes workspace), so no lookup.
    enqueue_job_event(tx, job, "job.transitioned", now)
    if new_state.is_terminal and not old.is_terminal:
        dependencies.job_ended(tx, job["id"], new_state, now=now)
    row: Row = changed[0]
    return row


_ATTEMPT_COLUMNS = ("started_at", "finished_at", "exit_code", "reason")


def _attempt_write(job: Row, old: JobState, new: JobState, now: int,
                   fields: dict[str, Any], reason: str | None, ended_at: int | None,
                   result: dict[str, Any] | None = None, *,
                   if_changed: bool = False) -> tuple[str, tuple[Any, ...]] | None:
    """The statement that records the transition on the job's attempt (SQL, parameters), or
    None when there is nothing to record. Run after the job's compare-and-set was checked, or,
    ``if_changed``, inside the job's own statement (PostgreSQL): then it writes only where the
    compare-and-set changed the row (``changed``, the job UPDATE's RETURNING), for the
    statement runs whole either way."""
    gate = " AND EXISTS (SELECT 1 FROM changed)" if if_changed else ""
    if new == JobState.ASSIGNED:
        # A plain insert: a claim raises the epoch under compare-and-set, so an attempt row
        # for it cannot exist yet; one that did would be a bug, refused by the primary key.
        values = (job["id"], fields.get("epoch", job["epoch"]), job["workspace_id"],
                  fields.get("agent_id", job["agent_id"]), fields.get("assigned_at", now), new.value)
        columns = "INSERT INTO job_attempts (job_id, epoch, workspace_id, agent_id, assigned_at, state)"
        if not if_changed:
            return f"{columns} VALUES (?, ?, ?, ?, ?, ?)", values
        # Typed: a SELECT's values have no column to take their type from.
        return (f"""{columns} SELECT CAST(? AS TEXT), CAST(? AS BIGINT), CAST(? AS TEXT), CAST(? AS TEXT),
                                     CAST(? AS BIGINT), CAST(? AS TEXT) WHERE EXISTS (SELECT 1 FROM changed)""",
                values)
    if old not in (JobState.ASSIGNED, JobState.RUNNING, JobState.LOST):
        return None  # a QUEUED job has no attempt in progress (an earlier one already ended)
    changes: dict[str, Any] = {"state": new.value}
    if new == JobState.QUEUED and result is not None:
        changes = dict(result)  # a retry: the attempt keeps the result it ended with
    elif new == JobState.QUEUED:
        # The job's own columns are being reset for the next attempt; this one keeps its times.
        changes["finished_at"] = ended_at if ended_at is not None else now
        changes["reason"] = reason or "requeued"
    else:
        changes.update({name: fields[name] for name in _ATTEMPT_COLUMNS if name in fields})
    assignments = ", ".join(f"{name} = ?" for name in changes)
    return (f"UPDATE job_attempts SET {assignments} WHERE job_id = ? AND epoch = ?{gate}",
            (*changes.values(), job["id"], job["epoch"]))
