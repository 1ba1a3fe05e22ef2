"""Queries for users, workspaces, memberships, invitations and tokens.

Rules that must hold under concurrency (never remove the last owner, redeem an invitation
once, rotate a refresh token once) are checked inside the write closure, and the change is a
compare-and-set (or, for the last owner, made under the workspace row's lock), so they hold
on a database with concurrent writers too, not only under SQLite's single writer.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from coordinator.store.base import (
    InvitationRecord,
    MemberRecord,
    Membership,
    MembershipConflict,
    TokenRecord,
    WorkspaceRecord,
)
from coordinator.store.db import Row, Tx
from coordinator.store.errors import StaleState
from coordinator.store.sqlite_core import SqliteCore

_WORKSPACE_COLUMNS = {"name": "name", "default_region": "default_region", "plan": "plan",
                      "max_member_priority": "max_member_priority"}

_MEMBER_SELECT = """
    SELECT m.workspace_id, m.user_id, u.email, m.role, m.created_at,
           EXISTS (SELECT 1 FROM invitations i
                   WHERE i.workspace_id = m.workspace_id AND i.user_id = m.user_id
                     AND i.redeemed_at IS NULL AND i.revoked_at IS NULL AND i.account_existed = 0) AS invited
    FROM memberships m JOIN users u ON u.id = m.user_id
