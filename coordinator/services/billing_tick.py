"""The meter tick: one transaction that rolls up usage, applies requested caps, decides holds,
fires the soft-cap event once a month and issues the invoices of closed months.

The ledger and its roll-ups: usage queries read ``usage_hourly`` plus the ledger rows not yet
rolled up, so a tick changes how usage is stored, never what it adds up to.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import structlog

from common.clock import from_millis, millis_to_rfc3339
from common.ids import new_id
from coordinator import billing, webhooks
from coordinator.services import invoices, pricing
from coordinator.services.webhook_events import enqueue_workspace_event
from coordinator.store.base import AuditRecord
from coordinator.store.base_billing import TickResult
from coordinator.store.db import Tx
from coordinator.store.queries.audit import insert_audit_row
from coordinator.store.repo import billing as rows

log = structlog.get_logger("tanvrit.coordinator.billing")


def soft_cap_event_data(workspace_id: str, period_start: int, soft: Decimal | None, hard: Decimal | None,
                        month_cost: Decimal) -> dict[str, Any]:
    """The ``billing.soft_cap_reached`` webhook payload (``data``)."""
    return {"workspaceId": workspace_id, "periodStart": millis_to_rfc3339(period_start),
            "softCapUsd": float(soft) if soft is not None else None,
            "hardCapUsd": float(hard) if hard is not None else None,
            "costUsd": float(billing.round_usd(month_cost))}


def meter_tick(tx: Tx, now: int, prices: billing.Prices, interval_ms: int) -> TickResult:
    """One tick at ``now`` (never dated before the previous one), with ``prices`` configured
    and the next tick due ``interval_ms`` later. Caps are decided on the month's unrounded cost."""
    result = TickResult()
    # A tick is never dated before the previous one (a clock stepping back must not reopen hours).
    last = rows.last_tick_at(tx)
    now = max(now, last) if last is not None else now
    versions = pricing.record_prices(tx, prices, now)
    result.rolled_up = rows.roll_up_usage(tx)
    rows.set_meter_state(tx, now, now + interval_ms)
    this_month = billing.month_start(now)
    for workspace in rows.workspaces(tx):
        workspace_id = workspace["id"]
        state = rows.billing_state(tx, workspace_id)
        soft, hard = billing.decimal_or_none(state["soft_cap_usd"]), billing.decimal_or_none(state["hard_cap_usd"])
        if state["limits_pending"]:
            soft = billing.decimal_or_none(state["requested_soft_cap_usd"])
            hard = billing.decimal_or_none(state["requested_hard_cap_usd"])
            rows.apply_requested_limits(tx, workspace_id, now)
        if soft is not None or hard is not None or state["hard_cap_reached"]:
            month_cost = pricing.priced_cost(tx, workspace_id, this_month, now + 1, versions, prices)
            decision = billing.decide_caps(month_cost, soft, hard, state["soft_cap_notified_month"], this_month)
            if decision.hold != bool(state["hard_cap_reached"]):
                rows.set_hard_cap_reached(tx, workspace_id, decision.hold)
                (result.held if decision.hold else result.released).append(workspace_id)
            if decision.notify_soft_cap:
                rows.set_soft_cap_notified_month(tx, workspace_id, this_month)
                data = soft_cap_event_data(workspace_id, this_month, soft, hard, month_cost)
                event_id = enqueue_workspace_event(tx, workspace_id, webhooks.SOFT_CAP_REACHED, data,
                                                   ordering_key=f"billing:{workspace_id}", now=now)
                # Not a request: the meter tick is the actor, and the event id stands in for a request id.
                insert_audit_row(tx, AuditRecord(
                    id=new_id("aud", from_millis(now)), workspace_id=workspace_id, at=now, actor="system:meter",
                    action=webhooks.SOFT_CAP_REACHED, target=workspace_id, result="success", status=0,
                    error_code=None, request_id=event_id or new_id("req", from_millis(now)), source=None,
                    method="SYSTEM", path="meter tick"))
                log.warning("soft cap reached", workspace_id=workspace_id, cost=str(billing.round_usd(month_cost)),
                            soft_cap=str(soft))
                result.soft_cap_events.append(workspace_id)
        invoices.issue_invoices(tx, workspace, state["next_invoice_month"], now, versions, prices, result)
    return result
