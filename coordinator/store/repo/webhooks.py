"""Data access for the webhook outbox: subscriptions, events and their deliveries."""

from __future__ import annotations

import json
from collections.abc import Collection
from typing import Any

from coordinator.store.base_billing import DueDelivery
from coordinator.store.db import Tx


class OutboxGeneration:
    """Bumped (in the writer thread) whenever a delivery is queued; compared after each write
    so the delivery worker is woken once the rows it should send are committed."""

    value = 0


def live_webhooks(tx: Tx, workspace_id: str) -> list[tuple[str, list[str]]]:
    """(id, subscribed event types) of every webhook of the workspace not deleted (do not change
    the list: it may be the transaction's memo).

    Read once per transaction where the ``Tx`` keeps a ``memo`` (PostgreSQL, where each read is
    a round trip: a batch of agent events moves a job several times, each transition looks its
    webhooks up). A concurrent registration that commits meanwhile is seen by the next
    transaction, as if it had committed after this one; a change of the workspace's webhooks in
    this transaction forgets the memo (``forget_webhooks``). SQLite's reads are function calls:
    its shared ``Tx`` has no memo."""
    memo: dict[Any, Any] | None = getattr(tx, "memo", None)
    key = ("live_webhooks", workspace_id)
    if memo is not None and key in memo:
        hooks: list[tuple[str, list[str]]] = memo[key]
        return hooks
    hooks = [(row["id"], json.loads(row["events"])) for row in tx.execute(
        "SELECT id, events FROM webhooks WHERE workspace_id = ? AND deleted_at IS NULL", (workspace_id,)
    ).fetchall()]
    if memo is not None:
        memo[key] = hooks
    return hooks


def note_webhook_count(tx: Tx, workspace_id: str, count: int) -> None:
    """The workspace has ``count`` live webhooks, as a statement of this transaction already
    read (a subquery beside what it needed anyway): none means ``live_webhooks`` has nothing to
    read, so it is remembered without a round trip. Some: they are read when needed."""
    memo: dict[Any, Any] | None = getattr(tx, "memo", None)
    if memo is not None and not count:
        memo[("live_webhooks", workspace_id)] = []


def forget_webhooks(tx: Tx) -> None:
    """The transaction changes webhooks: ``live_webhooks`` reads them again."""
    memo: dict[Any, Any] | None = getattr(tx, "memo", None)
    if memo is not None:
        for key in [key for key in memo if key[0] == "live_webhooks"]:
            del memo[key]


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


def claim_due_deliveries(tx: Tx, now: int, limit: int, claim_ms: int,
                         skip_webhooks: Collection[str] = ()) -> list[DueDelivery]:
    """Claim up to ``limit`` pending deliveries due by ``now`` that head their (webhook, job)
    queue, oldest first, for ``claim_ms``: their ``next_attempt_at`` moves to ``now +
    claim_ms``, so no other replica takes them meanwhile, and a claimer that dies leaves them
    due again once the claim runs out (at least once). Rows another transaction is claiming
    are skipped, not waited for (``SKIP LOCKED``), and so are the webhooks in ``skip_webhooks``
    (the claimer has no free slot for them)."""
    skip = tuple(skip_webhooks)
    not_these = f"AND d.webhook_id NOT IN ({', '.join('?' * len(skip))})" if skip else ""
    picked = [int(row[0]) for row in tx.execute(
        f"""SELECT d.id FROM webhook_deliveries d
            WHERE d.state = 'pending' AND d.next_attempt_at <= ?
              AND d.id = (SELECT MIN(h.id) FROM webhook_deliveries h
                          WHERE h.webhook_id = d.webhook_id AND h.ordering_key = d.ordering_key
                            AND h.state = 'pending')
              {not_these}
            ORDER BY d.next_attempt_at, d.id LIMIT ? {tx.dialect.skip_locked}""",
        (now, *skip, limit),
    ).fetchall()]
    if not picked:
        return []
    until = now + claim_ms
    marks = ", ".join("?" * len(picked))
    tx.execute(f"UPDATE webhook_deliveries SET next_attempt_at = ? WHERE id IN ({marks}) AND state = 'pending'",
               (until, *picked))
    rows = {int(row["id"]): row for row in tx.execute(
        f"""SELECT d.id, d.webhook_id, d.event_id, d.ordering_key, d.attempts, d.created_at, e.type, e.body
            FROM webhook_deliveries d JOIN webhook_events e ON e.id = d.event_id WHERE d.id IN ({marks})""",
        tuple(picked),
    ).fetchall()}
    return [
        DueDelivery(id=row["id"], webhook_id=row["webhook_id"], event_id=row["event_id"], event_type=row["type"],
                    ordering_key=row["ordering_key"], attempts=row["attempts"], created_at=row["created_at"],
                    body=bytes(row["body"]), claimed_until=until)
        for row in (rows[delivery_id] for delivery_id in picked if delivery_id in rows)
    ]


