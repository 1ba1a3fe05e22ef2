"""Isolation, roles and audit, table-driven over every public endpoint.

``ROWS`` has one line per endpoint in ``coordinator.api.registry.ENDPOINTS``;
``test_every_endpoint_has_a_row`` fails when an endpoint is added without one. A row says the
least role that may call the endpoint, how workspace B's objects are reached from workspace A
(``path``: B's ids in the path; ``header``: ``X-Compute-Workspace: B``; anything else is the
reason there is nothing to reach), a valid body, and for mutating endpoints the audit action
and how to know the target. Adding an endpoint is adding one line, e.g.::

    ("delete", "/v0/agents/{agent_id}"): Row("admin", action="agent.delete"),

Path parameters are filled from the ``World`` by name (``{job_id}`` → ``world.ids["job_id"]``).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from common.clock import to_millis
from coordinator.api.registry import ENDPOINTS
from coordinator.app import create_app  # noqa: F401  (registers every blueprint's endpoints)
from coordinator.tokens import hash_token
from tests.inproc import InProcess, running_coordinator

JOB = {"type": "COMMAND", "command": "echo hi"}
ARRAY = {**JOB, "array": {"count": 3, "maxParallel": 1}}
HOOK = {"url": "http://127.0.0.1:9/hook", "events": ["job.created"]}
AGENT = {"name": "a", "labels": {}, "capacity": {"cpus": 1, "memoryMb": 512, "gpus": 0}, "version": "t"}


@dataclass
class World:
    """Two workspaces. A: the bootstrap workspace, its owner, an admin, a member; B: another
    user's workspace, with a job, an agent and a PAT of its own."""

    coord: InProcess
    ids: dict[str, str]  # workspace A's objects, by path parameter name
    foreign: dict[str, str]  # workspace B's objects, by path parameter name
    member_token: str
    b_token: str
    fresh_codes: list[str] = field(default_factory=list)

    def token_id_of(self, secret: str) -> str:
        return str(self.coord.store.read_now("SELECT id FROM tokens WHERE token_hash = ?", (hash_token(secret),))[0][0])


Target = Callable[[World, Any], str | None]


def _path_param(name: str) -> Target:
    return lambda world, body: world.ids[name]


def _body(*keys: str) -> Target:
    def pick(world: World, body: Any) -> str:
        for key in keys:
            body = body[key]
        return str(body)
    return pick


@dataclass(frozen=True)
class Row:
    role: str  # least role: "member", "admin", "owner"; "public" for calls without a bearer token
    cross: str = "path"
    body: Callable[[World], Any] | None = None
    action: str | None = None  # audit action of a mutating endpoint
    target: Target | None = None
    form: bool = False
    session: bool = False  # the console's session cookie only: tests/test_console_sessions.py covers it


