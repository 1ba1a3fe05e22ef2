"""``tanvrit-compute``: entry point, global options, command sections, error printing.

Exit codes: 0 success; 1 an error the API or the CLI reported (its message on stderr);
2 bad usage, or the coordinator could not be reached; 130 interrupted. ``jobs run`` adds
the job's own exit code and 124 (timed out), 125 (lost), 130 (cancelled).
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Iterator

import click

from cli.agents import agents
from cli.api import Unreachable
from cli.arrays import arrays
from cli.audit import audit
from cli.auth import auth
from cli.billing import billing
from cli.completion import PROG_NAME, completion
from cli.config import ENV_PROFILE, ENV_TOKEN, ENV_URL, ENV_WORKSPACE
from cli.context import CliContext
from cli.jobs import jobs
from cli.local import local
from cli.members import members
from cli.options import json_param
from cli.tokens import tokens
from cli.webhooks import webhooks
from cli.workspaces import workspaces
from common import HELP_SETTINGS, VERSION
from common.errors import ApiError

SECTIONS = (
    ("Run work", ("jobs", "arrays", "agents")),
    ("Access", ("auth", "workspaces", "members", "tokens", "audit")),
    ("Money and notifications", ("billing", "webhooks")),
    ("On this machine", ("local", "completion")),
)
# Printed under any 401: the credentials were refused, so say how to get accepted ones.
LOGIN_HINT = ("hint: log in with `tanvrit-compute auth login --url URL --token tcp_pat_...` (or --invitation "
              "tcp_inv_...); `tanvrit-compute auth status` shows which token was sent and from where")
# Commands whose output is not an API answer, so `--json` would mean nothing.
NO_JSON = {("auth", "print-token"), ("local", "up"), ("local", "down"), ("jobs", "logs"), ("arrays", "logs"),
           ("completion",)}


class SectionedGroup(click.Group):
    """``--help`` lists commands by what they are for, as gh does, not alphabetically."""

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        listed: set[str] = set()
        for title, names in SECTIONS:
            rows = [(name, self.commands[name].get_short_help_str(limit=70)) for name in names if name in self.commands]
            listed.update(names)
            with formatter.section(title):
                formatter.write_dl(rows)
        rest = [(name, cmd.get_short_help_str(limit=70)) for name, cmd in self.commands.items() if name not in listed]
        if rest:
            with formatter.section("Other"):
                formatter.write_dl(rest)


@click.group(cls=SectionedGroup, context_settings=HELP_SETTINGS)
@click.version_option(VERSION, "--version", "-V", prog_name=PROG_NAME)
@click.option("--profile", "-p", help=f"Config profile to use (or {ENV_PROFILE}; default: the default profile).")
@click.option("--url", multiple=True,
              help=f"Coordinator URL (or {ENV_URL}, or the profile's); repeat it or give a comma list for "
                   "replicas, tried in order.")
@click.option("--token", help=f"Bearer token (or {ENV_TOKEN}, or the profile's).")
@click.option("--workspace", "-w", help=f"Active workspace id (or {ENV_WORKSPACE}, or the profile's).")
@click.option("--json", "as_json", is_flag=True, help="Print the API's JSON instead of tables (also after a command).")
@click.pass_context
def cli(ctx: click.Context, profile: str | None, url: tuple[str, ...], token: str | None, workspace: str | None,
        as_json: bool) -> None:
    """Tanvrit Compute: run jobs on your own machines.

    Settings come from flags, then the environment, then the profile in
    $XDG_CONFIG_HOME/tanvrit-compute/config.toml (written by `auth login`).

    \b
    Start here:
      tanvrit-compute local up --demo        a coordinator and an agent on this machine
      tanvrit-compute jobs run -- echo hi    run a command as a job, follow its output
      tanvrit-compute jobs list              what ran, newest first
    """
    flags = {"profile": profile, "url": ",".join(url) or None, "token": token, "workspace": workspace}
    ctx.obj = CliContext(flags=flags, as_json=as_json)


for command in (jobs, arrays, agents, auth, workspaces, members, tokens, audit, billing, webhooks, local, completion):
    cli.add_command(command)


def _leaves(command: click.Command, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], click.Command]]:
    if isinstance(command, click.Group):
        for name, sub in command.commands.items():
            yield from _leaves(sub, (*path, name))
    else:
        yield path, command


for _path, _command in _leaves(cli):
    if _path not in NO_JSON:
        _command.params.append(json_param())


def main() -> None:
    try:
        cli.main(prog_name=PROG_NAME, standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("interrupted", err=True)
        sys.exit(130)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except ApiError as exc:
        where = f", field {exc.field}" if exc.field else ""
        request = f", request {exc.request_id}" if exc.request_id else ""
        click.echo(f"error: {exc.message} ({exc.code}, HTTP {exc.status}{where}{request})", err=True)
        if exc.status == 401:
            click.echo(LOGIN_HINT, err=True)
        sys.exit(1)
    except Unreachable as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except BrokenPipeError:
        # `tanvrit-compute jobs list | head -1`: the reader left; that is not an error.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(0)
    except Exception as exc:  # a bug of ours: one line for the user, the trace only on request
        if os.environ.get("TANVRIT_COMPUTE_DEBUG"):
            traceback.print_exc()
        click.echo(f"internal error: {type(exc).__name__}: {exc} (TANVRIT_COMPUTE_DEBUG=1 shows the traceback)",
                   err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
