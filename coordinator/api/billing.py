"""``/v0/billing``: usage and its estimate, invoices, monthly caps."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

from quart import Blueprint, Response, request

from common.clock import millis_to_rfc3339, parse_rfc3339, to_millis
from common.errors import BadRequest, Forbidden, NotFound, Unprocessable
from common.models import (
    BillingLimits,
    BillingLimitsPatch,
    DailyUsage,
    Invoice,
    MonthUsage,
    Page,
    UsageSummary,
    parse_body,
)
from coordinator import billing
from coordinator.api.http import CURSOR, decode_cursor, decode_json, encode_cursor, query_limit, raw_body, respond
from coordinator.api.registry import QueryParam, endpoint
from coordinator.audit import note_target
from coordinator.auth import Role, require_user
from coordinator.context import services
from coordinator.store.base_billing import LimitsRecord

blueprint = Blueprint("billing", __name__, url_prefix="/v0")


def refuse_past_hard_cap(reached: bool) -> None:
    """Refuse new jobs (``403 hard_cap_reached``) while the workspace is past its hard cap.

    Call it after the request body has been read: answering before leaves the body unread on
    a keep-alive connection, and the client's next request on it then hangs."""
    if reached:
        raise Forbidden("this workspace is past its monthly hard cap; raise it with PATCH /v0/billing/limits",
                        code="hard_cap_reached")


def _time_arg(name: str) -> int | None:
    text = request.args.get(name)
    if text is None:
        return None
    try:
        return to_millis(parse_rfc3339(text))
    except ValueError as exc:
        raise BadRequest(f"{name} must be an RFC 3339 time such as 2026-04-01T00:00:00Z",
                         code="invalid_type", field=name) from exc


@endpoint(blueprint, "GET", "/billing/usage", summary="Usage and its cost estimate over a window", tag="billing",
          response=UsageSummary,
          query=(QueryParam("windowStart", {"type": "string", "format": "date-time"},
                            "Default: start of this calendar month (UTC); rounded down to the hour"),
                 QueryParam("windowEnd", {"type": "string", "format": "date-time"},
                            "Default: now; rounded up to the hour")))
async def get_usage() -> Response:
    principal = await require_user()
    svc = services()
    now = to_millis(svc.clock.now())
    start, end = _time_arg("windowStart"), _time_arg("windowEnd")
    if start is not None and end is not None and end <= start:
        raise Unprocessable("windowEnd must be after windowStart", field="windowEnd")
    window = billing.usage_window(start, end, now)
    usage = await svc.store.usage_totals(principal.workspace_id, window.start, billing.hour_ceil(window.end))
    # Each hour at the price version in effect then: a price change never re-prices the past.
    estimate = billing.round_usd(await svc.store.usage_cost(
        principal.workspace_id, window.start, billing.hour_ceil(window.end), svc.settings.billing.prices))
    return respond(UsageSummary(
        windowStart=millis_to_rfc3339(window.start) or "", windowEnd=millis_to_rfc3339(window.end) or "",
        cpuSeconds=float(billing.micros_to_seconds(usage.cpu_micros)),
        gpuSeconds=float(billing.micros_to_seconds(usage.gpu_micros)),
        gbSeconds=float(billing.micros_to_seconds(usage.gb_micros)),
        gpuMemoryGbSeconds=float(billing.micros_to_seconds(usage.gpu_memory_micros)),
        gpuUtilSeconds=float(billing.micros_to_seconds(usage.gpu_util_micros)),
        estimateUsd=estimate,
    ))


@endpoint(blueprint, "GET", "/billing/invoices", summary="Invoices of closed months, newest first (payg, team)",
          tag="billing", response=Page[Invoice], errors=(400, 401, 403, 404),
          query=(QueryParam("limit", {"type": "integer", "minimum": 1, "maximum": 500}),
                 CURSOR))
async def list_invoices() -> Response:
    principal = await require_user()
    svc = services()
    plan = await svc.store.workspace_plan(principal.workspace_id)
    if plan is None:
        raise NotFound("no such workspace", code="workspace_not_found")
    if plan not in billing.INVOICING_PLANS:
        raise Forbidden(f"the {plan} plan has no invoices; payg and team workspaces do", code="plan_has_no_invoices")
    limit = query_limit()
    found = await svc.store.list_invoices(principal.workspace_id, limit=limit + 1,
                                          before_id=decode_cursor(request.args.get("cursor")))
    page = found[:limit]
    cursor = encode_cursor(page[-1].id) if len(found) > limit else None
    return respond(Page[Invoice](items=[Invoice.model_validate(item.body) for item in page], nextCursor=cursor))


