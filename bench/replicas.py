"""Replicas: submissions and dispatch for 1, 2 and 3 coordinator replicas on one PostgreSQL
database, and for SQLite alone (one process), in one run, with each process's CPU share.

    .venv/bin/python bench/replicas.py [--seconds 5] [--agents 24] [--connections 32]
                                       [--configs sqlite,pg1,pg2,pg3]   (needs wrk and PostgreSQL)
                                       [--rounds 1] [--baseline CHECKOUT]

For each configuration, on a fresh database (tests/cluster.py starts the replicas, tests/
postgres.py a throwaway PostgreSQL server shared by the configurations, one database each):

- ``submit``: ``POST /v0/jobs`` per second, driven by one wrk per replica (the connections split
  evenly) for ``--seconds`` after a one-second warm-up; wrk is far faster than the servers;
- ``dispatch``: jobs completed per second by ``--agents`` simulated agents (tests/cluster.py's
  ``SimulatedAgent``: claim, report started, usage and finished over real HTTP, spread over the
  replicas) working off the backlog the submit phase left, counted over ``--seconds`` after a
  one-second warm-up (``backlogLeft`` says the queue never ran dry);
- over each phase, every process's CPU time as a share of one core (``cpu``: each replica, the
  PostgreSQL server with all its backends, and this process, which runs the agents); the rates
  divided by the cores the servers (replicas + database) used give ``perCore`` figures.

On a machine with few cores the replicas, the database and the load generators compete for the
same cores: compare the per-core figures, and compare runs from the same machine only. Each
phase also gives the CPU per operation (``replicaMsPerOp``: the replicas' CPU milliseconds per
submission or dispatched job; ``serverMsPerOp``: with the database's), the figure least moved
by other work on the machine.

``--rounds N`` measures every configuration N times, interleaved (config by config, round by
round), and reports each figure's median. ``--baseline CHECKOUT`` adds ``base-pg1``: one replica
on PostgreSQL run from another checkout of the project (``git worktree add /tmp/base main``, or
``git archive main | tar -x -C /tmp/base``), measured in the same run, interleaved with the rest,
so a change is compared with what it changes under the same load; ``ratios`` then has
``pg1ToBase*``. Prints a table and the JSON, and writes the JSON to ``bench/results/replicas.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import trio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.run import run_wrk  # noqa: E402
from tests.cluster import Cluster, SimulatedAgent, running_cluster  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "replicas.json"
JOB = {"type": "COMMAND", "command": "true", "timeoutSeconds": 600}
CONFIGS = {"sqlite": (1, False), "pg1": (1, True), "pg2": (2, True), "pg3": (3, True), "base-pg1": (1, True)}
BENCH_CONFIG = """
[server]
default_plan = "payg"
heartbeat_interval_seconds = 5
assignment_lease_seconds = 60

[rate_limits]
payg = false
unauthenticated = false
"""


class CpuMeter:
    """CPU seconds of named process trees between ``start`` and ``stop``; a tree's processes are
    looked up at both ends (PostgreSQL backends come and go with connections). ``bench`` is this
    process alone (its children are the replicas, counted apart), ``wrk`` the load generators
    that ended within the phase (their rusage as waited-for children)."""

    def __init__(self, roots: dict[str, int]) -> None:
        self.roots = roots
        self._children_before = 0.0
        self._before: dict[str, float] = {}
        self._started = 0.0
        self.shares: dict[str, float] = {}

    def _cpu(self, pid: int) -> float:
        try:
            root = psutil.Process(pid)
            total = 0.0
            for process in [root] if pid == os.getpid() else [root, *root.children(recursive=True)]:
                with contextlib.suppress(psutil.Error):
                    times = process.cpu_times()
                    total += times.user + times.system
            return total
        except psutil.Error:
            return 0.0

    def start(self) -> None:
        self._before = {name: self._cpu(pid) for name, pid in self.roots.items()}
        self._children_before = _waited_children_cpu()
        self._started = time.monotonic()

    def stop(self) -> float:
        """Stop; return the elapsed seconds. ``shares``: each tree's CPU seconds / elapsed."""
        elapsed = time.monotonic() - self._started
        self.shares = {name: round((self._cpu(pid) - self._before[name]) / elapsed, 3)
                       for name, pid in self.roots.items()}
        wrk = _waited_children_cpu() - self._children_before
        if wrk > 0:
            self.shares["wrk"] = round(wrk / elapsed, 3)
        return elapsed


