"""The PostgreSQL store: the same query mixins as SQLite's, over the PostgreSQL core.

Selected by a ``postgresql://`` database URL (``coordinator.store.factory.open_store``); for
several coordinator replicas on one database. See ``postgres_core`` for transactions, isolation
and retries, and ``postgres_schema`` for migrations.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from common.states import JobState
from coordinator.store.db import Tx
from coordinator.store.postgres_core import PostgresCore
from coordinator.store.repo.job_lists import COUNT_JOBS_IN_STATE
from coordinator.store.sqlite import SqliteStore

__all__ = ["PgStore", "open_postgresql_store"]


# The store methods are SqliteStore's mixins (their SQL is written for both databases), so every
# mixin added there is here too. PostgresCore comes first in the MRO: its transactions, reads,
# readiness and lifecycle replace the SQLite core's that the mixins are declared over.
class PgStore(PostgresCore, SqliteStore):
    """The ``Store`` on PostgreSQL. Use ``open_postgresql_store``.

    Overrides only what a mixin does through SQLite itself rather than through the core."""

    async def count_jobs_by_state(self) -> dict[str, int]:
        """Jobs by state (for ``/metrics``): one index count per state, on one snapshot."""
        def count(tx: Tx) -> dict[str, int]:
            return {state.value: int(tx.execute(COUNT_JOBS_IN_STATE, (state.value,)).fetchone()[0])
                    for state in JobState}

        counts = await self._read_with(count)
        return {state: number for state, number in counts.items() if number}


@asynccontextmanager
async def open_postgresql_store(url: str, *, pool_max: int | None = None) -> AsyncIterator[PgStore]:
    """Connect to the database at ``url`` (a libpq URL), migrate it, and close the pool on exit."""
    store = PgStore(url) if pool_max is None else PgStore(url, pool_max=pool_max)
    try:
        await store.open()
        yield store
    finally:
        store.close()
