"""``coordinator.services.invoices`` (through the meter tick that calls it) on a real SQLite
transaction, with an injected ``now``."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

from coordinator import billing
from coordinator.services import billing_tick, invoices
from coordinator.store.db import Tx
from coordinator.store.repo import billing as rows
from tests.service_tx import add_workspace, one, open_tx

MONTH = 1_775_001_600_000  # 2026-04-01T00:00:00Z
NEXT = billing.next_month(MONTH)
PRICES = billing.Prices(cpu_second=Decimal("0.001"), gpu_second=Decimal("0.01"), gb_second=Decimal("0.0001"))


def ledger(tx: Tx, seq: int, at: int, cpu_micros: int, workspace_id: str) -> None:
    rows.insert_usage_record(tx, agent_id="agt_1", seq=seq, workspace_id=workspace_id,
                             job_id="job_1", gpu_model="", recorded_at=at, cpu_micros=cpu_micros, gpu_micros=0,
                             gb_micros=0, gpu_memory_micros=0, gpu_util_micros=0)


def test_a_closed_month_is_invoiced_once_with_exact_lines_and_a_rounded_total(tmp_path: Path) -> None:
    with open_tx(tmp_path / "store.db") as tx:
        add_workspace(tx, "ws_1", plan="payg", created_at=MONTH + 5)
        ledger(tx, 1, MONTH + 10, 1_234_567, "ws_1")  # 1.234567 cpu-s at $0.001
        assert billing_tick.meter_tick(tx, MONTH + 1000, PRICES, 60_000).invoices == []  # the month is open
        first = billing_tick.meter_tick(tx, NEXT + 1000, PRICES, 60_000)
        again = billing_tick.meter_tick(tx, NEXT + 2000, PRICES, 60_000)
        assert len(first.invoices) == 1 and again.invoices == []
        stored = tx.execute("SELECT * FROM invoices").fetchall()
        assert len(stored) == 1
        assert (stored[0]["period_start"], stored[0]["period_end"], stored[0]["issued_at"]) == (MONTH, NEXT,
                                                                                               NEXT + 1000)
        body = json.loads(stored[0]["body"])
        assert body["lines"][0] == {"resource": "cpu", "gpuModel": None, "unit": "cpu-second",
                                    "quantity": "1.234567", "unitPriceUsd": "0.001", "amountUsd": "0.001234567"}
        assert (body["subtotalUsd"], body["totalUsd"]) == ("0.001234567", "0.00")
        assert one(tx, "SELECT next_invoice_month FROM billing_state WHERE workspace_id = 'ws_1'") == NEXT


def test_a_workspace_off_the_invoicing_plans_gets_no_invoice(tmp_path: Path) -> None:
    with open_tx(tmp_path / "store.db") as tx:
        add_workspace(tx, "ws_free", plan="free", created_at=MONTH)
        ledger(tx, 1, MONTH + 10, 10**9, "ws_free")
        billing_tick.meter_tick(tx, MONTH + 1000, PRICES, 60_000)
        assert billing_tick.meter_tick(tx, NEXT + 1000, PRICES, 60_000).invoices == []
        assert one(tx, "SELECT COUNT(*) FROM invoices") == 0
        assert one(tx, "SELECT next_invoice_month FROM billing_state WHERE workspace_id = 'ws_free'") is None


def test_a_workspace_created_long_ago_is_invoiced_from_the_month_it_joined_a_plan(tmp_path: Path) -> None:
    with open_tx(tmp_path / "store.db") as tx:
        add_workspace(tx, "ws_old", plan="team", created_at=MONTH - 400 * 86_400_000)
        result = billing_tick.meter_tick(tx, NEXT + 1000, PRICES, 60_000)
        assert result.invoices == []  # first seen this month: nothing before it is invoiced
        assert one(tx, "SELECT next_invoice_month FROM billing_state WHERE workspace_id = 'ws_old'") == NEXT


def test_invoice_body_keeps_exact_amounts_and_rounds_the_total_once() -> None:
    lines = [billing.InvoiceLine("cpu", "cpu-second", Decimal("1"), Decimal("0.004"), Decimal("0.004")),
             billing.InvoiceLine("gpu", "gpu-second", Decimal("1"), Decimal("0.001"), Decimal("0.001"), "H100")]
    body = invoices.invoice_body("inv_1", MONTH, NEXT, NEXT, lines)
    assert (body["subtotalUsd"], body["totalUsd"]) == ("0.005", "0.01")  # half-up, once
    assert [line["gpuModel"] for line in body["lines"]] == [None, "H100"]
    assert (body["periodStart"], body["periodEnd"]) == ("2026-04-01T00:00:00.000Z", "2026-05-01T00:00:00.000Z")
