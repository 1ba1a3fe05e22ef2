"""The heartbeat interval scaled with the fleet, and the liveness grace that follows it
(coordinator/cadence.py), with an injected clock against real stores: no sleeping."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import pytest
import trio

from common.clock import ManualClock, to_millis
from common.config import ConfigError
from common.protocol import HeartbeatRequest
from common.states import AgentState
from coordinator.cadence import JITTER, CadencePolicy, HeartbeatCadence, serve_cadence
from coordinator.liveness import LivenessPolicy, liveness_tick, stretched
from coordinator.metrics import Metrics
from coordinator.notify import Notifier
from coordinator.settings import load_settings
from coordinator.store.base import AgentRecord, TokenRecord
from coordinator.store.sqlite import SqliteStore, open_sqlite_store
from tests.inproc import running_coordinator

POLICY = CadencePolicy(base_seconds=5.0, per_second=50.0, max_seconds=60.0)
LIVENESS = LivenessPolicy(grace_ms=30_000, lease_ms=300_000)


def test_the_target_grows_with_the_fleet_between_the_base_and_the_maximum() -> None:
    assert [POLICY.target(n) for n in (0, 1, 250, 1000, 2000, 3000, 5000, 100_000)] == [
        5.0, 5.0, 5.0, 20.0, 40.0, 60.0, 60.0, 60.0]
    # Off: the base whatever the fleet.
    assert CadencePolicy(base_seconds=5.0, per_second=0, max_seconds=60.0).target(100_000) == 5.0


def test_intervals_handed_out_are_jittered_below_the_target_never_below_the_base() -> None:
    draws = iter([0.0, 0.5, 0.999999])
    cadence = HeartbeatCadence(POLICY, 30_000, rng=lambda: next(draws))
    cadence.update(2000, 0)
    assert [cadence.interval() for _ in range(3)] == [40.0, 40.0 * (1 - JITTER / 2), round(40.0 * (1 - JITTER), 3)]
    # Just above the base: the jitter stops at the base.
    cadence = HeartbeatCadence(POLICY, 30_000, rng=lambda: 0.999999)
    cadence.update(260, 0)
    assert cadence.interval() == 5.0
    # A small fleet: the base, no jitter (as before the scaling).
    cadence.update(10, 0)
    assert cadence.interval() == 5.0


def test_the_grace_follows_the_longest_recent_interval_and_outlives_a_shrinking_fleet() -> None:
    cadence = HeartbeatCadence(POLICY, 30_000)
    assert cadence.grace_ms(0) == 30_000  # before any count: the base interval, the configured grace
    cadence.update(5000, 0)
    assert cadence.grace_ms(0) == 30_000 + 55_000  # 60 s interval: the same 25 s of slack as at 5 s
    # Most of the fleet goes away: agents still obeying the 60 s interval they were given keep
    # the longer grace until no such interval can be outstanding.
    cadence.update(100, 1_000)
    assert cadence.target_seconds == 5.0
    hold = cadence.hold_ms()
    assert hold >= 2 * 60_000 + 30_000
    assert cadence.grace_ms(1_000 + hold - 1) == 85_000
    cadence.update(100, 1_000 + hold + 1)
    assert cadence.grace_ms(1_000 + hold + 1) == 30_000
    # The liveness pass never goes below the configured grace.
    assert stretched(LIVENESS, cadence, 0).grace_ms == 30_000
    assert stretched(LIVENESS, None, 0) is LIVENESS


def test_the_settings_and_their_bounds(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text("[server]\nheartbeats_per_second = 20.0\nheartbeat_interval_max_seconds = 45.0\n")
    settings = load_settings(tmp_path, config)
    assert (settings.heartbeats_per_second, settings.heartbeat_interval_max_seconds) == (20.0, 45.0)
    defaults = load_settings(tmp_path)
    assert (defaults.heartbeats_per_second, defaults.heartbeat_interval_max_seconds) == (50.0, 60.0)
    # Longer than an agent holds its heartbeat (MAX_HEARTBEAT_WAIT_SECONDS): refused.
    config.write_text("[server]\nheartbeat_interval_max_seconds = 61.0\n")
    with pytest.raises(ConfigError, match="heartbeat_interval_max_seconds"):
        load_settings(tmp_path, config)


async def _register(store: SqliteStore, agent_id: str, now: int) -> None:
    await store.register_agent(
        AgentRecord(id=agent_id, workspace_id="ws_1", name=agent_id, state=AgentState.READY, labels={},
                    capacity={"cpus": 1, "memoryMb": 1, "gpus": 0}, version="t", registered_at=now,
                    last_heartbeat_at=now),
        TokenRecord(id=f"tok_{agent_id}", kind="agent", token_hash=f"hash_{agent_id}", workspace_id="ws_1",
                    user_id=None, agent_id=agent_id, name="a", created_at=now),
    )


async def test_agents_obeying_a_scaled_interval_are_never_marked_down_as_the_fleet_shrinks(tmp_path: Path) -> None:
    """Two replicas on one database count the same fleet and hand out the same interval; agents
    beat on replica B at whatever interval B hands them, and the leader's liveness pass, under
    the grace those intervals need, never marks one DOWN: not at 60 s intervals, and not when
    the fleet shrinks and the target falls while an agent still obeys the longer interval."""
    clock = ManualClock()
    # 0.05 beats a second for the fleet: 3 agents beat every 60 s, 1 agent every 20 s.
    policy = CadencePolicy(base_seconds=5.0, per_second=0.05, max_seconds=60.0)
    async with open_sqlite_store(tmp_path / "db") as leader, open_sqlite_store(tmp_path / "db") as replica_b:
        now = to_millis(clock.now())
        await leader.bootstrap(user_id="usr_1", email="o@x", workspace_id="ws_1", workspace_name="w", plan="hobby",
                               tokens=[], now=now)
        agents = ("agt_1", "agt_2", "agt_3")
        for agent_id in agents:
            await _register(leader, agent_id, now)
        cadences = [HeartbeatCadence(policy, LIVENESS.grace_ms, rng=lambda: 0.0) for _ in range(2)]
        notifier = Notifier()

        async def refresh() -> None:
            for cadence, store in zip(cadences, (leader, replica_b), strict=True):
                cadence.update(await store.live_agent_count(), to_millis(clock.now()))

        async def state(agent_id: str) -> AgentState:
            agent = await leader.get_agent("ws_1", agent_id)
            assert agent is not None
            return agent.state

        await refresh()
        assert [c.interval() for c in cadences] == [60.0, 60.0]
        next_beat = dict.fromkeys(agents, now)
        beating = set(agents)
        handed: dict[str, list[float]] = {agent_id: [] for agent_id in agents}
        for step in range(1, 241):  # 20 minutes in 5 s steps
            clock.advance(5)
            at = to_millis(clock.now())
            if step == 60:
                beating = {"agt_1"}  # the others stop at minute 5
            for agent_id in sorted(beating):
                if at >= next_beat[agent_id]:
                    await replica_b.record_heartbeat(agent_id, HeartbeatRequest(state=AgentState.READY), at)
                    interval = cadences[1].interval()  # what B's answer tells the agent
                    handed[agent_id].append(interval)
                    next_beat[agent_id] = at + int(interval * 1000)
            await replica_b.flush_heartbeats()  # B flushes every 2 s (serve_heartbeat_flush)
            if step % 2 == 0:
                await refresh()
            await liveness_tick(leader, notifier, at, stretched(LIVENESS, cadences[0], at))
            assert await state("agt_1") == AgentState.READY, f"at step {step}"
        # The silent ones went DOWN (under the 85 s grace), so the fleet shrank to one agent whose
        # interval fell from 60 s to 20 s while it kept beating, and was never DOWN meanwhile.
        assert await state("agt_2") == AgentState.DOWN and await state("agt_3") == AgentState.DOWN
        assert handed["agt_1"][0] == 60.0 and handed["agt_1"][-1] == 20.0
        assert cadences[0].target_seconds == cadences[1].target_seconds == 20.0


async def test_silent_agents_go_down_at_the_stretched_grace_not_at_the_configured_one(tmp_path: Path) -> None:
    clock = ManualClock()
    policy = CadencePolicy(base_seconds=5.0, per_second=0.05, max_seconds=60.0)
    async with open_sqlite_store(tmp_path / "db") as store:
        now = to_millis(clock.now())
        await store.bootstrap(user_id="usr_1", email="o@x", workspace_id="ws_1", workspace_name="w", plan="hobby",
                              tokens=[], now=now)
        for agent_id in ("agt_1", "agt_2", "agt_3"):
            await _register(store, agent_id, now)
        cadence = HeartbeatCadence(policy, LIVENESS.grace_ms)
        cadence.update(await store.live_agent_count(), now)
        clock.advance(85)
        at = to_millis(clock.now())
        await liveness_tick(store, Notifier(), at, stretched(LIVENESS, cadence, at))
        assert {p.state for p in await store.agent_pulses()} == {AgentState.READY}
        clock.advance(0.001)
        at = to_millis(clock.now())
        await liveness_tick(store, Notifier(), at, stretched(LIVENESS, cadence, at))
        assert {p.state for p in await store.agent_pulses()} == {AgentState.DOWN}
        assert await store.live_agent_count() == 0


async def test_agents_are_told_the_scaled_interval_over_http(tmp_path: Path) -> None:
    """Register and heartbeat answers (the fast lane's and Quart's alike: the same view) carry
    the interval scaled for the fleet the coordinator counted."""
    async with running_coordinator(tmp_path, heartbeats_per_second=0.05) as co:
        _, agent = await co.register_agent("a")
        _, other = await co.register_agent("b")
        assert co.svc.cadence is not None
        co.svc.cadence.update(await co.store.live_agent_count(), to_millis(co.clock.now()))
        async with agent, other:
            answer = await agent.post("/agent/v0/heartbeat", json={"state": "READY", "runningJobs": []})
            assert answer.status_code == 200, answer.text
            interval = answer.json()["heartbeatIntervalSeconds"]
            assert 40.0 * (1 - JITTER) <= interval <= 40.0  # 2 agents at 0.05 beats/s


async def test_the_cadence_task_counts_the_fleet_and_exports_the_interval_and_grace(tmp_path: Path) -> None:
    clock = ManualClock()
    async with open_sqlite_store(tmp_path / "db") as store:
        now = to_millis(clock.now())
        await store.bootstrap(user_id="usr_1", email="o@x", workspace_id="ws_1", workspace_name="w", plan="hobby",
                              tokens=[], now=now)
        for agent_id in ("agt_1", "agt_2"):
            await _register(store, agent_id, now)
        cadence = HeartbeatCadence(CadencePolicy(base_seconds=5.0, per_second=0.05, max_seconds=60.0), 30_000)
        metrics = Metrics()
        async with trio.open_nursery() as nursery:
            await nursery.start(partial(serve_cadence, store, cadence, clock, metrics=metrics))
            nursery.cancel_scope.cancel()
        assert cadence.live_agents == 2 and cadence.target_seconds == 40.0
        text = (await metrics.render(store, cluster=False)).decode()
        assert "tanvrit_heartbeat_interval_seconds 40.0" in text
        assert "tanvrit_agent_grace_seconds 65.0" in text
