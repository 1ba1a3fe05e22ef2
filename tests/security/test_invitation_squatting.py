"""Invitation squatting (review 2): a login that began with an invitation code reaches only
what that invitation granted.

An admin of workspace A invites an email nobody holds yet, is shown the invitation code, and
redeems it: the admin now holds a login for that account. When workspace B later invites the
same email, the account exists, so it joins B at once. Before the fix the login reached every
workspace of the account, so A's admin acted in B with the role B granted while the real
person could not log in. The code is a credential minted by someone other than the user: what
it yields now reaches only the membership the invitation made and the workspaces created with
that login (``coordinator.auth.reaches``), on both databases. B hands the existing account a
code of its own, whose login reaches B and only B; the squatter, who never sees it, stays out.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import trio

from coordinator.auth import CSRF_HEADER
from coordinator.store.base import InvitationRecord, Store, TokenRecord
from coordinator.store.errors import StaleState
from tests.inproc import InProcess, running_coordinator

VICTIM = "victim@corp.example"


async def _workspace_of_bob(coord: InProcess) -> tuple[str, str]:
    """Bob (invited into A, logged in with his invitation) creates B, where A's owner is no one.
    Returns Bob's access token and B's id."""
    bob_token = await coord.add_member("member")
    async with coord.client(token=bob_token) as bob:
        created = await bob.post("/v0/workspaces", json={"name": "b"})
    assert created.status_code == 201, created.text
    return bob_token, created.json()["id"]


async def _squat(coord: InProcess) -> dict[str, str]:
    """A's owner invites VICTIM into A (as an admin, so that the login may mint PATs) and redeems
    the code: the squatter's OAuth tokens."""
    async with coord.client() as admin_of_a:
        invited = await admin_of_a.post(f"/v0/workspaces/{coord.workspace_id}/members",
                                        json={"email": VICTIM, "role": "admin"})
        assert invited.status_code == 201, invited.text
        squatted = await admin_of_a.post("/v0/invitations:redeem", json={"code": invited.json()["invitation"]["code"]})
    assert squatted.status_code == 200, squatted.text
    return dict(squatted.json()["token"])


async def _status(coord: InProcess, token: str, workspace: str) -> int:
    async with coord.client(token=token, workspace=workspace) as client:
        return (await client.get("/v0/jobs")).status_code


async def test_an_admin_who_redeems_an_invitation_cannot_follow_the_email_into_other_workspaces(
        tmp_path: Path, store_url: str) -> None:
    async with running_coordinator(tmp_path, database_url=store_url) as coord:
        a = coord.workspace_id
        bob_token = await coord.add_member("member")  # Bob then makes B, where A's owner is no one
        async with coord.client(token=bob_token) as bob:
            b = (await bob.post("/v0/workspaces", json={"name": "b"})).json()["id"]
        async with coord.client(workspace=b) as admin_of_a:
            assert (await admin_of_a.get("/v0/jobs")).status_code == 404  # not a member of B
        async with coord.client() as admin_of_a:
            invited = await admin_of_a.post(f"/v0/workspaces/{a}/members",
                                            json={"email": "victim@corp.example", "role": "member"})
            squatted = await admin_of_a.post("/v0/invitations:redeem",
                                             json={"code": invited.json()["invitation"]["code"]})
        squatter_token = squatted.json()["token"]["access_token"]
        async with coord.client(token=bob_token, workspace=b) as owner_of_b:
            joined = await owner_of_b.post(f"/v0/workspaces/{b}/members",
                                           json={"email": "victim@corp.example", "role": "admin"})
        assert joined.status_code == 201, joined.text
        assert joined.json()["member"]["status"] == "active"  # the account joins B at once
        code_of_b = joined.json()["invitation"]["code"]
        async with coord.client(token=squatter_token, workspace=b) as squatter:
            assert (await squatter.get("/v0/jobs")).status_code == 404
            # Nor can the squatter learn B's code through the login: B is out of its reach.
            assert (await squatter.get(f"/v0/workspaces/{b}/members")).status_code == 404
        async with httpx.AsyncClient(base_url=coord.url) as anonymous:
            # What the squatter holds is no code for B: A's code is spent, and codes are not guessed.
            for held in (invited.json()["invitation"]["code"], code_of_b[:-4] + "AAAA"):
                refused = await anonymous.post("/v0/invitations:redeem", json={"code": held})
                assert refused.status_code == 401 and refused.json()["error"]["code"] == "invalid_invitation"
            # The real user, handed B's code, logs in to B and only B.
            real = await anonymous.post("/v0/invitations:redeem", json={"code": code_of_b})
            assert real.status_code == 200, real.text
            assert (real.json()["workspaceId"], real.json()["role"]) == (b, "admin")
            # Once: the squatter, given the code afterwards, is refused.
            again = await anonymous.post("/v0/invitations:redeem", json={"code": code_of_b})
            assert again.status_code == 401
        real_token = real.json()["token"]["access_token"]
        assert await _status(coord, real_token, b) == 200
        assert await _status(coord, real_token, a) == 404
        async with coord.client(token=real_token) as real_user:
            assert [w["id"] for w in (await real_user.get("/v0/workspaces")).json()["items"]] == [b]
        async with coord.client(token=squatter_token, workspace=b) as squatter:
            assert (await squatter.get("/v0/jobs")).status_code == 404  # still out after the redemption


