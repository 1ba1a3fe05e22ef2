"""End to end: ``true`` jobs from submit to SUCCEEDED through one real agent, leg by leg.

A fresh coordinator on loopback and a real agent process (real cgroups when run as root,
the product's defaults otherwise: a root agent runs each job as a uid of its own). Jobs are
submitted one at a time (``sequential``), then with ``--in-flight`` of them submitted and
followed at once (``in-flight``). The client follows each job's log as SSE
(``GET /v0/jobs/{id}/logs?follow=true``), which the coordinator ends with ``event: end`` as
soon as the job is terminal: no polling interval of the client's own in the figures.

For every job, from the timestamps the coordinator records (same host, same clock) and the
client's own:

- ``submitToSucceeded``: the client's POST sent to ``event: end`` received;
- ``submitToAssigned``: ``createdAt`` to the attempt's ``assignedAt`` (the claim's wake-up);
- ``assignedToStarted``: ``assignedAt`` to ``startedAt`` (the answer's way to the agent, and
  the agent taking it: ``startedAt`` is stamped as the agent begins to set the job up);
- ``startedToFinished``: ``startedAt`` to ``finishedAt`` (cgroup, spawn, ``true``, teardown);
- ``finishedToSeen``: ``finishedAt`` to the client seeing the end (spool, upload, the
  coordinator applying it, the SSE answer).

and from the agent's own ``job reported`` log line (monotonic clock, agents that have it):
``claimToSpawn`` (claim answer received to the job's process spawned), ``run`` (spawned to
exit seen: the wrapper, the privilege drop, ``true``), ``exitToResult`` (teardown until the
result is queued), ``resultToSent`` (spool commit, the uplink's turn, until the upload
begins), ``sentToAck`` (the coordinator taking it: its share, not the agent's), and
``overhead`` = claimToSpawn + exit to upload: the agent's share of a job, goal under 10 ms.

``--compare-with DIR`` (another checkout, ``git archive <commit> | tar -x -C DIR``) runs that
tree's agent beside this one on the same coordinator, with a label of its own; jobs alternate
between the two, so the machine's load hits both alike.

    .venv/bin/python bench/e2e.py [--jobs 200] [--in-flight 4] [--compare-with DIR] [--root-jobs]

The machine may be shared and loaded while this runs; the JSON records the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
import trio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from common.clock import parse_rfc3339  # noqa: E402
from tests.cgroup_fixtures import cleanup_agent_cgroups  # noqa: E402
from tests.procs import Coordinator, python_module, stop_process, wait_for  # noqa: E402

DEFAULT_OUT = ROOT / "bench" / "results" / "e2e.json"
GOALS_MS = {"submitToSucceededP50": 50.0, "submitToSucceededP99": 150.0, "agentOverheadP50": 10.0}
COORDINATOR_LEGS = ("submitToSucceeded", "submitToAssigned", "assignedToStarted", "startedToFinished",
                    "finishedToSeen")
AGENT_LEGS = ("claimToSpawn", "run", "exitToResult", "resultToSent", "sentToAck", "overhead")


@dataclass
class AgentUnderTest:
    """One agent process: ``source`` is the checkout whose ``agentd`` it runs."""

    variant: str
    source: Path
    data_dir: Path
    process: subprocess.Popen[bytes] | None = None
    jobs: list[dict[str, Any]] = field(default_factory=list)

    def cpu_seconds(self) -> float:
        assert self.process is not None
        times = psutil.Process(self.process.pid).cpu_times()
        return float(times.user + times.system)

    @property
    def log_path(self) -> Path:
        return self.data_dir.with_name(self.data_dir.name + ".log")

    def start(self, coordinator: Coordinator, *, root_jobs: bool, cpus: int) -> None:
        self.data_dir.mkdir(parents=True)
        args = ["run", "--data-dir", str(self.data_dir), "--coordinator", coordinator.url, "--name", self.variant,
                "--label", f"e2e={self.variant}", "--cpus", str(cpus), "--log-json",
                "--work-dir", str(self.data_dir.with_name(self.data_dir.name + "-work"))]
        if root_jobs:
            args += ["--run-as", "root", "--allow-root-jobs"]
        env = {**os.environ, "TANVRIT_REGISTRATION_TOKEN": coordinator.registration_token}
        with self.log_path.open("wb") as out:
            # cwd: ``python -c`` puts the working directory first on the path, so this checkout's
            # ``agentd`` (and ``common``) is the one that runs.
            self.process = subprocess.Popen(python_module("agentd", *args), stdout=out, stderr=out, env=env,
                                            cwd=self.source)

    def stop(self) -> None:
        stop_process(self.process)
        cleanup_agent_cgroups(self.data_dir)

    def reported(self) -> dict[str, dict[str, Any]]:
        """The agent's ``job reported`` lines, by job id (an agent without them: none)."""
        found: dict[str, dict[str, Any]] = {}
        for line in self.log_path.read_text(errors="replace").splitlines():
            if '"job reported"' not in line:
                continue
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            found[entry["job_id"]] = entry
        return found


