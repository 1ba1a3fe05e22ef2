"""SQLite queries behind ``/metrics``: the only reads that span workspaces, and they return counts only."""

from __future__ import annotations

from coordinator.store.sqlite_core import SqliteCore


class ServiceQueries(SqliteCore):
    async def count_jobs_by_state(self) -> dict[str, int]:
        return {row[0]: row[1] for row in await self._read("SELECT state, COUNT(*) FROM jobs GROUP BY state")}

    async def count_agents_by_state(self) -> dict[str, int]:
        rows = await self._read("SELECT state, COUNT(*) FROM agents WHERE deleted_at IS NULL GROUP BY state")
        return {row[0]: row[1] for row in rows}
