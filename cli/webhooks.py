"""``tanvrit-compute webhooks ...``: signed notifications of job events to your URLs."""

from __future__ import annotations

from typing import Any

import click

from cli import output
from cli.context import CliContext, pass_context
from cli.options import list_options
from cli.output import Column

EVENTS = ("job.created", "job.transitioned", "job.terminal", "billing.soft_cap_reached")
WEBHOOK_COLUMNS = (
    Column("ID", "id"), Column("URL", "url"), Column("EVENTS", "events"), Column("CREATED", "createdAt", output.ago),
)
DELIVERY_COLUMNS = (
    Column("ID", "id"), Column("EVENT", "eventId"), Column("TYPE", "eventType"), Column("STATE", "deliveryState"),
    Column("STATUS", "statusCode"), Column("LATENCY MS", "latencyMs"), Column("ERROR", "error", output.truncated(40)),
    Column("AT", "attemptedAt", output.ago),
)


@click.group()
def webhooks() -> None:
    """Signed job events sent to your URLs; secrets; deliveries."""


@webhooks.command("create")
@click.option("--url", required=True, help="http(s) URL that receives the events.")
@click.option("--event", "events", multiple=True, type=click.Choice(EVENTS),
              help="Event type; repeatable (default: job.created, job.transitioned, job.terminal).")
@pass_context
def create(ctx: CliContext, url: str, events: tuple[str, ...]) -> None:
    """Register a webhook; prints its signing secret once."""
    chosen = list(events) or list(EVENTS[:3])
    created = ctx.client().request("POST", "/v0/webhooks", json_body={"url": url, "events": chosen})
    output.show_done(ctx, created, f"created webhook {created['id']}; signing secret: {created['secret']}")
    if not ctx.as_json:
        output.secret_notice("signing secret")


@webhooks.command("list")
@list_options
@pass_context
def list_webhooks(ctx: CliContext, paging: dict[str, Any]) -> None:
    """List the workspace's webhooks (secrets are never shown again)."""
    output.show_page(ctx, ctx.client().request("GET", "/v0/webhooks", params=paging), WEBHOOK_COLUMNS,
                     empty="no webhooks")


@webhooks.command("rm")
@click.argument("webhook_id")
@pass_context
def remove(ctx: CliContext, webhook_id: str) -> None:
    """Disable and remove a webhook."""
    ctx.client().request("DELETE", f"/v0/webhooks/{webhook_id}")
    # The API answers 204 with no body; --json gets this small record instead of nothing.
    output.show_done(ctx, {"id": webhook_id, "deleted": True}, f"removed webhook {webhook_id}")


@webhooks.command("rotate-secret")
@click.argument("webhook_id")
@pass_context
def rotate_secret(ctx: CliContext, webhook_id: str) -> None:
    """Issue a new signing secret; the old one keeps signing alongside it for 24 h."""
    result = ctx.client().request("POST", f"/v0/webhooks/{webhook_id}:rotate-secret")
    output.show_done(ctx, result, f"new signing secret for {webhook_id}: {result['secret']} (the old one keeps "
                                  f"signing until {result['previousSecretExpiresAt']})")
    if not ctx.as_json:
        output.secret_notice("signing secret")


@webhooks.command("deliveries")
@click.argument("webhook_id")
@list_options
@pass_context
def deliveries(ctx: CliContext, webhook_id: str, paging: dict[str, Any]) -> None:
    """Recent delivery attempts: status code, latency, error."""
    page = ctx.client().request("GET", f"/v0/webhooks/{webhook_id}/deliveries", params=paging)
    output.show_page(ctx, page, DELIVERY_COLUMNS, empty="no deliveries yet")
