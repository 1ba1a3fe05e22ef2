"""Which workspaces each kind of token reaches, for every route the app serves.

The matrix is generated from the app's own route map (every ``/v0`` route the registry
declares, and the agent protocol), so a route added later is covered without touching this
file: it gets the default expectation of a workspace-scoped route, and a route that is not
workspace-scoped fails here until it is classified below.

Tokens (all held by one user U, issued in workspace A): U's own PAT, a PAT an admin of A
minted for U, U's OAuth session (access and refresh token, from an invitation), an access
token minted from each PAT with the client-credentials grant, a web-console session signed in
with each PAT (sent as its cookie, with its CSRF token), an agent token and a registration
token of A. Workspaces: A (issuing), B (U is an owner there), C (U is not a
member). The model (``docs/security.md``): U's own credentials reach every workspace U belongs
to; a credential someone else minted reaches its issuing workspace only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import httpx
import trio

from common import protocol
from coordinator.api.registry import ENDPOINTS
from coordinator.app import create_app
from coordinator.auth import CSRF_HEADER, SESSION_COOKIE
from tests.inproc import InProcess, running_coordinator

# Routes that take no bearer token at all; a token sent to them grants nothing.
PUBLIC = {(e.method.upper(), e.path) for e in ENDPOINTS if e.public} | {("GET", "/v0/openapi.json")}
# Routes about the user rather than one workspace (``auth.require_account``).
ACCOUNT = {("GET", "/v0/workspaces"), ("POST", "/v0/workspaces"), ("GET", "/v0/sessions/current"),
           ("DELETE", "/v0/sessions/current")}
# The console's own session routes: they take the session cookie only, never a bearer token.
COOKIE_ONLY = {("GET", "/v0/sessions/current"), ("DELETE", "/v0/sessions/current")}
# Signing out ends the session the rest of the matrix still uses; the console's tests cover it.
SKIPPED = {("DELETE", "/v0/sessions/current", "own_pat_console"),
           ("DELETE", "/v0/sessions/current", "minted_pat_console")}

CONSOLE_KINDS = {"own_pat_console", "minted_pat_console"}
USER_KINDS = {"own_pat", "minted_pat", "session_access", "own_pat_access", "minted_pat_access", *CONSOLE_KINDS}
BOUND = {"minted_pat", "minted_pat_access", "minted_pat_console"}  # minted by someone other than U
ALL_KINDS = [*sorted(USER_KINDS), "refresh", "agent", "registration"]
_PARAM = re.compile(r"<(?:[a-z_]+:)?([a-z_]+)>")


@dataclass(frozen=True)
class Route:
    method: str
    rule: str

    def url(self, workspace: str) -> str:
        return _PARAM.sub(lambda m: workspace if m.group(1) == "workspace_id" else "zz_missing_" + m.group(1),
                          self.rule)

    @property
    def openapi_path(self) -> str:
        return _PARAM.sub(r"{\1}", self.rule)

    @property
    def workspace_in_path(self) -> bool:
        return "<workspace_id>" in self.rule


def served_routes(coord: InProcess) -> list[Route]:
    """Every API route the app serves (the registry's and the agent protocol's)."""
    found = []
    for rule in create_app(coord.svc).url_map.iter_rules():
        if not rule.rule.startswith(("/v0/", "/agent/")):
            continue
        for method in sorted(set(rule.methods or ()) - {"HEAD", "OPTIONS"}):
            found.append(Route(method, rule.rule))
    return found


@dataclass
class World:
    coord: InProcess
    tokens: dict[str, str]
    csrf: dict[str, str]
    a: str
    b: str
    c: str


async def _world(coord: InProcess) -> World:
    a = coord.workspace_id
    async with coord.client() as owner:
        invited = await owner.post(f"/v0/workspaces/{a}/members", json={"email": "u@example.test", "role": "admin"})
        assert invited.status_code == 201, invited.text
        user_id = invited.json()["member"]["userId"]
        redeemed = await owner.post("/v0/invitations:redeem", json={"code": invited.json()["invitation"]["code"]})
        assert redeemed.status_code == 200, redeemed.text
        session = redeemed.json()["token"]
        minted = await owner.post("/v0/tokens", json={"name": "minted for u", "userId": user_id})
        assert minted.status_code == 201, minted.text
        created_c = await owner.post("/v0/workspaces", json={"name": "c"})
        assert created_c.status_code == 201, created_c.text
    async with coord.client(session["access_token"]) as user:
        own = await user.post("/v0/tokens", json={"name": "u's own"})
        assert own.status_code == 201, own.text
        created_b = await user.post("/v0/workspaces", json={"name": "b"})
        assert created_b.status_code == 201, created_b.text
    tokens = {"own_pat": own.json()["token"], "minted_pat": minted.json()["token"],
              "session_access": session["access_token"], "refresh": session["refresh_token"],
              "registration": coord.init.registration_token}
    csrf: dict[str, str] = {}
    async with coord.client("") as anonymous:
        for kind in ("own_pat", "minted_pat"):
            granted = await anonymous.post("/v0/oauth/token", data={"grant_type": "client_credentials",
                                                                    "client_secret": tokens[kind]})
            assert granted.status_code == 200, granted.text
            tokens[f"{kind}_access"] = granted.json()["access_token"]
        for kind in ("own_pat", "minted_pat"):
            signed_in = await anonymous.post("/v0/sessions", json={"pat": tokens[kind]})
            assert signed_in.status_code == 201, signed_in.text
            tokens[f"{kind}_console"] = signed_in.cookies[SESSION_COOKIE]
            csrf[f"{kind}_console"] = signed_in.json()["csrfToken"]
    _, agent = await coord.register_agent()
    async with agent:
        tokens["agent"] = agent.headers["Authorization"].removeprefix("Bearer ")
    return World(coord, tokens, csrf, a, created_b.json()["id"], created_c.json()["id"])


def _credentials(world: World, kind: str) -> dict[str, str]:
    if kind in CONSOLE_KINDS:
        return {"Cookie": f"{SESSION_COOKIE}={world.tokens[kind]}", CSRF_HEADER: world.csrf[kind]}
    return {"Authorization": f"Bearer {world.tokens[kind]}"}


def _expected(route: Route, kind: str, where: str) -> str:
    """``pass`` (the token and workspace are accepted; anything but 401 and a hidden workspace),
    ``unauthorized`` (401), ``hidden`` (404 workspace_not_found) or ``bound`` (403
    token_bound_to_workspace)."""
    if (route.method, route.openapi_path) in COOKIE_ONLY and kind not in CONSOLE_KINDS:
        return "unauthorized"
    if route.rule.startswith("/agent/"):
        wanted = "registration" if route.rule == protocol.REGISTER_PATH else "agent"
        return "pass" if kind == wanted else "unauthorized"  # the workspace header means nothing to agents
    if kind not in USER_KINDS:
        return "unauthorized"
    if (route.method, route.openapi_path) in ACCOUNT:
        if route.method == "POST" and kind in BOUND:
            return "bound"
        return "pass"
    if where == "issuing" or (where == "member" and kind not in BOUND):
        return "pass"
    return "hidden"


def _outcome(response: httpx.Response) -> str:
    if response.status_code >= 500:
        return f"server error {response.status_code}"
    code = response.json()["error"]["code"] if response.status_code >= 400 and response.content else None
    if response.status_code == 401:
        return "unauthorized"
    if response.status_code == 404 and code == "workspace_not_found":
        return "hidden"
    if response.status_code == 403 and code == "token_bound_to_workspace":
        return "bound"
    return "pass"


async def test_every_route_admits_each_token_only_where_the_model_says(tmp_path: Path) -> None:
    # Hundreds of deliberate 401s from one address: the per-address limit is not under test here.
    async with running_coordinator(tmp_path, unauthenticated_rate_limit=None) as coord:
        world = await _world(coord)
        routes = [r for r in served_routes(coord) if (r.method, r.openapi_path) not in PUBLIC]
        registered = {(e.method.upper(), e.path) for e in ENDPOINTS} - PUBLIC
        assert registered <= {(r.method, r.openapi_path) for r in routes}
        assert len(routes) >= 30
        wrong = []
        workspaces = {"issuing": world.a, "member": world.b, "not_member": world.c}
        async with httpx.AsyncClient(base_url=coord.url, timeout=60) as client:
            limiter = trio.CapacityLimiter(6)  # a few at a time: independent requests, a shorter suite

            async def probe(route: Route, kind: str, where: str, workspace: str) -> None:
                headers = _credentials(world, kind)
                if not route.workspace_in_path:
                    headers["X-Compute-Workspace"] = workspace
                body = {"waitSeconds": 0, "free": {"cpus": 0, "memoryMb": 0, "gpus": 0}} \
                    if route.rule == protocol.CLAIM_PATH else {}
                sent = body if route.method in {"POST", "PATCH", "PUT"} else None
                async with limiter:
                    response = await client.request(route.method, route.url(workspace), headers=headers, json=sent)
                got, want = _outcome(response), _expected(route, kind, where)
                if got != want:
                    wrong.append(f"{route.method} {route.rule} {kind} in {where}: "
                                 f"{want} expected, got {got} ({response.status_code} {response.text[:120]})")

            async with trio.open_nursery() as nursery:
                for route in routes:
                    for kind in ALL_KINDS:
                        if (route.method, route.openapi_path, kind) in SKIPPED:
                            continue
                        for where, workspace in workspaces.items():
                            nursery.start_soon(probe, route, kind, where, workspace)
        assert not wrong, f"{len(wrong)} wrong:\n" + "\n".join(sorted(wrong))


async def test_a_token_bound_to_its_workspace_lists_only_that_workspace(tmp_path: Path) -> None:
    async with running_coordinator(tmp_path) as coord:
        world = await _world(coord)
        for kind, seen in (("minted_pat", {world.a}), ("minted_pat_access", {world.a}),
                           ("minted_pat_console", {world.a}), ("own_pat", {world.a, world.b}),
                           ("own_pat_console", {world.a, world.b}), ("session_access", {world.a, world.b})):
            async with httpx.AsyncClient(base_url=coord.url, headers=_credentials(world, kind)) as client:
                listed = await client.get("/v0/workspaces")
            assert listed.status_code == 200, listed.text
            assert {w["id"] for w in listed.json()["items"]} == seen, kind


async def test_an_agent_claims_only_its_own_workspaces_jobs_whatever_header_it_sends(tmp_path: Path) -> None:
    async with running_coordinator(tmp_path) as coord:
        world = await _world(coord)
        async with coord.client(world.tokens["own_pat"], workspace=world.b) as user:
            submitted = await user.post("/v0/jobs", json={"type": "COMMAND", "command": "true"})
            assert submitted.status_code == 201, submitted.text
        async with coord.client(world.tokens["agent"], workspace=world.b) as agent:
            claimed = await agent.post(protocol.CLAIM_PATH, json={
                "waitSeconds": 0, "free": {"cpus": 4, "memoryMb": 8192, "gpus": 0}})
        assert claimed.status_code == 204, claimed.text
