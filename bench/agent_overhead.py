"""Agent overhead: per-job cost of the agent's execution path, and an idle agent's footprint.

1. The same short command N times bare (spawn ``/bin/sh -c CMD`` and wait) and through the
   agent's execution path (cgroup created with limits, wrapper joining it, workdir, output
   file tailed, metering, teardown; no network). Prints the median of each and the median
   per-job overhead in ms. As the agent does, the job's directories are removed and the next
   job's cgroup is prepared (``CgroupManager.prepare``) after the outcome, outside the timing.
2. A real agent process registered with a real coordinator on loopback, left idle for a
   while: its resident memory and CPU use (psutil).

Targets: overhead < 10 ms/job, idle RSS < 60 MB, idle CPU < 0.5 % of a core. The machine
may be shared and loaded while this runs, which inflates the figures; the JSON says so.

    .venv/bin/python bench/agent_overhead.py [--runs 50] [--idle-seconds 20]
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

import psutil
import trio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agentd.cgroups.base import CgroupManager, Limits  # noqa: E402
from agentd.cgroups.detect import detect_cgroups  # noqa: E402
from agentd.executor import ExecSpec, execute, remove_job_dirs  # noqa: E402
from tests.procs import AgentProc, Coordinator, wait_for  # noqa: E402

COMMAND = "true"


async def _bare(workdir: Path) -> float:
    begin = time.perf_counter()
    process = await trio.lowlevel.open_process(["/bin/sh", "-c", COMMAND], stdin=subprocess.DEVNULL,
                                               stdout=subprocess.DEVNULL, cwd=workdir, start_new_session=True)
    await process.wait()
    return time.perf_counter() - begin


async def _through_agent(root: Path, index: int, cgroups: CgroupManager) -> float:
    spec = ExecSpec(job_id=f"bench_{os.getpid()}_{index}", command=COMMAND, env={}, timeout_seconds=60,
                    workdir=root / "work" / str(index), state_dir=root / "jobs" / str(index),
                    limits=Limits(memory_bytes=256 * 2**20, cpus=1.0, pids=256))
    begin = time.perf_counter()
    outcome = await execute(spec, lambda _: None, trio.Event(), cgroups=cgroups, on_usage=lambda _: None,
                            leave_dirs=True)
    elapsed = time.perf_counter() - begin
    assert outcome.exit_code == 0, outcome
    # What the agent does once the result is queued (agentd/daemon.py ``_supervise_job``).
    await remove_job_dirs(spec, then=cgroups.prepare)
    return elapsed


async def measure_overhead(runs: int) -> dict[str, object]:
    cgroups = detect_cgroups(base_name=f"tanvrit-bench-{os.getpid()}")
    await trio.to_thread.run_sync(cgroups.prepare)  # as the agent does at start
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "bare").mkdir()
        bare, agent = [], []
        # Interleaved, so drifting load on the machine hits both alike.
        for index in range(runs):
            bare.append(await _bare(root / "bare"))
            agent.append(await _through_agent(root, index, cgroups))
    cgroups.close()
    bare_ms = statistics.median(bare) * 1000
    agent_ms = statistics.median(agent) * 1000
    return {"runs": runs, "command": COMMAND, "isolation": cgroups.kind, "bare_median_ms": round(bare_ms, 2),
            "agent_median_ms": round(agent_ms, 2), "overhead_median_ms": round(agent_ms - bare_ms, 2)}


def measure_idle(seconds: float) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as tmp:
        coordinator = Coordinator(Path(tmp) / "coordinator").start()
        agent = AgentProc(coordinator, Path(tmp) / "agent").start()
        try:
            agent_id = agent.agent_id  # registered
            assert agent.process is not None
            process = psutil.Process(agent.process.pid)
            # Let start-up settle (imports, registration, first heartbeat) before measuring.
            settle = time.monotonic() + 3
            wait_for(lambda: time.monotonic() > settle, timeout=10, interval=0.2, message="settle")
            before = process.cpu_times()
            begin = time.monotonic()
            rss_samples = []
            end = begin + seconds
            while time.monotonic() < end:
                rss_samples.append(process.memory_info().rss)
                time.sleep(0.5)
            after = process.cpu_times()
            wall = time.monotonic() - begin
        finally:
            agent.stop()
            coordinator.stop()
    cpu = (after.user + after.system) - (before.user + before.system)
    return {"agent_id": agent_id, "idle_seconds": round(wall, 1),
            "idle_rss_mb": round(max(rss_samples) / 2**20, 1),
            "idle_cpu_percent_of_core": round(100 * cpu / wall, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--idle-seconds", type=float, default=20.0)
    args = parser.parse_args()
    overhead = trio.run(measure_overhead, args.runs)
    idle = measure_idle(args.idle_seconds)
    load = os.getloadavg()
    result = {
        **overhead, **idle,
        "targets": {"overhead_median_ms": 10, "idle_rss_mb": 60, "idle_cpu_percent_of_core": 0.5},
        "host": {"cpus": os.cpu_count(), "loadavg_1m": round(load[0], 2),
                 "note": "shared machine: the figures include whatever else ran meanwhile"},
    }
    print(json.dumps(result, indent=2))
    out = ROOT / "bench" / "results" / "agent_overhead.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
