"""Rate limits: the pure decision at its exact boundaries, then the HTTP surface, on a manual clock."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from coordinator.ratelimit import NANOS, AddressLimiter, Cells, RateLimiter, decide, share
from coordinator.settings import DEFAULT_RATE_LIMITS, PlanLimit
from tests.inproc import running_coordinator

AGENT = {"name": "a", "labels": {}, "capacity": {"cpus": 1, "memoryMb": 512, "gpus": 0}, "version": "t"}


def _run(limit: PlanLimit, times_ns: list[int]) -> list[bool]:
    cells: Cells | None = None
    allowed = []
    for now in times_ns:
        decision = decide(limit, cells, now)
        if decision.allowed:
            cells = decision.cells
        allowed.append(decision.allowed)
    return allowed


@pytest.mark.parametrize(("plan", "rate", "burst"), [("payg", 100, 200), ("team", 1000, 2000)])
def test_plan_table(plan: str, rate: int, burst: int) -> None:
    assert DEFAULT_RATE_LIMITS[plan] == PlanLimit(rate, burst, 10)
    assert DEFAULT_RATE_LIMITS["hobby"] is None


@pytest.mark.parametrize("plan", ["payg", "team"])
def test_burst_at_peak_rate_lasts_exactly_ten_seconds(plan: str) -> None:
    limit = DEFAULT_RATE_LIMITS[plan]
    assert limit is not None
    step = NANOS // int(limit.burst_rate)
    count = int(limit.burst_rate * limit.burst_seconds)  # requests 0..count arrive in [0 s, 10 s]
    allowed = _run(limit, [k * step for k in range(count + 2)])
    assert all(allowed[: count + 1])
    assert allowed[count + 1] is False  # 10 s + one interval: the burst is over


@pytest.mark.parametrize("plan", ["payg", "team"])
def test_sustained_rate_is_never_refused(plan: str) -> None:
    limit = DEFAULT_RATE_LIMITS[plan]
    assert limit is not None
    step = NANOS // int(limit.rate)
    assert all(_run(limit, [k * step for k in range(int(limit.rate) * 60)]))  # a minute at the sustained rate


def test_after_a_burst_only_the_sustained_rate_is_accepted() -> None:
    limit = PlanLimit(100, 200, 10)
    step = NANOS // 200
    cells: Cells | None = None
    for k in range(2001):
        decision = decide(limit, cells, k * step)
        assert decision.allowed
        cells = decision.cells
    end = 2000 * step
    assert cells is not None
    refused = decide(limit, cells, end + step)
    assert not refused.allowed and refused.remaining == 0 and refused.retry_after_seconds == 1
    assert refused.cells == cells  # a refusal consumes nothing
    # Exactly one sustained interval after the last accepted request, there is room for one more.
    assert not decide(limit, cells, end + NANOS // 100 - 1).allowed
    assert decide(limit, cells, end + NANOS // 100).allowed


def test_peak_allows_burst_rate_at_once_and_no_more() -> None:
    limit = PlanLimit(100, 200, 10)
    allowed = _run(limit, [0] * 201)
    assert allowed == [True] * 200 + [False]
    decision = decide(limit, None, 0)
    assert decision.limit == 100 and decision.remaining == 199


def test_retry_after_rounds_up_to_whole_seconds() -> None:
    limit = PlanLimit(1, 1, 0)  # one request per second, no burst
    first = decide(limit, None, 0)
    refused = decide(limit, first.cells, 1)
    assert not refused.allowed and refused.retry_after_seconds == 1
    assert decide(limit, first.cells, NANOS).allowed
    slow = PlanLimit(0.25, 0.25, 0)  # one per four seconds
    first = decide(slow, None, 0)
    assert decide(slow, first.cells, NANOS // 2).retry_after_seconds == 4


async def test_http_limits_headers_and_retry_after(tmp_path: Path) -> None:
    limits = {**DEFAULT_RATE_LIMITS, "payg": PlanLimit(2, 4, 5)}
    async with running_coordinator(tmp_path, plan="payg", rate_limits=limits) as coord, coord.client() as api:
        seen = []
        for _ in range(4):
            response = await api.get("/v0/jobs")
            assert response.status_code == 200
            seen.append((response.headers["X-RateLimit-Limit"], response.headers["X-RateLimit-Remaining"]))
        assert seen == [("2", "3"), ("2", "2"), ("2", "1"), ("2", "0")]
        # Mutations, reads and denials all count against the same workspace budget.
        limited = await api.post("/v0/jobs", json={"type": "COMMAND", "command": "true"})
        assert limited.status_code == 429
        assert limited.json()["error"]["code"] == "rate_limited"
        assert limited.headers["Retry-After"] == "1"
        assert limited.headers["X-RateLimit-Remaining"] == "0"
        assert limited.json()["error"]["requestId"] == limited.headers["X-Request-Id"]
        # The refused mutation stored nothing, and is audited as denied.
        assert coord.store.read_now("SELECT COUNT(*) FROM jobs")[0][0] == 0
        row = coord.store.read_now("SELECT result, status FROM audit_events WHERE request_id = ?",
                                (limited.headers["X-Request-Id"],))
        assert [tuple(r) for r in row] == [("denied", 429)]
        # Agent protocol calls are not counted and carry no rate-limit headers.
        async with coord.client(coord.init.registration_token) as registrar:
            registered = await registrar.post("/agent/v0/register", json=AGENT)
            assert registered.status_code == 201 and "X-RateLimit-Limit" not in registered.headers
        coord.clock.advance(0.25)  # one burst-rate interval: exactly one more request
        assert (await api.get("/v0/jobs")).status_code == 200
        assert (await api.get("/v0/jobs")).status_code == 429


async def test_plan_change_applies_at_once_and_hobby_is_unlimited(tmp_path: Path) -> None:
    limits = {**DEFAULT_RATE_LIMITS, "team": PlanLimit(1, 1, 0)}
    async with running_coordinator(tmp_path, rate_limits=limits) as coord, coord.client() as api:
        for _ in range(20):
            response = await api.get("/v0/jobs")
            assert response.status_code == 200 and "X-RateLimit-Limit" not in response.headers
        patched = await api.patch(f"/v0/workspaces/{coord.workspace_id}", json={"plan": "team"})
        assert patched.status_code == 200
        assert (await api.get("/v0/jobs")).status_code == 200
        assert (await api.get("/v0/jobs")).status_code == 429



def test_each_replica_enforces_its_share_of_the_workspace_limit() -> None:
    # 30/s sustained, bursts at 60/s for 1 s. Alone, a replica takes 31 requests in one instant
    # (the sustained cell's tolerance of 1 s at 1/30 s each, plus one). With three alive each
    # enforces 10/s with bursts at 20/s for 1 s: 11 at once.
    replicas = 3
    limiter = RateLimiter({"team": PlanLimit(30, 60, 1)}, replicas=lambda: replicas)
    at = datetime(2026, 4, 10, tzinfo=UTC)
    decisions = [limiter.check("ws_1", "team", at) for _ in range(12)]
    assert [d.allowed for d in decisions if d is not None] == [True] * 11 + [False]
    # The header shows the workspace's whole limit; what remains is this replica's.
    assert decisions[0] is not None and (decisions[0].limit, decisions[0].remaining) == (30, 10)
    # A replica left: the share grows at the next request (15/s, bursts at 30/s: 15 at once,
    # as 1/15 s rounds up to a whole nanosecond).
    replicas = 2
    assert [limiter.check("ws_2", "team", at).allowed for _ in range(16)] == [True] * 15 + [False]  # type: ignore[union-attr]
    replicas = 1
    assert [limiter.check("ws_3", "team", at).allowed for _ in range(32)] == [True] * 31 + [False]  # type: ignore[union-attr]


def test_the_share_keeps_the_burst_duration() -> None:
    assert share(PlanLimit(100, 200, 10), 4) == PlanLimit(25, 50, 10)
    assert share(PlanLimit(100, 200, 10), 1) == PlanLimit(100, 200, 10)


def test_each_replica_enforces_its_share_of_the_address_limit() -> None:
    # 20/s, bursts at 40/s for 1 s over four replicas: 5/s and 10/s each, 6 at once.
    limiter = AddressLimiter(PlanLimit(20, 40, 1), replicas=lambda: 4)
    at = datetime(2026, 4, 10, tzinfo=UTC)
    assert [limiter.check("10.0.0.1", at, consume=True).allowed for _ in range(7)] == [True] * 6 + [False]  # type: ignore[union-attr]
