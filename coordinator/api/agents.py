"""``/v0/agents``: list, get, drain, resume."""

from __future__ import annotations

from quart import Blueprint, Response, request

from common.errors import NotFound
from common.models import Agent, Page
from coordinator.api.http import decode_cursor, encode_cursor, query_limit, respond
from coordinator.api.registry import QueryParam, endpoint
from coordinator.auth import Role, require_user
from coordinator.context import services
from coordinator.views import agent_view

blueprint = Blueprint("agents", __name__, url_prefix="/v0")


@endpoint(blueprint, "GET", "/agents", summary="List agents, newest first", tag="agents", response=Page[Agent],
          query=(QueryParam("limit", {"type": "integer", "minimum": 1, "maximum": 500}),
                 QueryParam("cursor", {"type": "string"})))
async def list_agents() -> Response:
    principal = await require_user()
    limit = query_limit()
    before = decode_cursor(request.args.get("cursor"))
    agents = await services().store.list_agents(principal.workspace_id, limit=limit + 1, before_id=before)
    page = agents[:limit]
    cursor = encode_cursor(page[-1].id) if len(agents) > limit else None
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
    return respond(agent_view(agent))


@endpoint(blueprint, "POST", "/agents/<agent_id>:drain", summary="Drain an agent (idempotent)", tag="agents",
          response=Agent, errors=(401, 403, 404))
async def drain_agent(agent_id: str) -> Response:
    return await _set_drain(agent_id, True)


@endpoint(blueprint, "POST", "/agents/<agent_id>:resume", summary="Make a drained agent READY again",
          tag="agents", response=Agent, errors=(401, 403, 404))
async def resume_agent(agent_id: str) -> Response:
    return await _set_drain(agent_id, False)
