"""Offline administration on the coordinator host: mint an owner PAT or a registration token
straight into the store, for an operator who has lost the ones ``init`` showed once.

Whoever can read the data dir already holds every secret the coordinator has, so the host is
trusted; nothing here goes through the API. Each mint writes an audit row in the workspace
(actor ``host-admin:<unix user>``), so members see it in ``tanvrit-compute audit``.
"""

from __future__ import annotations

import getpass
import socket
from dataclasses import dataclass

from common.clock import Clock, to_millis
from common.ids import new_id
from coordinator.store.base import AuditRecord, Store, TokenRecord, WorkspaceRecord
from coordinator.tokens import TokenKind, generate_token, hash_token

MINT_TOKEN_ACTION = "admin.token.create"
MINT_REGISTRATION_ACTION = "admin.registration_token.create"


class AdminError(Exception):
    """A request the store cannot satisfy (no such workspace, no or several owners); says why."""


@dataclass(frozen=True)
class Minted:
    workspace_id: str
    token_id: str
    token: str
    user_id: str | None
    email: str | None

    def as_json(self) -> dict[str, str | None]:
        return {"workspaceId": self.workspace_id, "tokenId": self.token_id, "token": self.token,
                "userId": self.user_id, "email": self.email}


def admin_actor() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry for this uid (containers)
        user = "unknown"
    return f"host-admin:{user}"


async def _workspace(store: Store, workspace_id: str | None) -> WorkspaceRecord:
    if workspace_id is None:
        found = await store.first_workspace()
        if found is None:
            raise AdminError("the store is empty: run `tanvrit-coordinator init` first")
        return found
    workspace = await store.get_workspace(workspace_id)
    if workspace is None:
        raise AdminError(f"no workspace {workspace_id} in this store")
    return workspace


async def _owner(store: Store, workspace_id: str, owner: str | None) -> tuple[str, str]:
    owners: list[tuple[str, str]] = []
    before: str | None = None
    while True:
        page = await store.list_members(workspace_id, limit=500, before_id=before)
        owners += [(m.user_id, m.email) for m in page if m.role == "owner" and not m.invited]
        if len(page) < 500:
            break
        before = page[-1].user_id
    if owner is not None:
        chosen = [o for o in owners if owner in o]
        if not chosen:
            raise AdminError(f"{owner} is not an owner of workspace {workspace_id} "
                             f"(owners: {', '.join(email for _, email in owners) or 'none'})")
        return chosen[0]
    if len(owners) != 1:
        listed = ", ".join(f"{email} ({user_id})" for user_id, email in owners) or "none"
        raise AdminError(f"workspace {workspace_id} has {len(owners)} owners ({listed}): pick one with --owner")
    return owners[0]


async def _audit(store: Store, clock: Clock, workspace_id: str, action: str, target: str, path: str) -> None:
    now = clock.now()
    await store.append_audit(AuditRecord(
        id=new_id("aud", now), workspace_id=workspace_id, at=to_millis(now), actor=admin_actor(), action=action,
        target=target, result="success", status=201, error_code=None, request_id=new_id("req", now),
        source=socket.gethostname(), method="ADMIN", path=path,
    ))


async def mint_owner_token(store: Store, clock: Clock, *, workspace_id: str | None, owner: str | None,
                           name: str) -> Minted:
    """A new PAT for an owner (``owner``: a user id or email; default the only owner) of the
    workspace (default: the one ``init`` created). Raises ``AdminError``."""
    workspace = await _workspace(store, workspace_id)
    user_id, email = await _owner(store, workspace.id, owner)
    now = clock.now()
    secret = generate_token(TokenKind.PAT)
    record = TokenRecord(id=new_id("pat", now), kind=TokenKind.PAT.value, token_hash=hash_token(secret),
                         workspace_id=workspace.id, user_id=user_id, agent_id=None, name=name,
                         created_at=to_millis(now))
    await store.insert_token(record)
    await _audit(store, clock, workspace.id, MINT_TOKEN_ACTION, record.id, "tanvrit-coordinator admin mint-token")
    return Minted(workspace.id, record.id, secret, user_id, email)


async def mint_registration_token(store: Store, clock: Clock, *, workspace_id: str | None, name: str) -> Minted:
    """A new agent registration token for the workspace (default: the one ``init`` created)."""
    workspace = await _workspace(store, workspace_id)
    now = clock.now()
    secret = generate_token(TokenKind.REGISTRATION)
    record = TokenRecord(id=new_id("tok", now), kind=TokenKind.REGISTRATION.value, token_hash=hash_token(secret),
                         workspace_id=workspace.id, user_id=None, agent_id=None, name=name,
                         created_at=to_millis(now))
    await store.insert_token(record)
    await _audit(store, clock, workspace.id, MINT_REGISTRATION_ACTION, record.id,
                 "tanvrit-coordinator admin registration-token")
    return Minted(workspace.id, record.id, secret, None, None)
