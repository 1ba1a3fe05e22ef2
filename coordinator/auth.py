"""Who is calling: resolve the bearer token to a principal and its active workspace."""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

from quart import g, request

from common.clock import to_millis
from common.errors import Forbidden, NotFound, Unauthorized
from coordinator.context import services
from coordinator.store.base import TokenRecord
from coordinator.tokens import TokenKind, hash_token, hashes_equal


class Role(IntEnum):
    MEMBER = 1
    ADMIN = 2
    OWNER = 3


@dataclass(frozen=True)
class Principal:
    token_id: str
    user_id: str | None
    agent_id: str | None
    workspace_id: str
    role: Role | None

    @property
    def actor(self) -> str:
        return self.user_id or self.agent_id or self.token_id


async def _token_from_header(accepted: set[TokenKind]) -> TokenRecord:
    header = request.headers.get("Authorization", "")
    scheme, _, secret = header.partition(" ")
    if scheme.lower() != "bearer" or not secret.strip():
        raise Unauthorized("send a bearer token in the Authorization header", code="missing_token")
    secret = secret.strip()
    digest = hash_token(secret)
    svc = services()
    record = await svc.store.find_token(digest)
    now = to_millis(svc.clock.now())
    if (
        record is None
        or not hashes_equal(record.token_hash, digest)
        or TokenKind(record.kind) not in accepted
        or record.revoked_at is not None
        or (record.expires_at is not None and record.expires_at <= now)
    ):
        raise Unauthorized("the token is invalid, expired or revoked", code="invalid_token")
    return record


async def require_user(minimum: Role = Role.MEMBER) -> Principal:
    """The calling user in the active workspace, with at least ``minimum`` role.

    Raises 401 for a bad token, 404 for a workspace the caller cannot see, 403 for too low a role.
    """
    record = await _token_from_header({TokenKind.PAT, TokenKind.ACCESS})
    assert record.user_id is not None
    workspace_id = request.headers.get("X-Compute-Workspace") or record.workspace_id
    role_name = await services().store.member_role(workspace_id, record.user_id)
    if role_name is None:
        raise NotFound("no such workspace", code="workspace_not_found")
    role = Role[role_name.upper()]
    principal = Principal(record.id, record.user_id, None, workspace_id, role)
    g.principal = principal
    if role < minimum:
        raise Forbidden(f"this needs the {minimum.name.lower()} role", code="insufficient_role")
    return principal


async def require_agent() -> Principal:
    record = await _token_from_header({TokenKind.AGENT})
    principal = Principal(record.id, None, record.agent_id, record.workspace_id, None)
    g.principal = principal
    return principal


async def require_registration_token() -> TokenRecord:
    return await _token_from_header({TokenKind.REGISTRATION})
