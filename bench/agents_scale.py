"""Agents at scale: N simulated agents on one freshly started coordinator (SQLite), at the real
agent's cadence, while the public API is timed (issue 15: 5,000 agents, coordinator CPU under
50% of one core, API p99 under 100 ms).

Each simulated agent does what ``agentd/daemon.py`` does, over real HTTP on loopback:

- registers once (``POST /agent/v0/register`` with labels, capacity and version);
- heartbeats: a held beat (``waitSeconds`` = the interval the coordinator gave, at most 60 s:
  5 s for a small fleet, longer for a large one, coordinator/cadence.py) listing no running
  jobs, labels, capacity and version on the first beat only, then the next beat once the
  interval since the previous one has passed;
- claims: a long-poll (``waitSeconds`` 25, ``agentd.daemon.CLAIM_WAIT_SECONDS``) with its free
  capacity, again as soon as one ends (204).

The agents start spread over one heartbeat interval, as real ones that started at different
times. The simulator speaks raw HTTP/1.1 over trio sockets (pre-built requests, answers read by
their Content-Length, one keep-alive connection per agent for beats and one for claims, dropped
after 2 s idle as the agent's pool does), so it costs a small fraction of the coordinator it
measures: the httpx-based first version needed more CPU than the coordinator did.

``--cadence fixed,default`` (the default) measures each level twice, interleaved: ``fixed``
with ``heartbeats_per_second = 0`` (every agent beats every 5 s, as before the cadence
scaled) and ``default`` (the interval scaled with the fleet).

The jobs the probe submits need a label no simulated agent has, so they stay queued and
the figures are those of holding agents, not of running jobs (``bench/replicas.py`` and
``bench/claims.py`` measure dispatch).

Measured over ``--seconds`` after a warm-up, per agent count:

- the coordinator's CPU (psutil, user + system, share of one core) and the simulator's own
  (all its worker processes together): the simulator must cost less than what it measures;
- the public API meanwhile: ``GET /v0/jobs?limit=50`` and ``POST /v0/jobs``, each about
  ``--probe-rate`` a second, one at a time: p50, p99, max (ms);
- heartbeats and claims per second the coordinator answered, and failed requests;
- the SQLite commits per second (from the coordinator's store: read from ``/metrics`` when
  exported, else left out).

``--idle-claims N`` (default 2,000) adds one more measurement: N agents whose claims are all
held and who send nothing else (no heartbeats; the coordinator gets a long grace so they stay
READY): the claims open over 10 s, then an 11 s window in which all are held and none is yet
answered: what held long-polls cost while they wait.

``--compare-with CHECKOUT`` measures another checkout's coordinator (say the commit before a
change) in the same run, level by level, so before and after share the machine's load.

    .venv/bin/python bench/agents_scale.py [--agents 500,1000,2000,5000] [--seconds 20]
        [--warmup 8] [--workers 2] [--cadence fixed,default] [--idle-claims 2000]
        [--compare-with /path/to/checkout]

Prints a table and writes JSON to ``bench/results/agents_scale.json``. The figures are medians
over the probe's requests and a single window per level; they depend on everything else the
machine does (the development machine is shared by other engineers and loaded): compare runs
from one machine, and the before/after pairs measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import psutil
import trio

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "agents_scale.json"
CLAIM_WAIT_SECONDS = 25.0  # agentd.daemon.CLAIM_WAIT_SECONDS
KEEPALIVE_SECONDS = 2.0  # common.failover.KEEPALIVE_SECONDS
# Agents that only hold claims open them over this long (thousands of connections in one second
# overflow the listen backlog), then the window starts: all held, none answered before 25 s.
IDLE_SPREAD_SECONDS = 10.0
CAPACITY = {"cpus": 8, "memoryMb": 16384, "gpus": 0}
# Jobs the probe submits: no simulated agent has this label, so they stay queued.
PROBE_JOB = {"type": "COMMAND", "command": "true", "timeoutSeconds": 30, "labels": {"bench": "nobody"}}


# --- the simulator (worker processes) ---------------------------------------------------------
# Raw HTTP/1.1 over trio sockets: a request is a few pre-built bytes, an answer is read by its
# Content-Length. The httpx-based simulator of the first version cost more CPU than the
# coordinator it measured (0.5-1.4 cores of the machine's two), so thousands of agents could not
# be driven at their cadence on this machine.
class Counts:
    """Agent requests answered (and failed) inside the measuring window, by this worker's clock."""

    def __init__(self, window_start: float, window_end: float) -> None:
        self.window = (window_start, window_end)
        self.beats = 0
        self.claims = 0
        self.failures = 0
        self.intervals: list[float] = []  # the heartbeat intervals handed out in the window
        self.reasons: dict[str, int] = {}  # why agent requests failed, over the whole run

    def failed(self, kind: str, exc: BaseException) -> None:
        self.count("failures")
        reason = f"{kind}: {exc!r}"[:120]
        self.reasons[reason] = self.reasons.get(reason, 0) + 1

    def count(self, kind: str) -> None:
        if self.window[0] <= trio.current_time() < self.window[1]:
            setattr(self, kind, getattr(self, kind) + 1)


