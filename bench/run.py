"""The benchmark entry point: fresh servers, wrk as the load generator, one JSON report.

    .venv/bin/python -m bench [--seconds 5] [--rounds 3] [--connections 10,50] [--growth-jobs 100000]

What it does, in one run:

1. starts a fresh coordinator (empty data dir, ``serve --init-json``) and, beside it, the
   ceilings from ``bench/bare.py``: a bare Hypercorn ASGI app answering trivial JSON, and a
   one-route Quart-Trio app on the same Hypercorn;
2. drives each with wrk (C, multi-threaded: far faster than what it measures) through
   ``bench/lua/request.lua``: ``POST /v0/jobs`` and ``GET /v0/jobs/{id}`` (of a cancelled job) at each connection
   count, the targets interleaved round by round so that a change in the machine's load hits
   all of them alike; each figure is the median of the rounds, and each ratio is coordinator
   over the bare Hypercorn ceiling measured in the same run;
3. samples the coordinator process's CPU time over each of its runs (share of one core);
4. with ``--compare-with CHECKOUT`` (another commit's tree) or ``--compare-env NAME=VALUE`` (this
   tree with an environment setting, e.g. ``TANVRIT_GC=default``), a second coordinator measured
   in the same rounds: before/after figures under the same load;
5. times a full garbage collection with and without the start-up heap frozen (``bench/gc_pauses.py``);
6. unless ``--growth-jobs 0``, fills a store with that many jobs and times the list, filter,
   claim and count queries (``bench/growth.py``);
7. unless ``--dispatch-jobs 0``, dispatches that many queued jobs to 100 simulated agents
   long-polling claims over HTTP: jobs assigned per second and coordinator CPU per job
   (``bench/dispatch.py``);
8. unless ``--e2e-jobs 0``, runs ``true`` jobs end to end through one real agent, one at a time
   and ``--e2e-in-flight`` at a time, leg by leg (``bench/e2e.py``; with ``--compare-with``, that
   checkout's agent beside this one).

Prints a table and writes everything to ``bench/results/run.json`` (``--out`` to change).
Without wrk (``apt-get install wrk``) the HTTP figures are skipped, and the report says so.
Figures depend on everything else the machine does: compare runs from one machine, and read
the ratios (same run, same load) before the absolute numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import psutil

ROOT = Path(__file__).resolve().parent.parent
LUA = ROOT / "bench" / "lua" / "request.lua"
DEFAULT_OUT = ROOT / "bench" / "results" / "run.json"
JOB = {"type": "COMMAND", "command": "echo hello", "timeoutSeconds": 30, "labels": {"bench": "yes"}}
WRK_THREADS = 2
TARGETS = ("hypercorn", "quart", "coordinator")


# --- processes ---------------------------------------------------------------------------
def _wait_url(path: Path, process: subprocess.Popen[bytes]) -> str:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"server exited with {process.returncode}")
        text = path.read_text().strip() if path.exists() else ""
        if text:
            try:
                httpx.get(text + "/healthz", timeout=2)
                return text
            except httpx.TransportError:
                pass
        time.sleep(0.05)
    raise SystemExit("server did not start within 60 s")


def start_coordinator(data_dir: Path, extra: list[str] | None = None, *, source: Path = ROOT,
                      env: dict[str, str] | None = None) -> tuple[subprocess.Popen[bytes], str, dict[str, Any]]:
    """A coordinator on a fresh store; returns the process, its URL and the init secrets.
    ``source``: the checkout whose ``coordinator`` package runs (``-m`` puts it first on the path)."""
    data_dir.mkdir(parents=True)
    stdout = data_dir / "stdout"
    with stdout.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "coordinator", "serve", "--bind", "127.0.0.1:0", "--data-dir", str(data_dir),
             "--init-json", *(extra or [])], stdout=out, stderr=subprocess.DEVNULL, cwd=source,
            env={**os.environ, **(env or {})})
    url = _wait_url(data_dir / "coordinator.url", process)
    return process, url, json.loads(stdout.read_text().splitlines()[0])


def start_bare(kind: str, tmp: Path) -> tuple[subprocess.Popen[bytes], str]:
    url_file = tmp / f"{kind}.url"
    process = subprocess.Popen([sys.executable, str(ROOT / "bench" / "bare.py"), kind, str(url_file)],
                               stderr=subprocess.DEVNULL, cwd=ROOT)
    return process, _wait_url(url_file, process)


# --- wrk ---------------------------------------------------------------------------------
def run_wrk(url: str, method: str, path: str, token: str, body: str | None, *, connections: int,
            seconds: int) -> dict[str, Any]:
    """One wrk run; the summary ``bench/lua/request.lua`` prints, plus requests per second."""
    args = ["wrk", f"-t{min(WRK_THREADS, connections)}", f"-c{connections}", f"-d{seconds}s", "--timeout", "10s",
            "-s", str(LUA), url, "--", method, path, token]
    if body is not None:
        args.append(body)
    done = subprocess.run(args, capture_output=True, text=True, check=True, timeout=seconds + 60)
    for line in done.stdout.splitlines():
        if line.startswith("BENCH-JSON "):
            summary: dict[str, Any] = json.loads(line.removeprefix("BENCH-JSON "))
            summary["requestsPerSecond"] = summary["requests"] / (summary["durationUs"] / 1e6)
            return summary
    raise RuntimeError(f"wrk printed no summary: {done.stdout}\n{done.stderr}")


def measured(process: subprocess.Popen[bytes], url: str, method: str, path: str, token: str, body: str | None, *,
             connections: int, seconds: int) -> dict[str, Any]:
    """A wrk run with the server process's CPU time over it (share of one core)."""
    proc = psutil.Process(process.pid)
    before = proc.cpu_times()
    started = time.monotonic()
    summary = run_wrk(url, method, path, token, body, connections=connections, seconds=seconds)
    after = proc.cpu_times()
    elapsed = time.monotonic() - started
    summary["serverCpu"] = ((after.user - before.user) + (after.system - before.system)) / elapsed
    return summary


