"""``tanvrit-compute audit``: the active workspace's audit log."""

from __future__ import annotations

import sys
from typing import Any

import click

from cli import output
from cli.context import CliContext, pass_context
from cli.options import MOMENT, list_options, query
from cli.output import Column

AUDIT_COLUMNS = (
    Column("TIME", "time", output.ago), Column("ACTOR", "actor"), Column("ACTION", "action"),
    Column("TARGET", "target"), Column("RESULT", "result"), Column("SOURCE", "sourceAddress"),
    Column("REQUEST", "requestId"),
)


@click.command("audit")
@click.option("--since", type=MOMENT, help="From this time: 30m, 2h, 7d or an RFC 3339 time.")
@click.option("--until", type=MOMENT, help="Up to this time: 30m, 2h, 7d or an RFC 3339 time.")
@click.option("--action", "actions", multiple=True, help="Only this action (e.g. jobs.create); repeatable.")
@click.option("--actor", help="Only this actor (a user, agent or token id).")
@click.option("--jsonl", is_flag=True, help="Stream the whole filtered log as JSON Lines (no paging).")
@list_options
@pass_context
def audit(ctx: CliContext, since: str | None, until: str | None, actions: tuple[str, ...], actor: str | None,
          jsonl: bool, paging: dict[str, Any]) -> None:
    """Who changed what, when, from where: the audit log, newest first.

    Every change and every refused request is there.

    \b
    Examples:
      tanvrit-compute audit --since 24h --action jobs.cancel
      tanvrit-compute audit --jsonl --since 30d > audit.jsonl
    """
    client = ctx.client()
    path = f"/v0/workspaces/{ctx.workspace_id(client)}/audit"
    filters = query(since=since, until=until, action=list(actions) or None, actor=actor)
    if jsonl:
        for line in client.stream_lines(path, params={**filters, "format": "jsonl"}):
            sys.stdout.write(line + "\n")
        sys.stdout.flush()
        return
    page = client.request("GET", path, params={**filters, **paging})
    output.show_page(ctx, page, AUDIT_COLUMNS, empty="no audit entries")
