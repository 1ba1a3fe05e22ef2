"""``coordinator.services.billing_limits`` and ``pricing`` on a real SQLite transaction."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from coordinator import billing
from coordinator.services import billing_limits, pricing
from coordinator.store.errors import InvalidValue
from coordinator.store.repo import billing as rows
from tests.service_tx import add_workspace, one, open_tx

T0 = 1_775_001_600_000
CHEAP = billing.Prices(cpu_second=Decimal("0.001"))
DEAR = billing.Prices(cpu_second=Decimal("0.002"))


def test_caps_are_requested_pending_and_an_omitted_cap_keeps_its_value(tmp_path: Path) -> None:
    with open_tx(tmp_path / "store.db") as tx:
        add_workspace(tx, "ws_1")
        record = billing_limits.request_limits(tx, "ws_1", soft_cap_usd=Decimal("5"), hard_cap_usd=Decimal("10"))
        assert (record.soft_cap_usd, record.hard_cap_usd, record.pending, record.effective_at) == (
            Decimal("5"), Decimal("10"), True, None)
        record = billing_limits.request_limits(tx, "ws_1", hard_cap_usd=None)
        assert (record.soft_cap_usd, record.hard_cap_usd) == (Decimal("5"), None)


def test_a_hard_cap_below_the_soft_cap_is_refused_and_records_nothing(tmp_path: Path) -> None:
    with open_tx(tmp_path / "store.db") as tx:
        add_workspace(tx, "ws_1")
        billing_limits.request_limits(tx, "ws_1", soft_cap_usd=Decimal("10"))
        with pytest.raises(InvalidValue, match=r"^hardCapUsd \(5\) must not be below softCapUsd \(10\)$") as caught:
            billing_limits.request_limits(tx, "ws_1", hard_cap_usd=Decimal("5"))
        assert caught.value.field == "hardCapUsd"
        assert one(tx, "SELECT requested_hard_cap_usd FROM billing_state") is None


def test_a_price_change_takes_effect_at_the_next_hour_and_costs_each_hour_at_its_price(tmp_path: Path) -> None:
    with open_tx(tmp_path / "store.db") as tx:
        add_workspace(tx, "ws_1")
        assert [v.effective_at for v in pricing.record_prices(tx, CHEAP, T0 + 10)] == [0]
        assert pricing.record_prices(tx, CHEAP, T0 + 20) == pricing.record_prices(tx, CHEAP, T0 + 30)  # unchanged
        versions = pricing.record_prices(tx, DEAR, T0 + 1000)
        assert [v.effective_at for v in versions] == [0, T0 + billing.HOUR_MS]
        for seq, at in ((1, T0 + 5000), (2, T0 + billing.HOUR_MS + 5000)):
            rows.insert_usage_record(tx, agent_id="agt_1", seq=seq, workspace_id="ws_1", job_id="job_1", gpu_model="",
                                     recorded_at=at, cpu_micros=billing.MICROS, gpu_micros=0, gb_micros=0,
                                     gpu_memory_micros=0, gpu_util_micros=0)
        cost = pricing.priced_cost(tx, "ws_1", T0, T0 + 2 * billing.HOUR_MS, versions, CHEAP)
        assert cost == Decimal("0.003")  # one second at each price