ROWS: dict[tuple[str, str], Row] = {
    ("post", "/v0/jobs"): Row("member", "header", lambda w: JOB, "job.submit", _body("id")),
    ("get", "/v0/jobs"): Row("member", "header"),
    ("get", "/v0/jobs/{job_id}"): Row("member"),
    ("post", "/v0/jobs/{job_id}:cancel"): Row("member", action="job.cancel", target=_path_param("job_id")),
    ("get", "/v0/jobs/{job_id}/logs"): Row("member"),
    ("get", "/v0/arrays"): Row("member", "header"),
    ("get", "/v0/arrays/{array_id}"): Row("member"),
    ("get", "/v0/arrays/{array_id}/logs"): Row("member"),
    ("post", "/v0/arrays/{array_id}:cancel"): Row("member", action="array.cancel", target=_path_param("array_id")),
    ("get", "/v0/agents"): Row("member", "header"),
    ("get", "/v0/agents/{agent_id}"): Row("member"),
    ("post", "/v0/agents/{agent_id}:drain"): Row("admin", action="agent.drain", target=_path_param("agent_id")),
    ("post", "/v0/agents/{agent_id}:resume"): Row("admin", action="agent.resume", target=_path_param("agent_id")),
    ("post", "/v0/workspaces"): Row("member", "creates a new workspace", lambda w: {"name": "n"},
                                    "workspace.create", _body("id")),
    ("get", "/v0/workspaces"): Row("member", "lists only the caller's own"),
    ("get", "/v0/workspaces/{workspace_id}"): Row("member"),
    ("patch", "/v0/workspaces/{workspace_id}"): Row("admin", body=lambda w: {"name": "renamed"},
                                                    action="workspace.update", target=_path_param("workspace_id")),
    ("post", "/v0/workspaces/{workspace_id}/members"): Row(
        "admin", body=lambda w: {"email": "invitee@example.com", "role": "member"}, action="member.invite",
        target=_body("member", "userId")),
    ("get", "/v0/workspaces/{workspace_id}/members"): Row("member"),
    ("patch", "/v0/workspaces/{workspace_id}/members/{user_id}"): Row(
        "admin", body=lambda w: {"role": "member"}, action="member.update", target=_path_param("user_id")),
    ("delete", "/v0/workspaces/{workspace_id}/members/{user_id}"): Row(
        "admin", action="member.remove", target=_path_param("user_id")),
    ("get", "/v0/workspaces/{workspace_id}/audit"): Row("member"),
    ("post", "/v0/tokens"): Row("admin", "header", lambda w: {"name": "ci"}, "token.create", _body("id")),
    ("get", "/v0/tokens"): Row("member", "header"),
    ("delete", "/v0/tokens/{token_id}"): Row("admin", action="token.revoke", target=_path_param("token_id")),
    ("post", "/v0/oauth/token"): Row(
        "public", "no bearer token: the grant names its own workspace",
        lambda w: {"grant_type": "client_credentials", "client_secret": w.coord.token}, "oauth.token",
        lambda w, body: w.token_id_of(body["access_token"]), form=True),
    ("post", "/v0/invitations:redeem"): Row(
        "public", "no bearer token: the code names its own workspace",
        lambda w: {"code": w.fresh_codes.pop()}, "invitation.redeem",
        lambda w, body: str(w.coord.store.read_now("SELECT id FROM invitations WHERE user_id = ? AND redeemed_at "
                                                "IS NOT NULL ORDER BY redeemed_at DESC", (body["userId"],))[0][0])),
    ("post", "/v0/registration-tokens"): Row("admin", "header", lambda w: {"name": "r"}, "registration_token.create",
                                             _body("id")),
    ("get", "/v0/registration-tokens"): Row("admin", "header"),
    ("delete", "/v0/registration-tokens/{registration_token_id}"): Row(
        "admin", action="registration_token.revoke", target=_path_param("registration_token_id")),
    ("get", "/v0/billing/usage"): Row("member", "header"),
    ("get", "/v0/billing/invoices"): Row("member", "header"),
    ("get", "/v0/billing/limits"): Row("member", "header"),
    ("get", "/v0/billing/usage/daily"): Row("member", "header"),
    ("post", "/v0/sessions"): Row(
        "public", "no bearer token: the credential names its own workspace",
        lambda w: {"pat": w.coord.token}, "session.create",
        lambda w, body: str(w.coord.store.read_now("SELECT id FROM tokens WHERE kind = 'session' ORDER BY id DESC")
                            [0][0])),
    ("get", "/v0/sessions/current"): Row("member", "the session's own", session=True),
    ("delete", "/v0/sessions/current"): Row("member", "the session's own", action="session.delete",
                                            target=lambda w, body: "", session=True),
    ("patch", "/v0/billing/limits"): Row("admin", "header", lambda w: {"softCapUsd": 10}, "billing.limits.update",
                                         lambda w, body: w.ids["workspace_id"]),
    ("post", "/v0/webhooks"): Row("admin", "header", lambda w: HOOK, "webhook.create", _body("id")),
    ("get", "/v0/webhooks"): Row("member", "header"),
    ("get", "/v0/webhooks/{webhook_id}/deliveries"): Row("member"),
    ("post", "/v0/webhooks/{webhook_id}:rotate-secret"): Row("admin", action="webhook.rotate_secret",
                                                             target=_path_param("webhook_id")),
    ("delete", "/v0/webhooks/{webhook_id}"): Row("admin", action="webhook.delete", target=_path_param("webhook_id")),
    # Last, so that drain and resume above still find the agent.
    ("delete", "/v0/agents/{agent_id}"): Row("admin", action="agent.delete", target=_path_param("agent_id")),
}


def test_every_endpoint_has_a_row() -> None:
    declared = {(ep.method, ep.path) for ep in ENDPOINTS}
    missing = sorted(declared - set(ROWS))
    stale = sorted(set(ROWS) - declared)
    assert missing == [], f"add a row to tests/test_isolation.py ROWS for {missing}"
    assert stale == [], f"rows for endpoints that no longer exist: {stale}"


def _fill(path: str, ids: dict[str, str]) -> str:
    return re.sub(r"\{([a-z_]+)\}", lambda m: ids[m.group(1)], path)


async def _redeemed(coord: InProcess, api: httpx.AsyncClient, workspace_id: str, email: str,
                    role: str) -> dict[str, Any]:
    invited = await api.post(f"/v0/workspaces/{workspace_id}/members", json={"email": email, "role": role})
    assert invited.status_code == 201, invited.text
    async with coord.client("") as anonymous:
        redeemed = await anonymous.post("/v0/invitations:redeem", json={"code": invited.json()["invitation"]["code"]})
    assert redeemed.status_code == 200, redeemed.text
    body: dict[str, Any] = redeemed.json()
    return body


