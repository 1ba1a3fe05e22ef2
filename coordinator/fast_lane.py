"""The fast lane: the hottest routes served as plain ASGI in front of Quart.

Quart's own per-request machinery (request and app contexts, the request object, routing,
signals, hook dispatch, the response pipeline) costs about as much CPU as everything the
coordinator does for a submission (``docs/performance.md``). The fast lane answers a short list
of routes without it, and hands every other request to Quart unchanged:

    client -> Hypercorn -> FastLane --(hot route, plain request)--> the route's handler
                                    \\--(anything else)-----------> Quart -> the same handlers

Nothing of a request's meaning is written twice. The handler is the very view function Quart
routes to (``app.view_functions``); authentication, workspace scoping, rate limits and their
headers, the request id, body limits, Idempotency-Key, the error envelope, the audit row, the
request log line and the metrics are the plain functions Quart's hooks call too
(``coordinator/request_path.py``, ``coordinator/error_envelope.py``,
``coordinator/observability.py``, ``coordinator/auth.py``), over a ``RequestState`` this module
builds from the ASGI scope instead of from Quart's request.

A request takes the fast lane only when it is plainly one of the hot routes: the method and
path match exactly, there is no query string (Quart answers ``unknown_parameter``), no cookie
(the console's session and CSRF rules stay in one reading), no declared body past Quart's
drain limit (Quart answers 413), and no ``root_path``. Anything else, however unusual, goes to
Quart, which answers it as it always has. ``tests/test_fast_lane.py`` sends the same good and
bad requests through both doors and compares the answers.

Held requests (an agent's claim long-poll and held heartbeat) watch for the client going away,
as Quart does: the handler is cancelled when Hypercorn reports ``http.disconnect``, so an agent
that hung up is not handed a job.
"""

from __future__ import annotations

import math
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, cast, overload

import trio
from quart import Quart, Response
from quart.utils import encode_headers
from quart.wrappers.response import DataBody

from common import protocol
from coordinator import observability, request_path, request_state
from coordinator.api.http import DRAIN_LIMIT_BYTES
from coordinator.client_address import from_scope
from coordinator.context import Services
from coordinator.error_envelope import error_response
from coordinator.http_server import shielded
from coordinator.request_state import RequestState

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

# The same segment Quart's routes take (coordinator/app.py: IdSegment).
_JOB_PATH = re.compile(r"^/v0/jobs/(?P<job_id>[^/:]+)$")


@dataclass(frozen=True)
class _Route:
    endpoint: str  # Quart's endpoint name: the view function, the audit action, the declared query
    held: bool  # may wait (long-poll): cancelled when the client goes away


_ROUTES: dict[tuple[str, str], _Route] = {
    ("POST", "/v0/jobs"): _Route("jobs.submit_job", held=False),
    ("POST", protocol.HEARTBEAT_PATH): _Route("agent_protocol.heartbeat", held=True),
    ("POST", protocol.CLAIM_PATH): _Route("agent_protocol.claim", held=True),
}
_GET_JOB = _Route("jobs.get_job", held=False)


class RequestHeaders:
    """ASGI headers read as Quart reads them: case-insensitive, the first of repeated ones."""

    __slots__ = ("_values",)

    def __init__(self, raw: list[tuple[bytes, bytes]]) -> None:
        values: dict[str, str] = {}
        for name, value in raw:
            values.setdefault(name.decode("latin-1").lower(), value.decode("latin-1"))
        self._values = values

    @overload
    def get(self, key: str) -> str | None: ...

    @overload
    def get(self, key: str, default: str) -> str: ...

    def get(self, key: str, default: str | None = None) -> str | None:
        return self._values.get(key.lower(), default)


class ClientGone(BaseException):
    """The client hung up before its request body arrived: nobody is left to answer.
    A BaseException, so that no handler's ``except Exception`` turns it into an answer."""


def _mimetype(content_type: str | None) -> str:
    return "" if content_type is None else content_type.split(";", 1)[0].strip().lower()


