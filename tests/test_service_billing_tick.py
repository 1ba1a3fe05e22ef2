"""``coordinator.services.billing_tick`` on a real SQLite transaction, with an injected ``now``."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

from coordinator import billing, webhooks
from coordinator.services import billing_limits, billing_tick
from coordinator.store.db import Tx
from coordinator.store.repo import billing as rows
from tests.service_tx import add_webhook, add_workspace, one, open_tx

MONTH = 1_775_001_600_000  # 2026-04-01T00:00:00Z
HOUR = billing.HOUR_MS
PRICES = billing.Prices(cpu_second=Decimal("0.001"), gpu_second=Decimal("0.01"), gb_second=Decimal("0.0001"))
INTERVAL_MS = 60_000


def ledger(tx: Tx, seq: int, at: int, cpu_seconds: int, workspace_id: str = "ws_1") -> None:
    rows.insert_usage_record(tx, agent_id="agt_1", seq=seq, workspace_id=workspace_id,
                             job_id="job_1", gpu_model="", recorded_at=at, cpu_micros=cpu_seconds * billing.MICROS,
                             gpu_micros=0, gb_micros=0, gpu_memory_micros=0, gpu_util_micros=0)


def test_a_tick_rolls_the_ledger_up_per_hour_and_is_never_dated_before_the_last(tmp_path: Path) -> None:
    with open_tx(tmp_path / "store.db") as tx:
        add_workspace(tx, "ws_1", plan="free", created_at=MONTH)
        ledger(tx, 1, MONTH + 10, 5)
        ledger(tx, 2, MONTH + 20, 7)
        ledger(tx, 3, MONTH + HOUR + 5, 11)
        result = billing_tick.meter_tick(tx, MONTH + 2 * HOUR, PRICES, INTERVAL_MS)
        assert result.rolled_up == 2  # two hours
        hourly = tx.execute("SELECT hour_start, cpu_micros FROM usage_hourly ORDER BY hour_start").fetchall()
        assert [tuple(row) for row in hourly] == [(MONTH, 12 * billing.MICROS), (MONTH + HOUR, 11 * billing.MICROS)]
        assert one(tx, "SELECT COUNT(*) FROM usage_records WHERE rolled_up = 0") == 0
        # A clock stepping back does not date the tick earlier: hours already rolled up stay closed.
        billing_tick.meter_tick(tx, MONTH, PRICES, INTERVAL_MS)
        assert rows.last_tick_at(tx) == MONTH + 2 * HOUR
        assert one(tx, "SELECT next_tick_at FROM meter_state") == MONTH + 2 * HOUR + INTERVAL_MS
        # Usage totals are unchanged by rolling up.
        assert rows.usage_between(tx, "ws_1", MONTH, MONTH + 2 * HOUR).cpu_micros == 23 * billing.MICROS


def test_requested_caps_apply_at_the_tick_and_the_hard_cap_holds_until_raised(tmp_path: Path) -> None:
    with open_tx(tmp_path / "store.db") as tx:
        add_workspace(tx, "ws_1", plan="free", created_at=MONTH)
        ledger(tx, 1, MONTH + 10, 1000)  # $1.00 at 0.001/cpu-second
        billing_limits.request_limits(tx, "ws_1", hard_cap_usd=Decimal("0.999"))
        assert not rows.workspace_held(tx, "ws_1")  # requested, not yet in force
        result = billing_tick.meter_tick(tx, MONTH + HOUR, PRICES, INTERVAL_MS)
        assert (result.held, result.released) == (["ws_1"], [])
        assert rows.workspace_held(tx, "ws_1")
        assert rows.limits_record(rows.billing_state(tx, "ws_1")).effective_at == MONTH + HOUR
        # A later tick with nothing changed reports no change.
        assert billing_tick.meter_tick(tx, MONTH + HOUR + 1, PRICES, INTERVAL_MS).held == []
        billing_limits.request_limits(tx, "ws_1", hard_cap_usd=Decimal("1.5"))
        result = billing_tick.meter_tick(tx, MONTH + 2 * HOUR, PRICES, INTERVAL_MS)
        assert (result.held, result.released) == ([], ["ws_1"])
        assert not rows.workspace_held(tx, "ws_1")


def test_the_soft_cap_event_fires_once_a_month_with_its_payload_and_an_audit_row(tmp_path: Path) -> None:
    with open_tx(tmp_path / "store.db") as tx:
        add_workspace(tx, "ws_1", plan="free", created_at=MONTH)
        add_webhook(tx, "whk_1", "ws_1", [webhooks.SOFT_CAP_REACHED])
        ledger(tx, 1, MONTH + 10, 600)  # $0.60
        billing_limits.request_limits(tx, "ws_1", soft_cap_usd=Decimal("0.5"), hard_cap_usd=Decimal("2"))
        first = billing_tick.meter_tick(tx, MONTH + HOUR, PRICES, INTERVAL_MS)
        again = billing_tick.meter_tick(tx, MONTH + 2 * HOUR, PRICES, INTERVAL_MS)
        assert (first.soft_cap_events, again.soft_cap_events) == (["ws_1"], [])
        events = tx.execute("SELECT id, type, body FROM webhook_events").fetchall()
        assert len(events) == 1
        body = json.loads(events[0]["body"])
        assert body["type"] == webhooks.SOFT_CAP_REACHED
        assert body["data"] == {"workspaceId": "ws_1", "periodStart": "2026-04-01T00:00:00.000Z", "softCapUsd": 0.5,
                                "hardCapUsd": 2.0, "costUsd": 0.6}
        assert one(tx, "SELECT ordering_key FROM webhook_deliveries") == "billing:ws_1"
        audit = tx.execute("SELECT actor, action, target, request_id, at FROM audit_events").fetchall()
        assert [tuple(row) for row in audit] == [
            ("system:meter", webhooks.SOFT_CAP_REACHED, "ws_1", events[0]["id"], MONTH + HOUR)]
        # Next month the cost starts again from zero: crossing the cap again fires again.
        next_month = billing.next_month(MONTH)
        ledger(tx, 2, next_month + 10, 600)
        assert billing_tick.meter_tick(tx, next_month + HOUR, PRICES, INTERVAL_MS).soft_cap_events == ["ws_1"]


def test_a_workspace_without_caps_is_never_held_whatever_it_spends(tmp_path: Path) -> None:
    with open_tx(tmp_path / "store.db") as tx:
        add_workspace(tx, "ws_1", plan="free", created_at=MONTH)
        ledger(tx, 1, MONTH + 10, 10**6)
        result = billing_tick.meter_tick(tx, MONTH + HOUR, PRICES, INTERVAL_MS)
        assert (result.held, result.soft_cap_events) == ([], [])
        assert not rows.workspace_held(tx, "ws_1")
