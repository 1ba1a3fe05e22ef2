"""Background work once per cluster: a leader lease with a fencing token.

N identical replicas share one database; liveness, the meter tick and invoices (and
retention) must run on one of them at a time. The lease is a row in ``leader_leases``::

    name='cluster'  holder=<replica id>  token=<n>  expires_at=<ms>

Every replica tries ``try_acquire`` every ``renew_ms``; it is one compare-and-set statement
that succeeds when the row is absent, is already ours (a renewal: the token stays), or has
expired (a takeover: the token is incremented). A replica holds the lease until its
``expires_at`` (by its own clock: replicas' clocks must agree to well within a lease, as NTP
gives), so after a leader dies another takes over within one lease.

Fencing: a leader can be deposed while one of its writes is still on its way (a long GC
pause, a partition, a stopped process). So each leader write runs ``check_fence`` first, in
the same transaction: an ``UPDATE`` of the lease row that matches only our holder and token.
It locks the row (PostgreSQL: a takeover waits until our transaction ends; SQLite: the single
writer serialises them anyway), and a row count of 0 means we were deposed: the write raises
``LeadershipLost`` and rolls back, so no late write of a deposed leader ever commits. The
fence travels to the store through a context variable (``fenced``), so the store methods the
leader tasks call need no extra argument: ``fenced_write`` wraps the write when it is queued.

On SQLite, one process is the only replica and holds the lease through the same code.

Timeline of a takeover (lease 15 s, renewals every 5 s)::

    A: acquire(t=1) renew renew ✝ (killed at 12 s)
    B: try ✗  try ✗  try ✗  try ✗  try ✓ takeover, token 2 (≤ 27 s: within one lease of the last renewal)
    A's write with token 1 after that: LeadershipLost, rolled back
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import structlog
import trio

from common.clock import Clock, to_millis
from coordinator.notify import Signal
from coordinator.store.db import Tx

if TYPE_CHECKING:
    from coordinator.store.base import Store

log = structlog.get_logger("tanvrit.coordinator.leader")

T = TypeVar("T")

CLUSTER_LEASE = "cluster"


class LeadershipLost(Exception):
    """A fenced write found that its lease had been taken over: nothing of it was written."""


@dataclass(frozen=True)
class Fence:
    """Proof of leadership that a write checks in its own transaction."""

    name: str
    holder: str
    token: int


@dataclass(frozen=True)
class Lease:
    name: str
    holder: str
    token: int
    acquired_at: int
    expires_at: int

    @property
    def fence(self) -> Fence:
        return Fence(self.name, self.holder, self.token)


@dataclass(frozen=True)
class LeasePolicy:
    """``lease_ms``: how long a lease lasts without renewal (the takeover bound);
    ``renew_ms``: how often every replica tries to acquire or renew it."""

    lease_ms: int = 15_000
    renew_ms: int = 5_000


# --- the SQL, on any transaction ---------------------------------------------------------

def try_acquire(tx: Tx, name: str, holder: str, now: int, lease_ms: int) -> Lease | None:
    """Take the lease (absent or expired), or renew it (ours); None while another holds it.

    One statement, so two replicas racing for an expired lease cannot both win: the second
    one's update finds the row no longer expired (PostgreSQL re-checks the condition on the
    row the first one wrote)."""
    row = tx.execute(
        """INSERT INTO leader_leases (name, holder, token, acquired_at, expires_at) VALUES (?, ?, 1, ?, ?)
           ON CONFLICT (name) DO UPDATE SET
               token = CASE WHEN leader_leases.holder = excluded.holder THEN leader_leases.token
                            ELSE leader_leases.token + 1 END,
               acquired_at = CASE WHEN leader_leases.holder = excluded.holder THEN leader_leases.acquired_at
                                  ELSE excluded.acquired_at END,
               holder = excluded.holder,
               expires_at = excluded.expires_at
           WHERE leader_leases.holder = excluded.holder OR leader_leases.expires_at <= ?
           RETURNING name, holder, token, acquired_at, expires_at""",
        (name, holder, now, now + lease_ms, now),
    ).fetchone()
    if row is None:
        return None
    return Lease(str(row[0]), str(row[1]), int(row[2]), int(row[3]), int(row[4]))


def release(tx: Tx, fence: Fence) -> bool:
    """Give the lease up (a graceful stop) so another replica takes over at its next try."""
    changed: int = tx.execute(
        "UPDATE leader_leases SET expires_at = 0 WHERE name = ? AND holder = ? AND token = ?",
        (fence.name, fence.holder, fence.token),
    ).rowcount
    return changed == 1


def current_lease(tx: Tx, name: str) -> Lease | None:
    row = tx.execute(
        "SELECT name, holder, token, acquired_at, expires_at FROM leader_leases WHERE name = ?", (name,)
    ).fetchone()
    return None if row is None else Lease(str(row[0]), str(row[1]), int(row[2]), int(row[3]), int(row[4]))


def check_fence(tx: Tx, fence: Fence) -> None:
    """Lock the lease row if it is still ``fence``'s; raise ``LeadershipLost`` otherwise.

    Run first in the transaction: the row lock orders this write before any takeover."""
    changed = tx.execute(
        "UPDATE leader_leases SET token = token WHERE name = ? AND holder = ? AND token = ?",
        (fence.name, fence.holder, fence.token),
    ).rowcount
    if changed != 1:
        raise LeadershipLost(f"the {fence.name!r} lease is no longer held with token {fence.token}")


_current_fence: ContextVar[Fence | None] = ContextVar("tanvrit_leader_fence", default=None)


@contextmanager
def fenced(fence: Fence) -> Iterator[None]:
    """Every store write made by this task inside the block checks ``fence`` first."""
    reset = _current_fence.set(fence)
    try:
        yield
    finally:
        _current_fence.reset(reset)


def fenced_write(fn: Callable[[Any], T]) -> Callable[[Any], T]:
    """``fn`` guarded by the calling task's fence, if it has one. Called where the write is
    queued: the transaction itself runs on another thread, outside the task's context."""
    fence = _current_fence.get()
    if fence is None:
        return fn

    def guarded(tx: Any) -> T:
        check_fence(tx, fence)
        return fn(tx)

    return guarded


