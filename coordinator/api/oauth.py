"""``POST /v0/oauth/token`` (RFC 6749) and ``POST /v0/invitations:redeem``.

Grants:

- ``refresh_token``: exchanges a refresh token for a new access token **and a new refresh
  token**; the old refresh token dies at once (rotation). Presenting a refresh token that was
  already rotated revokes its whole family, the live refresh token and the access tokens minted
  from it included: two holders of one refresh token means one of them stole it.
- ``client_credentials``: the client secret is a PAT (``client_id``, if sent, is the PAT's id;
  HTTP Basic client authentication works too). Returns an access token only, which dies with
  the PAT. Headless callers can keep the PAT and ask for short-lived tokens as needed.

Access tokens live ``auth.access_token_ttl_seconds`` (15 minutes by default). An invitation
code is redeemed once, for the invitee's own first refresh token and access token; that is
how a new member logs in (``tanvrit-compute auth login``).

Both endpoints take no bearer token; errors use the API's envelope with RFC 6749's codes
(``invalid_request``, ``invalid_grant``, ``unsupported_grant_type``; ``invalid_client`` is 401).
"""

from __future__ import annotations

import base64
import binascii
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, unquote

from quart import Blueprint, Response, request

from common.clock import to_millis
from common.errors import BadRequest, Unauthorized
from common.ids import new_id
from common.models import InvitationRedeem, InvitationRedeemed, OAuthToken, OAuthTokenRequest, parse_body
from coordinator.api.http import decode_json, json_body, raw_body, respond
from coordinator.api.registry import endpoint
from coordinator.audit import note_actor, note_target
from coordinator.auth import check_token
from coordinator.context import services
from coordinator.store.base import TokenRecord
from coordinator.tokens import TokenKind, generate_token, hash_token

blueprint = Blueprint("oauth", __name__, url_prefix="/v0")

_NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


async def _grant_request() -> OAuthTokenRequest:
    data = await raw_body()
    content_type = (request.mimetype or "").lower()
    payload: Any
    if content_type == "application/x-www-form-urlencoded":
        try:
            fields = parse_qs(data.decode(), keep_blank_values=True, strict_parsing=bool(data))
        except (UnicodeDecodeError, ValueError) as exc:
            raise BadRequest("the form body cannot be parsed", code="invalid_request") from exc
        repeated = sorted(name for name, values in fields.items() if len(values) > 1)
        if repeated:
            raise BadRequest(f"{repeated[0]} is given more than once", code="invalid_request", field=repeated[0])
        payload = {name: values[0] for name, values in fields.items()}
    else:
        payload = decode_json(data)
    return parse_body(OAuthTokenRequest, payload)


def _basic_client() -> tuple[str, str] | None:
    header = request.headers.get("Authorization", "")
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        client_id, sep, secret = base64.b64decode(encoded.strip(), validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError) as exc:
        raise Unauthorized("the Basic client credentials cannot be decoded", code="invalid_client") from exc
    if not sep:
        raise Unauthorized("the Basic client credentials cannot be decoded", code="invalid_client")
    return unquote(client_id), unquote(secret)


