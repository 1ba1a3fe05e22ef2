"""The store contract for job arrays and fair share (issue 16), run against every backend (the
``store`` fixture of tests/conftest.py: SQLite, and PostgreSQL once its store is on main).

Twenty agents claiming at once never hold more than ``maxParallel`` tasks of an array: the
slot is a compare-and-set in the claim's own transaction, whatever the database's isolation."""

from __future__ import annotations

import trio

from common.ids import new_ids
from common.protocol import CapacityMsg
from common.states import AgentState, JobState
from coordinator.store.base import AgentRecord, ArrayRecord, JobFilter, JobRecord, Store, TokenRecord

FREE = CapacityMsg(cpus=64, memoryMb=1 << 20, gpus=0)


async def _workspace(store: Store) -> None:
    await store.bootstrap(user_id="usr_1", email="o@x", workspace_id="ws_1", workspace_name="w", plan="hobby",
                          tokens=[], now=0)


async def _agent(store: Store, agent_id: str) -> None:
    await store.register_agent(
        AgentRecord(id=agent_id, workspace_id="ws_1", name=agent_id, state=AgentState.READY, labels={},
                    capacity=FREE.model_dump(), version="t", registered_at=0),
        TokenRecord(id=f"tok_{agent_id}", kind="agent", token_hash=f"h{agent_id}", workspace_id="ws_1", user_id=None,
                    agent_id=agent_id, name="a", created_at=0),
    )


def _job(job_id: str, created: int, submitter: str) -> JobRecord:
    return JobRecord(id=job_id, workspace_id="ws_1", state=JobState.QUEUED, command="true", name=None, labels={},
                     resources=None, env={"A": "1"}, timeout_seconds=60, created_at=created, submitted_by=submitter)


async def test_concurrent_claims_never_exceed_max_parallel(store: Store) -> None:
    await _workspace(store)
    array = ArrayRecord(id="arr_1", workspace_id="ws_1", count=50, max_parallel=3, created_at=1, name="sweep",
                        submitted_by="usr_1")
    stored = await store.insert_array(array, _job("job_template", 1, "usr_1"), new_ids("job", 50))
    assert stored.summary == {JobState.QUEUED: 50}
    agents = [f"agt_{n:02d}" for n in range(20)]
    for agent_id in agents:
        await _agent(store, agent_id)
    claimed: list[str] = []

    async def claimer(agent_id: str) -> None:
        while (assignment := await store.claim_job(agent_id, FREE, None, 2)) is not None:
            claimed.append(assignment.jobId)
            assert assignment.env["TANVRIT_ARRAY_COUNT"] == "50" and assignment.env["A"] == "1"

    async with trio.open_nursery() as nursery:
        for agent_id in agents:
            nursery.start_soon(claimer, agent_id)
    assert len(claimed) == 3
    found = await store.get_array("ws_1", "arr_1")
    assert found is not None and found.summary == {JobState.QUEUED: 47, JobState.ASSIGNED: 3}
    assert await store.arrays_at_limit("ws_1", {"arr_1"}) == {"arr_1"}
    assert await store.arrays_at_limit("ws_other", {"arr_1"}) == set()  # scoped to its workspace


async def test_array_cancel_gives_the_slots_back_and_lists_its_tasks(store: Store) -> None:
    await _workspace(store)
    await store.insert_array(ArrayRecord(id="arr_1", workspace_id="ws_1", count=5, max_parallel=2, created_at=1),
                             _job("job_template", 1, "usr_1"), new_ids("job", 5))
    await _agent(store, "agt_1")
    first = await store.claim_job("agt_1", FREE, None, 2)
    assert first is not None and first.env["TANVRIT_ARRAY_INDEX"] == "0"
    assert await store.cancel_array("ws_other", "arr_1", 3) is None
    done = await store.cancel_array("ws_1", "arr_1", 3)
    assert done is not None
    array, touched = done
    assert array.summary == {JobState.CANCELLED: 5}
    assert ("agt_1", first.jobId) in touched and len(touched) == 5
    assert await store.arrays_at_limit("ws_1", {"arr_1"}) == set()
    tasks = await store.list_jobs("ws_1", JobFilter(array_id="arr_1"), limit=10, before_id=None)
    assert sorted(task.array_index for task in tasks if task.array_index is not None) == [0, 1, 2, 3, 4]
    assert [a.id for a in await store.list_arrays("ws_1", limit=10, before_id=None)] == ["arr_1"]


async def test_fair_share_and_positions(store: Store) -> None:
    await _workspace(store)
    await _agent(store, "agt_1")
    for index in range(20):
        await store.insert_job(_job(f"job_a{index:02d}", index, "usr_alice"))
    first = await store.claim_job("agt_1", FREE, None, 100)
    assert first is not None and first.jobId == "job_a00"
    await store.insert_job(_job("job_bob", 200, "usr_bob"))
    bob = await store.get_job("ws_1", "job_bob")
    alice_next = await store.get_job("ws_1", "job_a01")
    assert bob is not None and alice_next is not None
    assert await store.queue_positions("ws_1", [bob, alice_next]) == {"job_bob": 1, "job_a01": 2}
    claimed = [await store.claim_job("agt_1", FREE, None, 201) for _ in range(2)]
    assert [c.jobId for c in claimed if c is not None] == ["job_bob", "job_a01"]


async def test_array_task_logs_name_the_tasks_with_output_in_index_order(store: Store) -> None:
    await _workspace(store)
    array = ArrayRecord(id="arr_1", workspace_id="ws_1", count=5, max_parallel=None, created_at=1, name=None,
                        submitted_by="usr_1")
    ids = new_ids("job", 5)
    await store.insert_array(array, _job("job_template", 1, "usr_1"), ids)
    assert await store.array_task_logs("ws_1", "arr_1", None) == []
    assert await store.array_task_logs("ws_1", "arr_1", 3) == [(3, ids[3])]  # one task: output or not
    assert await store.array_task_logs("ws_other", "arr_1", 3) == []  # scoped to its workspace
