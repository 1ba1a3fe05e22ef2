"""What every request goes through, whichever door serves it (Quart's hooks in
``coordinator/app.py`` or the fast lane, ``coordinator/fast_lane.py``): written once, as plain
functions over the request's ``RequestState``.

In order: ``begin`` (request id, clock, identity-cache invalidation, API version, NUL and
undeclared query parameters), ``guard_address`` (the per-address limit on unauthenticated
traffic), the handler, ``discard_unread_body``, ``finish_headers``, then
``coordinator.observability.observe`` (metrics, audit, the log line) and ``end``.
"""

from __future__ import annotations

import time
from typing import Any, Protocol

import structlog
from werkzeug.exceptions import HTTPException

from common import API_VERSION, protocol
from common.errors import BadRequest, RateLimited, RequestTimeout, Unprocessable
from common.ids import new_id
from coordinator.api.http import body_deadline
from coordinator.api.registry import DECLARED_QUERY
from coordinator.auth import SESSION_COOKIE
from coordinator.request_state import RequestState

# Mutating endpoints that change no token and no membership: they leave the identity cache
# (coordinator/identity_cache.py) alone. Every other POST/PUT/PATCH/DELETE empties it, whatever
# its answer (a refresh token's reuse revokes its family and answers 400).
KEEPS_IDENTITY_CACHE = frozenset({
    "jobs.submit_job", "jobs.cancel_job", "arrays.cancel_array",
    "agent_protocol.heartbeat", "agent_protocol.claim", "agent_protocol.release", "agent_protocol.events",
    "agent_protocol.goodbye",
})
MUTATING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# Requests that no workspace pays for are counted per address under these prefixes.
GUARDED = ("/v0/", protocol.PREFIX + "/")

# Every response, error envelopes and unmatched paths included: nothing the API returns is a
# page, so a browser led to one (a job's log as text/plain, a 404 under /ui/) renders inert text
# that nothing can frame. The console's pages set their own policy (coordinator/console/pages.py).
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; sandbox",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}


class ResponseHeaders(Protocol):
    """What ``finish_headers`` writes to (werkzeug's ``Headers``)."""

    def __setitem__(self, key: str, value: str) -> None: ...

    def add(self, key: str, value: Any, /) -> None: ...

    def items(self) -> Any: ...


def begin(state: RequestState) -> None:
    """Name and time the request, and refuse what no route may take; raises ``ComputeError``."""
    state.request_id = new_id("req")
    state.started = time.perf_counter()
    structlog.contextvars.bind_contextvars(request_id=state.request_id)
    # A path that matches no route changes nothing (and may come from anyone, unsigned).
    if state.method in MUTATING and state.endpoint is not None and state.endpoint not in KEEPS_IDENTITY_CACHE:
        # Emptied before (lookups in flight are not kept) and after (``end``) the change.
        state.identity_change = True
        cache = state.svc.identity_cache
        assert cache is not None
        cache.invalidate()
    version = state.headers.get("X-Compute-API-Version")
    if version is not None and version != API_VERSION:
        raise BadRequest(
            f"unsupported API version {version!r}; this server speaks {API_VERSION}",
            code="unsupported_api_version", field="X-Compute-API-Version",
        )
    # PostgreSQL's text cannot hold NUL (%00): refused here, on both databases alike, before
    # an id or a filter reaches a query (coordinator/api/http.py does the same for bodies).
    if "\x00" in state.path:
        raise Unprocessable("the path holds a NUL character")
    for key, value in state.args:
        if "\x00" in key or "\x00" in value:
            raise Unprocessable("the query parameter holds a NUL character", field=key.replace("\x00", ""))
    declared = DECLARED_QUERY.get(state.endpoint or "")
    if declared is not None and state.args:
        unknown = sorted({key for key, _ in state.args} - declared)
        if unknown:
            raise BadRequest(f"unknown query parameter {unknown[0]!r}", code="unknown_parameter", field=unknown[0])


def guard_address(state: RequestState) -> None:
    """Requests that no workspace pays for (no credentials) are counted per client address,
    and an address whose failed authentications used up its allowance is refused until it
    recovers; authenticated traffic is limited per workspace (``coordinator.auth``)."""
    if not state.path.startswith(GUARDED):
        return
    svc = state.svc
    credentials = bool(state.headers.get("Authorization")) or SESSION_COOKIE in state.cookies
    limiter = svc.address_limiter
    decision = None if limiter is None else limiter.check(state.remote_addr, svc.clock.now(), consume=not credentials)
    state.address_charged = not credentials
    if decision is not None and not decision.allowed:
        state.address_refused = True
        raise RateLimited(f"too many unauthenticated or failed requests from this address; retry after "
                          f"{decision.retry_after_seconds} s", retry_after_seconds=decision.retry_after_seconds,
                          code="too_many_unauthenticated")


