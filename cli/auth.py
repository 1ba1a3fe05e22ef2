"""``tanvrit-compute auth ...``: credentials per profile in the user's config file.

A profile holds either a personal access token (``token``) or OAuth credentials
(``refresh_token``, or ``client_id`` + ``client_secret``) from which ``cli.oauth`` gets
15-minute access tokens. ``login`` checks credentials against the coordinator before storing them;
``login --invitation CODE`` redeems a member's invitation for their own refresh token.
"""

from __future__ import annotations

import re
import sys
from datetime import UTC, datetime
from typing import Any

import click

from cli import oauth, output
from cli.api import ApiClient, on_first_reachable
from cli.config import CREDENTIAL_KEYS
from cli.context import CliContext, pass_context
from common.errors import ApiError

# The cheapest call every user token may make; it proves the token and the workspace.
VERIFY_PATH = "/v0/jobs"
PAT_PREFIX = "tcp_pat_"


def mask(token: str) -> str:
    """``tcp_pat_AbCd…``: enough to tell tokens apart, too little to use."""
    match = re.match(r"^(tcp_[a-z]+_)", token)
    prefix = match.group(1) if match else ""
    return f"{prefix}{token[len(prefix):len(prefix) + 4]}…"


def verify(url: str, token: str, workspace: str | None) -> None:
    """Raises ``ApiError`` (bad token, unknown workspace) or ``Unreachable``."""
    client = ApiClient(url, token, workspace=workspace)
    try:
        client.request("GET", VERIFY_PATH, params={"limit": 1})
    finally:
        client.close()


@click.group()
def auth() -> None:
    """Log in (a profile per coordinator), check credentials, print tokens."""


@auth.command("login")
@click.option("--token", help="A personal access token (tcp_pat_...). Without any credential option: the global "
                              "--token or TANVRIT_COMPUTE_TOKEN, else a line on stdin, else a hidden prompt.")
@click.option("--invitation", "invitation", metavar="CODE",
              help="A one-time invitation code (tcp_inv_..., from `members invite`): redeemed for your own "
                   "OAuth refresh token, and the profile acts in the inviting workspace.")
@click.option("--refresh-token", help="An OAuth refresh token; exchanged for short-lived access tokens.")
@click.option("--client-id", help="OAuth client id (client_credentials grant), with --client-secret.")
@click.option("--client-secret", help="OAuth client secret, with --client-id.")
@click.option("--url", "login_url", help="Coordinator URL for this profile (else --url, TANVRIT_COMPUTE_URL, "
                                         "the profile's, or http://127.0.0.1:8470).")
@pass_context
def login(ctx: CliContext, token: str | None, invitation: str | None, refresh_token: str | None,
          client_id: str | None, client_secret: str | None, login_url: str | None) -> None:
    """Check credentials against the coordinator and store them in the profile (--profile, else
    the default one), which becomes the default profile.

    \b
    Examples:
      tanvrit-compute auth login --token tcp_pat_... --url https://compute.example.com
      tanvrit-compute auth login --invitation tcp_inv_... --url https://compute.example.com
      echo "$PAT" | tanvrit-compute --profile staging auth login --url https://staging.example.com
    """
    settings = ctx.resolved()
    url = ctx.url(login_url)
    if bool(client_id) != bool(client_secret):
        raise click.UsageError("--client-id and --client-secret go together")
    if sum(1 for given in (token, invitation, refresh_token, client_id) if given) > 1:
        raise click.UsageError("give one of --token, --invitation, --refresh-token, --client-id/--client-secret")
    workspace = settings.workspace.value if settings.workspace.source in ("flag", "profile") else None
    credentials: dict[str, str]
    joined = ""
    if invitation:
        now = datetime.now(UTC)
        code = invitation.strip()
        redeemed = on_first_reachable(url, lambda http: oauth.redeem_invitation(http, code, now))
        # The code is spent now: store what it gave even if the check below fails, or it is lost.
        credentials = oauth.token_updates(redeemed.token, now)
        workspace = redeemed.workspace_id
        joined = f" ({redeemed.user_id}, {redeemed.role} of workspace {workspace})"
    elif refresh_token:
        credentials = {"refresh_token": refresh_token}
    elif client_id and client_secret:
        credentials = {"client_id": client_id, "client_secret": client_secret}
    else:
        if token is None and settings.token.source in ("flag", "env"):
            token = settings.token.value  # `--token X auth login`, or TANVRIT_COMPUTE_TOKEN in CI
        if token is None:
            token = (click.prompt("Personal access token", hide_input=True, err=True) if sys.stdin.isatty()
                     else sys.stdin.readline())
        token = token.strip()
        if not token:
            raise click.UsageError("no token given: pass --token, or pipe it on stdin")
        credentials = {"token": token}
    if invitation:
        pass  # the coordinator has just issued these tokens: nothing to check
    elif "token" in credentials:
        verify(url, credentials["token"], workspace)
    else:
        given, now = dict(credentials), datetime.now(UTC)
        access, updates = on_first_reachable(url, lambda http: oauth.access_token(given, http, now))
        verify(url, access, workspace)
        credentials.update(updates)
    config = ctx.config
    profile = config.profile(settings.profile_name)
    for key in CREDENTIAL_KEYS:
        profile.pop(key, None)
    profile.update(credentials)
    profile["url"] = url
    if workspace:
        profile["workspace"] = workspace
    config.default_profile = settings.profile_name
    ctx.save_config()
    result = {"profile": settings.profile_name, "url": url, "configFile": str(ctx.config_file)}
    if invitation:
        result.update(userId=redeemed.user_id, workspaceId=redeemed.workspace_id, role=redeemed.role)
    output.show_done(ctx, result, f"Logged in to {url}{joined} as profile '{settings.profile_name}' (the default "
                                  f"profile now); credentials saved in {ctx.config_file}")


