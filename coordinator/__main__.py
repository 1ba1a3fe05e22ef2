"""``tanvrit-coordinator``: ``init`` a store, ``serve`` the API."""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path
from typing import Any

import click
import trio

from common import VERSION
from common.clock import SystemClock
from common.config import ConfigError, load_toml
from common.logs import configure_logging
from coordinator import billing, webhooks
from coordinator.bootstrap import InitResult, initialize
from coordinator.server import serve_coordinator
from coordinator.settings import Settings
from coordinator.store.sqlite import open_sqlite_store

_SETTINGS_KEYS = {
    "bind": str, "default_plan": str, "heartbeat_interval_seconds": float, "sse_keepalive_seconds": float,
}


def _settings(data_dir: Path, config_file: Path | None, **overrides: Any) -> Settings:
    values: dict[str, Any] = {}
    if config_file is not None:
        raw = load_toml(config_file)
        server = raw.get("server", {})
        for key, kind in _SETTINGS_KEYS.items():
            if key in server:
                if not isinstance(server[key], kind) and not (kind is float and isinstance(server[key], int)):
                    raise ConfigError(f"{config_file}: server.{key} must be a {kind.__name__}")
                values[key] = server[key]
        unknown = set(server) - set(_SETTINGS_KEYS)
        if unknown:
            raise ConfigError(f"{config_file}: unknown option(s) server.{', server.'.join(sorted(unknown))}")
        if "webhooks" in raw and "allow_private" in raw["webhooks"]:
            values["allow_private_webhooks"] = bool(raw["webhooks"]["allow_private"])
        values["billing"] = billing.config_from_toml(raw.get("billing", {}), str(config_file))
        values["webhook_delivery"] = webhooks.delivery_config_from_toml(raw.get("webhooks", {}), str(config_file))
    values.update({key: value for key, value in overrides.items() if value is not None})
    return Settings(data_dir=data_dir, **values)


@click.group()
@click.version_option(VERSION, prog_name="tanvrit-coordinator")
def main() -> None:
    """The Tanvrit Compute coordinator."""


@main.command()
@click.option("--data-dir", type=click.Path(path_type=Path), required=True, help="Where the SQLite store lives.")
@click.option("--plan", default="hobby", show_default=True,
              type=click.Choice(["hobby", "payg", "team", "enterprise"]), help="Plan of the first workspace.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def init(data_dir: Path, plan: str, as_json: bool) -> None:
    """Create the store, an owner, a workspace; print an owner PAT and a registration token once."""
    data_dir.mkdir(parents=True, exist_ok=True)

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
        settings = _settings(data_dir, config_file, bind=bind, allow_private_webhooks=allow_private_webhooks)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from exc

    def announce(result: InitResult) -> None:
        click.echo(json.dumps(result.as_json()) if init_json else result.as_text())
        sys.stdout.flush()

    async def run() -> None:
        stop = trio.Event()

        async def watch_signals() -> None:
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async for _ in signals:
                    stop.set()
                    return

        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch_signals)
            await serve_coordinator(settings, shutdown_trigger=stop.wait, on_init=announce)
            nursery.cancel_scope.cancel()

    try:
        trio.run(run)
    except OSError as exc:
        raise click.ClickException(f"cannot serve on {settings.bind}: {exc.strerror or exc}") from exc


if __name__ == "__main__":
    main()
