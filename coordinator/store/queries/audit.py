"""Queries for the append-only audit log (triggers refuse UPDATE and DELETE)."""

from __future__ import annotations

from typing import Any

from coordinator.store.base import AuditFilter, AuditRecord
from coordinator.store.db import Row, Tx
from coordinator.store.sqlite_core import SqliteCore


def insert_audit_row(tx: Tx, record: AuditRecord) -> None:
    """Append one audit row inside the caller's transaction (system events use this directly)."""
    tx.execute(
        """INSERT INTO audit_events (id, workspace_id, at, actor, action, target, result, status,
                                     error_code, request_id, source, method, path)
           VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
        (record.id, record.workspace_id, record.at, record.actor, record.action, record.target,
         record.result, record.status, record.error_code, record.request_id, record.source,
         record.method, record.path),
    )


class AuditQueries(SqliteCore):
    async def count_auth_failures(self, counts: dict[tuple[int, str, str], int]) -> None:
        """Add ``counts`` ((minute, source, workspace_id) -> failures) to ``auth_failures``."""
        def write(tx: Tx) -> None:
            tx.executemany(
                """INSERT INTO auth_failures (minute, source, workspace_id, failures) VALUES (?, ?, ?, ?)
                   ON CONFLICT (minute, source, workspace_id) DO UPDATE SET
                       failures = auth_failures.failures + excluded.failures""",
                [(minute, source, workspace, n) for (minute, source, workspace), n in counts.items()],
            )

        await self._write(write)

    async def auth_failures(self, *, since: int) -> list[tuple[int, str, str, int]]:
        """(minute, source, workspace_id, failures) rows from ``since`` on, oldest first."""
        rows = await self._read("SELECT * FROM auth_failures WHERE minute >= ? ORDER BY minute, source, workspace_id",
                          (since,))
        return [(row["minute"], row["source"], row["workspace_id"], row["failures"]) for row in rows]

    async def append_audit(self, record: AuditRecord) -> None:
        await self._write(lambda tx: insert_audit_row(tx, record))

    async def list_audit(self, workspace_id: str, filters: AuditFilter, *, limit: int,
                         before_seq: int | None) -> list[AuditRecord]:
        clauses = ["workspace_id = ?"]
        params: list[Any] = [workspace_id]
        if before_seq is not None:
            clauses.append("seq < ?")
            params.append(before_seq)
        if filters.since is not None:
            clauses.append("at >= ?")
            params.append(filters.since)
        if filters.until is not None:
            clauses.append("at < ?")
            params.append(filters.until)
        if filters.actions:
            clauses.append(f"action IN ({', '.join('?' for _ in filters.actions)})")
            params.extend(filters.actions)
        if filters.actor is not None:
            clauses.append("actor = ?")
            params.append(filters.actor)
        rows = await self._read(
            f"SELECT * FROM audit_events WHERE {' AND '.join(clauses)} ORDER BY seq DESC LIMIT ?",
            (*params, limit),
        )
        return [_audit(row) for row in rows]


def _audit(row: Row) -> AuditRecord:
    return AuditRecord(
        id=row["id"], workspace_id=row["workspace_id"], at=row["at"], actor=row["actor"], action=row["action"],
        target=row["target"], result=row["result"], status=row["status"], error_code=row["error_code"],
        request_id=row["request_id"], source=row["source"], method=row["method"], path=row["path"],
        seq=row["seq"],
    )
