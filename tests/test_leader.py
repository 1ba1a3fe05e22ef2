"""The leader lease (coordinator/leader.py): compare-and-set takeover, fencing of a deposed
leader's writes, and a real takeover after SIGKILL between two coordinator processes.

Two stores opened on one database (a SQLite file, or a PostgreSQL database) stand for two
replicas: each has its own connections, as two processes would.
"""

from __future__ import annotations

import re
import signal
import sqlite3
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
import trio
import trio.testing

from common.clock import ManualClock, to_millis
from coordinator import leader
from coordinator.leader import CLUSTER_LEASE, Leadership, LeadershipLost, LeasePolicy, fenced
from coordinator.store.base import Store
from coordinator.store.factory import open_store
from tests.procs import Coordinator, wait_for
from tests.test_billing_store import CONFIG, ledger

LEASE_MS = 15_000
T0 = 1_800_000_000_000


@asynccontextmanager
async def two_replicas(store_url: str) -> AsyncIterator[tuple[Store, Store]]:
    async with open_store(store_url) as a, open_store(store_url) as b:
        yield a, b


async def test_the_lease_is_taken_renewed_and_taken_over_with_a_new_token(store_url: str) -> None:
    async with two_replicas(store_url) as (a, b):
        first = await a.acquire_lease(CLUSTER_LEASE, "A", T0, LEASE_MS)
        assert first is not None and (first.holder, first.token, first.expires_at) == ("A", 1, T0 + LEASE_MS)
        # B is refused while A's lease runs, up to and including its last millisecond.
        assert await b.acquire_lease(CLUSTER_LEASE, "B", T0 + LEASE_MS - 1, LEASE_MS) is None
        renewed = await a.acquire_lease(CLUSTER_LEASE, "A", T0 + 5_000, LEASE_MS)
        assert renewed is not None and (renewed.token, renewed.acquired_at) == (1, T0)
        assert renewed.expires_at == T0 + 5_000 + LEASE_MS
        assert await b.acquire_lease(CLUSTER_LEASE, "B", T0 + 5_000 + LEASE_MS - 1, LEASE_MS) is None
        # A stops renewing: at its expiry B takes over, and the token moves on.
        taken = await b.acquire_lease(CLUSTER_LEASE, "B", T0 + 5_000 + LEASE_MS, LEASE_MS)
        assert taken is not None and (taken.holder, taken.token) == ("B", 2)
        # A comes back (a long pause): its renewal is refused, it is no longer the leader.
        assert await a.acquire_lease(CLUSTER_LEASE, "A", T0 + 5_000 + LEASE_MS + 1, LEASE_MS) is None
        assert await a.current_lease(CLUSTER_LEASE) == taken


async def test_a_released_lease_is_taken_at_once(store_url: str) -> None:
    async with two_replicas(store_url) as (a, b):
        lease = await a.acquire_lease(CLUSTER_LEASE, "A", T0, LEASE_MS)
        assert lease is not None
        await a.leave_cluster("A", lease.fence)
        taken = await b.acquire_lease(CLUSTER_LEASE, "B", T0 + 1, LEASE_MS)
        assert taken is not None and (taken.holder, taken.token) == ("B", 2)
        # A release with a stale fence changes nothing.
        await a.leave_cluster("A", lease.fence)
        assert await a.current_lease(CLUSTER_LEASE) == taken


