"""Data access for job arrays (issue 16): the ``job_arrays`` row, its tasks' rows and its slot
counter. The rules are in ``coordinator.services.arrays``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from common.states import JobState
from coordinator.store.db import Tx


def insert_array_row(tx: Tx, *, array_id: str, workspace_id: str, name: str | None, count: int,
                     max_parallel: int | None, submitted_by: str | None, created_at: int,
                     idempotency_key: str | None, request_hash: str | None) -> None:
    tx.execute(
        """INSERT INTO job_arrays (id, workspace_id, name, count, max_parallel, submitted_by, created_at,
                                   idempotency_key, request_hash)
           VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)""",
        (array_id, workspace_id, name, count, max_parallel, submitted_by, created_at, idempotency_key, request_hash),
    )


# One row per task, in the order of TASK_COLUMNS; the state is QUEUED.
TASK_COLUMNS = ("id", "workspace_id", "type", "command", "name", "labels", "resources", "env", "timeout_seconds",
                "created_at", "reason", "priority", "array_id", "array_index", "submitted_by", "retry")


def insert_task_rows(tx: Tx, rows: Sequence[Sequence[Any]]) -> None:
    """Every task in one batch (``executemany``: one statement prepared, many rows bound)."""
    tx.executemany(
        f"""INSERT INTO jobs (state, {', '.join(TASK_COLUMNS)})
            VALUES ('QUEUED', {', '.join('?' for _ in TASK_COLUMNS)})""",
        rows,
    )


def take_slot(tx: Tx, array_id: str) -> bool:
    """Compare-and-set: one more active task, only below ``max_parallel``; False when full."""
    return int(tx.execute(
        """UPDATE job_arrays SET active = active + 1
           WHERE id = ? AND (max_parallel IS NULL OR active < max_parallel)""",
        (array_id,),
    ).rowcount) == 1


def give_back_slot(tx: Tx, array_id: str) -> None:
    tx.execute("UPDATE job_arrays SET active = active - 1 WHERE id = ? AND active > 0", (array_id,))


def full_arrays(tx: Tx, workspace_id: str, array_ids: Sequence[str]) -> set[str]:
    """Those of ``array_ids`` (arrays of ``workspace_id``) that have no free slot."""
    full: set[str] = set()
    for start in range(0, len(array_ids), 500):  # below SQLite's bound on host parameters
        chunk = array_ids[start:start + 500]
        rows = tx.execute(
            f"""SELECT id FROM job_arrays WHERE workspace_id = ? AND id IN ({', '.join('?' for _ in chunk)})
                AND max_parallel IS NOT NULL AND active >= max_parallel""",
            (workspace_id, *chunk),
        ).fetchall()
        full.update(row[0] for row in rows)
    return full


def task_counts(tx: Tx, array_id: str) -> dict[JobState, int]:
    """How many of the array's tasks are in each state (states with none left out)."""
    rows = tx.execute("SELECT state, COUNT(*) FROM jobs WHERE array_id = ? GROUP BY state", (array_id,)).fetchall()
    return {JobState(row[0]): int(row[1]) for row in rows}
