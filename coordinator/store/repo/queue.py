"""Data access for the fair-share queue (issue 16): submitters' turns and the counts a queued
job's position is made of, over the ``jobs_queue_position`` index. The rules are in
``coordinator.services.fairness``."""

from __future__ import annotations

from collections.abc import Sequence

from coordinator.store.db import Tx


def turns_of(tx: Tx, workspace_id: str, submitters: Sequence[str]) -> dict[str, int]:
    """The last turn of each of ``submitters`` that has been served."""
    if not submitters:
        return {}
    rows = tx.execute(
        f"""SELECT submitter, last_turn FROM submitter_turns
            WHERE workspace_id = ? AND submitter IN ({', '.join('?' for _ in submitters)})""",
        (workspace_id, *submitters),
    ).fetchall()
    return {row[0]: int(row[1]) for row in rows}


def record_turn(tx: Tx, workspace_id: str, submitter: str) -> None:
    """``submitter``'s turn becomes the workspace's newest."""
    tx.execute(
        """INSERT INTO submitter_turns (workspace_id, submitter, last_turn)
           VALUES (?, ?, (SELECT COALESCE(MAX(last_turn), 0) + 1 FROM submitter_turns WHERE workspace_id = ?))
           ON CONFLICT (workspace_id, submitter) DO UPDATE SET last_turn = excluded.last_turn""",
        (workspace_id, submitter, workspace_id),
    )


def queued_above(tx: Tx, workspace_id: str, priority: int) -> int:
    """QUEUED jobs of the workspace with a higher priority."""
    return int(tx.execute(
        "SELECT COUNT(*) FROM jobs WHERE workspace_id = ? AND state = 'QUEUED' AND priority > ?",
        (workspace_id, priority),
    ).fetchone()[0])


def queued_by_submitter(tx: Tx, workspace_id: str, priority: int) -> dict[str, tuple[int, int]]:
    """Per submitter ('' for none) at ``priority``: how many QUEUED, and the oldest ``created_at``."""
    rows = tx.execute(
        """SELECT COALESCE(submitted_by, ''), COUNT(*), MIN(created_at) FROM jobs
           WHERE workspace_id = ? AND state = 'QUEUED' AND priority = ? GROUP BY submitted_by""",
        (workspace_id, priority),
    ).fetchall()
    return {row[0]: (int(row[1]), int(row[2])) for row in rows}


def _submitter_is(submitter: str) -> tuple[str, tuple[str, ...]]:
    # '' stands for NULL; either way a condition the index on submitted_by serves.
    return ("submitted_by = ?", (submitter,)) if submitter else ("submitted_by IS NULL", ())


def queued_before(tx: Tx, workspace_id: str, priority: int, submitter: str, created_at: int,
                  job_id: str) -> int:
    """``submitter``'s QUEUED jobs at ``priority`` older than (``created_at``, ``job_id``)."""
    condition, who = _submitter_is(submitter)
    return int(tx.execute(
        f"""SELECT COUNT(*) FROM jobs WHERE workspace_id = ? AND state = 'QUEUED' AND priority = ? AND {condition}
              AND (created_at, id) < (?, ?)""",
        (workspace_id, priority, *who, created_at, job_id),
    ).fetchone()[0])


def queued_between(tx: Tx, workspace_id: str, priority: int, submitter: str,
                   first: tuple[int, str], last: tuple[int, str]) -> list[str]:
    """The ids of ``submitter``'s QUEUED jobs at ``priority`` from ``first`` to ``last``
    ((created_at, id), both included), oldest first."""
    condition, who = _submitter_is(submitter)
    rows = tx.execute(
        f"""SELECT id FROM jobs WHERE workspace_id = ? AND state = 'QUEUED' AND priority = ? AND {condition}
              AND (created_at, id) >= (?, ?) AND (created_at, id) <= (?, ?) ORDER BY created_at, id""",
        (workspace_id, priority, *who, *first, *last),
    ).fetchall()
    return [row[0] for row in rows]
