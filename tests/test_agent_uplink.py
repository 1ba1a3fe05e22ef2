"""The agent's uplink against a real coordinator: an event the coordinator can never take is
dropped without leaving a gap in the sequence numbers (the coordinator refuses every event after
a gap), so the job's later events still arrive."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from agentd.cgroups.none import NoCgroups
from agentd.config import AgentConfig
from agentd.daemon import Agent, AgentFatal
from common.clock import SystemClock
from tests.inproc import running_coordinator


async def test_an_event_the_coordinator_refuses_alone_is_dropped_without_a_gap(tmp_path: Path) -> None:
    # A body limit an operator may well choose; the job's invalid UTF-8 becomes U+FFFD, six
    # bytes of JSON each, so its output chunk is refused (413) however it is batched.
    async with running_coordinator(tmp_path / "coordinator", clock=SystemClock(), max_body_bytes=8192) as co, \
            co.client() as api:
        config = AgentConfig(coordinator=co.url, registration_token=co.init.registration_token,
                             data_dir=tmp_path / "agent", gpu_lock_dir=tmp_path / "locks",
                             labels={"pool": "uplink"}, cgroups="none")
        agent = Agent(config, cgroups=NoCgroups("tests"))
        stop = trio.Event()
        async with trio.open_nursery() as nursery:
            await nursery.start(agent.serve, stop)
            submitted = await api.post("/v0/jobs", json={
                "type": "COMMAND", "labels": {"pool": "uplink"},
                "command": "head -c 3000 /dev/zero | tr '\\0' '\\377'"})
            assert submitted.status_code == 201, submitted.text
            job_id = submitted.json()["id"]
            with trio.fail_after(60):
                while True:
                    job = (await api.get(f"/v0/jobs/{job_id}")).json()
                    if job["state"] not in ("QUEUED", "ASSIGNED", "RUNNING"):
                        break
                    await trio.sleep(0.1)
            # Its result, spooled after the refused chunk, arrived: no gap held it back.
            assert job["state"] == "SUCCEEDED", job
            logs = (await api.get(f"/v0/jobs/{job_id}/logs")).text
            assert "[tanvrit-agentd: a log event the coordinator refused was dropped]" in logs
            stop.set()


async def test_a_second_agent_on_the_same_data_dir_refuses_to_start(tmp_path: Path) -> None:
    # Two agents on one data dir would share one identity and spool, re-adopt (and double the
    # output of) the same jobs, and each offer the whole host: the second one must not start.
    async with running_coordinator(tmp_path / "coordinator", clock=SystemClock()) as co:
        config = AgentConfig(coordinator=co.url, registration_token=co.init.registration_token,
                             data_dir=tmp_path / "agent", gpu_lock_dir=tmp_path / "locks", cgroups="none")
        first = Agent(config, cgroups=NoCgroups("tests"))
        stop = trio.Event()
        async with trio.open_nursery() as nursery:
            await nursery.start(first.serve, stop)
            second = Agent(config, cgroups=NoCgroups("tests"))
            with pytest.raises(AgentFatal, match=r"^another agent is running with data dir .*/agent "
                                                 r"\(pid \d+\); stop it, or give this one its own data_dir$"):
                await second.serve(trio.Event())
            stop.set()
        # Once the first has stopped, the data dir is free again.
        again = Agent(config, cgroups=NoCgroups("tests"))
        stop = trio.Event()
        async with trio.open_nursery() as nursery:
            await nursery.start(again.serve, stop)
            assert again.agent_id == first.agent_id
            stop.set()
