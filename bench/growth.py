"""Query growth: the list, filter, claim and count queries over a store of N jobs.

    .venv/bin/python -m bench.growth [--jobs 1000000] [--http]     (or through ``python -m bench``)

Fills a fresh SQLite store (the real migrations) with N jobs in one workspace, shaped like a
long-lived one: nearly all finished, 1% queued under 20 label selectors, a few running, plus
a second workspace's jobs that no query of the first may touch. Then times, through the
store's own methods and queries, each of: ``GET /v0/jobs?limit=50`` (newest page, and a page
deep in the history), the state filter, a label filter, a time-window filter, the claim query
(``best_claimable``) and the ``/metrics`` counts. Each figure is p50/p99 over repeated calls,
in milliseconds. The goals (issue 15) at 1,000,000 jobs: lists under 20 ms p99, claim under 5 ms.

``--http`` times the same lists as a client sees them: a real coordinator (``serve``) on a store
filled the same way in its own workspace, each request over loopback HTTP with the owner's token,
one at a time (the figures include auth, the rows' JSON and Hypercorn).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio

SELECTORS = 20
WORKSPACE = "wsp_bench"
OTHER = "wsp_other"


def _state(n: int) -> str:
    if n % 100 == 7:
        return "QUEUED"
    if n % 400 == 3:
        return "RUNNING"
    if n % 50 == 1:
        return "FAILED"
    return "SUCCEEDED"


def fill(path: Path, jobs: int, workspace: str = WORKSPACE, *, create_workspace: bool = True) -> dict[str, Any]:
    """Write ``jobs`` jobs (and a tenth as many in another workspace) straight into a migrated store.
    ``create_workspace=False``: ``workspace`` exists already (a coordinator's own)."""
    from ulid import ULID

    from coordinator.store.sqlite_core import open_sync_connection

    started = time.perf_counter()
    base_ms = 1_750_000_000_000
    with open_sync_connection(path) as conn:
        conn.execute("BEGIN")
        for new in ((workspace, OTHER) if create_workspace else (OTHER,)):
            conn.execute("INSERT INTO workspaces (id, name, plan, created_at) VALUES (?, ?, 'hobby', ?)",
                         (new, new, base_ms))

        def rows(count: int, workspace: str) -> Any:
            for n in range(count):
                created = base_ms + n * 10
                job_id = "job_" + str(ULID.from_timestamp(created / 1000)).lower()
                state = _state(n)
                # Queued jobs spread over every selector too (n % 100 == 7 alone would pin them to
                # one): the claim sees SELECTORS + 1 placement shapes.
                team = (n // 100 if state == "QUEUED" else n) % SELECTORS
                labels = json.dumps({"team": f"t{team}"}) if n % 3 else "{}"
                finished = created + 5_000 if state in ("SUCCEEDED", "FAILED") else None
                yield (job_id, workspace, state, "COMMAND", "true", f"job-{n}", labels, None, "{}", 60, created,
                       finished, 0 if state == "SUCCEEDED" else None, 50)

        sql = """INSERT INTO jobs (id, workspace_id, state, type, command, name, labels, resources, env,
                                   timeout_seconds, created_at, finished_at, exit_code, priority)
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"""
        conn.executemany(sql, rows(jobs, workspace))
        conn.executemany(sql, rows(jobs // 10, OTHER))
        conn.execute("COMMIT")  # no ANALYZE: the coordinator never runs one, so neither does this
    return {"jobs": jobs, "otherWorkspaceJobs": jobs // 10, "fillSeconds": round(time.perf_counter() - started, 1),
            "databaseMiB": round(path.stat().st_size / 2**20, 1), "base_ms": base_ms}


async def _time(call: Callable[[], Awaitable[Any]], repeat: int) -> dict[str, float]:
    await call()  # warm the page cache
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        await call()
        samples.append((time.perf_counter() - started) * 1000)
    samples.sort()
    return {"p50Ms": round(statistics.median(samples), 3),
            "p99Ms": round(samples[min(len(samples) - 1, int(0.99 * len(samples)))], 3)}


async def _measure_store(path: Path, jobs: int, base_ms: int, repeat: int) -> dict[str, Any]:
    from common.states import JobState
    from coordinator.store.base import JobFilter
    from coordinator.store.queries.agents import best_claimable
    from coordinator.store.sqlite import open_sqlite_store

    async with open_sqlite_store(path) as store:
        newest = await store.list_jobs(WORKSPACE, JobFilter(), limit=50, before_id=None)
        middle = (await store.list_jobs(WORKSPACE, JobFilter(created_before=base_ms + jobs * 5), limit=1,
                                        before_id=None))[0].id
        free = {"cpus": 64, "memoryMb": 1 << 20, "gpus": 0}
        agent_labels = {"team": "t7", "zone": "a"}

        async def claim() -> None:
            best_claimable(store._reader_tx, WORKSPACE, agent_labels, free, None)

        queries: dict[str, Callable[[], Awaitable[Any]]] = {
            "list_newest_50": lambda: store.list_jobs(WORKSPACE, JobFilter(), limit=50, before_id=None),
            "list_page_deep": lambda: store.list_jobs(WORKSPACE, JobFilter(), limit=50, before_id=middle),
            "list_state_queued": lambda: store.list_jobs(WORKSPACE, JobFilter(states=(JobState.QUEUED,)), limit=50,
                                                         before_id=None),
            "list_state_running_or_failed": lambda: store.list_jobs(
                WORKSPACE, JobFilter(states=(JobState.RUNNING, JobState.FAILED)), limit=50, before_id=None),
            "list_label": lambda: store.list_jobs(WORKSPACE, JobFilter(labels=(("team", "t3"),)), limit=50,
                                                  before_id=None),
            # A selector no job has: the walk finds nothing to stop it.
            "list_label_absent": lambda: store.list_jobs(WORKSPACE, JobFilter(labels=(("team", "nobody"),)),
                                                         limit=50, before_id=None),
            "list_created_window": lambda: store.list_jobs(
                WORKSPACE, JobFilter(created_after=base_ms + jobs * 2, created_before=base_ms + jobs * 3), limit=50,
                before_id=None),
            "claim_query": claim,
            "metrics_counts": store.count_jobs_by_state,
        }
        assert newest, "the fill wrote no jobs"
        return {name: await _time(call, repeat) for name, call in queries.items()}


def measure(jobs: int, folder: Path, repeat: int = 200) -> dict[str, Any]:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "coordinator.db"
    filled = fill(path, jobs)
    base_ms = filled.pop("base_ms")
    filled["queries"] = trio.run(_measure_store, path, jobs, base_ms, repeat)
    return filled


def _time_sync(call: Callable[[], Any], repeat: int) -> dict[str, float]:
    call()
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        call()
        samples.append((time.perf_counter() - started) * 1000)
    samples.sort()
    return {"p50Ms": round(statistics.median(samples), 3),
            "p99Ms": round(samples[min(len(samples) - 1, int(0.99 * len(samples)))], 3)}


def measure_http(jobs: int, folder: Path, repeat: int = 200) -> dict[str, Any]:
    """The lists through a real coordinator's HTTP API, on a store of ``jobs`` jobs in its own workspace."""
    import os
    import signal
    import subprocess
    import sys

    import httpx

    from bench.run import ROOT, _wait_url, start_coordinator
    from tests.procs import stop_process

    data_dir = folder / "coordinator"
    process, _, init = start_coordinator(data_dir)
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=30)
    filled = fill(data_dir / "coordinator.sqlite3", jobs, init["workspaceId"], create_workspace=False)
    base_ms = filled.pop("base_ms")
    (data_dir / "coordinator.url").unlink(missing_ok=True)
    process = subprocess.Popen([sys.executable, "-m", "coordinator", "serve", "--bind", "127.0.0.1:0",
                                "--data-dir", str(data_dir)], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, cwd=ROOT, env=dict(os.environ))
    try:
        url = _wait_url(data_dir / "coordinator.url", process)
        filled["settleSeconds"] = _settle(process.pid)
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {init['ownerToken']}"},
                          timeout=30) as client:
            def listing(**params: Any) -> Callable[[], Any]:
                def call() -> Any:
                    response = client.get("/v0/jobs", params={"limit": 50, **params})
                    response.raise_for_status()
                    return response.json()
                return call

            deep_cursor = listing(createdBefore=_iso(base_ms + jobs * 5))()["nextCursor"]
            assert deep_cursor, "the fill wrote no jobs"
            queries = {
                "list_newest_50": listing(),
                "list_page_deep": listing(cursor=deep_cursor),
                "list_state_queued": listing(state="QUEUED"),
                "list_state_running_or_failed": listing(state=["RUNNING", "FAILED"]),
                "list_label": listing(label="team=t3"),
                "list_label_absent": listing(label="team=nobody"),
                "list_created_window": listing(createdAfter=_iso(base_ms + jobs * 2),
                                               createdBefore=_iso(base_ms + jobs * 3)),
            }
            filled["queries"] = {name: _time_sync(call, repeat) for name, call in queries.items()}
    finally:
        stop_process(process)
    filled["through"] = "http"
    return filled


def _settle(pid: int, *, idle_share: float = 0.05, timeout: float = 300.0) -> float:
    """Seconds until the coordinator's start-up work is done (retention's first pass walks every
    finished job): its CPU under ``idle_share`` of a core for one second. The figures are of a
    coordinator in its steady state, not of one still pruning."""
    import psutil

    process = psutil.Process(pid)
    started = time.monotonic()
    process.cpu_percent(None)
    while time.monotonic() - started < timeout:
        time.sleep(1.0)
        if process.cpu_percent(None) < idle_share * 100:
            break
    return round(time.monotonic() - started, 1)


def _iso(ms: int) -> str:
    from datetime import UTC, datetime
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def print_figures(figures: dict[str, Any]) -> None:
    through = " (through HTTP)" if figures.get("through") == "http" else ""
    print(f"growth{through}: {figures['jobs']:,} jobs (+{figures['otherWorkspaceJobs']:,} in another workspace), "
          f"{figures['databaseMiB']} MiB, filled in {figures['fillSeconds']} s"
          + (f", settled {figures['settleSeconds']} s after start" if "settleSeconds" in figures else ""))
    for name, timing in figures["queries"].items():
        print(f"  {name:<30} p50 {timing['p50Ms']:>9.3f} ms   p99 {timing['p99Ms']:>9.3f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.growth", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=200)
    parser.add_argument("--http", action="store_true", help="time the lists through a real coordinator's HTTP API")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        figures = (measure_http if args.http else measure)(args.jobs, Path(tmp), args.repeat)
    print_figures(figures)
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
