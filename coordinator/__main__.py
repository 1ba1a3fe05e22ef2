"""``tanvrit-coordinator``: ``init`` a store, ``serve`` the API, ``backup`` it, and ``admin``
commands that work on the data dir directly (on the coordinator host, offline or while it serves)."""

from __future__ import annotations

import json
import sys
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import TypeVar

import click
import trio

from common import HELP_SETTINGS, VERSION
from common.clock import SystemClock
from common.config import ConfigError
from common.files import private_dir
from common.logs import configure_logging
from common.signals import run_until_signalled
from coordinator.admin import AdminError, Minted, mint_owner_token, mint_registration_token
from coordinator.bootstrap import InitResult, initialize
from coordinator.server import serve_coordinator
from coordinator.settings import Settings, load_settings
from coordinator.store.backup import BackupError, backup_database
from coordinator.store.base import Store
from coordinator.store.errors import DatabaseUnavailable, SchemaTooNew, UnknownDatabaseUrl
from coordinator.store.factory import ENV_VAR, DatabaseUrl, open_store, parse_database_url

E = TypeVar("E", bound=BaseException)


@click.group(context_settings=HELP_SETTINGS)
@click.version_option(VERSION, "--version", "-V", prog_name="tanvrit-coordinator")
def main() -> None:
    """The Tanvrit Compute coordinator: the REST API /v0, its SQLite store, the agents' counterpart.

    \b
    Start here:
      tanvrit-coordinator init --data-dir DIR              create the store; print an owner PAT once
      tanvrit-coordinator serve --data-dir DIR             serve the API (initialises an empty DIR)
      tanvrit-coordinator backup --data-dir DIR --to F     a consistent copy, also while it serves
      tanvrit-coordinator admin mint-token --data-dir DIR  a new owner PAT (audited)
    """


