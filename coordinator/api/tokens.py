"""``/v0/tokens``: personal access tokens (PATs) for headless work.

Admins issue them, for themselves or for a member or admin of the workspace (owners for anyone:
a PAT carries its user's role, so an admin minting one for an owner would be an escalation).
Members list the workspace's PATs (metadata only; secrets are shown once, at creation). A PAT
is revoked by an admin or by the user it belongs to; revoking it also revokes the OAuth access
tokens minted from it with the client-credentials grant.
"""

from __future__ import annotations

from datetime import timedelta

from quart import Blueprint, Response, request

from common.clock import millis_to_rfc3339, to_millis
from common.errors import Forbidden, NotFound, Unprocessable
from common.ids import new_id
from common.models import Page, TokenCreate, TokenCreated, TokenInfo
from coordinator.api.http import CURSOR, decode_cursor, json_body, query_limit, respond, split_page
from coordinator.api.registry import QueryParam, endpoint
from coordinator.audit import note_target
from coordinator.auth import Role, caller_token, creator_for, invitation_for, require_role, require_user
from coordinator.context import services
from coordinator.store.base import TokenRecord
from coordinator.tokens import TokenKind, generate_token, hash_token, prefix_of

blueprint = Blueprint("tokens", __name__, url_prefix="/v0")


def token_view(token: TokenRecord) -> TokenInfo:
    return TokenInfo(
        id=token.id, name=token.name, userId=token.user_id, workspaceId=token.workspace_id,
        prefix=prefix_of(TokenKind(token.kind)), createdAt=millis_to_rfc3339(token.created_at) or "",
        createdBy=token.created_by, expiresAt=millis_to_rfc3339(token.expires_at),
        revokedAt=millis_to_rfc3339(token.revoked_at),
    )


@endpoint(blueprint, "POST", "/tokens", summary="Issue a personal access token (admin); the secret is shown once",
          tag="tokens", body=TokenCreate, response=TokenCreated, status=201,
          errors=(400, 401, 403, 404, 413, 422, 429))
async def create_token() -> Response:
    principal = await require_user(Role.ADMIN)
    body = await json_body(TokenCreate)
    svc = services()
    assert principal.user_id is not None
    user_id = body.userId or principal.user_id
    if user_id != principal.user_id:
        role = await svc.store.member_role(principal.workspace_id, user_id)
        if role is None:
            raise Unprocessable("userId is not a member of this workspace", field="userId")
        if Role.named(role) is Role.OWNER:
            require_role(principal, Role.OWNER, "issuing a token for an owner")
    now = svc.clock.now()
    secret = generate_token(TokenKind.PAT)
    expires = None if body.expiresInSeconds is None else now + timedelta(seconds=body.expiresInSeconds)
    record = TokenRecord(
        id=new_id("pat", now), kind=TokenKind.PAT.value, token_hash=hash_token(secret),
        workspace_id=principal.workspace_id, user_id=user_id, agent_id=None, name=body.name,
        created_at=to_millis(now), expires_at=None if expires is None else to_millis(expires),
        # never a token that reaches further than the caller's own (``auth.creator_for``)
        created_by=creator_for(caller_token(), user_id),
        invitation_id=invitation_for(caller_token(), user_id),
    )
    await svc.store.insert_token(record)
    note_target(record.id)
    return respond(TokenCreated(**token_view(record).model_dump(), token=secret), 201)


@endpoint(blueprint, "GET", "/tokens", summary="List the workspace's personal access tokens (no secrets)",
          tag="tokens", response=Page[TokenInfo],
          query=(QueryParam("limit", {"type": "integer", "minimum": 1, "maximum": 500}),
                 CURSOR))
async def list_tokens() -> Response:
    principal = await require_user()
    limit = query_limit()
    before = decode_cursor(request.args.get("cursor"))
    found = await services().store.list_tokens(principal.workspace_id, TokenKind.PAT.value, limit=limit + 1,
                                               before_id=before)
    page, cursor = split_page(found, limit)
    return respond(Page[TokenInfo](items=[token_view(t) for t in page], nextCursor=cursor))


@endpoint(blueprint, "DELETE", "/tokens/<token_id>", summary="Revoke a personal access token (idempotent)",
          tag="tokens", response=TokenInfo, errors=(401, 403, 404, 429))
async def revoke_token(token_id: str) -> Response:
    principal = await require_user()
    svc = services()
    token = await svc.store.get_token(principal.workspace_id, token_id)
    if token is None or token.kind != TokenKind.PAT.value:
        raise NotFound("no such token", code="token_not_found")
    if token.user_id != principal.user_id and (principal.role is None or principal.role < Role.ADMIN):
        raise Forbidden("revoking another user's token needs the admin role", code="insufficient_role")
    revoked = await svc.store.revoke_token(principal.workspace_id, token_id, to_millis(svc.clock.now()))
    if revoked is None:
        raise NotFound("no such token", code="token_not_found")
    return respond(token_view(revoked))

