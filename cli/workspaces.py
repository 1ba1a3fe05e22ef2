"""``tanvrit-compute workspaces ...``: list, create, switch to and update workspaces."""

from __future__ import annotations

from typing import Any

import click

from cli import output
from cli.auth import verify
from cli.context import CliContext, pass_context
from cli.options import list_options, query
from cli.output import Column

PLANS = ("hobby", "payg", "team", "enterprise")
WORKSPACE_COLUMNS = (
    Column("ID", "id"), Column("NAME", "name"), Column("PLAN", "plan"), Column("ROLE", "role"),
    Column("REGION", "defaultRegion"), Column("CREATED", "createdAt", output.ago),
)


@click.group()
def workspaces() -> None:
    """List, create, switch to and update workspaces."""


@workspaces.command("list")
@list_options
@pass_context
def list_workspaces(ctx: CliContext, paging: dict[str, Any]) -> None:
    """List the workspaces you can reach."""
    page = ctx.client().request("GET", "/v0/workspaces", params=paging)
    output.show_page(ctx, page, WORKSPACE_COLUMNS, empty="no workspaces")


@workspaces.command("create")
@click.argument("name")
@click.option("--region", help="Default region.")
@click.option("--use", "use_it", is_flag=True, help="Make it the profile's active workspace.")
@pass_context
def create(ctx: CliContext, name: str, region: str | None, use_it: bool) -> None:
    """Create a workspace; you become its owner."""
    created = ctx.client().request("POST", "/v0/workspaces", json_body=query(name=name, defaultRegion=region))
    if use_it:
        _store_workspace(ctx, created["id"])
    output.show_done(ctx, created, f"created workspace {created['id']} ({created.get('name', name)})"
                                   + (", now the active one" if use_it else ""))


@workspaces.command("use")
@click.argument("workspace_id")
@pass_context
def use(ctx: CliContext, workspace_id: str) -> None:
    """Make WORKSPACE_ID the active workspace of the profile (checked against the coordinator)."""
    settings = ctx.resolved()
    verify(ctx.url(), ctx.token().value or "", workspace_id)
    _store_workspace(ctx, workspace_id)
    output.show_done(ctx, {"profile": settings.profile_name, "workspace": workspace_id},
                     f"profile '{settings.profile_name}' now acts in workspace {workspace_id}")


def _store_workspace(ctx: CliContext, workspace_id: str) -> None:
    ctx.config.profile(ctx.resolved().profile_name)["workspace"] = workspace_id
    ctx.save_config()


@workspaces.command("update")
@click.argument("workspace_id")
@click.option("--name", help="New name.")
@click.option("--region", help="New default region.")
@click.option("--plan", type=click.Choice(PLANS), help="New plan (owners only).")
@pass_context
def update(ctx: CliContext, workspace_id: str, name: str | None, region: str | None, plan: str | None) -> None:
    """Change a workspace's name, default region or plan."""
    body = query(name=name, defaultRegion=region, plan=plan)
    if not body:
        raise click.UsageError("nothing to change: give --name, --region or --plan")
    updated = ctx.client().request("PATCH", f"/v0/workspaces/{workspace_id}", json_body=body)
    output.show_done(ctx, updated, f"updated workspace {workspace_id}")
