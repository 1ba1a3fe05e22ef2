"""The app factory: hooks for request ids and API versions, the error envelope, blueprints."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import trio
from quart import Quart, Response, g, request
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException, MethodNotAllowed
from werkzeug.routing import BaseConverter

from common import API_VERSION
from common.errors import BadRequest, ComputeError, RequestTimeout, Unprocessable
from common.ids import new_id
from coordinator import observability
from coordinator.api import agent_protocol, agents, jobs, oauth, tokens, workspaces
from coordinator.api import arrays as arrays_api
from coordinator.api import audit as audit_api
from coordinator.api import billing as billing_api
from coordinator.api import sessions as sessions_api
from coordinator.api import webhooks as webhooks_api
from coordinator.api.http import DRAIN_LIMIT_BYTES, body_deadline, respond
from coordinator.api.registry import DECLARED_QUERY
from coordinator.console import pages as console_pages
from coordinator.context import Services, services
from coordinator.openapi import build_openapi
from coordinator.store import errors as store_errors
from coordinator.store.base import Store

log = logging.getLogger("tanvrit.coordinator")

# How long /readyz waits for the database before it answers 503 (a load balancer's check
# timeout is a few seconds: see docs/deployment.md).
READY_TIMEOUT_SECONDS = 2.0

_HTTP_CODES = {
    404: "not_found", 405: "method_not_allowed", 413: "payload_too_large", 400: "bad_request",
}


# Mutating endpoints that change no token and no membership: they leave the identity cache
# (coordinator/identity_cache.py) alone. Every other POST/PUT/PATCH/DELETE empties it, whatever
# its answer (a refresh token's reuse revokes its family and answers 400).
_KEEPS_IDENTITY_CACHE = frozenset({
    "jobs.submit_job", "jobs.cancel_job", "arrays.cancel_array",
    "agent_protocol.heartbeat", "agent_protocol.claim", "agent_protocol.release", "agent_protocol.events",
    "agent_protocol.goodbye",
})
_MUTATING = frozenset({"POST", "PUT", "PATCH", "DELETE"})


class IdSegment(BaseConverter):
    """A path segment without ':' (the separator of custom methods such as ``:cancel``)."""

    regex = "[^/:]+"


def _envelope(status: int, code: str, message: str, field: str | None = None) -> Response:
    request_id = getattr(g, "request_id", None) or new_id("req")
    g.error_code = code  # for the audit row (coordinator/observability.py)
    return respond({"error": {"code": code, "message": message, "field": field, "requestId": request_id}}, status)


async def discard_unread_body() -> None:
    """Read whatever of the request body a handler left unread (say, a 401 or a version error
    answered before parsing). Left in the connection, the rest of the body would be parsed by
    the server as the next request on this keep-alive connection, or leave the client stuck
    sending it; either way its next request hangs. Bodies are bounded by MAX_CONTENT_LENGTH and
    by the body deadline. Other methods are not drained: if a body is left unread (a GET with a
    Content-Length), Hypercorn closes the connection after the response."""
    if request.method not in {"POST", "PUT", "PATCH", "DELETE"} or getattr(g, "body_timed_out", False):
        return
    try:
        with body_deadline(services().settings.body_timeout_seconds):
            async for _ in request.body:
                pass
    except (HTTPException, RequestTimeout):
        pass  # over a bound: the connection is closed after the answer, which is the right end for it


# Every response, error envelopes and unmatched paths included: nothing the API returns is a
# page, so a browser led to one (a job's log as text/plain, a 404 under /ui/) renders inert text
# that nothing can frame. The console's pages set their own policy (coordinator/console/pages.py).
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; sandbox",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}


# Most specific first: the first class the error is an instance of gives the status.
_STORE_STATUSES: dict[type[store_errors.StoreError], int] = {
    store_errors.NotFound: 404,
    store_errors.StaleState: 409,
    store_errors.Conflict: 409,
    store_errors.InvalidValue: 422,
    store_errors.StoreClosed: 503,
    store_errors.DatabaseUnavailable: 503,
}


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

    identity_cache = svc.identity_cache
    assert identity_cache is not None

    @app.before_request
    async def begin() -> None:
        g.request_id = new_id("req")
        # A path that matches no route changes nothing (and may come from anyone, unsigned).
        if (request.method in _MUTATING and request.endpoint is not None
                and request.endpoint not in _KEEPS_IDENTITY_CACHE):
            # Emptied before (lookups in flight are not kept) and after (teardown) the change.
            g.identity_change = True
            identity_cache.invalidate()
        version = request.headers.get("X-Compute-API-Version")
        if version is not None and version != API_VERSION:
            raise BadRequest(
                f"unsupported API version {version!r}; this server speaks {API_VERSION}",
                code="unsupported_api_version", field="X-Compute-API-Version",
            )
        # PostgreSQL's text cannot hold NUL (%00): refused here, on both databases alike, before
        # an id or a filter reaches a query (coordinator/api/http.py does the same for bodies).
        if "\x00" in request.path:
            raise Unprocessable("the path holds a NUL character")
        for key, value in request.args.items(multi=True):
            if "\x00" in key or "\x00" in value:
                raise Unprocessable("the query parameter holds a NUL character", field=key.replace("\x00", ""))
        declared = DECLARED_QUERY.get(request.endpoint or "")
        if declared is not None:
            unknown = sorted(set(request.args) - declared)
            if unknown:
                raise BadRequest(f"unknown query parameter {unknown[0]!r}", code="unknown_parameter", field=unknown[0])

    @app.after_request
    async def finish(response: Response) -> Response:
        await discard_unread_body()
        response.headers["X-Request-Id"] = getattr(g, "request_id", None) or new_id("req")
        response.headers["X-Compute-API-Version"] = API_VERSION
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        if request.path.startswith(("/v0/", "/agent/")):
            # Per-caller answers, some holding secrets shown once (a new PAT, a webhook secret,
            # an invitation code): no cache, shared or private, may keep them.
            response.headers.setdefault("Cache-Control", "no-store")
        return response

    @app.teardown_request
    async def forget_identities(exc: BaseException | None) -> None:
        if g.get("identity_change"):
            identity_cache.invalidate()

    @app.errorhandler(ComputeError)
    async def compute_error(exc: ComputeError) -> Response:
        response = _envelope(exc.status, exc.code, exc.message, exc.field)
        retry_after = getattr(exc, "retry_after_seconds", None)
        if retry_after is not None:
            response.headers["Retry-After"] = str(retry_after)
        return response

    @app.errorhandler(store_errors.StoreError)
    async def store_error(exc: store_errors.StoreError) -> Response:
        # The store's errors carry no HTTP: they are mapped here, once (common.errors' statuses).
        status = next((code for kind, code in _STORE_STATUSES.items() if isinstance(exc, kind)), 500)
        if status == 500:
            log.error("store error in %s %s: %s", request.method, request.path, exc)
            return _envelope(500, "internal_error",
                             "an internal error occurred; quote the request id when reporting it")
        response = _envelope(status, exc.code, exc.message, getattr(exc, "field", None))
        if status == 503:
            response.headers["Retry-After"] = "1"
        return response

    @app.errorhandler(HTTPException)
    async def http_error(exc: HTTPException) -> Response:
        status = exc.code or 500
        too_large = f"the request body is over {svc.settings.max_body_bytes // 1024} KiB"
        message = too_large if status == 413 else (exc.description or exc.name)
        response = _envelope(status, _HTTP_CODES.get(status, exc.name.lower().replace(" ", "_")), message)
        if isinstance(exc, MethodNotAllowed) and exc.valid_methods:
            # RFC 9110 §15.5.6: a 405 names the methods the resource does support.
            response.headers["Allow"] = ", ".join(sorted(exc.valid_methods))
        return response

    @app.errorhandler(Exception)
    async def unexpected(exc: Exception) -> Response:
        log.exception("unhandled error in %s %s", request.method, request.path)
        return _envelope(500, "internal_error", "an internal error occurred; quote the request id when reporting it")

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
        return _envelope(503, "store_unavailable", f"not ready: {reason}")

    @app.get("/v0/openapi.json")
    async def openapi() -> Response:
        return respond(openapi_document)

    observability.install(app, svc)

    return app


async def _unready_reason(store: Store) -> str | None:
    """None when ``store``'s database answers, else why not (the store's own words if it has them)."""
    explain: Callable[[], Awaitable[str | None]] | None = getattr(store, "unready_reason", None)
    if explain is not None:
        return await explain()
    return None if await store.ready() else "the database does not answer"
