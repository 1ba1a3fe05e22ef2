"""Webhook secrets and removal: a rotation keeps the older secrets signing for an overlap, so
a receiver can switch without missing a delivery; a removed webhook's undelivered events are
cancelled, never sent, and its secrets are dropped."""

from __future__ import annotations

from coordinator import webhooks
from coordinator.services.tx import Tx
from coordinator.store.repo import webhooks as rows


def delete_webhook(tx: Tx, workspace_id: str, webhook_id: str, now: int) -> bool:
    """Remove a webhook; its pending deliveries are cancelled. False: no such live webhook."""
    if not rows.mark_webhook_deleted(tx, workspace_id, webhook_id, now):
        return False
    rows.cancel_pending_deliveries(tx, webhook_id, now)
    rows.delete_secrets(tx, webhook_id)
    return True


def rotate_secret(tx: Tx, workspace_id: str, webhook_id: str, secret: str, now: int) -> int | None:
    """Add ``secret``; the secrets signing until now keep signing until ``now`` plus
    ``webhooks.ROTATION_OVERLAP_MS``, which is returned (None: no such live webhook). Secrets
    whose overlap is already over are dropped."""
    if not rows.live_webhook_exists(tx, workspace_id, webhook_id):
        return None
    overlap_end = now + webhooks.ROTATION_OVERLAP_MS
    rows.expire_current_secrets(tx, webhook_id, overlap_end)
    rows.delete_expired_secrets(tx, webhook_id, now)
    rows.insert_secret(tx, webhook_id, secret, now)
    return overlap_end
