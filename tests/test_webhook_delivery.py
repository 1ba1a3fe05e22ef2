"""The delivery worker in-process over the real store, with trio's MockClock (autojump) driving
both the retry schedule and the coordinator clock, and an in-process receiver as the transport.

Every request the receiver sees is checked with ``common.signing``. The store writes in a
thread, and trio counts a task waiting on a thread as idle: the clock is held still while any
write is in flight (``hold_clock_during_writes``), so a write slowed by a loaded machine never
lets trio time jump past a retry it was about to schedule.
"""

from __future__ import annotations

import itertools
import json
import math
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path

import httpx
import pytest
import trio
import trio.testing

from common.clock import to_millis
from common.signing import SignatureError, parse_signature_header, verify
from common.states import JobState
from coordinator.store.base import JobRecord
from coordinator.store.base_billing import WebhookRecord
from coordinator.store.sqlite import SqliteStore, open_sqlite_store
from coordinator.webhook_delivery import serve_webhook_deliveries
from coordinator.webhooks import DeliveryConfig, pinned_request

START = datetime(2026, 4, 1, tzinfo=UTC)
CONFIG = DeliveryConfig(timeout_seconds=10, retry_base_seconds=5, retry_max_seconds=3600,
                        retry_window_seconds=86400, per_endpoint_concurrency=4, poll_seconds=3600)


class TrioTimeClock:
    """The coordinator's clock, moved by trio's (mock) clock so retries and timestamps agree."""

    def now(self) -> datetime:
        return START + timedelta(seconds=trio.current_time())


@dataclass
class Seen:
    host: str
    event_id: str
    type: str
    job_id: str | None
    at: float
    signatures: int
    valid_for: list[str]
    status: int


@dataclass
class Receiver:
    """Answers per host with ``respond(host, event) -> status`` (async); verifies every signature."""

    secrets: dict[str, list[str]]
    respond: Callable[[str, dict[str, object]], Awaitable[int]]
    seen: list[Seen] = field(default_factory=list)
    bad_signatures: int = 0

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        body = request.content
        header = request.headers.get("X-Compute-Signature")
        valid_for = []
        for secret in self.secrets[_host(request)]:
            try:
                verify(header, body, secret, now=trio.current_time() + START.timestamp())
                valid_for.append(secret)
            except SignatureError:
                pass
        if not valid_for:
            self.bad_signatures += 1
            return httpx.Response(400)
        event = json.loads(body)
        assert request.headers["X-Compute-Event-Id"] == event["id"]
        # Connected to the address vetted by the URL check, not to a fresh lookup of the name.
        assert request.url.host == "93.184.216.34"
        status = await self.respond(_host(request), event)
        job_id = event["data"].get("id") if event["type"].startswith("job.") else None
        self.seen.append(Seen(_host(request), event["id"], event["type"], job_id, trio.current_time(),
                              len(parse_signature_header(header or "")[1]), valid_for, status))
        return httpx.Response(status)

    def delivered(self, host: str) -> list[Seen]:
        return [s for s in self.seen if s.host == host and s.status < 300]


def _host(request: httpx.Request) -> str:
    # The worker connects to the vetted address and names the host in the Host header.
    return request.headers["host"].rsplit(":", 1)[0]


async def public_dns(host: str, port: int) -> list[str]:
    return ["93.184.216.34"]


def hold_clock_during_writes(store: SqliteStore, clock: trio.testing.MockClock) -> None:
    """No autojump while a write runs in the writer thread: the jump is for idleness, and a
    task waiting on a thread is idle to trio however long the thread takes."""
    original = store._write
    threshold = clock.autojump_threshold
    in_flight = 0

    async def write(fn: Callable[..., object]) -> object:
        nonlocal in_flight
        in_flight += 1
        clock.autojump_threshold = math.inf
        try:
            return await original(fn)
        finally:
            in_flight -= 1
            if in_flight == 0:
                clock.autojump_threshold = threshold

    store._write = write  # type: ignore[method-assign,assignment]


@asynccontextmanager
async def world(tmp_path: Path, receiver: Receiver, hosts: dict[str, list[str]],
                config: DeliveryConfig = CONFIG) -> AsyncIterator[SqliteStore]:
    """A store with one webhook per host (id whk_<host>, all events) and the worker running."""
    async with open_sqlite_store(tmp_path / "db") as store:
        clock = trio.lowlevel.current_clock()
        assert isinstance(clock, trio.testing.MockClock)
        hold_clock_during_writes(store, clock)
        await store.bootstrap(user_id="usr_1", email="o@x", workspace_id="ws_1", workspace_name="w", plan="payg",
                              tokens=[], now=0)
        for host, events in hosts.items():
            secret = f"whsec_{host}"
            receiver.secrets[host] = [secret]
            await store.insert_webhook(WebhookRecord(id=f"whk_{host}", workspace_id="ws_1", url=f"https://{host}/h",
                                                     events=events, created_at=0), secret)
        async with trio.open_nursery() as nursery:
            await nursery.start(partial(serve_webhook_deliveries, store, TrioTimeClock(), config, allow_private=False,
                                        transport=httpx.MockTransport(receiver), resolve=public_dns,
                                        rng=random.Random(1)))
            yield store
            nursery.cancel_scope.cancel()


