"""Retries (issue 16): the pure decision, then the rules over real HTTP and a real store with
an injected clock (backoff, attempt limits, exit codes, cancel), then real agent processes."""

from __future__ import annotations

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
from coordinator.liveness import LivenessPolicy, liveness_tick
from coordinator.services.retries import RetryPolicy, should_retry
from tests.inproc import InProcess, running_coordinator
from tests.procs import AgentProc, Coordinator, wait_for, wait_terminal
from tests.receiver import running_receiver
from tests.sim_agent import SimAgent

FAILED, TIMED_OUT, LOST = JobState.FAILED, JobState.TIMED_OUT, JobState.LOST


@pytest.mark.parametrize(
    ("policy", "outcome", "exit_code", "failures", "cancelled", "expected"),
    [
        (None, FAILED, 1, 1, False, False),  # no policy: never
        (RetryPolicy(attempts=3), FAILED, 1, 1, False, True),
        (RetryPolicy(attempts=3), FAILED, 1, 2, False, True),
        (RetryPolicy(attempts=3), FAILED, 1, 3, False, False),  # the third failure was the last attempt
        (RetryPolicy(attempts=1), LOST, None, 1, False, False),  # 1: no retry
        (RetryPolicy(attempts=3), FAILED, 1, 1, True, False),  # its cancel was requested
        (RetryPolicy(attempts=3, on=frozenset({LOST})), FAILED, 1, 1, False, False),
        (RetryPolicy(attempts=3, on=frozenset({LOST})), LOST, None, 1, False, True),
        (RetryPolicy(attempts=3), TIMED_OUT, None, 1, False, True),
        (RetryPolicy(attempts=3), JobState.SUCCEEDED, 0, 0, False, False),
        (RetryPolicy(attempts=3), JobState.CANCELLED, None, 0, False, False),
        (RetryPolicy(attempts=3, exit_codes=frozenset({3})), FAILED, 3, 1, False, True),
        (RetryPolicy(attempts=3, exit_codes=frozenset({3})), FAILED, 4, 1, False, False),
        (RetryPolicy(attempts=3, exit_codes=frozenset({3})), FAILED, None, 1, False, False),  # could not start
        (RetryPolicy(attempts=3, exit_codes=frozenset({3})), LOST, None, 1, False, True),  # codes bind FAILED only
    ],
)
def test_should_retry(policy: RetryPolicy | None, outcome: JobState, exit_code: int | None, failures: int,
                      cancelled: bool, expected: bool) -> None:
    assert should_retry(policy, outcome, exit_code, failures=failures, cancel_requested=cancelled) is expected


def test_policy_round_trips_through_its_stored_form() -> None:
    policy = RetryPolicy(attempts=4, on=frozenset({FAILED, LOST}), exit_codes=frozenset({3, 7}), backoff_seconds=9)
    assert RetryPolicy.from_json(policy.to_json()) == policy
    assert policy.as_dict() == {"attempts": 4, "on": ["FAILED", "LOST"], "exitCodes": [3, 7], "backoffSeconds": 9}


# --- the rules, over HTTP, with the clock in the test's hands --------------------------------

@asynccontextmanager
async def coordinator_and_agent(tmp_path: Path) -> AsyncIterator[tuple[InProcess, httpx.AsyncClient, SimAgent]]:
    async with running_coordinator(tmp_path) as co, co.client() as api:
        agent = await SimAgent.register(co)
        try:
            yield co, api, agent
        finally:
            await agent.aclose()


async def submit(api: httpx.AsyncClient, **fields: Any) -> str:
    response = await api.post("/v0/jobs", json={"type": "COMMAND", "command": "work", **fields})
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


async def job(api: httpx.AsyncClient, job_id: str) -> dict[str, Any]:
    found: dict[str, Any] = (await api.get(f"/v0/jobs/{job_id}")).json()
    return found


