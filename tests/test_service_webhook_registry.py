"""``coordinator.services.webhook_registry`` on a real SQLite transaction, with an injected ``now``."""

from __future__ import annotations

from pathlib import Path

from coordinator import webhooks
from coordinator.services import webhook_registry
from coordinator.store.repo import webhooks as rows
from tests.service_tx import add_webhook, add_workspace, one, open_tx

T0 = 1_775_001_600_000
OVERLAP = webhooks.ROTATION_OVERLAP_MS


def test_a_rotation_keeps_older_secrets_signing_for_the_overlap_only(tmp_path: Path) -> None:
    with open_tx(tmp_path / "store.db") as tx:
        add_workspace(tx, "ws_1")
        add_webhook(tx, "whk_1", "ws_1", [webhooks.JOB_CREATED])
        rows.insert_secret(tx, "whk_1", "first", T0)
        assert webhook_registry.rotate_secret(tx, "ws_other", "whk_1", "x", T0) is None  # another workspace's
        assert webhook_registry.rotate_secret(tx, "ws_1", "whk_1", "second", T0 + 10) == T0 + 10 + OVERLAP
        secrets = [tuple(row) for row in tx.execute(
            "SELECT secret, expires_at, seq FROM webhook_secrets ORDER BY seq").fetchall()]
        assert secrets == [("first", T0 + 10 + OVERLAP, 1), ("second", None, 2)]
        # A rotation after the overlap drops the secrets it ended.
        webhook_registry.rotate_secret(tx, "ws_1", "whk_1", "third", T0 + 10 + OVERLAP)
        kept = [row[0] for row in tx.execute("SELECT secret FROM webhook_secrets ORDER BY seq").fetchall()]
        assert kept == ["second", "third"]


def test_deleting_a_webhook_cancels_its_pending_deliveries_and_drops_its_secrets(tmp_path: Path) -> None:
    with open_tx(tmp_path / "store.db") as tx:
        add_workspace(tx, "ws_1")
        add_webhook(tx, "whk_1", "ws_1", [webhooks.JOB_CREATED])
        rows.insert_secret(tx, "whk_1", "s", T0)
        rows.insert_event(tx, event_id="evt_1", workspace_id="ws_1", event_type=webhooks.JOB_CREATED, created_at=T0,
                          body=b"{}")
        rows.insert_deliveries(tx, event_id="evt_1", webhook_ids=["whk_1"], ordering_key="job_1", now=T0)
        assert not webhook_registry.delete_webhook(tx, "ws_other", "whk_1", T0 + 1)
        assert webhook_registry.delete_webhook(tx, "ws_1", "whk_1", T0 + 5)
        assert not webhook_registry.delete_webhook(tx, "ws_1", "whk_1", T0 + 6)  # already gone
        delivery = tx.execute("SELECT state, completed_at FROM webhook_deliveries").fetchone()
        assert tuple(delivery) == ("cancelled", T0 + 5)
        assert one(tx, "SELECT COUNT(*) FROM webhook_secrets") == 0
        assert one(tx, "SELECT deleted_at FROM webhooks") == T0 + 5
