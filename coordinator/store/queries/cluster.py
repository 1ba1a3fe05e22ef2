"""Queries of a cluster of replicas: the leader lease and the replicas' announcements.

The SQL is portable (coordinator/leader.py); the PostgreSQL store runs the same functions.
"""

from __future__ import annotations

from coordinator import leader
from coordinator.store.db import Tx
from coordinator.store.sqlite_core import SqliteCore

# An announcement older than this is deleted (a replica that died without leaving).
_FORGET_REPLICA_MS = 3_600_000


def replica_heartbeat(tx: Tx, replica_id: str, started_at: int, now: int, live_after: int) -> int:
    """Announce ``replica_id`` at ``now``; return how many replicas were seen after ``live_after``
    (this one included)."""
    tx.execute(
        """INSERT INTO replicas (id, started_at, seen_at) VALUES (?, ?, ?)
           ON CONFLICT (id) DO UPDATE SET seen_at = excluded.seen_at""",
        (replica_id, started_at, now),
    )
    tx.execute("DELETE FROM replicas WHERE seen_at < ?", (now - _FORGET_REPLICA_MS,))
    row = tx.execute("SELECT COUNT(*) FROM replicas WHERE seen_at > ?", (live_after,)).fetchone()
    return max(1, int(row[0]))


def leave_cluster(tx: Tx, replica_id: str, fence: leader.Fence | None) -> None:
    if fence is not None:
        leader.release(tx, fence)
    tx.execute("DELETE FROM replicas WHERE id = ?", (replica_id,))


class ClusterQueries(SqliteCore):
    async def acquire_lease(self, name: str, holder: str, now: int, lease_ms: int) -> leader.Lease | None:
        """Take, renew or fail to get the lease ``name`` (coordinator/leader.py)."""
        return await self._write(lambda tx: leader.try_acquire(tx, name, holder, now, lease_ms))

    async def current_lease(self, name: str) -> leader.Lease | None:
        return await self._write(lambda tx: leader.current_lease(tx, name))

    async def replica_heartbeat(self, replica_id: str, started_at: int, now: int, *, live_after: int) -> int:
        return await self._write(lambda tx: replica_heartbeat(tx, replica_id, started_at, now, live_after))

    async def leave_cluster(self, replica_id: str, fence: leader.Fence | None) -> None:
        """Release the lease if ``fence`` still holds it, and withdraw the announcement."""
        await self._write(lambda tx: leave_cluster(tx, replica_id, fence))
