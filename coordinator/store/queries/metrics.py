"""Queries behind ``/metrics``: the only reads that span workspaces, and they return counts only."""

from __future__ import annotations

from common.states import JobState
from coordinator.store.db import Tx
from coordinator.store.repo.job_lists import COUNT_JOBS_IN_STATE
from coordinator.store.sqlite_core import SqliteCore


def count_jobs_in_each_state(tx: Tx) -> dict[str, int]:
    """Jobs by state, the states with none left out: one covering-index count per state (0045)."""
    counts = {state.value: int(tx.execute(COUNT_JOBS_IN_STATE, (state.value,)).fetchone()[0]) for state in JobState}
    return {state: count for state, count in counts.items() if count}


class ServiceQueries(SqliteCore):
    async def count_jobs_by_state(self) -> dict[str, int]:
        """Jobs by state, on one snapshot (the SQLite store runs it off the event loop instead)."""
        return await self._read_with(count_jobs_in_each_state)

    async def count_agents_by_state(self) -> dict[str, int]:
        rows = await self._read("SELECT state, COUNT(*) FROM agents WHERE deleted_at IS NULL GROUP BY state")
        return {row[0]: row[1] for row in rows}