async def discard_unread_body(state: RequestState) -> None:
    """Read whatever of the request body a handler left unread (say, a 401 or a version error
    answered before parsing). Left in the connection, the rest of the body would be parsed by
    the server as the next request on this keep-alive connection, or leave the client stuck
    sending it; either way its next request hangs. Bodies are bounded (Quart's
    ``MAX_CONTENT_LENGTH``, the fast lane's own check) and by the body deadline. Other methods
    are not drained: if a body is left unread (a GET with a Content-Length), Hypercorn closes
    the connection after the response."""
    if state.method not in MUTATING or state.body_timed_out or state.body_read:
        return
    try:
        with body_deadline(state.svc.settings.body_timeout_seconds):
            async for _ in state.body():
                pass
    except (HTTPException, RequestTimeout):
        pass  # over a bound: the connection is closed after the answer, which is the right end for it


def finish_headers(state: RequestState, headers: ResponseHeaders) -> None:
    """The headers every answer carries: request id, API version, security headers, no-store
    on the API, and the workspace's rate-limit headers once a limit was consulted."""
    # werkzeug's Headers scans (and lowercases) every header on each lookup; one scan up front
    # and ``add`` for the absent names (where ``set``/``setdefault`` would append the same)
    # make it one scan per answer instead of nine.
    present = {name.lower() for name, _ in headers.items()}

    def put(name: str, value: str, *, replace: bool) -> None:
        if name.lower() not in present:
            headers.add(name, value)
            present.add(name.lower())
        elif replace:
            headers[name] = value

    put("X-Request-Id", state.request_id or new_id("req"), replace=True)
    put("X-Compute-API-Version", API_VERSION, replace=True)
    for name, value in SECURITY_HEADERS.items():
        put(name, value, replace=False)
    if state.path.startswith(("/v0/", "/agent/")):
        # Per-caller answers, some holding secrets shown once (a new PAT, a webhook secret,
        # an invitation code): no cache, shared or private, may keep them.
        put("Cache-Control", "no-store", replace=False)
    decision = state.rate_decision
    if decision is not None:
        put("X-RateLimit-Limit", str(decision.limit), replace=True)
        put("X-RateLimit-Remaining", str(decision.remaining), replace=True)


# The same headers as ASGI sends them: lowercase names, encoded once.
_RAW_SECURITY = [(name.lower().encode(), value.encode()) for name, value in SECURITY_HEADERS.items()]
_RAW_API_VERSION = API_VERSION.encode()


def _set_raw(headers: list[tuple[bytes, bytes]], name: bytes, value: bytes) -> None:
    """werkzeug's ``Headers.set`` on a list of ASGI headers: the first ``name`` takes ``value``
    in its place and any later ones go; appended if there is none."""
    for index, (present, _) in enumerate(headers):
        if present == name:
            headers[index] = (name, value)
            headers[index + 1:] = [header for header in headers[index + 1:] if header[0] != name]
            return
    headers.append((name, value))


def finish_raw_headers(state: RequestState, headers: list[tuple[bytes, bytes]]) -> None:
    """``finish_headers`` over the encoded list the fast lane sends (``quart.utils.encode_headers``
    of the view's response: names lowercase), with the same rules in the same order and the
    constant pairs encoded once: the werkzeug ``Headers`` route (a lookup structure, then
    encoding every name and value again) was a tenth of a fast-lane read's own CPU.
    ``tests/test_request_path.py`` holds the two to the same output."""
    present = {name for name, _ in headers}
    request_id = (state.request_id or new_id("req")).encode()
    if b"x-request-id" in present:
        _set_raw(headers, b"x-request-id", request_id)
    else:
        headers.append((b"x-request-id", request_id))
    if b"x-compute-api-version" in present:
        _set_raw(headers, b"x-compute-api-version", _RAW_API_VERSION)
    else:
        headers.append((b"x-compute-api-version", _RAW_API_VERSION))
    for header in _RAW_SECURITY:
        if header[0] not in present:
            headers.append(header)
    if state.path.startswith(("/v0/", "/agent/")) and b"cache-control" not in present:
        headers.append((b"cache-control", b"no-store"))
    decision = state.rate_decision
    if decision is not None:
        _set_raw(headers, b"x-ratelimit-limit", str(decision.limit).encode())
        _set_raw(headers, b"x-ratelimit-remaining", str(decision.remaining).encode())


def end(state: RequestState) -> None:
    """After the answer (and on failure): forget identities a change may have made stale."""
    if state.identity_change:
        cache = state.svc.identity_cache
        assert cache is not None
        cache.invalidate()
    structlog.contextvars.unbind_contextvars("request_id")
