"""``tanvrit-compute local ...``: the Hobby plan's local control plane (a coordinator and
agents on this machine, state in the user's data directory).

``local up`` is the supervisor: it starts ``python -m coordinator serve`` and N ``python -m
agentd run`` children, records itself in ``state.json`` (pid and process start time, so a
stale file or a recycled pid is recognised), and stops the children when it gets Ctrl-C or
SIGTERM, which is what ``local down`` sends from another terminal. It also saves a ``local``
profile in the user's CLI config, so that plain ``tanvrit-compute jobs run`` reaches it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType
from typing import Any

import click
import httpx
import psutil

from cli import output
from cli.api import ApiClient, Unreachable
from cli.context import CliContext, pass_context
from cli.jobs import follow_log
from common.errors import ApiError

DEMO_COMMAND = "echo 'hello from Tanvrit Compute'; uname -sm; echo \"running as job $TANVRIT_JOB_ID\""
LOCAL_PROFILE = "local"


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


def _process_started(pid: int) -> float | None:
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


def is_live(state: dict[str, Any], started: float | None) -> bool:
    """Whether ``state`` describes a supervisor that still runs: its pid exists and that process
    started when the state says (so a pid the kernel gave to another program does not count)."""
    recorded = state.get("startedAt")
    if started is None:
        return False
    return not isinstance(recorded, int | float) or abs(started - recorded) < 1.0


def _read_state() -> dict[str, Any] | None:
    """The running supervisor's state, or ``None`` (no file, unreadable, or stale)."""
    try:
        state: dict[str, Any] = json.loads(_state_file().read_text())
        pid = int(state["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return state if is_live(state, _process_started(pid)) else None


def _write_private(path: Path, payload: dict[str, Any]) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(payload, handle)
    os.chmod(path, 0o600)


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


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    """Whether ``host:port`` can be listened on now (port 0 always can)."""
    if port == 0:
        return True
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server does: TIME_WAIT is no conflict
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def _last_error(log_path: Path) -> str:
    try:
        lines = [line for line in log_path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    errors = [line for line in lines if "error" in line.lower()]
    # Tracebacks of exception groups indent their lines with "|"; the message is what matters.
    return (errors or lines or [""])[-1].strip().lstrip("|").strip()


def _wait_ready(url_file: Path, process: subprocess.Popen[bytes], log_path: Path, timeout: float = 60.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            reason = _last_error(log_path)
            raise click.ClickException(f"the coordinator exited during start-up: {reason or 'no reason given'} "
                                       f"(log: {log_path})")
        if url_file.exists():
            url = url_file.read_text().strip()
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    return url
            except httpx.TransportError:
                pass
        time.sleep(0.1)
    raise click.ClickException(f"the coordinator did not become ready within {timeout:.0f} s (log: {log_path})")


def _wait_agents(url: str, token: str, count: int, timeout: float = 60.0) -> list[dict[str, Any]]:
    """Wait until ``count`` agents are READY, so the user's first job does not sit queued."""
    client = ApiClient(url, token)
    deadline = time.monotonic() + timeout
    try:
        while True:
            agents: list[dict[str, Any]] = client.request("GET", "/v0/agents", params={"limit": 500})["items"]
            ready = [agent for agent in agents if agent["state"] == "READY"]
            if len(ready) >= count or time.monotonic() > deadline:
                return ready
            time.sleep(0.2)
    finally:
        client.close()


def _stop(processes: list[subprocess.Popen[bytes]], timeout: float = 20.0) -> None:
    for process in reversed(processes):  # agents first, so they can flush to the coordinator
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    for process in reversed(processes):
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _program() -> str:
    """How the user can type this program: its name if it is on PATH, else the path they ran
    (``make up`` runs ``.venv/bin/tanvrit-compute``, which is rarely on PATH)."""
    ran = sys.argv[0]
    if os.path.basename(ran) != "tanvrit-compute":
        return "tanvrit-compute"
    found = shutil.which("tanvrit-compute")
    if found and os.path.realpath(found) == os.path.realpath(ran):
        return "tanvrit-compute"
    return os.path.relpath(ran)


def _save_profile(ctx: CliContext, url: str, token: str) -> bool:
    """Store the ``local`` profile; make it the default only if there is no default yet.

    Returns whether ``local`` is the default profile now (so a second ``local up`` does not
    tell the user to pass ``--profile local`` when plain commands already use it)."""
    config = ctx.config
    profile = config.profile(LOCAL_PROFILE)
    profile.update(url=url, token=token)
    for key in ("refresh_token", "client_id", "client_secret", "access_token", "access_token_expires_at"):
        profile.pop(key, None)
    if config.default_profile is None:
        config.default_profile = LOCAL_PROFILE
    ctx.save_config()
    return config.default_profile == LOCAL_PROFILE


@click.group()
def local() -> None:
    """A coordinator and agents on this machine (Hobby plan)."""


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


# The agent's default job_uid_range (agentd/config.py), shared out among local agents.
_JOB_UIDS = (61184, 65519)


def _job_user_args(index: int, count: int) -> list[str]:
    """Jobs never run as root: run as root, the agents run them as the unprivileged
    tanvrit-job user (created if absent, as `tanvrit-agentd install` does), each job with a
    uid of its own, from a slice of the uid range that is this agent's alone (agents sharing a
    range could give two jobs one uid); run as a normal user, as that user (who owns the
    machine's jobs anyway). ``index`` counts from 1."""
    if os.geteuid() != 0:
        return []
    size = (_JOB_UIDS[1] - _JOB_UIDS[0] + 1) // count
    low = _JOB_UIDS[0] + (index - 1) * size
    return ["--create-job-user", "--job-uid-range", f"{low}-{low + size - 1}"]


@local.command("up")
@click.option("--port", type=click.IntRange(0, 65535), default=8470, show_default=True,
              help="Port for the coordinator (0: any free port).")
@click.option("--agents", "agent_count", type=click.IntRange(1, 64), default=1, show_default=True,
              help="How many agents to start (try multi-agent scheduling on one machine).")
@click.option("--demo", is_flag=True, help="Run a demo job once everything is up and show its output.")
@pass_context
def up(ctx: CliContext, port: int, agent_count: int, demo: bool) -> None:
    """Start a coordinator and agents here; keep them running until Ctrl-C (or `local down`).

    State (the SQLite store, agent spools, logs, credentials) lives in
    $TANVRIT_COMPUTE_HOME/local, else $XDG_DATA_HOME/tanvrit-compute/local, and survives restarts.
    """
    running = _read_state()
    if running is not None:
        raise click.ClickException(
            f"a local control plane is already running (pid {running['pid']}) at {running['url']}; "
            "use `tanvrit-compute local status` or `tanvrit-compute local down`"
        )
    if not port_free(port):
        raise click.ClickException(f"port {port} on 127.0.0.1 is already in use by another program; "
                                   "choose another with --port N (or --port 0 for any free port)")
    root = local_dir()
    root.mkdir(parents=True, exist_ok=True)
    _state_file().unlink(missing_ok=True)  # stale: its supervisor is gone (checked above)
    coordinator_dir = root / "coordinator"
    creds = _credentials(coordinator_dir)
    url_file = coordinator_dir / "coordinator.url"
    url_file.unlink(missing_ok=True)
    processes: list[subprocess.Popen[bytes]] = []
    failed = False
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        log_path = root / "coordinator.log"
        with log_path.open("ab") as log:
            processes.append(subprocess.Popen(
                [sys.executable, "-m", "coordinator", "serve", "--bind", f"127.0.0.1:{port}",
                 "--data-dir", str(coordinator_dir), "--allow-private-webhooks"],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            ))
        click.echo(f"Starting the coordinator (state in {root})...", err=True)
        url = _wait_ready(url_file, processes[0], log_path)
        for index in range(1, agent_count + 1):
            name = f"local-{index:02d}"
            with (root / f"{name}.log").open("ab") as log:
                processes.append(subprocess.Popen(
                    [sys.executable, "-m", "agentd", "run", "--coordinator", url, "--data-dir", str(root / name),
                     "--name", name, "--label", "plan=hobby", *_job_user_args(index, agent_count)],
                    stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                    # In the environment, not argv: any local user (and job) can read argv.
                    env={**os.environ, "TANVRIT_REGISTRATION_TOKEN": creds["registrationToken"]},
                ))
        _write_private(_state_file(), {"pid": os.getpid(), "startedAt": _process_started(os.getpid()), "url": url,
                                       "agents": agent_count, "workspaceId": creds["workspaceId"],
                                       "children": [process.pid for process in processes]})
        click.echo(f"Starting {agent_count} agent(s)...", err=True)
        ready = _wait_agents(url, creds["ownerToken"], agent_count)
        try:
            is_default: bool | None = _save_profile(ctx, url, creds["ownerToken"])
        except click.ClickException as exc:  # an unwritable config must not stop the control plane
            click.echo(f"warning: could not save the '{LOCAL_PROFILE}' profile: {exc.message}", err=True)
            is_default = None
        click.echo(f"Local control plane is up at {url}: {len(ready)} of {agent_count} agent(s) ready.")
        click.echo(f"  web console: {url}/ui/ (sign in with TANVRIT_COMPUTE_TOKEN below)")
        click.echo(f"  state and logs: {root}")
        if is_default is not None:
            click.echo(f"  CLI profile '{LOCAL_PROFILE}' saved in {ctx.config_file}"
                       + (" (the default profile)" if is_default else f"; use it with --profile {LOCAL_PROFILE}"))
        click.echo("  for other tools:")
        click.echo(f"    export TANVRIT_COMPUTE_URL={url}")
        click.echo(f"    export TANVRIT_COMPUTE_TOKEN={creds['ownerToken']}")
        if demo:
            client = ApiClient(url, creds["ownerToken"])
            created = client.request("POST", "/v0/jobs", json_body={
                "type": "COMMAND", "command": DEMO_COMMAND, "timeoutSeconds": 30, "name": "demo"})
            click.echo(f"\nDemo job {created['id']}:")
            job = follow_log(client, created["id"])
            click.echo(f"Demo job {job['state']} in {job['runtimeMs']} ms on agent {job['agentId']}.\n")
            client.close()
            prefix = _program() + ("" if is_default else f" --profile {LOCAL_PROFILE}")
            click.echo(f"Try: {prefix} jobs run -- uname -a")
        click.echo("Press Ctrl-C here, or run `tanvrit-compute local down`, to stop.")
        while all(process.poll() is None for process in processes):
            time.sleep(0.5)
        click.echo("a local process exited unexpectedly; stopping the rest (logs in "
                   f"{root})", err=True)
        failed = True
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second TERM must not cut the clean stop short
        click.echo("\nStopping the local control plane...", err=True)
        _stop(processes)
        _state_file().unlink(missing_ok=True)
        signal.signal(signal.SIGTERM, previous)
        click.echo("Stopped.", err=True)
    if failed:
        sys.exit(1)


@local.command("status")
@pass_context
def status(ctx: CliContext) -> None:
    """Say whether a local control plane runs, where, and how its agents are. Exits 1 if none runs."""
    state = _read_state()
    if state is None:
        if ctx.as_json:
            output.print_json({"running": False, "stateDir": str(local_dir())})
        else:
            click.echo(f"no local control plane is running (state dir {local_dir()})")
        sys.exit(1)
    agents: list[dict[str, Any]] = []
    problem = None
    creds_file = local_dir() / "credentials.json"
    try:
        creds = json.loads(creds_file.read_text())
        client = ApiClient(state["url"], creds["ownerToken"], timeout=5)
        try:
            agents = client.request("GET", "/v0/agents", params={"limit": 500})["items"]
        finally:
            client.close()
    except (OSError, ValueError, KeyError, ApiError, Unreachable) as exc:
        problem = str(exc)
    if ctx.as_json:
        output.print_json({"running": True, **state, "stateDir": str(local_dir()), "agentStates": agents,
                           "error": problem})
        return
    click.echo(f"running (pid {state['pid']}) at {state['url']} with {state['agents']} agent(s); "
               f"state in {local_dir()}")
    if problem:
        click.echo(f"but the coordinator does not answer: {problem}", err=True)
        sys.exit(1)
    for agent in agents:
        click.echo(f"  {agent['name']:<10} {output.state(agent['state']):<8} {agent['id']}  "
                   f"heartbeat {output.ago(agent['lastHeartbeatAt'])}")


@local.command("down")
@click.option("--timeout", type=float, default=60.0, show_default=True, help="Seconds to wait for the stop.")
def down(timeout: float) -> None:
    """Stop a local control plane started from another terminal (waits until it has stopped)."""
    state = _read_state()
    if state is None:
        click.echo("no local control plane is running")
        return
    pid = int(state["pid"])
    click.echo(f"stopping the local control plane (pid {pid}) at {state['url']}...", err=True)
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and _process_started(pid) is not None:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                break
        except psutil.Error:
            break
        time.sleep(0.1)
    if _read_state() is None and all(_process_started(child) is None for child in state.get("children", [])):
        click.echo("stopped")
    else:
        raise click.ClickException(f"still stopping after {timeout:.0f} s; check `tanvrit-compute local status`")
