"""What an agent reports is checked before it is applied: sequence numbers are contiguous
(a gap is refused, never skipped over), and usage, times and runtimes fit physics. A refused
event is listed with its code and audited, and the events after it still apply."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx

from common import protocol
from common.clock import ManualClock, to_rfc3339
from tests.inproc import InProcess, running_coordinator

JSON = {"Content-Type": "application/json"}


@dataclass
class Stream:
    """One simulated agent (4 CPUs, 8 GiB, no GPU) holding one job."""

    co: InProcess
    agent: httpx.AsyncClient
    agent_id: str
    job_id: str
    epoch: int

    @property
    def clock(self) -> ManualClock:
        clock: ManualClock = self.co.clock
        return clock

    def at(self, seconds: float = 0) -> str:
        return to_rfc3339(self.clock.now() + timedelta(seconds=seconds))

    def event(self, seq: int, kind: str, **fields: Any) -> dict[str, Any]:
        return {"seq": seq, "type": kind, "jobId": self.job_id, "epoch": self.epoch, **fields}

    async def send(self, *events: dict[str, Any]) -> httpx.Response:
        return await self.agent.post(protocol.EVENTS_PATH, json={"events": list(events)})

    async def job(self) -> dict[str, Any]:
        async with self.co.client() as api:
            found: dict[str, Any] = (await api.get(f"/v0/jobs/{self.job_id}")).json()
        return found

    async def refusals(self) -> list[tuple[str | None, str | None]]:
        async with self.co.client() as api:
            page = await api.get(f"/v0/workspaces/{self.co.workspace_id}/audit",
                                 params={"action": "agent.event_refused"})
        assert page.status_code == 200, page.text
        return [(row["target"], row["errorCode"]) for row in reversed(page.json()["items"])]


@asynccontextmanager
async def job_stream(tmp_path: Path, *, agent_gpus: int = 0, job_gpus: int = 0) -> AsyncIterator[Stream]:
    async with running_coordinator(tmp_path) as co, co.client() as api:
        agent_id, agent = await co.register_agent(cpus=4, memory_mb=8192, gpus=agent_gpus)
        async with agent:
            submitted = await api.post("/v0/jobs", json={"type": "COMMAND", "command": "true",
                                                         "resources": {"gpus": job_gpus, "cpus": 1}})
            assert submitted.status_code == 201, submitted.text
            claimed = await agent.post(protocol.CLAIM_PATH, json={
                "waitSeconds": 0, "free": {"cpus": 4, "memoryMb": 8192, "gpus": agent_gpus}})
            assert claimed.status_code == 200, claimed.text
            yield Stream(co, agent, agent_id, claimed.json()["jobId"], claimed.json()["epoch"])


async def test_a_gap_is_refused_and_the_real_events_after_it_still_apply(tmp_path: Path) -> None:
    async with job_stream(tmp_path) as s:
        first = await s.send(s.event(1, "started", at=s.at()))
        assert first.json() == {"appliedThrough": 1, "rejected": []}
        # The attack: one event far ahead used to make every later real event look like a replay.
        hostile = await s.send(s.event(10**15, "log", data="x"))
        assert hostile.status_code == 409, hostile.text
        assert hostile.json()["error"]["code"] == "sequence_gap"
        # Inside a batch, what precedes the gap applies; the gap and beyond wait.
        mixed = await s.send(s.event(2, "log", data="hello\n"), s.event(10**15, "log", data="x"))
        assert mixed.json() == {"appliedThrough": 2,
                                "rejected": [{"seq": 10**15, "code": "sequence_gap"}]}
        s.clock.advance(3)
        done = await s.send(s.event(3, "finished", at=s.at(), state="SUCCEEDED", exitCode=0, runtimeMs=3000))
        assert done.json() == {"appliedThrough": 3, "rejected": []}
        assert (await s.job())["state"] == "SUCCEEDED"
        assert await s.refusals() == [(None, "sequence_gap"), (None, "sequence_gap")]


async def test_usage_beyond_capacity_times_wall_time_is_refused_alone(tmp_path: Path) -> None:
    async with job_stream(tmp_path) as s:
        s.clock.advance(100)
        # 4 CPUs for 100 s: 420 CPU-seconds with the 5 % tolerance, plus 5 s of slack.
        sane = s.event(1, "usage", cpuSeconds=424.0, gbSeconds=800.0, gpuSeconds=0.0)
        too_much_cpu = s.event(2, "usage", cpuSeconds=426.0, gbSeconds=800.0, gpuSeconds=0.0)
        too_much_memory = s.event(3, "usage", cpuSeconds=424.0, gbSeconds=8 * 100 * 1.05 + 6, gpuSeconds=0.0)
        phantom_gpu = s.event(4, "usage", cpuSeconds=424.0, gbSeconds=800.0, gpuSeconds=6.0)
        later = s.event(5, "usage", cpuSeconds=424.5, gbSeconds=800.0, gpuSeconds=0.0)
        response = await s.send(sane, too_much_cpu, too_much_memory, phantom_gpu, later)
        assert response.json() == {"appliedThrough": 5, "rejected": [
            {"seq": 2, "code": "usage_beyond_capacity"}, {"seq": 3, "code": "usage_beyond_capacity"},
            {"seq": 4, "code": "usage_beyond_capacity"}]}
        assert (await s.job())["usage"]["cpuSeconds"] == 424.5
        assert await s.refusals() == [(s.job_id, "usage_beyond_capacity")] * 3


async def test_usage_of_a_finished_attempt_is_bounded_by_its_end_not_by_now(tmp_path: Path) -> None:
    async with job_stream(tmp_path) as s:
        s.clock.advance(10)
        done = await s.send(s.event(1, "started", at=s.at(-10)),
                            s.event(2, "finished", at=s.at(), state="SUCCEEDED", exitCode=0, runtimeMs=10_000),
                            s.event(3, "usage", cpuSeconds=40.0, gbSeconds=1.0, gpuSeconds=0.0))
        assert done.json() == {"appliedThrough": 3, "rejected": []}
        # A day later the attempt is still 10 s long (plus the clock-skew allowance): 4 CPUs
        # cannot have used a CPU-day in it, however long ago it ended.
        s.clock.advance(86_400)
        inflated = await s.send(s.event(4, "usage", cpuSeconds=4 * 86_400.0, gbSeconds=1.0, gpuSeconds=0.0))
        assert inflated.json() == {"appliedThrough": 4, "rejected": [{"seq": 4, "code": "usage_beyond_capacity"}]}
        assert (await s.job())["usage"]["cpuSeconds"] == 40.0


async def test_gpu_seconds_are_bounded_by_the_jobs_gpus_not_the_agents(tmp_path: Path) -> None:
    async with job_stream(tmp_path, agent_gpus=8, job_gpus=1) as s:
        s.clock.advance(100)
        one_gpu = s.event(1, "usage", cpuSeconds=1.0, gbSeconds=1.0, gpuSeconds=100.0)
        eight_gpus = s.event(2, "usage", cpuSeconds=1.0, gbSeconds=1.0, gpuSeconds=800.0)
        response = await s.send(one_gpu, eight_gpus)
        assert response.json() == {"appliedThrough": 2, "rejected": [{"seq": 2, "code": "usage_beyond_capacity"}]}
        assert (await s.job())["usage"]["gpuSeconds"] == 100.0


async def test_times_out_of_order_or_in_the_future_and_negative_runtimes_are_refused(tmp_path: Path) -> None:
    async with job_stream(tmp_path) as s:
        response = await s.send(
            s.event(1, "started", at=s.at(-3600)),  # before the job was created
            s.event(2, "started", at=s.at(+3600)),  # an hour ahead of the coordinator
            s.event(3, "started", at="not a time"),
            s.event(4, "started", at=s.at()),
            s.event(5, "finished", at=s.at(), state="SUCCEEDED", exitCode=0, runtimeMs=-1),
            s.event(6, "finished", at=s.at(), state="SUCCEEDED", exitCode=0, runtimeMs=10**12),
            s.event(7, "finished", at=s.at(-3600), state="SUCCEEDED", exitCode=0, runtimeMs=0),
            s.event(8, "finished", at=s.at(), state="SUCCEEDED", exitCode=0, runtimeMs=0),
        )
        assert response.json() == {"appliedThrough": 8, "rejected": [
            {"seq": 1, "code": "time_out_of_order"}, {"seq": 2, "code": "time_in_future"},
            {"seq": 3, "code": "invalid_time"}, {"seq": 5, "code": "invalid_runtime"},
            {"seq": 6, "code": "invalid_runtime"}, {"seq": 7, "code": "time_out_of_order"}]}
        assert (await s.job())["state"] == "SUCCEEDED"


async def test_an_event_that_does_not_validate_is_refused_alone_not_the_batch(tmp_path: Path) -> None:
    async with job_stream(tmp_path) as s:
        response = await s.send(
            s.event(1, "started", at=s.at()),
            s.event(2, "usage", cpuSeconds="lots", gbSeconds=0.0, gpuSeconds=0.0),
            s.event(3, "finished", at=s.at(), state="SUCCEEDED", exitCode=2**70, runtimeMs=0),
            s.event(4, "finished", at=s.at(), state="SUCCEEDED", exitCode=0, runtimeMs=0),
        )
        assert response.status_code == 200, response.text
        assert response.json() == {"appliedThrough": 4, "rejected": [
            {"seq": 2, "code": "invalid_event"}, {"seq": 3, "code": "invalid_event"}]}
        assert (await s.job())["state"] == "SUCCEEDED"


async def test_control_characters_in_what_users_are_shown_are_refused(tmp_path: Path) -> None:
    # A reason is printed as is by `jobs list` and `jobs get`, a GPU model on invoices: an
    # agent must not reach a user's terminal with escape sequences.
    async with job_stream(tmp_path) as s:
        response = await s.send(
            s.event(1, "started", at=s.at()),
            s.event(2, "usage", cpuSeconds=0.0, gbSeconds=0.0, gpuSeconds=0.0, gpuModel="H100\x1b]0;pwned\x07"),
            s.event(3, "finished", at=s.at(), state="FAILED", exitCode=1, runtimeMs=0, reason="\x1b[2J\x1b[Hok"),
            s.event(4, "finished", at=s.at(), state="FAILED", exitCode=1, runtimeMs=0, reason="x" * 201),
            s.event(5, "finished", at=s.at(), state="FAILED", exitCode=1, runtimeMs=0, reason="oom_killed"),
        )
        assert response.json() == {"appliedThrough": 5, "rejected": [
            {"seq": 2, "code": "invalid_event"}, {"seq": 3, "code": "invalid_event"},
            {"seq": 4, "code": "invalid_event"}]}
        assert (await s.job())["reason"] == "oom_killed"


async def test_capacity_beyond_physical_bounds_is_refused(tmp_path: Path) -> None:
    async with running_coordinator(tmp_path) as co, httpx.AsyncClient(base_url=co.url, timeout=30) as client:
        for capacity, field in (({"cpus": 1e9, "memoryMb": 1024, "gpus": 0}, "capacity.cpus"),
                                ({"cpus": 4, "memoryMb": 2**40, "gpus": 0}, "capacity.memoryMb"),
                                ({"cpus": 4, "memoryMb": 1024, "gpus": 10**6}, "capacity.gpus")):
            response = await client.post(protocol.REGISTER_PATH, headers={
                "Authorization": f"Bearer {co.init.registration_token}"}, json={
                "name": "liar", "labels": {}, "version": "t", "capacity": capacity})
            assert response.status_code == 422, response.text
            assert response.json()["error"]["field"] == field
