"""``/v0/workspaces``: create, list, read, patch; members: invite, list, change, remove.

Roles, exactly as the contract says: members read; admins patch name and region and manage
members, but never owners (they cannot grant ``owner``, nor change or remove an owner); owners
also grant ``owner`` and change the plan. No change may leave a workspace without an owner.
"""

from __future__ import annotations

from datetime import timedelta

from quart import Blueprint, Response, request

from common.clock import millis_to_rfc3339, to_millis, to_rfc3339
from common.errors import Conflict, NotFound, Unprocessable
from common.ids import new_id
from common.models import (
    Invitation,
    Member,
    MemberInvite,
    MemberInvited,
    MemberPatch,
    Page,
    Workspace,
    WorkspaceCreate,
    WorkspacePatch,
)
from coordinator.api.http import CURSOR, decode_cursor, json_body, query_limit, respond, split_page
from coordinator.api.registry import QueryParam, endpoint
from coordinator.audit import note_target
from coordinator.auth import Principal, Role, require_account, require_role, require_user
from coordinator.context import services
from coordinator.store.base import InvitationRecord, MemberRecord, MembershipConflict, WorkspaceRecord
from coordinator.tokens import TokenKind, generate_token, hash_token

blueprint = Blueprint("workspaces", __name__, url_prefix="/v0")

_PAGING = (QueryParam("limit", {"type": "integer", "minimum": 1, "maximum": 500, "default": 50}),
           CURSOR)


def workspace_view(workspace: WorkspaceRecord, role: str) -> Workspace:
    return Workspace(id=workspace.id, name=workspace.name, plan=workspace.plan,  # type: ignore[arg-type]
                     defaultRegion=workspace.default_region, maxMemberPriority=workspace.max_member_priority,
                     createdAt=millis_to_rfc3339(workspace.created_at) or "", role=role)  # type: ignore[arg-type]


def member_view(member: MemberRecord) -> Member:
    return Member(userId=member.user_id, email=member.email, role=member.role,  # type: ignore[arg-type]
                  createdAt=millis_to_rfc3339(member.created_at) or "",
                  status="invited" if member.invited else "active")


@endpoint(blueprint, "POST", "/workspaces", summary="Create a workspace; the caller becomes its owner",
          tag="workspaces", body=WorkspaceCreate, response=Workspace, status=201,
          errors=(400, 401, 413, 422, 429))
async def create_workspace() -> Response:
    account = await require_account(creates_workspace=True)
    body = await json_body(WorkspaceCreate)
    svc = services()
    now = svc.clock.now()
    record = WorkspaceRecord(id=new_id("ws", now), name=body.name, plan=svc.settings.default_plan,
                             default_region=body.defaultRegion, created_at=to_millis(now))
    # A login that began with an invitation reaches the workspaces it creates (``auth.reaches``).
    await svc.store.create_workspace(record, account.user_id, account.token.invitation_id)
    note_target(record.id)
    return respond(workspace_view(record, "owner"), 201)


@endpoint(blueprint, "GET", "/workspaces", summary="List the workspaces the caller belongs to", tag="workspaces",
          response=Page[Workspace], query=_PAGING)
async def list_workspaces() -> Response:
    account = await require_account()
    limit = query_limit()
    before = decode_cursor(request.args.get("cursor"))
    # A login that began with an invitation lists only what it reaches (``auth.reaches``).
    found = await services().store.list_user_workspaces(account.user_id, limit=limit + 1, before_id=before,
                                                        invitation_id=account.token.invitation_id)
    if account.bound_workspace is not None:  # a bound token does not even learn the others' names
        found = [w for w in found if w.id == account.bound_workspace]
    page, cursor = split_page(found, limit)
    return respond(Page[Workspace](items=[workspace_view(w, w.role or "member") for w in page], nextCursor=cursor))


async def _workspace(principal: Principal) -> WorkspaceRecord:
    found = await services().store.get_workspace(principal.workspace_id)
    if found is None:  # deleted between the membership check and now
        raise NotFound("no such workspace", code="workspace_not_found")
    return found


@endpoint(blueprint, "GET", "/workspaces/<workspace_id>", summary="Get a workspace", tag="workspaces",
          response=Workspace)
async def get_workspace(workspace_id: str) -> Response:
    principal = await require_user(workspace_id=workspace_id)
    assert principal.role is not None
    return respond(workspace_view(await _workspace(principal), principal.role.label))


@endpoint(blueprint, "PATCH", "/workspaces/<workspace_id>",
          summary="Change a workspace's name, default region or member priority maximum (admin) or plan (owner)",
          tag="workspaces",
          body=WorkspacePatch, response=Workspace, errors=(400, 401, 403, 404, 413, 422, 429))