def _median(runs: list[dict[str, Any]], key: str) -> float:
    return float(statistics.median(run[key] for run in runs))


def http_figures(args: argparse.Namespace, tmp: Path) -> list[dict[str, Any]]:
    coordinator, url, init = start_coordinator(tmp / "coordinator")
    servers: dict[str, tuple[subprocess.Popen[bytes], str]] = {"coordinator": (coordinator, url)}
    tokens = {"coordinator": init["ownerToken"]}
    job_ids: dict[str, str] = {}
    targets = list(TARGETS)
    try:
        for kind in ("hypercorn", "quart"):
            servers[kind] = start_bare(kind, tmp)
        if args.compare_with is not None:
            # Another checkout's coordinator (an earlier commit, say), measured in the same rounds.
            other, other_url, other_init = start_coordinator(tmp / "baseline", source=args.compare_with)
            servers["baseline"], tokens["baseline"] = (other, other_url), other_init["ownerToken"]
            targets.append("baseline")
        if args.compare_env is not None:
            # This checkout with environment settings (TANVRIT_GC=default: the interpreter's GC).
            name, _, value = args.compare_env.partition("=")
            other, other_url, other_init = start_coordinator(tmp / "variant", env={name: value})
            servers["variant"], tokens["variant"] = (other, other_url), other_init["ownerToken"]
            targets.append("variant")
        for target, token in tokens.items():
            created = httpx.post(servers[target][1] + "/v0/jobs", json=JOB,
                                 headers={"Authorization": f"Bearer {token}"}, timeout=10)
            created.raise_for_status()
            job_ids[target] = created.json()["id"]
            # GET reads a finished job: a QUEUED one also gets its queue position, whose cost grows
            # with the queue the submit scenario leaves behind (no agent runs here).
            httpx.post(f"{servers[target][1]}/v0/jobs/{job_ids[target]}:cancel",
                       headers={"Authorization": f"Bearer {token}"}, timeout=10).raise_for_status()
        body = json.dumps(JOB, separators=(",", ":"))
        # The bare servers answer any path and ignore the token.
        scenarios = [("submit", "POST", lambda target: "/v0/jobs", body),
                     ("get", "GET", lambda target: f"/v0/jobs/{job_ids.get(target, job_ids['coordinator'])}", None)]
        results = []
        for name, method, path_of, payload in scenarios:
            if name not in args.scenarios:
                continue
            for connections in args.connections:
                runs: dict[str, list[dict[str, Any]]] = {target: [] for target in targets}
                # A short warm-up per target (connections, caches, the JIT-less interpreter's own caches).
                for target in targets:
                    process, base = servers[target]
                    token = tokens.get(target, "")
                    run_wrk(base, method, path_of(target), token, payload, connections=connections, seconds=1)
                for _ in range(args.rounds):
                    for target in targets:
                        process, base = servers[target]
                        runs[target].append(measured(process, base, method, path_of(target), tokens.get(target, ""),
                                                     payload, connections=connections, seconds=args.seconds))
                path = path_of("coordinator")
                row = _scenario_row(name, method, path, connections, runs)
                results.append(row)
                _print_row(row)
        return results
    finally:
        for process, _ in servers.values():
            process.terminate()
            process.wait(timeout=30)


