"""A new job wakes one waiting claim that can take it, not all of them (coordinator/notify.py),
and that wake is followed through until a claim that can run the job has had it."""

from __future__ import annotations

from contextlib import AsyncExitStack, ExitStack
from pathlib import Path
from typing import Any

import httpx
import trio
import trio.testing

from common.protocol import CapacityMsg, ClaimRequest
from coordinator.notify import Notifier, WaitingClaim
from tests.inproc import running_coordinator

FREE = {"cpus": 8, "memoryMb": 8192, "gpus": 0}
JOB = {"type": "COMMAND", "command": "true", "timeoutSeconds": 30}


def _claim(labels: dict[str, str] | None = None, cpus: float = 8) -> WaitingClaim:
    return WaitingClaim(labels or {}, {**FREE, "cpus": cpus}, None)


# --- the notifier alone ---------------------------------------------------------------------
def test_a_new_job_wakes_the_longest_waiting_claim_only() -> None:
    notifier = Notifier()
    first, second = _claim(), _claim()
    with notifier.waiting_claim("ws", first), notifier.waiting_claim("ws", second):
        notifier.job_submitted("ws", "job_1", {}, None)
        assert first.woken.is_set() and not second.woken.is_set()
        notifier.job_submitted("ws", "job_2", {}, None)  # the first has a job to settle: the next one
        assert second.woken.is_set()


def test_only_a_claim_that_can_run_the_job_is_woken() -> None:
    notifier = Notifier()
    gpu_less, pool_b, small = _claim({"pool": "a"}), _claim({"pool": "b"}), _claim({"pool": "b"}, cpus=1)
    with notifier.waiting_claim("ws", small), notifier.waiting_claim("ws", gpu_less), \
            notifier.waiting_claim("ws", pool_b):
        notifier.job_submitted("ws", "job_1", {"pool": "b"}, {"cpus": 4})
        assert [claim.woken.is_set() for claim in (small, gpu_less, pool_b)] == [False, False, True]
        notifier.job_submitted("ws", "job_2", {"pool": "c"}, None)  # nobody can: nobody is woken
        assert notifier.targeted_wakes == 1
        notifier.job_submitted("ws", "job_3", {}, None)
        assert notifier.targeted_wakes == 2 and small.woken.is_set()
    assert notifier.waiting_claims("ws") == 0


def test_a_claim_that_leaves_without_looking_passes_its_wake_on() -> None:
    notifier = Notifier()
    first, second = _claim(), _claim()
    with ExitStack() as first_waits:
        first_waits.enter_context(notifier.waiting_claim("ws", first))
        with notifier.waiting_claim("ws", second):
            notifier.job_submitted("ws", "job_1", {}, None)
            assert first.woken.is_set() and not second.woken.is_set()
            first_waits.close()  # its client went away before it looked
            assert second.woken.is_set() and [wake.job_id for wake in second.wakes] == ["job_1"]


def test_a_claim_that_took_another_job_passes_its_wake_on_and_one_that_found_none_settles() -> None:
    notifier = Notifier()
    first, second = _claim(), _claim()
    with notifier.waiting_claim("ws", first), notifier.waiting_claim("ws", second):
        notifier.job_submitted("ws", "job_1", {}, None)
        looked = first.begin_pass()
        notifier.settle(first, looked, "job_0")  # it got a job of higher priority
        assert second.woken.is_set() and [wake.job_id for wake in second.wakes] == ["job_1"]
        looked = second.begin_pass()
        notifier.settle(second, looked, None)  # taken meanwhile by someone else: settled
        assert second.wakes == [] and notifier.targeted_wakes == 2
        # Back to the first claim? It had that job already: never woken for it twice.
        notifier.job_submitted("ws", "job_2", {}, None)
        assert [wake.job_id for wake in first.wakes] == ["job_2"]


def test_a_wake_during_a_look_is_kept_for_the_next_one() -> None:
    notifier = Notifier()
    with notifier.waiting_claim("ws", _claim()) as claim:
        looked = claim.begin_pass()
        notifier.job_submitted("ws", "job_1", {}, None)  # committed after the look read the queue
        notifier.settle(claim, looked, None)
        assert claim.woken.is_set() and [wake.job_id for wake in claim.wakes] == ["job_1"]


# --- over HTTP ------------------------------------------------------------------------------
async def test_a_submission_makes_one_claim_look_at_the_store(tmp_path: Path) -> None:
    async with running_coordinator(tmp_path) as coord:
        agents = [await coord.register_agent(f"sim-{n}", cpus=8, memory_mb=8192) for n in range(6)]
        async with AsyncExitStack() as closing:
            for _, client in agents:
                await closing.enter_async_context(client)
            await _one_look_per_submission(coord, agents)


