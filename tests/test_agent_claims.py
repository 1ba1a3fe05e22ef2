"""An assignment is never dropped by the agent: an answer it cannot use (it is stopping or
draining, or another claim's answer took the room) is released at once over the agent
protocol. The coordinator is replaced at the transport (``httpx.MockTransport``)."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
import trio

from agentd.client import CoordinatorClient
from agentd.config import AgentConfig
from agentd.daemon import Agent, _Running
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
