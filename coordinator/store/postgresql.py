"""The PostgreSQL store: the same query mixins as SQLite's, over the PostgreSQL core.

Selected by a ``postgresql://`` database URL (``coordinator.store.factory.open_store``); for
several coordinator replicas on one database. See ``postgres_core`` for transactions, isolation
and retries, and ``postgres_schema`` for migrations.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

from coordinator.leader import fenced_write
from coordinator.store.base import AuditRecord, JobRecord
from coordinator.store.postgres_core import DEFAULT_POOL_MAX, POOL_TIMEOUT_S, PostgresCore
from coordinator.store.postgres_submit import run_submit
from coordinator.store.repo.jobs import job_record
from coordinator.store.shared import SharedStore

__all__ = ["PgStore", "open_postgresql_store"]


# The store methods are the shared mixins (their SQL is written for both databases), so every
# mixin added to SharedStore is here too. PostgresCore comes first in the MRO: its transactions, reads,
# readiness and lifecycle replace the SQLite core's that the mixins are declared over.
class PgStore(PostgresCore, SharedStore):
    """The ``Store`` on PostgreSQL. Use ``open_postgresql_store``."""

    async def insert_job(self, job: JobRecord, *, idempotency_key: str | None = None,
                         request_hash: str | None = None, idempotency_window_ms: int = 0,
                         audit: AuditRecord | None = None) -> JobRecord:
        # A plain submission (no dependsOn, with its audit row, outside a leader task's fence)
        # in one statement (coordinator/store/postgres_submit.py); the rest, a workspace with
        # webhooks and a key already taken, through the shared store's transaction.
        if (not job.depends_on and audit is not None and not self._closed
                and fenced_write(_no_write) is _no_write):
            row = await self._threads.run(partial(run_submit, self, job, audit, idempotency_key=idempotency_key,
                                                  request_hash=request_hash))
            if row is not None:
                # Just inserted: no attempt (only a claim opens one) and no dependency.
                return job_record(row, attempts=[], depends_on=[])
        return await super().insert_job(job, idempotency_key=idempotency_key, request_hash=request_hash,
                                        idempotency_window_ms=idempotency_window_ms, audit=audit)


def _no_write(tx: Any) -> None:
    """A stand-in write: ``fenced_write`` hands it back unchanged when the caller holds no fence."""


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
