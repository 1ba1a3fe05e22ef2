"""``tanvrit-compute agents ...`` against a real coordinator and agent: list, get, drain (waiting
for the running job, with progress on a terminal), resume, rm."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import pytest

from cli.agents import agent_id_for
from tests.cli_harness import PtyProcess, assert_clean_error, cli_command, cli_env, run_cli
from tests.procs import AgentProc, Coordinator, wait_for


@pytest.fixture(scope="module")
def coord(quick_heartbeat_coordinator: Coordinator) -> Coordinator:
    return quick_heartbeat_coordinator


@pytest.fixture(scope="module")
def worker(coord: Coordinator, tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentProc]:
    proc = AgentProc(coord, tmp_path_factory.mktemp("worker"), labels=("role=worker",),
                     extra_args=("--name", "worker-1")).start()
    try:
        proc.agent_id  # noqa: B018 - waits until it has registered
        yield proc
    finally:
        proc.stop()


def _agent(coord: Coordinator, agent_id: str) -> dict[str, Any]:
    with coord.client() as http:
        agent: dict[str, Any] = http.get(f"/v0/agents/{agent_id}").json()
    return agent


def test_list_and_get(coord: Coordinator, worker: AgentProc, tmp_path: Path) -> None:
    agent_id = worker.agent_id
    listed = json.loads(run_cli(tmp_path, coord, "agents", "list", "--json").stdout)
    assert [agent["id"] for agent in listed["items"]] == [agent_id]
    table = run_cli(tmp_path, coord, "agents", "list").stdout.splitlines()
    assert table[0].split() == ["ID", "NAME", "STATE", "CPUS", "MEMORY", "GPUS", "JOBS", "HEARTBEAT", "VERSION"]
    assert table[1].split()[:3] == [agent_id, "worker-1", "READY"]

    got = json.loads(run_cli(tmp_path, coord, "agents", "get", agent_id, "--json").stdout)
    assert got["id"] == agent_id and got["labels"]["role"] == "worker"
    described = run_cli(tmp_path, coord, "agents", "get", agent_id).stdout
    assert "role=worker" in described and "READY" in described

    missing = run_cli(tmp_path, coord, "agents", "get", "agt_00000000000000000000000000")
    assert_clean_error(missing)
    assert "agent_not_found" in missing.stderr

    by_name = json.loads(run_cli(tmp_path, coord, "agents", "get", "worker-1", "--json").stdout)
    assert by_name["id"] == agent_id
    unknown = run_cli(tmp_path, coord, "agents", "get", "nobody")
    assert_clean_error(unknown)
    assert "no agent with id or name 'nobody'" in unknown.stderr


class _PagedAgents:
    """Answers GET /v0/agents two agents a page, as the coordinator pages them."""

    def __init__(self, names: list[str]) -> None:
        self.agents = [{"id": f"agt_{i}", "name": name} for i, name in enumerate(names)]

    def request(self, method: str, path: str, *, params: dict[str, Any]) -> dict[str, Any]:
        assert (method, path) == ("GET", "/v0/agents")
        start = int(params.get("cursor", 0))
        end = start + 2
        return {"items": self.agents[start:end], "nextCursor": str(end) if end < len(self.agents) else None}


def test_a_name_is_resolved_across_pages_and_an_ambiguous_one_is_refused() -> None:
    fake: Any = _PagedAgents(["a", "b", "c", "twin", "twin"])
    assert agent_id_for(fake, "c") == "agt_2"
    assert agent_id_for(fake, "agt_9") == "agt_9"  # ids are taken as they are
    with pytest.raises(click.ClickException, match=r"^2 agents are named 'twin' \(agt_3, agt_4\): give an id$"):
        agent_id_for(fake, "twin")


def test_drain_waits_for_the_running_job_then_resume(coord: Coordinator, worker: AgentProc, tmp_path: Path) -> None:
    agent_id = worker.agent_id
    marker = tmp_path / "release"
    with coord.client() as http:
        job_id = http.post("/v0/jobs", json={"type": "COMMAND", "labels": {"role": "worker"},
                                             "command": f"while [ ! -e {marker} ]; do sleep 0.1; done"}).json()["id"]
    wait_for(lambda: _agent(coord, agent_id)["currentJobs"] == [job_id], message="the job running on the agent")

    drain = PtyProcess(cli_command("agents", "drain", agent_id), cli_env(tmp_path, coord))
    try:
        drain.expect("DRAINING · waiting for 1 running job(s) to finish")
        assert drain.process.poll() is None  # still waiting: the job runs on
        marker.touch()
        assert drain.wait() == 0
    finally:
        drain.close()
    assert f"{agent_id} DRAINED" in drain.text
    assert _agent(coord, agent_id)["state"] == "DRAINED"

    again = json.loads(run_cli(tmp_path, coord, "agents", "drain", agent_id, "--json").stdout)
    assert again["state"] == "DRAINED"  # idempotent, returns at once
    resumed = run_cli(tmp_path, coord, "agents", "resume", agent_id)
    assert resumed.returncode == 0 and resumed.stdout.split() == [agent_id, "READY"]


def test_drain_detach_returns_at_once(coord: Coordinator, worker: AgentProc, tmp_path: Path) -> None:
    agent_id = worker.agent_id
    marker = tmp_path / "release"
    with coord.client() as http:
        job_id = http.post("/v0/jobs", json={"type": "COMMAND", "labels": {"role": "worker"},
                                             "command": f"while [ ! -e {marker} ]; do sleep 0.1; done"}).json()["id"]
    try:
        wait_for(lambda: _agent(coord, agent_id)["currentJobs"] == [job_id], message="the job running")
        result = run_cli(tmp_path, coord, "agents", "drain", "--detach", agent_id)
        assert result.returncode == 0 and result.stdout.split() == [agent_id, "DRAINING"]
    finally:
        marker.touch()
        run_cli(tmp_path, coord, "agents", "resume", agent_id)


def test_rm_refuses_a_busy_agent_unless_forced(coord: Coordinator, tmp_path: Path) -> None:
    victim = AgentProc(coord, tmp_path / "victim", labels=("victim=yes",)).start()
    try:
        # Read once: a deleted agent whose registration token is still valid registers afresh,
        # under a new id, in its agent.json.
        agent_id = victim.agent_id
        job_id = run_cli(tmp_path, coord, "jobs", "run", "--detach", "--label", "victim=yes", "--",
                         "sleep 120").stdout.strip()
        wait_for(lambda: _agent(coord, agent_id)["currentJobs"] == [job_id], message="victim busy")

        busy = run_cli(tmp_path, coord, "agents", "rm", agent_id)
        assert_clean_error(busy)
        assert "agent_busy" in busy.stderr and "HTTP 409" in busy.stderr

        forced = run_cli(tmp_path, coord, "agents", "rm", "--force", agent_id)
        assert forced.returncode == 0, forced.stderr
        assert forced.stdout == f"{agent_id} removed\n"
        gone = run_cli(tmp_path, coord, "agents", "get", agent_id)
        assert_clean_error(gone)
        assert "agent_not_found" in gone.stderr
    finally:
        victim.stop()
