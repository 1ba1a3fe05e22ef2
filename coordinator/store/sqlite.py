"""SQLite store (the default): WAL mode, numbered migrations, one writer thread with group commit.

Writes are closures queued to a single writer task. The writer takes every write that is
waiting, runs each inside its own savepoint of one transaction, commits once, and only then
wakes the callers: writes that arrive together share one ``fsync``, and a caller is never
answered before its row is durable. Point reads run on a separate read-only connection in
the event-loop thread: an indexed lookup costs microseconds, less than a hop to a thread.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import trio

from coordinator.store.sqlite_agents import AgentQueries
from coordinator.store.sqlite_arrays import ArrayQueries
from coordinator.store.sqlite_audit import AuditQueries
from coordinator.store.sqlite_billing import BillingQueries
from coordinator.store.sqlite_cluster import ClusterQueries
from coordinator.store.sqlite_core import StoreClosed, migrate, open_sync_connection, request_hash
from coordinator.store.sqlite_identity import IdentityQueries
from coordinator.store.sqlite_jobs import JobQueries
from coordinator.store.sqlite_retention import RetentionQueries
from coordinator.store.sqlite_service import ServiceQueries
from coordinator.store.sqlite_webhooks import WebhookQueries

__all__ = ["SqliteStore", "StoreClosed", "migrate", "open_sqlite_store", "open_sync_connection", "request_hash"]


class SqliteStore(IdentityQueries, JobQueries, AgentQueries, AuditQueries, ServiceQueries, BillingQueries,
                  WebhookQueries, ClusterQueries, ArrayQueries, RetentionQueries):
    """The default ``Store``: one mixin per concern over the shared core. Use ``open_sqlite_store``."""


@asynccontextmanager
async def open_sqlite_store(path: Path) -> AsyncIterator[SqliteStore]:
    """Open (creating and migrating) the store at ``path`` and run its writer until exit."""
    store = SqliteStore(path)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(store.serve_writer)
            yield store
            nursery.cancel_scope.cancel()
    finally:
        store.close()
