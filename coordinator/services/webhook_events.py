"""Which webhook events a change queues, and what they carry.

``enqueue_job_event`` and ``enqueue_workspace_event`` run inside the caller's write
transaction, so an outbox row exists if and only if the state change that caused it
committed: a crash can neither lose an event nor invent one. The payload of a job event is
the job as the API shows it (``coordinator.views.job_view``), rendered here, outside the store.
"""

from __future__ import annotations

from typing import Any

from common.clock import from_millis, millis_to_rfc3339
from common.ids import new_id
from coordinator import webhooks
from coordinator.store.base import JobRecord
from coordinator.store.db import Row, Tx
from coordinator.store.repo import jobs as job_rows
from coordinator.store.repo import webhooks as outbox
from coordinator.views import job_view


def job_event_data(job: JobRecord) -> dict[str, Any]:
    """The ``data`` of a job event: the job as ``GET /v0/jobs/{id}`` shows it."""
    return job_view(job).model_dump(mode="json")


def job_event_types(event_type: str, job: JobRecord) -> list[str]:
    """``job.transitioned`` into a terminal state is followed by ``job.terminal``."""
    if event_type == webhooks.JOB_TRANSITIONED and job.state.is_terminal:
        return [event_type, webhooks.JOB_TERMINAL]
    return [event_type]


def enqueue_job_event(tx: Tx, job_row_or_id: Row | str, event_type: str,
                      now: int, *, workspace_id: str | None = None) -> None:
    """Queue ``event_type`` about a job for every webhook of its workspace that subscribes.

    Call inside the write transaction that changed the job, after the change: the payload is
    the job as ``GET /v0/jobs/{id}`` shows it at that moment. ``job.transitioned`` into a
    terminal state also queues ``job.terminal``, after it. Given a job row, or an id with the
    job's ``workspace_id``, the workspace is not looked up (a statement saved per transition).
    """
    job_id = job_row_or_id if isinstance(job_row_or_id, str) else job_row_or_id["id"]
    if workspace_id is None:
        if isinstance(job_row_or_id, str):
            found = tx.execute("SELECT workspace_id FROM jobs WHERE id = ?", (job_id,)).fetchone()
            workspace_id = found["workspace_id"] if found is not None else None
        else:
            workspace_id = job_row_or_id["workspace_id"]
    if workspace_id is None or not outbox.live_webhooks(tx, workspace_id):
        # Most workspaces have no webhook: then every submission and transition skips reading
        # the job back and rendering its payload (issue 15).
        return
    job = job_rows.job_by_id(tx, job_id)
    if job is None:
        return
    data = job_event_data(job)
    for kind in job_event_types(event_type, job):
        enqueue_workspace_event(tx, job.workspace_id, kind, data, ordering_key=job_id, now=now)


def enqueue_workspace_event(tx: Tx, workspace_id: str, event_type: str, data: dict[str, Any],
                            *, ordering_key: str, now: int) -> str | None:
    """Queue one event for the workspace's subscribed webhooks; return its id (None: nobody listens)."""
    hooks = [hook_id for hook_id, events in outbox.live_webhooks(tx, workspace_id) if event_type in events]
    if not hooks:
        return None
    event_id = new_id("evt", from_millis(now))
    body = webhooks.event_body(event_id, event_type, millis_to_rfc3339(now) or "", data)
    outbox.insert_event(tx, event_id=event_id, workspace_id=workspace_id, event_type=event_type, created_at=now,
                        body=body)
    outbox.insert_deliveries(tx, event_id=event_id, webhook_ids=hooks, ordering_key=ordering_key, now=now)
    return event_id
