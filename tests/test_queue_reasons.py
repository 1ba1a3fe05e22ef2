"""Queued jobs say why they wait, through the API: at submit when no agent can take them, and
after each liveness tick as agents come, drain, go down, get busy or the workspace hits its
cap. An in-process coordinator with an injected clock: ticks are called, never waited for."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

from common.clock import ManualClock, to_millis
from common.protocol import CapacityMsg, ClaimRequest
from coordinator.liveness import LivenessPolicy, liveness_tick
from coordinator.meter import run_tick
from tests.inproc import InProcess, open_inprocess

JSON = {"Content-Type": "application/json"}


async def _submit(api: httpx.AsyncClient, labels: dict[str, str], **extra: Any) -> str:
    created = await api.post("/v0/jobs", json={"type": "COMMAND", "command": "true", "labels": labels, **extra})
    assert created.status_code == 201, created.text
    return str(created.json()["id"])


async def _reasons(api: httpx.AsyncClient, *ids: str) -> list[tuple[str, str | None]]:
    jobs = [(await api.get(f"/v0/jobs/{job_id}")).json() for job_id in ids]
    return [(job["state"], job["reason"]) for job in jobs]


async def _tick(co: InProcess) -> None:
    await liveness_tick(co.store, co.svc.notifier, to_millis(co.clock.now()), LivenessPolicy())


async def test_every_queued_reason_through_the_api(tmp_path: Path) -> None:
    clock = ManualClock()
    async with open_inprocess(tmp_path, clock=clock, plan="payg") as co, co.client() as api:
        # No agent at all: said at submit, before any tick.
        gpu = await _submit(api, {"gpu": "h100"})
        assert await _reasons(api, gpu) == [("QUEUED", "no_matching_agent")]

        agent_id, agent = await co.register_agent(labels={"zone": "a"}, cpus=2)
        async with agent:
            fits = await _submit(api, {"zone": "a"})
            too_big = await _submit(api, {"zone": "a"}, resources={"cpus": 8})
            # An able agent exists: nothing stands in the way of `fits` yet.
            assert await _reasons(api, fits, too_big) == [("QUEUED", None), ("QUEUED", "no_matching_agent")]
            await _tick(co)
            # Still queued after a tick: the agent that could take it is busy.
            assert await _reasons(api, gpu, fits, too_big) == [
                ("QUEUED", "no_matching_agent"), ("QUEUED", "waiting_for_capacity"), ("QUEUED", "no_matching_agent")]
            # The listing shows the same, from the stored reason.
            listed = {job["id"]: job["reason"] for job in (await api.get("/v0/jobs")).json()["items"]}
            assert listed[fits] == "waiting_for_capacity" and listed[gpu] == "no_matching_agent"

            assert (await api.post(f"/v0/agents/{agent_id}:drain")).status_code == 200
            await _tick(co)
            assert await _reasons(api, fits) == [("QUEUED", "agent_draining")]
            assert (await api.post(f"/v0/agents/{agent_id}:resume")).status_code == 200
            await _tick(co)

            # Claimed: the reason it waited is gone.
            claim = ClaimRequest(free=CapacityMsg(cpus=2, memoryMb=8192, gpus=0), waitSeconds=0)
            claimed = await agent.post("/agent/v0/claim", content=claim.model_dump_json(), headers=JSON)
            assert claimed.json()["jobId"] == fits
            assert await _reasons(api, fits) == [("ASSIGNED", None)]

            # The workspace reaches its hard cap: everything queued is held.
            limits = await api.patch("/v0/billing/limits", json={"hardCapUsd": 0})
            assert limits.status_code == 200, limits.text
            await run_tick(co.store, clock, co.svc.settings.billing, co.svc.notifier)
            await _tick(co)
            assert await _reasons(api, gpu, too_big) == [("QUEUED", "held_by_cap")] * 2
            assert (await api.patch("/v0/billing/limits", json={"hardCapUsd": None})).status_code == 200
            await run_tick(co.store, clock, co.svc.settings.billing, co.svc.notifier)
            await _tick(co)
            assert await _reasons(api, gpu) == [("QUEUED", "no_matching_agent")]

            # The only able agent goes DOWN (silent past the grace): no agent can take it now.
            waiting = await _submit(api, {"zone": "a"})
            clock.advance(60)
            await _tick(co)
            assert await _reasons(api, waiting) == [("QUEUED", "no_matching_agent")]


async def test_one_decision_per_selector_however_long_the_queue(tmp_path: Path) -> None:
    async with open_inprocess(tmp_path, clock=ManualClock()) as co, co.client() as api:
        ids = [await _submit(api, {"pool": "p"}) for _ in range(30)]
        _, agent = await co.register_agent(labels={"pool": "p"})
        async with agent:
            # 30 jobs, one (workspace, selector, resources) group: all change in one statement.
            assert await co.store.refresh_queued_reasons() == 30
            assert await co.store.refresh_queued_reasons() == 0  # nothing to change: no writes
            assert {reason for _, reason in await _reasons(api, *ids)} == {"waiting_for_capacity"}