"""


class IdentityQueries(SqliteCore):
    async def is_empty(self) -> bool:
        return not await self._read("SELECT 1 FROM users LIMIT 1")

    async def bootstrap(self, *, user_id: str, email: str, workspace_id: str, workspace_name: str,
                        plan: str, tokens: list[TokenRecord], now: int) -> bool:
        def write(tx: Tx) -> bool:
            # Replicas starting at once on an empty database: the first insert wins, the others
            # (PostgreSQL: waiting on the key until the winner commits) change nothing.
            won = tx.execute("INSERT INTO cluster_bootstrap (id, done_at) VALUES (1, ?) ON CONFLICT (id) DO NOTHING",
                               (now,)).rowcount
            if not won:
                return False
            tx.execute("INSERT INTO users (id, email, created_at) VALUES (?, ?, ?)", (user_id, email, now))
            tx.execute(
                "INSERT INTO workspaces (id, name, plan, created_at) VALUES (?, ?, ?, ?)",
                (workspace_id, workspace_name, plan, now),
            )
            tx.execute(
                "INSERT INTO memberships (workspace_id, user_id, role, created_at) VALUES (?, ?, 'owner', ?)",
                (workspace_id, user_id, now),
            )
            for token in tokens:
                insert_token_row(tx, token)
            return True

        return await self._write(write)

    async def find_token(self, token_hash: str) -> TokenRecord | None:
        rows = await self._read("SELECT * FROM tokens WHERE token_hash = ?", (token_hash,))
        return _token(rows[0]) if rows else None

    async def insert_token(self, token: TokenRecord) -> None:
        await self._write(lambda tx: insert_token_row(tx, token))

    async def member_role(self, workspace_id: str, user_id: str) -> str | None:
        rows = await self._read(
            "SELECT role FROM memberships WHERE workspace_id = ? AND user_id = ?", (workspace_id, user_id)
        )
        return str(rows[0]["role"]) if rows else None

    async def membership(self, workspace_id: str, user_id: str) -> Membership | None:
        rows = await self._read(
            """SELECT m.role, m.invitation_id, w.plan FROM memberships m JOIN workspaces w ON w.id = m.workspace_id
               WHERE m.workspace_id = ? AND m.user_id = ?""",
            (workspace_id, user_id),
        )
        if not rows:
            return None
        return Membership(workspace_id, user_id, rows[0]["role"], rows[0]["plan"], rows[0]["invitation_id"])

    # --- workspaces -----------------------------------------------------------------------
    async def create_workspace(self, workspace: WorkspaceRecord, owner_id: str,
                               invitation_id: str | None = None) -> None:
        def write(tx: Tx) -> None:
            tx.execute(
                "INSERT INTO workspaces (id, name, plan, default_region, created_at) VALUES (?, ?, ?, ?, ?)",
                (workspace.id, workspace.name, workspace.plan, workspace.default_region, workspace.created_at),
            )
            tx.execute(
                "INSERT INTO memberships (workspace_id, user_id, role, created_at, invitation_id) "
                "VALUES (?, ?, 'owner', ?, ?)",
                (workspace.id, owner_id, workspace.created_at, invitation_id),
            )

        await self._write(write)

    async def get_workspace(self, workspace_id: str) -> WorkspaceRecord | None:
        rows = await self._read("SELECT * FROM workspaces WHERE id = ?", (workspace_id,))
        return _workspace(rows[0]) if rows else None

    async def first_workspace(self) -> WorkspaceRecord | None:
        rows = await self._read("SELECT * FROM workspaces ORDER BY id LIMIT 1")
        return _workspace(rows[0]) if rows else None

    async def list_user_workspaces(self, user_id: str, *, limit: int, before_id: str | None,
                                   invitation_id: str | None = None) -> list[WorkspaceRecord]:
        scoped = "" if invitation_id is None else " AND m.invitation_id = ?"
        rows = await self._read(
            f"""SELECT w.*, m.role FROM memberships m JOIN workspaces w ON w.id = m.workspace_id
                WHERE m.user_id = ? AND w.id < ?{scoped} ORDER BY w.id DESC LIMIT ?""",
            (user_id, before_id or "\uffff", *(() if invitation_id is None else (invitation_id,)), limit),
        )
        return [_workspace(row) for row in rows]

    async def update_workspace(self, workspace_id: str, changes: dict[str, Any]) -> WorkspaceRecord | None:
        unknown = set(changes) - set(_WORKSPACE_COLUMNS)
        if unknown:
            raise ValueError(f"cannot change {sorted(unknown)}")

        def write(tx: Tx) -> None:
            for key, value in changes.items():
                tx.execute(f"UPDATE workspaces SET {_WORKSPACE_COLUMNS[key]} = ? WHERE id = ?",
                             (value, workspace_id))

        if changes:
            await self._write(write)
        return await self.get_workspace(workspace_id)

    # --- members --------------------------------------------------------------------------
    async def invite_member(self, *, workspace_id: str, email: str, role: str, new_user_id: str,
                            invitation: InvitationRecord) -> MemberRecord:
        def write(tx: Tx) -> MemberRecord:
            row = tx.execute("SELECT id FROM users WHERE email = ?", (email,)).fetchone()
            user_id = row["id"] if row else new_user_id
            if row is None:
                tx.execute("INSERT INTO users (id, email, created_at) VALUES (?, ?, ?)",
                             (user_id, email, invitation.created_at))
            elif tx.execute("SELECT 1 FROM memberships WHERE workspace_id = ? AND user_id = ?",
                              (workspace_id, user_id)).fetchone():
                raise MembershipConflict("already_member", f"{email} is already a member of this workspace")
            # The membership counts at once and carries the code's invitation: the login the code
            # yields reaches it and nothing else (``auth.reaches``). For an existing account the
            # account's own logins reach it too (they carry no invitation), while a login another
            # invitation yielded does not: whoever redeemed that code, perhaps the admin of
            # another workspace, must not follow the email here. Nor does this code hand over
            # the account's other workspaces, which its own invitation does not reach.
            tx.execute("INSERT INTO memberships (workspace_id, user_id, role, created_at, invitation_id) "
                       "VALUES (?, ?, ?, ?, ?)", (workspace_id, user_id, role, invitation.created_at, invitation.id))
            tx.execute(
                """INSERT INTO invitations (id, workspace_id, user_id, code_hash, role, created_by, created_at,
                                            expires_at, account_existed) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)""",
                (invitation.id, workspace_id, user_id, invitation.code_hash, role, invitation.created_by,
                 invitation.created_at, invitation.expires_at, 0 if row is None else 1),
            )
            # ``status: invited`` is for an account the code created; an existing one is active.
            return MemberRecord(workspace_id, user_id, email, role, invitation.created_at, invited=row is None)

        return await self._write(write)

    async def list_members(self, workspace_id: str, *, limit: int, before_id: str | None) -> list[MemberRecord]:
        rows = await self._read(
            _MEMBER_SELECT + " WHERE m.workspace_id = ? AND m.user_id < ? ORDER BY m.user_id DESC LIMIT ?",
            (workspace_id, before_id or "\uffff", limit),
        )
        return [_member(row) for row in rows]

    async def get_member(self, workspace_id: str, user_id: str) -> MemberRecord | None:
        rows = await self._read(_MEMBER_SELECT + " WHERE m.workspace_id = ? AND m.user_id = ?", (workspace_id, user_id))
        return _member(rows[0]) if rows else None

    async def set_member_role(self, workspace_id: str, user_id: str, role: str) -> MemberRecord | None:
        def write(tx: Tx) -> bool:
            current = _role(tx, workspace_id, user_id)
            if current is None:
                return False
            if current == "owner" and role != "owner":
                _refuse_last_owner(tx, workspace_id)
            tx.execute("UPDATE memberships SET role = ? WHERE workspace_id = ? AND user_id = ?",
                         (role, workspace_id, user_id))
            tx.execute(
                """UPDATE invitations SET role = ? WHERE workspace_id = ? AND user_id = ?
                   AND redeemed_at IS NULL AND revoked_at IS NULL""", (role, workspace_id, user_id))
            return True

        if not await self._write(write):
            return None
        return await self.get_member(workspace_id, user_id)

    async def remove_member(self, workspace_id: str, user_id: str, now: int) -> bool:
        def write(tx: Tx) -> bool:
            current = _role(tx, workspace_id, user_id)
            if current is None:
                return False
            if current == "owner":
                _refuse_last_owner(tx, workspace_id)
            tx.execute("DELETE FROM memberships WHERE workspace_id = ? AND user_id = ?", (workspace_id, user_id))
            tx.execute(
                """UPDATE invitations SET revoked_at = ? WHERE workspace_id = ? AND user_id = ?
                   AND redeemed_at IS NULL AND revoked_at IS NULL""", (now, workspace_id, user_id))
            # Credentials someone else minted for the user here (``auth.bound_workspace``: an
            # admin's PAT and the sessions and access tokens made from it) end with the
            # membership; else they would come back to life if the user were ever added again.
            tx.execute(
                """UPDATE tokens SET revoked_at = ? WHERE workspace_id = ? AND user_id = ? AND revoked_at IS NULL
                   AND created_by IS NOT NULL AND created_by != user_id""", (now, workspace_id, user_id))
            return True

        return await self._write(write)

    async def redeem_invitation(self, code_hash: str, now: int, tokens: list[TokenRecord]) -> InvitationRecord | None:
        def write(tx: Tx) -> InvitationRecord | None:
            row = tx.execute("SELECT * FROM invitations WHERE code_hash = ?", (code_hash,)).fetchone()
            if row is None or row["redeemed_at"] is not None or row["revoked_at"] is not None:
                return None
            if row["expires_at"] <= now or _role(tx, row["workspace_id"], row["user_id"]) is None:
                return None
            # Compare-and-set: a code is redeemed once, however many redeem it at the same time.
            if tx.execute("UPDATE invitations SET redeemed_at = ? WHERE id = ? AND redeemed_at IS NULL "
                          "AND revoked_at IS NULL", (now, row["id"])).rowcount != 1:
                raise StaleState(f"invitation {row['id']} was redeemed or revoked meanwhile")
            for token in tokens:
                # The login is the invitation's, not the account's (``auth.reaches``).
                insert_token_row(tx, replace(token, user_id=row["user_id"], workspace_id=row["workspace_id"],
                                             invitation_id=row["id"]))
            return _invitation(row)

        return await self._write(write)

    # --- tokens ---------------------------------------------------------------------------
    async def list_tokens(self, workspace_id: str, kind: str, *, limit: int,
                          before_id: str | None) -> list[TokenRecord]:
        rows = await self._read(
            """SELECT * FROM tokens WHERE workspace_id = ? AND kind = ? AND id < ?
               ORDER BY id DESC LIMIT ?""",
            (workspace_id, kind, before_id or "\U0010ffff", limit),
        )
        return [_token(row) for row in rows]

    async def get_token(self, workspace_id: str, token_id: str) -> TokenRecord | None:
        rows = await self._read("SELECT * FROM tokens WHERE id = ? AND workspace_id = ?", (token_id, workspace_id))
        return _token(rows[0]) if rows else None

    async def revoke_token(self, workspace_id: str, token_id: str, now: int, *,
                           kind: str | None = None) -> TokenRecord | None:
        def write(tx: Tx) -> bool:
            row = tx.execute("SELECT * FROM tokens WHERE id = ? AND workspace_id = ?",
                               (token_id, workspace_id)).fetchone()
            if row is None or (kind is not None and row["kind"] != kind):
                return False
            tx.execute("UPDATE tokens SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL", (now, token_id))
            tx.execute("UPDATE tokens SET revoked_at = ? WHERE parent_id = ? AND revoked_at IS NULL",
                         (now, row["family_id"] or token_id))
            return True

        if not await self._write(write):
            return None
        rows = await self._read("SELECT * FROM tokens WHERE id = ?", (token_id,))
        return _token(rows[0])

    async def rotate_refresh_token(self, token_hash: str, now: int, access: TokenRecord,
                                   refresh: TokenRecord) -> TokenRecord | None:
        def write(tx: Tx) -> TokenRecord | None:
            row = tx.execute("SELECT * FROM tokens WHERE token_hash = ? AND kind = 'refresh'",
                               (token_hash,)).fetchone()
            if row is None:
                return None
            old = _token(row)
            family = old.family_id or old.id
            if old.revoked_at is not None:
                # A rotated refresh token came back: one of its holders is not the rightful one.
                _revoke_family(tx, family, now)
                return None
            if old.expires_at is not None and old.expires_at <= now:
                return None
            # Compare-and-set: of two rotations racing with one refresh token, one wins; the
            # other runs again, finds it rotated and revokes the family (a replay).
            if tx.execute("UPDATE tokens SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
                          (now, old.id)).rowcount != 1:
                raise StaleState(f"refresh token {old.id} was rotated meanwhile")
            insert_token_row(tx, replace(refresh, family_id=family, user_id=old.user_id,
                                           workspace_id=old.workspace_id, invitation_id=old.invitation_id))
            insert_token_row(tx, replace(access, parent_id=family, user_id=old.user_id,
                                           workspace_id=old.workspace_id, invitation_id=old.invitation_id))
            return old

        # The refusal (and a family revocation) must commit, so it is signalled by value, not raised.
        return await self._write(write)


def _revoke_family(tx: Tx, family: str, now: int) -> None:
    tx.execute("UPDATE tokens SET revoked_at = ? WHERE (family_id = ? OR parent_id = ?) AND revoked_at IS NULL",
                 (now, family, family))


def _role(tx: Tx, workspace_id: str, user_id: str) -> str | None:
    row = tx.execute("SELECT role FROM memberships WHERE workspace_id = ? AND user_id = ?",
                       (workspace_id, user_id)).fetchone()
    return None if row is None else str(row["role"])


def _refuse_last_owner(tx: Tx, workspace_id: str) -> None:
    # The workspace's row lock (PostgreSQL) orders two owners demoting each other at once;
    # else each would count the other and both go. SQLite's single writer orders them already.
    tx.execute(f"SELECT id FROM workspaces WHERE id = ? {tx.dialect.for_update}", (workspace_id,))
    owners = tx.execute("SELECT COUNT(*) FROM memberships WHERE workspace_id = ? AND role = 'owner'",
                          (workspace_id,)).fetchone()[0]
    if owners <= 1:
        raise MembershipConflict("last_owner", "a workspace must keep at least one owner")


def insert_token_row(tx: Tx, token: TokenRecord) -> None:
    tx.execute(
        """INSERT INTO tokens (id, kind, token_hash, workspace_id, user_id, agent_id, name, created_at,
                               expires_at, revoked_at, family_id, parent_id, created_by, invitation_id)
           VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
        (token.id, token.kind, token.token_hash, token.workspace_id, token.user_id, token.agent_id,
         token.name, token.created_at, token.expires_at, token.revoked_at, token.family_id, token.parent_id,
         token.created_by, token.invitation_id),
    )


