"""The token and membership cache on the request path (coordinator/identity_cache.py): a change
made through this coordinator applies to the very next request, a change made elsewhere (another
replica, the offline admin tool) within the cache's bound, and a hit reads nothing from the store."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

from common.clock import to_millis
from coordinator.identity_cache import IdentityCache
from coordinator.store.base import TokenRecord
from tests.inproc import InProcess, running_coordinator

LONG = 3600.0  # a bound no test reaches: what is seen at once was invalidated, not expired
JOB = {"type": "COMMAND", "command": "true", "timeoutSeconds": 30}


class _Ticks:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _count_token_lookups(coord: InProcess) -> list[str]:
    """Record every ``find_token`` the store serves (the instance attribute shadows the method)."""
    calls: list[str] = []
    original = coord.store.find_token

    async def counting(digest: str) -> TokenRecord | None:
        calls.append(digest)
        return await original(digest)

    coord.store.find_token = counting  # type: ignore[method-assign]
    return calls


async def _member(coord: InProcess, role: str) -> tuple[str, str]:
    """(user id, access token) of a new member."""
    token = await coord.add_member(role)
    async with coord.client(token) as member:
        me = (await member.get(f"/v0/workspaces/{coord.workspace_id}")).json()
    assert me is not None
    async with coord.client() as owner:
        members = (await owner.get(f"/v0/workspaces/{coord.workspace_id}/members")).json()["items"]
    user_id = next(m["userId"] for m in members if m["role"] == role)
    return user_id, token


async def test_a_cached_token_is_not_looked_up_again(tmp_path: Path) -> None:
    async with running_coordinator(tmp_path, identity_cache_seconds=LONG) as coord:
        lookups = _count_token_lookups(coord)
        async with coord.client() as owner:
            for _ in range(5):
                assert (await owner.get("/v0/jobs")).status_code == 200
                assert (await owner.post("/v0/jobs", json=JOB)).status_code == 201
        assert len(lookups) == 1


async def test_a_revoked_token_is_refused_by_the_next_request(tmp_path: Path) -> None:
    async with running_coordinator(tmp_path, identity_cache_seconds=LONG) as coord, coord.client() as owner:
        created = (await owner.post("/v0/tokens", json={"name": "ci"})).json()
        async with coord.client(created["token"]) as ci:
            assert (await ci.get("/v0/jobs")).status_code == 200  # now cached
            assert (await ci.post("/v0/jobs", json=JOB)).status_code == 201
            revoked = await owner.delete(f"/v0/tokens/{created['id']}")
            assert revoked.status_code == 200, revoked.text
            refused = await ci.get("/v0/jobs")
            assert refused.status_code == 401 and refused.json()["error"]["code"] == "invalid_token"
            assert (await ci.post("/v0/jobs", json=JOB)).status_code == 401


async def test_a_role_change_and_a_removal_apply_to_the_next_request(tmp_path: Path) -> None:
    async with running_coordinator(tmp_path, identity_cache_seconds=LONG) as coord, coord.client() as owner:
        user_id, token = await _member(coord, "admin")
        members_path = f"/v0/workspaces/{coord.workspace_id}/members"
        async with coord.client(token) as admin:
            assert (await admin.post("/v0/tokens", json={"name": "x"})).status_code == 201  # admins may
            demoted = await owner.patch(f"{members_path}/{user_id}", json={"role": "member"})
            assert demoted.status_code == 200, demoted.text
            refused = await admin.post("/v0/tokens", json={"name": "y"})
            assert refused.status_code == 403 and refused.json()["error"]["code"] == "insufficient_role"
            assert (await admin.get("/v0/jobs")).status_code == 200
            removed = await owner.delete(f"{members_path}/{user_id}")
            assert removed.status_code in (200, 204), removed.text
            gone = await admin.get("/v0/jobs")
            assert gone.status_code in (401, 404), gone.text


async def test_a_change_made_elsewhere_applies_within_the_bound(tmp_path: Path) -> None:
    """Another replica (here: the store written behind this process's back) revokes a token: this
    process may answer from its cache until the entry's bound passes, and never after."""
    async with running_coordinator(tmp_path) as coord:
        ticks = _Ticks()
        coord.svc.identity_cache = IdentityCache(1.0, monotonic=ticks)
        async with coord.client() as owner:
            created = (await owner.post("/v0/tokens", json={"name": "elsewhere"})).json()
        async with coord.client(created["token"]) as other:
            assert (await other.get("/v0/jobs")).status_code == 200
            await coord.store.revoke_token(coord.workspace_id, created["id"], to_millis(coord.clock.now()))
            ticks.now = 0.999
            assert (await other.get("/v0/jobs")).status_code == 200  # within the documented bound
            ticks.now = 1.0
            assert (await other.get("/v0/jobs")).status_code == 401


async def test_a_disabled_cache_reads_the_store_every_time(tmp_path: Path) -> None:
    async with running_coordinator(tmp_path, identity_cache_seconds=0) as coord:
        lookups = _count_token_lookups(coord)
        async with coord.client() as owner:
            for _ in range(3):
                assert (await owner.get("/v0/jobs")).status_code == 200
        assert len(lookups) == 3


def test_a_lookup_that_raced_an_invalidation_is_not_kept() -> None:
    ticks = _Ticks()
    cache = IdentityCache(10.0, monotonic=ticks)
    before: Any = cache.generation
    cache.invalidate()  # a revocation commits while the lookup is in flight
    cache.put("k", "stale", before)
    assert cache.get("k") is None
    cache.put("k", "fresh", cache.generation)
    assert cache.get("k") == "fresh"
    ticks.now = 10.0
    assert cache.get("k") is None and len(cache) == 0


async def test_console_sessions_and_agent_tokens_are_refused_from_the_next_request(tmp_path: Path) -> None:
    """The cache holds sessions and agent tokens too: signing out, revoking the PAT a session was
    made from, and deleting an agent each end them at the very next request."""
    async with running_coordinator(tmp_path, identity_cache_seconds=LONG) as coord, coord.client() as owner:
        pat = (await owner.post("/v0/tokens", json={"name": "console"})).json()
        sessions = []
        for _ in range(2):
            browser = httpx.AsyncClient(base_url=coord.url, timeout=30)
            signed = await browser.post("/v0/sessions", json={"pat": pat["token"]})
            assert signed.status_code == 201, signed.text
            assert (await browser.get("/v0/jobs")).status_code == 200  # now cached
            sessions.append((browser, signed.json()["csrfToken"]))
        try:
            (first, csrf), (second, _) = sessions
            secret = first.cookies["tanvrit_session"]
            assert (await first.delete("/v0/sessions/current", headers={"X-CSRF-Token": csrf})).status_code == 204
            async with httpx.AsyncClient(base_url=coord.url, cookies={"tanvrit_session": secret}) as replay:
                dead = await replay.get("/v0/jobs")
                assert (dead.status_code, dead.json()["error"]["code"]) == (401, "invalid_session")
            assert (await owner.delete(f"/v0/tokens/{pat['id']}")).status_code == 200
            orphan = await second.get("/v0/jobs")
            assert (orphan.status_code, orphan.json()["error"]["code"]) == (401, "invalid_session")
        finally:
            for browser, _ in sessions:
                await browser.aclose()
        agent_id, agent = await coord.register_agent()
        async with agent:
            beat = {"state": "READY", "runningJobs": []}
            assert (await agent.post("/agent/v0/heartbeat", json=beat)).status_code == 200  # now cached
            assert (await owner.delete(f"/v0/agents/{agent_id}")).status_code in (200, 204)
            refused = await agent.post("/agent/v0/heartbeat", json=beat)
            assert refused.status_code == 401, refused.text


async def test_requests_that_change_no_identity_keep_the_cache(tmp_path: Path) -> None:
    """Anyone, without a token, could otherwise empty the cache for every tenant with a stream of
    POSTs to paths that do not exist; cancelling an array changes no identity either."""
    async with running_coordinator(tmp_path, identity_cache_seconds=LONG) as coord:
        lookups = _count_token_lookups(coord)
        async with coord.client() as owner, coord.client("") as anonymous:
            array = (await owner.post("/v0/jobs", json={**JOB, "array": {"count": 2}})).json()
            for _ in range(3):
                assert (await anonymous.post("/v0/no-such-route", json={})).status_code == 404
                assert (await anonymous.delete("/agent/v0/nothing")).status_code == 404
                assert (await owner.post(f"/v0/arrays/{array['id']}:cancel")).status_code == 200
                assert (await owner.get("/v0/jobs")).status_code == 200
        assert len(lookups) == 1
