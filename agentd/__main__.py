"""``tanvrit-agentd``: ``run`` the agent."""

from __future__ import annotations

import os
import shutil
import signal
import sys
from functools import partial
from pathlib import Path
from typing import NoReturn

import click
import trio

from agentd.config import DEFAULT_JOB_USER, coordinator_list, load_agent_config
from agentd.daemon import Agent, AgentFatal
from agentd.exits import EX_CONFIG
from agentd.install import UNIT_NAME, render_config, render_unit, systemctl_commands, write_private
from agentd.job_user import JobUserError, ensure_system_user
from common import HELP_SETTINGS, VERSION
from common.config import ConfigError, parse_key_values
from common.gc_tuning import tune_gc
from common.logs import configure_logging
from common.signals import run_until_signalled


@click.group(context_settings=HELP_SETTINGS)
@click.version_option(VERSION, "--version", "-V", prog_name="tanvrit-agentd")
def main() -> None:
    """The Tanvrit Compute agent: runs the jobs a coordinator places on this host.

    \b
    Start here:
      tanvrit-agentd run --coordinator URL --registration-token tcp_reg_... --data-dir DIR
      sudo tanvrit-agentd install --coordinator URL --registration-token tcp_reg_...
    """


@main.command()
@click.option("--config", "config_file", type=click.Path(path_type=Path), default=None, help="TOML config file.")
@click.option("--coordinator", "coordinators", multiple=True,
              help="Coordinator base URL, e.g. http://10.0.0.5:8470; repeat it (or give a comma list) for "
                   "replicas, tried in order.")
@click.option("--registration-token", default=None, envvar="TANVRIT_REGISTRATION_TOKEN",
              help="The workspace's agent registration token (or TANVRIT_REGISTRATION_TOKEN).")
@click.option("--data-dir", type=click.Path(path_type=Path), default=None, help="Spool, credentials, workdirs.")
@click.option("--name", default=None, help="Display name (default: hostname).")
@click.option("--label", "labels", multiple=True, help="Static label key=value; repeatable.")
@click.option("--cpus", type=float, default=None, help="CPUs to offer (default: all this process may use).")
@click.option("--memory-mb", type=int, default=None, help="Memory to offer, MiB (default: all).")
@click.option("--run-as", default=None,
              help="User jobs run as (default: tanvrit-job for a root agent, else the agent's own user).")
@click.option("--allow-root-jobs", is_flag=True, default=None, help="Let run_as be root (warned at every job start).")
@click.option("--work-dir", type=click.Path(path_type=Path), default=None,
              help="Where job work dirs go, outside the data dir (default: $TMPDIR/tanvrit-jobs-<hash>).")
@click.option("--job-uid-range", default=None,
              help="Uids (LO-HI) a root agent gives its jobs, one each (default 61184-65519; \"\": none).")
@click.option("--create-job-user", is_flag=True,
              help="Create the default job user (tanvrit-job) if absent, as install does (root only).")
@click.option("--log-json", is_flag=True, help="Log JSON lines.")
def run(config_file: Path | None, coordinators: tuple[str, ...], registration_token: str | None, data_dir: Path | None,
        name: str | None, labels: tuple[str, ...], cpus: float | None, memory_mb: int | None, run_as: str | None,
        allow_root_jobs: bool | None, work_dir: Path | None, job_uid_range: str | None, create_job_user: bool,
        log_json: bool) -> None:
    """Register with the coordinator and run jobs until SIGTERM or Ctrl-C."""
    configure_logging(json_lines=log_json)
    if create_job_user and run_as is None and os.geteuid() == 0:
        try:
            ensure_system_user(DEFAULT_JOB_USER)
        except JobUserError as exc:
            raise click.ClickException(str(exc)) from exc
    try:
        config = load_agent_config(config_file, {
            "coordinator": list(coordinators) or None, "registration_token": registration_token, "data_dir": data_dir,
            "name": name, "labels": parse_key_values(labels), "cpus": cpus, "memory_mb": memory_mb,
            "run_as": run_as, "allow_root_jobs": allow_root_jobs or None, "work_dir": work_dir,
            "job_uid_range": job_uid_range,
        })
    except ConfigError as exc:
        _fail(f"bad configuration: {exc}", EX_CONFIG)

    agent = Agent(config)
    tune_gc()
    try:
        trio.run(partial(run_until_signalled, agent.serve, on_second_signal=_stop_at_once))
    except BaseException as exc:
        fatal = _fatal_in(exc)
        if fatal is None:
            raise
        _fail(str(fatal), fatal.exit_code)


