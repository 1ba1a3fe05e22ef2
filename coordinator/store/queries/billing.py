"""Store methods for usage, prices, limits, caps and invoices.

Each write opens a transaction and hands it to a service (``coordinator.services``): the
usage ledger, the meter tick, invoices and caps are decided there; the SQL is in
``coordinator.store.repo.billing``.
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

from coordinator import billing
from coordinator.services import billing_limits, billing_tick, pricing
from coordinator.services.billing_limits import UNCHANGED
from coordinator.store.base_billing import InvoiceRecord, LimitsRecord, TickResult
from coordinator.store.repo import billing as billing_rows
from coordinator.store.sqlite_core import SqliteCore

__all__ = ["UNCHANGED", "BillingQueries"]


class BillingQueries(SqliteCore):
    async def usage_totals(self, workspace_id: str, start: int, end: int) -> billing.UsageTotals:
        """Usage recorded in ``[start, end)`` (whole hours), from roll-ups plus the open tail."""
        return await self._read_with(lambda tx: billing_rows.usage_between(tx, workspace_id, start, end))

    async def usage_cost(self, workspace_id: str, start: int, end: int, fallback: billing.Prices) -> Decimal:
        """The exact cost of the usage recorded in ``[start, end)``, priced by the version in
        effect when it was recorded (``fallback`` before any version was recorded)."""
        return await self._read_with(lambda tx: pricing.priced_cost(
            tx, workspace_id, start, end, billing_rows.price_versions(tx), fallback))

    async def record_prices(self, configured: billing.Prices, now: int) -> list[billing.PriceVersion]:
        """Record ``configured`` as a new price version (from the next whole hour) if it
        differs from the latest one; return every version, oldest first."""
        return await self._write(lambda tx: pricing.record_prices(tx, configured, now))

    async def workspace_plan(self, workspace_id: str) -> str | None:
        rows = await self._read("SELECT plan FROM workspaces WHERE id = ?", (workspace_id,))
        return str(rows[0]["plan"]) if rows else None

    async def hard_cap_reached(self, workspace_id: str) -> bool:
        rows = await self._read("SELECT hard_cap_reached FROM billing_state WHERE workspace_id = ?", (workspace_id,))
        return bool(rows and rows[0]["hard_cap_reached"])

    async def next_meter_tick(self) -> int | None:
        rows = await self._read("SELECT next_tick_at FROM meter_state WHERE id = 1")
        return int(rows[0]["next_tick_at"]) if rows else None

    async def get_limits(self, workspace_id: str) -> LimitsRecord:
        found = await self._read("SELECT * FROM billing_state WHERE workspace_id = ?", (workspace_id,))
        return billing_rows.limits_record(found[0] if found else None)

    async def request_limits(self, workspace_id: str, *, soft_cap_usd: Decimal | Any | None = UNCHANGED,
                             hard_cap_usd: Decimal | Any | None = UNCHANGED) -> LimitsRecord:
        """Record new caps for the next meter tick; an argument left ``UNCHANGED`` keeps its value.

        Raises ``InvalidValue`` (field ``hardCapUsd``) when the hard cap would be below the soft cap.
        """
        return await self._write(lambda tx: billing_limits.request_limits(
            tx, workspace_id, soft_cap_usd=soft_cap_usd, hard_cap_usd=hard_cap_usd))

    async def list_invoices(self, workspace_id: str, *, limit: int, before_id: str | None) -> list[InvoiceRecord]:
        rows = await self._read(
            "SELECT * FROM invoices WHERE workspace_id = ? AND id < ? ORDER BY id DESC LIMIT ?",
            (workspace_id, before_id or "\uffff", limit),
        )
        return [InvoiceRecord(id=row["id"], workspace_id=row["workspace_id"], period_start=row["period_start"],
                              period_end=row["period_end"], issued_at=row["issued_at"], body=json.loads(row["body"]))
                for row in rows]

    async def meter_tick(self, now: int, config: billing.BillingConfig) -> TickResult:
        """One meter tick, in one transaction: roll up new usage, apply requested limits, decide
        caps on the month's unrounded cost, fire the soft-cap event once a month, and issue the
        invoices of closed months."""
        interval_ms = int(config.meter_interval_seconds * 1000)
        return await self._write(lambda tx: billing_tick.meter_tick(tx, now, config.prices, interval_ms))
