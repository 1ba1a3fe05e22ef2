"""Data access for the webhook outbox: subscriptions, events and their deliveries."""

from __future__ import annotations

import json

from coordinator.store.db import Tx


class OutboxGeneration:
    """Bumped (in the writer thread) whenever a delivery is queued; compared after each write
    so the delivery worker is woken once the rows it should send are committed."""

    value = 0


def live_webhooks(tx: Tx, workspace_id: str) -> list[tuple[str, list[str]]]:
    """(id, subscribed event types) of every webhook of the workspace not deleted."""
    return [(row["id"], json.loads(row["events"])) for row in tx.execute(
        "SELECT id, events FROM webhooks WHERE workspace_id = ? AND deleted_at IS NULL", (workspace_id,)
    ).fetchall()]


def insert_event(tx: Tx, *, event_id: str, workspace_id: str, event_type: str, created_at: int,
                 body: bytes) -> None:
    tx.execute(
        "INSERT INTO webhook_events (id, workspace_id, type, created_at, body) VALUES (?, ?, ?, ?, ?)",
        (event_id, workspace_id, event_type, created_at, body),
    )


def insert_deliveries(tx: Tx, *, event_id: str, webhook_ids: list[str], ordering_key: str,
                      now: int) -> None:
    """One pending delivery of the event per webhook, due ``now``; the delivery worker is woken
    after the commit."""
    tx.executemany(
        """INSERT INTO webhook_deliveries (webhook_id, event_id, ordering_key, state, created_at, next_attempt_at)
           VALUES (?, ?, ?, 'pending', ?, ?)""",
        [(hook_id, event_id, ordering_key, now, now) for hook_id in webhook_ids],
    )
    OutboxGeneration.value += 1