async def _world(coord: InProcess) -> World:
    ws_a = coord.workspace_id
    async with coord.client() as owner, coord.client(coord.init.registration_token) as registrar:
        member = await _redeemed(coord, owner, ws_a, "member@example.com", "member")
        outsider = await _redeemed(coord, owner, ws_a, "b-owner@example.com", "member")
        b_token = outsider["token"]["access_token"]
        async with coord.client(b_token) as b_owner:
            ws_b = (await b_owner.post("/v0/workspaces", json={"name": "B"})).json()["id"]
        # The outsider leaves A: from now on A and B share no one.
        assert (await owner.delete(f"/v0/workspaces/{ws_a}/members/{outsider['userId']}")).status_code == 204
        victim = await owner.post(f"/v0/workspaces/{ws_a}/members", json={"email": "victim@example.com",
                                                                          "role": "member"})
        codes = [(await owner.post(f"/v0/workspaces/{ws_a}/members",
                                   json={"email": f"fresh{i}@example.com", "role": "member"})).json()
                 ["invitation"]["code"] for i in range(3)]
        ids = {
            "workspace_id": ws_a,
            "job_id": (await owner.post("/v0/jobs", json=JOB)).json()["id"],
            "array_id": (await owner.post("/v0/jobs", json=ARRAY)).json()["id"],
            "agent_id": (await registrar.post("/agent/v0/register", json=AGENT)).json()["agentId"],
            "user_id": victim.json()["member"]["userId"],
            "token_id": (await owner.post("/v0/tokens", json={"name": "a"})).json()["id"],
            "registration_token_id": (await owner.post("/v0/registration-tokens", json={})).json()["id"],
            "webhook_id": (await owner.post("/v0/webhooks", json=HOOK)).json()["id"],
        }
        # Invoices exist on payg and team only: A is payg so that a member can read them.
        assert (await owner.patch(f"/v0/workspaces/{ws_a}", json={"plan": "payg"})).status_code == 200
    async with coord.client(b_token, workspace=ws_b) as b_owner:
        b_registration_token = (await b_owner.post("/v0/registration-tokens", json={"name": "b"})).json()
    b_registration = b_registration_token["token"]
    headers_b = {"X-Compute-Workspace": ws_b}
    async with coord.client(b_token, workspace=ws_b) as b_owner, coord.client(b_registration) as b_registrar:
        b_member = await b_owner.post(f"/v0/workspaces/{ws_b}/members", json={"email": "bm@example.com",
                                                                             "role": "member"})
        foreign = {
            "workspace_id": ws_b,
            "job_id": (await b_owner.post("/v0/jobs", json=JOB, headers=headers_b)).json()["id"],
            "array_id": (await b_owner.post("/v0/jobs", json=ARRAY, headers=headers_b)).json()["id"],
            "agent_id": (await b_registrar.post("/agent/v0/register", json=AGENT)).json()["agentId"],
            "user_id": b_member.json()["member"]["userId"],
            "token_id": (await b_owner.post("/v0/tokens", json={"name": "b"})).json()["id"],
            "registration_token_id": b_registration_token["id"],
            "webhook_id": (await b_owner.post("/v0/webhooks", json=HOOK)).json()["id"],
        }
    assert all(foreign.values()) and all(ids.values())
    return World(coord, ids, foreign, member["token"]["access_token"], b_token, codes)


async def _call(client: httpx.AsyncClient, method: str, path: str, row: Row, world: World,
                headers: dict[str, str] | None = None) -> httpx.Response:
    body = row.body(world) if row.body is not None else None
    if body is None and method in {"post", "patch"}:
        body = {}
    if row.form and body is not None:
        return await client.request(method, path, data=body, headers=headers)
    if body is None:
        return await client.request(method, path, headers=headers)
    return await client.request(method, path, json=body, headers=headers)


def _audit_row(world: World, response: httpx.Response) -> dict[str, Any] | None:
    rows = world.coord.store.read_now("SELECT * FROM audit_events WHERE request_id = ?",
                                   (response.headers["X-Request-Id"],))
    return dict(rows[0]) if rows else None