def _fatal_in(exc: BaseException) -> AgentFatal | None:
    """The ``AgentFatal`` that ended the run, also from inside trio's exception groups."""
    if isinstance(exc, AgentFatal):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = _fatal_in(inner)
            if found is not None:
                return found
    return None


def _fail(message: str, code: int) -> NoReturn:
    """One line on stderr, then the sysexits status (``agentd.exits``); never a traceback."""
    click.echo(f"tanvrit-agentd: {message}", err=True)
    sys.exit(code)


def _stop_at_once(signum: int) -> None:
    """A second SIGTERM/SIGINT during a graceful stop: exit now. Jobs run in sessions of their
    own and survive; the spool is durable, and the next start re-adopts them."""
    name = signal.Signals(signum).name
    os.write(2, f"tanvrit-agentd: second {name}, stopping at once; running jobs are re-adopted at the next "
                f"start\n".encode())
    os._exit(128 + signum)


def _exec_start() -> str:
    """How systemd should start this agent: the console script beside this interpreter if
    there is one (a virtualenv), else the one on PATH, else this interpreter with ``-m``."""
    beside = Path(sys.executable).parent / "tanvrit-agentd"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("tanvrit-agentd") or f"{sys.executable} -m agentd"


@main.command()
@click.option("--coordinator", "coordinators", multiple=True, required=True,
              help="Coordinator base URL; repeat it (or give a comma list) for replicas, tried in order.")
@click.option("--registration-token", required=True, envvar="TANVRIT_REGISTRATION_TOKEN",
              help="The workspace's agent registration token (or TANVRIT_REGISTRATION_TOKEN).")
@click.option("--data-dir", type=click.Path(path_type=Path), default=Path("/var/lib/tanvrit-agentd"),
              show_default=True, help="Spool and credentials (mode 0700).")
@click.option("--work-dir", type=click.Path(path_type=Path), default=Path("/var/lib/tanvrit-jobs"),
              show_default=True, help="Job work dirs, outside the data dir.")
@click.option("--config-path", type=click.Path(path_type=Path), default=Path("/etc/tanvrit/agentd.toml"),
              show_default=True, help="Where to write the TOML config.")
@click.option("--unit-dir", type=click.Path(path_type=Path), default=Path("/etc/systemd/system"),
              show_default=True, help="Where to write the systemd unit.")
@click.option("--run-as", default=DEFAULT_JOB_USER, show_default=True,
              help="Unprivileged user jobs run as; created (a system user, no login) if absent.")
@click.option("--name", default=None, help="Display name (default: hostname).")
@click.option("--label", "labels", multiple=True, help="Static label key=value; repeatable.")
@click.option("--force", is_flag=True, help="Overwrite an existing config or unit.")
def install(coordinators: tuple[str, ...], registration_token: str, data_dir: Path, work_dir: Path, config_path: Path,
            unit_dir: Path, run_as: str, name: str | None, labels: tuple[str, ...], force: bool) -> None:
    """Write the config and the systemd unit, and print the systemctl commands to start it."""
    try:
        label_map = parse_key_values(labels)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from exc
    unit_path = unit_dir / UNIT_NAME
    for path in (config_path, unit_path):
        if path.exists() and not force:
            raise click.ClickException(f"{path} exists; pass --force to overwrite it")
    if work_dir.resolve().is_relative_to(data_dir.resolve()):
        raise click.ClickException("--work-dir must be outside --data-dir: jobs must not reach the agent's credentials")
    try:
        urls = coordinator_list(list(coordinators)).split(",")
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from exc
    exec_start = _exec_start()
    config = render_config({"coordinator": urls[0] if len(urls) == 1 else urls,
                            "registration_token": registration_token,
                            "data_dir": str(data_dir), "work_dir": str(work_dir), "name": name, "run_as": run_as,
                            "labels": label_map or None})
    try:
        write_private(config_path, config, 0o600)
        write_private(unit_path, render_unit(exec_start, config_path), 0o644)
    except OSError as exc:
        raise click.ClickException(f"cannot write: {exc}") from exc
    click.echo(f"wrote {config_path} (mode 0600: it holds the registration token)")
    click.echo(f"wrote {unit_path}")
    try:
        if ensure_system_user(run_as):
            click.echo(f"created the system user {run_as} (no login, no home): jobs run as it")
    except JobUserError as exc:
        click.echo(f"warning: {exc}", err=True)
    click.echo("start it with:")
    for command in systemctl_commands():
        click.echo(f"  {command}")


if __name__ == "__main__":
    main()