# --- leadership of one replica ------------------------------------------------------------

class Leadership:
    """This replica's view of the lease: the fence while it leads, else None."""

    def __init__(self, holder: str) -> None:
        self.holder = holder
        self._fence: Fence | None = None
        self._expires_at = 0
        self.changed = Signal()
        self.live_replicas = 1

    @property
    def fence(self) -> Fence | None:
        return self._fence

    @property
    def is_leader(self) -> bool:
        return self._fence is not None

    def hold(self, lease: Lease) -> None:
        new = lease.fence
        self._expires_at = lease.expires_at
        if new != self._fence:
            if self._fence is None:
                log.info("leader lease acquired", holder=self.holder, token=new.token)
            self._fence = new
            self.changed.fire()

    def expire(self, now: int) -> None:
        """No renewal got through: we lead only until our lease's end."""
        if self._fence is not None and now >= self._expires_at:
            self.drop()

    def drop(self, *, reason: str = "") -> None:
        if self._fence is not None:
            if reason:
                log.info("leader lease released", holder=self.holder, token=self._fence.token, reason=reason)
            else:
                log.warning("leader lease lost", holder=self.holder, token=self._fence.token)
            self._fence = None
            self.changed.fire()

    def lost(self, fence: Fence) -> None:
        """A write fenced by ``fence`` was refused: we were deposed."""
        if self._fence == fence:
            self.drop()

    async def run(self, fn: Callable[[], Awaitable[T]]) -> T | None:
        """Run ``fn`` as the leader, its writes fenced; None (not run, or refused) when not leading."""
        fence = self._fence
        if fence is None:
            return None
        with fenced(fence):
            try:
                return await fn()
            except LeadershipLost:
                self.lost(fence)
                return None


async def sleep_unless_elected(leadership: Leadership | None, seconds: float) -> None:
    """Sleep ``seconds``, or less: until this replica becomes the leader (a new leader runs the
    cluster's work at once, not an interval after it took over)."""
    if leadership is None or leadership.is_leader:
        await trio.sleep(seconds)
        return
    changed = leadership.changed.snapshot()
    with trio.move_on_after(seconds):
        while not leadership.is_leader:
            await changed.wait()
            changed = leadership.changed.snapshot()


async def serve_leadership(store: Store, clock: Clock, leadership: Leadership, policy: LeasePolicy, *,
                           task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Try to acquire or renew the cluster lease every ``policy.renew_ms`` and announce this
    replica. Reports started after the first try (a lone replica leads from its first moment);
    releases the lease on the way out, so a graceful stop hands over at once."""
    started_at = to_millis(clock.now())
    first = True
    try:
        while True:
            now = to_millis(clock.now())
            try:
                lease = await store.acquire_lease(CLUSTER_LEASE, leadership.holder, now, policy.lease_ms)
                if lease is None:
                    leadership.drop()
                else:
                    leadership.hold(lease)
                # A replica silent for three renewals no longer counts towards the rate-limit split.
                leadership.live_replicas = await store.replica_heartbeat(
                    leadership.holder, started_at, now, live_after=now - 3 * policy.renew_ms)
            except Exception:
                # The database may be away for a moment: keep leading until our lease runs out.
                log.exception("leader lease renewal failed")
                leadership.expire(to_millis(clock.now()))
            if first:
                first = False
                task_status.started()
            await trio.sleep(policy.renew_ms / 1000)
    finally:
        with trio.move_on_after(2) as cleanup:
            cleanup.shield = True
            fence = leadership.fence
            leadership.drop(reason="stopping")
            try:
                await store.leave_cluster(leadership.holder, fence)
            except Exception:
                log.exception("could not release the leader lease; it expires by itself")