class ConnectionClosed(Exception):
    pass


class RawConnection:
    """One keep-alive HTTP/1.1 connection, one request at a time, as an agent's pooled client
    uses it: dropped after ``KEEPALIVE_SECONDS`` idle (common/failover.py) and opened again."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.stream: trio.SocketStream | None = None
        self.buffer = b""
        self.idle_since = 0.0

    async def close(self) -> None:
        if self.stream is not None:
            stream, self.stream = self.stream, None
            self.buffer = b""
            with trio.CancelScope(shield=True):
                await stream.aclose()

    async def request(self, data: bytes) -> tuple[int, bytes]:
        if self.stream is not None and trio.current_time() - self.idle_since > KEEPALIVE_SECONDS:
            await self.close()
        if self.stream is None:
            self.stream = await trio.open_tcp_stream(self.host, self.port)
        try:
            await self.stream.send_all(data)
            status, body = await self._answer(self.stream)
        except BaseException:
            await self.close()
            raise
        self.idle_since = trio.current_time()
        return status, body

    async def _answer(self, stream: trio.SocketStream) -> tuple[int, bytes]:
        buffer = self.buffer
        while (end := buffer.find(b"\r\n\r\n")) < 0:
            chunk = await stream.receive_some(65536)
            if not chunk:
                raise ConnectionClosed("closed before the answer's head")
            buffer += chunk
        head = buffer[:end].lower()
        buffer = buffer[end + 4:]
        status = int(head[9:12])
        length = 0
        at = head.find(b"content-length:")
        if at >= 0:
            stop = head.find(b"\r\n", at)
            length = int(head[at + 15:stop if stop >= 0 else len(head)])
        while len(buffer) < length:
            chunk = await stream.receive_some(65536)
            if not chunk:
                raise ConnectionClosed("closed inside the answer's body")
            buffer += chunk
        body, self.buffer = buffer[:length], buffer[length:]
        if b"connection: close" in head:
            await self.close()
        return status, body


def _request(host: str, path: str, token: str, body: dict[str, Any]) -> bytes:
    payload = json.dumps(body, separators=(",", ":")).encode()
    return (f"POST {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n").encode() + payload


async def _register_raw(host: str, port: int, registration: str, name: str) -> tuple[str, float]:
    """Register over raw HTTP; the agent's token and the interval it is told."""
    body = {"name": name, "labels": {"sim": "yes"}, "capacity": CAPACITY, "version": "bench"}
    request = _request(f"{host}:{port}", "/agent/v0/register", registration, body)
    for _ in range(10):
        connection = RawConnection(host, port)
        try:
            status, answer = await connection.request(request)
        except (OSError, ConnectionClosed, trio.BrokenResourceError):
            await trio.sleep(1)
            continue
        finally:
            await connection.close()
        if status == 201:
            registered = json.loads(answer)
            return str(registered["agentToken"]), float(registered["heartbeatIntervalSeconds"])
        await trio.sleep(1)
    raise SystemExit(f"could not register {name}")


