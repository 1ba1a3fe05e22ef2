"""Invoices: which closed months a workspace is invoiced for, and what each invoice says."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from common.clock import from_millis, millis_to_rfc3339
from common.ids import new_id
from coordinator import billing
from coordinator.store.base_billing import TickResult
from coordinator.store.db import Row, Tx
from coordinator.store.repo import billing as rows


def invoice_body(invoice_id: str, period_start: int, period_end: int, issued_at: int,
                 lines: list[billing.InvoiceLine]) -> dict[str, Any]:
    """The invoice as the API shows it: amounts as exact decimal strings, the total rounded once."""
    subtotal = sum((line.amount_usd for line in lines), Decimal(0))
    return {
        "id": invoice_id,
        "periodStart": millis_to_rfc3339(period_start),
        "periodEnd": millis_to_rfc3339(period_end),
        "issuedAt": millis_to_rfc3339(issued_at),
        "currency": "USD",
        "lines": [
            {"resource": line.resource, "gpuModel": line.gpu_model, "unit": line.unit,
             "quantity": str(line.quantity), "unitPriceUsd": str(line.unit_price_usd),
             "amountUsd": str(line.amount_usd)}
            for line in lines
        ],
        "subtotalUsd": str(subtotal),
        "totalUsd": str(billing.round_usd(subtotal)),
    }


def issue_invoices(tx: Tx, workspace: Row, next_month: int | None, now: int,
                   versions: list[billing.PriceVersion], prices: billing.Prices, result: TickResult) -> None:
    """Issue the workspace's invoices for every closed month from ``next_month`` on (its plan
    permitting), and record the next month to invoice; issued ids are added to ``result``.
    A workspace off the invoicing plans is not invoiced, and is invoiced from the current
    month on (``billing.first_invoice_month``) once it joins one."""
    workspace_id = workspace["id"]
    if workspace["plan"] not in billing.INVOICING_PLANS:
        if next_month is not None:
            rows.set_next_invoice_month(tx, workspace_id, None)
        return
    if next_month is None:
        next_month = billing.first_invoice_month(workspace["created_at"], now)
    for period_start in billing.months_to_invoice(next_month, now):
        period_end = billing.next_month(period_start)
        # Each hour at the price in effect then: a price change mid-month gives a resource a
        # line per price.
        lines = billing.merge_invoice_lines([
            billing.invoice_lines(rows.usage_between(tx, workspace_id, lo, hi), span_prices)
            for lo, hi, span_prices in billing.priced_spans(versions, period_start, period_end, prices)])
        # Dated by the period it covers, so invoice ids sort by month even when a tick issues several.
        invoice_id = new_id("inv", from_millis(period_end - 1))
        body = invoice_body(invoice_id, period_start, period_end, now, lines)
        if rows.insert_invoice(tx, invoice_id=invoice_id, workspace_id=workspace_id, period_start=period_start,
                               period_end=period_end, issued_at=now, body=body):
            result.invoices.append(invoice_id)
        next_month = period_end
    rows.set_next_invoice_month(tx, workspace_id, next_month)
