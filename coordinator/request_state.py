"""One request as the cross-cutting concerns see it: what arrived, and what they learnt about it.

The coordinator has two front doors (``docs/architecture.md``, "The request path"): Quart, for
every route, and the fast lane (``coordinator/fast_lane.py``), which serves a few hot routes as
plain ASGI. Authentication, rate limits, the audit row, the request log line, metrics and the
error envelope are written once, as plain functions over a ``RequestState``; each door builds
one per request (``from_quart`` here, ``fast_lane.state_of`` there) and makes it current.

It replaces Quart's ``g`` for everything those functions read or note (who called, which
workspace, the rate decision, the error code, the id answered): a handler served by either
door runs the same code and leaves the same facts behind.

The current state lives in a context variable. Each request runs in a trio task of its own
(Hypercorn spawns one per request), so one request's state is never seen by another.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, Callable, Mapping, Sequence
from contextvars import ContextVar, Token
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, overload

if TYPE_CHECKING:
    from coordinator.context import Services
    from coordinator.ratelimit import Decision
    from coordinator.store.base import TokenRecord


class HeaderReader(Protocol):
    """Request headers, looked up case-insensitively (the first value of a repeated header)."""

    @overload
    def get(self, key: str) -> str | None: ...

    @overload
    def get(self, key: str, default: str) -> str: ...


@dataclass(eq=False, slots=True)
class RequestState:
    """What arrived (the first block) and what the request path learnt (the rest)."""

    method: str
    path: str
    headers: HeaderReader
    cookies: Mapping[str, str]
    remote_addr: str | None
    endpoint: str | None  # "blueprint.function"; None for a path no route matches
    route: str  # the route's template (metrics label); "unmatched" for none
    view_args: Mapping[str, Any]
    args: Sequence[tuple[str, str]]  # the query parameters, repeated ones repeated
    mimetype: str
    body: Callable[[], AsyncIterable[bytes]]  # the body's chunks, once
    svc: Services
    request_id: str = ""
    started: float = 0.0
    token_record: TokenRecord | None = None  # recognised, live or not (a denial is audited where it belongs)
    actor: str | None = None
    audit_workspace: str | None = None
    principal: Any = None  # coordinator.auth.Principal once authenticated
    rate_decision: Decision | None = None
    error_code: str | None = None
    response_id: str | None = None  # the id of the object answered (the audit row's target)
    audit_written: bool = False  # the handler committed the audit row with its change
    audit_target: str | None = None
    dispatched_job_id: str | None = None
    address_charged: bool = False
    address_refused: bool = False
    identity_change: bool = False
    body_timed_out: bool = False
    body_read: bool = False


_CURRENT: ContextVar[RequestState] = ContextVar("tanvrit_request_state")


def current() -> RequestState:
    """The state of the request being served; raises LookupError outside one."""
    return _CURRENT.get()


def current_or_none() -> RequestState | None:
    return _CURRENT.get(None)


def enter(state: RequestState) -> Token[RequestState]:
    """Make ``state`` current in this task (undo with ``leave``)."""
    return _CURRENT.set(state)


def leave(token: Token[RequestState]) -> None:
    _CURRENT.reset(token)


def from_quart(svc: Services) -> RequestState:
    """The state of the Quart request now being served."""
    from quart import request

    from coordinator.client_address import from_scope

    rule = request.url_rule
    return RequestState(
        method=request.method, path=request.path, headers=request.headers, cookies=request.cookies,
        remote_addr=from_scope(request.scope, svc.settings.trusted_proxies), endpoint=request.endpoint,
        route=rule.rule if rule is not None else "unmatched", view_args=request.view_args or {},
        args=list(request.args.items(multi=True)), mimetype=request.mimetype, body=lambda: request.body, svc=svc,
    )