async def _register(client: httpx.AsyncClient, registration: str, name: str) -> str:
    """Register through httpx (bench/dispatch.py's simulated agents)."""
    body = {"name": name, "labels": {"sim": "yes"}, "capacity": CAPACITY, "version": "bench"}
    for _ in range(10):
        try:
            response = await client.post("/agent/v0/register", json=body,
                                         headers={"Authorization": f"Bearer {registration}"})
        except httpx.HTTPError:
            await trio.sleep(1)
            continue
        if response.status_code == 201:
            return str(response.json()["agentToken"])
        await trio.sleep(1)
    raise SystemExit(f"could not register {name}")


_FAILURES = (OSError, ConnectionClosed, trio.BrokenResourceError, ValueError)


async def _agent(host: str, port: int, token: str, interval: float, counts: Counts, *, beats: bool,
                 start_in: float) -> None:
    await trio.sleep(start_in)
    address = f"{host}:{port}"

    async def heartbeats() -> None:
        nonlocal interval
        connection = RawConnection(host, port)
        first = True
        while True:
            # agentd/daemon.py: a held beat of the interval (at most MAX_HEARTBEAT_WAIT_SECONDS);
            # labels, capacity and version on the first beat only.
            beat: dict[str, Any] = {"state": "READY", "runningJobs": [], "waitSeconds": min(interval, 60.0),
                                    "loopLagMs": 0.5}
            if first:
                beat.update(labels={"sim": "yes"}, capacity=CAPACITY, version="bench")
            sent_at = trio.current_time()
            try:
                with trio.fail_after(interval + 15):
                    status, body = await connection.request(_request(address, "/agent/v0/heartbeat", token, beat))
                if status != 200:
                    raise ValueError(f"heartbeat answered {status}")
                interval = float(json.loads(body)["heartbeatIntervalSeconds"])
                first = False
                counts.count("beats")
                if counts.window[0] <= trio.current_time() < counts.window[1]:
                    counts.intervals.append(interval)
            except (*_FAILURES, trio.TooSlowError) as exc:
                counts.failed("heartbeat", exc)
                await trio.sleep(1)
            await trio.sleep(max(0.0, interval - (trio.current_time() - sent_at)))

    async def claims() -> None:
        connection = RawConnection(host, port)
        request = _request(address, "/agent/v0/claim", token, {"free": CAPACITY, "waitSeconds": CLAIM_WAIT_SECONDS})
        while True:
            try:
                with trio.fail_after(CLAIM_WAIT_SECONDS + 15):
                    status, _ = await connection.request(request)
                if status not in (200, 204):
                    raise ValueError(f"claim answered {status}")
                counts.count("claims")
            except (*_FAILURES, trio.TooSlowError) as exc:
                counts.failed("claim", exc)
                await trio.sleep(1)

    async with trio.open_nursery() as nursery:
        if beats:
            nursery.start_soon(heartbeats)
        nursery.start_soon(claims)


async def _worker(url: str, registration: str, names: list[str], beats: bool, warmup: float, seconds: float) -> None:
    parsed = httpx.URL(url)
    host, port = parsed.host, parsed.port or 80
    agents: list[tuple[str, float]] = []
    limiter = trio.CapacityLimiter(16)

    async def register(name: str) -> None:
        async with limiter:
            agents.append(await _register_raw(host, port, registration, name))

    async with trio.open_nursery() as nursery:
        for name in names:
            nursery.start_soon(register, name)
    print("ready", flush=True)
    await trio.to_thread.run_sync(sys.stdin.readline)  # "go": every worker starts together
    go = trio.current_time()
    counts = Counts(go + warmup, go + warmup + seconds)
    with trio.move_on_after(warmup + seconds + 2):
        async with trio.open_nursery() as nursery:
            for token, interval in agents:
                # Spread over one interval (or, holding claims only, over IDLE_SPREAD_SECONDS).
                start_in = random.uniform(0, interval if beats else IDLE_SPREAD_SECONDS)
                nursery.start_soon(partial(_agent, host, port, token, interval, counts, beats=beats,
                                           start_in=start_in))
    print(json.dumps({"beats": counts.beats, "claims": counts.claims, "failures": counts.failures,
                      "intervals": counts.intervals, "reasons": counts.reasons}), flush=True)


