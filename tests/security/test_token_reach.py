"""A token never mints a token that reaches further than itself.

An admin of workspace A mints a PAT for U (bound to A). Before this was checked, that PAT, or
a console session or an access token made from it, could issue U a fresh PAT of U's own, which
reaches every workspace U belongs to: an admin of A acting as U (an owner) in workspace B.
"""

from __future__ import annotations

from pathlib import Path

import httpx

from coordinator.auth import CSRF_HEADER
from tests.inproc import InProcess, running_coordinator


async def _bound_pat_and_other_workspace(coord: InProcess) -> tuple[str, str, str]:
    """U: an admin of A (the owner's workspace) and the owner of B. Returns a PAT the owner of A
    minted for U, U's id and B's id."""
    a = coord.workspace_id
    async with coord.client() as owner:
        invited = await owner.post(f"/v0/workspaces/{a}/members", json={"email": "u@example.test", "role": "admin"})
        assert invited.status_code == 201, invited.text
        user_id = invited.json()["member"]["userId"]
        redeemed = await owner.post("/v0/invitations:redeem", json={"code": invited.json()["invitation"]["code"]})
        minted = await owner.post("/v0/tokens", json={"name": "minted for u", "userId": user_id})
        assert minted.status_code == 201, minted.text
    async with coord.client(token=redeemed.json()["token"]["access_token"]) as user:
        created = await user.post("/v0/workspaces", json={"name": "b"})
        assert created.status_code == 201, created.text
    return minted.json()["token"], user_id, created.json()["id"]


async def _reaches(coord: InProcess, token: str, workspace: str) -> int:
    async with coord.client(token=token, workspace=workspace) as client:
        return (await client.get("/v0/jobs")).status_code


async def test_a_bound_pat_cannot_mint_an_unbound_one(tmp_path: Path) -> None:
    async with running_coordinator(tmp_path) as coord:
        bound, user_id, b = await _bound_pat_and_other_workspace(coord)
        assert await _reaches(coord, bound, b) == 404
        async with coord.client(token=bound) as client:
            fresh = await client.post("/v0/tokens", json={"name": "u's own, it says"})
        assert fresh.status_code == 201, fresh.text
        assert fresh.json()["userId"] == user_id
        assert await _reaches(coord, fresh.json()["token"], coord.workspace_id) == 200
        assert await _reaches(coord, fresh.json()["token"], b) == 404
        # Nor through the client-credentials grant on top of it.
        async with httpx.AsyncClient(base_url=coord.url) as anonymous:
            granted = await anonymous.post("/v0/oauth/token", data={"grant_type": "client_credentials",
                                                                     "client_secret": fresh.json()["token"]})
        assert granted.status_code == 200, granted.text
        assert await _reaches(coord, granted.json()["access_token"], b) == 404


async def test_a_console_session_of_a_bound_pat_cannot_mint_an_unbound_one(tmp_path: Path) -> None:
    async with running_coordinator(tmp_path) as coord:
        bound, _, b = await _bound_pat_and_other_workspace(coord)
        async with httpx.AsyncClient(base_url=coord.url) as browser:
            signed_in = await browser.post("/v0/sessions", json={"pat": bound})
            assert signed_in.status_code == 201, signed_in.text
            fresh = await browser.post("/v0/tokens", json={"name": "from the console"},
                                       headers={CSRF_HEADER: signed_in.json()["csrfToken"]})
            assert fresh.status_code == 201, fresh.text
        assert await _reaches(coord, fresh.json()["token"], b) == 404


async def test_own_pats_still_span_the_users_workspaces(tmp_path: Path) -> None:
    """The owner's own PAT mints an own PAT that reaches every workspace the owner is in."""
    async with running_coordinator(tmp_path) as coord:
        async with coord.client() as owner:
            other = (await owner.post("/v0/workspaces", json={"name": "second"})).json()["id"]
            fresh = await owner.post("/v0/tokens", json={"name": "own"})
        assert await _reaches(coord, fresh.json()["token"], other) == 200


async def test_removing_a_member_ends_the_tokens_minted_for_them_there(tmp_path: Path) -> None:
    """An admin-minted PAT (and its session) must not come back to life when its user is
    added to the workspace again: it used to, since removal only deleted the membership."""
    async with running_coordinator(tmp_path) as coord:
        bound, user_id, _ = await _bound_pat_and_other_workspace(coord)
        async with httpx.AsyncClient(base_url=coord.url) as browser:
            assert (await browser.post("/v0/sessions", json={"pat": bound})).status_code == 201
            a = coord.workspace_id
            async with coord.client() as owner:
                assert (await owner.delete(f"/v0/workspaces/{a}/members/{user_id}")).status_code == 204
                back = await owner.post(f"/v0/workspaces/{a}/members", json={"email": "u@example.test",
                                                                             "role": "admin"})
                assert back.status_code == 201 and back.json()["member"]["userId"] == user_id
            assert await _reaches(coord, bound, a) == 401
            assert (await browser.get("/v0/jobs")).status_code == 401
