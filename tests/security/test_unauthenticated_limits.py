"""Traffic that no workspace pays for is limited per client address, and failed
authentication is counted per address and minute instead of one audit row per request."""

from __future__ import annotations

from pathlib import Path

import httpx

from coordinator.settings import PlanLimit
from tests.inproc import InProcess, running_coordinator

# Five at one instant, then one a second (bursts of up to 5/s for 2 s).
TIGHT = PlanLimit(1, 5, 2)


def _failures(coord: InProcess) -> dict[tuple[str, str], int]:
    """(address, workspace) -> failed authentications, written and not yet written."""
    totals: dict[tuple[str, str], int] = {}
    rows = coord.store.read_now("SELECT source, workspace_id, failures FROM auth_failures")
    pending = [(source, workspace, n) for (_, source, workspace), n in coord.svc.auth_failures.items()]
    for source, workspace, n in [(r["source"], r["workspace_id"], r["failures"]) for r in rows] + pending:
        totals[(source, workspace)] = totals.get((source, workspace), 0) + n
    return totals


def _audit_rows(coord: InProcess) -> int:
    return int(coord.store.read_now("SELECT COUNT(*) AS n FROM audit_events")[0]["n"])


async def test_failed_authentication_is_limited_per_address_and_counted_not_audited(tmp_path: Path) -> None:
    async with running_coordinator(tmp_path, unauthenticated_rate_limit=TIGHT) as coord:
        before = _audit_rows(coord)
        async with coord.client("tcp_pat_not-a-real-token") as stranger, coord.client() as owner:
            statuses = [(await stranger.get("/v0/jobs")).status_code for _ in range(5)]
            assert statuses == [401] * 5
            refused = await stranger.get("/v0/jobs")
            assert refused.status_code == 429, refused.text
            assert refused.json()["error"]["code"] == "too_many_unauthenticated"
            assert refused.headers["Retry-After"] == "1"
            # The address is over its allowance: until it recovers, nothing from it is served.
            assert (await owner.get("/v0/jobs")).status_code == 429
            coord.clock.advance(1)
            assert (await owner.get("/v0/jobs")).status_code == 200
        assert _audit_rows(coord) == before  # not one row per failure
        assert _failures(coord) == {("127.0.0.1", ""): 7}


async def test_requests_without_credentials_are_limited_per_address(tmp_path: Path) -> None:
    async with running_coordinator(tmp_path, unauthenticated_rate_limit=TIGHT) as coord:
        async with httpx.AsyncClient(base_url=coord.url, timeout=30) as anonymous:
            form = {"grant_type": "client_credentials", "client_secret": "tcp_pat_guess"}
            statuses = [(await anonymous.post("/v0/oauth/token", data=form)).status_code for _ in range(6)]
        assert statuses == [401] * 5 + [429]


async def test_a_flood_of_bad_tokens_writes_one_row_per_address_and_minute(tmp_path: Path) -> None:
    # The review's case was 5,400 audit rows in 10 s. With the default limit most of a flood is
    # refused at the door; what does fail authentication is counted, one row per address and minute.
    async with running_coordinator(tmp_path) as coord:
        before = _audit_rows(coord)
        async with coord.client("tcp_pat_flood") as flood:
            statuses = [(await flood.get("/v0/jobs")).status_code for _ in range(600)]
        assert statuses.count(401) == 100 and statuses.count(429) == 500  # 100 at one instant (the clock stands)
        assert _audit_rows(coord) == before
        assert _failures(coord) == {("127.0.0.1", ""): 600}
        assert len(coord.store.read_now("SELECT * FROM auth_failures")) <= 1


async def test_a_recognised_dead_token_is_counted_in_its_workspace(tmp_path: Path) -> None:
    async with running_coordinator(tmp_path, access_token_ttl_seconds=60) as coord, coord.client() as api:
        issued = (await api.post("/v0/oauth/token", data={"grant_type": "client_credentials",
                                                          "client_secret": coord.token})).json()
        coord.clock.advance(60)
        async with coord.client(issued["access_token"]) as expired:
            assert (await expired.get("/v0/jobs")).status_code == 401
        assert _failures(coord) == {("127.0.0.1", coord.workspace_id): 1}


async def test_failed_requests_that_name_no_one_are_counted_not_audited(tmp_path: Path) -> None:
    """Anyone may POST to a path that does not exist or send a malformed grant or sign-in: one
    audit row each (workspace null) grew the log by up to the address limit's rate, per
    address (review 2). They are counted like failed authentications; a public call that names
    its workspace (a sign-in) is still audited."""
    async with running_coordinator(tmp_path) as coord, httpx.AsyncClient(base_url=coord.url) as anonymous:
        before = _audit_rows(coord)
        statuses = set()
        for _ in range(10):
            statuses.add((await anonymous.post("/v0/nope")).status_code)
            statuses.add((await anonymous.post("/v0/oauth/token", data={"grant_type": "password"})).status_code)
            statuses.add((await anonymous.post("/v0/sessions", json={})).status_code)
        assert statuses == {400, 404, 422}
        assert _audit_rows(coord) == before
        assert _failures(coord) == {("127.0.0.1", ""): 30}
        assert (await anonymous.post("/v0/sessions", json={"pat": coord.token})).status_code == 201
        assert _audit_rows(coord) == before + 1
