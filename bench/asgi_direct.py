"""The coordinator's own CPU per request, without sockets or Hypercorn: the ASGI app (the fast
lane in front of Quart) called directly, in one process, on a fresh SQLite store.

    .venv/bin/python -m bench.asgi_direct [--requests 2000] [--profile get|submit]

What it prints is the application's share of a request (authentication, the store, the view,
the headers, metrics, the audit row, the log line), which is what the request path's work
can change; Hypercorn's HTTP/1.1 handling (the bare server's whole cost) comes on top in
``python -m bench``. CPU is the process's (all threads: the writer thread's commit too), per
request; the request log lines go to a discarded stream, rendered as ``serve`` renders them.
Scenarios run interleaved in rounds, so a change in the machine's load hits each alike.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

from common.clock import SystemClock
from common.logs import configure_logging
from coordinator.app import create_asgi
from coordinator.bootstrap import initialize
from coordinator.context import Services
from coordinator.settings import Settings
from coordinator.store.factory import open_store

JOB = b'{"type":"COMMAND","command":"echo hello","timeoutSeconds":30,"labels":{"bench":"yes"}}'


async def call(app: Any, method: str, path: str, token: str, body: bytes = b"") -> tuple[int, bytes]:
    """One request through the ASGI app: its status and body."""
    headers = [(b"host", b"127.0.0.1"), (b"authorization", b"Bearer " + token.encode())]
    if body:
        headers += [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method,
             "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
             "headers": headers, "client": ("127.0.0.1", 40000), "server": ("127.0.0.1", 8000),
             "extensions": {}}
    sent = False
    answer: dict[str, Any] = {}
    gone = trio.Event()

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            answer["status"] = message["status"]
        elif message["type"] == "http.response.body":
            answer["body"] = answer.get("body", b"") + message.get("body", b"")

    await app(scope, receive, send)
    gone.set()
    return answer["status"], answer.get("body", b"")


async def measure(requests: int, rounds: int, profile: str | None, concurrency: int, agents: int) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="asgi-direct-"))
    settings = Settings(data_dir=tmp, bind="127.0.0.1:0")
    clock = SystemClock()
    async with open_store(settings.database, pool_size=settings.store_pool_size,
                          statement_timeout_seconds=settings.store_statement_timeout_seconds,
                          pool_timeout_seconds=settings.store_pool_timeout_seconds) as store:
        init = await initialize(store, clock, plan=settings.default_plan)
        assert init is not None
        svc = Services(store=store, settings=settings, clock=clock)
        app = create_asgi(svc)
        token = init.owner_token
        # Agents of the workspace (each submission reads them for its queue reason): READY,
        # none matching the benchmark job's label, so every one is looked at.
        for index in range(agents):
            agent = (f"agt_bench{index:08d}", init.workspace_id, f"bench-{index}", "READY",
                     json.dumps({"pool": f"p{index % 10}"}), json.dumps({"cpus": 8, "memoryMb": 16384, "gpus": 0}),
                     "bench", 0, 0)
            await store._write(lambda tx, agent=agent: tx.execute(
                "INSERT INTO agents (id, workspace_id, name, state, labels, capacity, version, registered_at, "
                "last_heartbeat_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", agent))
        status, body = await call(app, "POST", "/v0/jobs", token, JOB)
        assert status == 201, body
        job_id = json.loads(body)["id"]
        status, body = await call(app, "POST", f"/v0/jobs/{job_id}:cancel", token)
        assert status == 200, body
        scenarios = {
            "get": lambda: call(app, "GET", f"/v0/jobs/{job_id}", token),
            "submit": lambda: call(app, "POST", "/v0/jobs", token, JOB),
        }
        # Warm-up: caches, the interpreter's specialisations.
        for make in scenarios.values():
            for _ in range(200):
                await make()
        if profile is not None:
            profiler = cProfile.Profile()
            profiler.enable()
            for _ in range(requests):
                status, body = await scenarios[profile]()
            profiler.disable()
            out = io.StringIO()
            pstats.Stats(profiler, stream=out).sort_stats("cumulative").print_stats(60)
            out2 = io.StringIO()
            pstats.Stats(profiler, stream=out2).sort_stats("tottime").print_stats(40)
            print(out.getvalue())
            print(out2.getvalue())
            return
        figures: dict[str, list[float]] = {name: [] for name in scenarios}
        for _ in range(rounds):
            for name, make in scenarios.items():
                started = time.process_time()

                async def client(count: int, make: Any = make) -> None:
                    for _ in range(count):
                        status, body = await make()
                        assert status in (200, 201), body

                async with trio.open_nursery() as nursery:
                    for _ in range(concurrency):
                        nursery.start_soon(client, requests // concurrency)
                figures[name].append((time.process_time() - started) / requests * 1000)
        load = os.getloadavg()[0]
        for name, runs in figures.items():
            print(f"{name:<7} {statistics.median(runs):.3f} ms CPU a request ({agents} agents; median of "
                  f"{rounds} rounds of {requests}; rounds {', '.join(f'{run:.3f}' for run in runs)}; load {load:.1f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=1, help="requests in flight at once")
    parser.add_argument("--agents", type=int, default=0, help="agents registered in the workspace first")
    parser.add_argument("--profile", choices=["get", "submit"], default=None)
    args = parser.parse_args()
    # The request log lines rendered as ``serve`` renders them, written nowhere.
    sys.stderr = open(os.devnull, "w")  # noqa: SIM115 (lives as long as the process)
    configure_logging()
    stdout = sys.stdout
    trio.run(measure, args.requests, args.rounds, args.profile, args.concurrency, args.agents)
    stdout.flush()


if __name__ == "__main__":
    main()
