"""``GET /v0/jobs/{id}/logs?follow=true`` (Server-Sent Events) over real HTTP, with a simulated
agent posting log events through the agent protocol."""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator
from contextlib import aclosing
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
import trio.testing

from common.protocol import CapacityMsg, ClaimRequest, EventBatch
from tests.inproc import InProcess, open_inprocess

JSON = {"Content-Type": "application/json"}

# Leaving an httpx stream early (the point of the disconnect tests) leaves httpx's and
# httpcore's own async generators to the garbage collector, which warns. Only those are ignored.
pytestmark = pytest.mark.filterwarnings(
    r"ignore:Exception ignored in. <async_generator object (AsyncHTTP11Connection\._receive_response_body"
    r"|HTTP11ConnectionByteStream\.__aiter__|PoolByteStream\.__aiter__|AsyncResponseStream\.__aiter__"
    r"|BoundAsyncStream\.__aiter__|Response\.aiter_\w+) :pytest.PytestUnraisableExceptionWarning"
)


def _now() -> str:
    """Wall time: the coordinator refuses event times from before the job or from the future."""
    return datetime.now(UTC).isoformat()


class SimAgent:
    """Speaks the agent protocol for one job, the way agentd would."""

    def __init__(self, client: httpx.AsyncClient, job_id: str, epoch: int) -> None:
        self.client = client
        self.job_id = job_id
        self.epoch = epoch
        self.seq = 0

    async def send(self, *events: dict[str, Any]) -> httpx.Response:
        bodies = []
        for event in events:
            self.seq += 1
            bodies.append({"seq": self.seq, "jobId": self.job_id, "epoch": self.epoch, **event})
        batch = EventBatch.model_validate({"events": bodies})
        response = await self.client.post("/agent/v0/events", content=batch.model_dump_json(), headers=JSON)
        assert response.status_code == 200, response.text
        assert response.json()["rejected"] == []
        return response

    async def start(self) -> None:
        await self.send({"type": "started", "at": _now()})

    async def log(self, *chunks: str) -> None:
        await self.send(*({"type": "log", "data": chunk} for chunk in chunks))

    async def finish(self, exit_code: int = 0) -> None:
        await self.send({"type": "finished", "at": _now(), "exitCode": exit_code, "runtimeMs": 0,
                         "state": "SUCCEEDED" if exit_code == 0 else "FAILED"})


async def _running_job(co: InProcess, api: httpx.AsyncClient, agent: httpx.AsyncClient) -> SimAgent:
    job_id = (await api.post("/v0/jobs", json={"type": "COMMAND", "command": "x"})).json()["id"]
    claim = ClaimRequest(free=CapacityMsg(cpus=4, memoryMb=8192, gpus=0), waitSeconds=0)
    assignment = (await agent.post("/agent/v0/claim", content=claim.model_dump_json(), headers=JSON)).json()
    assert assignment["jobId"] == job_id
    sim = SimAgent(agent, job_id, assignment["epoch"])
    await sim.start()
    return sim


async def _events(lines: AsyncIterator[str]) -> AsyncIterator[dict[str, str]]:
    """SSE blocks as dicts; a comment line comes back as {"comment": text}."""
    block: dict[str, str] = {}
    async for line in lines:
        if line.startswith(":"):
            yield {"comment": line[1:].strip()}
        elif not line:
            if block:
                yield block
            block = {}
        else:
            key, _, value = line.partition(": ")
            block[key] = value


def _follow(api: httpx.AsyncClient, job_id: str, last_event_id: int | None = None) -> Any:
    headers = {"Last-Event-ID": str(last_event_id)} if last_event_id is not None else {}
    return api.stream("GET", f"/v0/jobs/{job_id}/logs", params={"follow": "true"}, headers=headers,
                      timeout=httpx.Timeout(10, read=60))


async def _read_to_end(api: httpx.AsyncClient, job_id: str, last_event_id: int | None = None) -> list[dict[str, str]]:
    found = []
    async with _follow(api, job_id, last_event_id) as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        async with aclosing(_events(stream.aiter_lines())) as events:
            async for event in events:
                if "comment" in event:
                    continue
                found.append(event)
                if event["event"] == "end":
                    break
    return found


def _text(events: list[dict[str, str]]) -> str:
    return "".join(json.loads(e["data"]) for e in events if e["event"] == "log")


async def test_follow_from_the_start_while_the_job_runs(tmp_path: Path) -> None:
    async with open_inprocess(tmp_path) as co, co.client() as api:
        _, agent = await co.register_agent()
        async with agent:
            sim = await _running_job(co, api, agent)
            await sim.log("one\n")
            found: list[dict[str, str]] = []
            async with trio.open_nursery() as nursery:

                async def follow() -> None:
                    found.extend(await _read_to_end(api, sim.job_id))

                nursery.start_soon(follow)
                await trio.testing.wait_all_tasks_blocked(cushion=0.05)
                await sim.log("two\r\n", "three ü\n")
                await trio.testing.wait_all_tasks_blocked(cushion=0.05)
                await sim.finish(3)
        assert _text(found) == "one\ntwo\r\nthree ü\n"
        # Each id is the byte offset just past its chunk.
        assert [int(e["id"]) for e in found if e["event"] == "log"] == [4, 9, 18]
        assert found[-1]["event"] == "end"
        assert json.loads(found[-1]["data"]) == {"state": "FAILED", "exitCode": 3}
        assert co.svc.notifier.watched_jobs == 0