async def test_backoff_is_respected_and_attempts_are_bounded(tmp_path: Path) -> None:
    async with coordinator_and_agent(tmp_path) as (co, api, agent):
        job_id = await submit(api, retry={"attempts": 3, "on": ["FAILED"], "backoffSeconds": 60})
        first = await agent.claim()
        assert first is not None and first["epoch"] == 1
        await agent.run(job_id, 1, FAILED, 3, cpu_seconds=1.5)
        failed_at = to_millis(co.clock.now())
        queued = await job(api, job_id)
        assert (queued["state"], queued["reason"]) == ("QUEUED", "waiting_for_retry")
        assert queued["notBefore"] is not None and queued["exitCode"] is None and queued["agentId"] is None
        assert to_millis_text(queued["notBefore"]) == failed_at + 60_000
        assert [(a["epoch"], a["state"], a["exitCode"]) for a in queued["attempts"]] == [(1, "FAILED", 3)]
        assert queued["retry"] == {"attempts": 3, "on": ["FAILED"], "exitCodes": [], "backoffSeconds": 60}

        # Not claimable inside the backoff, to the millisecond; claimable at its end, with a new epoch.
        assert await agent.claim() is None
        co.clock.advance(59.999)
        assert await agent.claim() is None
        co.clock.advance(0.001)
        second = await agent.claim()
        assert second is not None and (second["jobId"], second["epoch"]) == (job_id, 2)
        assert (await job(api, job_id))["reason"] is None
        await agent.run(job_id, 2, FAILED, 3, cpu_seconds=0.5)
        co.clock.advance(60)
        third = await agent.claim()
        assert third is not None and third["epoch"] == 3
        await agent.run(job_id, 3, FAILED, 3)
        # The third failure was the last of three attempts: the job is FAILED, for good.
        final = await job(api, job_id)
        assert (final["state"], final["exitCode"], final["notBefore"]) == ("FAILED", 3, None)
        assert [a["state"] for a in final["attempts"]] == ["FAILED", "FAILED", "FAILED"]
        assert final["usage"]["cpuSeconds"] == pytest.approx(2.0)  # every attempt's usage, summed
        co.clock.advance(3600)
        assert await agent.claim() is None


def to_millis_text(text: str) -> int:
    return to_millis(parse_rfc3339(text))


async def test_exit_codes_and_outcomes_outside_the_policy_are_final(tmp_path: Path) -> None:
    async with coordinator_and_agent(tmp_path) as (_, api, agent):
        by_code = await submit(api, retry={"attempts": 5, "exitCodes": [75]})
        await agent.claim()
        await agent.run(by_code, 1, FAILED, 1)
        assert (await job(api, by_code))["state"] == "FAILED"
        timed_out = await submit(api, retry={"attempts": 5, "on": ["LOST"]})
        await agent.claim()
        await agent.run(timed_out, 1, TIMED_OUT, None)
        assert (await job(api, timed_out))["state"] == "TIMED_OUT"
        retried = await submit(api, retry={"attempts": 2, "on": ["TIMED_OUT"]})
        await agent.claim()
        await agent.run(retried, 1, TIMED_OUT, None)
        assert (await job(api, retried))["state"] == "QUEUED"  # backoff 0: claimable at once
        again = await agent.claim()
        assert again is not None and (again["jobId"], again["epoch"]) == (retried, 2)


async def test_a_cancelled_job_is_never_retried(tmp_path: Path) -> None:
    async with coordinator_and_agent(tmp_path) as (co, api, agent):
        policy = {"attempts": 5, "backoffSeconds": 30}
        # Cancelled while it waits out its backoff: CANCELLED at once, never claimed again.
        waiting = await submit(api, retry=policy)
        await agent.claim()
        await agent.run(waiting, 1, FAILED, 1)
        assert (await api.post(f"/v0/jobs/{waiting}:cancel")).json()["state"] == "CANCELLED"
        # Running when cancelled, and its process failed before the agent stopped it: no retry.
        running = await submit(api, retry=policy)
        claimed = await agent.claim()
        assert claimed is not None and claimed["jobId"] == running
        await agent.start(running, 1)
        assert (await api.post(f"/v0/jobs/{running}:cancel")).json()["state"] == "RUNNING"
        await agent.finish(running, 1, FAILED, 1)
        assert (await job(api, running))["state"] == "FAILED"
        co.clock.advance(3600)
        assert await agent.claim() is None
        assert [a["state"] for a in (await job(api, waiting))["attempts"]] == ["FAILED"]


