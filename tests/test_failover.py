"""Agents and the CLI with several coordinator URLs: a dead URL first, a live one second; an
answer lost after the request was applied. Real processes on loopback ports throughout."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
import trio

from agentd.client import CoordinatorClient, CoordinatorUnavailable
from agentd.config import AgentConfig, load_agent_config
from cli.api import ApiClient, Unreachable
from common.config import ConfigError
from common.protocol import HeartbeatRequest, RegisterRequest
from common.states import AgentState
from tests.cli_harness import run_cli
from tests.failover_servers import answering_url, dropping_proxy, refused_url
from tests.procs import AgentProc, Coordinator, wait_terminal

JOB = {"type": "COMMAND", "command": "echo from-the-second-url", "timeoutSeconds": 30, "labels": {"arch": "arm64"}}


def test_agent_given_a_dead_url_first_registers_heartbeats_and_runs_jobs_on_the_second(
        coordinator: Coordinator, agents: list[AgentProc], tmp_path: Path) -> None:
    with refused_url() as dead:
        proc = AgentProc(coordinator, tmp_path / "agent", labels=("arch=arm64",), urls=(dead, coordinator.url))
        agents.append(proc.start())
        agent_id = proc.agent_id
        with coordinator.client() as api:
            job = api.post("/v0/jobs", json=JOB).json()
            done = wait_terminal(api, job["id"])
            assert (done["state"], done["agentId"]) == ("SUCCEEDED", agent_id)
            # The log arrived through the spool's uplink, the state through heartbeats.
            assert api.get(f"/v0/jobs/{job['id']}/logs").text == "from-the-second-url\n"
            assert api.get(f"/v0/agents/{agent_id}").json()["state"] == "READY"
        # It said once that it moved, naming both URLs.
        moves = [line for line in proc.log().splitlines() if "using the next one" in line]
        assert len(moves) == 1 and dead in moves[0] and coordinator.url in moves[0], proc.log()


def test_agent_config_file_lists_coordinators(coordinator: Coordinator, agents: list[AgentProc],
                                              tmp_path: Path) -> None:
    with refused_url() as dead:
        config = tmp_path / "agentd.toml"
        config.write_text(f'[agent]\ncoordinator = ["{dead}", "{coordinator.url}/"]\n')
        # No --coordinator flag at all: only the file's list.
        proc = AgentProc(coordinator, tmp_path / "agent", labels=("arch=arm64",),
                         extra_args=("--config", str(config)), urls=("",))
        agents.append(proc.start())
        with coordinator.client() as api:
            job = api.post("/v0/jobs", json=JOB).json()
            assert wait_terminal(api, job["id"])["state"] == "SUCCEEDED"


def test_agent_config_takes_one_url_a_comma_list_or_a_list(tmp_path: Path) -> None:
    base = {"registration_token": "tcp_reg_x", "data_dir": tmp_path}
    single = load_agent_config(None, {**base, "coordinator": "http://a:1/"})
    assert (single.coordinator, single.coordinator_urls) == ("http://a:1", ["http://a:1"])
    listed = load_agent_config(None, {**base, "coordinator": ["http://a:1,http://b:2", "http://c:3", "http://a:1"]})
    assert listed.coordinator_urls == ["http://a:1", "http://b:2", "http://c:3"]
    config = tmp_path / "agentd.toml"
    config.write_text('[agent]\ncoordinator = "http://a:1, http://b:2"\n')
    assert load_agent_config(config, {**base}).coordinator_urls == ["http://a:1", "http://b:2"]
    with pytest.raises(ConfigError, match=r"^coordinator 'a:1' is not an http:// or https:// URL$"):
        load_agent_config(None, {**base, "coordinator": ["http://b:2", "a:1"]})
    config.write_text("[agent]\ncoordinator = [1]\n")
    with pytest.raises(ConfigError, match=r"^coordinator must be a URL or a list of URLs, not 1$"):
        load_agent_config(config, {**base})
    assert AgentConfig(coordinator="http://a:1", **base).coordinator_urls == ["http://a:1"]


def test_cli_given_a_dead_url_first_runs_a_job_on_the_second(coordinator: Coordinator, agents: list[AgentProc],
                                                             tmp_path: Path) -> None:
    agents.append(AgentProc(coordinator, tmp_path / "agent", labels=("arch=arm64",)).start())
    with refused_url() as dead:
        result = run_cli(tmp_path / "home", coordinator, "--url", dead, "--url", coordinator.url,
                         "jobs", "run", "--label", "arch=arm64", "--", "echo", "via-failover")
        assert (result.returncode, result.stdout) == (0, "via-failover\n"), result.stderr
        listed = run_cli(tmp_path / "home", coordinator, "--json", "jobs", "list",
                         env={"TANVRIT_COMPUTE_URL": f"{dead},{coordinator.url}"})
        assert listed.returncode == 0, listed.stderr
        assert len(json.loads(listed.stdout)["items"]) == 1


def test_cli_jobs_run_resent_after_a_lost_answer_creates_the_job_once(coordinator: Coordinator,
                                                                     tmp_path: Path) -> None:
    with dropping_proxy(coordinator.url) as proxy:
        result = run_cli(tmp_path / "home", coordinator, "--json", "--url", f"{proxy.url},{coordinator.url}",
                         "jobs", "run", "--detach", "--", "true")
        assert result.returncode == 0, result.stderr
        printed = json.loads(result.stdout)
        # The first replica applied the POST and its answer was lost; the second got the same key.
        [(method, path, key)] = proxy.seen
        assert (method, path) == ("POST", "/v0/jobs") and key and key.startswith("cli-")
    with coordinator.client() as api:
        items = api.get("/v0/jobs").json()["items"]
    assert [job["id"] for job in items] == [printed["id"]]


def test_cli_post_without_a_key_is_not_resent_after_a_lost_answer(coordinator: Coordinator) -> None:
    with dropping_proxy(coordinator.url) as proxy:
        client = ApiClient([proxy.url, coordinator.url], coordinator.token)
        try:
            with pytest.raises(Unreachable, match=r"not re-sent elsewhere: POST without an Idempotency-Key"):
                client.request("POST", "/v0/jobs", json_body=JOB)
            assert len(proxy.seen) == 1
            # Next time it starts at the URL after the one that failed, and stays there.
            assert client.base_url == coordinator.url
            assert len(client.request("GET", "/v0/jobs")["items"]) == 1
        finally:
            client.close()


def test_agent_registration_is_not_resent_after_a_lost_answer(coordinator: Coordinator) -> None:
    async def main() -> None:
        with dropping_proxy(coordinator.url) as proxy:
            client = CoordinatorClient([proxy.url, coordinator.url])
            try:
                request = RegisterRequest.model_validate(_registration())
                with pytest.raises(CoordinatorUnavailable):
                    await client.register(coordinator.registration_token, request)
                assert len(proxy.seen) == 1 and client.current_url == coordinator.url
            finally:
                await client.aclose()
        with coordinator.client() as api:
            assert len(api.get("/v0/agents").json()["items"]) == 1

    trio.run(main)


def test_agent_held_heartbeat_is_not_resent_after_a_lost_answer(coordinator: Coordinator) -> None:
    async def main() -> None:
        with dropping_proxy(coordinator.url) as proxy:
            direct = CoordinatorClient([coordinator.url])
            try:
                registered = await direct.register(coordinator.registration_token,
                                                   RegisterRequest.model_validate(_registration()))
            finally:
                await direct.aclose()
            client = CoordinatorClient([proxy.url, coordinator.url])
            client.set_token(registered.agentToken)
            try:
                held = HeartbeatRequest(state=AgentState.READY, runningJobs=[], waitSeconds=5)
                with pytest.raises(CoordinatorUnavailable):
                    await client.heartbeat(held)
                assert [path for _, path, _ in proxy.seen] == ["/agent/v0/heartbeat"]
                assert client.current_url == coordinator.url
                # A fresh beat goes to the next URL, where it is answered.
                assert (await client.heartbeat(held.model_copy(update={"waitSeconds": 0}))).heartbeatIntervalSeconds
            finally:
                await client.aclose()

    trio.run(main)


def _registration() -> dict[str, object]:
    return {"name": "failover", "labels": {}, "capacity": {"cpus": 1, "memoryMb": 512, "gpus": 0}, "version": "t"}


def test_clients_report_every_url_when_none_answers(tmp_path: Path) -> None:
    with refused_url() as first, refused_url() as second:
        result = run_cli(tmp_path / "home", None, "--url", f"{first},{second}", "--token", "tcp_pat_x", "jobs", "list")
        assert result.returncode == 2 and "Traceback" not in result.stderr
        assert f"no coordinator of {first}, {second} answered" in result.stderr

        async def main() -> None:
            client = CoordinatorClient(f"{first},{second}", transport=httpx.AsyncHTTPTransport())
            try:
                with pytest.raises(CoordinatorUnavailable, match=r"^no coordinator answered; last: "):
                    await client.heartbeat(_beat())
            finally:
                await client.aclose()

        trio.run(main)


def _beat() -> HeartbeatRequest:
    return HeartbeatRequest(state=AgentState.READY)


@pytest.mark.parametrize("status", [502, 503, 504])
def test_clients_move_past_a_url_answering_a_gateway_error(coordinator: Coordinator, status: int) -> None:
    with answering_url(status) as failing:
        client = ApiClient([failing, coordinator.url], coordinator.token)
        try:
            # A POST with a key and a GET both go on to the live coordinator; it stays there.
            created = client.request("POST", "/v0/jobs", json_body=JOB, headers={"Idempotency-Key": f"k{status}"})
            assert client.base_url == coordinator.url
            assert client.request("GET", f"/v0/jobs/{created['id']}")["id"] == created["id"]
        finally:
            client.close()

        async def main() -> None:
            agent = CoordinatorClient([failing, coordinator.url])
            try:
                request = RegisterRequest.model_validate(_registration())
                # Registration is not re-sent after a gateway error: the agent retries later,
                # starting at the next URL.
                with pytest.raises(CoordinatorUnavailable, match=rf"answered {status}$"):
                    await agent.register(coordinator.registration_token, request)
                registered = await agent.register(coordinator.registration_token, request)
                agent.set_token(registered.agentToken)
                await agent.heartbeat(_beat())
                assert agent.current_url == coordinator.url
            finally:
                await agent.aclose()

        trio.run(main)