def release_claims(tx: Tx, claims: list[tuple[int, int]], now: int) -> None:
    """Hand back claimed deliveries not started after all ((id, claimed_until) pairs): due
    again at ``now``, unless another claim took them meanwhile."""
    tx.executemany("UPDATE webhook_deliveries SET next_attempt_at = ? WHERE id = ? AND next_attempt_at = ? "
                   "AND state = 'pending'", [(now, delivery_id, until) for delivery_id, until in claims])


# --- registration ---------------------------------------------------------------------------

_INSERT_SECRET = """INSERT INTO webhook_secrets (webhook_id, secret, created_at, seq)
    VALUES (?, ?, ?, (SELECT COALESCE(MAX(seq), 0) + 1 FROM webhook_secrets WHERE webhook_id = ?))"""


def insert_secret(tx: Tx, webhook_id: str, secret: str, now: int) -> None:
    """A signing secret for the webhook, newest of its secrets (``seq``)."""
    tx.execute(_INSERT_SECRET, (webhook_id, secret, now, webhook_id))


def live_webhook_exists(tx: Tx, workspace_id: str, webhook_id: str) -> bool:
    return tx.execute(
        "SELECT 1 FROM webhooks WHERE id = ? AND workspace_id = ? AND deleted_at IS NULL", (webhook_id, workspace_id),
    ).fetchone() is not None


def mark_webhook_deleted(tx: Tx, workspace_id: str, webhook_id: str, now: int) -> bool:
    """Soft-delete the live webhook; False when there is none."""
    forget_webhooks(tx)
    changed: int = tx.execute(
        "UPDATE webhooks SET deleted_at = ? WHERE id = ? AND workspace_id = ? AND deleted_at IS NULL",
        (now, webhook_id, workspace_id),
    ).rowcount
    return bool(changed)


def cancel_pending_deliveries(tx: Tx, webhook_id: str, now: int) -> None:
    tx.execute(
        """UPDATE webhook_deliveries SET state = 'cancelled', completed_at = ?
           WHERE webhook_id = ? AND state = 'pending'""",
        (now, webhook_id),
    )


def delete_secrets(tx: Tx, webhook_id: str) -> None:
    tx.execute("DELETE FROM webhook_secrets WHERE webhook_id = ?", (webhook_id,))


def expire_current_secrets(tx: Tx, webhook_id: str, expires_at: int) -> None:
    """Secrets without an expiry stop signing at ``expires_at``."""
    tx.execute("UPDATE webhook_secrets SET expires_at = ? WHERE webhook_id = ? AND expires_at IS NULL",
               (expires_at, webhook_id))


def delete_expired_secrets(tx: Tx, webhook_id: str, now: int) -> None:
    tx.execute("DELETE FROM webhook_secrets WHERE webhook_id = ? AND expires_at <= ?", (webhook_id, now))
