"""Cross-cutting request hooks, installed once by the app factory: request ids in logs,
request metrics, rate-limit headers, the audit log, dispatch latency, and ``GET /metrics``.

Handlers do nothing for any of these: endpoints added later are measured and audited too.
"""

from __future__ import annotations

import json
import time
from typing import Any

import structlog
from quart import Quart, Response, g, request
from quart.wrappers.response import DataBody

from common import protocol
from common.clock import to_millis
from common.errors import Unauthorized
from common.ids import new_id
from coordinator import audit
from coordinator.context import Services
from coordinator.metrics import CONTENT_TYPE
from coordinator.ratelimit import Decision
from coordinator.store.base import AuditRecord, TokenRecord
from coordinator.tokens import hashes_equal

log = structlog.get_logger("tanvrit.coordinator.requests")


def install(app: Quart, svc: Services) -> None:
    """Register the hooks and ``/metrics``; call after the app's own request-id hook."""

    @app.before_request
    async def start_clock() -> None:
        g.started = time.perf_counter()
        structlog.contextvars.bind_contextvars(request_id=g.get("request_id"))

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
        return Response(await svc.metrics.render(svc.store), content_type=CONTENT_TYPE)


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
        await _observe_dispatch(svc, response)
    if audit.is_audited(request.method, request.path, status):
        await _audit(svc, response, status)
    fields = {"method": request.method, "path": request.path, "status": status,
              "ms": round(elapsed * 1000, 2), "workspace": g.get("audit_workspace")}
    if request.path.startswith(protocol.PREFIX):
        log.debug("request", **fields)
    else:
        log.info("request", **fields)


async def _response_json(response: Response) -> Any:
    if not isinstance(response.response, DataBody) or not (response.mimetype or "").endswith("json"):
        return None
    try:
        return json.loads(await response.get_data())
    except ValueError:
        return None


async def _observe_dispatch(svc: Services, response: Response) -> None:
    principal = g.get("principal")
    body = await _response_json(response)
    if principal is None or not isinstance(body, dict) or not isinstance(body.get("jobId"), str):
        return
    job = await svc.store.get_job(principal.workspace_id, body["jobId"])
    if job is not None:
        svc.metrics.observe_dispatch((to_millis(svc.clock.now()) - job.created_at) / 1000)


async def _audit(svc: Services, response: Response, status: int) -> None:
    workspace_id: str | None = g.get("audit_workspace")
    actor: str | None = g.get("actor")
    token: TokenRecord | None = g.get("token_record")
    if workspace_id is None and token is not None:
        workspace_id = token.workspace_id
    if actor is None and token is not None:
        actor = token.user_id or token.agent_id or token.id
    error_code = None
    body = await _response_json(response)
    if status >= 400 and isinstance(body, dict) and isinstance(body.get("error"), dict):
        error_code = body["error"].get("code")
    now = svc.clock.now()
    endpoint = request.url_rule.endpoint if request.url_rule is not None else None
    record = AuditRecord(
        id=new_id("aud", now), workspace_id=workspace_id, at=to_millis(now), actor=actor,
        action=audit.action_name(endpoint, request.method),
        target=audit.pick_target(g.get("audit_target"), request.view_args,
                                 body if status < 300 else None),
        result=audit.result_of(status), status=status, error_code=error_code,
        request_id=g.get("request_id") or "", source=request.remote_addr, method=request.method,
        path=request.path[:2000],
    )
    await svc.store.append_audit(record)
