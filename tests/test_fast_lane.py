"""The fast lane (coordinator/fast_lane.py) answers its routes exactly as Quart does.

Each request is sent twice to one coordinator: as it is (the fast lane serves it) and with an
unrelated cookie (which sends it through Quart, the bearer token still deciding who calls).
Quart's ``request_started`` signal tells which door served each one. The two answers must
match the contract (docs/api.md, /work/shared/spec/api-v0.md): status, error envelope,
headers, the audit row, and the metrics series.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import trio
from quart import signals

from common import API_VERSION, protocol
from coordinator.ratelimit import PlanLimit
from coordinator.settings import DEFAULT_RATE_LIMITS
from tests.inproc import InProcess, running_coordinator

JOB = {"type": "COMMAND", "command": "true", "timeoutSeconds": 30}
THROUGH_QUART = {"Cookie": "unrelated=1"}
# Headers whose values differ by nature from one answer to the next.
_VARYING = {"date", "x-request-id", "content-length", "x-ratelimit-remaining"}


@contextmanager
def quart_requests() -> Iterator[list[str]]:
    """The paths Quart itself served while the block ran."""
    served: list[str] = []

    def started(sender: Any, **kwargs: Any) -> None:
        from quart import request

        served.append(request.path)

    signals.request_started.connect(started)
    try:
        yield served
    finally:
        signals.request_started.disconnect(started)


def _shape(value: Any) -> Any:
    """A body with its ids and times blanked: what must be equal between the doors."""
    if isinstance(value, dict):
        return {key: "*" if key in {"id", "requestId", "createdAt", "jobId"} else _shape(item)
                for key, item in value.items()}
    if isinstance(value, list):
        return [_shape(item) for item in value]
    return value


def _headers(response: httpx.Response) -> dict[str, str]:
    return {name: ("*" if name in _VARYING else value) for name, value in response.headers.items()}


def _audit_row(coord: InProcess, response: httpx.Response) -> list[tuple[Any, ...]]:
    rows = coord.store.read_now("SELECT workspace_id, actor, action, result, status, error_code, method, path "
                                "FROM audit_events WHERE request_id = ?", (response.headers["X-Request-Id"],))
    return [tuple(row) for row in rows]


async def _both(coord: InProcess, client: httpx.AsyncClient, method: str, path: str,
                **kwargs: Any) -> tuple[httpx.Response, httpx.Response]:
    headers = kwargs.pop("headers", {})
    with quart_requests() as served:
        fast = await client.request(method, path, headers=headers, **kwargs)
    assert served == [], f"{method} {path} was not served by the fast lane"
    with quart_requests() as served:
        slow = await client.request(method, path, headers={**headers, **THROUGH_QUART}, **kwargs)
    assert served == [path]
    assert fast.status_code == slow.status_code, (fast.text, slow.text)
    assert _headers(fast) == _headers(slow)
    if fast.headers.get("content-type", "").startswith("application/json") and fast.content:
        assert _shape(fast.json()) == _shape(slow.json())
    else:
        assert fast.content == slow.content
    assert _audit_row(coord, fast) == _audit_row(coord, slow)
    if fast.status_code >= 400:
        error = fast.json()["error"]
        assert error["requestId"] == fast.headers["X-Request-Id"]
    return fast, slow


@contextmanager
def log_lines() -> Iterator[io.StringIO]:
    """What the process logs while the block runs (the production logging of tests/conftest.py
    writes through the root handler, structlog's lines included)."""
    handler = logging.getLogger().handlers[0]
    assert isinstance(handler, logging.StreamHandler)
    written = io.StringIO()
    previous = handler.setStream(written)
    try:
        yield written
    finally:
        handler.setStream(previous)


async def test_submissions_and_reads_answer_alike_through_both_doors(tmp_path: Path) -> None:
    async with running_coordinator(tmp_path) as coord, coord.client() as owner:
        other_workspace = (await owner.post("/v0/workspaces", json={"name": "elsewhere"})).json()["id"]
        with log_lines() as written:
            fast, slow = await _both(coord, owner, "POST", "/v0/jobs", json=JOB)
        assert fast.status_code == 201 and fast.json()["state"] == "QUEUED"
        assert fast.headers["X-Compute-API-Version"] == API_VERSION
        assert fast.headers["Cache-Control"] == "no-store"
        assert fast.headers["X-Content-Type-Options"] == "nosniff"
        assert _audit_row(coord, fast)[0][2:5] == ("job.submit", "success", 201)
        # One request log line each (docs/api.md), with the request id.
        logged = written.getvalue().splitlines()
        for response in (fast, slow):
            lines = [line for line in logged if response.headers["X-Request-Id"] in line]
            assert len(lines) == 1 and "request" in lines[0] and "status=201" in lines[0]
        # Both were stored, durably: the answer names a job that is there.
        for response in (fast, slow):
            got = await _both(coord, owner, "GET", f"/v0/jobs/{response.json()['id']}")
            assert got[0].status_code == 200 and got[0].json()["id"] == response.json()["id"]

        bad_requests: list[tuple[dict[str, Any], int, str, str | None]] = [
            ({"content": b"{not json", "headers": {"Content-Type": "application/json"}}, 400, "invalid_json", None),
            ({"json": {**JOB, "timeoutSeconds": -1}}, 422, "invalid_value", "timeoutSeconds"),
            ({"json": {"type": "COMMAND"}}, 400, "missing_field", "command"),
            ({"json": {**JOB, "env": {"CUDA_VISIBLE_DEVICES": "0"}}}, 400, "reserved_env", "env.CUDA_VISIBLE_DEVICES"),
            ({"json": JOB, "headers": {"X-Compute-API-Version": "v9"}}, 400, "unsupported_api_version",
             "X-Compute-API-Version"),
            ({"json": JOB, "headers": {"Idempotency-Key": ""}}, 400, "invalid_header", "Idempotency-Key"),
            ({"content": b'{"command": "' + b"x" * 2_000_000 + b'"}'}, 413, "payload_too_large", None),
            ({"json": JOB, "headers": {"X-Compute-Workspace": "ws_nothere"}}, 404, "workspace_not_found", None),
        ]
        for kwargs, status, code, field in bad_requests:
            fast, _ = await _both(coord, owner, "POST", "/v0/jobs", **kwargs)
            error = fast.json()["error"]
            assert (fast.status_code, error["code"], error["field"]) == (status, code, field), fast.text

        # Idempotency-Key: a replay answers the first job; the same key with another body is 409.
        first = await owner.post("/v0/jobs", json=JOB, headers={"Idempotency-Key": "k-1"})
        replayed, _ = await _both(coord, owner, "POST", "/v0/jobs", json=JOB, headers={"Idempotency-Key": "k-1"})
        assert replayed.headers["Idempotent-Replayed"] == "true" and replayed.json()["id"] == first.json()["id"]
        reused, _ = await _both(coord, owner, "POST", "/v0/jobs", json={**JOB, "command": "false"},
                                headers={"Idempotency-Key": "k-1"})
        assert reused.status_code == 409 and reused.json()["error"]["code"] == "idempotency_key_reused"

        # Reads: a job of no workspace the caller is in is the same 404 as one that does not exist.
        missing, _ = await _both(coord, owner, "GET", "/v0/jobs/job_01jt9hello0000000000000000")
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "job_not_found"
        foreign = await owner.post("/v0/jobs", json=JOB, headers={"X-Compute-Workspace": other_workspace})
        hidden, _ = await _both(coord, owner, "GET", f"/v0/jobs/{foreign.json()['id']}")
        assert hidden.status_code == 404 and hidden.json()["error"]["code"] == "job_not_found"

    async with running_coordinator(tmp_path / "anonymous") as coord, \
            httpx.AsyncClient(base_url=coord.url) as anonymous:
        for headers, code in [({}, "missing_token"), ({"Authorization": "Bearer tcp_pat_nope"}, "invalid_token")]:
            fast, _ = await _both(coord, anonymous, "POST", "/v0/jobs", json=JOB, headers=headers)
            assert (fast.status_code, fast.json()["error"]["code"]) == (401, code)
            fast, _ = await _both(coord, anonymous, "GET", "/v0/jobs/job_01jt9hello0000000000000000",
                                  headers=headers)
            assert (fast.status_code, fast.json()["error"]["code"]) == (401, code)


async def test_rate_limits_answer_alike_through_both_doors(tmp_path: Path) -> None:
    limits = {**DEFAULT_RATE_LIMITS, "payg": PlanLimit(1, 1, 0)}
    async with running_coordinator(tmp_path, plan="payg", rate_limits=limits) as coord, coord.client() as api:
        # The clock stands still: the first request of each door takes the one allowed.
        allowed = await api.post("/v0/jobs", json=JOB)
        assert allowed.status_code == 201
        limited, _ = await _both(coord, api, "POST", "/v0/jobs", json=JOB)
        assert limited.status_code == 429 and limited.json()["error"]["code"] == "rate_limited"
        assert limited.headers["Retry-After"] == "1" and limited.headers["X-RateLimit-Remaining"] == "0"
        assert _audit_row(coord, limited)[0][3:5] == ("denied", 429)
        assert coord.store.read_now("SELECT COUNT(*) FROM jobs")[0][0] == 1


async def test_the_fast_lane_is_measured_like_quart(tmp_path: Path) -> None:
    async with running_coordinator(tmp_path) as coord, coord.client() as owner:
        await _both(coord, owner, "POST", "/v0/jobs", json=JOB)
        text = coord.svc.metrics.registry.get_sample_value(
            "tanvrit_http_requests_total", {"route": "/v0/jobs", "method": "POST", "status": "201"})
        assert text == 2


async def test_the_agent_protocol_answers_alike_through_both_doors(tmp_path: Path) -> None:
    async with running_coordinator(tmp_path) as coord:
        _, agent = await coord.register_agent()
        async with agent:
            beat = {"state": "READY", "runningJobs": []}
            fast, _ = await _both(coord, agent, "POST", protocol.HEARTBEAT_PATH, json=beat)
            assert fast.status_code == 200 and fast.json()["drain"] is False
            claim = {"free": {"cpus": 1, "memoryMb": 512, "gpus": 0}, "waitSeconds": 0}
            fast, _ = await _both(coord, agent, "POST", protocol.CLAIM_PATH, json=claim)
            assert fast.status_code == 204
            bad, _ = await _both(coord, agent, "POST", protocol.CLAIM_PATH, content=b"[")
            assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_json"
            wrong, _ = await _both(coord, agent, "POST", protocol.HEARTBEAT_PATH, json={"state": "SLEEPY"})
            assert wrong.status_code == 422
            # A claim that finds work answers it, and is counted in the dispatch histogram.
            async with coord.client() as owner:
                job = (await owner.post("/v0/jobs", json=JOB)).json()["id"]
            with quart_requests() as served:
                assigned = await agent.post(protocol.CLAIM_PATH, json=claim)
            assert served == [] and assigned.status_code == 200 and assigned.json()["jobId"] == job
            assert coord.svc.metrics.registry.get_sample_value("tanvrit_job_dispatch_latency_seconds_count") == 1


async def _until_waiting(coord: InProcess) -> None:
    while coord.svc.notifier.waiting_claims(coord.workspace_id) == 0:  # noqa: ASYNC110 (the count has no event)
        await trio.sleep(0.01)


async def test_a_claim_whose_agent_hung_up_is_not_handed_a_job(tmp_path: Path) -> None:
    async with running_coordinator(tmp_path) as coord:
        _, agent = await coord.register_agent()
        claim = {"free": {"cpus": 1, "memoryMb": 512, "gpus": 0}, "waitSeconds": 25}

        async def claim_then_hang_up() -> None:
            with trio.move_on_after(60) as scope:
                async with agent:
                    nursery.start_soon(wait_then_cancel, scope)
                    answered = await agent.post(protocol.CLAIM_PATH, json=claim)
                    raise AssertionError(f"the claim was answered: {answered.status_code} {answered.text}")

        async def wait_then_cancel(scope: trio.CancelScope) -> None:
            with trio.fail_after(30):
                await _until_waiting(coord)
            scope.cancel()  # the client closes its connection

        async with trio.open_nursery() as nursery:
            nursery.start_soon(claim_then_hang_up)
        # The claim ends when its client goes, not when its 25 s run out.
        with trio.fail_after(15):
            while coord.svc.notifier.waiting_claims(coord.workspace_id):  # noqa: ASYNC110 (no event for it)
                await trio.sleep(0.01)
        async with coord.client() as owner:
            job = (await owner.post("/v0/jobs", json=JOB)).json()
            assert (await owner.get(f"/v0/jobs/{job['id']}")).json()["state"] == "QUEUED"
