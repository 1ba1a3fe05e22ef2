"""The wake-up bus between replicas (coordinator/bus.py) on a real PostgreSQL server: two
replicas' notifiers, each with its own bus, on one database."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import psycopg
import trio

from coordinator.bus import PostgresBus
from coordinator.notify import MAX_PENDING_CANCELS, Notifier

# Far longer than a wake-up takes; only a broken bus (or a machine stalled for seconds) reaches it.
DEADLINE = 10


async def until(condition: Callable[[], bool]) -> None:
    with trio.fail_after(DEADLINE):
        while True:
            if condition():
                return
            await trio.sleep(0.01)


@asynccontextmanager
async def replica(url: str, name: str) -> AsyncIterator[tuple[Notifier, PostgresBus]]:
    bus = PostgresBus(url, name)
    notifier = Notifier(bus.publish)
    async with trio.open_nursery() as nursery:
        await nursery.start(bus.serve, notifier)
        yield notifier, bus
        nursery.cancel_scope.cancel()


async def test_a_firing_on_one_replica_wakes_the_waiters_of_another(postgres_url: str) -> None:
    async with replica(postgres_url, "A") as (a, a_bus), replica(postgres_url, "B") as (b, b_bus):
        work = a.work_signal("ws_1").snapshot()
        heartbeat = a.agent_signal("agt_1").snapshot()
        claims = a.claim_signal("agt_1").snapshot()
        with a.watch_job("job_1") as job:
            followed = job.snapshot()
            b.work_arrived("ws_1")
            b.job_changed("job_1")
            b.order_cancel("agt_1", "job_9")
            b.end_waiting_claims("agt_1")
            with trio.fail_after(DEADLINE):
                await work.wait()
                await followed.wait()
                await heartbeat.wait()
                await claims.wait()
        # The cancel order itself travelled: A's held heartbeat will carry it.
        assert a.take_pending_cancels("agt_1") == {"job_9"}
        # B fired its own signals in process and ignores its own messages coming back.
        await until(lambda: b_bus.sent >= 4)  # counted once its NOTIFY statement has returned
        assert b_bus.received == 0 and b_bus.sent == 4
        assert a_bus.received == 4 and a_bus.sent == 0


async def test_a_forgotten_agent_is_forgotten_everywhere(postgres_url: str) -> None:
    async with replica(postgres_url, "A") as (a, _), replica(postgres_url, "B") as (b, _):
        ordered = b.agent_signal("agt_1").snapshot()
        a.order_cancel("agt_1", "job_1")  # reaches B too
        with trio.fail_after(DEADLINE):
            await ordered.wait()
        assert b.has_pending_cancels("agt_1")
        waiting = a.claim_signal("agt_1").snapshot()
        b.forget_agent("agt_1")
        with trio.fail_after(DEADLINE):
            await waiting.wait()
        assert not a.has_pending_cancels("agt_1")


async def test_after_losing_its_connection_the_listener_wakes_everyone_and_listens_again(postgres_url: str) -> None:
    async with replica(postgres_url, "A") as (a, _), replica(postgres_url, "B") as (b, _):
        work = a.work_signal("ws_1").snapshot()
        with psycopg.connect(postgres_url, autocommit=True) as admin:
            # Every bus connection of this database (A's and B's listeners, B's sender).
            killed = admin.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = current_database() AND application_name = 'tanvrit-coordinator bus'"
            ).fetchone()
        assert killed is not None and killed[0] >= 2
        with trio.fail_after(DEADLINE):
            # Messages sent while it was away are lost, so every waiter is woken to look again.
            await work.wait()
        later = a.work_signal("ws_2").snapshot()
        with trio.fail_after(DEADLINE):
            while not later.is_set():
                b.work_arrived("ws_2")  # the first may meet B's dead sender or A still reconnecting
                with trio.move_on_after(0.2):
                    await later.wait()


async def test_malformed_and_unknown_messages_are_ignored() -> None:
    notifier = Notifier()
    waiting = notifier.work_signal("ws_1").snapshot()
    for message in ("", "w", "w a b", "zz ws_1", "c agt_1"):
        notifier.apply(message)
    assert not waiting.is_set() and not notifier.has_pending_cancels("agt_1")
    notifier.apply("w ws_1")
    assert waiting.is_set()


def test_pending_cancels_per_agent_are_bounded() -> None:
    # Cancels reach every replica; one that never holds the agent's heartbeat keeps the newest only.
    notifier = Notifier()
    for n in range(MAX_PENDING_CANCELS + 5):
        notifier.apply(f"c agt_1 job_{n}")
    pending = notifier.take_pending_cancels("agt_1")
    assert len(pending) == MAX_PENDING_CANCELS
    assert "job_0" not in pending and f"job_{MAX_PENDING_CANCELS + 4}" in pending
