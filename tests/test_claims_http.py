"""Twenty agents claiming at once over real HTTP against two hundred jobs: each runs exactly once,
on SQLite and on PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import httpx
import trio
import trio.testing

from common.protocol import CapacityMsg, ClaimRequest, ReleaseRequest
from tests.inproc import open_inprocess


async def test_twenty_http_agents_claim_two_hundred_jobs_exactly_once(tmp_path: Path, store_url: str) -> None:
    """On SQLite and on PostgreSQL (where claims take their row with FOR UPDATE SKIP LOCKED)."""
    async with open_inprocess(tmp_path, database_url=store_url) as co, co.client() as api:
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


def _claim_body(wait: float, cpus: float = 1) -> str:
    return ClaimRequest(free=CapacityMsg(cpus=cpus, memoryMb=1024, gpus=0), waitSeconds=wait).model_dump_json()


JSON = {"Content-Type": "application/json"}


async def test_a_newer_claim_ends_the_agents_waiting_one_and_release_wakes_the_others(tmp_path: Path) -> None:
    async with open_inprocess(tmp_path) as co, co.client() as api:
        (_, first), (_, second) = [await co.register_agent(name=f"a{n}") for n in range(2)]
        answers: dict[str, httpx.Response] = {}
        answered = {key: trio.Event() for key in ("old", "new", "other")}
        new_or_other = trio.Event()

        async def claim(key: str, client: httpx.AsyncClient, body: str) -> None:
            answers[key] = await client.post("/agent/v0/claim", content=body, headers=JSON)
            answered[key].set()
            if key != "old":
                new_or_other.set()

        with trio.fail_after(20):
            async with first, second, trio.open_nursery() as nursery:
                # An agent's free capacity grew while its claim waited: it claims again beside
                # it, and the older request is answered 204 at once instead of after 25 s.
                nursery.start_soon(claim, "old", first, _claim_body(25, cpus=1))
                await trio.testing.wait_all_tasks_blocked(0.2)
                nursery.start_soon(claim, "new", first, _claim_body(25, cpus=2))
                await answered["old"].wait()
                assert answers["old"].status_code == 204
                nursery.start_soon(claim, "other", second, _claim_body(25))
                await trio.testing.wait_all_tasks_blocked(0.2)
                job_id = (await api.post("/v0/jobs", json={"type": "COMMAND", "command": "true"})).json()["id"]
                await new_or_other.wait()
                [(taker, answer)] = [(key, answers[key]) for key in ("new", "other") if key in answers]
                assert answer.status_code == 200 and answer.json()["jobId"] == job_id
                # The taker cannot use it and hands it back: the other waiting claim gets it now.
                client = first if taker == "new" else second
                released = await client.post("/agent/v0/release", headers=JSON,
                                              content=ReleaseRequest(jobId=job_id, epoch=answer.json()["epoch"])
                                              .model_dump_json())
                assert released.status_code == 204
                waiter = "other" if taker == "new" else "new"
                await answered[waiter].wait()
                assert answers[waiter].status_code == 200
                assert answers[waiter].json()["jobId"] == job_id
                assert answers[waiter].json()["epoch"] == answer.json()["epoch"] + 1