async def _limits_view(record: LimitsRecord) -> BillingLimits:
    effective_at = record.effective_at
    if record.pending:
        svc = services()
        now = to_millis(svc.clock.now())
        next_tick = await svc.store.next_meter_tick()
        interval_ms = int(svc.settings.billing.meter_interval_seconds * 1000)
        effective_at = next_tick if next_tick is not None and next_tick >= now else now + interval_ms
    return BillingLimits(softCapUsd=record.soft_cap_usd, hardCapUsd=record.hard_cap_usd,
                         effectiveAt=millis_to_rfc3339(effective_at), pending=record.pending,
                         hardCapReached=record.hard_cap_reached)


@endpoint(blueprint, "GET", "/billing/limits", summary="Monthly soft and hard caps", tag="billing",
          response=BillingLimits)
async def get_limits() -> Response:
    principal = await require_user()
    return respond(await _limits_view(await services().store.get_limits(principal.workspace_id)))


@endpoint(blueprint, "PATCH", "/billing/limits", summary="Change the caps; they apply at the next meter tick",
          tag="billing", body=BillingLimitsPatch, response=BillingLimits, errors=(400, 401, 403, 404, 422))
async def patch_limits() -> Response:
    principal = await require_user(Role.ADMIN)
    note_target(principal.workspace_id)
    # Decimal, not float: a cap of 0.1 is exactly 0.1.
    payload = decode_json(await raw_body(), parse_float=Decimal)
    patch = parse_body(BillingLimitsPatch, payload)
    changes = {name: getattr(patch, name) for name in patch.model_fields_set}
    record = await services().store.request_limits(
        principal.workspace_id,
        **({"soft_cap_usd": changes["softCapUsd"]} if "softCapUsd" in changes else {}),
        **({"hard_cap_usd": changes["hardCapUsd"]} if "hardCapUsd" in changes else {}),
    )
    return respond(await _limits_view(record))


DAY_MS = 86_400_000
# 1970-01 to 9998-12: no usage predates the epoch, and the month after 9999-12 is not a date.
_MONTH_PATTERN = "^(19[7-9][0-9]|[2-8][0-9]{3}|9[0-8][0-9]{2}|99[0-8][0-9]|999[0-8])-(0[1-9]|1[0-2])$"
_FIRST_YEAR, _LAST_YEAR = 1970, 9998


def _month_arg(now: int) -> int:
    """Start (epoch ms) of the ``month`` query parameter (YYYY-MM, UTC); this month by default."""
    text = request.args.get("month")
    if text is None:
        return billing.month_start(now)
    try:
        year, month = (int(part) for part in text.split("-"))
        if not _FIRST_YEAR <= year <= _LAST_YEAR:
            raise ValueError(year)
        return to_millis(datetime(year, month, 1, tzinfo=UTC))
    except ValueError as exc:
        raise BadRequest(f"month must look like 2026-04 (from {_FIRST_YEAR}-01 to {_LAST_YEAR}-12)",
                         code="invalid_type", field="month") from exc


@endpoint(blueprint, "GET", "/billing/usage/daily", summary="Usage per UTC day of a month (the console's charts)",
          tag="billing", response=MonthUsage,
          query=(QueryParam("month", {"type": "string", "pattern": _MONTH_PATTERN}, "Default: this month (UTC)"),))
async def get_daily_usage() -> Response:
    principal = await require_user()
    svc = services()
    now = to_millis(svc.clock.now())
    start = _month_arg(now)
    end = min(billing.next_month(start), billing.hour_ceil(now))
    days = []
    day = start
    while day < end:
        usage = await svc.store.usage_totals(principal.workspace_id, day, min(day + DAY_MS, end))
        days.append(DailyUsage(
            date=datetime.fromtimestamp(day / 1000, UTC).strftime("%Y-%m-%d"),
            cpuSeconds=float(billing.micros_to_seconds(usage.cpu_micros)),
            gpuSeconds=float(billing.micros_to_seconds(usage.gpu_micros)),
            gbSeconds=float(billing.micros_to_seconds(usage.gb_micros)),
        ))
        day += DAY_MS
    return respond(MonthUsage(month=datetime.fromtimestamp(start / 1000, UTC).strftime("%Y-%m"), days=days))