async def test_a_retry_wakes_a_waiting_claim(tmp_path: Path) -> None:
    async with coordinator_and_agent(tmp_path) as (co, api, agent):
        other = await SimAgent.register(co, name="other")
        try:
            job_id = await submit(api, retry={"attempts": 2})
            assert await agent.claim() is not None
            taken: list[dict[str, Any] | None] = []
            with trio.fail_after(20):
                async with trio.open_nursery() as nursery:
                    async def wait_for_work() -> None:
                        taken.append(await other.claim(wait=25))

                    nursery.start_soon(wait_for_work)
                    await trio.testing.wait_all_tasks_blocked(0.2)
                    await agent.run(job_id, 1, FAILED, 1)
            assert taken and taken[0] is not None and (taken[0]["jobId"], taken[0]["epoch"]) == (job_id, 2)
        finally:
            await other.aclose()


# --- real coordinator and agent processes -----------------------------------------------------

# About 0.3 s of CPU, so that every attempt has usage of its own to bill.
BURN = "python3 -c 'import time\nend = time.process_time() + 0.3\nwhile time.process_time() < end: pass'"


def test_a_retry_succeeds_on_the_second_attempt_with_both_attempts_billed(
        fast: Coordinator, agents: list[AgentProc], tmp_path: Path) -> None:
    agents.append(AgentProc(fast, tmp_path / "agent").start())
    marker = tmp_path / "first-attempt-ran"
    command = f"{BURN}; if [ -e {marker} ]; then echo second; else touch {marker}; echo first; exit 3; fi"
    with running_receiver() as receiver, fast.client() as api:
        hook = api.post("/v0/webhooks", json={"url": receiver.url + "/hook",
                                              "events": ["job.transitioned", "job.terminal"]})
        assert hook.status_code == 201, hook.text
        receiver.secrets.append(hook.json()["secret"])
        created = api.post("/v0/jobs", json={"type": "COMMAND", "command": command, "timeoutSeconds": 60,
                                             "retry": {"attempts": 2, "on": ["FAILED"], "exitCodes": [3],
                                                       "backoffSeconds": 1}})
        assert created.status_code == 201, created.text
        job_id = created.json()["id"]
        job = wait_terminal(api, job_id, timeout=90)
        assert (job["state"], job["exitCode"]) == ("SUCCEEDED", 0)
        assert api.get(f"/v0/jobs/{job_id}/logs").text == "first\nsecond\n"

        first, second = job["attempts"]
        assert (first["epoch"], first["state"], first["exitCode"]) == (1, "FAILED", 3)
        assert (second["epoch"], second["state"], second["exitCode"]) == (2, "SUCCEEDED", 0)
        # The backoff: the second attempt was claimed at least a second after the first failed.
        assert to_millis_text(second["assignedAt"]) - to_millis_text(first["finishedAt"]) >= 1000
        # Both attempts billed: each has its own usage, the job's is their sum, and so is the bill.
        assert first["usage"]["cpuSeconds"] > 0.1 and second["usage"]["cpuSeconds"] > 0.1
        total = first["usage"]["cpuSeconds"] + second["usage"]["cpuSeconds"]
        assert job["usage"]["cpuSeconds"] == pytest.approx(total)
        assert api.get("/v0/billing/usage").json()["cpuSeconds"] == pytest.approx(total, abs=1e-5)

        # Webhooks: job.transitioned for every change of both attempts, job.terminal once, last.
        def delivered() -> list[dict[str, Any]] | None:
            # In the order they came (in order per job), each once (delivery is at least once).
            events = list({request.event_id: request.event for request in receiver.requests}.values())
            return events if any(event["type"] == "job.terminal" for event in events) else None

        events = wait_for(delivered, message="job.terminal delivered")
        transitions = [(e["data"]["state"], e["data"]["reason"]) for e in events if e["type"] == "job.transitioned"]
        assert transitions == [("ASSIGNED", None), ("RUNNING", None), ("QUEUED", "waiting_for_retry"),
                               ("ASSIGNED", None), ("RUNNING", None), ("SUCCEEDED", None)]
        assert [e["type"] for e in events].count("job.terminal") == 1 and events[-1]["type"] == "job.terminal"
        retried = next(e["data"] for e in events if e["data"]["state"] == "QUEUED")
        assert [a["state"] for a in retried["attempts"]] == ["FAILED"] and retried["notBefore"] is not None
        # And the coordinator sent no other event (its record of attempts, once written, agrees).
        def attempted() -> set[str] | None:
            page = api.get(f"/v0/webhooks/{hook.json()['id']}/deliveries", params={"limit": 100}).json()["items"]
            sent = {attempt["eventId"] for attempt in page}
            return sent if len(sent) >= len(events) else None

        assert wait_for(attempted, message="delivery attempts recorded") == {event["id"] for event in events}


