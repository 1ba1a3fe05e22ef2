"""API benchmark: a real coordinator process driven over loopback from this process.

    .venv/bin/python bench/api.py [--seconds 5] [--jobs 300]

Measures, in one run:

- ``submit``: ``POST /v0/jobs`` per second with 32 concurrent clients;
- ``ceiling``: the same request shape (a small JSON POST answered with 201 JSON) against a bare
  Hypercorn ASGI app in its own process, with the same 32 clients: what this machine, Hypercorn
  and this client can do at all. ``submitToCeiling`` is the ratio (target: at least 0.5);
- ``submitToClaim``: with 8 simulated agents long-polling ``/agent/v0/claim``, the time from
  sending a submission to an agent holding the assignment, p50 and p99 (targets: 15 and 60 ms).

Prints one JSON object and writes it to ``bench/results/api.json``. Figures depend on what
else the machine is doing; compare runs from the same machine only.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import trio

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "api.json"
CLIENTS = 32
AGENTS = 8
JOB = {"type": "COMMAND", "command": "echo hello", "timeoutSeconds": 30}


# --- the bare ASGI app (runs in its own process) -------------------------------------------
async def bare_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False)
    body = b'{"id":"job_01jt9hello0000000000000000","state":"QUEUED","createdAt":"2026-04-26T09:13:21.000Z"}'
    await send({"type": "http.response.start", "status": 201,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def serve_bare(url_file: Path) -> None:
    from hypercorn.config import Config
    from hypercorn.trio import serve

    config = Config()
    config.bind = ["127.0.0.1:0"]
    config.accesslog = None

    async def run() -> None:
        async with trio.open_nursery() as nursery:
            binds = await nursery.start(serve, bare_app, config)
            await trio.Path(url_file).write_text(str(binds[0]))

    trio.run(run)


# --- processes ---------------------------------------------------------------------------
def _wait_url(path: Path, process: subprocess.Popen[bytes]) -> str:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"server exited with {process.returncode}")
        if path.exists() and path.read_text().strip():
            url = path.read_text().strip()
            try:
                httpx.get(url + "/healthz", timeout=2)
                return url
            except httpx.TransportError:
                pass
        time.sleep(0.05)
    raise SystemExit("server did not start within 60 s")


def _start_coordinator(data_dir: Path) -> tuple[subprocess.Popen[bytes], str, dict[str, str]]:
    data_dir.mkdir(parents=True)
    stdout = data_dir / "stdout"
    with stdout.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "coordinator", "serve", "--bind", "127.0.0.1:0", "--data-dir", str(data_dir),
             "--init-json"], stdout=out, stderr=subprocess.DEVNULL, cwd=ROOT)
    url = _wait_url(data_dir / "coordinator.url", process)
    return process, url, json.loads(stdout.read_text().splitlines()[0])


def _start_bare(tmp: Path) -> tuple[subprocess.Popen[bytes], str]:
    url_file = tmp / "bare.url"
    process = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--serve-bare", str(url_file)],
                               stderr=subprocess.DEVNULL, cwd=ROOT)
    return process, _wait_url(url_file, process)


# --- measurements ------------------------------------------------------------------------
async def throughput(url: str, headers: dict[str, str], seconds: float) -> float:
    """Requests per second over ``seconds`` with CLIENTS concurrent connections (after a warm-up)."""
    limits = httpx.Limits(max_connections=CLIENTS, max_keepalive_connections=CLIENTS)
    async with httpx.AsyncClient(base_url=url, headers=headers, limits=limits, timeout=30) as client:
        done = 0
        measuring = False

        async def worker(stop_at: float) -> None:
            nonlocal done
            while trio.current_time() < stop_at:
                response = await client.post("/v0/jobs", json=JOB)
                assert response.status_code == 201, response.text
                if measuring:
                    done += 1

        for phase_seconds, measure in ((1.0, False), (seconds, True)):
            measuring = measure
            started = trio.current_time()
            async with trio.open_nursery() as nursery:
                for _ in range(CLIENTS):
                    nursery.start_soon(worker, started + phase_seconds)
            elapsed = trio.current_time() - started
        return done / elapsed


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
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--jobs", type=int, default=300)
    parser.add_argument("--serve-bare", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_bare:
        serve_bare(args.serve_bare)
        return
    sys.path.insert(0, str(ROOT))
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        coordinator, url, init = _start_coordinator(tmp / "coordinator")
        bare, bare_url = _start_bare(tmp)
        try:
            auth = {"Authorization": f"Bearer {init['ownerToken']}"}
            ceiling = trio.run(throughput, bare_url, {}, args.seconds)
            # Latency first, on an empty queue (agents would otherwise claim the backlog).
            latencies = trio.run(submit_to_claim, url, init["ownerToken"], init["registrationToken"], args.jobs)
            submit = trio.run(throughput, url, auth, args.seconds)
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
