"""Coordinator replicas on one PostgreSQL database (tests/cluster.py): agents and submitters
spread over them; a replica killed with SIGKILL in the middle of a run; agentd moving to another
replica when its own dies. Every acknowledged job runs exactly once, usage is counted once per
attempt, and each webhook event is delivered."""

from __future__ import annotations

import collections
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from cli.api import ApiClient, Unreachable
from common.errors import ApiError
from coordinator.webhooks import DeliveryConfig
from tests.cluster import USAGE_CPU_SECONDS, Cluster, Progress, SimulatedAgent, running_cluster
from tests.procs import AgentProc, wait_for, wait_terminal
from tests.receiver import Receiver, running_receiver

TRUE_JOB = {"type": "COMMAND", "command": "true", "timeoutSeconds": 600}


@pytest.fixture
def three_replicas(postgres_url: str, tmp_path: Path) -> Iterator[Cluster]:
    with running_cluster(tmp_path / "cluster", 3, postgres_url) as cluster:
        yield cluster


def _all_jobs(api: httpx.Client) -> list[dict[str, Any]]:
    jobs: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        page = api.get("/v0/jobs", params={"limit": 200, **({"cursor": cursor} if cursor else {})}).json()
        jobs.extend(page["items"])
        cursor = page.get("nextCursor")
        if not cursor:
            return jobs


def _submit(cluster: Cluster, first: int, count: int, acknowledged: list[str], *, pause: float = 0.0) -> None:
    """``count`` jobs through the CLI's client, starting at replica ``first`` and failing over
    with the same Idempotency-Key; a job is acknowledged once a 201 came back (in a thread)."""
    client = ApiClient(cluster.urls_from(first), cluster.token)
    try:
        for n in range(count):
            key = f"cluster-{first}-{n}"
            for _ in range(50):
                try:
                    created = client.request("POST", "/v0/jobs", json_body=TRUE_JOB, headers={"Idempotency-Key": key})
                except (Unreachable, ApiError):
                    time.sleep(0.1)  # every URL failed at once (a replica dying): try the next round
                    continue
                acknowledged.append(created["id"])
                break
            if pause:
                time.sleep(pause)
    finally:
        client.close()


async def _run_agents(agents: list[SimulatedAgent], until_done: trio.Event) -> None:
    async with trio.open_nursery() as nursery:
        for agent in agents:
            nursery.start_soon(agent.run, until_done)


def _assert_each_ran_once(agents: list[SimulatedAgent], jobs: list[dict[str, Any]]) -> None:
    runs = collections.Counter(job_id for agent in agents for job_id, _ in agent.ran)
    twice = {job_id: n for job_id, n in runs.items() if n > 1}
    assert not twice, f"jobs run more than once: {twice}"
    assert set(runs) == {job["id"] for job in jobs}
    assert all(job["state"] == "SUCCEEDED" for job in jobs), collections.Counter(job["state"] for job in jobs)


async def _register_all(agents: list[SimulatedAgent]) -> None:
    async with trio.open_nursery() as nursery:
        for agent in agents:
            nursery.start_soon(agent.register)


def test_twenty_agents_over_three_replicas_run_two_hundred_jobs_exactly_once(three_replicas: Cluster) -> None:
    cluster = three_replicas
    progress = Progress()
    agents = [SimulatedAgent(f"sim-{i}", cluster.urls_from(i), cluster.registration_token, progress=progress)
              for i in range(20)]
    acknowledged: list[str] = []

    async def main() -> None:
        await _register_all(agents)
        done = trio.Event()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_run_agents, agents, done)
            async with trio.open_nursery() as submitters:
                for first in range(3):
                    submitters.start_soon(trio.to_thread.run_sync, _submit, cluster, first, 67 - (first == 2),
                                          acknowledged)
            with trio.fail_after(120):
                await progress.reached(200)
            done.set()
        for agent in agents:
            await agent.aclose()

    trio.run(main)
    assert len(acknowledged) == len(set(acknowledged)) == 200
    with cluster.client(1) as api:
        jobs = wait_for(lambda: _finished(api, 200), timeout=60, message="200 jobs SUCCEEDED")
    assert {job["id"] for job in jobs} == set(acknowledged)
    _assert_each_ran_once(agents, jobs)
    # Every replica handed out work: the agents were spread over them.
    assert sum(1 for agent in agents if agent.ran) > 3


def _finished(api: httpx.Client, count: int) -> list[dict[str, Any]] | None:
    jobs = _all_jobs(api)
    return jobs if len(jobs) >= count and all(job["state"] == "SUCCEEDED" for job in jobs) else None


def _webhook(cluster: Cluster, receiver: Receiver) -> None:
    with cluster.client(0) as api:
        answer = api.post("/v0/webhooks", json={"url": f"{receiver.url}/hook", "events": ["job.terminal"]})
        assert answer.status_code == 201, answer.text
        receiver.secrets.append(answer.json()["secret"])


