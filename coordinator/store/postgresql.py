"""The PostgreSQL store: the same query mixins as SQLite's, over the PostgreSQL core.

Selected by a ``postgresql://`` database URL (``coordinator.store.factory.open_store``); for
several coordinator replicas on one database. See ``postgres_core`` for transactions, isolation
and retries, and ``postgres_schema`` for migrations.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from coordinator.store.postgres_core import PostgresCore
from coordinator.store.shared import SharedStore

__all__ = ["PgStore", "open_postgresql_store"]


# The store methods are the shared mixins (their SQL is written for both databases), so every
# mixin added to SharedStore is here too. PostgresCore comes first in the MRO: its transactions, reads,
# readiness and lifecycle replace the SQLite core's that the mixins are declared over.
class PgStore(PostgresCore, SharedStore):
    """The ``Store`` on PostgreSQL. Use ``open_postgresql_store``."""


@asynccontextmanager
async def open_postgresql_store(url: str, *, pool_max: int | None = None,
                                statement_timeout_seconds: float = 0.0) -> AsyncIterator[PgStore]:
    """Connect to the database at ``url`` (a libpq URL), migrate it, and close the pool on exit."""
    store = PgStore(url, statement_timeout_seconds=statement_timeout_seconds) if pool_max is None \
        else PgStore(url, pool_max=pool_max, statement_timeout_seconds=statement_timeout_seconds)
    try:
        await store.open()
        yield store
    finally:
        store.close()
