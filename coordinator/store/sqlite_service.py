"""SQLite queries behind ``/metrics``: the only reads that span workspaces, and they return counts only."""

from __future__ import annotations

from common.states import JobState
from coordinator.store.repo.job_lists import COUNT_JOBS_IN_STATE
from coordinator.store.sqlite_core import SqliteCore


class ServiceQueries(SqliteCore):
    async def count_jobs_by_state(self) -> dict[str, int]:
        counts = {state.value: (await self._read(COUNT_JOBS_IN_STATE, (state.value,)))[0][0] for state in JobState}
        return {state: count for state, count in counts.items() if count}

    async def count_agents_by_state(self) -> dict[str, int]:
        rows = await self._read("SELECT state, COUNT(*) FROM agents WHERE deleted_at IS NULL GROUP BY state")
        return {row[0]: row[1] for row in rows}
