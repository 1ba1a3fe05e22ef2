"""Three PostgreSQL stores on one database, as three replicas hold them: claims stay exactly once.

Each store has its own pool, so claims race in separate transactions on separate connections,
as they do across replicas (the process-level version, with kill -9, is tests/test_cluster*.py).
"""

from __future__ import annotations

from contextlib import AsyncExitStack

import trio

from common.protocol import CapacityMsg
from common.states import AgentState, JobState
from coordinator.store.base import AgentRecord, JobRecord, TokenRecord
from coordinator.store.postgresql import PgStore, open_postgresql_store

FREE = CapacityMsg(cpus=64, memoryMb=1 << 20, gpus=0)


async def test_twenty_claimers_over_three_stores_take_two_hundred_jobs_exactly_once(postgres_url: str) -> None:
    async with AsyncExitStack() as stack:
        replicas: list[PgStore] = [await stack.enter_async_context(open_postgresql_store(postgres_url, pool_max=4))
                                   for _ in range(3)]
        first = replicas[0]
        await first.bootstrap(user_id="usr_1", email="o@x", workspace_id="ws_1", workspace_name="w", plan="hobby",
                              tokens=[], now=0)
        agents = [f"agt_{n:02d}" for n in range(20)]
        for agent_id in agents:
            await first.register_agent(
                AgentRecord(id=agent_id, workspace_id="ws_1", name=agent_id, state=AgentState.READY, labels={},
                            capacity=FREE.model_dump(), version="t", registered_at=0),
                TokenRecord(id=f"tok_{agent_id}", kind="agent", token_hash=f"h{agent_id}", workspace_id="ws_1",
                            user_id=None, agent_id=agent_id, name="a", created_at=0))
        claimed: list[str] = []
        submitted: list[str] = []

        async def submitter(store: PgStore, offset: int) -> None:
            for index in range(offset, 200, 3):
                job_id = f"job_{index:04d}"
                await store.insert_job(JobRecord(id=job_id, workspace_id="ws_1", state=JobState.QUEUED,
                                                 command="true", name=None, labels={}, resources=None, env={},
                                                 timeout_seconds=60, created_at=index))
                submitted.append(job_id)

        async def claimer(store: PgStore, agent_id: str) -> None:
            # Until every job is submitted and claimed: claims race the submissions too.
            while len(claimed) < 200:
                assignment = await store.claim_job(agent_id, FREE, None, 1)
                if assignment is None:
                    await trio.sleep(0.005)
                    continue
                claimed.append(assignment.jobId)

        with trio.fail_after(120):
            async with trio.open_nursery() as nursery:
                for offset, store in enumerate(replicas):
                    nursery.start_soon(submitter, store, offset)
                for index, agent_id in enumerate(agents):
                    nursery.start_soon(claimer, replicas[index % 3], agent_id)
        assert sorted(claimed) == sorted(submitted) == [f"job_{index:04d}" for index in range(200)]
        rows = await first._read("SELECT state, epoch, COUNT(*) AS n FROM jobs GROUP BY state, epoch")
        assert [(row["state"], row["epoch"], row["n"]) for row in rows] == [("ASSIGNED", 1, 200)]
        attempts = await first._read("SELECT COUNT(*) AS n FROM job_attempts")
        assert attempts[0]["n"] == 200  # one attempt each: no claim was made twice and rolled back late