def _ms(start: str | None, end: str | None) -> float | None:
    if not start or not end:
        return None
    return (parse_rfc3339(end) - parse_rfc3339(start)).total_seconds() * 1000


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(fraction * len(ordered) + 0.5) - 1))]


def _summary(values: list[float | None]) -> dict[str, float] | None:
    present = [value for value in values if value is not None]
    if not present:
        return None
    return {"p50": round(_percentile(present, 0.5), 2), "p99": round(_percentile(present, 0.99), 2),
            "max": round(max(present), 2), "n": len(present)}


async def _one_job(api: httpx.AsyncClient, variant: str) -> dict[str, Any]:
    body = {"type": "COMMAND", "command": "true", "timeoutSeconds": 60, "labels": {"e2e": variant}}
    sent = time.time()
    created = await api.post("/v0/jobs", json=body)
    created.raise_for_status()
    job_id = created.json()["id"]
    end: dict[str, Any] | None = None
    async with api.stream("GET", f"/v0/jobs/{job_id}/logs", params={"follow": "true"}) as stream:
        stream.raise_for_status()
        event = ""
        async for line in stream.aiter_lines():
            if line.startswith("event: "):
                event = line.removeprefix("event: ")
            elif line.startswith("data: ") and event == "end":
                end = json.loads(line.removeprefix("data: "))
                break
    seen = time.time()
    if end is None:
        raise RuntimeError(f"job {job_id}: the log stream ended without its end")
    return {"id": job_id, "sent": sent, "seen": seen, "endState": end["state"]}


async def _drive(url: str, token: str, agents: list[AgentUnderTest], jobs: int, in_flight: int) -> None:
    """``jobs`` per agent, alternating between agents in blocks, ``in_flight`` at a time."""
    block = max(1, in_flight) * 5
    async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=60,
                                 limits=httpx.Limits(max_connections=in_flight + 4)) as api:
        done = 0
        while done < jobs:
            count = min(block, jobs - done)
            for agent in agents:
                remaining = count
                lock = trio.Lock()

                async def worker(agent: AgentUnderTest = agent, lock: trio.Lock = lock) -> None:
                    nonlocal remaining
                    while True:
                        async with lock:
                            if remaining <= 0:
                                return
                            remaining -= 1
                        agent.jobs.append(await _one_job(api, agent.variant))

                async with trio.open_nursery() as nursery:
                    for _ in range(max(1, in_flight)):
                        nursery.start_soon(worker)
            done += count


def _figures(api: httpx.Client, agent: AgentUnderTest) -> dict[str, Any]:
    reported = agent.reported()
    legs: dict[str, list[float | None]] = {name: [] for name in (*COORDINATOR_LEGS, *AGENT_LEGS)}
    states: dict[str, int] = {}
    for run in agent.jobs:
        job = api.get(f"/v0/jobs/{run['id']}").json()
        states[job["state"]] = states.get(job["state"], 0) + 1
        assigned = job["attempts"][-1]["assignedAt"] if job.get("attempts") else None
        legs["submitToSucceeded"].append((run["seen"] - run["sent"]) * 1000)
        legs["submitToAssigned"].append(_ms(job["createdAt"], assigned))
        legs["assignedToStarted"].append(_ms(assigned, job["startedAt"]))
        legs["startedToFinished"].append(_ms(job["startedAt"], job["finishedAt"]))
        legs["finishedToSeen"].append((run["seen"] - parse_rfc3339(job["finishedAt"]).timestamp()) * 1000
                                      if job["finishedAt"] else None)
        line = reported.get(run["id"], {})
        legs["claimToSpawn"].append(line.get("claim_to_spawn_ms"))
        legs["run"].append(line.get("run_ms"))
        legs["exitToResult"].append(line.get("exit_to_result_ms"))
        legs["resultToSent"].append(line.get("result_to_sent_ms"))
        legs["sentToAck"].append(line.get("sent_to_ack_ms"))
        spawn, after = line.get("claim_to_spawn_ms"), line.get("exit_to_sent_ms")
        legs["overhead"].append(spawn + after if spawn is not None and after is not None else None)
    return {"jobs": len(agent.jobs), "states": states,
            "legsMs": {name: _summary(values) for name, values in legs.items()}}


