"""Fair share between submitters (issue 16): one user's long queue does not hold back another
user's job of the same priority, priorities still come first, and each QUEUED job shows its
position. The decision is tested pure, then through the API of an in-process coordinator."""

from __future__ import annotations

from pathlib import Path

import httpx

from common.protocol import CapacityMsg
from coordinator.services.fairness import Head, QueuedJob, _Level, choose, position
from tests.inproc import InProcess, open_inprocess

FREE = CapacityMsg(cpus=64, memoryMb=65536, gpus=0)


def test_choose_serves_the_least_recently_served_submitter_within_the_best_priority() -> None:
    heads = [Head("job_a1", 50, 1, "alice"), Head("job_b1", 50, 5, "bob"), Head("job_a2", 50, 2, "alice", "arr_x")]
    # Nobody served yet: the oldest job first, as plain FIFO.
    assert choose(heads, {}) == heads[0]
    # Alice was served last: Bob's job goes next, though younger.
    assert choose(heads, {"alice": 7, "bob": 3}) == heads[1]
    # Never served counts as turn 0: Bob beats Alice's recent turn.
    assert choose(heads, {"alice": 1}) == heads[1]
    # Within Alice's shapes, her oldest job (across shapes and arrays).
    assert choose(heads, {"bob": 9, "alice": 1}) == heads[0]
    # Priority before fairness.
    urgent = Head("job_a3", 60, 9, "alice")
    assert choose([*heads, urgent], {"alice": 99}) == urgent
    assert choose([], {}) is None


def test_position_counts_higher_priorities_own_queue_and_round_robin_turns() -> None:
    level = _Level(ahead=4, submitters={"alice": (100, 1), "bob": (1, 50), "carol": (2, 60)})
    bob_job = QueuedJob("job_b", 50, 50, "bob")
    # Bob has never been served, Alice and Carol have: Bob's only job is the first at its level.
    assert position(bob_job, level, rank=0, turns={"alice": 5, "carol": 4}) == 4 + 1
    # Alice's 3rd job (rank 2) with Bob and Carol served before her in each round:
    # Bob 1 (all he has), Carol min(2, 3) = 2, two of her own, then it.
    alice_job = QueuedJob("job_a", 50, 3, "alice")
    assert position(alice_job, level, rank=2, turns={"alice": 5, "bob": 1, "carol": 2}) == 4 + 2 + 1 + 2 + 1


async def _submit(api: httpx.AsyncClient, command: str, **extra: object) -> str:
    created = await api.post("/v0/jobs", json={"type": "COMMAND", "command": command, **extra})
    assert created.status_code == 201, created.text
    return str(created.json()["id"])


async def _claim(co: InProcess, agent_id: str) -> str | None:
    assignment = await co.store.claim_job(agent_id, FREE, None, 0)
    return None if assignment is None else assignment.jobId


async def test_one_users_long_queue_does_not_hold_back_another_users_job(tmp_path: Path) -> None:
    async with open_inprocess(tmp_path) as co, co.client() as alice:
        bob_token = await co.add_member("member")
        agent_id, agent = await co.register_agent(cpus=64, memory_mb=65536)
        await agent.aclose()
        # Alice queues a long run of jobs (and an array); some are dispatched.
        alice_jobs = [await _submit(alice, f"echo {n}") for n in range(300)]
        array = (await alice.post("/v0/jobs", json={"type": "COMMAND", "command": "true",
                                                    "array": {"count": 1000}})).json()
        assert array["summary"]["QUEUED"] == 1000
        assert [await _claim(co, agent_id) for _ in range(3)] == alice_jobs[:3]
        async with co.client(bob_token) as bob:
            bob_job = await _submit(bob, "echo bob")
            shown = (await bob.get(f"/v0/jobs/{bob_job}")).json()
            assert shown["submittedBy"] is not None and shown["submittedBy"] != (
                await alice.get(f"/v0/jobs/{alice_jobs[3]}")).json()["submittedBy"]
            # Next in line, ahead of 1,297 of Alice's jobs queued before it.
            assert shown["position"] == 1
            assert (await alice.get(f"/v0/jobs/{alice_jobs[3]}")).json()["position"] == 2
            assert (await alice.get(f"/v0/jobs/{alice_jobs[4]}")).json()["position"] == 3
            # The very next claim dispatches it; Alice's queue then goes on in order.
            assert await _claim(co, agent_id) == bob_job
            assert [await _claim(co, agent_id) for _ in range(2)] == alice_jobs[3:5]
            # Two more of Bob's: round robin, one of Bob's, one of Alice's, ...
            bob_more = [await _submit(bob, "echo again") for _ in range(2)]
            order = [await _claim(co, agent_id) for _ in range(4)]
            assert order == [bob_more[0], alice_jobs[5], bob_more[1], alice_jobs[6]]
            # Positions are shown on every QUEUED job of a listing, and only on those.
            # (Alice's 293 plain jobs left go first: the array's tasks are younger.)
            tasks = (await alice.get("/v0/jobs", params={"arrayId": array["id"], "limit": 500})).json()["items"]
            assert {task["arrayIndex"]: task["position"] for task in tasks}[999] == 293 + 1000
            assert [task["position"] for task in tasks] == list(range(1293, 793, -1))
            assert (await alice.get(f"/v0/jobs/{alice_jobs[7]}")).json()["position"] == 1
            assert (await alice.get(f"/v0/jobs/{alice_jobs[0]}")).json()["position"] is None


async def test_priority_comes_before_fair_share(tmp_path: Path) -> None:
    async with open_inprocess(tmp_path) as co, co.client() as alice:
        bob_token = await co.add_member("member")
        agent_id, agent = await co.register_agent(cpus=64, memory_mb=65536)
        await agent.aclose()
        first = await _submit(alice, "true")
        assert await _claim(co, agent_id) == first
        async with co.client(bob_token) as bob:
            bob_low = await _submit(bob, "true", priority=40)
            alice_high = await _submit(alice, "true", priority=60)
            alice_normal = await _submit(alice, "true")
            assert (await bob.get(f"/v0/jobs/{bob_low}")).json()["position"] == 3
            assert [await _claim(co, agent_id) for _ in range(3)] == [alice_high, alice_normal, bob_low]
