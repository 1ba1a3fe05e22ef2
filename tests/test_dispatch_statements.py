"""What dispatching one job costs the store, on both backends: an upper bound on the statements
of a claim (``POST /agent/v0/claim`` that is given a job) and of the job's events batch
(``started``, ``usage``, ``finished`` in one ``POST /agent/v0/events``), so the counts cannot
creep back up (each is a round trip on PostgreSQL: docs/deployment.md); and that the work
those statements stand for is still done: each job assigned once, run to SUCCEEDED, its usage
recorded on the job, its attempt and the ledger."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest

from common.clock import SystemClock
from common.protocol import EventBatch, FinishedEvent, StartedEvent, UsageEvent
from common.states import JobState
from tests.inproc import InProcess, running_coordinator
from tests.statement_count import store_statements

JOBS = 6
FREE = {"cpus": 1.0, "memoryMb": 1024, "gpus": 0}
# Statements per claim given a job: on PostgreSQL the look before the first pass (the agent and
# "anything queued" in one statement) and the claim's transaction (BEGIN, the agent with the
# hold and the webhook count, the queue's shapes, the shape's best job locked, the job's
# compare-and-set with its attempt's row, the submitter's turn, COMMIT); SQLite runs about the
# same ones as function calls (the attempt's row a statement of its own), in its group commit
# (a SAVEPOINT and RELEASE around the write). Before this bound (2 December 2026): 17 on each.
MOST_CLAIM_STATEMENTS = {"sqlite": 12, "postgresql": 8}
# Per batch of started, usage and finished: on PostgreSQL BEGIN, the agent with the meter's tick
# and the webhook count, the job once, started (the job's compare-and-set with its attempt),
# usage (attempt, ledger row, attempt and job sums), finished (job with attempt, its
# dependents), last_seq, COMMIT. Before: 18 on PostgreSQL, 21 on SQLite.
MOST_EVENTS_STATEMENTS = {"sqlite": 18, "postgresql": 12}


async def _counted(coordinator: InProcess, call: Callable[[], Awaitable[Any]]) -> tuple[int, Any]:
    """The statements ``call`` ran on the store, and what it returned."""
    with store_statements(coordinator.store) as count:
        result = await call()
    return count(), result


async def _claim(agent: httpx.AsyncClient) -> dict[str, Any]:
    answer = await agent.post("/agent/v0/claim", json={"free": FREE, "defaults": FREE, "waitSeconds": 0})
    assert answer.status_code == 200, answer.text
    assignment: dict[str, Any] = answer.json()
    return assignment


async def _report(agent: httpx.AsyncClient, job_id: str, epoch: int, seq: int) -> None:
    now = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    batch = EventBatch(events=[
        StartedEvent(seq=seq, jobId=job_id, epoch=epoch, at=now),
        UsageEvent(seq=seq + 1, jobId=job_id, epoch=epoch, cpuSeconds=0.5, gbSeconds=0.25, gpuSeconds=0.0),
        FinishedEvent(seq=seq + 2, jobId=job_id, epoch=epoch, at=now, state=JobState.SUCCEEDED, exitCode=0,
                      runtimeMs=1),
    ])
    answer = await agent.post("/agent/v0/events", content=batch.model_dump_json(),
                              headers={"Content-Type": "application/json"})
    assert answer.status_code == 200 and answer.json() == {"appliedThrough": seq + 2, "rejected": []}, answer.text


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
async def test_a_dispatched_job_runs_at_most_its_statements(tmp_path: Path, backend: str,
                                                             request: pytest.FixtureRequest) -> None:
    url = request.getfixturevalue("migrated_postgres_url") if backend == "postgresql" else None
    # Wall time: the events' times are checked against the coordinator's clock.
    async with running_coordinator(tmp_path, clock=SystemClock(), database_url=url) as coordinator:
        async with coordinator.client() as api:
            for _ in range(JOBS + 1):
                submitted = await api.post("/v0/jobs", json={"type": "COMMAND", "command": "true"})
                assert submitted.status_code == 201, submitted.text
        _agent_id, agent = await coordinator.register_agent()
        async with agent:
            # A first job warms up (token lookups cached, statements prepared).
            first = await _claim(agent)
            await _report(agent, first["jobId"], first["epoch"], 1)
            claims, events, given = [], [], [first["jobId"]]
            for n in range(JOBS):
                count, assignment = await _counted(coordinator, lambda: _claim(agent))
                claims.append(count)
                given.append(assignment["jobId"])
                count, _ = await _counted(coordinator, partial(_report, agent, assignment["jobId"],
                                                               assignment["epoch"], 4 + 3 * n))
                events.append(count)
        # The fewest of the runs: the counter is the whole store's, and background work (the
        # heartbeat flush, liveness, the meter) may land in any one request's window on a slow
        # machine, adding statements that are not the request's. One more statement in the
        # request path itself is in every run, so the fewest still catches it.
        assert min(claims) <= MOST_CLAIM_STATEMENTS[backend], claims
        assert min(events) <= MOST_EVENTS_STATEMENTS[backend], events
        # What those statements stand for was done: every job given once, run, and metered.
        assert len(set(given)) == JOBS + 1
        jobs = await coordinator.store._read(
            "SELECT id, state, epoch, cpu_seconds, gb_seconds FROM jobs WHERE workspace_id = ?",
            (coordinator.workspace_id,))
        assert sorted((row["id"], row["state"], row["epoch"], row["cpu_seconds"], row["gb_seconds"])
                      for row in jobs) == sorted((job_id, "SUCCEEDED", 1, 0.5, 0.25) for job_id in given)
        attempts = await coordinator.store._read("SELECT job_id, state, cpu_seconds FROM job_attempts")
        assert sorted(tuple(row) for row in attempts) == sorted((job_id, "SUCCEEDED", 0.5) for job_id in given)
        ledger = await coordinator.store._read("SELECT job_id, cpu_micros FROM usage_records")
        assert sorted(tuple(row) for row in ledger) == sorted((job_id, 500_000) for job_id in given)
