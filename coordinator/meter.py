"""The meter: a ``serve_*`` task that runs the billing tick every ``meter_interval_seconds``.

Each tick is one store transaction (``Store.meter_tick``): roll usage up per workspace and
hour, apply requested limits, decide caps, fire soft-cap events, issue invoices. When a hold
is lifted, waiting agents are woken so queued work is dispatched at once.
"""

from __future__ import annotations

import structlog
import trio

from common.clock import Clock, to_millis
from coordinator.billing import BillingConfig
from coordinator.leader import Leadership, sleep_unless_elected
from coordinator.notify import Notifier
from coordinator.store.base import Store
from coordinator.store.base_billing import TickResult

log = structlog.get_logger("tanvrit.coordinator.meter")


async def run_tick(store: Store, clock: Clock, config: BillingConfig, notifier: Notifier) -> TickResult:
    """One tick at ``clock.now()``; wakes agents of released workspaces."""
    result = await store.meter_tick(to_millis(clock.now()), config)
    for workspace_id in result.released:
        notifier.work_arrived(workspace_id)
    if result.held or result.released or result.invoices or result.soft_cap_events:
        log.info("meter tick", held=result.held, released=result.released, invoices=result.invoices,
                 soft_cap_events=result.soft_cap_events)
    return result


async def serve_meter(store: Store, clock: Clock, config: BillingConfig, notifier: Notifier, *,
                      leadership: Leadership | None = None,
                      task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Tick at start, then every ``config.meter_interval_seconds`` (of trio time) until cancelled;
    with ``leadership``, only while this replica holds the cluster lease. The tick is one
    transaction that checks the lease's fence first: a deposed leader's tick commits nothing,
    so usage is rolled up (and invoiced) once."""
    task_status.started()
    while True:
        try:
            if leadership is None:
                await run_tick(store, clock, config, notifier)
            else:
                await leadership.run(lambda: run_tick(store, clock, config, notifier))
        except Exception:
            # A failed tick changes nothing (one transaction); the next one catches up.
            # Any backend's database error (sqlite3, psycopg), hence no narrower class.
            log.exception("meter tick failed")
        await sleep_unless_elected(leadership, config.meter_interval_seconds)