@auth.command("status")
@pass_context
def status(ctx: CliContext) -> None:
    """Show which coordinator, token and workspace commands use, and check the token.

    Exits 1 when not logged in or the token is refused, 2 when the coordinator is unreachable.
    """
    settings = ctx.resolved()
    config = ctx.config
    is_default = settings.profile_name == (config.default_profile or "default")
    info: dict[str, Any] = {
        "profile": settings.profile_name, "defaultProfile": config.default_profile,
        "profiles": sorted(config.profiles), "configFile": str(ctx.config_file),
        "url": settings.url.value, "urlSource": settings.url.source,
        "workspace": settings.workspace.value, "workspaceSource": settings.workspace.source,
    }
    try:
        token = ctx.token()
    except click.ClickException as exc:
        info.update(loggedIn=False, error=exc.message)
        _print_status(ctx, info, is_default)
        sys.exit(1)
    info.update(loggedIn=True, token=mask(token.value or ""), tokenSource=token.source)
    assert token.value is not None
    try:
        verify(ctx.url(), token.value, settings.workspace.value)
        info["valid"] = True
    except ApiError as exc:  # Unreachable goes on up: exit 2 with its own message
        info.update(valid=False, error=f"{exc.message} ({exc.code})")
    _print_status(ctx, info, is_default)
    if not info["valid"]:
        sys.exit(1)


_SOURCES = {"flag": "from a flag", "env": "from the environment", "profile": "from the profile",
            "default": "default", "oauth": "OAuth access token from the profile"}


def _print_status(ctx: CliContext, info: dict[str, Any], is_default: bool = False) -> None:
    if ctx.as_json:
        output.print_json(info)
        return
    others = [name for name in info["profiles"] if name != info["profile"]]
    rows = [
        ("profile", f"{info['profile']}{' (default)' if is_default else ''}; config {info['configFile']}"),
        ("url", f"{info['url']} ({_SOURCES[info['urlSource']]})"),
        ("workspace", f"{info['workspace']} ({_SOURCES[info['workspaceSource']]})" if info["workspace"]
         else "the token's default workspace"),
    ]
    if info["loggedIn"]:
        rows.append(("token", f"{info['token']} ({_SOURCES[info['tokenSource']]})"))
        rows.append(("status", "valid: the coordinator accepts it" if info["valid"] else f"refused: {info['error']}"))
    else:
        rows.append(("status", info["error"]))
    if others:
        rows.append(("other profiles", ", ".join(others)))
    for key, value in rows:
        click.echo(f"{key + ':':<16}{value}")


@auth.command("logout")
@pass_context
def logout(ctx: CliContext) -> None:
    """Remove the profile's stored credentials (its URL and workspace stay)."""
    name = ctx.resolved().profile_name
    profile = ctx.config.profiles.get(name, {})
    removed = [key for key in CREDENTIAL_KEYS if profile.pop(key, None) is not None]
    if not removed:
        click.echo(f"profile '{name}' holds no credentials", err=True)
        return
    ctx.save_config()
    output.show_done(ctx, {"profile": name, "removed": removed}, f"Logged out of profile '{name}'")


@auth.command("print-token")
@pass_context
def print_token(ctx: CliContext) -> None:
    """Print a valid OAuth access token and nothing else, for scripts:

    \b
      curl -H "Authorization: Bearer $(tanvrit-compute auth print-token)" ...

    OAuth profiles (`auth login --invitation`, --refresh-token) print the stored access token
    while it has over a minute left (half its lifetime, if shorter), else a fresh one, storing
    the rotated refresh token. A personal access token (the profile's, --token or
    TANVRIT_COMPUTE_TOKEN) is exchanged for a short-lived access token that dies with it
    (client_credentials grant); the PAT itself is never printed. Other tokens print as they are.
    """
    token = ctx.token()
    assert token.value is not None
    printed = token.value
    if printed.startswith(PAT_PREFIX):
        pat, moment = printed, datetime.now(UTC)
        printed = on_first_reachable(ctx.url(), lambda http: oauth.exchange_pat(http, pat, moment)).token
    click.echo(printed)


@auth.command("switch")
@click.argument("profile")
@pass_context
def switch(ctx: CliContext, profile: str) -> None:
    """Make PROFILE the default profile."""
    if profile not in ctx.config.profiles:
        known = ", ".join(sorted(ctx.config.profiles)) or "none"
        raise click.ClickException(f"no profile '{profile}' (profiles: {known}); create it with "
                                   f"`tanvrit-compute --profile {profile} auth login`")
    ctx.config.default_profile = profile
    ctx.save_config()
    output.show_done(ctx, {"defaultProfile": profile}, f"'{profile}' is the default profile now")