async def test_nothing_made_from_the_squatted_login_reaches_the_other_workspace(tmp_path: Path) -> None:
    """Not the refreshed tokens, a PAT the login mints for itself, its client-credentials access
    token, a console session signed in with that PAT, nor the workspace list; while the login
    keeps working in A and in a workspace it creates."""
    async with running_coordinator(tmp_path) as coord:
        bob_token, b = await _workspace_of_bob(coord)
        squatted = await _squat(coord)
        async with coord.client(token=bob_token, workspace=b) as owner_of_b:
            joined = await owner_of_b.post(f"/v0/workspaces/{b}/members", json={"email": VICTIM, "role": "owner"})
        assert joined.status_code == 201, joined.text
        access = squatted["access_token"]
        assert await _status(coord, access, coord.workspace_id) == 200
        async with httpx.AsyncClient(base_url=coord.url) as anonymous:
            refreshed = await anonymous.post("/v0/oauth/token", data={"grant_type": "refresh_token",
                                                                       "refresh_token": squatted["refresh_token"]})
        assert refreshed.status_code == 200, refreshed.text
        async with coord.client(token=access) as squatter:
            own_pat = await squatter.post("/v0/tokens", json={"name": "mine, says the squatter"})
            listed = await squatter.get("/v0/workspaces")
            created = await squatter.post("/v0/workspaces", json={"name": "squat"})
            assert created.status_code == 201, created.text
            via_pat_in_b = await squatter.post("/v0/tokens", json={"name": "in b"}, headers={"X-Compute-Workspace": b})
        assert own_pat.status_code == 201, own_pat.text
        assert via_pat_in_b.status_code == 404
        assert [w["id"] for w in listed.json()["items"]] == [coord.workspace_id]
        async with httpx.AsyncClient(base_url=coord.url) as anonymous:
            granted = await anonymous.post("/v0/oauth/token", data={"grant_type": "client_credentials",
                                                                     "client_secret": own_pat.json()["token"]})
        assert granted.status_code == 200, granted.text
        for token in (refreshed.json()["access_token"], own_pat.json()["token"], granted.json()["access_token"]):
            assert await _status(coord, token, b) == 404
            assert await _status(coord, token, coord.workspace_id) == 200
            assert await _status(coord, token, created.json()["id"]) == 200
        async with httpx.AsyncClient(base_url=coord.url) as browser:
            signed_in = await browser.post("/v0/sessions", json={"pat": own_pat.json()["token"]})
            assert signed_in.status_code == 201, signed_in.text
            csrf = {CSRF_HEADER: signed_in.json()["csrfToken"]}
            from_console = await browser.post("/v0/tokens", json={"name": "console"},
                                              headers={**csrf, "X-Compute-Workspace": b})
            assert from_console.status_code == 404
            in_b = await browser.get("/v0/jobs", headers={"X-Compute-Workspace": b})
            assert in_b.status_code == 404


async def test_an_invitation_signed_into_the_console_is_bound_the_same_way(tmp_path: Path) -> None:
    async with running_coordinator(tmp_path) as coord:
        bob_token, b = await _workspace_of_bob(coord)
        async with coord.client() as admin_of_a:
            invited = await admin_of_a.post(f"/v0/workspaces/{coord.workspace_id}/members",
                                            json={"email": VICTIM, "role": "member"})
        async with coord.client(token=bob_token, workspace=b) as owner_of_b:
            assert (await owner_of_b.post(f"/v0/workspaces/{b}/members",
                                          json={"email": VICTIM, "role": "admin"})).status_code == 201
        async with httpx.AsyncClient(base_url=coord.url) as browser:
            code = invited.json()["invitation"]["code"]
            signed_in = await browser.post("/v0/sessions", json={"invitationCode": code})
            assert signed_in.status_code == 201, signed_in.text
            assert (await browser.get("/v0/jobs", headers={"X-Compute-Workspace": b})).status_code == 404
            assert (await browser.get("/v0/jobs")).status_code == 200