async def _one_look_per_submission(coord: Any, agents: list[tuple[str, httpx.AsyncClient]]) -> None:
    # A look at the store: a claim reads whether anything is queued, and claims (a write) only then.
    looks: list[str] = []
    claims: list[str] = []
    has_queued, claim_job = coord.store.has_queued, coord.store.claim_job

    async def looking(workspace_id: str) -> bool:
        looks.append(workspace_id)
        return await has_queued(workspace_id)

    async def claiming(agent_id: str, *args: Any) -> Any:
        claims.append(agent_id)
        return await claim_job(agent_id, *args)

    coord.store.has_queued = looking  # type: ignore[method-assign]
    coord.store.claim_job = claiming  # type: ignore[method-assign]
    answers: list[httpx.Response] = []
    body = ClaimRequest(free=CapacityMsg(cpus=8, memoryMb=8192, gpus=0), waitSeconds=30).model_dump_json()

    async def long_poll(client: httpx.AsyncClient) -> None:
        answers.append(await client.post("/agent/v0/claim", content=body,
                                         headers={"Content-Type": "application/json"}))

    async with trio.open_nursery() as nursery:
        for _, client in agents:
            nursery.start_soon(long_poll, client)
        with trio.fail_after(30):
            while coord.svc.notifier.waiting_claims(coord.workspace_id) < len(agents) or len(looks) < len(agents):
                await trio.testing.wait_all_tasks_blocked(0.01)
        assert claims == []  # nothing was queued: no claim wrote
        looks.clear()
        async with coord.client() as owner:
            created = await owner.post("/v0/jobs", json=JOB)
        assert created.status_code == 201
        with trio.fail_after(30):
            while not answers:
                await trio.testing.wait_all_tasks_blocked(0.01)
        await trio.testing.wait_all_tasks_blocked(0.05)  # any other claim woken would look by now
        assert [answer.json()["jobId"] for answer in answers] == [created.json()["id"]]
        assert len(looks) == 1 and len(claims) == 1, (looks, claims)
        nursery.cancel_scope.cancel()


async def test_the_claim_woken_is_one_that_can_run_the_job(tmp_path: Path) -> None:
    async with running_coordinator(tmp_path) as coord:
        pools = {"a": await coord.register_agent("in-a", labels={"pool": "a"}),
                 "b": await coord.register_agent("in-b", labels={"pool": "b"})}
        async with AsyncExitStack() as closing:
            for _, client in pools.values():
                await closing.enter_async_context(client)
            await _targeted(coord, pools)


async def _targeted(coord: Any, pools: dict[str, tuple[str, httpx.AsyncClient]]) -> None:
    answers: dict[str, httpx.Response] = {}
    body = ClaimRequest(free=CapacityMsg(cpus=4, memoryMb=8192, gpus=0), waitSeconds=30).model_dump_json()

    async def long_poll(pool: str, client: httpx.AsyncClient) -> None:
        answers[pool] = await client.post("/agent/v0/claim", content=body,
                                          headers={"Content-Type": "application/json"})

    async with trio.open_nursery() as nursery:
        for pool, (_, client) in pools.items():
            nursery.start_soon(long_poll, pool, client)
        with trio.fail_after(30):
            while coord.svc.notifier.waiting_claims(coord.workspace_id) < 2:
                await trio.testing.wait_all_tasks_blocked(0.01)
        async with coord.client() as owner:
            created = await owner.post("/v0/jobs", json={**JOB, "labels": {"pool": "b"}})
        with trio.fail_after(30):
            while "b" not in answers:
                await trio.testing.wait_all_tasks_blocked(0.01)
        assert answers["b"].json()["jobId"] == created.json()["id"]
        assert coord.svc.notifier.targeted_wakes == 1 and "a" not in answers
        nursery.cancel_scope.cancel()




async def test_a_draining_agent_is_not_offered_a_new_job(tmp_path: Path) -> None:
    async with running_coordinator(tmp_path) as coord:
        draining_id, draining = await coord.register_agent("draining")
        _, ready = await coord.register_agent("ready")
        async with draining, ready:
            async with coord.client() as owner:
                drained = await owner.post(f"/v0/agents/{draining_id}:drain")
            assert drained.status_code == 200, drained.text
            answers: dict[str, httpx.Response] = {}
            body = ClaimRequest(free=CapacityMsg(cpus=4, memoryMb=8192, gpus=0), waitSeconds=30).model_dump_json()

            async def long_poll(name: str, client: httpx.AsyncClient) -> None:
                answers[name] = await client.post("/agent/v0/claim", content=body,
                                                  headers={"Content-Type": "application/json"})

            async with trio.open_nursery() as nursery:
                nursery.start_soon(long_poll, "draining", draining)
                with trio.fail_after(30):
                    await trio.testing.wait_all_tasks_blocked(0.2)  # its claim reached its wait
                # The draining agent's claim waits, but not for a new job's wake.
                assert "draining" not in answers
                assert coord.svc.notifier.waiting_claims(coord.workspace_id) == 0
                nursery.start_soon(long_poll, "ready", ready)
                with trio.fail_after(30):
                    while coord.svc.notifier.waiting_claims(coord.workspace_id) < 1:
                        await trio.testing.wait_all_tasks_blocked(0.01)
                async with coord.client() as owner:
                    created = await owner.post("/v0/jobs", json=JOB)
                with trio.fail_after(30):
                    while "ready" not in answers:
                        await trio.testing.wait_all_tasks_blocked(0.01)
                assert answers["ready"].json()["jobId"] == created.json()["id"]
                nursery.cancel_scope.cancel()
