"""``/v0/sessions``: the web console's sign-in and sign-out.

A session is a token of kind ``session``, stored hashed in the tokens table like every other
token: it expires (``auth.console_session_ttl_seconds``, never past the PAT it came from),
it is revoked at sign-out, and revoking its PAT revokes it too (it is the PAT's child). Its
secret travels only in the ``HttpOnly`` ``SameSite=Strict`` cookie this endpoint sets, never in
a response body or a URL, and the API accepts it only from that cookie (``coordinator.auth``).
Everything the console then shows or changes goes through the same ``/v0`` handlers, with the
same role and workspace checks, as the CLI.
"""

from __future__ import annotations

from datetime import timedelta

from quart import Blueprint, Response, request

from common.clock import millis_to_rfc3339, to_millis
from common.errors import Unauthorized, Unprocessable
from common.ids import new_id
from common.models import SessionCreate, SessionCreated
from coordinator.api.http import json_body, require_json_media_type, respond
from coordinator.api.registry import endpoint
from coordinator.audit import note_actor, note_target
from coordinator.auth import SESSION_COOKIE, bearer_secret, check_token, require_account
from coordinator.context import services
from coordinator.store.base import TokenRecord
from coordinator.tokens import TokenKind, csrf_token_for, generate_token, hash_token

blueprint = Blueprint("sessions", __name__, url_prefix="/v0")

_NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


def _set_cookie(response: Response, secret: str, max_age: int) -> None:
    response.set_cookie(SESSION_COOKIE, secret, max_age=max_age, path="/", httponly=True,
                        secure=request.scheme == "https", samesite="Strict")


@endpoint(blueprint, "POST", "/sessions",
          summary="Sign in to the web console with a PAT or an invitation code; sets the session cookie",
          tag="auth", body=SessionCreate, response=SessionCreated, status=201, public=True,
          errors=(400, 401, 413, 415, 422))
async def create_session() -> Response:
    # Login CSRF: a form on another site could post {"pat": "<the attacker's>"} as text/plain
    # and sign the victim's browser in as the attacker (a top-level navigation's response may set
    # a SameSite=Strict cookie), to watch what they then submit.
    require_json_media_type()
    body = await json_body(SessionCreate)
    if (body.pat is None) == (body.invitationCode is None):
        raise Unprocessable("send exactly one of pat and invitationCode", field="pat")
    svc = services()
    now = svc.clock.now()
    expires = to_millis(now + timedelta(seconds=svc.settings.console_session_ttl_seconds))
    secret = generate_token(TokenKind.SESSION)
    session = TokenRecord(
        id=new_id("tok", now), kind=TokenKind.SESSION.value, token_hash=hash_token(secret), workspace_id="",
        user_id=None, agent_id=None, name="console session", created_at=to_millis(now), expires_at=expires,
    )
    if body.pat is not None:
        pat = await check_token(body.pat, {TokenKind.PAT})
        if pat is None:
            raise Unauthorized("the token is invalid, expired or revoked", code="invalid_token")
        if pat.expires_at is not None:
            expires = min(expires, pat.expires_at)
        session = TokenRecord(
            id=session.id, kind=session.kind, token_hash=session.token_hash, workspace_id=pat.workspace_id,
            user_id=pat.user_id, agent_id=None, name=session.name, created_at=session.created_at,
            expires_at=expires, parent_id=pat.id,
            # A PAT an admin minted for the user is bound to its workspace; so is its session.
            created_by=pat.created_by, invitation_id=pat.invitation_id,
        )
        await svc.store.insert_token(session)
        workspace_id, user_id = pat.workspace_id, pat.user_id
    else:
        assert body.invitationCode is not None
        invitation = await svc.store.redeem_invitation(hash_token(body.invitationCode), to_millis(now), [session])
        if invitation is None:
            raise Unauthorized("the invitation code is invalid, expired, revoked or already used",
                               code="invalid_invitation")
        workspace_id, user_id = invitation.workspace_id, invitation.user_id
    assert user_id is not None
    note_actor(workspace_id, user_id)
    note_target(session.id)
    response = respond(SessionCreated(userId=user_id, workspaceId=workspace_id,
                                      expiresAt=millis_to_rfc3339(expires) or "", csrfToken=csrf_token_for(secret)),
                       201, _NO_STORE)
    _set_cookie(response, secret, max(0, (expires - to_millis(now)) // 1000))
    return response


@endpoint(blueprint, "DELETE", "/sessions/current", summary="Sign out: revoke the console session and clear its cookie",
          tag="auth", status=204, errors=(401, 403))
async def delete_session() -> Response:
    secret = request.cookies.get(SESSION_COOKIE)
    if secret is None or bearer_secret() is not None:
        raise Unauthorized("there is no console session to end", code="missing_session")
    # About the session, not a workspace: signing out works also for a user since removed from
    # the session's workspace (whose session still reaches their other workspaces).
    session = (await require_account()).token
    svc = services()
    await svc.store.revoke_token(session.workspace_id, session.id, to_millis(svc.clock.now()),
                                 kind=TokenKind.SESSION.value)
    note_target(session.id)
    response = Response("", status=204, headers=_NO_STORE)
    _set_cookie(response, "", 0)
    return response


@endpoint(blueprint, "GET", "/sessions/current", summary="The console session's user, default workspace and CSRF token",
          tag="auth", response=SessionCreated, errors=(401,))
async def get_session() -> Response:
    secret = request.cookies.get(SESSION_COOKIE)
    if secret is None or bearer_secret() is not None:
        raise Unauthorized("there is no console session; sign in at /ui/", code="missing_session")
    account = await require_account()  # a live session, whichever workspaces its user is still in
    session = account.token
    return respond(SessionCreated(userId=account.user_id, workspaceId=session.workspace_id,
                                  expiresAt=millis_to_rfc3339(session.expires_at) or "",
                                  csrfToken=csrf_token_for(secret)), headers=_NO_STORE)
