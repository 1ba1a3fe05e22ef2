"""``tanvrit-compute billing ...``: usage, invoices and spending caps of the active workspace."""

from __future__ import annotations

from typing import Any

import click

from cli import output
from cli.context import CliContext, pass_context
from cli.options import MOMENT, list_options, query
from cli.output import Column

USAGE_FIELDS = (
    Column("from", "windowStart"), Column("to", "windowEnd"), Column("cpu seconds", "cpuSeconds"),
    Column("gpu seconds", "gpuSeconds"), Column("GB seconds", "gbSeconds"),
    Column("estimate", "estimateUsd", output.usd),
)
INVOICE_COLUMNS = (
    Column("ID", "id"), Column("FROM", "periodStart"), Column("TO", "periodEnd"),
    Column("TOTAL", "totalUsd", output.usd), Column("ISSUED", "issuedAt", output.ago),
)
LIMIT_FIELDS = (
    Column("soft cap", "softCapUsd", output.usd), Column("hard cap", "hardCapUsd", output.usd),
    Column("effective at", "effectiveAt"), Column("pending", "pending"),
    Column("hard cap reached", "hardCapReached"),
)


@click.group()
def billing() -> None:
    """Usage, invoices and monthly spending caps."""


@billing.command("usage")
@click.option("--start", type=MOMENT, help="Window start (default: start of this month): 7d or RFC 3339.")
@click.option("--end", type=MOMENT, help="Window end (default: now).")
@pass_context
def usage(ctx: CliContext, start: str | None, end: str | None) -> None:
    """CPU-, GPU- and GB-seconds used in a window, and what they cost."""
    result = ctx.client().request("GET", "/v0/billing/usage", params=query(windowStart=start, windowEnd=end))
    output.show_item(ctx, result, USAGE_FIELDS)


@billing.command("invoices")
@list_options
@pass_context
def invoices(ctx: CliContext, paging: dict[str, Any]) -> None:
    """Past invoices, one per closed month (PAYG and Team plans)."""
    page = ctx.client().request("GET", "/v0/billing/invoices", params=paging)
    output.show_page(ctx, page, INVOICE_COLUMNS, empty="no invoices yet")


def _cap(value: str) -> float | None:
    """``"none"`` clears a cap (``null``); a number sets it."""
    if value.lower() in ("none", "null", "off"):
        return None
    try:
        amount = float(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not an amount in USD or 'none'") from None
    if amount < 0:
        raise click.BadParameter("a cap cannot be negative")
    return amount


@billing.command("limits")
@click.option("--soft", metavar="USD|none", help="Set the monthly soft cap (a webhook fires past it).")
@click.option("--hard", metavar="USD|none", help="Set the monthly hard cap (new jobs are refused past it).")
@pass_context
def limits(ctx: CliContext, soft: str | None, hard: str | None) -> None:
    """Show the monthly caps, or change them with --soft / --hard (at the next meter tick)."""
    client = ctx.client()
    changes = {key: _cap(value) for key, value in (("softCapUsd", soft), ("hardCapUsd", hard)) if value is not None}
    if changes:
        result = client.request("PATCH", "/v0/billing/limits", json_body=changes)
    else:
        result = client.request("GET", "/v0/billing/limits")
    output.show_item(ctx, result, LIMIT_FIELDS)