def test_a_replica_killed_in_a_thousand_job_run_loses_and_doubles_nothing(three_replicas: Cluster) -> None:
    cluster = three_replicas
    progress = Progress()
    agents = [SimulatedAgent(f"sim-{i}", cluster.urls_from(i), cluster.registration_token, progress=progress)
              for i in range(6)]
    acknowledged: list[str] = []
    total = 1000
    with running_receiver() as receiver:
        _webhook(cluster, receiver)

        async def main() -> None:
            await _register_all(agents)
            done = trio.Event()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_run_agents, agents, done)
                async with trio.open_nursery() as submitters:
                    # Nine submitters, three per replica: submissions are round trips, not CPU.
                    for first in range(9):
                        share = total // 9 + (first < total % 9)
                        submitters.start_soon(trio.to_thread.run_sync, _submit, cluster, first, share, acknowledged)
                    # In the middle of the run (submissions, claims, events and deliveries all
                    # under way): SIGKILL the replica agents 1, 4 and submitters 1, 4, 7 start on.
                    with trio.fail_after(120):
                        await progress.reached(total // 3)
                    await trio.to_thread.run_sync(cluster.kill, 1)
                with trio.fail_after(180):
                    await progress.reached(len(acknowledged))
                done.set()
            for agent in agents:
                await agent.aclose()

        trio.run(main)
        assert len(set(acknowledged)) == len(acknowledged) == total
        with cluster.client(0) as api:
            jobs = wait_for(lambda: _finished(api, total), timeout=120, message=f"{total} jobs SUCCEEDED")
            # Every acknowledged job exists; a submission whose answer died with the replica may
            # have made one more job, which must have run once too (checked below).
            assert set(acknowledged) <= {job["id"] for job in jobs}
            _assert_each_ran_once(agents, jobs)
            # Usage: each attempt reported USAGE_CPU_SECONDS once, and a job had one attempt with usage.
            assert all(job["usage"]["cpuSeconds"] == pytest.approx(USAGE_CPU_SECONDS) for job in jobs)
            expected = USAGE_CPU_SECONDS * len(jobs)
            billed = wait_for(lambda: _billed_when(api, expected), timeout=60, message="usage billed")
            assert billed == pytest.approx(expected)
            # Webhooks: the terminal event of every job arrived; a second copy of an event only
            # where a replica died while delivering it (at-least-once, de-duplicated by event id).
            wait_for(lambda: len(_terminal_events(receiver)) >= len(jobs), timeout=120, message="webhooks delivered")
            events = _terminal_events(receiver)
            assert set(events) == {job["id"] for job in jobs}
            assert all(len(ids) == 1 for ids in events.values()), "one terminal event per job"
            # Deliveries are claimed (SKIP LOCKED) before they are sent, so a second copy can only
            # come from the killed replica: one it sent but died before recording, at most as many
            # as it may have in flight to one endpoint.
            accepted = [item.event_id for item in receiver.requests if item.status < 300]
            copies = len(accepted) - len(set(accepted))
            in_flight = DeliveryConfig().per_endpoint_concurrency
            assert copies <= in_flight, f"{copies} duplicate deliveries, more than the {in_flight} a dying replica " \
                                        "can leave sent but unrecorded"
            assert not receiver.bad_signatures


def _billed_when(api: httpx.Client, expected: float) -> float | None:
    cpu = float(api.get("/v0/billing/usage").json()["cpuSeconds"])
    return cpu if cpu >= expected - 1e-6 else None


def _terminal_events(receiver: Receiver) -> dict[str, set[str]]:
    """Job id -> the distinct event ids of its job.terminal deliveries."""
    events: dict[str, set[str]] = collections.defaultdict(set)
    for item in receiver.delivered("/hook"):
        if item.event["type"] == "job.terminal":
            events[item.event["data"]["id"]].add(item.event_id)
    return events


def test_agentd_moves_to_another_replica_when_its_coordinator_is_killed(postgres_url: str, tmp_path: Path,
                                                                      agents: list[AgentProc]) -> None:
    with running_cluster(tmp_path / "cluster", 2, postgres_url) as cluster:
        gate = tmp_path / "go"
        proc = AgentProc(cluster.replicas[0], tmp_path / "agent", labels=("arch=arm64",), urls=tuple(cluster.urls))
        agents.append(proc.start())
        agent_id = proc.agent_id
        # The first job goes through replica 0, where the agent's claim waits (its first URL).
        with cluster.client(0) as first, cluster.client(1) as api:
            script = f"echo before; while [ ! -e {gate} ]; do sleep 0.05; done; echo after"
            job = first.post("/v0/jobs", json={"type": "COMMAND", "command": script, "timeoutSeconds": 120}).json()
            wait_for(lambda: "before" in api.get(f"/v0/jobs/{job['id']}/logs").text, message="job running")
            # The agent talks to replica 0 (first in its list); kill it mid-job.
            cluster.kill(0)
            gate.touch()
            # The spooled events (log, finished) reach replica 1, and the agent claims there.
            done = wait_terminal(api, job["id"], timeout=60)
            assert (done["state"], done["agentId"]) == ("SUCCEEDED", agent_id)
            assert api.get(f"/v0/jobs/{job['id']}/logs").text == "before\nafter\n"
            second = api.post("/v0/jobs", json={"type": "COMMAND", "command": "echo again", "timeoutSeconds": 60})
            assert wait_terminal(api, second.json()["id"], timeout=60)["state"] == "SUCCEEDED"
            # Heartbeats go on: the agent stays READY past the grace it would have had to miss.
            assert api.get(f"/v0/agents/{agent_id}").json()["state"] == "READY"
        assert proc.process is not None and proc.process.poll() is None
        proc.stop(signal.SIGTERM)
