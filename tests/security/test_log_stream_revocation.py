"""A followed log outlives its request: it must end when its credential no longer admits the
caller (the member removed, the token revoked, the console session signed out), not carry on
streaming the workspace's job output for as long as the job runs."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import trio

from coordinator.auth import CSRF_HEADER
from tests.inproc import InProcess, running_coordinator


async def _follow_until_closed(client: httpx.AsyncClient, job_id: str, cut: Callable[[], Awaitable[None]]) -> None:
    """Open the job's log stream, see it alive (a keep-alive), ``cut`` access, and require the
    server to close the stream within a generous deadline."""
    with trio.fail_after(30):
        async with client.stream("GET", f"/v0/jobs/{job_id}/logs", params={"follow": "true"}) as stream:
            assert stream.status_code == 200
            lines = stream.aiter_lines()
            async for line in lines:
                if line.startswith(": keep-alive"):
                    break
            await cut()
            async for _ in lines:
                pass  # the server ends the stream; a stream that goes on trips fail_after


async def _queued_job(coord: InProcess) -> str:
    async with coord.client() as owner:
        submitted = await owner.post("/v0/jobs", json={"type": "COMMAND", "command": "sleep 1000"})
        assert submitted.status_code == 201, submitted.text
        return str(submitted.json()["id"])


async def test_removing_the_member_ends_their_log_stream(tmp_path: Path) -> None:
    async with running_coordinator(tmp_path, sse_keepalive_seconds=0.2) as coord:
        job_id = await _queued_job(coord)
        member_token = await coord.add_member("member")
        async with coord.client(token=member_token) as member:
            members = await member.get(f"/v0/workspaces/{coord.workspace_id}/members")
            user_id = next(m["userId"] for m in members.json()["items"] if m["role"] == "member")

            async def remove() -> None:
                async with coord.client() as owner:
                    removed = await owner.delete(f"/v0/workspaces/{coord.workspace_id}/members/{user_id}")
                    assert removed.status_code == 204, removed.text

            await _follow_until_closed(member, job_id, remove)


async def test_revoking_the_pat_ends_its_log_stream(tmp_path: Path) -> None:
    async with running_coordinator(tmp_path, sse_keepalive_seconds=0.2) as coord:
        job_id = await _queued_job(coord)
        async with coord.client() as owner:
            pat = (await owner.post("/v0/tokens", json={"name": "follows logs"})).json()

        async def revoke() -> None:
            async with coord.client() as owner:
                assert (await owner.delete(f"/v0/tokens/{pat['id']}")).status_code == 200

        async with coord.client(token=pat["token"]) as holder:
            await _follow_until_closed(holder, job_id, revoke)


async def test_signing_out_ends_the_consoles_log_stream(tmp_path: Path) -> None:
    async with running_coordinator(tmp_path, sse_keepalive_seconds=0.2) as coord:
        job_id = await _queued_job(coord)
        async with httpx.AsyncClient(base_url=coord.url, timeout=30) as browser:
            signed_in = await browser.post("/v0/sessions", json={"pat": coord.token})
            csrf = signed_in.json()["csrfToken"]

            async def sign_out() -> None:
                # Another tab of the same browser signs out.
                assert (await browser.delete("/v0/sessions/current", headers={CSRF_HEADER: csrf})).status_code == 204

            await _follow_until_closed(browser, job_id, sign_out)
