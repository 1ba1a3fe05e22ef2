"""Dispatch: jobs from QUEUED to ASSIGNED with 100 simulated agents long-polling claims (issue 15:
500 jobs a second at under 2 ms of coordinator CPU per dispatched job).

    .venv/bin/python -m bench.dispatch [--agents 100] [--jobs 3000] [--workers 2] [--rate 0]
        [--compare-with /path/to/checkout]

Each simulated agent does what ``agentd`` does for claims, over real HTTP on loopback (the
helpers of ``bench/agents_scale.py``): registers, then long-polls ``POST /agent/v0/claim``
(``waitSeconds`` 25, its whole capacity free) and, as soon as an answer comes, claims again, as
an agent whose job ended at once would. It reports nothing about the jobs it is given (no
events), so what is measured is the claim path alone; the assignments' lease is set long enough
that none goes back to the queue meanwhile. No heartbeats either: a long grace keeps the agents
READY (``bench/agents_scale.py`` measures heartbeats).

Two ways to feed it:

- backlog (default): ``--jobs`` jobs are submitted (concurrently, before the agents start
  claiming), then every agent starts claiming together; measured from that moment until the
  last job is assigned;
- ``--rate R``: every agent's claim is already held when ``--jobs`` jobs are submitted at R a
  second; a new job then wakes a waiting claim (``coordinator/notify.py``). The coordinator's
  CPU then includes the submissions; the report gives the CPU a submission costs alone
  (measured first, with no claim held) so the two can be told apart.

Reports: jobs assigned per second, the coordinator's CPU (psutil, user + system) per assigned
job, the claim round trip of the claims that got a job (p50/p99), submit-to-assigned latency in
the rate mode, and that every job was assigned exactly once. The machine's load average is
recorded: on a shared machine the absolute figures move with it; CPU per job moves less.
Prints the figures and writes JSON to ``bench/results/dispatch.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import psutil
import trio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.agents_scale import (  # noqa: E402
    CAPACITY,
    CLAIM_WAIT_SECONDS,
    KEEPALIVE_SECONDS,
    _cpu,
    _register,
    _summary,
)

RESULTS = ROOT / "bench" / "results" / "dispatch.json"
JOB = {"type": "COMMAND", "command": "true", "timeoutSeconds": 60, "labels": {"sim": "yes"}}
# Worker report lines: how many jobs this worker's agents have been given so far.
REPORT_EVERY = 0.05


# --- the simulator (worker processes) ---------------------------------------------------------
async def _claims(client: httpx.AsyncClient, token: str, got: list[tuple[str, float, float]],
                  failures: list[str]) -> None:
    headers = {"Authorization": f"Bearer {token}"}
    body = {"free": CAPACITY, "waitSeconds": CLAIM_WAIT_SECONDS}
    while True:
        sent = time.monotonic()
        try:
            response = await client.post("/agent/v0/claim", json=body, headers=headers,
                                          timeout=CLAIM_WAIT_SECONDS + 15)
        except httpx.HTTPError as exc:
            failures.append(repr(exc))
            await trio.sleep(0.5)
            continue
        if response.status_code == 200:
            got.append((response.json()["jobId"], sent, time.monotonic()))
        elif response.status_code != 204:
            failures.append(f"HTTP {response.status_code}")
            await trio.sleep(0.5)


def client_limits(count: int) -> httpx.Limits:
    """The pool of a worker simulating ``count`` agents: a connection each, dropped after the
    agent's idle expiry (``common.failover.KEEPALIVE_SECONDS``), well before the coordinator's
    5 s idle timeout. httpx's default expiry is those same 5 s: a connection idle that long (the
    agents wait for "go" while the backlog is submitted) was reused as the coordinator closed it,
    and its claim failed ("server disconnected", "connection reset"): the 1-4 failed requests
    this benchmark reported. ``agentd`` itself had the 2 s already."""
    return httpx.Limits(max_connections=count + 10, max_keepalive_connections=count + 10,
                        keepalive_expiry=KEEPALIVE_SECONDS)


async def _worker(url: str, registration: str, count: int, prefix: str) -> None:
    async with httpx.AsyncClient(base_url=url, limits=client_limits(count), timeout=30) as client:
        tokens: list[str] = []

        async def register(n: int) -> None:
            tokens.append(await _register(client, registration, f"{prefix}-{n}"))

        async with trio.open_nursery() as nursery:
            for n in range(count):
                nursery.start_soon(register, n)
        print("ready", flush=True)
        await trio.to_thread.run_sync(sys.stdin.readline)  # "go": every worker starts together
        got: list[tuple[str, float, float]] = []
        failures: list[str] = []
        stop = trio.Event()

        async def report() -> None:
            reported = -1
            while not stop.is_set():
                if len(got) != reported:
                    reported = len(got)
                    print(json.dumps({"assigned": reported, "last": got[-1][2] if got else None}), flush=True)
                await trio.sleep(REPORT_EVERY)

        async def until_stop() -> None:
            await trio.to_thread.run_sync(sys.stdin.readline, abandon_on_cancel=True)  # "stop"
            stop.set()

        async with trio.open_nursery() as nursery:
            for token in tokens:
                nursery.start_soon(_claims, client, token, got, failures)
            nursery.start_soon(report)
            await until_stop()
            nursery.cancel_scope.cancel()
        print(json.dumps({"done": [job for job, _, _ in got],
                          "roundTripsMs": [round((end - start) * 1000, 2) for _, start, end in got],
                          "assignedAt": {job: end for job, _, end in got},
                          "failures": failures[:5], "failureCount": len(failures)}), flush=True)


# --- the measuring side -----------------------------------------------------------------------
class Workers:
    """The simulator processes and the running total of jobs they were given."""

    def __init__(self, url: str, registration: str, agents: int, workers: int) -> None:
        share = [agents // workers + (1 if i < agents % workers else 0) for i in range(workers)]
        self.procs = [subprocess.Popen([sys.executable, __file__, "--worker", url, registration, str(count),
                                        f"sim{index}"],
                                       stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT)
                      for index, count in enumerate(share) if count]
        for proc in self.procs:
            assert proc.stdout is not None
            if proc.stdout.readline().strip() != "ready":
                raise SystemExit("a simulator worker failed to register its agents")
        self.assigned = [0] * len(self.procs)
        self.last = [0.0] * len(self.procs)
        self.finals: list[dict[str, Any]] = [{} for _ in self.procs]
        self.changed = threading.Condition()

    def go(self) -> None:
        for index, proc in enumerate(self.procs):
            threading.Thread(target=self._read, args=(index, proc), daemon=True).start()
        self._send("go\n")

    def _read(self, index: int, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            message = json.loads(line)
            with self.changed:
                if "assigned" in message:
                    self.assigned[index] = message["assigned"]
                    self.last[index] = message["last"] or 0.0
                else:
                    self.finals[index] = message
                self.changed.notify_all()

    def wait_assigned(self, total: int, stalled: float) -> bool:
        """Until ``total`` jobs were given, False once none more came for ``stalled`` seconds (an
        answer lost on its way, say: its job stays ASSIGNED until its lease ends)."""
        with self.changed:
            while sum(self.assigned) < total:
                if not self.changed.wait(stalled):
                    return False
        return True

    def stop(self) -> list[dict[str, Any]]:
        self._send("stop\n")
        for proc in self.procs:
            proc.wait(timeout=60)
        with self.changed:
            return list(self.finals)

    def _send(self, text: str) -> None:
        for proc in self.procs:
            assert proc.stdin is not None
            proc.stdin.write(text)
            proc.stdin.flush()

    def kill(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def _config(tmp: Path, agents: int) -> Path:
    path = tmp / f"dispatch-{agents}.toml"
    # No heartbeats: a long grace keeps the agents READY, a long lease keeps their jobs ASSIGNED.
    path.write_text(f"[server]\nmax_connections = {agents + 200}\nagent_grace_seconds = 3600.0\n"
                    "assignment_lease_seconds = 3600.0\n")
    return path


def _submit(url: str, token: str, jobs: int, rate: float) -> dict[str, float]:
    """Submit ``jobs`` jobs, 16 at a time (``rate`` 0) or at ``rate`` a second; their submit times."""
    submitted: dict[str, float] = {}

    async def main() -> None:
        async with httpx.AsyncClient(base_url=url, timeout=60, headers={"Authorization": f"Bearer {token}"},
                                     limits=httpx.Limits(max_connections=32)) as api:
            limiter = trio.CapacityLimiter(16)

            async def one() -> None:
                async with limiter:
                    response = await api.post("/v0/jobs", json=JOB)
                    response.raise_for_status()
                    submitted[response.json()["id"]] = time.monotonic()

            started = trio.current_time()
            async with trio.open_nursery() as nursery:
                for n in range(jobs):
                    if rate > 0:
                        await trio.sleep_until(started + n / rate)
                    nursery.start_soon(one)

    trio.run(main)
    return submitted


def _profiler(pid: int, out: Path | None) -> subprocess.Popen[bytes] | None:
    """py-spy sampling the coordinator (all threads) into ``out``, a raw flame graph; None without it."""
    spy = shutil.which("py-spy") or shutil.which("py-spy", path=str(Path(sys.executable).parent))
    if out is None or spy is None:
        return None
    return subprocess.Popen([spy, "record", "-p", str(pid), "-r", "200", "-f", "raw", "--threads", "--nonblocking",
                             "-o", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def measure(source: Path, tmp: Path, *, agents: int, jobs: int, workers: int, rate: float,
            profile: Path | None = None) -> dict[str, Any]:
    from bench.run import start_coordinator

    data_dir = tmp / f"{source.name}-{agents}-{time.monotonic_ns()}"
    coordinator, url, init = start_coordinator(data_dir, ["--config", str(_config(tmp, agents))], source=source)
    sim: Workers | None = None
    try:
        process = psutil.Process(coordinator.pid)
        figures: dict[str, Any] = {"agents": agents, "jobs": jobs, "mode": f"rate {rate}/s" if rate else "backlog"}
        if rate:
            # What submissions cost alone (no claim held, nothing dispatched): subtracted below.
            probe = min(jobs, 500)
            before = _cpu([process])
            _submit(url, init["ownerToken"], probe, 0)
            figures["submitCpuMsPerJob"] = round(1000 * (_cpu([process]) - before) / probe, 3)
        sim = Workers(url, init["registrationToken"], agents, workers)
        if not rate:
            submitted = _submit(url, init["ownerToken"], jobs, 0)
            time.sleep(1.0)  # let the submissions' writes settle before measuring
        expected = jobs + (min(jobs, 500) if rate else 0)
        simulator = [psutil.Process(proc.pid) for proc in sim.procs]
        cpu_before, started = _cpu([process]), time.monotonic()
        sim_before = _cpu(simulator)
        sim.go()
        if rate:
            time.sleep(2.0)  # every claim is held (and has taken the probe's jobs) before the first job
            if not sim.wait_assigned(expected - jobs, 20):
                raise SystemExit("the probe's jobs were not all assigned")
            cpu_before, started = _cpu([process]), time.monotonic()
            sim_before = _cpu(simulator)
            submitted = _submit(url, init["ownerToken"], jobs, rate)
        spy = _profiler(coordinator.pid, profile)
        complete = sim.wait_assigned(expected, 20)
        if spy is not None:
            spy.send_signal(signal.SIGINT)
            spy.wait(timeout=60)
        cpu = _cpu([process]) - cpu_before
        sim_cpu = _cpu(simulator) - sim_before
        last = max(sim.last)  # the last job given, not the end of the wait
        finals = sim.stop()
        sim = None
        elapsed = last - started
        done = [job for final in finals for job in final.get("done", [])]
        measured = [job for job in done if job in submitted]
        assigned_at = {job: at for final in finals for job, at in final.get("assignedAt", {}).items()}
        figures.update({
            "complete": complete,
            "assigned": len(measured),
            "assignedTwice": len(done) - len(set(done)),
            "seconds": round(elapsed, 2),
            "jobsPerSecond": round(len(measured) / elapsed, 1) if elapsed > 0 else None,
            "coordinatorCpuShare": round(cpu / elapsed, 3) if elapsed > 0 else None,
            "coordinatorCpuMsPerJob": round(1000 * cpu / len(measured), 3) if measured else None,
            # The simulator shares the machine: it must cost less than what it measures.
            "simulatorCpuShare": round(sim_cpu / elapsed, 3) if elapsed > 0 else None,
            "claimRoundTripMs": _summary([ms for final in finals for ms in final.get("roundTripsMs", [])]),
            "agentRequestFailures": sum(final.get("failureCount", 0) for final in finals),
            "firstFailures": [text for final in finals for text in final.get("failures", [])][:5],
        })
        if rate:
            figures["submitToAssignedMs"] = _summary([1000 * (assigned_at[job] - submitted[job])
                                                      for job in measured if job in assigned_at])
            if figures["coordinatorCpuMsPerJob"] is not None:
                figures["dispatchCpuMsPerJob"] = round(figures["coordinatorCpuMsPerJob"]
                                                       - figures["submitCpuMsPerJob"], 3)
        return figures
    finally:
        if sim is not None:
            sim.kill()
        coordinator.terminate()
        coordinator.wait(timeout=60)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.dispatch", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--agents", type=int, default=100)
    parser.add_argument("--jobs", type=int, default=3000)
    parser.add_argument("--workers", type=int, default=2, help="simulator processes")
    parser.add_argument("--rate", type=float, default=0.0, help="submit at this rate with claims held (0: backlog)")
    parser.add_argument("--compare-with", type=Path, default=None, help="another checkout, measured in the same run")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--profile", type=Path, default=None,
                        help="with py-spy installed: sample the coordinator while it dispatches (raw flame graph)")
    parser.add_argument("--worker", nargs=4, metavar=("URL", "TOKEN", "COUNT", "PREFIX"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if args.worker:
        url, token, count, prefix = args.worker
        trio.run(_worker, url, token, int(count), prefix)
        return
    result = run(args.agents, args.jobs, args.workers, args.rate, args.compare_with, args.profile)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print_figures(result)
    print(f"written to {args.out}")


def run(agents: int, jobs: int, workers: int = 2, rate: float = 0.0,
        compare_with: Path | None = None, profile: Path | None = None) -> dict[str, Any]:
    """Every source measured in turn on a fresh coordinator; the machine's load around it."""
    sources = {"this": ROOT, **({"compare": compare_with.resolve()} if compare_with is not None else {})}
    load_before = os.getloadavg()
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench-dispatch-") as tmp:
        for label, source in sources.items():
            results[label] = measure(source, Path(tmp), agents=agents, jobs=jobs, workers=workers, rate=rate,
                                     profile=profile.with_suffix(f".{label}.txt") if profile else None)
            print(json.dumps({"source": label, **results[label]}), flush=True)
    return {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "loadAverage": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
                    "note": "shared development machine, loaded by other engineers' work while this ran"},
        "sources": {label: str(path) for label, path in sources.items()},
        "results": results,
    }


def print_figures(result: dict[str, Any]) -> None:
    print(f"dispatch (load average {result['machine']['loadAverage'][0]} -> {result['machine']['loadAverage'][1]}):")
    for label, figures in result["results"].items():
        rtt = figures["claimRoundTripMs"]
        print(f"  {label:8} {figures['mode']:>14} {figures['agents']} agents: {figures['assigned']} jobs in "
              f"{figures['seconds']} s = {figures['jobsPerSecond']} jobs/s, coordinator "
              f"{figures['coordinatorCpuMsPerJob']} ms CPU/job ({figures['coordinatorCpuShare']:.0%} of a core), "
              f"claim p50/p99 {rtt.get('p50')}/{rtt.get('p99')} ms, assigned twice {figures['assignedTwice']}, "
              f"failures {figures['agentRequestFailures']}"
              + (f", dispatch alone {figures.get('dispatchCpuMsPerJob')} ms/job, submit-to-assigned p50/p99 "
                 f"{figures['submitToAssignedMs'].get('p50')}/{figures['submitToAssignedMs'].get('p99')} ms"
                 if "submitToAssignedMs" in figures else ""))


if __name__ == "__main__":
    main()
