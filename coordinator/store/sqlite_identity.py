"""SQLite queries for users, workspaces, memberships and tokens."""

from __future__ import annotations

import sqlite3

from coordinator.store.base import (
    TokenRecord,
)
from coordinator.store.sqlite_core import SqliteCore


class IdentityQueries(SqliteCore):
    async def is_empty(self) -> bool:
        return not self._read("SELECT 1 FROM users LIMIT 1")

    async def bootstrap(self, *, user_id: str, email: str, workspace_id: str, workspace_name: str,
                        plan: str, tokens: list[TokenRecord], now: int) -> None:
        def write(conn: sqlite3.Connection) -> None:
            conn.execute("INSERT INTO users (id, email, created_at) VALUES (?, ?, ?)", (user_id, email, now))
            conn.execute(
                "INSERT INTO workspaces (id, name, plan, created_at) VALUES (?, ?, ?, ?)",
                (workspace_id, workspace_name, plan, now),
            )
            conn.execute(
                "INSERT INTO memberships (workspace_id, user_id, role, created_at) VALUES (?, ?, 'owner', ?)",
                (workspace_id, user_id, now),
            )
            for token in tokens:
                insert_token_row(conn, token)

        await self._write(write)

    async def find_token(self, token_hash: str) -> TokenRecord | None:
        rows = self._read("SELECT * FROM tokens WHERE token_hash = ?", (token_hash,))
        return _token(rows[0]) if rows else None

    async def insert_token(self, token: TokenRecord) -> None:
        await self._write(lambda conn: insert_token_row(conn, token))

    async def member_role(self, workspace_id: str, user_id: str) -> str | None:
        rows = self._read(
            "SELECT role FROM memberships WHERE workspace_id = ? AND user_id = ?", (workspace_id, user_id)
        )
        return str(rows[0]["role"]) if rows else None


def insert_token_row(conn: sqlite3.Connection, token: TokenRecord) -> None:
    conn.execute(
        """INSERT INTO tokens (id, kind, token_hash, workspace_id, user_id, agent_id, name, created_at,
                               expires_at, revoked_at)
           VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
        (token.id, token.kind, token.token_hash, token.workspace_id, token.user_id, token.agent_id,
         token.name, token.created_at, token.expires_at, token.revoked_at),
    )


def _token(row: sqlite3.Row) -> TokenRecord:
    return TokenRecord(
        id=row["id"], kind=row["kind"], token_hash=row["token_hash"], workspace_id=row["workspace_id"],
        user_id=row["user_id"], agent_id=row["agent_id"], name=row["name"], created_at=row["created_at"],
        expires_at=row["expires_at"], revoked_at=row["revoked_at"],
    )