ALL = ["job.created", "job.transitioned", "job.terminal"]


async def add_job(store: SqliteStore, job_id: str) -> None:
    await store.insert_job(JobRecord(id=job_id, workspace_id="ws_1", state=JobState.QUEUED, command="true", name=None,
                                     labels={}, resources=None, env={}, timeout_seconds=60,
                                     created_at=to_millis(TrioTimeClock().now())))


@pytest.fixture
def clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0.05)


async def until(store: SqliteStore, condition: Callable[[], bool], *, within: float = 3 * 86400) -> None:
    """Wait (in trio time) until ``condition`` holds; checked whenever the outbox moves."""
    with trio.fail_after(within):
        while True:
            changed = store.outbox_signal.snapshot()
            if condition():
                return
            with trio.move_on_after(3600):
                await changed.wait()


def delivery_states(store: SqliteStore) -> list[str]:
    return [row["state"] for row in store.read_now("SELECT state FROM webhook_deliveries ORDER BY id")]


async def test_failing_receiver_gets_every_event_in_order_per_job(tmp_path: Path,
                                                                   clock: trio.testing.MockClock) -> None:
    failures_left = {"job_a": 3}

    async def respond(host: str, event: dict[str, object]) -> int:
        job_id = str(event["data"]["id"])  # type: ignore[index]
        if failures_left.get(job_id, 0) > 0:
            failures_left[job_id] -= 1
            return 500
        return 204

    receiver = Receiver({}, respond)
    async with world(tmp_path, receiver, {"r.example": ALL}, replace(CONFIG, poll_seconds=1)) as store:
        await add_job(store, "job_a")
        await add_job(store, "job_b")
        await store.cancel_job("ws_1", "job_a", to_millis(TrioTimeClock().now()))
        await until(store, lambda: delivery_states(store) == ["delivered"] * 4)

        assert receiver.bad_signatures == 0
        got = [(s.job_id, s.type) for s in receiver.delivered("r.example")]
        assert [t for j, t in got if j == "job_a"] == ["job.created", "job.transitioned", "job.terminal"]
        assert [t for j, t in got if j == "job_b"] == ["job.created"]
        # job_b was not held up behind job_a's failures.
        a_first_success = next(s.at for s in receiver.seen if s.job_id == "job_a" and s.status < 300)
        b_success = next(s.at for s in receiver.seen if s.job_id == "job_b")
        assert b_success < a_first_success
        # Only job.created was tried while it failed; the gaps between tries grow.
        tries = [s for s in receiver.seen if s.job_id == "job_a"][:4]
        assert [s.type for s in tries] == ["job.created"] * 4 and [s.status for s in tries] == [500, 500, 500, 204]
        gaps = [later.at - earlier.at for earlier, later in itertools.pairwise(tries)]
        assert 2.5 <= gaps[0] <= 5 + 1 and 5 <= gaps[1] <= 10 + 1 and 10 <= gaps[2] <= 20 + 1
        # The terminal payload is the job as the API shows it.
        terminal = json.loads(store.read_now("SELECT body FROM webhook_events WHERE type = 'job.terminal'")[0]["body"])
        assert terminal["data"]["state"] == "CANCELLED" and terminal["data"]["id"] == "job_a"
        assert terminal["id"].startswith("evt_") and terminal["createdAt"].endswith("Z")

        attempts = await store.list_webhook_attempts("ws_1", "whk_r.example", limit=50, before_id=None)
        failed = [a for a in attempts if a.status_code == 500]
        assert len(failed) == 3 and all(a.error == "the receiver answered HTTP 500" for a in failed)
        assert len(attempts) == 7 and all(a.delivery_state == "delivered" for a in attempts)


async def test_a_dead_receiver_is_retried_for_24_hours_then_failed(tmp_path: Path,
                                                                  clock: trio.testing.MockClock) -> None:
    async def respond(host: str, event: dict[str, object]) -> int:
        return 503

    receiver = Receiver({}, respond)
    async with world(tmp_path, receiver, {"dead.example": ["job.created"]}) as store:
        await add_job(store, "job_a")
        await until(store, lambda: delivery_states(store) == ["failed"])
        times = [s.at for s in receiver.seen]
        assert times[-1] <= 86400 + 1 and times[-1] + 3600 > 86400
        assert 30 <= len(times) <= 60  # ten doublings from 5 s, then about every 45 min
        assert max(b - a for a, b in itertools.pairwise(times)) <= 3600
        # Never past the cap even by a fraction of a millisecond (the wake-up once came up to
        # 1 ms late, from a wait measured from a truncated "now").
        assert max(round((b - a) * 1e6) for a, b in itertools.pairwise(times)) <= 3600 * 10**6
        # A failed delivery no longer heads its job's queue: the next event goes out.
        receiver.respond = _ok
        await store.cancel_job("ws_1", "job_a", to_millis(TrioTimeClock().now()))
        await add_job(store, "job_b")
        await until(store, lambda: delivery_states(store) == ["failed", "delivered"])


