"""API benchmark: a real coordinator process driven over loopback from this process.

    .venv/bin/python bench/api.py [--seconds 5] [--jobs 300]   (needs wrk: apt-get install wrk)

Measures, in one run:

- ``submit``: ``POST /v0/jobs`` per second over 32 connections, driven by wrk;
- ``ceiling``: the same request (a small JSON POST answered with 201 JSON) against a bare
  Hypercorn ASGI app in its own process (``bench/bare.py``), driven the same way: what this
  machine and Hypercorn can do at all. The load generator is wrk, not Python: a Python client
  saturated before the bare server did and so reported a ceiling too low (issue 15).
  ``submitToCeiling`` is the ratio (target: at least 0.5);
- ``submitToClaim``: with 8 simulated agents long-polling ``/agent/v0/claim``, the time from
  sending a submission to an agent holding the assignment, p50 and p99 (targets: 15 and 60 ms).

Prints one JSON object and writes it to ``bench/results/api.json``. Figures depend on what
else the machine is doing; compare runs from the same machine only.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import trio

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "api.json"
CLIENTS = 32
AGENTS = 8
JOB = {"type": "COMMAND", "command": "echo hello", "timeoutSeconds": 30}


# --- processes ---------------------------------------------------------------------------
def _start_coordinator(data_dir: Path) -> tuple[subprocess.Popen[bytes], str, dict[str, str]]:
    from bench.run import start_coordinator

    return start_coordinator(data_dir)


# --- measurements ------------------------------------------------------------------------
def throughput(url: str, token: str, seconds: int) -> float:
    """Requests per second of ``POST /v0/jobs`` over ``seconds`` with CLIENTS connections, driven by
    wrk (bench/lua/request.lua) after a one-second warm-up. wrk is far faster than either server, so
    the figure is the server's; a Python client saturated first and hid the ceiling (issue 15)."""
    from bench.run import run_wrk

    body = json.dumps(JOB, separators=(",", ":"))
    run_wrk(url, "POST", "/v0/jobs", token, body, connections=CLIENTS, seconds=1)
    return float(run_wrk(url, "POST", "/v0/jobs", token, body, connections=CLIENTS, seconds=seconds)
                 ["requestsPerSecond"])


async def submit_to_claim(url: str, owner: str, registration: str, jobs: int) -> list[float]:
    """Latencies (ms) from sending a submission to a long-polling agent holding its assignment."""
    from common.protocol import CapacityMsg, ClaimRequest, RegisterRequest

    tokens = []
    async with httpx.AsyncClient(base_url=url, timeout=30) as anonymous:
        for n in range(AGENTS):
            body = RegisterRequest(name=f"bench-{n}", labels={"bench": "yes"}, version="bench",
                                   capacity=CapacityMsg(cpus=64, memoryMb=1 << 20, gpus=0))
            response = await anonymous.post("/agent/v0/register", content=body.model_dump_json(),
                                            headers={"Authorization": f"Bearer {registration}",
                                                     "Content-Type": "application/json"})
            tokens.append(response.json()["agentToken"])
    claim = ClaimRequest(free=CapacityMsg(cpus=64, memoryMb=1 << 20, gpus=0), waitSeconds=25).model_dump_json()
    sent_at: dict[str, float] = {}
    latencies: list[float] = []
    claimed = trio.Event()
    remaining = jobs

    async def agent(token: str) -> None:
        nonlocal claimed
        async with httpx.AsyncClient(base_url=url, timeout=60,
                                     headers={"Authorization": f"Bearer {token}",
                                              "Content-Type": "application/json"}) as client:
            while True:
                response = await client.post("/agent/v0/claim", content=claim)
                if response.status_code == 200:
                    # The name is known before the submission is sent; the id only after.
                    name = response.json()["name"]
                    latencies.append((time.perf_counter() - sent_at[name]) * 1000)
                    claimed.set()

    headers = {"Authorization": f"Bearer {owner}"}
    async with httpx.AsyncClient(base_url=url, timeout=30, headers=headers) as api, trio.open_nursery() as nursery:
        for token in tokens:
            nursery.start_soon(agent, token)
        await trio.sleep(0.5)  # let every agent reach its long-poll
        while remaining:
            claimed = trio.Event()
            name = f"latency-{remaining}"
            sent_at[name] = time.perf_counter()
            response = await api.post("/v0/jobs", json={**JOB, "name": name})
            assert response.status_code == 201, response.text
            await claimed.wait()
            remaining -= 1
        nursery.cancel_scope.cancel()
    return latencies


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--jobs", type=int, default=300)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from bench.run import start_bare

    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (apt-get install wrk): it drives the throughput figures")
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        coordinator, url, init = _start_coordinator(tmp / "coordinator")
        bare, bare_url = start_bare("hypercorn", tmp)
        try:
            ceiling = throughput(bare_url, init["ownerToken"], args.seconds)
            # Latency first, on an empty queue (agents would otherwise claim the backlog).
            latencies = trio.run(submit_to_claim, url, init["ownerToken"], init["registrationToken"], args.jobs)
            submit = throughput(url, init["ownerToken"], args.seconds)
        finally:
            for process in (coordinator, bare):
                process.terminate()
                process.wait(timeout=30)
    result = {
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
        "clients": CLIENTS,
        "agents": AGENTS,
        "ceilingRequestsPerSecond": round(ceiling, 1),
        "submitPerSecond": round(submit, 1),
        "submitToCeiling": round(submit / ceiling, 3),
        "submitToClaimMs": {
            "jobs": len(latencies),
            "p50": round(statistics.median(latencies), 2),
            "p99": round(_percentile(latencies, 0.99), 2),
            "max": round(max(latencies), 2),
        },
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
