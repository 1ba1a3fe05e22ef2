"""``tanvrit-compute``: entry point, global options, error printing."""

from __future__ import annotations

import sys

import click

from cli.agents import agents
from cli.api import Unreachable
from cli.context import CliContext
from cli.jobs import jobs
from cli.local import local
from common import VERSION
from common.errors import ApiError


@click.group()
@click.version_option(VERSION, prog_name="tanvrit-compute")
@click.option("--url", envvar="TANVRIT_COMPUTE_URL", help="Coordinator URL (or TANVRIT_COMPUTE_URL).")
@click.option("--token", envvar="TANVRIT_COMPUTE_TOKEN", help="Bearer token (or TANVRIT_COMPUTE_TOKEN).")
@click.option("--workspace", envvar="TANVRIT_COMPUTE_WORKSPACE", help="Active workspace id.")
@click.option("--json", "as_json", is_flag=True, help="Print the API's JSON instead of tables.")
@click.pass_context
def cli(ctx: click.Context, url: str | None, token: str | None, workspace: str | None, as_json: bool) -> None:
    """Tanvrit Compute: run jobs on your own machines."""
    ctx.obj = CliContext(url=url, token=token, workspace=workspace, as_json=as_json)


cli.add_command(jobs)
cli.add_command(agents)
cli.add_command(local)


def main() -> None:
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except ApiError as exc:
        click.echo(f"error: {exc.message} ({exc.code}, HTTP {exc.status})", err=True)
        sys.exit(1)
    except Unreachable as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
