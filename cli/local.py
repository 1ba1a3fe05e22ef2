"""``tanvrit-compute local ...``: the Hobby plan's local control plane (a coordinator and
agents on this machine, state in the user's data directory)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import click
import httpx

from cli.api import ApiClient
from cli.jobs import follow_log

DEMO_COMMAND = "echo 'hello from Tanvrit Compute'; uname -sm; echo \"running as job $TANVRIT_JOB_ID\""


def data_home() -> Path:
    explicit = os.environ.get("TANVRIT_COMPUTE_HOME")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "tanvrit-compute"


def local_dir() -> Path:
    return data_home() / "local"


def _state_file() -> Path:
    return local_dir() / "state.json"


def _read_state() -> dict[str, Any] | None:
    try:
        state: dict[str, Any] = json.loads(_state_file().read_text())
    except (OSError, ValueError):
        return None
    try:
        os.kill(int(state["pid"]), 0)
    except (OSError, KeyError, ValueError):
        return None  # the recorded supervisor is gone: stale
    return state


def _write_private(path: Path, payload: dict[str, Any]) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(payload, handle)


def _credentials(coordinator_dir: Path) -> dict[str, str]:
    creds_file = local_dir() / "credentials.json"
    if creds_file.exists():
        loaded: dict[str, str] = json.loads(creds_file.read_text())
        return loaded
    result = subprocess.run(
        [sys.executable, "-m", "coordinator", "init", "--data-dir", str(coordinator_dir), "--json"],
        capture_output=True, text=True, check=False,
    )
    if result.returncode != 0:
        raise click.ClickException(f"could not initialise the local coordinator: {result.stderr.strip()}")
    creds: dict[str, str] = json.loads(result.stdout)
    _write_private(creds_file, creds)
    return creds


def _wait_ready(url_file: Path, process: subprocess.Popen[bytes], timeout: float = 30.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise click.ClickException("the coordinator exited during start-up; see "
                                       f"{local_dir() / 'coordinator.log'}")
        if url_file.exists():
            url = url_file.read_text().strip()
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    return url
            except httpx.TransportError:
                pass
        time.sleep(0.1)
    raise click.ClickException("the coordinator did not become ready within 30 s")


def _stop(processes: list[subprocess.Popen[bytes]], timeout: float = 20.0) -> None:
    for process in reversed(processes):  # agents first, so they can flush to the coordinator
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@click.group()
def local() -> None:
    """Run a local control plane (Hobby plan): a coordinator and agents on this machine."""


@local.command("up")
@click.option("--port", type=int, default=8470, show_default=True, help="Port for the coordinator (0: any free).")
@click.option("--agents", "agent_count", type=click.IntRange(1, 64), default=1, show_default=True)
@click.option("--demo", is_flag=True, help="Run a demo job once everything is up and show its output.")
def up(port: int, agent_count: int, demo: bool) -> None:
    """Start a coordinator and agents; keep them running until Ctrl-C, then stop both cleanly."""
    running = _read_state()
    if running is not None:
        raise click.ClickException(
            f"a local control plane is already running (pid {running['pid']}) at {running['url']}; "
            "use `tanvrit-compute local status` or `local down`"
        )
    root = local_dir()
    root.mkdir(parents=True, exist_ok=True)
    coordinator_dir = root / "coordinator"
    creds = _credentials(coordinator_dir)
    url_file = coordinator_dir / "coordinator.url"
    url_file.unlink(missing_ok=True)
    processes: list[subprocess.Popen[bytes]] = []
    failed = False

    def on_term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    try:
        with (root / "coordinator.log").open("ab") as log:
            processes.append(subprocess.Popen(
                [sys.executable, "-m", "coordinator", "serve", "--bind", f"127.0.0.1:{port}",
                 "--data-dir", str(coordinator_dir), "--allow-private-webhooks"],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            ))
        url = _wait_ready(url_file, processes[0])
        for index in range(1, agent_count + 1):
            name = f"local-{index:02d}"
            with (root / f"{name}.log").open("ab") as log:
                processes.append(subprocess.Popen(
                    [sys.executable, "-m", "agentd", "run", "--coordinator", url, "--registration-token",
                     creds["registrationToken"], "--data-dir", str(root / name), "--name", name,
                     "--label", "plan=hobby"],
                    stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                ))
        _write_private(_state_file(), {"pid": os.getpid(), "url": url, "agents": agent_count,
                                       "workspaceId": creds["workspaceId"]})
        click.echo(f"Local control plane is up (state in {root}).")
        click.echo(f"  export TANVRIT_COMPUTE_URL={url}")
        click.echo(f"  export TANVRIT_COMPUTE_TOKEN={creds['ownerToken']}")
        click.echo(f"  agents: {agent_count}; logs in {root}/*.log. Press Ctrl-C to stop.")
        if demo:
            client = ApiClient(url, creds["ownerToken"])
            created = client.request("POST", "/v0/jobs", json_body={
                "type": "COMMAND", "command": DEMO_COMMAND, "timeoutSeconds": 30, "name": "demo"})
            click.echo(f"\nDemo job {created['id']}:")
            job = follow_log(client, created["id"])
            click.echo(f"Demo job {job['state']} in {job['runtimeMs']} ms on agent {job['agentId']}.\n")
            client.close()
        while all(process.poll() is None for process in processes):
            time.sleep(0.5)
        click.echo("a local process exited unexpectedly; stopping the rest", err=True)
        failed = True
    except KeyboardInterrupt:
        pass
    finally:
        click.echo("\nStopping the local control plane...", err=True)
        _stop(processes)
        _state_file().unlink(missing_ok=True)
        click.echo("Stopped.", err=True)
    if failed:
        sys.exit(1)


@local.command("status")
def status() -> None:
    """Say whether a local control plane runs, and where."""
    state = _read_state()
    if state is None:
        click.echo("no local control plane is running")
        sys.exit(1)
    click.echo(f"running (pid {state['pid']}) at {state['url']} with {state['agents']} agent(s); "
               f"state in {local_dir()}")


@local.command("down")
def down() -> None:
    """Stop a local control plane started from another terminal."""
    state = _read_state()
    if state is None:
        click.echo("no local control plane is running")
        return
    os.kill(int(state["pid"]), signal.SIGTERM)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and _read_state() is not None:
        time.sleep(0.2)
    click.echo("stopped" if _read_state() is None else "still stopping; check `local status`")
