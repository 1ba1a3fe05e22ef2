"""``/v0/webhooks``: register, list, delete, rotate the signing secret, recent delivery attempts."""

from __future__ import annotations

from quart import Blueprint, Response, request

from common.clock import millis_to_rfc3339, to_millis
from common.errors import BadRequest, NotFound
from common.ids import new_id
from common.models import Page, Webhook, WebhookAttempt, WebhookCreate, WebhookCreated, WebhookSecretRotated
from coordinator import webhooks
from coordinator.api.http import CURSOR, SEQ_CURSOR, decode_cursor, encode_cursor, json_body, query_limit, respond
from coordinator.api.registry import QueryParam, endpoint
from coordinator.auth import Role, require_user
from coordinator.context import services
from coordinator.store.base_billing import WebhookRecord

blueprint = Blueprint("webhooks", __name__, url_prefix="/v0")

_PAGE_QUERY = (QueryParam("limit", {"type": "integer", "minimum": 1, "maximum": 500}),
               CURSOR)


def _view(hook: WebhookRecord) -> Webhook:
    return Webhook(id=hook.id, url=hook.url, events=hook.events, createdAt=millis_to_rfc3339(hook.created_at) or "")


@endpoint(blueprint, "POST", "/webhooks", summary="Register a webhook; the secret is shown once", tag="webhooks",
          body=WebhookCreate, response=WebhookCreated, status=201, errors=(400, 401, 403, 404, 413, 422))
async def create_webhook() -> Response:
    principal = await require_user(Role.ADMIN)
    body = await json_body(WebhookCreate)
    svc = services()
    await webhooks.check_url(body.url, allow_private=svc.settings.allow_private_webhooks,
                             resolve=webhooks.resolve_with_trio)
    now = svc.clock.now()
    events: list[str] = list(dict.fromkeys(body.events))
    hook = WebhookRecord(id=new_id("whk", now), workspace_id=principal.workspace_id, url=body.url, events=events,
                         created_at=to_millis(now))
    secret = webhooks.new_secret()
    await svc.store.insert_webhook(hook, secret)
    return respond(WebhookCreated(**_view(hook).model_dump(), secret=secret), 201)


@endpoint(blueprint, "GET", "/webhooks", summary="List webhooks (no secrets), newest first", tag="webhooks",
          response=Page[Webhook], query=_PAGE_QUERY)
async def list_webhooks() -> Response:
    principal = await require_user()
    limit = query_limit()
    found = await services().store.list_webhooks(principal.workspace_id, limit=limit + 1,
                                                 before_id=decode_cursor(request.args.get("cursor")))
    page = found[:limit]
    cursor = encode_cursor(page[-1].id) if len(found) > limit else None
    return respond(Page[Webhook](items=[_view(hook) for hook in page], nextCursor=cursor))


@endpoint(blueprint, "DELETE", "/webhooks/<webhook_id>", summary="Remove a webhook; undelivered events are dropped",
          tag="webhooks", status=204, errors=(401, 403, 404))
async def delete_webhook(webhook_id: str) -> Response:
    principal = await require_user(Role.ADMIN)
    svc = services()
    if not await svc.store.delete_webhook(principal.workspace_id, webhook_id, to_millis(svc.clock.now())):
        raise NotFound("no such webhook", code="webhook_not_found")
    return Response("", status=204)


@endpoint(blueprint, "POST", "/webhooks/<webhook_id>:rotate-secret",
          summary="New signing secret; the old one keeps signing for 24 h", tag="webhooks",
          response=WebhookSecretRotated, errors=(401, 403, 404))
async def rotate_secret(webhook_id: str) -> Response:
    principal = await require_user(Role.ADMIN)
    svc = services()
    secret = webhooks.new_secret()
    old_until = await svc.store.rotate_webhook_secret(principal.workspace_id, webhook_id, secret,
                                                      to_millis(svc.clock.now()))
    if old_until is None:
        raise NotFound("no such webhook", code="webhook_not_found")
    return respond(WebhookSecretRotated(id=webhook_id, secret=secret,
                                        previousSecretExpiresAt=millis_to_rfc3339(old_until) or ""))


@endpoint(blueprint, "GET", "/webhooks/<webhook_id>/deliveries", summary="Recent delivery attempts, newest first",
          tag="webhooks", response=Page[WebhookAttempt], query=(_PAGE_QUERY[0], SEQ_CURSOR))
async def list_deliveries(webhook_id: str) -> Response:
    principal = await require_user()
    svc = services()
    if await svc.store.get_webhook(principal.workspace_id, webhook_id) is None:
        raise NotFound("no such webhook", code="webhook_not_found")
    limit = query_limit()
    cursor_text = decode_cursor(request.args.get("cursor"))
    before: int | None = None
    if cursor_text is not None:
        if not cursor_text.isdigit():
            raise BadRequest("the cursor is not one this API returned", code="invalid_cursor", field="cursor")
        before = int(cursor_text)
    found = await svc.store.list_webhook_attempts(principal.workspace_id, webhook_id, limit=limit + 1,
                                                  before_id=before)
    page = found[:limit]
    items = [
        WebhookAttempt(id=f"att_{attempt.id}", eventId=attempt.event_id, eventType=attempt.event_type,
                       attemptedAt=millis_to_rfc3339(attempt.attempted_at) or "", statusCode=attempt.status_code,
                       latencyMs=attempt.latency_ms, error=attempt.error,
                       deliveryState=attempt.delivery_state)  # type: ignore[arg-type]
        for attempt in page
    ]
    cursor = encode_cursor(str(page[-1].id)) if len(found) > limit else None
    return respond(Page[WebhookAttempt](items=items, nextCursor=cursor))