async def test_workspace_a_cannot_reach_workspace_b(tmp_path: Path) -> None:
    async with running_coordinator(tmp_path, allow_private_webhooks=True) as coord:
        world = await _world(coord)
        wrong: list[str] = []
        async with coord.client() as owner_a:
            for (method, template), row in ROWS.items():
                if row.cross == "path":
                    response = await _call(owner_a, method, _fill(template, world.foreign), row, world)
                elif row.cross == "header":
                    response = await _call(owner_a, method, template, row, world,
                                           headers={"X-Compute-Workspace": world.foreign["workspace_id"]})
                else:
                    continue
                if response.status_code != 404:
                    wrong.append(f"{method.upper()} {template}: {response.status_code} {response.text[:200]}")
                elif method != "get":
                    audited = _audit_row(world, response)
                    if audited is None or audited["result"] != "denied" or audited["workspace_id"] != world.ids[
                            "workspace_id"]:
                        wrong.append(f"{method.upper()} {template}: denial not audited in A: {audited}")
            listed = (await owner_a.get("/v0/workspaces")).json()["items"]
            assert world.foreign["workspace_id"] not in {w["id"] for w in listed}
        assert wrong == []
        # Nothing of B's changed.
        async with coord.client(world.b_token, workspace=world.foreign["workspace_id"]) as b_owner:
            job = (await b_owner.get(f"/v0/jobs/{world.foreign['job_id']}")).json()
            assert job["state"] == "QUEUED"
            array = (await b_owner.get(f"/v0/arrays/{world.foreign['array_id']}")).json()
            assert (array["summary"]["QUEUED"], array["summary"]["CANCELLED"]) == (3, 0), array
            agent = (await b_owner.get(f"/v0/agents/{world.foreign['agent_id']}")).json()
            assert agent["state"] == "READY"
            members = (await b_owner.get(f"/v0/workspaces/{world.foreign['workspace_id']}/members")).json()["items"]
            assert world.foreign["user_id"] in {m["userId"] for m in members}
            tokens = (await b_owner.get("/v0/tokens")).json()["items"]
            assert [t["revokedAt"] for t in tokens if t["id"] == world.foreign["token_id"]] == [None]
            assert (await b_owner.get(f"/v0/workspaces/{world.foreign['workspace_id']}")).json()["name"] == "B"


async def test_member_token_against_admin_endpoints(tmp_path: Path) -> None:
    async with running_coordinator(tmp_path, allow_private_webhooks=True) as coord:
        world = await _world(coord)
        wrong: list[str] = []
        async with coord.client(world.member_token) as member:
            for (method, template), row in ROWS.items():
                if row.role == "public" or row.session:
                    continue
                ids = dict(world.ids)
                if template.startswith("/v0/tokens/"):
                    ids["token_id"] = world.ids["token_id"]  # the owner's PAT, not the member's own
                response = await _call(member, method, _fill(template, ids), row, world)
                if row.role in {"admin", "owner"}:
                    if response.status_code != 403 or response.json()["error"]["code"] != "insufficient_role":
                        wrong.append(f"{method.upper()} {template}: {response.status_code}, wanted 403")
                    elif method != "get" and (_audit_row(world, response) or {}).get("result") != "denied":
                        wrong.append(f"{method.upper()} {template}: 403 not audited")
                elif response.status_code in {401, 403, 404}:
                    wrong.append(f"{method.upper()} {template}: a member got {response.status_code}")
        assert wrong == []


async def test_every_mutating_endpoint_leaves_an_audit_row(tmp_path: Path) -> None:
    async with running_coordinator(tmp_path, allow_private_webhooks=True) as coord:
        world = await _world(coord)
        owner_id = coord.init.user_id
        wrong: list[str] = []
        mutating = {key: row for key, row in ROWS.items() if key[0] != "get" and not row.session}
        assert all(row.action and row.target for row in mutating.values()), "mutating rows name action and target"
        async with coord.client() as owner, coord.client("") as anonymous:
            for (method, template), row in mutating.items():
                client = anonymous if row.role == "public" else owner
                response = await _call(client, method, _fill(template, world.ids), row, world)
                if response.status_code >= 300:
                    wrong.append(f"{method.upper()} {template}: {response.status_code} {response.text[:200]}")
                    continue
                audited = _audit_row(world, response)
                body = response.json() if response.content else None
                assert row.target is not None
                expected = {"action": row.action, "result": "success", "status": response.status_code,
                            "target": row.target(world, body), "source": "127.0.0.1", "method": method.upper()}
                if row.role != "public" or row.action == "oauth.token":
                    expected["actor"] = owner_id
                    expected["workspace_id"] = world.ids["workspace_id"]
                got = {key: audited.get(key) for key in expected} if audited else None
                if got != expected:
                    wrong.append(f"{method.upper()} {template}: audit {got}, wanted {expected}")
                elif audited and audited["at"] != to_millis(coord.clock.now()):
                    wrong.append(f"{method.upper()} {template}: audit time {audited['at']}")
        assert wrong == []