def _token(row: Row) -> TokenRecord:
    return TokenRecord(
        id=row["id"], kind=row["kind"], token_hash=row["token_hash"], workspace_id=row["workspace_id"],
        user_id=row["user_id"], agent_id=row["agent_id"], name=row["name"], created_at=row["created_at"],
        expires_at=row["expires_at"], revoked_at=row["revoked_at"], family_id=row["family_id"],
        parent_id=row["parent_id"], created_by=row["created_by"], invitation_id=row["invitation_id"],
    )


def _workspace(row: Row) -> WorkspaceRecord:
    return WorkspaceRecord(
        id=row["id"], name=row["name"], plan=row["plan"], default_region=row["default_region"],
        created_at=row["created_at"], role=row["role"] if "role" in row.keys() else None,  # noqa: SIM118
        max_member_priority=row["max_member_priority"],
    )


def _member(row: Row) -> MemberRecord:
    return MemberRecord(workspace_id=row["workspace_id"], user_id=row["user_id"], email=row["email"],
                        role=row["role"], created_at=row["created_at"], invited=bool(row["invited"]))


def _invitation(row: Row) -> InvitationRecord:
    return InvitationRecord(
        id=row["id"], workspace_id=row["workspace_id"], user_id=row["user_id"], code_hash=row["code_hash"],
        role=row["role"], created_by=row["created_by"], created_at=row["created_at"],
        expires_at=row["expires_at"], redeemed_at=row["redeemed_at"], revoked_at=row["revoked_at"],
    )