async def update_workspace(workspace_id: str) -> Response:
    principal = await require_user(Role.ADMIN, workspace_id=workspace_id)
    body = await json_body(WorkspacePatch)
    given = body.model_fields_set
    changes: dict[str, object] = {}
    if "name" in given:
        if body.name is None:
            raise Unprocessable("name cannot be null", field="name")
        changes["name"] = body.name
    if "defaultRegion" in given:
        changes["default_region"] = body.defaultRegion
    if "plan" in given:
        require_role(principal, Role.OWNER, "changing the plan")
        if body.plan is None:
            raise Unprocessable("plan cannot be null", field="plan")
        changes["plan"] = body.plan
    if "maxMemberPriority" in given:
        if body.maxMemberPriority is None:
            raise Unprocessable("maxMemberPriority cannot be null", field="maxMemberPriority")
        changes["max_member_priority"] = body.maxMemberPriority
    updated = await services().store.update_workspace(principal.workspace_id, changes)
    if updated is None:
        raise NotFound("no such workspace", code="workspace_not_found")
    assert principal.role is not None
    return respond(workspace_view(updated, principal.role.label))


# --- members ---------------------------------------------------------------------------------

def _guard_member_change(principal: Principal, current: Role | None, wanted: Role | None) -> None:
    """Admins manage members and admins; touching an owner, or making one, needs an owner."""
    if wanted is Role.OWNER:
        require_role(principal, Role.OWNER, "granting the owner role")
    if current is Role.OWNER:
        require_role(principal, Role.OWNER, "changing an owner")


def _conflict(exc: MembershipConflict) -> Conflict:
    return Conflict(exc.message, code=exc.code)


@endpoint(blueprint, "POST", "/workspaces/<workspace_id>/members",
          summary="Invite a member; returns the membership and a one-time invitation code", tag="members",
          body=MemberInvite, response=MemberInvited, status=201, errors=(400, 401, 403, 404, 409, 413, 422, 429))
async def invite_member(workspace_id: str) -> Response:
    principal = await require_user(Role.ADMIN, workspace_id=workspace_id)
    body = await json_body(MemberInvite)
    _guard_member_change(principal, None, Role.named(body.role))
    svc = services()
    now = svc.clock.now()
    code = generate_token(TokenKind.INVITATION)
    expires = now + timedelta(seconds=svc.settings.invitation_ttl_seconds)
    invitation = InvitationRecord(
        id=new_id("inv", now), workspace_id=principal.workspace_id, user_id="", code_hash=hash_token(code),
        role=body.role, created_by=principal.user_id, created_at=to_millis(now), expires_at=to_millis(expires),
    )
    try:
        member = await svc.store.invite_member(workspace_id=principal.workspace_id, email=body.email.lower(),
                                               role=body.role, new_user_id=new_id("usr", now),
                                               invitation=invitation)
    except MembershipConflict as exc:
        raise _conflict(exc) from exc
    note_target(member.user_id)
    issued = Invitation(id=invitation.id, code=code, expiresAt=to_rfc3339(expires))
    return respond(MemberInvited(member=member_view(member), invitation=issued), 201)


@endpoint(blueprint, "GET", "/workspaces/<workspace_id>/members", summary="List members", tag="members",
          response=Page[Member], query=_PAGING)
async def list_members(workspace_id: str) -> Response:
    principal = await require_user(workspace_id=workspace_id)
    limit = query_limit()
    before = decode_cursor(request.args.get("cursor"))
    found = await services().store.list_members(principal.workspace_id, limit=limit + 1, before_id=before)
    page, cursor = split_page(found, limit, key=lambda member: member.user_id)
    return respond(Page[Member](items=[member_view(m) for m in page], nextCursor=cursor))


async def _member(principal: Principal, user_id: str) -> MemberRecord:
    member = await services().store.get_member(principal.workspace_id, user_id)
    if member is None:
        raise NotFound("no such member", code="member_not_found")
    return member


@endpoint(blueprint, "PATCH", "/workspaces/<workspace_id>/members/<user_id>", summary="Change a member's role",
          tag="members", body=MemberPatch, response=Member, errors=(400, 401, 403, 404, 409, 413, 422, 429))
async def update_member(workspace_id: str, user_id: str) -> Response:
    principal = await require_user(Role.ADMIN, workspace_id=workspace_id)
    body = await json_body(MemberPatch)
    current = await _member(principal, user_id)
    _guard_member_change(principal, Role.named(current.role), Role.named(body.role))
    try:
        updated = await services().store.set_member_role(principal.workspace_id, user_id, body.role)
    except MembershipConflict as exc:
        raise _conflict(exc) from exc
    if updated is None:
        raise NotFound("no such member", code="member_not_found")
    return respond(member_view(updated))


@endpoint(blueprint, "DELETE", "/workspaces/<workspace_id>/members/<user_id>",
          summary="Remove a member (and revoke their open invitation)", tag="members", status=204,
          errors=(401, 403, 404, 409, 429))
async def remove_member(workspace_id: str, user_id: str) -> Response:
    principal = await require_user(Role.ADMIN, workspace_id=workspace_id)
    current = await _member(principal, user_id)
    _guard_member_change(principal, Role.named(current.role), None)
    svc = services()
    try:
        removed = await svc.store.remove_member(principal.workspace_id, user_id, to_millis(svc.clock.now()))
    except MembershipConflict as exc:
        raise _conflict(exc) from exc
    if not removed:
        raise NotFound("no such member", code="member_not_found")
    return Response("", status=204)
