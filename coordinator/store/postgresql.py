"""The PostgreSQL store: the same query mixins as SQLite's, over the PostgreSQL core.

Selected by a ``postgresql://`` database URL (``coordinator.store.factory.open_store``); for
several coordinator replicas on one database. See ``postgres_core`` for transactions, isolation
and retries, and ``postgres_schema`` for migrations.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from coordinator.store.postgres_core import DEFAULT_POOL_MAX, POOL_TIMEOUT_S, PostgresCore
from coordinator.store.shared import SharedStore

__all__ = ["PgStore", "open_postgresql_store"]


# The store methods are the shared mixins (their SQL is written for both databases), so every
# mixin added to SharedStore is here too. PostgresCore comes first in the MRO: its transactions, reads,
# readiness and lifecycle replace the SQLite core's that the mixins are declared over.
class PgStore(PostgresCore, SharedStore):
    """The ``Store`` on PostgreSQL. Use ``open_postgresql_store``."""


@asynccontextmanager
async def open_postgresql_store(url: str, *, pool_max: int | None = None, statement_timeout_seconds: float = 0.0,
                                pool_timeout_seconds: float = POOL_TIMEOUT_S) -> AsyncIterator[PgStore]:
    """Connect to the database at ``url`` (a libpq URL), migrate it, and close the pool on exit."""
    store = PgStore(url, pool_max=DEFAULT_POOL_MAX if pool_max is None else pool_max,
                    statement_timeout_seconds=statement_timeout_seconds, pool_timeout_seconds=pool_timeout_seconds)
    try:
        await store.open()
        yield store
    finally:
        store.close()
