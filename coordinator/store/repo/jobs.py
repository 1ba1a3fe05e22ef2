"""Data access for jobs: rows to ``JobRecord`` with their attempts; submission, cancellation and
queue-reason updates."""

from __future__ import annotations

import json
from types import MappingProxyType
from typing import Any

from common.states import AgentState, JobState
from coordinator.scheduler import AgentSnapshot
from coordinator.store.base import AttemptRecord, JobRecord
from coordinator.store.db import Row, Tx
from coordinator.store.sqlite_core import dumps_or_none, loads_or_none

# Jobs that a claim may not take yet: their dependencies are pending, or their retry backoff
# lasts past the claim's time (its one parameter). One condition, shared by the claim query.
CLAIMABLE_NOW_SQL = "dependencies_pending = 0 AND (not_before IS NULL OR not_before <= ?)"

def job_by_id(tx: Tx, job_id: str) -> JobRecord | None:
    """The job (any workspace: the caller has scoped ``job_id`` already), with its attempts."""
    row = tx.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
    return None if row is None else job_record(row, tx)


def attempts_of(tx: Tx, job_ids: list[str]) -> dict[str, list[AttemptRecord]]:
    """The attempts of each of ``job_ids``, oldest first."""
    found: dict[str, list[AttemptRecord]] = {}
    for start in range(0, len(job_ids), 500):  # below SQLite's bound on host parameters
        chunk = job_ids[start:start + 500]
        rows = tx.execute(
            f"SELECT * FROM job_attempts WHERE job_id IN ({', '.join('?' for _ in chunk)}) ORDER BY job_id, epoch",
            tuple(chunk),
        ).fetchall()
        for row in rows:
            found.setdefault(row["job_id"], []).append(AttemptRecord(
                epoch=row["epoch"], agent_id=row["agent_id"], assigned_at=row["assigned_at"],
                state=JobState(row["state"]), started_at=row["started_at"], finished_at=row["finished_at"],
                exit_code=row["exit_code"], reason=row["reason"], cpu_seconds=row["cpu_seconds"],
                gpu_seconds=row["gpu_seconds"], gb_seconds=row["gb_seconds"],
                gpu_memory_gb_seconds=row["gpu_memory_gb_seconds"], gpu_util_seconds=row["gpu_util_seconds"],
                gpu_model=row["gpu_model"],
            ))
    return found


def dependencies_of(tx: Tx, job_ids: list[str]) -> dict[str, list[tuple[str, str]]]:
    """Each job's dependencies as submitted, (job id, condition) in order."""
    found: dict[str, list[tuple[str, str]]] = {}
    for start in range(0, len(job_ids), 500):  # below SQLite's bound on host parameters
        chunk = job_ids[start:start + 500]
        rows = tx.execute(
            f"""SELECT job_id, depends_on, condition FROM job_dependencies
                WHERE job_id IN ({', '.join('?' for _ in chunk)}) ORDER BY job_id, position""",
            tuple(chunk),
        ).fetchall()
        for row in rows:
            found.setdefault(row["job_id"], []).append((row["depends_on"], row["condition"]))
    return found


def job_record(row: Row, tx: Tx | None = None, *,
         attempts: list[AttemptRecord] | None = None, depends_on: list[tuple[str, str]] | None = None) -> JobRecord:
    """A job from its row, with its attempts and dependencies (given, or read through ``tx``)."""
    if attempts is None:
        attempts = attempts_of(tx, [row["id"]]).get(row["id"], []) if tx is not None else []
    if depends_on is None:
        depends_on = dependencies_of(tx, [row["id"]]).get(row["id"], []) if tx is not None else []
    return JobRecord(
        id=row["id"], workspace_id=row["workspace_id"], state=JobState(row["state"]), type=row["type"],
        command=row["command"], name=row["name"], labels=json.loads(row["labels"]),
        resources=loads_or_none(row["resources"]), env=json.loads(row["env"]),
        timeout_seconds=row["timeout_seconds"], created_at=row["created_at"], started_at=row["started_at"],
        finished_at=row["finished_at"], exit_code=row["exit_code"], runtime_ms=row["runtime_ms"],
        agent_id=row["agent_id"], epoch=row["epoch"], reason=row["reason"], signal=row["signal"],
        cpu_seconds=row["cpu_seconds"],
        gpu_seconds=row["gpu_seconds"], gb_seconds=row["gb_seconds"],
        cancel_requested=bool(row["cancel_requested"]), log_size=row["log_size"], attempts=attempts,
        priority=row["priority"], retry=loads_or_none(row["retry"]), not_before=row["not_before"],
        depends_on=depends_on, dependencies_pending=row["dependencies_pending"],
        array_id=row["array_id"], array_index=row["array_index"],
        submitted_by=row["submitted_by"],
    )


def job_row(tx: Tx, job_id: str) -> Row | None:
    row: Row | None = tx.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
    return row


def job_row_in_workspace(tx: Tx, job_id: str, workspace_id: str) -> Row | None:
    row: Row | None = tx.execute(
        "SELECT * FROM jobs WHERE id = ? AND workspace_id = ?", (job_id, workspace_id)
    ).fetchone()
    return row