def measure(jobs: int, in_flight: int, tmp: Path, *, compare_with: Path | None = None, root_jobs: bool = False,
            warmup: int = 5) -> dict[str, Any]:
    """Both modes (one at a time, then ``in_flight`` at a time) for each agent; the report."""
    coordinator = Coordinator(tmp / "coordinator").start()
    cpus = max(2, in_flight * 2)
    agents = [AgentUnderTest("agent", ROOT, tmp / "agent")]
    if compare_with is not None:
        agents.append(AgentUnderTest("baseline", compare_with.resolve(), tmp / "baseline"))
    report: dict[str, Any] = {"settings": {"jobs": jobs, "inFlight": in_flight, "rootJobs": root_jobs,
                                           "agents": [agent.variant for agent in agents],
                                           "cgroups": "v1" if os.geteuid() == 0 else "as detected"},
                              "loadAverageAtStart": [round(x, 2) for x in os.getloadavg()]}
    try:
        for agent in agents:
            agent.start(coordinator, root_jobs=root_jobs, cpus=cpus)
        with coordinator.client() as api:
            wait_for(lambda: sum(item["state"] == "READY" for item in api.get("/v0/agents").json()["items"])
                     == len(agents), timeout=60, message="agents READY")
            modes: list[tuple[str, int]] = [("sequential", 1)]
            if in_flight > 1:
                modes.append(("inFlight", in_flight))
            for mode, parallel in modes:
                for agent in agents:
                    agent.jobs = []
                trio.run(_drive, coordinator.url, coordinator.token, agents, warmup, parallel)
                for agent in agents:
                    agent.jobs = []
                began = time.monotonic()
                cpu = {agent.variant: agent.cpu_seconds() for agent in agents}
                trio.run(_drive, coordinator.url, coordinator.token, agents, jobs, parallel)
                elapsed = time.monotonic() - began
                report[mode] = {"inFlight": parallel, "seconds": round(elapsed, 1),
                                **{agent.variant: _figures(api, agent) for agent in agents}}
                for agent in agents:
                    # The agent process's CPU over the mode (its idle work included) per job: steadier
                    # than wall-clock legs on a loaded machine.
                    report[mode][agent.variant]["agentCpuMsPerJob"] = round(
                        (agent.cpu_seconds() - cpu[agent.variant]) / jobs * 1000, 2)
                _print_mode(mode, parallel, report[mode], [agent.variant for agent in agents])
    finally:
        for agent in agents:
            agent.stop()
        coordinator.stop()
    report["loadAverageAtEnd"] = [round(x, 2) for x in os.getloadavg()]
    seq = report["sequential"]["agent"]["legsMs"]
    goals = {"submitToSucceededP50": ("submitToSucceeded", "p50"), "submitToSucceededP99": ("submitToSucceeded", "p99"),
             "agentOverheadP50": ("overhead", "p50")}
    report["goals"] = {f"{name}Ms": {"goal": GOALS_MS[name], "measured": seq[leg][at],
                                     "met": seq[leg][at] < GOALS_MS[name]}
                       for name, (leg, at) in goals.items() if seq[leg] is not None}
    return report


def _print_mode(mode: str, parallel: int, figures: dict[str, Any], variants: list[str]) -> None:
    print(f"e2e {mode} ({parallel} in flight), p50 / p99 ms; agent CPU per job: "
          + ", ".join(f"{variant} {figures[variant]['agentCpuMsPerJob']} ms" for variant in variants), flush=True)
    for name in (*COORDINATOR_LEGS, *AGENT_LEGS):
        cells = []
        for variant in variants:
            leg = figures[variant]["legsMs"][name]
            cells.append(f"{variant} {leg['p50']:>7.1f} / {leg['p99']:>7.1f}" if leg else f"{variant} {'-':>17}")
        print(f"  {name:<18} " + " | ".join(cells), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=200, help="jobs per agent and mode")
    parser.add_argument("--in-flight", type=int, default=4, help="jobs at a time in the second mode (1: skip it)")
    parser.add_argument("--compare-with", type=Path, default=None, help="another checkout's agent, same run")
    parser.add_argument("--root-jobs", action="store_true",
                        help="jobs run as root (as the tests' agents do) instead of a uid of their own")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-e2e-") as tmp:
        report = measure(args.jobs, args.in_flight, Path(tmp), compare_with=args.compare_with,
                         root_jobs=args.root_jobs)
    print(json.dumps(report["goals"], indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"report written to {args.out}")


if __name__ == "__main__":
    main()
