"""Twenty agents claiming at once over real HTTP against two hundred jobs: each runs exactly once."""

from __future__ import annotations

from pathlib import Path

import httpx
import trio

from common.protocol import CapacityMsg, ClaimRequest
from tests.inproc import open_inprocess


async def test_twenty_http_agents_claim_two_hundred_jobs_exactly_once(tmp_path: Path) -> None:
    async with open_inprocess(tmp_path) as co, co.client() as api:
        agents = [await co.register_agent(name=f"a{n}") for n in range(20)]
        claimed: dict[str, list[str]] = {agent_id: [] for agent_id, _ in agents}
        submitted: list[str] = []
        claim = ClaimRequest(free=CapacityMsg(cpus=1, memoryMb=1024, gpus=0), waitSeconds=2).model_dump_json()

        async def claimer(agent_id: str, client: httpx.AsyncClient) -> None:
            async with client:
                # Long-polls until all two hundred have been claimed by someone.
                while sum(map(len, claimed.values())) < 200:
                    response = await client.post("/agent/v0/claim", content=claim,
                                                 headers={"Content-Type": "application/json"})
                    if response.status_code == 204:
                        continue
                    assert response.status_code == 200, response.text
                    claimed[agent_id].append(response.json()["jobId"])

        async def submitter() -> None:
            for _ in range(200):
                response = await api.post("/v0/jobs", json={"type": "COMMAND", "command": "true"})
                submitted.append(response.json()["id"])

        with trio.fail_after(120):
            async with trio.open_nursery() as nursery:
                for agent_id, client in agents:
                    nursery.start_soon(claimer, agent_id, client)
                nursery.start_soon(submitter)
        every_claim = [job for jobs in claimed.values() for job in jobs]
        assert sorted(every_claim) == sorted(submitted)
        assert len(set(every_claim)) == 200
        # The work was spread: more than one agent took part.
        assert sum(1 for jobs in claimed.values() if jobs) > 1