def _new_access(now: datetime, ttl: int, *, workspace_id: str, user_id: str | None, parent_id: str,
                cap_ms: int | None = None, created_by: str | None = None,
                invitation_id: str | None = None) -> tuple[str, TokenRecord, int]:
    secret = generate_token(TokenKind.ACCESS)
    expires = to_millis(now + timedelta(seconds=ttl))
    if cap_ms is not None:
        expires = min(expires, cap_ms)
    record = TokenRecord(
        id=new_id("tok", now), kind=TokenKind.ACCESS.value, token_hash=hash_token(secret), workspace_id=workspace_id,
        user_id=user_id, agent_id=None, name="oauth access token", created_at=to_millis(now), expires_at=expires,
        parent_id=parent_id, created_by=created_by, invitation_id=invitation_id,
    )
    return secret, record, max(0, (expires - to_millis(now)) // 1000)


def _new_refresh(now: datetime, ttl: int) -> tuple[str, TokenRecord]:
    secret = generate_token(TokenKind.REFRESH)
    token_id = new_id("tok", now)
    record = TokenRecord(
        id=token_id, kind=TokenKind.REFRESH.value, token_hash=hash_token(secret), workspace_id="", user_id=None,
        agent_id=None, name="oauth refresh token", created_at=to_millis(now),
        expires_at=to_millis(now + timedelta(seconds=ttl)), family_id=token_id,
    )
    return secret, record


@endpoint(blueprint, "POST", "/oauth/token", summary="OAuth 2.0 token endpoint (refresh_token, client_credentials)",
          tag="auth", body=OAuthTokenRequest, response=OAuthToken, public=True, errors=(400, 401, 413))
async def issue_token() -> Response:
    grant = await _grant_request()
    if grant.grant_type == "refresh_token":
        return await _refresh_grant(grant)
    if grant.grant_type == "client_credentials":
        return await _client_credentials_grant(grant)
    raise BadRequest(f"grant_type {grant.grant_type!r} is not supported; use refresh_token or client_credentials",
                     code="unsupported_grant_type", field="grant_type")


async def _refresh_grant(grant: OAuthTokenRequest) -> Response:
    if grant.refresh_token is None:
        raise BadRequest("refresh_token is required for this grant", code="invalid_request", field="refresh_token")
    svc = services()
    digest = hash_token(grant.refresh_token)
    presented = await svc.store.find_token(digest)
    if presented is not None and presented.kind == TokenKind.REFRESH.value:
        note_actor(presented.workspace_id, presented.user_id)
    now = svc.clock.now()
    refresh_secret, refresh = _new_refresh(now, svc.settings.refresh_token_ttl_seconds)
    access_secret, access, expires_in = _new_access(now, svc.settings.access_token_ttl_seconds,
                                                    workspace_id="", user_id=None, parent_id="")
    old = await svc.store.rotate_refresh_token(digest, to_millis(now), access, refresh)
    if old is None:
        raise BadRequest("the refresh token is invalid, expired, revoked or already used", code="invalid_grant",
                         field="refresh_token")
    note_target(refresh.id)
    return respond(OAuthToken(access_token=access_secret, expires_in=expires_in, refresh_token=refresh_secret),
                   headers=_NO_STORE)


async def _client_credentials_grant(grant: OAuthTokenRequest) -> Response:
    client_id, secret = grant.client_id, grant.client_secret
    basic = _basic_client()
    if basic is not None:
        client_id, secret = basic
    if not secret:
        raise Unauthorized("client_secret (a personal access token) is required", code="invalid_client")
    pat = await check_token(secret, {TokenKind.PAT})
    if pat is None or (client_id and client_id != pat.id):
        raise Unauthorized("the client credentials are invalid, expired or revoked", code="invalid_client")
    note_actor(pat.workspace_id, pat.user_id)
    svc = services()
    now = svc.clock.now()
    access_secret, access, expires_in = _new_access(now, svc.settings.access_token_ttl_seconds,
                                                    workspace_id=pat.workspace_id, user_id=pat.user_id,
                                                    parent_id=pat.id, cap_ms=pat.expires_at,
                                                    # inherits the PAT's reach (``auth.bound_workspace``)
                                                    created_by=pat.created_by, invitation_id=pat.invitation_id)
    await svc.store.insert_token(access)
    note_target(access.id)
    return respond(OAuthToken(access_token=access_secret, expires_in=expires_in), headers=_NO_STORE)


@endpoint(blueprint, "POST", "/invitations:redeem",
          summary="Redeem a one-time invitation code for the invitee's own refresh and access tokens",
          tag="auth", body=InvitationRedeem, response=InvitationRedeemed, public=True, errors=(400, 401, 413, 422))
async def redeem_invitation() -> Response:
    body = await json_body(InvitationRedeem)
    svc = services()
    now = svc.clock.now()
    refresh_secret, refresh = _new_refresh(now, svc.settings.refresh_token_ttl_seconds)
    access_secret, access, expires_in = _new_access(now, svc.settings.access_token_ttl_seconds,
                                                    workspace_id="", user_id=None, parent_id=refresh.id)
    invitation = await svc.store.redeem_invitation(hash_token(body.code), to_millis(now), [refresh, access])
    if invitation is None:
        raise Unauthorized("the invitation code is invalid, expired, revoked or already used",
                           code="invalid_invitation")
    note_actor(invitation.workspace_id, invitation.user_id)
    note_target(invitation.id)
    token = OAuthToken(access_token=access_secret, expires_in=expires_in, refresh_token=refresh_secret)
    return respond(InvitationRedeemed(userId=invitation.user_id, workspaceId=invitation.workspace_id,
                                      role=invitation.role, token=token),  # type: ignore[arg-type]
                   headers=_NO_STORE)
