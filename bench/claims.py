"""Claim throughput: N ``true`` jobs on two real agents against a real coordinator (loopback).

Submits the jobs as fast as one client can, then waits for all of them to finish. Reports
jobs per second (N / (last finish seen - first submit)), and submit-to-start latency
(``startedAt - createdAt``) as median, p99 and the slowest: a dropped or stranded assignment
shows up there as tens of seconds. The baseline is a short run of jobs submitted one at a time
to the same idle agents, in the same process.

    .venv/bin/python bench/claims.py [--jobs 1000] [--cpus 4]

The machine may be shared and loaded while this runs; the JSON says so.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from common.clock import parse_rfc3339  # noqa: E402
from tests.cgroup_fixtures import cleanup_agent_cgroups  # noqa: E402
from tests.procs import AgentProc, Coordinator, wait_for  # noqa: E402

TERMINAL = {"SUCCEEDED", "FAILED", "TIMED_OUT", "CANCELLED", "LOST"}
JOB = {"type": "COMMAND", "command": "true", "labels": {"bench": "claims"}, "timeoutSeconds": 600}


def _all_jobs(api: httpx.Client) -> list[dict[str, Any]]:
    jobs: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        page = api.get("/v0/jobs", params={"limit": 200, **({"cursor": cursor} if cursor else {})}).json()
        jobs.extend(page["items"])
        cursor = page.get("nextCursor")
        if not cursor:
            return jobs


def _latencies(jobs: list[dict[str, Any]]) -> list[float]:
    return sorted((parse_rfc3339(job["startedAt"]) - parse_rfc3339(job["createdAt"])).total_seconds()
                  for job in jobs if job.get("startedAt"))


def _wait_all_done(api: httpx.Client, ids: set[str], limit: float) -> float:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        states = {job["id"]: job["state"] for job in _all_jobs(api) if job["id"] in ids}
        if len(states) == len(ids) and all(state in TERMINAL for state in states.values()):
            return time.time()
        time.sleep(0.2)
    raise RuntimeError("jobs did not all finish in time")


def run(count: int, cpus: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-claims-") as tmp:
        root = Path(tmp)
        coordinator = Coordinator(root / "coordinator").start()
        agents = [AgentProc(coordinator, root / f"agent{n}", labels=("bench=claims",),
                            extra_args=("--cpus", str(cpus), "--name", f"agent{n}")).start() for n in range(2)]
        try:
            with coordinator.client() as api:
                wait_for(lambda: len(api.get("/v0/agents").json()["items"]) == 2, message="agents registered")
                # Baseline: one job at a time on idle agents.
                baseline_ids = set()
                for _ in range(10):
                    job_id = api.post("/v0/jobs", json=JOB).json()["id"]
                    baseline_ids.add(job_id)
                    _wait_all_done(api, {job_id}, 60)
                baseline = _latencies([job for job in _all_jobs(api) if job["id"] in baseline_ids])
                first_submit = time.time()
                ids = {api.post("/v0/jobs", json=JOB).json()["id"] for _ in range(count)}
                submitted_s = time.time() - first_submit
                done = _wait_all_done(api, ids, 1800)
                jobs = [job for job in _all_jobs(api) if job["id"] in ids]
        finally:
            for agent in agents:
                agent.stop(signal.SIGTERM)
            coordinator.stop()
            for n in range(2):
                cleanup_agent_cgroups(root / f"agent{n}")
    latencies = _latencies(jobs)
    states: dict[str, int] = {}
    for job in jobs:
        states[job["state"]] = states.get(job["state"], 0) + 1
    by_agent: dict[str, int] = {}
    for job in jobs:
        by_agent[job.get("agentId") or "-"] = by_agent.get(job.get("agentId") or "-", 0) + 1
    return {
        "jobs": count, "agents": 2, "cpus_per_agent": cpus, "states": states,
        "jobs_per_agent": sorted(by_agent.values()),
        "submit_seconds": round(submitted_s, 2),
        "jobs_per_second": round(count / (done - first_submit), 1),
        "submit_to_start_s": {
            "median": round(statistics.median(latencies), 3),
            "p99": round(latencies[int(0.99 * (len(latencies) - 1))], 3),
            "slowest": round(latencies[-1], 3),
        },
        "baseline_submit_to_start_median_s": round(statistics.median(baseline), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--cpus", type=float, default=4)
    args = parser.parse_args()
    figures = run(args.jobs, args.cpus)
    load = os.getloadavg()
    result = {**figures, "host": {"cpus": os.cpu_count(), "loadavg_1m": round(load[0], 2),
                                  "note": "shared machine: the figures include whatever else ran meanwhile"}}
    print(json.dumps(result, indent=2))
    out = ROOT / "bench" / "results" / "claims.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
