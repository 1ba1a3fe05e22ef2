"""The agent's event loop stays responsive while a job floods its output: heartbeats keep
flowing with a small reported loop lag, another job's timeout still fires on time, and the
spool gives its space back once the flood is shipped. Real coordinator and agent processes.

Bounds are generous (this runs on small, shared machines); the blocked loop this guards
against stalled for many seconds. Figures belong to ``bench/agent_loop.py``.
"""

from __future__ import annotations

import itertools
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from common.clock import parse_rfc3339
from tests.cgroup_fixtures import cleanup_agent_cgroups
from tests.cli_harness import fast_coordinator
from tests.procs import AgentProc, Coordinator, wait_for

FLOOD_BYTES = 48 * 1024 * 1024


@pytest.fixture
def quick(tmp_path: Path) -> Iterator[Coordinator]:
    coordinator = fast_coordinator(tmp_path / "coordinator")
    try:
        yield coordinator
    finally:
        coordinator.stop()


def _loop_lag(api: httpx.Client) -> float | None:
    for family in text_string_to_metric_families(api.get("/metrics").text):
        if family.name == "tanvrit_agent_loop_lag_seconds":
            return max((sample.value for sample in family.samples), default=None)
    return None


def test_loop_stays_responsive_while_a_job_floods_output(quick: Coordinator, tmp_path: Path) -> None:
    data_dir = tmp_path / "agent"
    agent = AgentProc(quick, data_dir, labels=("arch=arm64",), extra_args=("--cpus", "2")).start()
    try:
        with quick.client() as api:
            wait_for(lambda: api.get("/v0/agents").json()["items"], message="agent registered")
            flood = api.post("/v0/jobs", json={
                "type": "COMMAND", "labels": {"arch": "arm64"}, "timeoutSeconds": 600,
                "command": f"head -c {FLOOD_BYTES} /dev/zero | tr '\\0' x",
            }).json()["id"]
            timed = api.post("/v0/jobs", json={
                "type": "COMMAND", "labels": {"arch": "arm64"}, "command": "sleep 600", "timeoutSeconds": 2,
            }).json()["id"]
            worst = 0.0
            beats: list[float] = []
            deadline = time.monotonic() + 180
            while time.monotonic() < deadline:
                jobs = [api.get(f"/v0/jobs/{job_id}").json() for job_id in (flood, timed)]
                worst = max(worst, _loop_lag(api) or 0.0)
                [agent_record] = api.get("/v0/agents").json()["items"]
                if agent_record["lastHeartbeatAt"]:
                    beats.append(parse_rfc3339(agent_record["lastHeartbeatAt"]).timestamp())
                if all(job["state"] in {"SUCCEEDED", "FAILED", "TIMED_OUT"} for job in jobs):
                    break
                time.sleep(0.1)
            flooded, timed_out = jobs
            assert flooded["state"] == "SUCCEEDED", flooded
            assert timed_out["state"] == "TIMED_OUT", timed_out
            ran = (parse_rfc3339(timed_out["finishedAt"]) - parse_rfc3339(timed_out["startedAt"])).total_seconds()
            assert ran < 2 + 3, f"the 2 s timeout fired after {ran:.1f} s"
            # Heartbeats (every 0.3 s here) kept coming while the flood was read and shipped.
            gaps = [later - earlier for earlier, later in itertools.pairwise(beats)]
            assert max(gaps, default=0.0) < 3.0, gaps
            assert worst < 2.0, f"the agent's loop lagged {worst:.2f} s"
            # Once shipped, the spool gave the space back.
            wait_for(lambda: _spool_bytes(data_dir) < 8 * 2**20, timeout=60, message="spool space given back")
    finally:
        agent.stop(signal.SIGTERM)
        cleanup_agent_cgroups(data_dir)


def _spool_bytes(data_dir: Path) -> int:
    return sum(path.stat().st_size for path in data_dir.glob("spool.sqlite3*"))
