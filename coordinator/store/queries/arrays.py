"""Queries for job arrays and queue positions (issue 16); the rules are in
``coordinator.services.arrays`` and ``coordinator.services.fairness``."""

from __future__ import annotations

import json

from common.states import JobState
from coordinator.services import arrays, fairness
from coordinator.services.retries import WAITING_FOR_RETRY
from coordinator.services.webhook_events import enqueue_job_event
from coordinator.store.base import ArrayRecord, IdempotencyConflict, JobRecord
from coordinator.store.db import Row, Tx
from coordinator.store.queries.jobs import transition_job
from coordinator.store.sqlite_core import SqliteCore


class ArrayQueries(SqliteCore):
    async def insert_array(self, array: ArrayRecord, template: JobRecord, task_ids: list[str], *,
                           idempotency_key: str | None = None, request_hash: str | None = None,
                           idempotency_window_ms: int = 0) -> ArrayRecord:
        """The array and its ``array.count`` tasks, in one transaction. With an ``idempotency_key``
        used within the window: the earlier array (same body), or ``IdempotencyConflict``."""
        def write(tx: Tx) -> ArrayRecord:
            if idempotency_key is not None:
                earlier = tx.execute(
                    "SELECT * FROM job_arrays WHERE workspace_id = ? AND idempotency_key = ?",
                    (array.workspace_id, idempotency_key),
                ).fetchone()
                if earlier is not None:
                    if earlier["created_at"] >= array.created_at - idempotency_window_ms:
                        if earlier["request_hash"] != request_hash:
                            raise IdempotencyConflict(idempotency_key)
                        return _array(earlier, arrays.summary(tx, earlier["id"]))
                    tx.execute("UPDATE job_arrays SET idempotency_key = NULL WHERE id = ?", (earlier["id"],))
            arrays.insert_array(tx, array, template, task_ids, idempotency_key=idempotency_key,
                                request_hash=request_hash)
            if _subscribed(tx, array.workspace_id, "job.created"):
                for task_id in task_ids:
                    enqueue_job_event(tx, task_id, "job.created", array.created_at)
            return _array(tx.execute("SELECT * FROM job_arrays WHERE id = ?", (array.id,)).fetchone(),
                          {JobState.QUEUED: array.count})

        return await self._write(write)

    async def find_idempotent_array(self, workspace_id: str, key: str,
                                    since: int) -> tuple[ArrayRecord, str | None] | None:
        # As ``find_idempotent_job``: one query for a key no array holds (every keyed submission).
        if not await self._read(
                "SELECT 1 FROM job_arrays WHERE workspace_id = ? AND idempotency_key = ? AND created_at >= ?",
                (workspace_id, key, since)):
            return None

        def read(tx: Tx) -> tuple[ArrayRecord, str | None] | None:
            row = tx.execute(
                "SELECT * FROM job_arrays WHERE workspace_id = ? AND idempotency_key = ? AND created_at >= ?",
                (workspace_id, key, since),
            ).fetchone()
            if row is None:
                return None
            return _array(row, arrays.summary(tx, row["id"])), row["request_hash"]

        return await self._read_with(read)

    async def get_array(self, workspace_id: str, array_id: str) -> ArrayRecord | None:
        def read(tx: Tx) -> ArrayRecord | None:
            row = tx.execute("SELECT * FROM job_arrays WHERE id = ? AND workspace_id = ?",
                             (array_id, workspace_id)).fetchone()
            return _array(row, arrays.summary(tx, array_id)) if row is not None else None

        return await self._read_with(read)

    async def list_arrays(self, workspace_id: str, *, limit: int, before_id: str | None) -> list[ArrayRecord]:
        def read(tx: Tx) -> list[ArrayRecord]:
            rows = tx.execute(
                "SELECT * FROM job_arrays WHERE workspace_id = ? AND id < ? ORDER BY id DESC LIMIT ?",
                (workspace_id, before_id or "\uffff", limit),
            ).fetchall()
            return [_array(row, arrays.summary(tx, row["id"])) for row in rows]

        return await self._read_with(read)

    async def cancel_array(self, workspace_id: str, array_id: str,
                           now: int) -> tuple[ArrayRecord, list[tuple[str | None, str]]] | None:
        """Cancel every task not yet terminal, in one transaction, as ``cancel_job`` does one:
        QUEUED and ASSIGNED ones at once, RUNNING ones by their agents. Returns the array and the
        (agent id or None, job id) of each task it changed (an agent id: that agent must stop
        it); None when there is no such array in the workspace."""
        def write(tx: Tx) -> tuple[ArrayRecord, list[tuple[str | None, str]]] | None:
            row = tx.execute(
                "SELECT * FROM job_arrays WHERE id = ? AND workspace_id = ?", (array_id, workspace_id)
            ).fetchone()
            if row is None:
                return None
            touched: list[tuple[str | None, str]] = []
            for task in tx.execute(
                "SELECT * FROM jobs WHERE array_id = ? AND state IN ('QUEUED', 'ASSIGNED', 'RUNNING')", (array_id,)
            ).fetchall():
                touched.append((task["agent_id"], task["id"]))
                if JobState(task["state"]) == JobState.RUNNING:
                    # Its agent stops it (TERM, grace, KILL) and reports CANCELLED itself.
                    tx.execute("UPDATE jobs SET cancel_requested = 1 WHERE id = ? AND state = 'RUNNING'",
                               (task["id"],))
                else:
                    transition_job(tx, task, JobState.CANCELLED, now=now, finished_at=now, reason="cancelled")
            return _array(row, arrays.summary(tx, array_id)), touched

        return await self._write(write)

    async def array_task_logs(self, workspace_id: str, array_id: str,
                              index: int | None) -> list[tuple[int, str]]:
        """(index, job id) of the array's tasks that have output, in index order; with ``index``:
        that task alone, output or not. Reads two columns, never the tasks' rows."""
        if index is not None:
            rows = await self._read(
                "SELECT array_index, id FROM jobs WHERE workspace_id = ? AND array_id = ? AND array_index = ?",
                (workspace_id, array_id, index))
        else:
            rows = await self._read(
                """SELECT array_index, id FROM jobs WHERE workspace_id = ? AND array_id = ? AND log_size > 0
                   ORDER BY array_index""", (workspace_id, array_id))
        return [(int(row[0]), str(row[1])) for row in rows]

    async def arrays_at_limit(self, workspace_id: str, array_ids: set[str]) -> set[str]:
        """Those of ``array_ids`` with ``maxParallel`` tasks ASSIGNED or RUNNING."""
        if not array_ids:
            return set()
        return await self._read_with(lambda tx: arrays.full_arrays(tx, workspace_id, array_ids))

    async def queue_positions(self, workspace_id: str, jobs: list[JobRecord]) -> dict[str, int]:
        """The position (1 = next) of each QUEUED job of ``jobs``; see ``services.fairness``."""
        queued = [fairness.QueuedJob(job_id=job.id, priority=job.priority, created_at=job.created_at,
                                     submitter=job.submitted_by or "")
                  for job in jobs if job.state == JobState.QUEUED and not _held(job)]
        if not queued:
            return {}
        return await self._read_with(lambda tx: fairness.positions(tx, workspace_id, queued))


def _held(job: JobRecord) -> bool:
    """Held by its dependencies or its retry backoff: not in the dispatch order yet (no position)."""
    return job.dependencies_pending > 0 or job.reason == WAITING_FOR_RETRY


def _subscribed(tx: Tx, workspace_id: str, event_type: str) -> bool:
    """Whether any webhook of the workspace wants ``event_type`` (else no payload is rendered)."""
    return any(event_type in json.loads(row["events"]) for row in tx.execute(
        "SELECT events FROM webhooks WHERE workspace_id = ? AND deleted_at IS NULL", (workspace_id,)
    ).fetchall())


def _array(row: Row, summary: dict[JobState, int]) -> ArrayRecord:
    return ArrayRecord(id=row["id"], workspace_id=row["workspace_id"], count=row["count"],
                       max_parallel=row["max_parallel"], created_at=row["created_at"], name=row["name"],
                       submitted_by=row["submitted_by"], summary=summary)
