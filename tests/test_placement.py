"""Label and capacity placement with two real agent processes of different labels and sizes."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.procs import AgentProc, Coordinator, wait_terminal


@pytest.fixture(scope="module")
def two_agents(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Coordinator, AgentProc, AgentProc]]:
    root = tmp_path_factory.mktemp("placement")
    coordinator = Coordinator(root / "coordinator").start()
    small = AgentProc(coordinator, root / "small", labels=("pool=a",),
                      extra_args=("--cpus", "1", "--memory-mb", "2048")).start()
    big = AgentProc(coordinator, root / "big", labels=("pool=b",),
                    extra_args=("--cpus", "4", "--memory-mb", "8192")).start()
    try:
        yield coordinator, small, big
    finally:
        small.stop()
        big.stop()
        coordinator.stop()


def _run(api: httpx.Client, **fields: Any) -> dict[str, Any]:
    created = api.post("/v0/jobs", json={"type": "COMMAND", "command": "true", **fields})
    assert created.status_code == 201, created.text
    return wait_terminal(api, created.json()["id"])


def test_labels_choose_the_agent(two_agents: tuple[Coordinator, AgentProc, AgentProc]) -> None:
    coordinator, small, big = two_agents
    with coordinator.client() as api:
        for _ in range(3):
            assert _run(api, labels={"pool": "a"})["agentId"] == small.agent_id
            assert _run(api, labels={"pool": "b"})["agentId"] == big.agent_id
        # Detected labels count too: both agents carry this host's os label.
        assert _run(api, labels={"pool": "b", "os": "linux"})["agentId"] == big.agent_id


def test_capacity_chooses_the_agent(two_agents: tuple[Coordinator, AgentProc, AgentProc]) -> None:
    coordinator, _, big = two_agents
    with coordinator.client() as api:
        for _ in range(3):
            assert _run(api, resources={"cpus": 2})["agentId"] == big.agent_id
            assert _run(api, resources={"memoryMb": 4096})["agentId"] == big.agent_id


def test_job_that_fits_nowhere_stays_queued(two_agents: tuple[Coordinator, AgentProc, AgentProc]) -> None:
    coordinator, small, _ = two_agents
    with coordinator.client() as api:
        too_big = api.post("/v0/jobs", json={"type": "COMMAND", "command": "true", "resources": {"cpus": 16}})
        wrong_pool = api.post("/v0/jobs", json={"type": "COMMAND", "command": "true",
                                                "labels": {"pool": "a"}, "resources": {"cpus": 2}})
        # A later job that fits runs, proving the agents have looked past the two above.
        assert _run(api, labels={"pool": "a"})["agentId"] == small.agent_id
        for response in (too_big, wrong_pool):
            assert api.get(f"/v0/jobs/{response.json()['id']}").json()["state"] == "QUEUED"
