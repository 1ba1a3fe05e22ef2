"""Retention as background work: a ``serve_*`` task pruning on a schedule (``[retention]``).

``run_retention`` is the unit a scheduler calls: everything due at ``now``, in batches of one
short transaction each (the rules and what is kept: ``coordinator.services.retention``).
``serve_retention`` runs it at start and then every ``interval_seconds``; given a
``Leadership`` it runs only on the replica that holds the cluster lease, its writes fenced, so
several replicas on one database prune once (coordinator/leader.py).
"""

from __future__ import annotations

from functools import partial

import structlog
import trio
import trio.lowlevel

from common.clock import Clock, to_millis
from coordinator.leader import Leadership
from coordinator.services.retention import Pruned, RetentionPolicy
from coordinator.store.base import Store

log = structlog.get_logger("tanvrit.coordinator.retention")


async def run_retention(store: Store, now: int, policy: RetentionPolicy) -> Pruned:
    """Delete everything ``policy`` no longer keeps at ``now`` (ms), batch after batch until a
    batch finds less than it could take; returns what was deleted."""
    total = Pruned()
    while True:
        pruned = await store.prune_expired(now, policy)
        total.add(pruned)
        if not pruned.more:
            return total
        await trio.lowlevel.checkpoint()  # between batches, requests waiting on the writer go first


async def serve_retention(store: Store, clock: Clock, policy: RetentionPolicy, *,
                          leadership: Leadership | None = None,
                          task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Prune at start, then every ``policy.interval_seconds`` (trio time) until cancelled."""
    task_status.started()
    while True:
        now = to_millis(clock.now())
        try:
            if leadership is None:
                pruned: Pruned | None = await run_retention(store, now, policy)
            else:
                pruned = await leadership.run(partial(run_retention, store, now, policy))
            if pruned is not None and pruned.total:
                log.info("retention", job_log_chunks=pruned.job_logs, webhook_deliveries=pruned.webhook_deliveries,
                         webhook_attempts=pruned.webhook_attempts, webhook_events=pruned.webhook_events,
                         usage_records=pruned.usage_records, auth_failure_rows=pruned.auth_failures)
        except Exception:
            # A failed batch rolled back alone; the next run starts over from what is left.
            log.exception("retention run failed")
        await trio.sleep(policy.interval_seconds)
