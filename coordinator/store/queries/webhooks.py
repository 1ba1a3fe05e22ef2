"""Queries for webhooks, their signing secrets, and the delivery outbox.

What a change queues (and the payload it carries) is decided in
``coordinator.services.webhook_events``, inside the caller's write transaction; the outbox
SQL is in ``coordinator.store.repo.webhooks``. This module keeps registration and the
delivery worker's queries, and wakes the worker after a write that queued deliveries.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection
from typing import TypeVar

from coordinator.notify import Signal
from coordinator.services import webhook_registry
from coordinator.services.webhook_events import enqueue_job_event, enqueue_workspace_event
from coordinator.store.base_billing import AttemptRecord, DeliveryTarget, DueDelivery, WebhookRecord
from coordinator.store.db import Row, Tx
from coordinator.store.repo import webhooks as repo
from coordinator.store.repo.webhooks import OutboxGeneration
from coordinator.store.sqlite_core import SqliteCore

T = TypeVar("T")

# The enqueue functions are re-exported: write paths elsewhere queue events through these names.
__all__ = ["WebhookQueries", "enqueue_job_event", "enqueue_workspace_event"]


class WebhookQueries(SqliteCore):
    @property
    def outbox_signal(self) -> Signal:
        """Fired after a write that queued deliveries has committed, and when an attempt ends."""
        found: Signal = self.__dict__.setdefault("_outbox_signal", Signal())
        return found

    async def _write(self, fn: Callable[[Tx], T]) -> T:
        try:
            return await super()._write(fn)
        finally:
            if self.__dict__.get("_outbox_seen") != OutboxGeneration.value:
                self.__dict__["_outbox_seen"] = OutboxGeneration.value
                self.outbox_signal.fire()

    # --- registration -----------------------------------------------------------------
    async def insert_webhook(self, hook: WebhookRecord, secret: str) -> None:
        def write(tx: Tx) -> None:
            repo.forget_webhooks(tx)
            tx.execute(
                "INSERT INTO webhooks (id, workspace_id, url, events, created_at) VALUES (?, ?, ?, ?, ?)",
                (hook.id, hook.workspace_id, hook.url, json.dumps(hook.events), hook.created_at),
            )
            repo.insert_secret(tx, hook.id, secret, hook.created_at)

        await self._write(write)

    async def get_webhook(self, workspace_id: str, webhook_id: str) -> WebhookRecord | None:
        rows = await self._read(
            "SELECT * FROM webhooks WHERE id = ? AND workspace_id = ? AND deleted_at IS NULL",
            (webhook_id, workspace_id),
        )
        return _webhook(rows[0]) if rows else None

    async def list_webhooks(self, workspace_id: str, *, limit: int, before_id: str | None) -> list[WebhookRecord]:
        rows = await self._read(
            """SELECT * FROM webhooks WHERE workspace_id = ? AND deleted_at IS NULL AND id < ?
               ORDER BY id DESC LIMIT ?""",
            (workspace_id, before_id or "\uffff", limit),
        )
        return [_webhook(row) for row in rows]

    async def delete_webhook(self, workspace_id: str, webhook_id: str, now: int) -> bool:
        """Remove a webhook; its undelivered events are cancelled, never sent."""
        return await self._write(lambda tx: webhook_registry.delete_webhook(tx, workspace_id, webhook_id, now))

    async def rotate_webhook_secret(self, workspace_id: str, webhook_id: str, secret: str,
                                    now: int) -> int | None:
        """Add ``secret``; older secrets keep signing for 24 h. Returns when they stop (None: no webhook)."""
        return await self._write(lambda tx: webhook_registry.rotate_secret(tx, workspace_id, webhook_id, secret, now))

    async def list_webhook_attempts(self, workspace_id: str, webhook_id: str, *, limit: int,
                                    before_id: int | None) -> list[AttemptRecord]:
        rows = await self._read(
            """SELECT a.*, e.type AS event_type, d.state AS delivery_state, d.attempts AS attempts
               FROM webhook_attempts a
               JOIN webhooks w ON w.id = a.webhook_id
               JOIN webhook_deliveries d ON d.id = a.delivery_id
               JOIN webhook_events e ON e.id = a.event_id
               WHERE a.webhook_id = ? AND w.workspace_id = ? AND a.id < ?
               ORDER BY a.id DESC LIMIT ?""",
            (webhook_id, workspace_id, before_id if before_id is not None else 1 << 62, limit),
        )
        return [
            AttemptRecord(id=row["id"], delivery_id=row["delivery_id"], event_id=row["event_id"],
                          event_type=row["event_type"], attempted_at=row["attempted_at"],
                          status_code=row["status_code"], latency_ms=row["latency_ms"], error=row["error"],
                          delivery_state=row["delivery_state"], attempts=row["attempts"])
            for row in rows
        ]

    # --- the delivery worker ------------------------------------------------------------
    async def claim_deliveries(self, now: int, limit: int, claim_ms: int, *,
                               skip_webhooks: Collection[str] = ()) -> list[DueDelivery]:
        """Claim due deliveries that head their (webhook, job) queue, oldest first (repo/webhooks.py)."""
        return await self._write(lambda tx: repo.claim_due_deliveries(tx, now, limit, claim_ms, skip_webhooks))

    async def release_deliveries(self, deliveries: list[DueDelivery], now: int) -> None:
        """Claimed but not started (this replica's slots for the webhook are full): due again now."""
        claims = [(d.id, d.claimed_until) for d in deliveries if d.claimed_until is not None]
        if claims:
            await self._write(lambda tx: repo.release_claims(tx, claims, now))

    async def next_delivery_due_after(self, now: int) -> int | None:
        rows = await self._read(
            """SELECT MIN(next_attempt_at) AS due FROM webhook_deliveries
               WHERE state = 'pending' AND next_attempt_at > ?""",
            (now,),
        )
        due = rows[0]["due"] if rows else None
        return None if due is None else int(due)

    async def delivery_target(self, webhook_id: str, now: int) -> DeliveryTarget | None:
        """Where to send and which secrets sign (newest first); None once the webhook is deleted."""
        def read(tx: Tx) -> DeliveryTarget | None:
            hook = tx.execute("SELECT url FROM webhooks WHERE id = ? AND deleted_at IS NULL", (webhook_id,)).fetchone()
            if hook is None:
                return None
            secrets = tx.execute(
                """SELECT secret FROM webhook_secrets WHERE webhook_id = ? AND (expires_at IS NULL OR expires_at > ?)
                   ORDER BY created_at DESC, seq DESC""",
                (webhook_id, now),
            ).fetchall()
            return DeliveryTarget(url=hook["url"], secrets=[row["secret"] for row in secrets])

        return await self._read_with(read)

    async def record_delivery_attempt(self, delivery: DueDelivery, *, attempted_at: int, status_code: int | None,
                                      latency_ms: int, error: str | None, outcome: str,
                                      next_attempt_at: int | None, now: int) -> None:
        """Log one attempt and move the delivery on: ``outcome`` is delivered, retry or failed."""
        def write(tx: Tx) -> None:
            tx.execute(
                """INSERT INTO webhook_attempts (delivery_id, webhook_id, event_id, attempted_at, status_code,
                                                 latency_ms, error) VALUES (?, ?, ?, ?, ?, ?, ?)""",
                (delivery.id, delivery.webhook_id, delivery.event_id, attempted_at, status_code, latency_ms,
                 error),
            )
            # Only while still under our claim: one that ran out and was claimed again belongs to
            # its new claimer (our attempt stays logged; the receiver de-duplicates on the event id).
            claim = "" if delivery.claimed_until is None else " AND next_attempt_at = ?"
            claimed = () if delivery.claimed_until is None else (delivery.claimed_until,)
            if outcome == "retry":
                tx.execute(
                    f"""UPDATE webhook_deliveries SET attempts = attempts + 1, next_attempt_at = ?
                        WHERE id = ? AND state = 'pending'{claim}""",
                    (next_attempt_at, delivery.id, *claimed),
                )
            else:
                tx.execute(
                    f"""UPDATE webhook_deliveries SET attempts = attempts + 1, state = ?, completed_at = ?
                        WHERE id = ? AND state = 'pending'{claim}""",
                    (outcome, now, delivery.id, *claimed),
                )

        await self._write(write)

    async def cancel_delivery(self, delivery_id: int, now: int) -> None:
        await self._write(lambda tx: tx.execute(
            "UPDATE webhook_deliveries SET state = 'cancelled', completed_at = ? WHERE id = ? AND state = 'pending'",
            (now, delivery_id),
        ))


def _webhook(row: Row) -> WebhookRecord:
    return WebhookRecord(id=row["id"], workspace_id=row["workspace_id"], url=row["url"],
                         events=json.loads(row["events"]), created_at=row["created_at"])
