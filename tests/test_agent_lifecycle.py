"""The agent process at the edges of its life, against real coordinator processes: signals in
every phase, fatal conditions (one line, a sysexits status), a refused token, goodbye.

Each waits on a condition with a generous deadline, never on a sleep.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from agentd.exits import EX_CONFIG, EX_NOPERM, EX_NOUSER
from tests.cli_harness import fast_coordinator
from tests.procs import STARTED_AGENT_DIRS, AgentProc, Coordinator, wait_for, wait_terminal

LABELS = {"arch": "arm64"}
MARKER_SLEEP = "607.25"  # a job's sleep no other test on the machine runs


@pytest.fixture
def quick(tmp_path: Path) -> Iterator[Coordinator]:
    """A coordinator whose agents heartbeat every 0.3 s."""
    coordinator = fast_coordinator(tmp_path / "coordinator")
    try:
        yield coordinator
    finally:
        coordinator.stop()


def _agent(coordinator: Coordinator, data_dir: Path, **settings: Any) -> AgentProc:
    data_dir.mkdir(parents=True, exist_ok=True)
    config = data_dir.parent / f"{data_dir.name}.toml"
    config.write_text("[agent]\n" + "".join(f"{key} = {json.dumps(value)}\n" for key, value in settings.items()))
    return AgentProc(coordinator, data_dir, labels=("arch=arm64",), extra_args=("--config", str(config)))


def _submit(api: httpx.Client, command: str) -> str:
    response = api.post("/v0/jobs", json={"type": "COMMAND", "command": command, "labels": LABELS})
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def _gated(gate: Path) -> str:
    return f"echo before; while [ ! -e {gate} ]; do sleep 0.05; done; echo after"


def _agents_by_id(api: httpx.Client) -> dict[str, dict[str, Any]]:
    return {agent["id"]: agent for agent in api.get("/v0/agents").json()["items"]}


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _run_agent(args: list[str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    # An agent that stops at a fatal condition has already made its cgroup subtree: removed at
    # the session's end with every other agent's (tests/conftest.py).
    if "--data-dir" in args:
        STARTED_AGENT_DIRS.add(Path(args[args.index("--data-dir") + 1]))
    return subprocess.run([sys.executable, "-m", "agentd", "run", *args], capture_output=True, text=True,
                          timeout=timeout, check=False)


def _last_line(text: str) -> str:
    return text.strip().splitlines()[-1]


# --- signals --------------------------------------------------------------------------------
def test_sigterm_during_registration_against_an_unreachable_coordinator(tmp_path: Path) -> None:
    with subprocess.Popen(
        [sys.executable, "-m", "agentd", "run", "--coordinator", f"http://127.0.0.1:{_closed_port()}",
         "--registration-token", "tcp_reg_" + "x" * 40, "--data-dir", str(tmp_path / "agent")],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    ) as process:
        try:
            assert process.stdout is not None
            for line in process.stdout:
                if "will retry registration" in line:
                    break
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=20) == 0
            assert "Traceback" not in process.stdout.read()
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()


def test_sigterm_shows_draining_then_a_second_signal_stops_at_once(quick: Coordinator, agents: list[AgentProc],
                                                                   tmp_path: Path) -> None:
    gate = tmp_path / "go"
    data_dir = tmp_path / "agent"
    agent = _agent(quick, data_dir)
    agent.data_dir.mkdir(parents=True, exist_ok=True)
    agents.append(agent.start())
    with quick.client() as api:
        job_id = _submit(api, _gated(gate))
        wait_for(lambda: "before" in api.get(f"/v0/jobs/{job_id}/logs").text, message="job running")
        assert agent.process is not None
        agent.process.send_signal(signal.SIGTERM)
        # Finishing its job (shutdown = "finish"): shown DRAINING, not READY.
        wait_for(lambda: _agents_by_id(api)[agent.agent_id]["state"] == "DRAINING", message="agent DRAINING")
        agent.process.send_signal(signal.SIGINT)
        assert agent.process.wait(timeout=20) == 128 + signal.SIGINT
        log = agent.log()
        assert _last_line(log).startswith("tanvrit-agentd: second SIGINT, stopping at once")
        assert "Traceback" not in log
        # The job was left running; the next start re-adopts it and reports its end.
        agents.append(_agent(quick, data_dir).start())
        gate.touch()
        job = wait_terminal(api, job_id, timeout=60)
        assert job["state"] == "SUCCEEDED"
        assert api.get(f"/v0/jobs/{job_id}/logs").text == "before\nafter\n"


def test_a_clean_exit_says_goodbye(quick: Coordinator, agents: list[AgentProc], tmp_path: Path) -> None:
    agent = _agent(quick, tmp_path / "agent")
    agents.append(agent.start())
    with quick.client() as api:
        wait_for(lambda: _agents_by_id(api).get(agent.agent_id, {}).get("state") == "READY", message="agent READY")
        assert agent.stop(signal.SIGTERM) == 0
        # DOWN at once, not READY until its 30 s grace passes.
        assert _agents_by_id(api)[agent.agent_id]["state"] == "DOWN"
    assert "said goodbye" in agent.log()


# --- fatal conditions -----------------------------------------------------------------------
def test_fatal_conditions_print_one_line_and_exit_with_their_sysexits_code(quick: Coordinator,
                                                                          tmp_path: Path) -> None:
    base = ["--coordinator", quick.url, "--registration-token", quick.registration_token]
    bad_user = tmp_path / "bad-user.toml"
    bad_user.write_text('[agent]\nrun_as = "no-such-user-tanvrit"\n')
    result = _run_agent([*base, "--data-dir", str(tmp_path / "a1"), "--config", str(bad_user)])
    assert result.returncode == EX_NOUSER
    assert _last_line(result.stderr).startswith("tanvrit-agentd: run_as: no such user 'no-such-user-tanvrit'; ")
    assert "Traceback" not in result.stderr

    refused = _run_agent(["--coordinator", quick.url, "--registration-token", "tcp_reg_" + "y" * 40,
                          "--data-dir", str(tmp_path / "a2")])
    assert refused.returncode == EX_NOPERM
    assert _last_line(refused.stderr).startswith("tanvrit-agentd: the coordinator refused the registration token")
    assert "Traceback" not in refused.stderr

    bad_config = tmp_path / "bad.toml"
    bad_config.write_text('[agent]\nshutdown = "sometime"\n')
    config = _run_agent([*base, "--data-dir", str(tmp_path / "a3"), "--config", str(bad_config)])
    assert config.returncode == EX_CONFIG
    assert _last_line(config.stderr).startswith("tanvrit-agentd: bad configuration: ")
    assert len(config.stderr.strip().splitlines()) == 1


# --- a refused token ------------------------------------------------------------------------
def test_a_deleted_agent_stops_its_jobs_and_registers_again(quick: Coordinator, agents: list[AgentProc],
                                                            tmp_path: Path) -> None:
    agent = _agent(quick, tmp_path / "agent", kill_grace_seconds=1)
    agents.append(agent.start())
    with quick.client() as api:
        job_id = _submit(api, f"echo started; sleep {MARKER_SLEEP}")
        wait_for(lambda: "started" in api.get(f"/v0/jobs/{job_id}/logs").text, message="job running")
        first_id = agent.agent_id
        assert api.delete(f"/v0/agents/{first_id}", params={"force": "true"}).status_code == 204
        assert api.get(f"/v0/jobs/{job_id}").json()["state"] == "LOST"
        # The agent notices its token is refused, stops the job, and joins again as a new agent.
        again = wait_for(lambda: [a for a in _agents_by_id(api).values() if a["id"] != first_id
                                  and a["state"] == "READY"], timeout=60, message="registered again")
        assert agent.agent_id != first_id
        wait_for(lambda: not _marked_processes(), message="old job stopped")
        # And works: a new job runs on it.
        assert wait_terminal(api, _submit(api, "echo fine"), timeout=60)["agentId"] == again[0]["id"]
        assert agent.process is not None and agent.process.poll() is None


def test_a_deleted_agent_whose_registration_token_is_revoked_exits(quick: Coordinator, agents: list[AgentProc],
                                                                   tmp_path: Path) -> None:
    agent = _agent(quick, tmp_path / "agent")
    agents.append(agent.start())
    with quick.client() as api:
        agent_id = agent.agent_id
        wait_for(lambda: _agents_by_id(api).get(agent_id, {}).get("state") == "READY", message="agent READY")
        for token in api.get("/v0/registration-tokens").json()["items"]:
            assert api.delete(f"/v0/registration-tokens/{token['id']}").status_code == 204
        assert api.delete(f"/v0/agents/{agent_id}").status_code == 204
    assert agent.process is not None
    assert agent.process.wait(timeout=60) == EX_NOPERM
    assert _last_line(agent.log()).startswith(
        "tanvrit-agentd: the coordinator refused this agent's own token (agent deleted or token revoked), then "
        "the coordinator refused the registration token")
    assert not (tmp_path / "agent" / "agent.json").exists()


def _marked_processes() -> list[psutil.Process]:
    return [p for p in psutil.process_iter(["cmdline"]) if p.info["cmdline"] == ["sleep", MARKER_SLEEP]]


def test_after_an_outage_the_spool_ships_as_soon_as_a_heartbeat_gets_through(agents: list[AgentProc],
                                                                             tmp_path: Path) -> None:
    coordinator = fast_coordinator(tmp_path / "coordinator")
    try:
        agent = _agent(coordinator, tmp_path / "agent")
        agents.append(agent.start())
        gate = tmp_path / "go"
        with coordinator.client() as api:
            job_id = _submit(api, _gated(gate))
            wait_for(lambda: "before" in api.get(f"/v0/jobs/{job_id}/logs").text, message="job running")
        port = coordinator.url.rsplit(":", 1)[1]
        init = coordinator.init
        assert coordinator.stop() == 0
        gate.touch()  # the job ends during the outage: its result waits in the spool
        # Wait until the uplink's backoff has grown long (up to 30 s between tries).
        wait_for(lambda: _latest_retry((agent.data_dir / "agent.log").read_text()) >= 15, timeout=240, interval=0.2,
                 message="uplink backing off for 15 s or more")
        coordinator = Coordinator(tmp_path / "coordinator", extra_args=("--bind", f"127.0.0.1:{port}",
                                                                         "--config", str(tmp_path / "coordinator"
                                                                                         / "coordinator.toml")))
        coordinator.start()
        coordinator.init = init
        with coordinator.client() as api:
            # A heartbeat gets through within its 0.3 s interval, and the uplink ships at once,
            # not when its backoff ends.
            job = wait_terminal(api, job_id, timeout=8)
            assert job["state"] == "SUCCEEDED"
    finally:
        coordinator.stop()


def _latest_retry(log: str) -> float:
    """The latest backoff the uplink announced (``cannot ship events ... retry_in=S``)."""
    retries = [float(part.split("=", 1)[1]) for line in log.splitlines() if "cannot ship events" in line
               for part in line.split() if part.startswith("retry_in=")]
    return retries[-1] if retries else 0.0
