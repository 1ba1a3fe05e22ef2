"""``tanvrit-compute members ...``: the active workspace's members and their roles."""

from __future__ import annotations

from typing import Any

import click

from cli import output
from cli.context import CliContext, pass_context
from cli.options import list_options
from cli.output import Column

ROLES = ("owner", "admin", "member")
MEMBER_COLUMNS = (
    Column("USER", "userId"), Column("EMAIL", "email"), Column("ROLE", "role"), Column("STATUS", "status"),
    Column("JOINED", "createdAt", output.ago),
)


@click.group()
def members() -> None:
    """Members of the active workspace and their roles."""


@members.command("invite")
@click.argument("email")
@click.option("--role", type=click.Choice(ROLES), default="member", show_default=True)
@pass_context
def invite(ctx: CliContext, email: str, role: str) -> None:
    """Invite EMAIL; prints the one-time invitation code to hand to them.

    They log in with it: `tanvrit-compute auth login --invitation CODE --url URL`.
    """
    client = ctx.client()
    created = client.request("POST", f"/v0/workspaces/{ctx.workspace_id(client)}/members",
                             json_body={"email": email, "role": role})
    member, invitation = created["member"], created["invitation"]
    if invitation is None:  # a coordinator from before existing accounts got a code too
        output.show_done(ctx, created, f"added {email} as {role} (user {member['userId']}); they already have an "
                                       "account and sign in with their own credentials")
        return
    if member["status"] == "active":
        # The account exists: it is a member now and its own logins reach this workspace; the
        # code is for a login that reaches only this workspace (handy where it has no other).
        said = (f"added {email} as {role} (user {member['userId']}); they already have an account and sign in "
                f"with their own credentials, or with this workspace's invitation code: {invitation['code']} "
                f"(expires {invitation['expiresAt']}; `tanvrit-compute auth login --invitation CODE`)")
    else:
        said = (f"invited {email} as {role} (user {member['userId']}); invitation code: {invitation['code']} "
                f"(expires {invitation['expiresAt']}); they log in with `tanvrit-compute auth login --invitation CODE`")
    output.show_done(ctx, created, said)
    if not ctx.as_json:
        output.secret_notice("invitation code")


@members.command("list")
@list_options
@pass_context
def list_members(ctx: CliContext, paging: dict[str, Any]) -> None:
    """List the members of the active workspace."""
    client = ctx.client()
    page = client.request("GET", f"/v0/workspaces/{ctx.workspace_id(client)}/members", params=paging)
    output.show_page(ctx, page, MEMBER_COLUMNS, empty="no members")


@members.command("set-role")
@click.argument("user_id")
@click.argument("role", type=click.Choice(ROLES))
@pass_context
def set_role(ctx: CliContext, user_id: str, role: str) -> None:
    """Give USER_ID another ROLE (only owners grant owner)."""
    client = ctx.client()
    updated = client.request("PATCH", f"/v0/workspaces/{ctx.workspace_id(client)}/members/{user_id}",
                             json_body={"role": role})
    output.show_done(ctx, updated, f"{user_id} is {role} now")


@members.command("remove")
@click.argument("user_id")
@pass_context
def remove(ctx: CliContext, user_id: str) -> None:
    """Remove USER_ID from the active workspace."""
    client = ctx.client()
    client.request("DELETE", f"/v0/workspaces/{ctx.workspace_id(client)}/members/{user_id}")
    # The API answers 204 with no body; --json gets this small record instead of nothing.
    output.show_done(ctx, {"userId": user_id, "removed": True}, f"removed {user_id}")
