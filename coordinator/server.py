"""Run the coordinator: open the store, initialise it if empty, serve HTTP until told to stop."""

from __future__ import annotations

import os
import secrets
import socket
from collections.abc import Awaitable, Callable
from functools import partial

import structlog
import trio

from common.clock import Clock, SystemClock
from common.files import private_dir, write_private_text
from common.gc_tuning import tune_gc
from common.systemd import Notifier
from coordinator.app import create_asgi
from coordinator.bootstrap import InitResult, initialize
from coordinator.bus import PostgresBus
from coordinator.cadence import serve_cadence
from coordinator.context import Services
from coordinator.http_server import ConnectionLimits, serve_http
from coordinator.leader import Leadership, LeasePolicy, serve_leadership
from coordinator.liveness import LivenessPolicy, serve_heartbeat_flush, serve_liveness
from coordinator.meter import serve_meter
from coordinator.notify import Notifier as WakeupNotifier
from coordinator.retention import serve_retention
from coordinator.settings import Settings
from coordinator.store.beats import DEFAULT_FLUSH_SECONDS
from coordinator.store.factory import open_store
from coordinator.webhook_delivery import serve_webhook_deliveries

log = structlog.get_logger("tanvrit.coordinator")


async def serve_coordinator(
    settings: Settings,
    *,
    shutdown_trigger: Callable[..., Awaitable[None]] | None = None,
    on_init: Callable[[InitResult], None] | None = None,
    clock: Clock | None = None,
    notifier: Notifier | None = None,
    own_process: bool = False,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve until ``shutdown_trigger`` returns (graceful) or the caller cancels (abrupt).

    Reports the base URL it listens on through ``task_status`` and in ``<data dir>/coordinator.url``,
    and to systemd (``READY=1``, then watchdog pings from the event loop, ``STOPPING=1`` once the
    graceful stop begins) when started as a ``Type=notify`` service. ``own_process``: the
    process runs nothing else, so its garbage collector is tuned for serving (``tune_gc``).
    """
    notifier = notifier or Notifier()
    if shutdown_trigger is not None:
        shutdown_trigger = _announcing_stop(shutdown_trigger, notifier)
    private_dir(settings.data_dir)
    clock = clock or SystemClock()
    async with open_store(settings.database, pool_size=settings.store_pool_size,
                          statement_timeout_seconds=settings.store_statement_timeout_seconds,
                          pool_timeout_seconds=settings.store_pool_timeout_seconds) as store:
        result = await initialize(store, clock, plan=settings.default_plan)
        if result is not None and on_init is not None:
            on_init(result)
        leadership = Leadership(replica_id())
        database = settings.database
        # Replicas on PostgreSQL wake each other's waiters through LISTEN/NOTIFY; a lone SQLite
        # process fires its signals in process only.
        bus = PostgresBus(database.url, leadership.holder) if database.kind == "postgresql" else None
        wakeups = WakeupNotifier(bus.publish if bus is not None else None)
        services = Services(store=store, settings=settings, clock=clock, leadership=leadership, notifier=wakeups)
        app = create_asgi(services)
        if own_process:
            tune_gc()  # the process is ours (``serve``), not a test's or an embedding program's
        async with trio.open_nursery() as background:
            if bus is not None:
                await background.start(bus.serve, wakeups)
            # First try for the lease before serving: a lone replica leads from its first request.
            await background.start(serve_leadership, store, clock, leadership, lease_policy(settings))
            # Liveness, metering and webhook delivery run beside HTTP and stop once it has stopped.
            await background.start(serve_heartbeat_flush, store, DEFAULT_FLUSH_SECONDS)
            # Every replica counts the cluster's agents and scales the interval it hands out; the
            # leader's liveness grace follows the intervals handed out (coordinator/cadence.py).
            assert services.cadence is not None
            await background.start(partial(serve_cadence, store, services.cadence, clock, metrics=services.metrics))
            await background.start(partial(
                serve_liveness, store, services.notifier, clock, liveness_policy(settings),
                settings.liveness_check_seconds, leadership=leadership, cadence=services.cadence,
            ))
            await background.start(partial(serve_meter, store, clock, settings.billing, services.notifier,
                                           leadership=leadership))
            await background.start(partial(serve_retention, store, clock, settings.retention, leadership=leadership))
            await background.start(partial(serve_webhook_deliveries, store, clock, settings.webhook_delivery,
                                           allow_private=settings.allow_private_webhooks))
            # Pings come from this event loop: a loop that hangs stops them and systemd restarts us.
            background.start_soon(notifier.serve_watchdog)
            async with trio.open_nursery() as nursery:
                binds = await nursery.start(partial(serve_http, app, settings.bind, connection_limits(settings),
                                                    shutdown_trigger=shutdown_trigger))
                url = str(binds[0])
                write_private_text(settings.url_file, url + "\n")
                log.info("coordinator listening", url=url, data_dir=str(settings.data_dir))
                task_status.started(url)
                notifier.ready()
            background.cancel_scope.cancel()
    log.info("coordinator stopped")


def _announcing_stop(trigger: Callable[..., Awaitable[None]], notifier: Notifier) -> Callable[[], Awaitable[None]]:
    async def announced() -> None:
        await trigger()
        notifier.stopping()

    return announced


def connection_limits(settings: Settings) -> ConnectionLimits:
    return ConnectionLimits(idle_timeout_seconds=settings.idle_timeout_seconds,
                            send_timeout_seconds=settings.send_timeout_seconds,
                            max_connections=settings.max_connections)


def lease_policy(settings: Settings) -> LeasePolicy:
    return LeasePolicy(lease_ms=int(settings.leader_lease_seconds * 1000),
                       renew_ms=int(settings.leader_renew_seconds * 1000))


def replica_id() -> str:
    """Who holds the lease, for operators: host and pid, plus a random part so that a restarted
    process never mistakes its predecessor's lease for its own."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


def liveness_policy(settings: Settings) -> LivenessPolicy:
    return LivenessPolicy(grace_ms=int(settings.agent_grace_seconds * 1000),
                          lease_ms=int(settings.lease_seconds * 1000),
                          assignment_lease_ms=int(settings.assignment_lease_seconds * 1000))