def test_a_cancelled_running_job_is_not_retried(coordinator: Coordinator, agents: list[AgentProc],
                                                tmp_path: Path) -> None:
    agents.append(AgentProc(coordinator, tmp_path / "agent").start())
    with coordinator.client() as api:
        created = api.post("/v0/jobs", json={"type": "COMMAND", "command": "echo started; sleep 120",
                                             "timeoutSeconds": 300, "retry": {"attempts": 5}})
        job_id = created.json()["id"]
        wait_for(lambda: "started" in api.get(f"/v0/jobs/{job_id}/logs").text, message="job running")
        assert api.post(f"/v0/jobs/{job_id}:cancel").status_code == 200
        job = wait_terminal(api, job_id, timeout=60)
        assert job["state"] == "CANCELLED"
        assert [(a["epoch"], a["state"]) for a in job["attempts"]] == [(1, "CANCELLED")]


async def test_a_lost_attempt_is_retried_under_a_new_epoch(tmp_path: Path) -> None:
    async with coordinator_and_agent(tmp_path) as (co, api, agent):
        job_id = await submit(api, retry={"attempts": 2, "on": ["LOST"]})
        assert await agent.claim() is not None
        await agent.start(job_id, 1)
        # The agent falls silent past its grace and lease: its job is lost, and retried.
        co.clock.advance(400)
        await liveness_tick(co.store, co.svc.notifier, to_millis(co.clock.now()), LivenessPolicy())
        queued = await job(api, job_id)
        # No backoff: it waits as any queued job, here for an agent (the only one is DOWN).
        assert (queued["state"], queued["reason"]) == ("QUEUED", "no_matching_agent")
        assert [(a["epoch"], a["state"], a["reason"]) for a in queued["attempts"]] == [(1, "LOST", "agent_lost")]
        successor = await SimAgent.register(co, name="successor")
        try:
            taken = await successor.claim()
            assert taken is not None and (taken["jobId"], taken["epoch"]) == (job_id, 2)
            await successor.run(job_id, 2, JobState.SUCCEEDED, 0)
        finally:
            await successor.aclose()
        final = await job(api, job_id)
        assert final["state"] == "SUCCEEDED"
        assert [a["state"] for a in final["attempts"]] == ["LOST", "SUCCEEDED"]


async def test_the_liveness_tick_keeps_the_reason_of_a_job_in_its_backoff(tmp_path: Path) -> None:
    async with coordinator_and_agent(tmp_path) as (co, api, agent):
        job_id = await submit(api, retry={"attempts": 2, "backoffSeconds": 30})
        await agent.claim()
        await agent.run(job_id, 1, FAILED, 1)
        await co.store.refresh_queued_reasons(to_millis(co.clock.now()))
        assert (await job(api, job_id))["reason"] == "waiting_for_retry"
        co.clock.advance(30)
        await co.store.refresh_queued_reasons(to_millis(co.clock.now()))
        assert (await job(api, job_id))["reason"] != "waiting_for_retry"  # now it waits like any job