async def test_a_deposed_leaders_meter_tick_is_refused_and_usage_counts_once(store_url: str) -> None:
    async with ledger(store_url, datetime(2026, 4, 10, tzinfo=UTC)) as world:
        store = world.store
        old = await store.acquire_lease(CLUSTER_LEASE, "A", world.now, LEASE_MS)
        assert old is not None
        job_id, epoch = await world.start_job()
        await world.send(world.usage(job_id, epoch, cpu=2.0))
        with fenced(old.fence):
            await store.meter_tick(world.now, CONFIG)
        await world.send(world.usage(job_id, epoch, cpu=5.0))
        # A stalls past its lease; B takes over and ticks.
        world.clock.advance(LEASE_MS / 1000)
        new = await store.acquire_lease(CLUSTER_LEASE, "B", world.now, LEASE_MS)
        assert new is not None and new.token == old.token + 1
        ticks_before = await store.next_meter_tick()
        refused = r"^the 'cluster' lease is no longer held with token 1$"
        with fenced(old.fence), pytest.raises(LeadershipLost, match=refused):
            await store.meter_tick(world.now + 1, CONFIG)
        # The refused tick wrote nothing: no roll-up, the tick schedule unchanged.
        assert await store.next_meter_tick() == ticks_before
        assert await _rolled(store) == (2_000_000, 3_000_000)
        with fenced(new.fence):
            await store.meter_tick(world.now + 2, CONFIG)
        assert await _rolled(store) == (5_000_000, 0)
        usage = await world.month_usage(datetime(2026, 4, 1, tzinfo=UTC))
        assert usage.cpu_micros == 5_000_000


async def _rolled(store: Store) -> tuple[int, int]:
    """(CPU micros in hourly roll-ups, CPU micros in ledger rows not yet rolled up)."""
    hourly = (await store._read("SELECT COALESCE(SUM(cpu_micros), 0) FROM usage_hourly"))[0][0]  # type: ignore[attr-defined]
    pending = (await store._read(  # type: ignore[attr-defined]
        "SELECT COALESCE(SUM(cpu_micros), 0) FROM usage_records WHERE rolled_up = 0"))[0][0]
    return int(hourly), int(pending)


async def test_leadership_runs_work_only_while_leading_and_drops_a_refused_fence(store_url: str) -> None:
    async with two_replicas(store_url) as (a, b):
        clock = ManualClock(datetime(2026, 4, 10, tzinfo=UTC))
        ran: list[str] = []

        async def work() -> str:
            await a.replica_heartbeat("A", 0, to_millis(clock.now()), live_after=0)  # a store write
            ran.append("ran")
            return "done"

        follower = Leadership("A")
        assert await follower.run(work) is None and ran == []
        lease = await a.acquire_lease(CLUSTER_LEASE, "A", to_millis(clock.now()), LEASE_MS)
        assert lease is not None
        follower.hold(lease)
        assert await follower.run(work) == "done" and ran == ["ran"]
        clock.advance(LEASE_MS / 1000)
        assert await b.acquire_lease(CLUSTER_LEASE, "B", to_millis(clock.now()), LEASE_MS) is not None
        # A has not heard yet; its next fenced write is refused and it steps down.
        assert follower.is_leader
        assert await follower.run(work) is None
        assert not follower.is_leader and ran == ["ran"]


async def test_serve_leadership_leads_a_lone_replica_from_the_start_and_releases_on_exit(store_url: str) -> None:
    clock = ManualClock(datetime(2026, 4, 10, tzinfo=UTC))
    async with open_store(store_url) as store:
        alone = Leadership("A")
        async with trio.open_nursery() as nursery:
            await nursery.start(leader.serve_leadership, store, clock, alone, LeasePolicy(LEASE_MS, 5_000))
            assert alone.is_leader and alone.live_replicas == 1
            nursery.cancel_scope.cancel()
        assert not alone.is_leader
        lease = await store.current_lease(CLUSTER_LEASE)
        assert lease is not None and lease.expires_at == 0


# --- two real coordinator processes on one database ----------------------------------------

QUICK_LEASE = """
[server]
leader_lease_seconds = 4.0
leader_renew_seconds = 0.1
"""


def _is_leader(url: str) -> bool:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    found = re.search(r"^tanvrit_leader (\S+)$", text, re.MULTILINE)
    assert found is not None, text[:2000]
    return float(found.group(1)) == 1.0


