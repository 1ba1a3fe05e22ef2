"""``coordinator.services.webhook_events`` on a real SQLite transaction, with an injected ``now``."""

from __future__ import annotations

import json
from pathlib import Path

from coordinator import webhooks
from coordinator.services.webhook_events import enqueue_job_event, enqueue_workspace_event
from coordinator.store.repo import jobs as job_rows
from coordinator.store.repo.webhooks import OutboxGeneration
from coordinator.views import job_view
from tests.service_tx import add_job, add_webhook, add_workspace, one, open_tx

T0 = 1_775_001_600_000


def test_a_job_event_goes_to_each_subscribed_live_webhook_with_the_job_as_the_api_shows_it(tmp_path: Path) -> None:
    with open_tx(tmp_path / "store.db") as tx:
        add_workspace(tx, "ws_1")
        add_workspace(tx, "ws_2")
        add_webhook(tx, "whk_all", "ws_1", list(webhooks.EVENT_TYPES))
        add_webhook(tx, "whk_terminal", "ws_1", [webhooks.JOB_TERMINAL])
        add_webhook(tx, "whk_gone", "ws_1", list(webhooks.EVENT_TYPES))
        tx.execute("UPDATE webhooks SET deleted_at = 1 WHERE id = 'whk_gone'")
        add_webhook(tx, "whk_other", "ws_2", list(webhooks.EVENT_TYPES))
        add_job(tx, "job_1", "ws_1", state="SUCCEEDED", created_at=T0, exit_code=0)
        generation = OutboxGeneration.value
        enqueue_job_event(tx, "job_1", webhooks.JOB_TRANSITIONED, T0 + 5)
        assert OutboxGeneration.value > generation  # the delivery worker will be woken after the commit
        events = tx.execute("SELECT id, type, created_at, body FROM webhook_events ORDER BY rowid").fetchall()
        # Into a terminal state: job.transitioned, then job.terminal.
        assert [row["type"] for row in events] == [webhooks.JOB_TRANSITIONED, webhooks.JOB_TERMINAL]
        job = job_rows.job_by_id(tx, "job_1")
        assert job is not None
        for row in events:
            body = json.loads(row["body"])
            assert body == {"id": row["id"], "type": row["type"], "createdAt": "2026-04-01T00:00:00.005Z",
                            "data": job_view(job).model_dump(mode="json")}
        deliveries = tx.execute(
            """SELECT e.type, d.webhook_id, d.ordering_key, d.state, d.next_attempt_at FROM webhook_deliveries d
               JOIN webhook_events e ON e.id = d.event_id ORDER BY d.id"""
        ).fetchall()
        assert [tuple(row) for row in deliveries] == [
            (webhooks.JOB_TRANSITIONED, "whk_all", "job_1", "pending", T0 + 5),
            (webhooks.JOB_TERMINAL, "whk_all", "job_1", "pending", T0 + 5),
            (webhooks.JOB_TERMINAL, "whk_terminal", "job_1", "pending", T0 + 5),
        ]


def test_a_transition_into_a_live_state_queues_no_terminal_event(tmp_path: Path) -> None:
    with open_tx(tmp_path / "store.db") as tx:
        add_workspace(tx, "ws_1")
        add_webhook(tx, "whk_all", "ws_1", list(webhooks.EVENT_TYPES))
        add_job(tx, "job_1", "ws_1", state="RUNNING", created_at=T0)
        enqueue_job_event(tx, "job_1", webhooks.JOB_TRANSITIONED, T0)
        types = [row[0] for row in tx.execute("SELECT type FROM webhook_events").fetchall()]
        assert types == [webhooks.JOB_TRANSITIONED]


def test_nobody_listening_queues_nothing(tmp_path: Path) -> None:
    with open_tx(tmp_path / "store.db") as tx:
        add_workspace(tx, "ws_1")
        add_webhook(tx, "whk_created", "ws_1", [webhooks.JOB_CREATED])
        assert enqueue_workspace_event(tx, "ws_1", webhooks.SOFT_CAP_REACHED, {}, ordering_key="k", now=T0) is None
        enqueue_job_event(tx, "job_missing", webhooks.JOB_CREATED, T0)  # no such job: nothing
        assert one(tx, "SELECT COUNT(*) FROM webhook_events") == 0
        assert one(tx, "SELECT COUNT(*) FROM webhook_deliveries") == 0
