"""Cross-cutting request hooks, installed once by the app factory: request ids in logs,
request metrics, rate-limit headers, the audit log, dispatch latency, and ``GET /metrics``.

Handlers do nothing for any of these: endpoints added later are measured and audited too.
"""

from __future__ import annotations

import logging
import time

import structlog
import trio
from quart import Quart, Response, g, request

from common import protocol
from common.clock import to_millis
from common.errors import RateLimited, Unauthorized
from coordinator import audit
from coordinator.auth import SESSION_COOKIE
from coordinator.client_address import from_scope
from coordinator.context import Services
from coordinator.metrics import CONTENT_TYPE
from coordinator.ratelimit import AddressLimiter, Decision
from coordinator.store.base import TokenRecord
from coordinator.tokens import hashes_equal

log = structlog.get_logger("tanvrit.coordinator.requests")
_REQUEST_LOG = logging.getLogger("tanvrit.coordinator.requests")


def install(app: Quart, svc: Services) -> None:
    """Register the hooks and ``/metrics``; call after the app's own request-id hook."""

    @app.before_request
    async def start_clock() -> None:
        g.started = time.perf_counter()
        structlog.contextvars.bind_contextvars(request_id=g.get("request_id"))

    @app.before_request
    async def guard_address() -> None:
        """Requests that no workspace pays for (no credentials) are counted per client address,
        and an address whose failed authentications used up its allowance is refused until it
        recovers; authenticated traffic is limited per workspace (``coordinator.auth``)."""
        if not request.path.startswith(_GUARDED):
            return
        credentials = bool(request.headers.get("Authorization")) or SESSION_COOKIE in request.cookies
        limiter = svc.address_limiter
        decision = None if limiter is None else limiter.check(from_scope(request.scope, svc.settings.trusted_proxies),
                                                              svc.clock.now(), consume=not credentials)
        g.address_charged = not credentials
        if decision is not None and not decision.allowed:
            g.address_refused = True
            raise RateLimited(f"too many unauthenticated or failed requests from this address; retry after "
                              f"{decision.retry_after_seconds} s", retry_after_seconds=decision.retry_after_seconds,
                              code="too_many_unauthenticated")

    @app.after_serving
    async def write_auth_failures() -> None:
        await _write_auth_failures(svc)

    @app.after_request
    async def observe(response: Response) -> Response:
        try:
            await _observe(svc, response)
        except Exception:
            # Observability must never turn a good answer into an error.
            log.exception("request hook failed")
        finally:
            structlog.contextvars.unbind_contextvars("request_id")
        return response

    @app.get("/metrics")
    async def metrics() -> Response:
        expected = svc.settings.metrics_token
        if expected is not None:
            header = request.headers.get("Authorization", "")
            scheme, _, secret = header.partition(" ")
            if scheme.lower() != "bearer" or not hashes_equal(secret.strip(), expected):
                raise Unauthorized("this coordinator's /metrics needs its metrics token", code="invalid_token")
        body = await svc.metrics.render(svc.store, cluster=svc.exports_cluster_gauges,
                                        leader=svc.exports_cluster_gauges)
        return Response(body, content_type=CONTENT_TYPE)


async def _observe(svc: Services, response: Response) -> None:
    status = response.status_code
    rule = request.url_rule
    route = rule.rule if rule is not None else "unmatched"
    elapsed = time.perf_counter() - g.get("started", time.perf_counter())
    svc.metrics.observe_request(route, request.method, status, elapsed)
    decision: Decision | None = g.get("rate_decision")
    if decision is not None:
        response.headers["X-RateLimit-Limit"] = str(decision.limit)
        response.headers["X-RateLimit-Remaining"] = str(decision.remaining)
    if request.path == protocol.CLAIM_PATH and status == 200:
        await _observe_dispatch(svc)
    # A failed request that names no one (no token recognised, no workspace noted: a POST to a
    # path that does not exist, a malformed grant) is counted like a failed authentication, not
    # written as a row: anyone may send those, as fast as the address limit lets them.
    anonymous_failure = status >= 400 and g.get("audit_workspace") is None and g.get("token_record") is None
    if request.path.startswith(_GUARDED) and (status == 401 or g.get("address_refused") or anonymous_failure):
        await _count_auth_failure(svc, status)
    elif audit.is_audited(request.method, request.path, status):
        await _audit(svc, status)
    # Agent-protocol lines are DEBUG: at the usual INFO level they are skipped before structlog
    # is reached (its pipeline costs tens of microseconds even for a line it then drops, and
    # thousands of agents make thousands of these requests a second).
    agent_call = request.path.startswith(protocol.PREFIX)
    if agent_call and not _REQUEST_LOG.isEnabledFor(logging.DEBUG):
        return
    fields = {"method": request.method, "path": request.path, "status": status,
              "ms": round(elapsed * 1000, 2), "workspace": g.get("audit_workspace"),
              "client": from_scope(request.scope, svc.settings.trusted_proxies)}
    if agent_call:
        log.debug("request", **fields)
    else:
        log.info("request", **fields)


_GUARDED = ("/v0/", protocol.PREFIX + "/")
_WRITE_EVERY_SECONDS = 1.0


async def _count_auth_failure(svc: Services, status: int) -> None:
    """Failed authentication is counted per address and minute, not audited row by row: a
    flood of bad tokens must not grow the audit log by a row each (issue 11)."""
    now = svc.clock.now()
    address = from_scope(request.scope, svc.settings.trusted_proxies)
    if status == 401 and not g.get("address_charged") and svc.address_limiter is not None:
        svc.address_limiter.check(address, now, consume=True)
    token: TokenRecord | None = g.get("token_record")
    minute = to_millis(now) // 60_000 * 60_000
    key = (minute, AddressLimiter.key(address), token.workspace_id if token is not None else "")
    svc.auth_failures[key] = svc.auth_failures.get(key, 0) + 1
    if trio.current_time() - svc.auth_failures_written_at >= _WRITE_EVERY_SECONDS:
        await _write_auth_failures(svc)


async def _write_auth_failures(svc: Services) -> None:
    """Write the counts gathered since the last write (at most once a second while failures
    arrive, and at shutdown)."""
    counts, svc.auth_failures = svc.auth_failures, {}
    svc.auth_failures_written_at = trio.current_time()
    if counts:
        await svc.store.count_auth_failures(counts)


async def _observe_dispatch(svc: Services) -> None:
    principal = g.get("principal")
    job_id: str | None = g.get("dispatched_job_id")
    if principal is None or job_id is None:
        return
    job = await svc.store.get_job(principal.workspace_id, job_id)
    if job is not None:
        svc.metrics.observe_dispatch((to_millis(svc.clock.now()) - job.created_at) / 1000)


async def _audit(svc: Services, status: int) -> None:
    if g.get("audit_written"):
        return  # the handler wrote it with its own change (one transaction: POST /v0/jobs)
    await svc.store.append_audit(audit.request_record(svc.clock.now(), status))
