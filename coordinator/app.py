"""The app factory: blueprints, and Quart's hooks and error handlers, which call the request
path's plain functions (coordinator/request_path.py, coordinator/error_envelope.py,
coordinator/observability.py) that the fast lane calls too."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import trio
from quart import Quart, Response, g
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException
from werkzeug.routing import BaseConverter

from common.errors import ComputeError
from coordinator import observability, request_path, request_state
from coordinator.api import agent_protocol, agents, jobs, oauth, tokens, workspaces
from coordinator.api import arrays as arrays_api
from coordinator.api import audit as audit_api
from coordinator.api import billing as billing_api
from coordinator.api import sessions as sessions_api
from coordinator.api import webhooks as webhooks_api
from coordinator.api.http import DRAIN_LIMIT_BYTES, respond
from coordinator.console import pages as console_pages
from coordinator.context import Services
from coordinator.error_envelope import envelope, error_response
from coordinator.fast_lane import FastLane
from coordinator.openapi import build_openapi
from coordinator.store import errors as store_errors
from coordinator.store.base import Store

log = logging.getLogger("tanvrit.coordinator")

# How long /readyz waits for the database before it answers 503 (a load balancer's check
# timeout is a few seconds: see docs/deployment.md).
READY_TIMEOUT_SECONDS = 2.0


class IdSegment(BaseConverter):
    """A path segment without ':' (the separator of custom methods such as ``:cancel``)."""

    regex = "[^/:]+"


def create_asgi(svc: Services) -> FastLane:
    """What Hypercorn serves: the fast lane's hot routes in front of the whole Quart app."""
    return FastLane(create_app(svc), svc)


def create_app(svc: Services) -> Quart:
    app = QuartTrio("tanvrit-coordinator")
    app.config["MAX_CONTENT_LENGTH"] = DRAIN_LIMIT_BYTES
    app.config["RESPONSE_TIMEOUT"] = None
    # Quart's own body reads (form posts) get the same deadline as ours (coordinator/api/http.py).
    app.config["BODY_TIMEOUT"] = svc.settings.body_timeout_seconds
    app.extensions["tanvrit"] = svc
    # A path parameter never holds ':' (ids don't), so /agents/x:drain matches only the :drain
    # route and never /agents/<agent_id>: OPTIONS and 405 name the right methods.
    app.url_map.converters["default"] = IdSegment
    for module in (jobs, agents, agent_protocol, workspaces, tokens, oauth, audit_api, billing_api, webhooks_api,
                   sessions_api, arrays_api):
        app.register_blueprint(module.blueprint)
    # The web console (/ui/): pages over the API above, served from the same origin.
    app.register_blueprint(console_pages.blueprint)
    openapi_document = build_openapi()

    @app.before_request
    async def begin() -> None:
        state = request_state.from_quart(svc)
        g.request_state = state
        request_state.enter(state)  # this request's own task: seen by the handler and the hooks below
        request_path.begin(state)
        request_path.guard_address(state)

    @app.after_request
    async def finish(response: Response) -> Response:
        state = _state(svc)
        await request_path.discard_unread_body(state)
        request_path.finish_headers(state, response.headers)
        await observability.observe(state, response.status_code)
        return response

    @app.teardown_request
    async def forget_identities(exc: BaseException | None) -> None:
        request_path.end(_state(svc))

    @app.errorhandler(ComputeError)
    async def compute_error(exc: ComputeError) -> Response:
        return error_response(exc, _state(svc))

    @app.errorhandler(store_errors.StoreError)
    async def store_error(exc: store_errors.StoreError) -> Response:
        return error_response(exc, _state(svc))

    @app.errorhandler(HTTPException)
    async def http_error(exc: HTTPException) -> Response:
        return error_response(exc, _state(svc))

    @app.errorhandler(Exception)
    async def unexpected(exc: Exception) -> Response:
        return error_response(exc, _state(svc))

    @app.get("/healthz")
    async def healthz() -> Response:
        return respond({"status": "ok"})

    @app.get("/readyz")
    async def readyz() -> Response:
        # A load balancer takes this replica out of rotation on 503: answer within its check
        # timeout even when the database hangs rather than refuses.
        reason: str | None = f"the database did not answer within {READY_TIMEOUT_SECONDS:g} s"
        with trio.move_on_after(READY_TIMEOUT_SECONDS):
            reason = await _unready_reason(svc.store)
        if reason is None:
            return respond({"status": "ready"})
        return envelope(_state(svc), 503, "store_unavailable", f"not ready: {reason}")

    @app.get("/v0/openapi.json")
    async def openapi() -> Response:
        return respond(openapi_document)

    observability.install(app, svc)

    return app


def _state(svc: Services) -> request_state.RequestState:
    """The request's state, made by ``begin``; made here when Quart failed before ``begin``
    ran (a request it could not route, say)."""
    found: request_state.RequestState | None = g.get("request_state")
    if found is None:
        found = request_state.from_quart(svc)
        g.request_state = found
        request_state.enter(found)
    return found


async def _unready_reason(store: Store) -> str | None:
    """None when ``store``'s database answers, else why not (the store's own words if it has them)."""
    explain: Callable[[], Awaitable[str | None]] | None = getattr(store, "unready_reason", None)
    if explain is not None:
        return await explain()
    return None if await store.ready() else "the database does not answer"
