"""``tanvrit-agentd``: ``run`` the agent."""

from __future__ import annotations

import signal
from pathlib import Path

import click
import trio

from agentd.config import load_agent_config
from agentd.daemon import Agent, AgentFatal
from common import VERSION
from common.config import ConfigError, parse_key_values
from common.logs import configure_logging


@click.group()
@click.version_option(VERSION, prog_name="tanvrit-agentd")
def main() -> None:
    """The Tanvrit Compute agent."""


@main.command()
@click.option("--config", "config_file", type=click.Path(path_type=Path), default=None, help="TOML config file.")
@click.option("--coordinator", default=None, help="Coordinator base URL, e.g. http://10.0.0.5:8470.")
@click.option("--registration-token", default=None, envvar="TANVRIT_REGISTRATION_TOKEN",
              help="The workspace's agent registration token (or TANVRIT_REGISTRATION_TOKEN).")
@click.option("--data-dir", type=click.Path(path_type=Path), default=None, help="Spool, credentials, workdirs.")
@click.option("--name", default=None, help="Display name (default: hostname).")
@click.option("--label", "labels", multiple=True, help="Static label key=value; repeatable.")
@click.option("--cpus", type=float, default=None, help="CPUs to offer (default: all this process may use).")
@click.option("--memory-mb", type=int, default=None, help="Memory to offer, MiB (default: all).")
@click.option("--log-json", is_flag=True, help="Log JSON lines.")
def run(config_file: Path | None, coordinator: str | None, registration_token: str | None, data_dir: Path | None,
        name: str | None, labels: tuple[str, ...], cpus: float | None, memory_mb: int | None, log_json: bool) -> None:
    """Register with the coordinator and run jobs until SIGTERM or Ctrl-C."""
    configure_logging(json_lines=log_json)
    try:
        config = load_agent_config(config_file, {
            "coordinator": coordinator, "registration_token": registration_token, "data_dir": data_dir,
            "name": name, "labels": parse_key_values(labels), "cpus": cpus, "memory_mb": memory_mb,
        })
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from exc

    async def main_task() -> None:
        stop = trio.Event()

        async def watch_signals() -> None:
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async for _ in signals:
                    stop.set()
                    return

        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch_signals)
            await Agent(config).serve(stop)
            nursery.cancel_scope.cancel()

    try:
        trio.run(main_task)
    except AgentFatal as exc:
        raise click.ClickException(str(exc)) from exc


if __name__ == "__main__":
    main()
