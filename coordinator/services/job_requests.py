"""What a user's request does to a job: submitting it (the idempotency window, its
dependencies, the ``job.created`` event, the audit row) and cancelling it.

``transition_job`` is the store's hook every job state change goes through; it is imported
where it is called, since the store's job queries call these rules.
"""

from __future__ import annotations

from dataclasses import replace

from common.states import JobState
from coordinator.services import dependencies
from coordinator.services.tx import Tx
from coordinator.services.webhook_events import enqueue_job_event
from coordinator.store.base import AuditRecord, IdempotencyConflict, JobRecord
from coordinator.store.db import Row
from coordinator.store.errors import StaleState
from coordinator.store.queries.audit import insert_audit_row
from coordinator.store.repo import jobs as rows


def submit_job(tx: Tx, job: JobRecord, *, idempotency_key: str | None, request_hash: str | None,
               idempotency_window_ms: int, audit: AuditRecord | None) -> JobRecord:
    """Store a new job (and its audit row, targeted at the job stored), or, for a repeated
    ``idempotency_key`` within ``idempotency_window_ms`` of the earlier job's creation, that
    earlier job. Raises ``IdempotencyConflict`` when the key comes back with another body."""
    stored = _insert(tx, job, idempotency_key=idempotency_key, request_hash=request_hash,
                     idempotency_window_ms=idempotency_window_ms)
    if audit is not None:
        insert_audit_row(tx, replace(audit, target=stored.id))
    return stored


def _insert(tx: Tx, job: JobRecord, *, idempotency_key: str | None, request_hash: str | None,
            idempotency_window_ms: int) -> JobRecord:
    from coordinator.store.queries.jobs import transition_job  # the store's transition hook

    if idempotency_key is not None:
        earlier = rows.job_by_idempotency_key(tx, job.workspace_id, idempotency_key)
        if earlier is not None:
            if earlier["created_at"] >= job.created_at - idempotency_window_ms:
                if earlier["request_hash"] != request_hash:
                    raise IdempotencyConflict(idempotency_key)
                return rows.job_record(earlier, tx)
            # The key has expired: release it for this new job.
            rows.release_idempotency_key(tx, earlier["id"])
    inserted = rows.insert_job_row(tx, job, idempotency_key=idempotency_key, request_hash=request_hash)
    failed = False
    if job.depends_on:
        pending, failed = dependencies.add_dependencies(tx, job.id, job.workspace_id, job.depends_on)
        if pending and not failed:
            rows.set_dependencies_pending(tx, job.id, pending, dependencies.WAITING_FOR_DEPENDENCIES)
    enqueue_job_event(tx, job.id, "job.created", job.created_at, workspace_id=job.workspace_id)
    if failed:
        transition_job(tx, _row(tx, job.id), JobState.CANCELLED, now=job.created_at, finished_at=job.created_at,
                       reason=dependencies.DEPENDENCY_FAILED)
    if job.depends_on:
        return rows.job_record(_row(tx, job.id), tx)
    # Unchanged since its insert, which returned its row; no attempt (only a claim opens one)
    # and no dependency: three reads saved per submission (a round trip each on PostgreSQL).
    return rows.job_record(inserted, attempts=[], depends_on=[])


def cancel_job(tx: Tx, workspace_id: str, job_id: str, now: int) -> JobRecord | None:
    """Cancel the job: QUEUED or ASSIGNED ones at once; a RUNNING one is flagged, and its
    agent stops it and reports CANCELLED; a finished one is left as it is. Returns the job
    (None: no such job in the workspace). Raises ``StaleState`` when the job changed meanwhile."""
    from coordinator.store.queries.jobs import transition_job  # the store's transition hook

    row = rows.job_row_in_workspace(tx, job_id, workspace_id)
    if row is None:
        return None
    state = JobState(row["state"])
    if state in (JobState.QUEUED, JobState.ASSIGNED):
        transition_job(tx, row, JobState.CANCELLED, now=now, finished_at=now, reason="cancelled")
    elif state == JobState.RUNNING and not rows.request_cancel(tx, job_id, row["epoch"]):
        # The agent stops it (TERM, grace, KILL) and reports CANCELLED itself.
        raise StaleState(f"job {job_id} is no longer RUNNING at epoch {row['epoch']}")
    return rows.job_record(_row(tx, job_id), tx)


def _row(tx: Tx, job_id: str) -> Row:
    found = rows.job_row(tx, job_id)
    assert found is not None, f"job {job_id} was written in this transaction"
    return found
