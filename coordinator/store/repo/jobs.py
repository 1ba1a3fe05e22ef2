"""Data access for jobs: rows to ``JobRecord`` with their attempts."""

from __future__ import annotations

import json

from common.states import JobState
from coordinator.store.base import AttemptRecord, JobRecord
from coordinator.store.db import Row, Tx
from coordinator.store.sqlite_core import loads_or_none


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
