"""``/v0/agents``: list, get, drain, resume, delete; ``/v0/registration-tokens``: how agents join."""

from __future__ import annotations

from quart import Blueprint, Response, request

from common.clock import millis_to_rfc3339, parse_rfc3339, to_millis
from common.errors import Conflict, NotFound, Unprocessable
from common.ids import new_id
from common.models import (
    Agent,
    Page,
    RegistrationToken,
    RegistrationTokenCreate,
    RegistrationTokenCreated,
)
from coordinator.api.http import CURSOR, decode_cursor, json_body, query_limit, respond, split_page
from coordinator.api.registry import QueryParam, endpoint
from coordinator.auth import Role, require_user
from coordinator.context import services
from coordinator.store.base import DeleteOutcome, TokenRecord
from coordinator.tokens import TokenKind, generate_token, hash_token
from coordinator.views import agent_view

blueprint = Blueprint("agents", __name__, url_prefix="/v0")


@endpoint(blueprint, "GET", "/agents", summary="List agents, newest first", tag="agents", response=Page[Agent],
          query=(QueryParam("limit", {"type": "integer", "minimum": 1, "maximum": 500}),
                 CURSOR))
async def list_agents() -> Response:
    principal = await require_user()
    limit = query_limit()
    before = decode_cursor(request.args.get("cursor"))
    agents = await services().store.list_agents(principal.workspace_id, limit=limit + 1, before_id=before)
    page, cursor = split_page(agents, limit)
    return respond(Page[Agent](items=[agent_view(agent) for agent in page], nextCursor=cursor))


@endpoint(blueprint, "GET", "/agents/<agent_id>", summary="Get an agent", tag="agents", response=Agent)
async def get_agent(agent_id: str) -> Response:
    principal = await require_user()
    agent = await services().store.get_agent(principal.workspace_id, agent_id)
    if agent is None:
        raise NotFound("no such agent", code="agent_not_found")
    return respond(agent_view(agent))


async def _set_drain(agent_id: str, drain: bool) -> Response:
    principal = await require_user(Role.ADMIN)
    svc = services()
    agent = await svc.store.set_agent_drain(principal.workspace_id, agent_id, drain)
    if agent is None:
        raise NotFound("no such agent", code="agent_not_found")
    svc.notifier.agent_changed(agent_id)
    return respond(agent_view(agent))


@endpoint(blueprint, "POST", "/agents/<agent_id>:drain", summary="Drain an agent (idempotent)", tag="agents",
          response=Agent, errors=(401, 403, 404))
async def drain_agent(agent_id: str) -> Response:
    return await _set_drain(agent_id, True)


@endpoint(blueprint, "POST", "/agents/<agent_id>:resume", summary="Make a drained agent READY again",
          tag="agents", response=Agent, errors=(401, 403, 404))
async def resume_agent(agent_id: str) -> Response:
    return await _set_drain(agent_id, False)


@endpoint(blueprint, "DELETE", "/agents/<agent_id>", summary="Deregister an agent (admin)", tag="agents",
          status=204, errors=(400, 401, 403, 404, 409),
          query=(QueryParam("force", {"type": "boolean", "default": False},
                            "Delete even while it holds jobs: assigned ones are requeued, running ones LOST"),))
async def delete_agent(agent_id: str) -> Response:
    principal = await require_user(Role.ADMIN)
    force = _flag("force")
    svc = services()
    outcome = await svc.store.delete_agent(principal.workspace_id, agent_id, force=force,
                                           now=to_millis(svc.clock.now()))
    if outcome == DeleteOutcome.NOT_FOUND:
        raise NotFound("no such agent", code="agent_not_found")
    if outcome == DeleteOutcome.BUSY:
        raise Conflict("the agent is running jobs; drain it first, or delete with ?force=true", code="agent_busy")
    svc.notifier.forget_agent(agent_id)
    # Requeued jobs may now go to another agent.
    svc.notifier.work_arrived(principal.workspace_id)
    return Response("", status=204)


def _flag(name: str) -> bool:
    text = request.args.get(name, "false").lower()
    if text in {"1", "true", "yes"}:
        return True
    if text in {"0", "false", "no"}:
        return False
    raise Unprocessable(f"{name} must be true or false", field=name)


# --- registration tokens -------------------------------------------------------------------
def _registration_view(token: TokenRecord) -> RegistrationToken:
    return RegistrationToken(id=token.id, name=token.name, createdAt=millis_to_rfc3339(token.created_at) or "",
                             expiresAt=millis_to_rfc3339(token.expires_at),
                             revokedAt=millis_to_rfc3339(token.revoked_at))


@endpoint(blueprint, "POST", "/registration-tokens", summary="Create an agent registration token (admin)",
          tag="agents", body=RegistrationTokenCreate, response=RegistrationTokenCreated, status=201,
          errors=(400, 401, 403, 404, 422))
async def create_registration_token() -> Response:
    principal = await require_user(Role.ADMIN)
    body = await json_body(RegistrationTokenCreate)
    svc = services()
    now = svc.clock.now()
    expires_at: int | None = None
    if body.expiresAt is not None:
        try:
            expires_at = to_millis(parse_rfc3339(body.expiresAt))
        except ValueError as exc:
            raise Unprocessable("expiresAt must be an RFC 3339 time such as 2026-04-26T09:13:21Z",
                                field="expiresAt") from exc
        if expires_at <= to_millis(now):
            raise Unprocessable("expiresAt must be in the future", field="expiresAt")
    secret = generate_token(TokenKind.REGISTRATION)
    record = TokenRecord(id=new_id("tok", now), kind=TokenKind.REGISTRATION.value, token_hash=hash_token(secret),
                         workspace_id=principal.workspace_id, user_id=None, agent_id=None, name=body.name,
                         created_at=to_millis(now), expires_at=expires_at)
    await svc.store.insert_token(record)
    view = _registration_view(record)
    return respond(RegistrationTokenCreated(**view.model_dump(), token=secret), 201)


@endpoint(blueprint, "GET", "/registration-tokens", summary="List registration tokens, newest first (admin)",
          tag="agents", response=Page[RegistrationToken], errors=(400, 401, 403, 404),
          query=(QueryParam("limit", {"type": "integer", "minimum": 1, "maximum": 500}),
                 CURSOR))
async def list_registration_tokens() -> Response:
    principal = await require_user(Role.ADMIN)
    limit = query_limit()
    before = decode_cursor(request.args.get("cursor"))
    tokens = await services().store.list_tokens(principal.workspace_id, TokenKind.REGISTRATION.value,
                                                limit=limit + 1, before_id=before)
    page, cursor = split_page(tokens, limit)
    return respond(Page[RegistrationToken](items=[_registration_view(t) for t in page], nextCursor=cursor))


@endpoint(blueprint, "DELETE", "/registration-tokens/<registration_token_id>",
          summary="Revoke a registration token (admin)", tag="agents", status=204, errors=(401, 403, 404))
async def revoke_registration_token(registration_token_id: str) -> Response:
    principal = await require_user(Role.ADMIN)
    svc = services()
    revoked = await svc.store.revoke_token(principal.workspace_id, registration_token_id, to_millis(svc.clock.now()),
                                           kind=TokenKind.REGISTRATION.value)
    if revoked is None:
        raise NotFound("no such registration token", code="not_found")
    return Response("", status=204)
