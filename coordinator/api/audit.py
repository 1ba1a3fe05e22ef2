"""``GET /v0/workspaces/{id}/audit``: the workspace's audit log, newest first.

Filters: ``since`` (inclusive) and ``until`` (exclusive) RFC 3339 times, ``action``
(repeatable), ``actor``. ``?format=jsonl`` streams the whole filtered log as JSON Lines, one
``AuditEvent`` per line, reading the store a page at a time so memory stays flat however long
the log is. There is no endpoint that changes or deletes audit rows.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from quart import Blueprint, Response, request

from common.clock import millis_to_rfc3339
from common.errors import BadRequest, Unprocessable
from common.models import AuditEvent, Page
from coordinator.api.http import SEQ_CURSOR, decode_cursor, encode_cursor, query_limit, query_list, query_time, respond
from coordinator.api.registry import QueryParam, endpoint
from coordinator.auth import require_user
from coordinator.context import Services, services
from coordinator.store.base import AuditFilter, AuditRecord

blueprint = Blueprint("audit", __name__, url_prefix="/v0")

STREAM_PAGE = 500


def audit_view(record: AuditRecord) -> AuditEvent:
    return AuditEvent(
        id=record.id, time=millis_to_rfc3339(record.at) or "", actor=record.actor, action=record.action,
        target=record.target, result=record.result,  # type: ignore[arg-type]
        status=record.status, errorCode=record.error_code, requestId=record.request_id,
        sourceAddress=record.source, method=record.method, path=record.path,
    )


def _filters() -> AuditFilter:
    actions = tuple(query_list("action"))
    if any(not action or len(action) > 200 for action in actions):
        raise Unprocessable("action must be 1 to 200 characters", field="action")
    actor = request.args.get("actor")
    return AuditFilter(since=query_time("since"), until=query_time("until"), actions=actions, actor=actor)


def _before_seq() -> int | None:
    text = decode_cursor(request.args.get("cursor"))
    if text is None:
        return None
    if not text.isdigit():
        raise BadRequest("the cursor is not one this API returned", code="invalid_cursor", field="cursor")
    return int(text)


@endpoint(blueprint, "GET", "/workspaces/<workspace_id>/audit", summary="Query the audit log, or export it as JSONL",
          tag="audit", response=Page[AuditEvent], alt_content_types=("application/jsonl",),
          query=(QueryParam("since", {"type": "string", "format": "date-time"}, "Inclusive"),
                 QueryParam("until", {"type": "string", "format": "date-time"}, "Exclusive"),
                 QueryParam("action", {"type": "string"}, "Repeatable", True),
                 QueryParam("actor", {"type": "string"}),
                 QueryParam("format", {"type": "string", "enum": ["json", "jsonl"]},
                            "jsonl streams every matching row as JSON Lines"),
                 QueryParam("limit", {"type": "integer", "minimum": 1, "maximum": 500, "default": 50}),
                 SEQ_CURSOR))
async def query_audit(workspace_id: str) -> Response:
    principal = await require_user(workspace_id=workspace_id)
    filters = _filters()
    output = request.args.get("format", "json")
    if output not in {"json", "jsonl"}:
        raise Unprocessable("format must be json or jsonl", field="format")
    before = _before_seq()
    svc = services()
    if output == "jsonl":
        response = Response(_stream(svc, principal.workspace_id, filters, before),
                            content_type="application/jsonl; charset=utf-8")
        response.headers["Content-Disposition"] = f'attachment; filename="audit-{principal.workspace_id}.jsonl"'
        response.timeout = None
        return response
    limit = query_limit()
    rows = await svc.store.list_audit(principal.workspace_id, filters, limit=limit + 1, before_seq=before)
    page = rows[:limit]
    cursor = encode_cursor(str(page[-1].seq)) if len(rows) > limit else None
    return respond(Page[AuditEvent](items=[audit_view(row) for row in page], nextCursor=cursor))


async def _stream(svc: Services, workspace_id: str, filters: AuditFilter, before: int | None) -> AsyncIterator[bytes]:
    """Runs after the handler has returned, outside the app context: hence ``svc`` is passed."""
    while True:
        rows = await svc.store.list_audit(workspace_id, filters, limit=STREAM_PAGE, before_seq=before)
        if not rows:
            return
        yield "".join(audit_view(row).model_dump_json() + "\n" for row in rows).encode()
        if len(rows) < STREAM_PAGE:
            return
        before = rows[-1].seq