async def _ok(host: str, event: dict[str, object]) -> int:
    return 200


async def test_slow_receiver_blocks_neither_others_nor_more_than_its_slots(
        tmp_path: Path, clock: trio.testing.MockClock) -> None:
    in_flight = {"slow.example": 0}
    most = {"slow.example": 0}

    async def respond(host: str, event: dict[str, object]) -> int:
        if host == "slow.example":
            in_flight[host] += 1
            most[host] = max(most[host], in_flight[host])
            try:
                await trio.sleep(3600)  # far past the 10 s timeout
            finally:
                in_flight[host] -= 1
        return 200

    receiver = Receiver({}, respond)
    async with world(tmp_path, receiver, {"slow.example": ["job.created"], "fast.example": ["job.created"]}) as store:
        for n in range(10):
            await add_job(store, f"job_{n}")
        await until(store, lambda: len(receiver.delivered("fast.example")) == 10)
        assert trio.current_time() < CONFIG.timeout_seconds  # all sent before a single slow attempt timed out
        slow_attempts = "SELECT 1 FROM webhook_attempts WHERE webhook_id = 'whk_slow.example'"
        await until(store, lambda: len(store.read_now(slow_attempts)) >= 10)
        assert most["slow.example"] == CONFIG.per_endpoint_concurrency
        attempts = await store.list_webhook_attempts("ws_1", "whk_slow.example", limit=1, before_id=None)
        assert attempts[0].error == "no answer within 10 s" and attempts[0].status_code is None


async def test_rotation_during_delivery_signs_with_both_secrets_for_24_hours(
        tmp_path: Path, clock: trio.testing.MockClock) -> None:
    failures = [500, 500]

    async def respond(host: str, event: dict[str, object]) -> int:
        return failures.pop(0) if failures else 200

    receiver = Receiver({}, respond)
    async with world(tmp_path, receiver, {"r.example": ["job.created"]}) as store:
        await add_job(store, "job_a")
        await until(store, lambda: len(receiver.seen) == 1)
        receiver.secrets["r.example"].append("whsec_new")
        until_ms = await store.rotate_webhook_secret("ws_1", "whk_r.example", "whsec_new",
                                                     to_millis(TrioTimeClock().now()))
        assert until_ms is not None
        await until(store, lambda: delivery_states(store) == ["delivered"])
        first, *after = receiver.seen
        assert (first.signatures, first.valid_for) == (1, ["whsec_r.example"])
        assert all(s.signatures == 2 and s.valid_for == ["whsec_r.example", "whsec_new"] for s in after)
        # Past the overlap only the new secret signs.
        await trio.sleep(until_ms / 1000 - START.timestamp() - trio.current_time() + 1)
        await add_job(store, "job_b")
        await until(store, lambda: delivery_states(store) == ["delivered", "delivered"])
        last = receiver.seen[-1]
        assert (last.signatures, last.valid_for) == (1, ["whsec_new"])
        assert receiver.bad_signatures == 0


async def test_deleted_webhook_sends_nothing_more(tmp_path: Path, clock: trio.testing.MockClock) -> None:
    receiver = Receiver({}, _fail)
    async with world(tmp_path, receiver, {"r.example": ["job.created"]}) as store:
        await add_job(store, "job_a")
        await until(store, lambda: len(receiver.seen) == 1)
        assert await store.delete_webhook("ws_1", "whk_r.example", to_millis(TrioTimeClock().now()))
        await add_job(store, "job_b")
        await trio.sleep(3600)
        assert len(receiver.seen) == 1
        assert delivery_states(store) == ["cancelled"]


async def _fail(host: str, event: dict[str, object]) -> int:
    return 500


def test_pinned_request_keeps_the_name_for_host_and_tls() -> None:
    assert pinned_request("https://hooks.example.com:8443/in?x=1", "93.184.216.34") == (
        "https://93.184.216.34:8443/in?x=1", {"Host": "hooks.example.com:8443"}, {"sni_hostname": "hooks.example.com"})
    assert pinned_request("http://hooks.example.com", "2606:2800:220:1::248") == (
        "http://[2606:2800:220:1::248]/", {"Host": "hooks.example.com"}, {})
