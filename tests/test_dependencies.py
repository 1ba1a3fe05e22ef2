"""Dependencies (issue 16): the pure condition, then the rules over real HTTP and a real store
(chains, cascades, retried dependencies, refusals), then real agent processes."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
import trio.testing

from common.clock import parse_rfc3339, to_millis
from common.states import JobState
from coordinator.services.dependencies import condition_met
from tests.inproc import InProcess, running_coordinator
from tests.procs import AgentProc, Coordinator, wait_terminal
from tests.sim_agent import SimAgent

S, F, C, T, L = JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED, JobState.TIMED_OUT, JobState.LOST


@pytest.mark.parametrize(
    ("condition", "state", "expected"),
    [
        ("succeeded", S, True), ("succeeded", F, False), ("succeeded", C, False), ("succeeded", L, False),
        ("failed", S, False), ("failed", F, True), ("failed", T, True), ("failed", L, True), ("failed", C, True),
        ("finished", S, True), ("finished", F, True), ("finished", C, True),
        ("succeeded", JobState.QUEUED, None), ("failed", JobState.RUNNING, None), ("finished", JobState.ASSIGNED, None),
    ],
)
def test_condition_met(condition: str, state: JobState, expected: bool | None) -> None:
    assert condition_met(condition, state) is expected


@asynccontextmanager
async def coordinator_and_agent(tmp_path: Path) -> AsyncIterator[tuple[InProcess, httpx.AsyncClient, SimAgent]]:
    async with running_coordinator(tmp_path) as co, co.client() as api:
        agent = await SimAgent.register(co)
        try:
            yield co, api, agent
        finally:
            await agent.aclose()


async def submit(api: httpx.AsyncClient, *after: tuple[str, str], **fields: Any) -> str:
    body = {"type": "COMMAND", "command": "work", **fields}
    if after:
        body["dependsOn"] = [{"jobId": job_id, "condition": condition} for job_id, condition in after]
    response = await api.post("/v0/jobs", json=body)
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


async def view(api: httpx.AsyncClient, job_id: str) -> tuple[str, str | None]:
    found = (await api.get(f"/v0/jobs/{job_id}")).json()
    return found["state"], found["reason"]


async def claimed_id(agent: SimAgent) -> str | None:
    found = await agent.claim()
    return None if found is None else str(found["jobId"])


async def test_a_chain_runs_in_order(tmp_path: Path) -> None:
    async with coordinator_and_agent(tmp_path) as (_, api, agent):
        a = await submit(api)
        b = await submit(api, (a, "succeeded"))
        c = await submit(api, (b, "succeeded"))
        assert await view(api, b) == ("QUEUED", "waiting_for_dependencies")
        listed = (await api.get("/v0/jobs")).json()["items"]
        assert {item["id"]: item["dependsOn"] for item in listed} == {
            a: [], b: [{"jobId": a, "condition": "succeeded"}], c: [{"jobId": b, "condition": "succeeded"}]}
        for current, waiting in ((a, b), (b, c), (c, None)):
            assert await claimed_id(agent) == current
            assert await claimed_id(agent) is None  # the next one still waits
            await agent.run(current, 1, S, 0)
            if waiting is not None:
                assert (await view(api, waiting))[1] is None  # released: no longer waiting
        assert [await view(api, job_id) for job_id in (a, b, c)] == [("SUCCEEDED", None)] * 3


async def test_a_failed_dependency_cancels_its_dependents_transitively(tmp_path: Path) -> None:
    async with coordinator_and_agent(tmp_path) as (_, api, agent):
        a = await submit(api)
        b = await submit(api, (a, "succeeded"))
        c = await submit(api, (b, "succeeded"))
        on_failure = await submit(api, (b, "failed"))  # B ends without success: this one runs
        cleanup = await submit(api, (a, "finished"))
        both = await submit(api, (a, "finished"), (c, "succeeded"))
        assert await claimed_id(agent) == a
        await agent.run(a, 1, F, 1)
        for job_id in (b, c, both):
            assert await view(api, job_id) == ("CANCELLED", "dependency_failed")
        assert sorted([await claimed_id(agent), await claimed_id(agent)]) == sorted([on_failure, cleanup])
        assert await claimed_id(agent) is None
        cancelled = (await api.get(f"/v0/jobs/{b}")).json()
        assert cancelled["attempts"] == [] and cancelled["finishedAt"] is not None


async def test_a_retried_dependency_is_waited_for_until_its_final_outcome(tmp_path: Path) -> None:
    async with coordinator_and_agent(tmp_path) as (_, api, agent):
        a = await submit(api, retry={"attempts": 2})
        b = await submit(api, (a, "succeeded"))
        assert await claimed_id(agent) == a
        await agent.run(a, 1, F, 1)
        assert await view(api, a) == ("QUEUED", None)  # no backoff: claimable at once
        assert await view(api, b) == ("QUEUED", "waiting_for_dependencies")  # not decided by one attempt
        assert await claimed_id(agent) == a
        await agent.run(a, 2, S, 0)
        assert await claimed_id(agent) == b


async def test_cancelling_a_waiting_job_cancels_what_waits_for_it(tmp_path: Path) -> None:
    async with coordinator_and_agent(tmp_path) as (_, api, agent):
        a = await submit(api)
        b = await submit(api, (a, "succeeded"))
        c = await submit(api, (b, "succeeded"))
        d = await submit(api, (b, "finished"))
        assert (await api.post(f"/v0/jobs/{b}:cancel")).json()["state"] == "CANCELLED"
        assert await view(api, c) == ("CANCELLED", "dependency_failed")
        assert await view(api, d) == ("QUEUED", None)  # finished: a cancelled dependency counts
        assert sorted([await claimed_id(agent), await claimed_id(agent)]) == sorted([a, d])


async def test_dependencies_already_ended_at_submit_count_at_once(tmp_path: Path) -> None:
    async with coordinator_and_agent(tmp_path) as (_, api, agent):
        a = await submit(api)
        await claimed_id(agent)
        await agent.run(a, 1, S, 0)
        met = await submit(api, (a, "succeeded"))
        assert await view(api, met) == ("QUEUED", None)
        response = await api.post("/v0/jobs", json={"type": "COMMAND", "command": "x",
                                                   "dependsOn": [{"jobId": a, "condition": "failed"}]})
        assert response.status_code == 201 and response.json()["state"] == "CANCELLED"
        assert await view(api, response.json()["id"]) == ("CANCELLED", "dependency_failed")
        assert await claimed_id(agent) == met


async def test_a_released_dependent_wakes_a_waiting_claim(tmp_path: Path) -> None:
    async with coordinator_and_agent(tmp_path) as (co, api, agent):
        other = await SimAgent.register(co, name="other")
        try:
            a = await submit(api)
            b = await submit(api, (a, "succeeded"))
            assert await claimed_id(agent) == a
            taken: list[str | None] = []
            with trio.fail_after(20):
                async with trio.open_nursery() as nursery:
                    async def wait_for_work() -> None:
                        found = await other.claim(wait=25)
                        taken.append(None if found is None else found["jobId"])

                    nursery.start_soon(wait_for_work)
                    await trio.testing.wait_all_tasks_blocked(0.2)
                    await agent.run(a, 1, S, 0)
            assert taken == [b]
        finally:
            await other.aclose()


async def test_dependencies_must_exist_in_the_same_workspace(tmp_path: Path) -> None:
    async with running_coordinator(tmp_path) as co, co.client() as api:
        mine = await submit(api)
        created = await api.post("/v0/workspaces", json={"name": "elsewhere"})
        assert created.status_code == 201, created.text
        async with co.client(workspace=created.json()["id"]) as elsewhere:
            theirs = await submit(elsewhere)
            absent = "job_" + "0" * 26
            for job_id in (theirs, absent):
                response = await api.post("/v0/jobs", json={"type": "COMMAND", "command": "x",
                                                           "dependsOn": [{"jobId": mine}, {"jobId": job_id}]})
                assert response.status_code == 422
                error = response.json()["error"]
                # The same answer for a job of another workspace and one that does not exist.
                assert (error["code"], error["field"]) == ("dependency_not_found", "dependsOn.1.jobId")
                assert error["message"] == f"dependsOn.1.jobId: no job {job_id} in this workspace"
            # Nothing was stored by the refused submissions.
            assert len((await api.get("/v0/jobs")).json()["items"]) == 1


@pytest.mark.parametrize(
    ("fields", "status", "code", "field"),
    [
        ({"dependsOn": [{"jobId": "job_1"}]}, 422, "invalid_value", "dependsOn.0.jobId"),
        ({"dependsOn": [{"jobId": "job_" + "0" * 26, "condition": "afterok"}]}, 422, "invalid_value",
         "dependsOn.0.condition"),
        ({"dependsOn": [{"jobId": "job_" + "0" * 26}] * 2}, 422, "invalid_value", "dependsOn"),
        ({"dependsOn": [{"jobId": "job_" + f"{n:026d}"} for n in range(65)]}, 422, "invalid_value", "dependsOn"),
        ({"dependsOn": {"jobId": "job_" + "0" * 26}}, 400, "invalid_type", "dependsOn"),
        ({"dependsOn": [{"jobId": "job_" + "0" * 26, "extra": 1}]}, 400, "unknown_field", "dependsOn.0.extra"),
        ({"retry": {}}, 400, "missing_field", "retry.attempts"),
        ({"retry": {"attempts": 0}}, 422, "invalid_value", "retry.attempts"),
        ({"retry": {"attempts": 11}}, 422, "invalid_value", "retry.attempts"),
        ({"retry": {"attempts": "3"}}, 400, "invalid_type", "retry.attempts"),
        ({"retry": {"attempts": 2, "on": []}}, 422, "invalid_value", "retry.on"),
        ({"retry": {"attempts": 2, "on": ["CANCELLED"]}}, 422, "invalid_value", "retry.on.0"),
        ({"retry": {"attempts": 2, "on": ["LOST", "LOST"]}}, 422, "invalid_value", "retry.on"),
        ({"retry": {"attempts": 2, "exitCodes": [0]}}, 422, "invalid_value", "retry.exitCodes.0"),
        ({"retry": {"attempts": 2, "exitCodes": [256]}}, 422, "invalid_value", "retry.exitCodes.0"),
        ({"retry": {"attempts": 2, "on": ["LOST"], "exitCodes": [3]}}, 422, "invalid_value", "retry"),
        ({"retry": {"attempts": 2, "backoffSeconds": -1}}, 422, "invalid_value", "retry.backoffSeconds"),
        ({"retry": {"attempts": 2, "backoffSeconds": 86_401}}, 422, "invalid_value", "retry.backoffSeconds"),
        ({"retry": {"attempts": 2, "backoff": 3}}, 400, "unknown_field", "retry.backoff"),
    ],
)
async def test_bad_retry_and_dependency_values_are_refused(tmp_path: Path, fields: dict[str, Any], status: int,
                                                           code: str, field: str) -> None:
    async with running_coordinator(tmp_path) as co, co.client() as api:
        response = await api.post("/v0/jobs", json={"type": "COMMAND", "command": "x", **fields})
        assert response.status_code == status, response.text
        error = response.json()["error"]
        assert (error["code"], error["field"]) == (code, field), error


# --- real coordinator and agent processes -----------------------------------------------------

def _submit(api: httpx.Client, command: str, *after: tuple[str, str]) -> str:
    body: dict[str, Any] = {"type": "COMMAND", "command": command, "timeoutSeconds": 60,
                            "dependsOn": [{"jobId": job_id, "condition": condition} for job_id, condition in after]}
    response = api.post("/v0/jobs", json=body)
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def test_a_chain_runs_in_order_on_a_real_agent(coordinator: Coordinator, agents: list[AgentProc],
                                               tmp_path: Path) -> None:
    agents.append(AgentProc(coordinator, tmp_path / "agent").start())
    trail = tmp_path / "trail"
    with coordinator.client() as api:
        # The agent could run all three at once: only the dependencies keep them in order.
        a = _submit(api, f"sleep 0.5; echo A >> {trail}")
        b = _submit(api, f"echo B >> {trail}", (a, "succeeded"))
        c = _submit(api, f"echo C >> {trail}", (b, "succeeded"))
        jobs = [wait_terminal(api, job_id, timeout=60) for job_id in (a, b, c)]
        assert [job["state"] for job in jobs] == ["SUCCEEDED"] * 3
        assert trail.read_text() == "A\nB\nC\n"
        for earlier, later in itertools.pairwise(jobs):
            assert parse_rfc3339(later["startedAt"]) >= parse_rfc3339(earlier["finishedAt"])


def test_a_failed_dependency_cancels_its_dependents_on_a_real_agent(coordinator: Coordinator,
                                                                    agents: list[AgentProc], tmp_path: Path) -> None:
    agents.append(AgentProc(coordinator, tmp_path / "agent").start())
    ran = tmp_path / "ran"
    with coordinator.client() as api:
        a = _submit(api, "exit 1")
        b = _submit(api, f"touch {ran}", (a, "succeeded"))
        c = _submit(api, f"touch {ran}", (b, "succeeded"))
        handler = _submit(api, "echo handled", (a, "failed"))
        assert wait_terminal(api, a, timeout=60)["state"] == "FAILED"
        for job_id in (b, c):
            job = wait_terminal(api, job_id, timeout=30)
            assert (job["state"], job["reason"], job["attempts"]) == ("CANCELLED", "dependency_failed", [])
        assert wait_terminal(api, handler, timeout=60)["state"] == "SUCCEEDED"
        assert not ran.exists()


def test_a_dependency_in_another_workspace_is_refused(coordinator: Coordinator) -> None:
    with coordinator.client() as api:
        other = api.post("/v0/workspaces", json={"name": "other team"}).json()["id"]
        theirs = api.post("/v0/jobs", json={"type": "COMMAND", "command": "true"},
                          headers={"X-Compute-Workspace": other}).json()["id"]
        refused = api.post("/v0/jobs", json={"type": "COMMAND", "command": "true",
                                             "dependsOn": [{"jobId": theirs}]})
        assert refused.status_code == 422
        assert refused.json()["error"]["code"] == "dependency_not_found"
        assert api.get("/v0/jobs").json()["items"] == []


async def test_the_liveness_tick_keeps_waiting_for_dependencies(tmp_path: Path) -> None:
    async with coordinator_and_agent(tmp_path) as (co, api, _):
        a = await submit(api)
        b = await submit(api, (a, "succeeded"))
        assert await co.store.refresh_queued_reasons(to_millis(co.clock.now())) >= 0
        assert await view(api, b) == ("QUEUED", "waiting_for_dependencies")


async def test_a_follower_of_a_dependent_hears_at_once_that_it_was_cancelled(tmp_path: Path) -> None:
    async with coordinator_and_agent(tmp_path) as (_, api, agent):
        a = await submit(api)
        b = await submit(api, (a, "succeeded"))
        await claimed_id(agent)
        lines: list[str] = []
        # Well inside the 15 s keep-alive after which a follower would look again by itself.
        with trio.fail_after(5):
            async with api.stream("GET", f"/v0/jobs/{b}/logs?follow=true") as stream, trio.open_nursery() as nursery:
                async def read() -> None:
                    async for line in stream.aiter_lines():
                        lines.append(line)

                nursery.start_soon(read)
                await trio.testing.wait_all_tasks_blocked(0.2)
                await agent.run(a, 1, F, 1)
        assert lines[:3] == ["event: end", "id: 0", 'data: {"state": "CANCELLED", "exitCode": null}']


async def test_a_held_job_has_no_queue_position(tmp_path: Path) -> None:
    async with coordinator_and_agent(tmp_path) as (co, api, agent):
        a = await submit(api)
        co.clock.advance(1)  # B is newer (positions count held jobs older than a job as ahead of it)
        b = await submit(api, (a, "succeeded"))
        assert (await api.get(f"/v0/jobs/{a}")).json()["position"] == 1
        assert (await api.get(f"/v0/jobs/{b}")).json()["position"] is None
        await claimed_id(agent)
        await agent.run(a, 1, S, 0)
        assert (await api.get(f"/v0/jobs/{b}")).json()["position"] == 1