async def test_resume_from_a_middle_offset_repeats_and_loses_nothing(tmp_path: Path) -> None:
    async with open_inprocess(tmp_path) as co, co.client() as api:
        _, agent = await co.register_agent()
        async with agent:
            sim = await _running_job(co, api, agent)
            await sim.log("hello ", "world\n")
            first: list[dict[str, str]] = []
            async with _follow(api, sim.job_id) as stream, aclosing(_events(stream.aiter_lines())) as events:
                async for event in events:
                    first.append(event)
                    break  # drop the connection after the first event
            assert _text(first) == "hello " and first[0]["id"] == "6"
            await sim.log("again\n")
            await sim.finish()
            rest = await _read_to_end(api, sim.job_id, last_event_id=int(first[0]["id"]))
            assert _text(first) + _text(rest) == "hello world\nagain\n"
            # An offset inside a chunk resumes at that exact byte.
            assert _text(await _read_to_end(api, sim.job_id, last_event_id=3)) == "lo world\nagain\n"
            # At (or past) the end: nothing but the end event.
            tail = await _read_to_end(api, sim.job_id, last_event_id=18)
            assert [e["event"] for e in tail] == ["end"] and tail[0]["id"] == "18"


async def test_follow_a_finished_job_gets_everything_then_end(tmp_path: Path) -> None:
    async with open_inprocess(tmp_path) as co, co.client() as api:
        _, agent = await co.register_agent()
        async with agent:
            sim = await _running_job(co, api, agent)
            await sim.log("a\n", "b\n")
            await sim.finish()
        found = await _read_to_end(api, sim.job_id)
        assert [e["event"] for e in found] == ["log", "log", "end"]
        assert _text(found) == "a\nb\n"
        bad = await api.get(f"/v0/jobs/{sim.job_id}/logs", params={"follow": "true"},
                            headers={"Last-Event-ID": "x"})
        assert bad.status_code == 400 and bad.json()["error"]["field"] == "Last-Event-ID"
        huge = await api.get(f"/v0/jobs/{sim.job_id}/logs", params={"follow": "true"},
                             headers={"Last-Event-ID": "9" * 30})
        assert huge.status_code == 422 and huge.json()["error"]["field"] == "Last-Event-ID"


async def test_disconnecting_follower_leaves_nothing_behind(tmp_path: Path) -> None:
    async with open_inprocess(tmp_path) as co, co.client() as api:
        _, agent = await co.register_agent()
        async with agent:
            sim = await _running_job(co, api, agent)
            await sim.log("x\n")
            for _ in range(3):
                async with _follow(api, sim.job_id) as stream:
                    async with aclosing(_events(stream.aiter_lines())) as events:
                        async for _event in events:
                            break
                    assert co.svc.notifier.watched_jobs == 1
            # The server notices each disconnect (no keep-alive write is needed for that:
            # the default keep-alive here is 15 s) and drops the watch.
            with trio.fail_after(10):
                while co.svc.notifier.watched_jobs:
                    await trio.testing.wait_all_tasks_blocked(cushion=0.05)
            assert co.svc.notifier.watched_jobs == 0


async def test_keep_alive_comment_at_the_configured_interval(tmp_path: Path) -> None:
    async with open_inprocess(tmp_path, sse_keepalive_seconds=0.2) as co, co.client() as api:
        job_id = (await api.post("/v0/jobs", json={"type": "COMMAND", "command": "x"})).json()["id"]
        comments = 0
        with trio.fail_after(20):
            async with _follow(api, job_id) as stream, aclosing(_events(stream.aiter_lines())) as events:
                async for event in events:
                    assert event == {"comment": "keep-alive"}
                    comments += 1
                    if comments == 2:
                        break
        assert comments == 2


async def test_a_follower_that_never_reads_does_not_slow_the_agent(tmp_path: Path) -> None:
    """Followers read the store and wait on a signal that the events POST fires without waiting;
    a follower whose socket is full blocks only its own response."""
    async with open_inprocess(tmp_path) as co, co.client() as api:
        _, agent = await co.register_agent()
        async with agent:
            sim = await _running_job(co, api, agent)
            host, port = co.url.removeprefix("http://").split(":")
            stalled = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            with stalled:
                await stalled.connect((host, int(port)))
                request = (f"GET /v0/jobs/{sim.job_id}/logs?follow=true HTTP/1.1\r\nHost: {host}\r\n"
                           f"Authorization: Bearer {co.init.owner_token}\r\n\r\n")
                await stalled.send(request.encode())
                # About 4 MiB of log in 64 KiB chunks: far more than the socket buffers hold.
                chunk = "y" * 65535 + "\n"
                with trio.fail_after(60):
                    for _ in range(8):
                        await sim.log(*([chunk] * 8))
                    await sim.finish()
                assert co.svc.notifier.watched_jobs == 1  # still there, stuck on its own write
                job = (await api.get(f"/v0/jobs/{sim.job_id}")).json()
                assert job["state"] == "SUCCEEDED"
            with trio.fail_after(10):
                while co.svc.notifier.watched_jobs:
                    await trio.testing.wait_all_tasks_blocked(cushion=0.05)