def job_by_idempotency_key(tx: Tx, workspace_id: str, key: str) -> Row | None:
    row: Row | None = tx.execute(
        "SELECT * FROM jobs WHERE workspace_id = ? AND idempotency_key = ?", (workspace_id, key),
    ).fetchone()
    return row


def release_idempotency_key(tx: Tx, job_id: str) -> None:
    tx.execute("UPDATE jobs SET idempotency_key = NULL WHERE id = ?", (job_id,))


def insert_job_row(tx: Tx, job: JobRecord, *, idempotency_key: str | None, request_hash: str | None) -> Row:
    """Insert the job; its row as stored (defaults included), without a read after."""
    [row] = tx.execute(
        """INSERT INTO jobs (id, workspace_id, state, type, command, name, labels, resources, env,
                             timeout_seconds, created_at, idempotency_key, request_hash, reason, priority,
                             retry, submitted_by)
           VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
           RETURNING *""",
        (job.id, job.workspace_id, job.state.value, job.type, job.command, job.name,
         json.dumps(job.labels), dumps_or_none(job.resources), json.dumps(job.env),
         job.timeout_seconds, job.created_at, idempotency_key, request_hash, job.reason, job.priority,
         dumps_or_none(job.retry), job.submitted_by),
    ).fetchall()
    inserted: Row = row
    return inserted


def set_dependencies_pending(tx: Tx, job_id: str, pending: int, reason: str) -> None:
    tx.execute("UPDATE jobs SET dependencies_pending = ?, reason = ? WHERE id = ?", (pending, reason, job_id))


def request_cancel(tx: Tx, job_id: str, epoch: int) -> bool:
    """Flag the RUNNING job (at ``epoch``) for its agent to stop; False: it is no longer so."""
    changed: int = tx.execute(
        "UPDATE jobs SET cancel_requested = 1 WHERE id = ? AND state = 'RUNNING' AND epoch = ?", (job_id, epoch),
    ).rowcount
    return changed == 1


AGENT_SNAPSHOTS_SQL = (
    "SELECT labels, capacity, state, drain_requested FROM agents WHERE workspace_id = ? AND deleted_at IS NULL"
)


# ``hard_cap_reached`` and the agents (as ``AGENT_SNAPSHOTS_SQL``) in one query, for a submission:
# one row per agent, or one row of NULL agent columns when the workspace has none.
SUBMISSION_STATE_SQL = """
    SELECT b.hard_cap_reached, a.labels, a.capacity, a.state, a.drain_requested
    FROM (SELECT 1 AS one) o
    LEFT JOIN billing_state b ON b.workspace_id = ?
    LEFT JOIN agents a ON a.workspace_id = ? AND a.deleted_at IS NULL
"""


def agent_snapshots(tx: Tx, workspace_id: str) -> list[AgentSnapshot]:
    """What placement needs of each live (undeleted) agent of the workspace."""
    return agent_snapshots_of(tx.execute(AGENT_SNAPSHOTS_SQL, (workspace_id,)).fetchall())


# Every submission reads the workspace's agents (for its queue reason), whose labels and
# capacity change rarely: a snapshot is made once per distinct row and shared (read-only
# mappings), not parsed again from JSON per agent per submission.
_SNAPSHOTS: dict[tuple[str, str, str, bool], AgentSnapshot] = {}
_SNAPSHOTS_KEPT = 4096


def agent_snapshots_of(rows: list[Row]) -> list[AgentSnapshot]:
    """``AgentSnapshot``s of rows read with ``AGENT_SNAPSHOTS_SQL``."""
    found = []
    for row in rows:
        key = (row["labels"], row["capacity"], row["state"], bool(row["drain_requested"]))
        snapshot = _SNAPSHOTS.get(key)
        if snapshot is None:
            if len(_SNAPSHOTS) >= _SNAPSHOTS_KEPT:
                _SNAPSHOTS.clear()
            snapshot = AgentSnapshot(labels=MappingProxyType(json.loads(key[0])),
                                     capacity=MappingProxyType(json.loads(key[1])),
                                     live=key[2] != AgentState.DOWN.value, draining=key[3])
            _SNAPSHOTS[key] = snapshot
        found.append(snapshot)
    return found


def queued_groups(tx: Tx, held_until: int) -> list[Any]:
    """(workspace_id, labels, resources, reason, count) of the QUEUED jobs claimable at
    ``held_until``, one row per distinct (workspace, selector, resources, reason)."""
    return tx.execute(
        f"""SELECT workspace_id, labels, resources, reason, COUNT(*) FROM jobs WHERE state = 'QUEUED'
           AND {CLAIMABLE_NOW_SQL} GROUP BY workspace_id, labels, resources, reason""",
        (held_until,),
    ).fetchall()


def set_group_reason(tx: Tx, held_until: int, *, workspace_id: str, labels: str,
                     resources: str | None, old_reason: str | None, new_reason: str | None) -> int:
    """Set the queue reason of one group (see ``queued_groups``); how many jobs changed."""
    changed: int = tx.execute(
        f"""UPDATE jobs SET reason = ? WHERE workspace_id = ? AND state = 'QUEUED' AND labels = ?
           AND resources IS NOT DISTINCT FROM ? AND reason IS NOT DISTINCT FROM ?
           AND {CLAIMABLE_NOW_SQL}""",
        (new_reason, workspace_id, labels, resources, old_reason, held_until),
    ).rowcount
    return changed
