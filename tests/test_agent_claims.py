"""An assignment is never dropped by the agent: an answer it cannot use (it is stopping or
draining, or another claim's answer took the room) is released at once over the agent
protocol. The coordinator is replaced at the transport (``httpx.MockTransport``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from agentd import executor
from agentd.cgroups.none import NoCgroups
from agentd.client import CoordinatorClient
from agentd.config import AgentConfig
from agentd.daemon import Agent, _Running
from agentd.spool import Spool, SpoolWriter
from common import protocol
from common.protocol import Assignment, CapacityMsg


def _assignment(job_id: str, cpus: float = 1) -> Assignment:
    return Assignment(jobId=job_id, epoch=3, command="true", env={}, timeoutSeconds=60, cpus=cpus, memoryMb=256,
                      gpus=0, name=None)


@pytest.fixture
def released() -> list[dict[str, object]]:
    return []


@pytest.fixture
def agent(tmp_path: Path, released: list[dict[str, object]]) -> Agent:
    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.path == protocol.RELEASE_PATH
        released.append(json.loads(request.content))
        return httpx.Response(204)

    client = CoordinatorClient("http://coordinator.test", transport=httpx.MockTransport(handler))
    agent = Agent(AgentConfig(coordinator="http://coordinator.test", registration_token="t", data_dir=tmp_path),
                  client=client)
    agent.capacity = CapacityMsg(cpus=2, memoryMb=4096, gpus=0)
    return agent


@pytest.mark.parametrize("why", ["stopping", "draining", "no longer fits"])
async def test_an_answer_the_agent_cannot_use_is_released_at_once(agent: Agent, released: list[dict[str, object]],
                                                                  why: str) -> None:
    if why == "stopping":
        agent._stopping = True
    elif why == "draining":
        agent.draining = True
    else:  # two claims were answered at once; the first took the room
        agent.running["job_first"] = _Running(_assignment("job_first", cpus=2), cpus=2, memory_mb=256, gpus=0)
    assert agent._cannot_take(_assignment("job_late")) == why
    async with trio.open_nursery() as jobs:
        await agent._take(jobs, _assignment("job_late"))
    await agent.client.aclose()
    assert released == [{"jobId": "job_late", "epoch": 3}]
    assert "job_late" not in agent.running


async def test_a_job_taken_is_spawned_before_the_next_claim_goes_out(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    # The spawn is synchronous on the loop (agentd/executor.py ``_Child``), so the next claim's
    # work (its request built, its answer parsed) cannot come between a claim's answer and its
    # job's start. Spawned in a worker thread, it did: the thread's hand-back waited for it.
    order: list[str] = []
    answers = [f"job_{index}" for index in range(6)]
    done = trio.Event()

    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.path == protocol.CLAIM_PATH
        if answers:
            return httpx.Response(200, content=_assignment(answers.pop(0)).model_dump_json())
        done.set()
        return httpx.Response(204)

    spawn = executor._Child.spawn.__func__  # type: ignore[attr-defined]

    def recording_spawn(cls: type[executor._Child], *args: object, **kwargs: object) -> executor._Child:
        order.append("spawn")
        return spawn(cls, *args, **kwargs)  # type: ignore[no-any-return]

    monkeypatch.setattr(executor._Child, "spawn", classmethod(recording_spawn))
    client = CoordinatorClient("http://coordinator.test", transport=httpx.MockTransport(handler))
    agent = Agent(AgentConfig(coordinator="http://coordinator.test", registration_token="t", data_dir=tmp_path,
                              work_dir=tmp_path / "work"),
                  client=client, cgroups=NoCgroups("tests"))
    claim = agent.client.claim

    async def recording_claim(*args: Any, **kwargs: Any) -> Assignment | None:
        order.append("claim")  # as the claim's work begins: building the request is its first step
        return await claim(*args, **kwargs)

    monkeypatch.setattr(agent.client, "claim", recording_claim)
    agent.capacity = CapacityMsg(cpus=8, memoryMb=8192, gpus=0)  # room for the next claim at every step
    agent._spool = SpoolWriter(Spool(tmp_path / "spool.db"))
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(agent.spool.serve)
            nursery.start_soon(agent._claims, nursery)
            await done.wait()
            nursery.cancel_scope.cancel()
    await client.aclose()
    # Each answer's job spawned before the claim after it was sent.
    assert order[:12] == ["claim", "spawn"] * 6, order