async def test_a_removed_and_re_added_member_is_not_reached_by_the_old_invitation_login(tmp_path: Path) -> None:
    """Removing the member ends the invitation's login there; adding the account back (at once,
    no code) does not bring it back: the squatter does not return with the real member."""
    async with running_coordinator(tmp_path) as coord:
        squatted = await _squat(coord)
        me = coord.init.user_id
        async with coord.client(token=squatted["access_token"]) as squatter:
            victim_id = (await squatter.get(f"/v0/workspaces/{coord.workspace_id}/members")).json()["items"]
        victim = next(m["userId"] for m in victim_id if m["userId"] != me)
        async with coord.client() as admin_of_a:
            assert (await admin_of_a.delete(f"/v0/workspaces/{coord.workspace_id}/members/{victim}")).status_code == 204
            assert await _status(coord, squatted["access_token"], coord.workspace_id) == 404
            again = await admin_of_a.post(f"/v0/workspaces/{coord.workspace_id}/members",
                                          json={"email": VICTIM, "role": "member"})
        assert again.status_code == 201, again.text
        assert again.json()["member"]["status"] == "active"
        assert await _status(coord, squatted["access_token"], coord.workspace_id) == 404
        # The new code (the membership's invitation now) lets its holder back in, and only here.
        async with httpx.AsyncClient(base_url=coord.url) as anonymous:
            back = await anonymous.post("/v0/invitations:redeem", json={"code": again.json()["invitation"]["code"]})
        assert back.status_code == 200, back.text
        assert await _status(coord, back.json()["token"]["access_token"], coord.workspace_id) == 200
        assert await _status(coord, squatted["access_token"], coord.workspace_id) == 404


async def test_racing_redemptions_of_one_code_yield_one_login(store: Store) -> None:
    """Compare-and-set: of many redemptions at once, exactly one mints tokens, on each database;
    and those tokens carry the invitation, so they reach only what it granted."""
    await store.bootstrap(user_id="usr_1", email="o@x", workspace_id="ws_1", workspace_name="one",
                          plan="hobby", tokens=[], now=1)
    await store.invite_member(workspace_id="ws_1", email="v@x", role="member", new_user_id="usr_2",
                              invitation=InvitationRecord(id="inv_1", workspace_id="ws_1", user_id="usr_2",
                                                          code_hash="code_1", role="member", created_by="usr_1",
                                                          created_at=1, expires_at=1_000_000))
    won: list[str] = []

    async def redeem(token_id: str) -> None:
        token = TokenRecord(id=token_id, kind="refresh", token_hash=f"hash_{token_id}", workspace_id="",
                            user_id=None, agent_id=None, name=token_id, created_at=5)
        try:
            redeemed = await store.redeem_invitation("code_1", 5, [token])
        except StaleState:  # the loser of the compare-and-set, where the store does not retry it
            return
        if redeemed is not None:
            won.append(token_id)

    async with trio.open_nursery() as nursery:
        for i in range(8):
            nursery.start_soon(redeem, f"tok_{i}")
    assert len(won) == 1
    minted = await store.find_token(f"hash_{won[0]}")
    assert minted is not None and (minted.user_id, minted.invitation_id) == ("usr_2", "inv_1")
    membership = await store.membership("ws_1", "usr_2")
    assert membership is not None and membership.invitation_id == "inv_1"
    assert [i for i in range(8) if await store.find_token(f"hash_tok_{i}") is not None] == [int(won[0][4:])]


async def test_the_workspace_that_added_the_account_at_once_can_hand_its_member_a_way_in(tmp_path: Path) -> None:
    """The invitee's own invitation login does not reach B (it cannot be told apart from a
    squatter's), but B hands its member a way in: the code B's response carries (its login
    reaches B only) or a PAT for B (``POST /v0/tokens`` with ``userId``: bound to B, it reaches
    B only); no login from A's invitation reaches B."""
    async with running_coordinator(tmp_path) as coord:
        bob_token, b = await _workspace_of_bob(coord)
        squatted = await _squat(coord)
        async with coord.client(token=bob_token, workspace=b) as owner_of_b:
            joined = await owner_of_b.post(f"/v0/workspaces/{b}/members", json={"email": VICTIM, "role": "member"})
            assert joined.status_code == 201, joined.text
            issued = await owner_of_b.post("/v0/tokens", json={"name": "for the new member",
                                                               "userId": joined.json()["member"]["userId"]})
        assert issued.status_code == 201, issued.text
        assert await _status(coord, issued.json()["token"], b) == 200
        assert await _status(coord, issued.json()["token"], coord.workspace_id) == 404
        async with httpx.AsyncClient(base_url=coord.url) as browser:
            # The code works in the console as well, bound the same way.
            signed_in = await browser.post("/v0/sessions", json={"invitationCode": joined.json()["invitation"]["code"]})
            assert signed_in.status_code == 201, signed_in.text
            assert signed_in.json()["workspaceId"] == b
            assert (await browser.get("/v0/jobs", headers={"X-Compute-Workspace": b})).status_code == 200
            in_a = await browser.get("/v0/jobs", headers={"X-Compute-Workspace": coord.workspace_id})
            assert in_a.status_code == 404
        assert await _status(coord, squatted["access_token"], b) == 404
        assert await _status(coord, squatted["access_token"], coord.workspace_id) == 200