# --- the measuring side -----------------------------------------------------------------------
def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] if ordered else float("nan")


def _summary(values: list[float]) -> dict[str, float]:
    if not values:
        return {"n": 0}
    return {"n": len(values), "p50": round(statistics.median(values), 1), "p99": round(_percentile(values, 0.99), 1),
            "max": round(max(values), 1)}


async def _probe(url: str, token: str, seconds: float, rate: float) -> dict[str, list[float]]:
    """GET /v0/jobs?limit=50 and POST /v0/jobs alternately, ``rate`` of each a second, latencies in ms."""
    timings: dict[str, list[float]] = {"list": [], "submit": [], "failed": []}
    async with httpx.AsyncClient(base_url=url, timeout=60, headers={"Authorization": f"Bearer {token}"}) as api:
        deadline = trio.current_time() + seconds
        while trio.current_time() < deadline:
            for kind in ("list", "submit"):
                started = time.perf_counter()
                try:
                    if kind == "list":
                        response = await api.get("/v0/jobs", params={"limit": 50})
                    else:
                        response = await api.post("/v0/jobs", json=PROBE_JOB)
                    ok = response.status_code in (200, 201)
                except httpx.HTTPError:
                    ok = False
                elapsed = (time.perf_counter() - started) * 1000
                timings[kind if ok else "failed"].append(elapsed)
                await trio.sleep(max(0.0, 1 / (2 * rate) - elapsed / 1000))
    return timings


def _cpu(processes: list[psutil.Process]) -> float:
    total = 0.0
    for process in processes:
        times = process.cpu_times()
        total += times.user + times.system
    return total


def _config(tmp: Path, agents: int, *, beats: bool, cadence: str) -> Path:
    # Each agent holds two connections (a held heartbeat and a claim): room for all of them.
    path = tmp / f"coordinator-{agents}-{int(beats)}-{cadence}.toml"
    text = f"[server]\nmax_connections = {2 * agents + 500}\n"
    if cadence == "fixed":
        # The interval before coordinator/cadence.py: 5 s whatever the fleet (a checkout older
        # than the setting must be measured with "default").
        text += "heartbeats_per_second = 0.0\n"
    if not beats:
        # Agents that only hold claims never beat: a long grace keeps them READY (a DOWN agent's
        # claim is refused, and its retries would be measured instead of the held claims).
        text += "agent_grace_seconds = 3600.0\n"
    path.write_text(text)
    return path


