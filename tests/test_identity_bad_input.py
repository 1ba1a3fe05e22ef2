"""Bad input on every identity body: wrong types, unknown fields, oversize or malformed strings.
Each gets the error envelope with the spec's status and code, and stores nothing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

from tests.inproc import InProcess, running_coordinator

LONG = "x" * 5000

# (name, method, path template, body, status, code, field); {ws} and {user} are filled in.
CASES: list[tuple[str, str, str, Any, int, str, str | None]] = [
    ("workspace: missing name", "POST", "/v0/workspaces", {}, 400, "missing_field", "name"),
    ("workspace: name a number", "POST", "/v0/workspaces", {"name": 3}, 400, "invalid_type", "name"),
    ("workspace: name too long", "POST", "/v0/workspaces", {"name": LONG}, 422, "invalid_value", "name"),
    ("workspace: empty name", "POST", "/v0/workspaces", {"name": ""}, 422, "invalid_value", "name"),
    ("workspace: unknown field", "POST", "/v0/workspaces", {"name": "a", "owner": "me"}, 400, "unknown_field",
     "owner"),
    ("workspace: bad region", "POST", "/v0/workspaces", {"name": "a", "defaultRegion": "EU WEST"}, 422,
     "invalid_value", "defaultRegion"),
    ("workspace: not an object", "POST", "/v0/workspaces", ["a"], 400, "invalid_type", None),
    ("patch: unknown plan", "PATCH", "/v0/workspaces/{ws}", {"plan": "gold"}, 422, "invalid_value", "plan"),
    ("patch: name null", "PATCH", "/v0/workspaces/{ws}", {"name": None}, 422, "invalid_value", "name"),
    ("patch: name a list", "PATCH", "/v0/workspaces/{ws}", {"name": ["a"]}, 400, "invalid_type", "name"),
    ("patch: unknown field", "PATCH", "/v0/workspaces/{ws}", {"id": "ws_x"}, 400, "unknown_field", "id"),
    ("patch: region too long", "PATCH", "/v0/workspaces/{ws}", {"defaultRegion": LONG}, 422, "invalid_value",
     "defaultRegion"),
    ("invite: missing role", "POST", "/v0/workspaces/{ws}/members", {"email": "a@b.c"}, 400, "missing_field",
     "role"),
    ("invite: unknown role", "POST", "/v0/workspaces/{ws}/members", {"email": "a@b.c", "role": "root"}, 422,
     "invalid_value", "role"),
    ("invite: not an email", "POST", "/v0/workspaces/{ws}/members", {"email": "nobody", "role": "member"}, 422,
     "invalid_value", "email"),
    ("invite: email too long", "POST", "/v0/workspaces/{ws}/members",
     {"email": "a@" + LONG, "role": "member"}, 422, "invalid_value", "email"),
    ("invite: email a number", "POST", "/v0/workspaces/{ws}/members", {"email": 1, "role": "member"}, 400,
     "invalid_type", "email"),
    ("invite: unknown field", "POST", "/v0/workspaces/{ws}/members",
     {"email": "a@b.c", "role": "member", "admin": True}, 400, "unknown_field", "admin"),
    ("member patch: role a number", "PATCH", "/v0/workspaces/{ws}/members/{user}", {"role": 2}, 400,
     "invalid_type", "role"),
    ("member patch: unknown role", "PATCH", "/v0/workspaces/{ws}/members/{user}", {"role": "boss"}, 422,
     "invalid_value", "role"),
    ("member patch: unknown field", "PATCH", "/v0/workspaces/{ws}/members/{user}",
     {"role": "member", "email": "x@y.z"}, 400, "unknown_field", "email"),
    ("token: missing name", "POST", "/v0/tokens", {}, 400, "missing_field", "name"),
    ("token: name too long", "POST", "/v0/tokens", {"name": LONG}, 422, "invalid_value", "name"),
    ("token: expiry a string", "POST", "/v0/tokens", {"name": "a", "expiresInSeconds": "60"}, 400,
     "invalid_type", "expiresInSeconds"),
    ("token: expiry too short", "POST", "/v0/tokens", {"name": "a", "expiresInSeconds": 1}, 422,
     "invalid_value", "expiresInSeconds"),
    ("token: unknown field", "POST", "/v0/tokens", {"name": "a", "scopes": ["all"]}, 400, "unknown_field",
     "scopes"),
    ("oauth: grant_type missing", "POST", "/v0/oauth/token", {}, 400, "missing_field", "grant_type"),
    ("oauth: grant_type a number", "POST", "/v0/oauth/token", {"grant_type": 1}, 400, "invalid_type",
     "grant_type"),
    ("oauth: unknown field", "POST", "/v0/oauth/token", {"grant_type": "refresh_token", "password": "x"}, 400,
     "unknown_field", "password"),
    ("oauth: refresh token too long", "POST", "/v0/oauth/token",
     {"grant_type": "refresh_token", "refresh_token": LONG}, 422, "invalid_value", "refresh_token"),
    ("redeem: missing code", "POST", "/v0/invitations:redeem", {}, 400, "missing_field", "code"),
    ("redeem: code a list", "POST", "/v0/invitations:redeem", {"code": ["a"]}, 400, "invalid_type", "code"),
    ("redeem: code too long", "POST", "/v0/invitations:redeem", {"code": LONG}, 422, "invalid_value", "code"),
    ("redeem: unknown field", "POST", "/v0/invitations:redeem", {"code": "a", "email": "a@b.c"}, 400,
     "unknown_field", "email"),
]

_TABLES = ("users", "workspaces", "memberships", "invitations", "tokens", "jobs")


def _counts(coord: InProcess) -> dict[str, Any]:
    counts: dict[str, Any] = {t: coord.store.read_now(f"SELECT COUNT(*) FROM {t}")[0][0] for t in _TABLES}
    counts["state"] = [tuple(r) for r in coord.store.read_now(
        "SELECT w.name, w.plan, w.default_region, m.role FROM workspaces w JOIN memberships m "
        "ON m.workspace_id = w.id ORDER BY w.id, m.user_id")]
    return counts


def _check(response: httpx.Response, status: int, code: str, field: str | None) -> str | None:
    try:
        error = response.json()["error"]
    except (ValueError, KeyError, TypeError):
        return f"no envelope: {response.status_code} {response.text[:200]}"
    got = (response.status_code, error["code"], error["field"], error["requestId"] == response.headers["X-Request-Id"])
    if got != (status, code, field, True):
        return f"got {got}: {error['message']}"
    return None


async def test_bad_bodies_get_the_envelope_and_store_nothing(tmp_path: Path) -> None:
    async with running_coordinator(tmp_path) as coord, coord.client() as owner:
        invited = await owner.post(f"/v0/workspaces/{coord.workspace_id}/members",
                                   json={"email": "m@example.com", "role": "member"})
        user = invited.json()["member"]["userId"]
        before = _counts(coord)
        wrong = []
        for name, method, template, body, status, code, field in CASES:
            path = template.format(ws=coord.workspace_id, user=user)
            response = await owner.request(method, path, json=body)
            problem = _check(response, status, code, field)
            if problem:
                wrong.append(f"{name}: {problem}")
        assert wrong == []
        assert _counts(coord) == before


async def test_unparseable_and_oversize_bodies(tmp_path: Path) -> None:
    async with running_coordinator(tmp_path) as coord, coord.client() as owner:
        before = _counts(coord)
        paths = ["/v0/workspaces", f"/v0/workspaces/{coord.workspace_id}/members", "/v0/tokens",
                 "/v0/oauth/token", "/v0/invitations:redeem"]
        wrong = []
        for path in paths:
            broken = await owner.post(path, content=b"{nope", headers={"Content-Type": "application/json"})
            if problem := _check(broken, 400, "invalid_json", None):
                wrong.append(f"{path} broken JSON: {problem}")
            huge = await owner.post(path, json={"name": "x" * (1024 * 1024 + 1)})
            if problem := _check(huge, 413, "payload_too_large", None):
                wrong.append(f"{path} oversize: {problem}")
        form = await owner.post("/v0/oauth/token", content=b"\xff\xfe=1",
                                headers={"Content-Type": "application/x-www-form-urlencoded"})
        if problem := _check(form, 400, "invalid_request", None):
            wrong.append(f"undecodable form: {problem}")
        assert wrong == []
        assert _counts(coord) == before
