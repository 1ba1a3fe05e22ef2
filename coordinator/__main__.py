"""``tanvrit-coordinator``: ``init`` a store, ``serve`` the API."""

from __future__ import annotations

import json
import sys
from functools import partial
from pathlib import Path

import click
import trio

from common import HELP_SETTINGS, VERSION
from common.clock import SystemClock
from common.config import ConfigError
from common.files import private_dir
from common.logs import configure_logging
from common.signals import run_until_signalled
from coordinator.bootstrap import InitResult, initialize
from coordinator.server import serve_coordinator
from coordinator.settings import Settings, load_settings
from coordinator.store.sqlite import open_sqlite_store


@click.group(context_settings=HELP_SETTINGS)
@click.version_option(VERSION, "--version", "-V", prog_name="tanvrit-coordinator")
def main() -> None:
    """The Tanvrit Compute coordinator."""


@main.command()
@click.option("--data-dir", type=click.Path(path_type=Path), required=True, help="Where the SQLite store lives.")
@click.option("--plan", default="hobby", show_default=True,
              type=click.Choice(["hobby", "payg", "team", "enterprise"]), help="Plan of the first workspace.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def init(data_dir: Path, plan: str, as_json: bool) -> None:
    """Create the store, an owner, a workspace; print an owner PAT and a registration token once."""
    private_dir(data_dir)

    async def run() -> InitResult | None:
        async with open_sqlite_store(Settings(data_dir=data_dir).database_path) as store:
            return await initialize(store, SystemClock(), plan=plan)

    result = trio.run(run)
    if result is None:
        raise click.ClickException(f"{data_dir} is already initialised; its secrets were shown when it was")
    click.echo(json.dumps(result.as_json()) if as_json else result.as_text())


@main.command()
@click.option("--bind", default=None, help="HOST:PORT to listen on (default 127.0.0.1:8470; port 0 picks one).")
@click.option("--data-dir", type=click.Path(path_type=Path), required=True)
@click.option("--config", "config_file", type=click.Path(path_type=Path), default=None, help="TOML config file.")
@click.option("--allow-private-webhooks", is_flag=True, default=None,
              help="Allow webhook URLs on loopback and private networks.")
@click.option("--log-json", is_flag=True, help="Log JSON lines instead of key=value text.")
@click.option("--init-json", is_flag=True, help="If this start initialises the store, print its secrets as JSON.")
def serve(bind: str | None, data_dir: Path, config_file: Path | None, allow_private_webhooks: bool | None,
          log_json: bool, init_json: bool) -> None:
    """Serve the API. On an empty data dir, initialise it first and print its secrets once."""
    configure_logging(json_lines=log_json)
    try:
        settings = load_settings(data_dir, config_file, bind=bind, allow_private_webhooks=allow_private_webhooks)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from exc

    def announce(result: InitResult) -> None:
        click.echo(json.dumps(result.as_json()) if init_json else result.as_text())
        sys.stdout.flush()

    async def run(stop: trio.Event) -> None:
        async with trio.open_nursery() as nursery:
            url = await nursery.start(partial(serve_coordinator, settings, shutdown_trigger=stop.wait,
                                              on_init=announce))
            # stderr, beside the logs: stdout carries only the secrets of a first start (--init-json).
            click.echo(f"Web console: {url}/ui/", err=True)

    failure: OSError | None = None
    try:
        trio.run(run_until_signalled, run)
    except* OSError as group:
        # Hypercorn's bind error arrives wrapped in the nurseries' exception groups.
        failure = _first_leaf(group)
    if failure is not None:
        raise click.ClickException(f"cannot serve on {settings.bind}: {failure.strerror or failure}")


def _first_leaf(group: BaseExceptionGroup[OSError]) -> OSError:
    first = group.exceptions[0]
    return _first_leaf(first) if isinstance(first, BaseExceptionGroup) else first


if __name__ == "__main__":
    main()
