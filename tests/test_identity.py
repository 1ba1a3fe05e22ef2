"""Workspaces, members, invitations, PATs and the OAuth token endpoint, over real HTTP with a
manual clock (token expiry is stepped to its boundary, never waited for)."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import httpx
import pytest

from coordinator.tokens import hash_token
from tests.inproc import InProcess, running_coordinator


def _error(response: httpx.Response) -> str:
    code: str = response.json()["error"]["code"]
    return code


async def _invite(api: httpx.AsyncClient, workspace_id: str, email: str, role: str) -> dict[str, Any]:
    response = await api.post(f"/v0/workspaces/{workspace_id}/members", json={"email": email, "role": role})
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


async def _login(coord: InProcess, code: str) -> dict[str, Any]:
    async with coord.client("") as anonymous:
        response = await anonymous.post("/v0/invitations:redeem", json={"code": code})
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def _member_token(coord: InProcess, email: str, role: str) -> tuple[str, str]:
    """(user id, access token) of a new member of the bootstrap workspace."""
    async with coord.client() as owner:
        invited = await _invite(owner, coord.workspace_id, email, role)
    redeemed = await _login(coord, invited["invitation"]["code"])
    return redeemed["userId"], redeemed["token"]["access_token"]


async def test_workspace_create_list_get_patch(tmp_path: Path) -> None:
    async with running_coordinator(tmp_path) as coord, coord.client() as api:
        created = await api.post("/v0/workspaces", json={"name": "research", "defaultRegion": "eu-west-1"})
        assert created.status_code == 201, created.text
        ws = created.json()
        assert ws["id"].startswith("ws_") and ws["role"] == "owner" and ws["plan"] == "hobby"
        assert ws["defaultRegion"] == "eu-west-1"
        listed = (await api.get("/v0/workspaces")).json()
        assert {w["id"] for w in listed["items"]} == {coord.workspace_id, ws["id"]}
        assert listed["nextCursor"] is None
        page = (await api.get("/v0/workspaces", params={"limit": 1})).json()
        assert len(page["items"]) == 1 and page["nextCursor"]
        rest = (await api.get("/v0/workspaces", params={"limit": 1, "cursor": page["nextCursor"]})).json()
        assert {page["items"][0]["id"], rest["items"][0]["id"]} == {coord.workspace_id, ws["id"]}
        patched = await api.patch(f"/v0/workspaces/{ws['id']}", json={"name": "renamed", "plan": "team"})
        assert patched.status_code == 200, patched.text
        assert patched.json()["name"] == "renamed" and patched.json()["plan"] == "team"
        assert patched.json()["defaultRegion"] == "eu-west-1"  # absent fields are left alone
        cleared = await api.patch(f"/v0/workspaces/{ws['id']}", json={"defaultRegion": None})
        assert cleared.json()["defaultRegion"] is None
        got = (await api.get(f"/v0/workspaces/{ws['id']}")).json()
        assert got["name"] == "renamed"
        # Jobs follow the active workspace header.
        job = await api.post("/v0/jobs", json={"type": "COMMAND", "command": "true"},
                             headers={"X-Compute-Workspace": ws["id"]})
        assert job.status_code == 201
        in_new = (await api.get("/v0/jobs", headers={"X-Compute-Workspace": ws["id"]})).json()["items"]
        in_default = (await api.get("/v0/jobs")).json()["items"]
        assert [j["id"] for j in in_new] == [job.json()["id"]] and in_default == []


async def test_roles_on_workspace_and_members(tmp_path: Path) -> None:
    async with running_coordinator(tmp_path) as coord:
        ws = coord.workspace_id
        admin_id, admin_token = await _member_token(coord, "admin@example.com", "admin")
        member_id, member_token = await _member_token(coord, "member@example.com", "member")
        owner_id = coord.init.user_id
        async with coord.client(member_token) as member, coord.client(admin_token) as admin, \
                coord.client() as owner:
            # Members read, but change nothing.
            assert (await member.get(f"/v0/workspaces/{ws}/members")).status_code == 200
            assert _error(await member.patch(f"/v0/workspaces/{ws}", json={"name": "x"})) == "insufficient_role"
            assert _error(await member.post(f"/v0/workspaces/{ws}/members",
                                            json={"email": "z@example.com", "role": "member"})) == "insufficient_role"
            # Admins rename, manage members and admins, but never owners; plans are for owners.
            assert (await admin.patch(f"/v0/workspaces/{ws}", json={"name": "y"})).status_code == 200
            assert _error(await admin.patch(f"/v0/workspaces/{ws}", json={"plan": "team"})) == "insufficient_role"
            assert _error(await admin.post(f"/v0/workspaces/{ws}/members",
                                           json={"email": "o@example.com", "role": "owner"})) == "insufficient_role"
            assert _error(await admin.patch(f"/v0/workspaces/{ws}/members/{member_id}",
                                            json={"role": "owner"})) == "insufficient_role"
            assert _error(await admin.patch(f"/v0/workspaces/{ws}/members/{owner_id}",
                                            json={"role": "member"})) == "insufficient_role"
            assert _error(await admin.delete(f"/v0/workspaces/{ws}/members/{owner_id}")) == "insufficient_role"
            promoted = await admin.patch(f"/v0/workspaces/{ws}/members/{member_id}", json={"role": "admin"})
            assert promoted.status_code == 200 and promoted.json()["role"] == "admin"
            assert promoted.json()["status"] == "active"
            # The sole owner can neither demote nor remove themself.
            assert _error(await owner.patch(f"/v0/workspaces/{ws}/members/{owner_id}",
                                            json={"role": "admin"})) == "last_owner"
            assert _error(await owner.delete(f"/v0/workspaces/{ws}/members/{owner_id}")) == "last_owner"
            # With a second owner, the first may step down.
            assert (await owner.patch(f"/v0/workspaces/{ws}/members/{admin_id}",
                                      json={"role": "owner"})).status_code == 200
            assert (await owner.patch(f"/v0/workspaces/{ws}/members/{owner_id}",
                                      json={"role": "member"})).status_code == 200
            roles = {m["userId"]: m["role"] for m in (await admin.get(f"/v0/workspaces/{ws}/members")).json()["items"]}
            assert roles == {owner_id: "member", admin_id: "owner", member_id: "admin"}
            # A removed member's tokens no longer reach the workspace (404, as for any stranger).
            assert (await admin.delete(f"/v0/workspaces/{ws}/members/{member_id}")).status_code == 204
            assert _error(await member.get("/v0/jobs")) == "workspace_not_found"
            assert _error(await admin.delete(f"/v0/workspaces/{ws}/members/{member_id}")) == "member_not_found"
            again = await owner.post(f"/v0/workspaces/{ws}/members", json={"email": "ADMIN@example.com",
                                                                           "role": "member"})
            assert again.status_code == 403  # the former owner is a member now


async def test_invitation_is_redeemed_once(tmp_path: Path) -> None:
    async with running_coordinator(tmp_path) as coord, coord.client() as owner:
        invited = await _invite(owner, coord.workspace_id, "new@example.com", "member")
        assert invited["member"]["status"] == "invited"
        code = invited["invitation"]["code"]
        assert code.startswith("tcp_inv_")
        duplicate = await owner.post(f"/v0/workspaces/{coord.workspace_id}/members",
                                     json={"email": "new@example.com", "role": "admin"})
        assert duplicate.status_code == 409 and _error(duplicate) == "already_member"
        # Only the hash is stored.
        rows = coord.store.read_now("SELECT code_hash FROM invitations")
        assert [row[0] for row in rows] == [hash_token(code)]
        redeemed = await _login(coord, code)
        assert redeemed["workspaceId"] == coord.workspace_id and redeemed["role"] == "member"
        assert redeemed["token"]["refresh_token"].startswith("tcp_ort_")
        async with coord.client("") as anonymous:
            second = await anonymous.post("/v0/invitations:redeem", json={"code": code})
        assert second.status_code == 401 and _error(second) == "invalid_invitation"
        async with coord.client(redeemed["token"]["access_token"]) as member:
            assert (await member.get("/v0/jobs")).status_code == 200
        members = (await owner.get(f"/v0/workspaces/{coord.workspace_id}/members")).json()["items"]
        assert {m["email"]: m["status"] for m in members} == {"owner@localhost": "active", "new@example.com": "active"}


async def test_invitation_expires_and_dies_with_the_membership(tmp_path: Path) -> None:
    async with running_coordinator(tmp_path, invitation_ttl_seconds=3600) as coord, coord.client() as owner:
        late = await _invite(owner, coord.workspace_id, "late@example.com", "member")
        removed = await _invite(owner, coord.workspace_id, "gone@example.com", "member")
        assert (await owner.delete(f"/v0/workspaces/{coord.workspace_id}/members/"
                                   f"{removed['member']['userId']}")).status_code == 204
        coord.clock.advance(3600)
        async with coord.client("") as anonymous:
            for code in (late["invitation"]["code"], removed["invitation"]["code"]):
                response = await anonymous.post("/v0/invitations:redeem", json={"code": code})
                assert response.status_code == 401 and _error(response) == "invalid_invitation"


async def test_access_token_expires_after_its_lifetime(tmp_path: Path) -> None:
    async with running_coordinator(tmp_path) as coord:
        _, access = await _member_token(coord, "m@example.com", "member")
        async with coord.client(access) as member:
            coord.clock.advance(15 * 60 - 0.001)
            assert (await member.get("/v0/jobs")).status_code == 200
            coord.clock.advance(0.001)
            expired = await member.get("/v0/jobs")
            assert expired.status_code == 401 and _error(expired) == "invalid_token"


async def test_access_token_lifetime_is_configurable(tmp_path: Path) -> None:
    async with running_coordinator(tmp_path, access_token_ttl_seconds=60) as coord:
        async with coord.client("") as anonymous:
            issued = await anonymous.post("/v0/oauth/token", data={"grant_type": "client_credentials",
                                                                   "client_secret": coord.token})
        assert issued.status_code == 200, issued.text
        assert issued.json()["expires_in"] == 60
        async with coord.client(issued.json()["access_token"]) as api:
            coord.clock.advance(59)
            assert (await api.get("/v0/jobs")).status_code == 200
            coord.clock.advance(1)
            assert (await api.get("/v0/jobs")).status_code == 401


async def test_refresh_tokens_rotate_and_replay_revokes_the_family(tmp_path: Path) -> None:
    async with running_coordinator(tmp_path) as coord:
        async with coord.client() as owner:
            invited = await _invite(owner, coord.workspace_id, "cli@example.com", "member")
        first = (await _login(coord, invited["invitation"]["code"]))["token"]
        async with coord.client("") as anonymous:
            # Form-encoded, as RFC 6749 says; JSON works too.
            rotated = await anonymous.post("/v0/oauth/token", data={"grant_type": "refresh_token",
                                                                    "refresh_token": first["refresh_token"]})
            assert rotated.status_code == 200, rotated.text
            assert rotated.headers["Cache-Control"] == "no-store"
            second = rotated.json()
            assert second["token_type"] == "Bearer" and second["expires_in"] == 900
            assert second["refresh_token"] != first["refresh_token"]
            third = (await anonymous.post("/v0/oauth/token", json={"grant_type": "refresh_token",
                                                                   "refresh_token": second["refresh_token"]})).json()
            async with coord.client(third["access_token"]) as api:
                assert (await api.get("/v0/jobs")).status_code == 200
                # Replaying a rotated refresh token: refused, and the live family dies with it.
                replay = await anonymous.post("/v0/oauth/token", json={"grant_type": "refresh_token",
                                                                       "refresh_token": first["refresh_token"]})
                assert replay.status_code == 400 and _error(replay) == "invalid_grant"
                assert (await api.get("/v0/jobs")).status_code == 401
            dead = await anonymous.post("/v0/oauth/token", json={"grant_type": "refresh_token",
                                                                 "refresh_token": third["refresh_token"]})
            assert dead.status_code == 400 and _error(dead) == "invalid_grant"


async def test_refresh_token_expires(tmp_path: Path) -> None:
    async with running_coordinator(tmp_path, refresh_token_ttl_seconds=3600) as coord:
        async with coord.client() as owner:
            invited = await _invite(owner, coord.workspace_id, "r@example.com", "member")
        token = (await _login(coord, invited["invitation"]["code"]))["token"]
        coord.clock.advance(3600)
        async with coord.client("") as anonymous:
            response = await anonymous.post("/v0/oauth/token", json={"grant_type": "refresh_token",
                                                                     "refresh_token": token["refresh_token"]})
        assert response.status_code == 400 and _error(response) == "invalid_grant"


async def test_client_credentials_grant(tmp_path: Path) -> None:
    async with running_coordinator(tmp_path) as coord, coord.client() as owner:
        pat = (await owner.post("/v0/tokens", json={"name": "ci"})).json()
        async with coord.client("") as anonymous:
            by_form = await anonymous.post("/v0/oauth/token", data={
                "grant_type": "client_credentials", "client_id": pat["id"], "client_secret": pat["token"]})
            assert by_form.status_code == 200, by_form.text
            assert "refresh_token" not in by_form.json() or by_form.json()["refresh_token"] is None
            basic = base64.b64encode(f"{pat['id']}:{pat['token']}".encode()).decode()
            by_basic = await anonymous.post("/v0/oauth/token", data={"grant_type": "client_credentials"},
                                            headers={"Authorization": f"Basic {basic}"})
            assert by_basic.status_code == 200, by_basic.text
            wrong_id = await anonymous.post("/v0/oauth/token", data={
                "grant_type": "client_credentials", "client_id": "pat_other", "client_secret": pat["token"]})
            assert wrong_id.status_code == 401 and _error(wrong_id) == "invalid_client"
            unsupported = await anonymous.post("/v0/oauth/token", data={"grant_type": "password"})
            assert unsupported.status_code == 400 and _error(unsupported) == "unsupported_grant_type"
            missing = await anonymous.post("/v0/oauth/token", data={"grant_type": "refresh_token"})
            assert missing.status_code == 400 and _error(missing) == "invalid_request"
            twice = await anonymous.post("/v0/oauth/token", content=b"grant_type=a&grant_type=b",
                                         headers={"Content-Type": "application/x-www-form-urlencoded"})
            assert twice.status_code == 400 and _error(twice) == "invalid_request"
        access = by_form.json()["access_token"]
        assert access.startswith("tcp_oat_")
        async with coord.client(access) as api:
            assert (await api.get("/v0/jobs")).status_code == 200
            # Revoking the PAT revokes what it minted.
            assert (await owner.delete(f"/v0/tokens/{pat['id']}")).status_code == 200
            assert (await api.get("/v0/jobs")).status_code == 401


async def test_pats_create_list_revoke(tmp_path: Path) -> None:
    async with running_coordinator(tmp_path) as coord:
        member_id, member_token = await _member_token(coord, "m@example.com", "member")
        async with coord.client() as owner, coord.client(member_token) as member:
            created = await owner.post("/v0/tokens", json={"name": "ci", "expiresInSeconds": 3600})
            assert created.status_code == 201, created.text
            pat = created.json()
            assert pat["token"].startswith("tcp_pat_") and pat["prefix"] == "tcp_pat_"
            assert pat["expiresAt"] == "2026-04-26T10:00:00.000Z"
            listed = (await member.get("/v0/tokens")).json()["items"]
            assert pat["id"] in {t["id"] for t in listed}
            assert all("token" not in t for t in listed)  # the secret is shown once
            assert coord.store.read_now("SELECT COUNT(*) FROM tokens WHERE token_hash = ?",
                                     (hash_token(pat["token"]),))[0][0] == 1
            # Members may not issue tokens, nor revoke others'.
            assert _error(await member.post("/v0/tokens", json={"name": "x"})) == "insufficient_role"
            assert _error(await member.delete(f"/v0/tokens/{pat['id']}")) == "insufficient_role"
            # An admin issues a PAT for a member (headless work); the member may revoke their own.
            for_member = (await owner.post("/v0/tokens", json={"name": "bot", "userId": member_id})).json()
            assert for_member["userId"] == member_id and for_member["createdBy"] == coord.init.user_id
            async with coord.client(for_member["token"]) as bot:
                assert (await bot.get("/v0/jobs")).status_code == 200
                revoked = await member.delete(f"/v0/tokens/{for_member['id']}")
                assert revoked.status_code == 200 and revoked.json()["revokedAt"] is not None
                assert (await bot.get("/v0/jobs")).status_code == 401
            strange = await owner.post("/v0/tokens", json={"name": "x", "userId": "usr_nobody"})
            assert strange.status_code == 422 and strange.json()["error"]["field"] == "userId"
            # Expiry, on the injected clock.
            async with coord.client(pat["token"]) as ci:
                coord.clock.advance(3599)
                assert (await ci.get("/v0/jobs")).status_code == 200
                coord.clock.advance(1)
                assert (await ci.get("/v0/jobs")).status_code == 401


async def test_admin_cannot_mint_an_owner_token(tmp_path: Path) -> None:
    async with running_coordinator(tmp_path) as coord:
        _, admin_token = await _member_token(coord, "a@example.com", "admin")
        async with coord.client(admin_token) as admin:
            response = await admin.post("/v0/tokens", json={"name": "x", "userId": coord.init.user_id})
            assert response.status_code == 403 and _error(response) == "insufficient_role"
            own = await admin.post("/v0/tokens", json={"name": "mine"})
            assert own.status_code == 201


@pytest.mark.parametrize("path", ["/v0/workspaces", "/v0/tokens"])
async def test_registration_and_refresh_tokens_are_not_bearer_tokens(tmp_path: Path, path: str) -> None:
    async with running_coordinator(tmp_path) as coord, coord.client(coord.init.registration_token) as api:
        assert (await api.get(path)).status_code == 401


async def test_openapi_describes_the_identity_endpoints(tmp_path: Path) -> None:
    async with running_coordinator(tmp_path) as coord, coord.client("") as anonymous:
        document = (await anonymous.get("/v0/openapi.json")).json()
    paths = document["paths"]
    for path, method in [("/v0/workspaces", "post"), ("/v0/workspaces/{workspace_id}", "patch"),
                         ("/v0/workspaces/{workspace_id}/members", "post"),
                         ("/v0/workspaces/{workspace_id}/members/{user_id}", "delete"),
                         ("/v0/workspaces/{workspace_id}/audit", "get"), ("/v0/tokens", "post"),
                         ("/v0/oauth/token", "post"), ("/v0/invitations:redeem", "post")]:
        assert method in paths[path], path
    assert "security" not in paths["/v0/oauth/token"]["post"]
    schemas = document["components"]["schemas"]
    assert {"MemberInvited", "OAuthToken", "TokenCreated", "AuditEvent", "Workspace"} <= set(schemas)
    assert set(schemas["MemberInvite"]["properties"]) == {"email", "role"}


async def test_inviting_an_existing_account_hands_out_a_code_that_reaches_that_workspace_only(
        tmp_path: Path) -> None:
    """An invitation code mints tokens for its user, and the inviter sees the code. For an email
    that already has an account the login it yields reaches only the inviting workspace: never
    the account's other workspaces. The account joins at once (``active``), its own logins too."""
    async with running_coordinator(tmp_path) as coord:
        _, mallory_token = await _member_token(coord, "mallory@example.com", "member")
        async with coord.client(mallory_token) as mallory:
            own = (await mallory.post("/v0/workspaces", json={"name": "bait"})).json()["id"]
            invited = await mallory.post(f"/v0/workspaces/{own}/members",
                                         json={"email": "owner@localhost", "role": "member"})
            assert invited.status_code == 201, invited.text
            body = invited.json()
            assert body["invitation"]["code"].startswith("tcp_inv_") and body["invitation"]["expiresAt"]
            assert body["member"]["userId"] == coord.init.user_id
            assert body["member"]["status"] == "active"
            listed = (await mallory.get(f"/v0/workspaces/{own}/members")).json()["items"]
            assert {m["email"]: m["status"] for m in listed}["owner@localhost"] == "active"
        # Mallory redeems the code herself: the owner's login it yields stays in her workspace.
        redeemed = await _login(coord, body["invitation"]["code"])
        assert (redeemed["userId"], redeemed["workspaceId"]) == (coord.init.user_id, own)
        async with coord.client(redeemed["token"]["access_token"]) as as_owner:
            assert (await as_owner.get("/v0/jobs", headers={"X-Compute-Workspace": own})).status_code == 200
            patched = await as_owner.patch(f"/v0/workspaces/{coord.workspace_id}", json={"plan": "team"})
            assert patched.status_code == 404
            assert [w["id"] for w in (await as_owner.get("/v0/workspaces")).json()["items"]] == [own]
        async with coord.client() as owner:
            # The owner simply finds the new workspace among theirs, with their own token.
            listed_ws = {w["id"] for w in (await owner.get("/v0/workspaces")).json()["items"]}
            assert own in listed_ws
            assert (await owner.get(f"/v0/workspaces/{coord.workspace_id}")).json()["plan"] == "hobby"