def _waited_children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _server_cores(shares: dict[str, float]) -> float:
    return sum(share for name, share in shares.items() if name not in ("bench", "wrk"))


def _roots(cluster: Cluster, postmaster: int | None) -> dict[str, int]:
    roots = {f"replica{i}": replica.process.pid for i, replica in enumerate(cluster.replicas)
             if replica.process is not None}
    if postmaster is not None:
        roots["postgresql"] = postmaster
    roots["bench"] = os.getpid()
    return roots


def submit_phase(cluster: Cluster, meter: CpuMeter, connections: int, seconds: int) -> dict[str, Any]:
    body = json.dumps(JOB, separators=(",", ":"))
    per = max(1, connections // len(cluster.replicas))
    results: list[dict[str, Any]] = []

    def drive(url: str, length: int) -> None:
        results.append(run_wrk(url, "POST", "/v0/jobs", cluster.token, body, connections=per, seconds=length))

    def all_replicas(length: int) -> None:
        threads = [threading.Thread(target=drive, args=(url, length)) for url in cluster.urls]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    all_replicas(1)  # warm-up
    results.clear()
    statements = _statements(cluster)
    meter.start()
    all_replicas(seconds)
    meter.stop()
    statements = _statements(cluster, since=statements)
    rate = sum(r["requestsPerSecond"] for r in results)
    errors = sum(r["non2xx"] + r["connectErrors"] + r["readErrors"] + r["timeouts"] for r in results)
    cores = _server_cores(meter.shares)
    return {"perSecond": round(rate, 1), "errors": errors, "cpu": meter.shares, "serverCores": round(cores, 3),
            "perCore": round(rate / cores, 1) if cores else None, **_per_op(meter.shares, rate),
            "p99Ms": round(max(r["p99Us"] for r in results) / 1000, 1),
            "statementsPerOp": round(statements / (rate * seconds), 1) if statements is not None and rate else None}


def _statements(cluster: Cluster, since: int | None = 0) -> int | None:
    """Statements the replicas have sent to PostgreSQL (their ``tanvrit_store_statements``),
    less ``since``; None on SQLite, or for a checkout without the figure."""
    if since is None:
        return None
    total = 0
    for replica in cluster.replicas:
        with replica.client(cluster.token) as api:
            text = api.get("/metrics").text
        found = [line for line in text.splitlines() if line.startswith("tanvrit_store_statements ")]
        if not found or float(found[0].split()[1]) == 0:
            return None
        total += int(float(found[0].split()[1]))
    return total - since


def _per_op(shares: dict[str, float], rate: float) -> dict[str, float | None]:
    """CPU milliseconds per operation: the replicas', and the replicas' and database's."""
    replicas = sum(share for name, share in shares.items() if name.startswith("replica"))
    return {"replicaMsPerOp": round(1000 * replicas / rate, 3) if rate else None,
            "serverMsPerOp": round(1000 * _server_cores(shares) / rate, 3) if rate else None}


async def dispatch_phase(cluster: Cluster, meter: CpuMeter, agents: int, seconds: int) -> dict[str, Any]:
    sims = [SimulatedAgent(f"bench-{i}", cluster.urls_from(i), cluster.registration_token) for i in range(agents)]
    async with trio.open_nursery() as nursery:
        for sim in sims:
            nursery.start_soon(sim.register)
    stop = trio.Event()
    figures: dict[str, Any] = {}
    async with trio.open_nursery() as nursery:
        for sim in sims:
            nursery.start_soon(sim.run, stop)
        await trio.sleep(1.0)  # warm-up: every agent has claimed
        before = sum(len(sim.ran) for sim in sims)
        statements = await trio.to_thread.run_sync(_statements, cluster)
        meter.start()
        await trio.sleep(seconds)
        done = sum(len(sim.ran) for sim in sims) - before
        elapsed = meter.stop()
        statements = await trio.to_thread.run_sync(_statements, cluster, statements)
        stop.set()
        rate = done / elapsed
        cores = _server_cores(meter.shares)
        figures = {"perSecond": round(rate, 1), "cpu": meter.shares, "serverCores": round(cores, 3),
                   "perCore": round(rate / cores, 1) if cores else None, **_per_op(meter.shares, rate),
                   "agents": agents,
                   "statementsPerOp": round(statements / done, 1) if statements is not None and done else None}
    for sim in sims:
        await sim.aclose()
    return figures


def _backlog(cluster: Cluster) -> int:
    with cluster.client(0) as api:
        page = api.get("/v0/jobs", params={"state": "QUEUED", "limit": 1}).json()
        return len(page["items"])


@contextlib.contextmanager
def _database(name: str, server: Any) -> Iterator[str | None]:
    if not CONFIGS[name][1]:
        yield None
        return
    from tests.postgres import fresh_database

    with fresh_database(server) as url:
        yield url


@contextlib.contextmanager
def _from_checkout(checkout: Path | None) -> Iterator[None]:
    """Replicas started inside run ``checkout``'s code (their ``python -c`` finds it first on
    the path: the working directory, and PYTHONPATH for what they import later)."""
    if checkout is None:
        yield
        return
    cwd, pythonpath = os.getcwd(), os.environ.get("PYTHONPATH")
    os.chdir(checkout)
    os.environ["PYTHONPATH"] = str(checkout)
    try:
        yield
    finally:
        os.chdir(cwd)
        if pythonpath is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = pythonpath


def measure(name: str, server: Any, tmp: Path, args: argparse.Namespace, round_: int = 0) -> dict[str, Any]:
    size = CONFIGS[name][0]
    postmaster = _postmaster(server) if server is not None and CONFIGS[name][1] else None
    checkout = args.baseline if name.startswith("base-") else None
    with _database(name, server) as url, contextlib.ExitStack() as stack:
        with _from_checkout(checkout):
            cluster = stack.enter_context(running_cluster(tmp / f"{name}-{round_}", size, url, config=BENCH_CONFIG))
        meter = CpuMeter(_roots(cluster, postmaster))
        submit = submit_phase(cluster, meter, args.connections, args.seconds)
        dispatch = trio.run(dispatch_phase, cluster, meter, args.agents, args.seconds)
        dispatch["backlogLeft"] = _backlog(cluster) > 0
    return {"config": name, "replicas": size, "database": "postgresql" if CONFIGS[name][1] else "sqlite",
            "submit": submit, "dispatch": dispatch}


def _postmaster(server: Any) -> int | None:
    pid_file = Path(server.data_dir) / "postmaster.pid"
    with contextlib.suppress(OSError, ValueError, IndexError):
        return int(pid_file.read_text().splitlines()[0])
    return None


def _ratios(rows: list[dict[str, Any]]) -> dict[str, Any]:
    by = {row["config"]: row for row in rows}
    ratios: dict[str, Any] = {}
    if "sqlite" in by and "pg1" in by:
        for phase in ("submit", "dispatch"):
            base, pg = by["sqlite"][phase], by["pg1"][phase]
            ratios[f"pg1ToSqlite{phase.title()}"] = round(pg["perSecond"] / base["perSecond"], 3) \
                if base["perSecond"] else None
            if base["perCore"] and pg["perCore"]:
                ratios[f"pg1ToSqlite{phase.title()}PerCore"] = round(pg["perCore"] / base["perCore"], 3)
    if "pg1" in by and "base-pg1" in by:
        for phase in ("submit", "dispatch"):
            new, base = by["pg1"][phase], by["base-pg1"][phase]
            ratios[f"pg1ToBase{phase.title()}"] = round(new["perSecond"] / base["perSecond"], 3) \
                if base["perSecond"] else None
            if new["serverMsPerOp"] and base["serverMsPerOp"]:
                # Per core: the inverse ratio of the CPU each operation cost (replicas + database).
                ratios[f"pg1ToBase{phase.title()}PerCore"] = round(base["serverMsPerOp"] / new["serverMsPerOp"], 3)
    if "pg1" in by:
        for name in ("pg2", "pg3"):
            if name in by:
                for phase in ("submit", "dispatch"):
                    base = by["pg1"][phase]["perSecond"]
                    ratios[f"{name}ToPg1{phase.title()}"] = round(by[name][phase]["perSecond"] / base, 3) \
                        if base else None
    return ratios


_MEDIAN_FIGURES = ("perSecond", "perCore", "serverCores", "replicaMsPerOp", "serverMsPerOp", "statementsPerOp")


def _median_row(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """One configuration's figures over its rounds: the median of each (the first round's
    CPU shares, p99 and the like as they were); ``rounds`` keeps every round's rate."""
    merged = dict(rows[0])
    for phase in ("submit", "dispatch"):
        figures = dict(rows[0][phase])
        for key in _MEDIAN_FIGURES:
            values = [row[phase][key] for row in rows if row[phase].get(key) is not None]
            figures[key] = round(statistics.median(values), 3) if values else None
        figures["rounds"] = [row[phase]["perSecond"] for row in rows]
        merged[phase] = figures
    return merged


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--agents", type=int, default=24)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--configs", default="sqlite,pg1,pg2,pg3")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--rounds", type=int, default=1, help="measure each configuration this many times, "
                        "interleaved; report medians")
    parser.add_argument("--baseline", type=Path, default=None,
                        help="another checkout of the project: adds base-pg1 (one replica on PostgreSQL from it)")
    args = parser.parse_args()
    if args.baseline is not None:
        args.baseline = args.baseline.resolve()
        if not (args.baseline / "coordinator" / "__main__.py").is_file():
            raise SystemExit(f"--baseline {args.baseline}: not a checkout of the project (no coordinator/__main__.py)")
    names = [name.strip() for name in args.configs.split(",") if name.strip()]
    if args.baseline is not None and "base-pg1" not in names:
        names.append("base-pg1")
    if "base-pg1" in names and args.baseline is None:
        raise SystemExit("base-pg1 needs --baseline CHECKOUT")
    unknown = [name for name in names if name not in CONFIGS]
    if unknown:
        raise SystemExit(f"unknown configs {unknown}: choose from {', '.join(CONFIGS)}")
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp_name, contextlib.ExitStack() as stack:
        server = None
        if any(CONFIGS[name][1] for name in names):
            from tests.postgres import running_server

            try:
                server = stack.enter_context(running_server())
            except LookupError as exc:
                raise SystemExit(str(exc)) from exc
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
        for round_ in range(args.rounds):
            for name in names:
                row = measure(name, server, Path(tmp_name), args, round_)
                runs[name].append(row)
                submit, dispatch = row["submit"], row["dispatch"]
                print(f"{name:8} submit {submit['perSecond']:8.1f}/s ({submit['perCore'] or 0:7.1f} per core, "
                      f"{submit['serverCores']:.2f} cores, {submit['serverMsPerOp'] or 0:.2f} ms/op)  "
                      f"dispatch {dispatch['perSecond']:7.1f}/s ({dispatch['perCore'] or 0:7.1f} per core, "
                      f"{dispatch['serverCores']:.2f} cores, {dispatch['serverMsPerOp'] or 0:.2f} ms/op)",
                      file=sys.stderr)
        rows = [_median_row(runs[name]) for name in names]
    load = os.getloadavg()
    result = {
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0],
                    "loadAverageAtEnd": [round(value, 2) for value in load]},
        "seconds": args.seconds, "connections": args.connections, "agents": args.agents, "rounds": args.rounds,
        "baseline": str(args.baseline) if args.baseline is not None else None,
        "configs": rows, "ratios": _ratios(rows),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