def _scenario_row(name: str, method: str, path: str, connections: int,
                  runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    figures = {}
    for target, target_runs in runs.items():
        figures[target] = {
            "requestsPerSecond": round(_median(target_runs, "requestsPerSecond"), 1),
            "p50Ms": round(_median(target_runs, "p50Us") / 1000, 2),
            "p99Ms": round(_median(target_runs, "p99Us") / 1000, 2),
            "serverCpu": round(_median(target_runs, "serverCpu"), 3),
            # CPU time the server spent per answer: steadier than req/s on a machine others load.
            "cpuMsPerRequest": round(statistics.median(run["serverCpu"] / run["requestsPerSecond"] * 1000
                                                       for run in target_runs), 3),
            "non2xx": sum(run["non2xx"] for run in target_runs),
            "socketErrors": sum(run["connectErrors"] + run["readErrors"] + run["writeErrors"] + run["timeouts"]
                                for run in target_runs),
            "rounds": [round(run["requestsPerSecond"], 1) for run in target_runs],
        }
    coordinator = figures["coordinator"]["requestsPerSecond"]
    row = {
        "scenario": name, "request": f"{method} {path.split('/job_')[0]}{'/{id}' if '/job_' in path else ''}",
        "connections": connections, "figures": figures,
        "ratioToHypercorn": round(coordinator / figures["hypercorn"]["requestsPerSecond"], 3),
        "ratioToQuart": round(coordinator / figures["quart"]["requestsPerSecond"], 3),
    }
    for other in ("baseline", "variant"):
        if other in figures:
            row[f"{other}RatioToHypercorn"] = round(figures[other]["requestsPerSecond"]
                                                    / figures["hypercorn"]["requestsPerSecond"], 3)
            row[f"ratioTo{other.capitalize()}"] = round(coordinator / figures[other]["requestsPerSecond"], 3)
    return row


def _print_row(row: dict[str, Any]) -> None:
    figures = row["figures"]
    coordinator = figures["coordinator"]
    print(f"{row['request']:<22} c={row['connections']:<3} coordinator {coordinator['requestsPerSecond']:>8.1f} req/s "
          f"p99 {coordinator['p99Ms']:>7.2f} ms cpu {coordinator['serverCpu']:.2f} "
          f"({coordinator['cpuMsPerRequest']:.2f} ms/req) | "
          f"hypercorn {figures['hypercorn']['requestsPerSecond']:>8.1f} "
          f"quart {figures['quart']['requestsPerSecond']:>8.1f}"
          f" | ratio {row['ratioToHypercorn']:.2f}x bare, {row['ratioToQuart']:.2f}x quart"
          + "".join(f" | {other} {figures[other]['requestsPerSecond']:.1f} req/s p99 {figures[other]['p99Ms']:.2f} ms"
                    f" {figures[other]['cpuMsPerRequest']:.2f} ms/req ({row[f'ratioTo{other.capitalize()}']:.2f}x)"
                    for other in ("baseline", "variant") if other in figures)
          + (f" | {coordinator['non2xx']} non-2xx" if coordinator["non2xx"] else ""), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=5, help="length of each measured wrk run")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds per figure (the median is kept)")
    parser.add_argument("--connections", type=lambda text: [int(part) for part in text.split(",")],
                        default=[10, 50], help="comma-separated connection counts")
    parser.add_argument("--growth-jobs", type=int, default=100_000,
                        help="jobs in the store for the query-growth figures (0 skips them)")
    parser.add_argument("--dispatch-jobs", type=int, default=2000,
                        help="queued jobs dispatched to 100 simulated agents (0 skips it)")
    parser.add_argument("--scenarios", type=lambda text: text.split(","), default=["submit", "get"],
                        help="comma-separated: submit, get")
    parser.add_argument("--e2e-jobs", type=int, default=100,
                        help="true jobs per mode through one real agent, end to end (0 skips them)")
    parser.add_argument("--e2e-in-flight", type=int, default=4, help="jobs at a time in the second end-to-end mode")
    parser.add_argument("--skip-http", action="store_true", help="only the growth figures")
    parser.add_argument("--compare-with", type=Path, default=None,
                        help="a checkout of another commit: its coordinator is measured in the same rounds")
    parser.add_argument("--compare-env", default=None,
                        help="NAME=VALUE: this coordinator again with that environment, measured in the same rounds "
                             "(TANVRIT_GC=default: the interpreter's own garbage-collector settings)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    report: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
                    "loadAverageAtStart": [round(x, 2) for x in os.getloadavg()]},
        "startedAt": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "settings": {"seconds": args.seconds, "rounds": args.rounds, "wrkThreads": WRK_THREADS},
    }
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        if args.skip_http:
            report["http"] = {"skipped": "--skip-http"}
        elif shutil.which("wrk") is None:
            print("wrk is not installed (apt-get install wrk): the HTTP figures are skipped", flush=True)
            report["http"] = {"skipped": "wrk is not installed (apt-get install wrk)"}
        else:
            report["http"] = http_figures(args, tmp)
        # The garbage collector's tuning (common/gc_tuning.py: tune_gc), in a process of its own.
        gc_figures = subprocess.run([sys.executable, "-m", "bench.gc_pauses"], capture_output=True, text=True,
                                    cwd=ROOT, check=True, timeout=600)
        report["gc"] = json.loads(gc_figures.stdout)
        print(f"gc: a full collection {report['gc']['fullCollectionMs']['unfrozen']} ms with the start-up heap, "
              f"{report['gc']['fullCollectionMs']['frozen']} ms with it frozen "
              f"({report['gc']['heldRequests']} held requests)", flush=True)
        if args.growth_jobs > 0:
            from bench import growth

            report["growth"] = growth.measure(args.growth_jobs, tmp / "growth")
            growth.print_figures(report["growth"])
        if args.dispatch_jobs > 0:
            from bench import dispatch

            report["dispatch"] = dispatch.run(agents=100, jobs=args.dispatch_jobs)
            dispatch.print_figures(report["dispatch"])
        if args.e2e_jobs > 0:
            from bench import e2e

            report["e2e"] = e2e.measure(args.e2e_jobs, args.e2e_in_flight, tmp / "e2e", compare_with=args.compare_with)
    report["machine"]["loadAverageAtEnd"] = [round(x, 2) for x in os.getloadavg()]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"report written to {args.out}")


if __name__ == "__main__":
    main()
