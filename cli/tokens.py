"""``tanvrit-compute tokens ...``: personal access tokens for headless work."""

from __future__ import annotations

from typing import Any

import click

from cli import output
from cli.context import CliContext, pass_context
from cli.options import list_options, query
from cli.output import Column

TOKEN_COLUMNS = (
    Column("ID", "id"), Column("NAME", "name"), Column("USER", "userId"), Column("CREATED", "createdAt", output.ago),
    Column("EXPIRES", "expiresAt", output.ago), Column("REVOKED", "revokedAt", output.ago),
)


@click.group()
def tokens() -> None:
    """Create, list and revoke personal access tokens (PATs)."""


@tokens.command("create")
@click.option("--name", required=True, help="What the token is for (e.g. ci-deploy).")
@click.option("--expires-in", "expires_days", type=click.IntRange(1, 3650), help="Days until it expires "
              "(default: never).")
@click.option("--user", "user_id", help="Whose token (a member's user id; default: yours). Admins only.")
@pass_context
def create(ctx: CliContext, name: str, expires_days: int | None, user_id: str | None) -> None:
    """Create a PAT; prints the token once."""
    expires = expires_days * 86400 if expires_days else None
    created = ctx.client().request("POST", "/v0/tokens",
                                   json_body=query(name=name, expiresInSeconds=expires, userId=user_id))
    output.show_done(ctx, created, f"created token {created['id']}: {created['token']}")
    if not ctx.as_json:
        output.secret_notice("token")


@tokens.command("list")
@list_options
@pass_context
def list_tokens(ctx: CliContext, paging: dict[str, Any]) -> None:
    """List PATs (never their secrets)."""
    output.show_page(ctx, ctx.client().request("GET", "/v0/tokens", params=paging), TOKEN_COLUMNS, empty="no tokens")


@tokens.command("revoke")
@click.argument("token_id")
@pass_context
def revoke(ctx: CliContext, token_id: str) -> None:
    """Revoke a PAT at once."""
    result = ctx.client().request("DELETE", f"/v0/tokens/{token_id}")
    output.show_done(ctx, result, f"revoked {token_id} ({result['name']})")