def measure(source: Path, tmp: Path, agents: int, *, workers: int, seconds: float, warmup: float,
            probe_rate: float, beats: bool, cadence: str = "default") -> dict[str, Any]:
    """One level: a fresh coordinator from ``source``, ``agents`` simulated agents, one window."""
    sys.path.insert(0, str(ROOT))
    from bench.run import start_coordinator

    data_dir = tmp / f"{source.name}-{agents}-{'beats' if beats else 'idle'}-{time.monotonic_ns()}"
    config = _config(tmp, agents, beats=beats, cadence=cadence)
    coordinator, url, init = start_coordinator(data_dir, ["--config", str(config)], source=source)
    procs: list[subprocess.Popen[str]] = []
    try:
        share = [agents // workers + (1 if i < agents % workers else 0) for i in range(workers)]
        offset = 0
        for index, count in enumerate(share):
            names = ",".join(f"sim-{index}-{n}" for n in range(count))
            offset += count
            procs.append(subprocess.Popen(
                [sys.executable, __file__, "--worker", url, init["registrationToken"], names,
                 "1" if beats else "0", f"{warmup}:{seconds}"],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT))
        registered_at = time.monotonic()
        for proc in procs:
            assert proc.stdout is not None
            line = proc.stdout.readline().strip()
            if line != "ready":
                raise SystemExit(f"a simulator worker failed to register its agents: {line!r}")
        registration_seconds = time.monotonic() - registered_at
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        time.sleep(warmup)
        coordinator_ps = psutil.Process(coordinator.pid)
        simulator_ps = [psutil.Process(proc.pid) for proc in procs]
        coordinator_cpu, simulator_cpu, started = _cpu([coordinator_ps]), _cpu(simulator_ps), time.monotonic()
        if beats:
            timings = trio.run(_probe, url, init["ownerToken"], seconds, probe_rate)
        else:
            time.sleep(seconds)  # nothing else: what the held claims cost by themselves
            timings = {}
        wall = time.monotonic() - started
        coordinator_cpu = _cpu([coordinator_ps]) - coordinator_cpu
        simulator_cpu = _cpu(simulator_ps) - simulator_cpu
        counts = {"beats": 0, "claims": 0, "failures": 0}
        intervals: list[float] = []
        reasons: dict[str, int] = {}
        for proc in procs:
            out, _ = proc.communicate(timeout=warmup + seconds + 120)
            reported = json.loads(out.strip().splitlines()[-1])
            intervals += reported.pop("intervals")
            for reason, n in reported.pop("reasons").items():
                reasons[reason] = reasons.get(reason, 0) + n
            for key, value in reported.items():
                counts[key] += value
        interval = statistics.median(intervals) if intervals else 5.0
        expected = (agents / interval if beats else 0.0) + agents / CLAIM_WAIT_SECONDS
        return {
            "agents": agents,
            "heartbeats": beats,
            "cadence": cadence,
            # The intervals the coordinator handed out in the window (its answers' heartbeatIntervalSeconds).
            "intervalSeconds": ({"median": round(statistics.median(intervals), 2), "min": min(intervals),
                                 "max": max(intervals)} if intervals else None),
            "registrationSeconds": round(registration_seconds, 1),
            "coordinatorCpuShare": round(coordinator_cpu / wall, 3),
            "simulatorCpuShare": round(simulator_cpu / wall, 3),
            "listMs": _summary(timings.get("list", [])),
            "submitMs": _summary(timings.get("submit", [])),
            "probeFailures": len(timings.get("failed", [])),
            # Inside the window, as the workers counted them (each by its own clock, from "go").
            "heartbeatsPerSecond": round(counts["beats"] / seconds, 1),
            "claimsPerSecond": round(counts["claims"] / seconds, 1),
            "agentRequestFailures": counts["failures"],
            "failureReasons": dict(sorted(reasons.items(), key=lambda item: -item[1])[:5]),
            # The rate the agents would send at their cadence (a held beat per interval, a claim
            # per 25 s), and how much of it the coordinator answered: on a loaded machine it gets
            # a fraction of a core and falls behind, so its share understates what the cadence costs.
            "cadenceRequestsPerSecond": round(expected, 1),
            "cadenceKept": round((counts["beats"] + counts["claims"]) / seconds / expected, 2),
            # CPU per agent request (the probe's and the background work's included) times the
            # cadence's rate: the share of a core the coordinator would need to keep up.
            "coordinatorCpuShareAtCadence": (round(coordinator_cpu / (counts["beats"] + counts["claims"]) * expected, 3)
                                             if counts["beats"] + counts["claims"] else None),
            # Steadier than the share on a loaded machine: what one agent request costs.
            "coordinatorCpuMsPerAgentRequest": (round(1000 * coordinator_cpu / (counts["beats"] + counts["claims"]), 2)
                                                if counts["beats"] + counts["claims"] else None),
        }
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        coordinator.terminate()
        coordinator.wait(timeout=60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--agents", default="500,1000,2000,5000")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--warmup", type=float, default=8.0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--probe-rate", type=float, default=5.0, help="requests a second of each API probe")
    parser.add_argument("--idle-claims", type=int, default=2000, help="0: skip the held-claims measurement")
    parser.add_argument("--compare-with", type=Path, default=None, help="another checkout, measured in the same run")
    parser.add_argument("--cadence", default="fixed,default",
                        help="heartbeat cadences at each level, interleaved: fixed (heartbeats_per_second = 0: "
                             "5 s whatever the fleet) and/or default (the coordinator's scaled interval)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--worker", nargs=5, metavar=("URL", "TOKEN", "NAMES", "BEATS", "SECONDS"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    # Killed (SIGTERM), the measuring side still stops the coordinator and workers it started.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if args.worker:
        url, token, names, beats, window = args.worker
        warmup, seconds = (float(part) for part in window.split(":"))
        trio.run(_worker, url, token, names.split(","), beats == "1", warmup, seconds)
        return
    sources = {"this": ROOT}
    if args.compare_with is not None:
        sources["compare"] = args.compare_with.resolve()
    levels: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        for agents in [int(n) for n in args.agents.split(",") if n]:
            for label, source in sources.items():
                for cadence in [c for c in args.cadence.split(",") if c]:
                    level = measure(source, tmp, agents, workers=args.workers, seconds=args.seconds,
                                    warmup=args.warmup, probe_rate=args.probe_rate, beats=True, cadence=cadence)
                    levels.append({"source": label, **level})
                    print(json.dumps(levels[-1]), flush=True)
        if args.idle_claims:
            for label, source in sources.items():
                # Shorter than the claim's 25 s hold: every claim stays held through the window.
                level = measure(source, tmp, args.idle_claims, workers=args.workers,
                                seconds=CLAIM_WAIT_SECONDS - IDLE_SPREAD_SECONDS - 3, warmup=IDLE_SPREAD_SECONDS + 1,
                                probe_rate=args.probe_rate, beats=False)
                levels.append({"source": label, **level})
                print(json.dumps(levels[-1]), flush=True)
    load = os.getloadavg()
    result = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "loadAverage1m": round(load[0], 2),
                    "note": "shared development machine, loaded by other engineers' work while this ran"},
        "sources": {label: str(path) for label, path in sources.items()},
        "levels": levels,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{'source':8} {'agents':>6} {'beats':>5} {'cadence':>7} {'interval':>8} {'beats/s':>7} {'claims/s':>8} "
          f"{'ms/req':>6} {'kept':>4} {'at cadence':>10} {'coord CPU':>9} {'sim CPU':>7} {'list p50/p99 ms':>16} "
          f"{'submit p50/p99 ms':>18} {'fail':>5}")
    for level in levels:
        lst, sub = level["listMs"], level["submitMs"]
        interval = level["intervalSeconds"]["median"] if level["intervalSeconds"] else "-"
        print(f"{level['source']:8} {level['agents']:>6} {'yes' if level['heartbeats'] else 'no':>5} "
              f"{level['cadence']:>7} {interval!s:>8} {level['heartbeatsPerSecond']:>7} {level['claimsPerSecond']:>8} "
              f"{level['coordinatorCpuMsPerAgentRequest']!s:>6} {level['cadenceKept']:>4} "
              f"{level['coordinatorCpuShareAtCadence'] or 0:>10.0%} "
              f"{level['coordinatorCpuShare']:>9.0%} {level['simulatorCpuShare']:>7.0%} "
              f"{lst.get('p50', '-')!s:>7}/{lst.get('p99', '-')!s:<8} "
              f"{sub.get('p50', '-')!s:>8}/{sub.get('p99', '-')!s:<9}"
              f"{level['probeFailures'] + level['agentRequestFailures']:>5}")


if __name__ == "__main__":
    main()
