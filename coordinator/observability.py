"""What is recorded of every answered request (``observe``, called by both front doors:
Quart's after-request hook and the fast lane): request metrics, the audit log, failed
authentications per address, dispatch latency, the request log line; and ``GET /metrics``.

Handlers do nothing for any of these: endpoints added later are measured and audited too.
"""

from __future__ import annotations

import logging
import time

import structlog
import trio
from quart import Quart, Response, request

from common import protocol
from common.clock import to_millis
from common.errors import Unauthorized
from common.ids import id_millis
from coordinator import audit
from coordinator.context import Services
from coordinator.metrics import CONTENT_TYPE
from coordinator.ratelimit import AddressLimiter
from coordinator.request_path import GUARDED
from coordinator.request_state import RequestState
from coordinator.tokens import hashes_equal

log = structlog.get_logger("tanvrit.coordinator.requests")
_REQUEST_LOG = logging.getLogger("tanvrit.coordinator.requests")


def install(app: Quart, svc: Services) -> None:
    """Register ``/metrics`` and the shutdown write of failed-authentication counts. The
    per-request work (``observe``) is called by each front door."""

    @app.after_serving
    async def write_auth_failures() -> None:
        await _write_auth_failures(svc)

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


async def observe(state: RequestState, status: int) -> None:
    """Account for one answered request: metrics, the audit row or the failed-authentication
    count, the dispatch histogram, and the request log line. Never raises: observability must
    never turn a good answer into an error."""
    try:
        await _observe(state, status)
    except Exception:
        log.exception("request hook failed")


async def _observe(state: RequestState, status: int) -> None:
    svc = state.svc
    elapsed = time.perf_counter() - (state.started or time.perf_counter())
    svc.metrics.observe_request(state.route, state.method, status, elapsed)
    if state.path == protocol.CLAIM_PATH and status == 200:
        await _observe_dispatch(state)
    # A failed request that names no one (no token recognised, no workspace noted: a POST to a
    # path that does not exist, a malformed grant) is counted like a failed authentication, not
    # written as a row: anyone may send those, as fast as the address limit lets them.
    anonymous_failure = status >= 400 and state.audit_workspace is None and state.token_record is None
    if state.path.startswith(GUARDED) and (status == 401 or state.address_refused or anonymous_failure):
        await _count_auth_failure(state, status)
    elif audit.is_audited(state.method, state.path, status):
        await _audit(state, status)
    # Agent-protocol lines are DEBUG: at the usual INFO level they are skipped before structlog
    # is reached (its pipeline costs tens of microseconds even for a line it then drops, and
    # thousands of agents make thousands of these requests a second).
    agent_call = state.path.startswith(protocol.PREFIX)
    if agent_call and not _REQUEST_LOG.isEnabledFor(logging.DEBUG):
        return
    fields = {"method": state.method, "path": state.path, "status": status,
              "ms": round(elapsed * 1000, 2), "workspace": state.audit_workspace,
              "client": state.remote_addr}
    if agent_call:
        log.debug("request", **fields)
    else:
        log.info("request", **fields)


_WRITE_EVERY_SECONDS = 1.0


async def _count_auth_failure(state: RequestState, status: int) -> None:
    """Failed authentication is counted per address and minute, not audited row by row: a
    flood of bad tokens must not grow the audit log by a row each (issue 11)."""
    svc = state.svc
    now = svc.clock.now()
    if status == 401 and not state.address_charged and svc.address_limiter is not None:
        svc.address_limiter.check(state.remote_addr, now, consume=True)
    token = state.token_record
    minute = to_millis(now) // 60_000 * 60_000
    key = (minute, AddressLimiter.key(state.remote_addr), token.workspace_id if token is not None else "")
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


async def _observe_dispatch(state: RequestState) -> None:
    svc = state.svc
    principal = state.principal
    job_id = state.dispatched_job_id
    if principal is None or job_id is None:
        return
    # A job's id carries the time it was made (``new_id("job", now)`` beside ``created_at =
    # now``), so no read: on PostgreSQL that was a round trip per dispatched job. An id of
    # another form (an import, a test's) is looked up.
    created_at = id_millis(job_id)
    if created_at is None:
        created_at = await svc.store.job_created_at(principal.workspace_id, job_id)
    if created_at is not None:
        svc.metrics.observe_dispatch((to_millis(svc.clock.now()) - created_at) / 1000)


async def _audit(state: RequestState, status: int) -> None:
    if state.audit_written:
        return  # the handler wrote it with its own change (one transaction: POST /v0/jobs)
    await state.svc.store.append_audit(audit.request_record(state.svc.clock.now(), status))
