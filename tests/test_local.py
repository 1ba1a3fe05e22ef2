"""``tanvrit-compute local ...``: coordinator and agents on this machine, demo job, status,
``down`` from another process, a second ``up``, a stale state file, a port in use."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tests.cli_harness import assert_clean_error, cli_command, cli_env, run_cli
from tests.procs import wait_for


@pytest.fixture
def homes(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A config home and an environment whose data home is private to the test."""
    config_home = tmp_path / "config"
    return config_home, {"TANVRIT_COMPUTE_HOME": str(tmp_path / "data")}


def _dead_pid() -> int:
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


@pytest.fixture
def supervisor() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Collects `local up` processes and makes sure none outlives its test."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                for child in psutil.Process(process.pid).children(recursive=True):
                    child.kill()
                process.kill()
                process.wait()


def _start_up(config_home: Path, env: dict[str, str], out: Path, *args: str) -> subprocess.Popen[bytes]:
    with out.open("w") as handle:
        return subprocess.Popen(cli_command("local", "up", "--port", "0", *args), stdout=handle,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env={**cli_env(config_home), **env})


def test_two_agents_status_and_down_from_another_process(homes: tuple[Path, dict[str, str]], tmp_path: Path,
                                                         supervisor: list[subprocess.Popen[bytes]]) -> None:
    config_home, env = homes
    state_dir = Path(env["TANVRIT_COMPUTE_HOME"]) / "local"
    state_dir.mkdir(parents=True)
    # A supervisor that died without cleaning up left this behind.
    (state_dir / "state.json").write_text(json.dumps({"pid": _dead_pid(), "url": "http://127.0.0.1:1", "agents": 1}))
    stale = run_cli(config_home, None, "local", "status", env=env)
    assert stale.returncode == 1 and "no local control plane is running" in stale.stdout

    out = tmp_path / "up.txt"
    process = _start_up(config_home, env, out, "--agents", "2", "--demo")
    supervisor.append(process)
    wait_for(lambda: "Demo job SUCCEEDED" in out.read_text() or process.poll() is not None, timeout=90,
             message="demo job output")
    text = out.read_text()
    assert "hello from Tanvrit Compute" in text
    assert "2 of 2 agent(s) ready" in text
    assert "export TANVRIT_COMPUTE_TOKEN=tcp_pat_" in text

    status = run_cli(config_home, None, "local", "status", "--json", env=env)
    assert status.returncode == 0
    described = json.loads(status.stdout)
    assert described["running"] and described["agents"] == 2
    assert f"web console: {described['url']}/ui/" in text
    assert sorted(agent["name"] for agent in described["agentStates"]) == ["local-01", "local-02"]
    assert {agent["state"] for agent in described["agentStates"]} == {"READY"}

    # `local up` saved a default `local` profile: plain commands reach the local control plane.
    config = config_home / "tanvrit-compute" / "config.toml"
    assert config.stat().st_mode & 0o777 == 0o600
    agents = json.loads(run_cli(config_home, None, "agents", "list", "--json", env=env).stdout)
    assert len(agents["items"]) == 2
    hello = run_cli(config_home, None, "jobs", "run", "--", "echo via-profile", env=env)
    assert (hello.returncode, hello.stdout) == (0, "via-profile\n")

    second = run_cli(config_home, None, "local", "up", "--port", "0", env=env, timeout=30)
    assert_clean_error(second)
    assert "already running" in second.stderr and described["url"] in second.stderr

    children = psutil.Process(process.pid).children()
    assert len(children) == 3
    if os.geteuid() == 0:
        # Each agent hands its jobs uids from a slice of the range that is its own.
        argvs = [child.cmdline() for child in children]
        ranges = sorted(argv[argv.index("--job-uid-range") + 1] for argv in argvs if "--job-uid-range" in argv)
        assert ranges == ["61184-63351", "63352-65519"]
    down = run_cli(config_home, None, "local", "down", env=env, timeout=90)
    assert down.returncode == 0 and "stopped" in down.stdout
    assert process.wait(timeout=30) == 0
    assert "Stopped." in out.read_text()
    assert all(not child.is_running() or child.status() == psutil.STATUS_ZOMBIE for child in children)
    after = run_cli(config_home, None, "local", "status", env=env)
    assert after.returncode == 1
    assert run_cli(config_home, None, "local", "down", env=env).stdout.strip() == "no local control plane is running"
    assert (state_dir / "credentials.json").stat().st_mode & 0o777 == 0o600


def test_ctrl_c_stops_cleanly_and_state_survives(homes: tuple[Path, dict[str, str]], tmp_path: Path,
                                                 supervisor: list[subprocess.Popen[bytes]]) -> None:
    config_home, env = homes
    out = tmp_path / "up.txt"
    process = _start_up(config_home, env, out)
    supervisor.append(process)
    wait_for(lambda: "Press Ctrl-C" in out.read_text() or process.poll() is not None, timeout=90,
             message="local up ready")
    job_id = run_cli(config_home, None, "jobs", "run", "--", "echo kept", env=env).stderr.split()[1]
    children = psutil.Process(process.pid).children()
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=60) == 0
    assert "Stopped." in out.read_text()
    assert all(not child.is_running() or child.status() == psutil.STATUS_ZOMBIE for child in children)

    # Restarted, the same store and token: the job is still there.
    out2 = tmp_path / "up2.txt"
    again = _start_up(config_home, env, out2)
    supervisor.append(again)
    wait_for(lambda: "Press Ctrl-C" in out2.read_text() or again.poll() is not None, timeout=90,
             message="local up ready again")
    job = json.loads(run_cli(config_home, None, "jobs", "get", job_id, "--json", env=env).stdout)
    assert job["state"] == "SUCCEEDED"
    # The second `up` finds `local` already the default: no advice to pass --profile local.
    assert "(the default profile)" in out2.read_text() and "--profile local" not in out2.read_text()


def test_a_port_in_use_is_a_clear_message(homes: tuple[Path, dict[str, str]]) -> None:
    config_home, env = homes
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli(config_home, None, "local", "up", "--port", str(port), env=env, timeout=60)
    assert_clean_error(result)
    assert f"port {port} on 127.0.0.1 is already in use" in result.stderr and "--port" in result.stderr
    assert not (Path(env["TANVRIT_COMPUTE_HOME"]) / "local" / "state.json").exists()


def test_make_up_runs_local_up_with_the_demo() -> None:
    # The README's first Quickstart command; what `local up --demo` then does is tested above.
    root = Path(__file__).resolve().parent.parent
    plan = subprocess.run(["make", "-n", "up"], cwd=root, capture_output=True, text=True,
                          timeout=60, check=True).stdout
    assert ".venv/bin/tanvrit-compute local up --demo" in plan