def _exports_cluster_gauges(url: str) -> bool:
    return "\ntanvrit_jobs{" in httpx.get(f"{url}/metrics", timeout=10).text


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[Coordinator, Coordinator]]:
    config = tmp_path / "coordinator.toml"
    config.write_text(QUICK_LEASE)
    # One data dir, so one SQLite database: the second replica finds it initialised.
    data_dir = tmp_path / "cluster"
    first = Coordinator(data_dir, extra_args=("--config", str(config)))
    second = Coordinator(data_dir, extra_args=("--config", str(config)))
    try:
        first.start()
        second.start()
        yield first, second
    finally:
        first.stop(signal.SIGKILL)
        second.stop(signal.SIGKILL)


def test_sigkill_the_leader_and_the_other_replica_takes_over(pair: tuple[Coordinator, Coordinator]) -> None:
    first, second = pair
    assert first.process is not None and second.process is not None
    assert not second.init, "the second replica must not initialise the store again"
    db = first.data_dir / "coordinator.sqlite3"
    # The holder names its process (host:pid:random). A machine stalled for a whole lease may
    # hand the lease over early; the test only needs the first replica to lead when it dies.
    wait_for(lambda: _holder_pid(db) == first.process.pid and _is_leader(first.url) and not _is_leader(second.url),
             message="the first replica leads, the second follows")
    # Cluster gauges come from the leader only.
    assert _exports_cluster_gauges(first.url) and not _exports_cluster_gauges(second.url)
    first.stop(signal.SIGKILL)
    after_kill = _lease(db)
    # The second replica's writes must reach the file others read (a /readyz probe that closed a
    # descriptor of the database once dropped its locks, and its commits were lost to others).
    wait_for(lambda: _holder_pid(db) == second.process.pid and _is_leader(second.url),
             message="the second replica takes over")
    taken = _lease(db)
    assert taken[1] > after_kill[1]
    # Never two leaders: the takeover is no earlier than the dead leader's lease ran to.
    if _pid(after_kill[0]) == first.process.pid:  # read before the takeover (on a loaded machine, maybe not)
        assert taken[2] >= after_kill[3]
    assert _exports_cluster_gauges(second.url)


def _pid(holder: str) -> int:
    return int(holder.split(":")[-2])


def _holder_pid(db: Path) -> int:
    return _pid(_lease(db)[0])


def _lease(db: Path) -> tuple[str, int, int, int]:
    with sqlite3.connect(db) as conn:
        row = conn.execute("SELECT holder, token, acquired_at, expires_at FROM leader_leases").fetchone()
    return str(row[0]), int(row[1]), int(row[2]), int(row[3])


async def test_replicas_count_the_live_ones_for_the_rate_limit_split(store_url: str) -> None:
    async with two_replicas(store_url) as (a, b):
        window = 15_000
        assert await a.replica_heartbeat("A", T0, T0, live_after=T0 - window) == 1
        assert await b.replica_heartbeat("B", T0, T0 + 1_000, live_after=T0 + 1_000 - window) == 2
        # A falls silent: once its last announcement is out of the window, B counts itself alone.
        assert await b.replica_heartbeat("B", T0, T0 + window, live_after=T0) == 1
        # A leaves on purpose: gone at once.
        assert await a.replica_heartbeat("A", T0, T0 + window, live_after=T0) == 2
        await a.leave_cluster("A", None)
        assert await b.replica_heartbeat("B", T0, T0 + window + 1, live_after=T0) == 1


async def test_a_follower_waiting_for_its_next_round_starts_it_when_elected() -> None:
    follower = Leadership("A")
    done = trio.Event()

    async def next_round() -> None:
        await leader.sleep_unless_elected(follower, 3600)
        done.set()

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(next_round)
            await trio.testing.wait_all_tasks_blocked()
            follower.drop()  # another change (none here) keeps it waiting
            await trio.testing.wait_all_tasks_blocked()
            assert not done.is_set()
            follower.hold(leader.Lease(CLUSTER_LEASE, "A", 1, T0, T0 + LEASE_MS))
            await done.wait()
