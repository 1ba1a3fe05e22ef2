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

# An in-process agent stopped while a request of its is in flight (a held heartbeat, a long-poll
# claim) leaves httpx's request-body generator to the garbage collector, which warns: only that.
pytestmark = pytest.mark.filterwarnings(
    r"ignore:Async generator 'httpx\._content\.ByteStream\.__aiter__' was garbage collected:ResourceWarning")


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


async def test_output_already_spooled_gives_its_disk_space_back_while_the_job_runs(tmp_path: Path) -> None:
    # A job's output file is in the agent's data dir, beside its credentials and spool: a job
    # writing for days must not fill that disk with output that has long been shipped.
    async with running_coordinator(tmp_path / "coordinator", clock=SystemClock()) as co, co.client() as api:
        config = AgentConfig(coordinator=co.url, registration_token=co.init.registration_token,
                             data_dir=tmp_path / "agent", gpu_lock_dir=tmp_path / "locks",
                             labels={"pool": "output"}, cgroups="none", kill_grace_seconds=1)
        agent = Agent(config, cgroups=NoCgroups("tests"))
        stop = trio.Event()
        async with trio.open_nursery() as nursery:
            await nursery.start(agent.serve, stop)
            written = 40 * 1024 * 1024
            submitted = await api.post("/v0/jobs", json={
                "type": "COMMAND", "labels": {"pool": "output"},
                "command": f"head -c {written} /dev/zero | tr '\\0' x; exec sleep 600"})
            assert submitted.status_code == 201, submitted.text
            job_id = submitted.json()["id"]
            output = config.jobs_root / job_id / "output"
            with trio.fail_after(90):
                while True:
                    info = output.stat() if output.exists() else None
                    # All of it written, and (nearly) none of it still taking disk space.
                    if info is not None and info.st_size == written and info.st_blocks * 512 < 4 * 1024 * 1024:
                        break
                    await trio.sleep(0.2)
            assert (await api.post(f"/v0/jobs/{job_id}:cancel")).status_code == 200
            with trio.fail_after(60):
                while True:
                    job = (await api.get(f"/v0/jobs/{job_id}")).json()
                    if job["state"] == "CANCELLED":
                        break
                    await trio.sleep(0.1)
            # No hole was ever read: what the coordinator keeps (the last 8 MiB) is the job's own.
            logs = (await api.get(f"/v0/jobs/{job_id}/logs")).text
            assert logs.startswith("x" * 1024) and "\x00" not in logs
            stop.set()


async def test_a_hole_a_job_makes_in_its_output_is_not_shipped_as_zeros(tmp_path: Path) -> None:
    # ftruncate on its stdout costs a job nothing, and used to make the agent read, spool and
    # ship a gigabyte of NULs: amplification at the agent's and the coordinator's expense.
    async with running_coordinator(tmp_path / "coordinator", clock=SystemClock()) as co, co.client() as api:
        config = AgentConfig(coordinator=co.url, registration_token=co.init.registration_token,
                             data_dir=tmp_path / "agent", gpu_lock_dir=tmp_path / "locks",
                             labels={"pool": "holes"}, cgroups="none")
        agent = Agent(config, cgroups=NoCgroups("tests"))
        stop = trio.Event()
        async with trio.open_nursery() as nursery:
            await nursery.start(agent.serve, stop)
            submitted = await api.post("/v0/jobs", json={
                "type": "COMMAND", "labels": {"pool": "holes"},
                "command": "printf 'before|'; "
                           "python3 -c 'import os; os.ftruncate(1, os.fstat(1).st_size + (1 << 30))'; printf 'after'"})
            assert submitted.status_code == 201, submitted.text
            job_id = submitted.json()["id"]
            with trio.fail_after(60):
                while True:
                    job = (await api.get(f"/v0/jobs/{job_id}")).json()
                    if job["state"] not in ("QUEUED", "ASSIGNED", "RUNNING"):
                        break
                    await trio.sleep(0.1)
            assert job["state"] == "SUCCEEDED", job
            logs = (await api.get(f"/v0/jobs/{job_id}/logs")).text
            # Holes are whole file-system blocks: the zeros of the blocks that hold output stay.
            assert logs.startswith("before|") and logs.endswith("after") and len(logs) <= 2 * 65536, len(logs)
            stop.set()
