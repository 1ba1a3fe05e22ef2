"""Retention: one write transaction per batch of ``coordinator.services.retention``."""

from __future__ import annotations

from coordinator.services import retention
from coordinator.store.db import Tx
from coordinator.store.sqlite_core import SqliteCore


class RetentionQueries(SqliteCore):
    async def prune_expired(self, now: int, policy: retention.RetentionPolicy) -> retention.Pruned:
        def write(tx: Tx) -> retention.Pruned:
            return retention.prune_batch(tx, now, policy)

        return await self._write(write)
