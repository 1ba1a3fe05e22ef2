"""Job arrays (issue 16): tasks per second created and dispatched.

- ``create``: a real coordinator process on loopback, no agent. One ``POST /v0/jobs`` with
  ``array: {"count": N}`` (N = 10,000 by default: the maximum) is one request and one
  transaction; timed end to end over HTTP, repeated, median. Baseline, same process: single
  jobs submitted one request each, jobs per second.
- ``dispatch``: the real SQLite store in-process (its writer, a real file), no HTTP. Simulated
  agents claim (``claim_job``) and report each task finished (``apply_events``), keeping
  ``maxParallel`` tasks in flight, until every task of an array has run: tasks dispatched per
  second through the maxParallel gate (the compare-and-set on the array's slot counter and the
  claim's shape skip; checked first: the claim after maxParallel gets nothing). Baseline, same
  process: as many single jobs through the same loop. Each claim and each result is its own
  durable commit here (one loop, no group commit), so this is the per-task cost of the
  coordinator, not the throughput of many agents at once (``bench/claims.py`` has real agents).

    .venv/bin/python bench/arrays.py [--count 10000] [--dispatch 2000] [--max-parallel 8]

Prints the figures and writes bench/results/arrays.json. The machine may be shared and loaded while
this runs; the JSON says so.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import trio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from common.ids import new_id, new_ids  # noqa: E402
from common.protocol import CapacityMsg, FinishedEvent, StartedEvent  # noqa: E402
from common.states import AgentState, JobState  # noqa: E402
from coordinator.store.base import AgentRecord, ArrayRecord, JobRecord, TokenRecord  # noqa: E402
from coordinator.store.sqlite import SqliteStore, open_sqlite_store  # noqa: E402
from tests.procs import Coordinator  # noqa: E402

FREE = CapacityMsg(cpus=1024, memoryMb=1 << 20, gpus=0)
WORKSPACE = "ws_bench"
MANIFEST = {"type": "COMMAND", "command": "echo $TANVRIT_ARRAY_INDEX", "timeoutSeconds": 600}


def create(count: int, repeats: int, singles: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-arrays-") as tmp:
        coordinator = Coordinator(Path(tmp) / "coordinator").start()
        try:
            with coordinator.client() as api:
                seconds = []
                for _ in range(repeats):
                    started = time.perf_counter()
                    created = api.post("/v0/jobs", json={**MANIFEST, "array": {"count": count, "maxParallel": 10}})
                    seconds.append(time.perf_counter() - started)
                    assert created.status_code == 201, created.text
                single = []
                for _ in range(singles):
                    started = time.perf_counter()
                    assert api.post("/v0/jobs", json=MANIFEST).status_code == 201
                    single.append(time.perf_counter() - started)
        finally:
            coordinator.stop()
    array_rate = count / statistics.median(seconds)
    single_rate = 1 / statistics.median(single)
    return {"tasks_per_request": count, "requests": repeats, "request_seconds": [round(s, 3) for s in seconds],
            "median_request_seconds": round(statistics.median(seconds), 3),
            "array_tasks_per_second": round(array_rate), "baseline_single_jobs": singles,
            "baseline_single_jobs_per_second": round(single_rate, 1),
            "ratio_array_to_single": round(array_rate / single_rate, 1)}


def _now() -> int:
    return int(time.time() * 1000)


async def _setup(store: SqliteStore, agents: int) -> list[str]:
    await store.bootstrap(user_id="usr_bench", email="bench@x", workspace_id=WORKSPACE, workspace_name="bench",
                          plan="hobby", tokens=[], now=0)
    ids = []
    for n in range(agents):
        agent_id = f"agt_bench{n}"
        await store.register_agent(
            AgentRecord(id=agent_id, workspace_id=WORKSPACE, name=agent_id, state=AgentState.READY, labels={},
                        capacity=FREE.model_dump(), version="bench", registered_at=0),
            TokenRecord(id=f"tok_{n}", kind="agent", token_hash=f"h{n}", workspace_id=WORKSPACE, user_id=None,
                        agent_id=agent_id, name=agent_id, created_at=0))
        ids.append(agent_id)
    return ids


def _template(created_at: int) -> JobRecord:
    return JobRecord(id="job_template", workspace_id=WORKSPACE, state=JobState.QUEUED, command="true", name=None,
                     labels={}, resources=None, env={}, timeout_seconds=600, created_at=created_at,
                     submitted_by="usr_bench")


async def _run_through(store: SqliteStore, agents: list[str], total: int, in_flight: int) -> float:
    """Claim and finish ``total`` jobs, at most ``in_flight`` at once; the seconds it took."""
    seq = dict.fromkeys(agents, 0)
    running: list[tuple[str, str, int]] = []
    done = 0
    at = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    started = time.perf_counter()
    turn = 0
    while done < total:
        while len(running) < in_flight:
            agent = agents[turn % len(agents)]
            turn += 1
            assignment = await store.claim_job(agent, FREE, None, _now())
            if assignment is None:
                break
            running.append((agent, assignment.jobId, assignment.epoch))
        assert running, "nothing claimable while tasks remain"
        agent, job_id, epoch = running.pop(0)
        seq[agent] += 2
        result = await store.apply_events(agent, [
            StartedEvent(seq=seq[agent] - 1, jobId=job_id, epoch=epoch, at=at),
            FinishedEvent(seq=seq[agent], jobId=job_id, epoch=epoch, at=at, state=JobState.SUCCEEDED, exitCode=0,
                          runtimeMs=0)], _now())
        assert not result.rejected, result.rejected
        done += 1
    return time.perf_counter() - started


async def dispatch(count: int, max_parallel: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-arrays-") as tmp:
        async with open_sqlite_store(Path(tmp) / "array.sqlite3") as store:
            agents = await _setup(store, 2)
            now = _now()
            array = ArrayRecord(id=new_id("arr"), workspace_id=WORKSPACE, count=count, max_parallel=max_parallel,
                                created_at=now, submitted_by="usr_bench")
            await store.insert_array(array, _template(now), new_ids("job", count))
            # The gate holds: with maxParallel claimed, the next claim gets nothing.
            held = [await store.claim_job(agents[0], FREE, None, _now()) for _ in range(max_parallel + 1)]
            assert held[-1] is None and all(held[:-1])
            for assignment in held[:-1]:
                assert assignment is not None
                await store.release_assignment(agents[0], assignment.jobId, assignment.epoch, _now())
            array_seconds = await _run_through(store, agents, count, max_parallel)
            assert (await store._read("SELECT active FROM job_arrays WHERE id = ?", (array.id,)))[0][0] == 0
        async with open_sqlite_store(Path(tmp) / "single.sqlite3") as store:
            agents = await _setup(store, 2)
            for _ in range(count):
                await store.insert_job(dataclasses.replace(_template(_now()), id=new_id("job")))
            single_seconds = await _run_through(store, agents, count, max_parallel)
    return {"tasks": count, "max_parallel": max_parallel, "agents": 2,
            "array_tasks_dispatched_per_second": round(count / array_seconds, 1),
            "baseline_single_jobs_dispatched_per_second": round(count / single_seconds, 1),
            "ratio_array_to_single": round(single_seconds / array_seconds, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=10_000, help="tasks per array in the create figure")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--singles", type=int, default=200, help="single jobs in the create baseline")
    parser.add_argument("--dispatch", type=int, default=2000, help="tasks in the dispatch figure")
    parser.add_argument("--max-parallel", type=int, default=8)
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "arrays.json"))
    args = parser.parse_args()
    report = {
        "create": create(args.count, args.repeats, args.singles),
        "dispatch": trio.run(dispatch, args.dispatch, args.max_parallel),
        "host": {"cpus": os.cpu_count(), "loadavg_1m": round(os.getloadavg()[0], 2),
                 "note": "shared machine: the figures include whatever else ran meanwhile"},
    }
    text = json.dumps(report, indent=2)
    print(text)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