def _check_database(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is not None:
        try:
            parse_database_url(value)
        except UnknownDatabaseUrl as exc:
            raise click.BadParameter(str(exc), ctx=ctx, param=param) from exc
    return value


database_option = click.option(
    "--database", "database", envvar=ENV_VAR, default=None, callback=_check_database, metavar="URL",
    help=f"The store: postgresql://USER@HOST/DB or sqlite:///PATH (env {ENV_VAR}; default: the SQLite file "
         "in the data dir).")


def _database(data_dir: Path, url: str | None) -> DatabaseUrl:
    return parse_database_url(url) if url is not None else parse_database_url(Settings(data_dir=data_dir).database_path)


@main.command()
@click.option("--data-dir", type=click.Path(path_type=Path), required=True, help="Where the SQLite store lives.")
@database_option
@click.option("--plan", default="hobby", show_default=True,
              type=click.Choice(["hobby", "payg", "team", "enterprise"]), help="Plan of the first workspace.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def init(data_dir: Path, database: str | None, plan: str, as_json: bool) -> None:
    """Create the store, an owner, a workspace; print an owner PAT and a registration token once."""
    private_dir(data_dir)

    async def run() -> InitResult | None:
        async with open_store(_database(data_dir, database)) as store:
            return await initialize(store, SystemClock(), plan=plan)

    failure: SchemaTooNew | UnknownDatabaseUrl | DatabaseUnavailable | None = None
    try:
        result = trio.run(run)
    except* (SchemaTooNew, UnknownDatabaseUrl, DatabaseUnavailable) as group:
        failure = _first_leaf(group)
    if failure is not None:
        raise click.ClickException(str(failure))
    if result is None:
        raise click.ClickException(f"{data_dir} is already initialised; its secrets were shown when it was")
    click.echo(json.dumps(result.as_json()) if as_json else result.as_text())


@main.command()
@click.option("--bind", default=None, help="HOST:PORT to listen on (default 127.0.0.1:8470; port 0 picks one).")
@click.option("--data-dir", type=click.Path(path_type=Path), required=True)
@click.option("--config", "config_file", type=click.Path(path_type=Path), default=None, help="TOML config file.")
@database_option
@click.option("--allow-private-webhooks", is_flag=True, default=None,
              help="Allow webhook URLs on loopback and private networks.")
@click.option("--log-json", is_flag=True, help="Log JSON lines instead of key=value text.")
@click.option("--init-json", is_flag=True, help="If this start initialises the store, print its secrets as JSON.")
def serve(bind: str | None, data_dir: Path, config_file: Path | None, database: str | None,
          allow_private_webhooks: bool | None, log_json: bool, init_json: bool) -> None:
    """Serve the API. On an empty store, initialise it first and print its secrets once."""
    configure_logging(json_lines=log_json)
    try:
        settings = load_settings(data_dir, config_file, bind=bind, allow_private_webhooks=allow_private_webhooks,
                                 database_url=database)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from exc

    def announce(result: InitResult) -> None:
        click.echo(json.dumps(result.as_json()) if init_json else result.as_text())
        sys.stdout.flush()

    async def run(stop: trio.Event) -> None:
        async with trio.open_nursery() as nursery:
            url = await nursery.start(partial(serve_coordinator, settings, shutdown_trigger=stop.wait,
                                              on_init=announce, own_process=True))
            # stderr, beside the logs: stdout carries only the secrets of a first start (--init-json).
            click.echo(f"Web console: {url}/ui/", err=True)

    failure: OSError | None = None
    too_new: SchemaTooNew | UnknownDatabaseUrl | DatabaseUnavailable | None = None
    try:
        trio.run(run_until_signalled, run)
    except* OSError as group:
        # Hypercorn's bind error arrives wrapped in the nurseries' exception groups.
        failure = _first_leaf(group)
    except* (SchemaTooNew, UnknownDatabaseUrl, DatabaseUnavailable) as group:
        too_new = _first_leaf(group)
    if too_new is not None:
        raise click.ClickException(str(too_new))
    if failure is not None:
        raise click.ClickException(f"cannot serve on {settings.bind}: {failure.strerror or failure}")


@main.command()
@click.option("--data-dir", type=click.Path(path_type=Path), required=True, help="The coordinator's data dir.")
@click.option("--to", "target", type=click.Path(path_type=Path), required=True,
              help="The backup file to write (replaced if it exists).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def backup(data_dir: Path, target: Path, as_json: bool) -> None:
    """Copy the store consistently, also while it serves (SQLite's online backup API).

    Restore: stop the coordinator, copy the backup over coordinator.sqlite3 in the data dir,
    remove coordinator.sqlite3-wal and -shm, start it (docs/operations.md).
    """
    try:
        result = backup_database(_existing_store(data_dir), target)
    except BackupError as exc:
        raise click.ClickException(str(exc)) from exc
    if as_json:
        click.echo(json.dumps({"path": str(result.path), "sizeBytes": result.size_bytes,
                               "schemaVersion": result.schema_version}))
    else:
        click.echo(f"backed up to {result.path} ({result.size_bytes} bytes, schema version {result.schema_version})")


@main.group()
def admin() -> None:
    """Offline administration through the data dir (the host is trusted): mint lost tokens.

    Each command writes an audit row (actor host-admin:USER) that members see in `audit`.
    """


def _existing_store(data_dir: Path) -> Path:
    database = Settings(data_dir=data_dir).database_path
    if not database.is_file():
        raise click.ClickException(f"no coordinator store in {data_dir} ({database.name} is missing); "
                                   "run `tanvrit-coordinator init` first")
    return database


def _mint(data_dir: Path, url: str | None, mint: Callable[[Store], Awaitable[Minted]]) -> Minted:
    database = parse_database_url(url) if url is not None else parse_database_url(_existing_store(data_dir))

    async def run() -> Minted:
        async with open_store(database) as store:
            return await mint(store)

    failure: AdminError | SchemaTooNew | UnknownDatabaseUrl | DatabaseUnavailable | None = None
    try:
        return trio.run(run)
    # Raised inside the store's nursery.
    except* (AdminError, SchemaTooNew, UnknownDatabaseUrl, DatabaseUnavailable) as group:
        failure = _first_leaf(group)
    raise click.ClickException(str(failure))


@admin.command("mint-token")
@click.option("--data-dir", type=click.Path(path_type=Path), required=True, help="The coordinator's data dir.")
@database_option
@click.option("--workspace", default=None, help="Workspace id (default: the one `init` created).")
@click.option("--owner", default=None, help="The owner's user id or email (default: the workspace's only owner).")
@click.option("--name", default="owner token (admin mint-token)", show_default=True, help="The token's name.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def mint_token(data_dir: Path, database: str | None, workspace: str | None, owner: str | None, name: str,
               as_json: bool) -> None:
    """Mint a new owner PAT (when the one `init` showed is lost); printed once."""
    minted = _mint(data_dir, database, lambda store: mint_owner_token(store, SystemClock(), workspace_id=workspace,
                                                            owner=owner, name=name))
    click.echo(json.dumps(minted.as_json()) if as_json else
               f"owner token (PAT) for {minted.email} ({minted.user_id}) in workspace {minted.workspace_id}, "
               f"shown once:\n  {minted.token}")


@admin.command("registration-token")
@click.option("--data-dir", type=click.Path(path_type=Path), required=True, help="The coordinator's data dir.")
@database_option
@click.option("--workspace", default=None, help="Workspace id (default: the one `init` created).")
@click.option("--name", default="agent registration (admin)", show_default=True, help="The token's name.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def registration_token(data_dir: Path, database: str | None, workspace: str | None, name: str,
                       as_json: bool) -> None:
    """Mint a new agent registration token for a workspace; printed once."""
    minted = _mint(data_dir, database, lambda store: mint_registration_token(
        store, SystemClock(), workspace_id=workspace, name=name))
    click.echo(json.dumps(minted.as_json()) if as_json else
               f"registration token for workspace {minted.workspace_id}, shown once:\n  {minted.token}")


def _first_leaf(group: BaseExceptionGroup[E]) -> E:
    first = group.exceptions[0]
    return _first_leaf(first) if isinstance(first, BaseExceptionGroup) else first


if __name__ == "__main__":
    main()