class FastLane:
    """An ASGI app: the hot routes served directly, everything else by ``app`` (Quart)."""

    # ``coordinator/http_server.py`` hands it the plain ``send``: the sends that something may
    # cancel half way are shielded here (Quart's, which quart-trio cancels when it reads
    # ``http.disconnect``, and held requests', cancelled the same way); a plain fast-lane
    # request runs in a task nothing cancels, and its sends go unwrapped.
    shields_own_sends = True

    def __init__(self, app: Quart, svc: Services) -> None:
        self.app = app
        self._quart: Any = app  # typed for Quart's own ASGI scope types, which ours are
        self.svc = svc
        self._views: dict[str, Callable[..., Awaitable[Response]]] = {}
        self._templates: dict[str, str] = {}
        for route in [*_ROUTES.values(), _GET_JOB]:
            self._views[route.endpoint] = cast(Callable[..., Awaitable[Response]],
                                               app.view_functions[route.endpoint])
            self._templates[route.endpoint] = next(iter(app.url_map.iter_rules(route.endpoint))).rule

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        matched = self._match(scope) if scope["type"] == "http" else None
        if matched is None:
            await self._quart(scope, receive, shielded(send))
            return
        route, view_args = matched
        state = self._state(scope, receive, route, view_args)
        token = request_state.enter(state)
        try:
            if route.held:
                await self._serve_held(route, state, receive, shielded(send))
            else:
                await self._serve(route, state, send)
        except ClientGone:
            pass
        finally:
            request_path.end(state)
            request_state.leave(token)

    def _match(self, scope: Scope) -> tuple[_Route, dict[str, str]] | None:
        if scope.get("query_string") or scope.get("root_path"):
            return None
        method, path = scope["method"], scope["path"]
        route = _ROUTES.get((method, path))
        view_args: dict[str, str] = {}
        if route is None:
            if method != "GET" or not path.startswith("/v0/jobs/"):
                return None
            found = _JOB_PATH.match(path)
            if found is None:
                return None
            route, view_args = _GET_JOB, {"job_id": found["job_id"]}
        for name, value in scope["headers"]:
            if name == b"cookie":
                return None
            if name == b"content-length" and (not value.isdigit() or int(value) > DRAIN_LIMIT_BYTES):
                return None
        return route, view_args

    def _state(self, scope: Scope, receive: Receive, route: _Route, view_args: dict[str, str]) -> RequestState:
        headers = RequestHeaders(scope["headers"])
        finished = False

        async def body() -> AsyncIterator[bytes]:
            nonlocal finished
            while not finished:
                message = await receive()
                if message["type"] == "http.disconnect":
                    raise ClientGone
                finished = not message.get("more_body", False)
                yield message.get("body", b"")

        return RequestState(
            method=scope["method"], path=scope["path"], headers=headers, cookies={},
            remote_addr=from_scope(scope, self.svc.settings.trusted_proxies), endpoint=route.endpoint,
            route=self._templates[route.endpoint], view_args=view_args, args=(),
            mimetype=_mimetype(headers.get("content-type")), body=body, svc=self.svc,
        )

    async def _answer(self, route: _Route, state: RequestState) -> Response:
        """The handler's answer, or the envelope of what it raised: as Quart would make it."""
        try:
            request_path.begin(state)
            request_path.guard_address(state)
            return await self._views[route.endpoint](**state.view_args)
        except Exception as exc:
            return error_response(exc, state)

    async def _respond(self, state: RequestState, response: Response, send: Send) -> None:
        await request_path.discard_unread_body(state)
        headers = encode_headers(response.headers)
        request_path.finish_raw_headers(state, headers)
        await observability.observe(state, response.status_code)
        data = response.response
        # A body given as bytes (every JSON answer) is sent as it is, without Quart's async
        # iteration over it; any other body is read as Quart reads it.
        body = data.data[data.begin:data.end] if type(data) is DataBody else await response.get_data()
        await send({"type": "http.response.start", "status": response.status_code, "headers": headers})
        await send({"type": "http.response.body", "body": body, "more_body": False})

    async def _serve(self, route: _Route, state: RequestState, send: Send) -> None:
        await self._respond(state, await self._answer(route, state), send)

    async def _serve_held(self, route: _Route, state: RequestState, receive: Receive, send: Send) -> None:
        """Serve a request that may wait; cancelled, unanswered, when the client goes away.

        One task owns ``receive`` (as Quart's does): it hands the body's chunks to the handler
        through a channel, then waits for ``http.disconnect``."""
        chunks, chunks_out = trio.open_memory_channel[bytes](math.inf)

        async def body() -> AsyncIterator[bytes]:
            async for chunk in chunks_out:
                yield chunk

        state.body = body
        async with trio.open_nursery() as nursery:
            async def pump() -> None:
                async with chunks:
                    more = True
                    while more:
                        message = await receive()
                        if message["type"] == "http.disconnect":
                            nursery.cancel_scope.cancel()
                            return
                        more = message.get("more_body", False)
                        chunks.send_nowait(message.get("body", b""))
                while (await receive())["type"] != "http.disconnect":
                    pass
                nursery.cancel_scope.cancel()

            nursery.start_soon(pump)
            await self._respond(state, await self._answer(route, state), send)
            nursery.cancel_scope.cancel()
