"""Web console pages with 100,000 jobs and 500 agents. Prints figures, writes JSON.

A real coordinator process serves a store filled with ``--jobs`` jobs (mixed states, a tenth
labelled ``pool=gpu``) and ``--agents`` agents. Each console page is fetched ``--repeat`` times
with a signed-in session; its median and p90 latency are compared with the bare API call the
Jobs page is built on (``GET /v0/jobs?limit=50`` with a bearer token), measured in the same
run. A page that loaded everything would grow with the data; these stay a small multiple of
one API page.

Usage: ``.venv/bin/python bench/console_pages.py [--jobs N] [--agents N] [--repeat N] [--json PATH]``
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from common.ids import new_id

STATES = ["SUCCEEDED"] * 6 + ["FAILED", "CANCELLED", "QUEUED", "RUNNING"]


def _fill(database: Path, workspace_id: str, jobs: int, agents: int) -> tuple[str, str]:
    start = datetime.now(UTC) - timedelta(days=20)
    agent_ids = [new_id("agt", start + timedelta(seconds=n)) for n in range(agents)]
    job_rows = []
    for n in range(jobs):
        created = start + timedelta(seconds=n * 10)
        state = STATES[n % len(STATES)]
        labels = {"pool": "gpu" if n % 10 == 0 else "cpu", "team": f"t{n % 7}"}
        job_rows.append((new_id("job", created), workspace_id, state, "COMMAND", f"make test SHARD={n}", f"job-{n}",
                         json.dumps(labels), "{}", 3600, int(created.timestamp() * 1000),
                         agent_ids[n % agents] if state != "QUEUED" else None))
    now = int(time.time() * 1000)
    agent_rows = [(agent_id, workspace_id, f"host-{n:03d}", "READY", json.dumps({"zone": f"z{n % 5}"}),
                   json.dumps({"cpus": 16, "memoryMb": 65536, "gpus": n % 2}), "bench", now, now)
                  for n, agent_id in enumerate(agent_ids)]
    with sqlite3.connect(database) as db:
        db.executemany("""INSERT INTO jobs (id, workspace_id, state, type, command, name, labels, env,
                                            timeout_seconds, created_at, agent_id)
                          VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""", job_rows)
        db.executemany("""INSERT INTO agents (id, workspace_id, name, state, labels, capacity, version,
                                              registered_at, last_heartbeat_at)
                          VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)""", agent_rows)
    return job_rows[-1][0], agent_ids[0]


def _timed(client: httpx.Client, path: str, repeat: int) -> dict[str, float]:
    timings = []
    for _ in range(repeat):
        started = time.perf_counter()
        response = client.get(path)
        timings.append((time.perf_counter() - started) * 1000)
        assert response.status_code == 200, (path, response.status_code, response.text[:300])
    timings.sort()
    return {"median_ms": round(statistics.median(timings), 2), "p90_ms": round(timings[int(len(timings) * 0.9)], 2)}


def bench(jobs: int, agents: int, repeat: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "coordinator"
        python = [sys.executable, "-m", "coordinator"]
        init = subprocess.run([*python, "init", "--data-dir", str(data), "--json"], capture_output=True, text=True,
                              check=True)
        secrets = json.loads(init.stdout)
        job_id, _ = _fill(data / "coordinator.sqlite3", secrets["workspaceId"], jobs, agents)
        with (Path(tmp) / "serve.log").open("wb") as log:
            server = subprocess.Popen([*python, "serve", "--bind", "127.0.0.1:0", "--data-dir", str(data)],
                                      stdout=log, stderr=log)
        try:
            url_file = data / "coordinator.url"
            deadline = time.monotonic() + 60
            while not url_file.exists():
                if time.monotonic() > deadline or server.poll() is not None:
                    raise SystemExit(f"the coordinator did not start: {(Path(tmp) / 'serve.log').read_text()}")
                time.sleep(0.1)
            url = url_file.read_text().strip()
            with httpx.Client(base_url=url, timeout=60) as browser, httpx.Client(
                    base_url=url, timeout=60, headers={"Authorization": f"Bearer {secrets['ownerToken']}"}) as api:
                signed = browser.post("/v0/sessions", json={"pat": secrets["ownerToken"]})
                assert signed.status_code == 201, signed.text
                baseline = _timed(api, "/v0/jobs?limit=50", repeat)
                pages = {
                    "/ui/jobs": "Jobs, newest 50",
                    "/ui/jobs/rows": "Jobs, the live refresh",
                    "/ui/jobs?state=QUEUED": "Jobs filtered by state",
                    "/ui/jobs?label=pool%3Dgpu": "Jobs filtered by label",
                    f"/ui/jobs/{job_id}": "one job",
                    "/ui/fleet": "Fleet, first 50 of the agents",
                    "/ui/fleet/rows": "Fleet, the live refresh",
                    "/ui/usage": "Usage (31 days of roll-ups, caps)",
                    "/ui/access": "Access (members, tokens, webhooks, audit)",
                }
                results = {path: {"what": what, **_timed(browser, path, repeat)} for path, what in pages.items()}
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=30)
    for figures in results.values():
        figures["ratio_to_api_page"] = round(figures["median_ms"] / baseline["median_ms"], 2)
    return {"jobs": jobs, "agents": agents, "repeat": repeat, "api_jobs_page": baseline, "pages": results,
            "load": os.getloadavg()[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--agents", type=int, default=500)
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--json", type=Path, default=Path("bench/results/console_pages.json"))
    args = parser.parse_args()
    report = bench(args.jobs, args.agents, args.repeat)
    print(f"{args.jobs} jobs, {args.agents} agents; GET /v0/jobs?limit=50 median "
          f"{report['api_jobs_page']['median_ms']} ms (load average {report['load']:.1f})")
    for path, figures in report["pages"].items():
        print(f"  {path:32} median {figures['median_ms']:8.2f} ms  p90 {figures['p90_ms']:8.2f} ms  "
              f"x{figures['ratio_to_api_page']:<5}  {figures['what']}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
