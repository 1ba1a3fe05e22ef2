"""The store's part in running several replicas: the leader lease and replica announcements."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from coordinator.leader import Fence, Lease


class ClusterStore(Protocol):
    async def acquire_lease(self, name: str, holder: str, now: int, lease_ms: int) -> Lease | None:
        """Take the lease ``name`` (absent or expired: a new token), renew it (``holder``'s
        already: same token), or None while another holder's lease runs."""
        ...

    async def current_lease(self, name: str) -> Lease | None: ...

    async def replica_heartbeat(self, replica_id: str, started_at: int, now: int, *, live_after: int) -> int:
        """Announce the replica at ``now``; the number of replicas seen after ``live_after`` (at least 1)."""
        ...

    async def leave_cluster(self, replica_id: str, fence: Fence | None) -> None:
        """Release the lease if ``fence`` still holds it, and withdraw the replica's announcement."""
        ...
