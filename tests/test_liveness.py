"""Liveness and leases with an injected clock against the real SQLite store: no sleeping."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import trio

from common.clock import ManualClock, to_millis
from common.protocol import CapacityMsg, FinishedEvent, HeartbeatRequest, LogEvent, RunningJob, StartedEvent
from common.states import AgentState, JobState
from coordinator.liveness import AgentPulse, LivenessPolicy, decide, liveness_tick, serve_heartbeat_flush
from coordinator.notify import Notifier
from coordinator.store.base import AgentRecord, DeleteOutcome, JobRecord, TokenRecord
from coordinator.store.sqlite import SqliteStore, open_sqlite_store

FREE = CapacityMsg(cpus=8, memoryMb=8192, gpus=0)
POLICY = LivenessPolicy(grace_ms=30_000, lease_ms=300_000)


def _pulse(last: int | None, state: AgentState = AgentState.READY, jobs: int = 1) -> AgentPulse:
    return AgentPulse(agent_id="agt_1", state=state, registered_at=0, last_heartbeat_at=last, active_jobs=jobs)


def test_down_strictly_after_the_grace_and_lost_strictly_after_the_lease() -> None:
    assert decide([_pulse(0)], 30_000, POLICY).mark_down == ()
    assert decide([_pulse(0)], 30_001, POLICY).mark_down == ("agt_1",)
    assert decide([_pulse(0, AgentState.DOWN)], 330_000, POLICY).expire_leases == ()
    assert decide([_pulse(0, AgentState.DOWN)], 330_001, POLICY).expire_leases == ("agt_1",)
    # Already DOWN: not marked again. No jobs: no lease to expire.
    assert decide([_pulse(0, AgentState.DOWN, jobs=0)], 400_000, POLICY).empty
    # Never heartbeated: registration time counts as the last sign of life.
    assert decide([_pulse(None)], 30_001, POLICY).mark_down == ("agt_1",)


class World:
    def __init__(self, store: SqliteStore, clock: ManualClock) -> None:
        self.store = store
        self.clock = clock
        self.notifier = Notifier()
        self.seq = 0

    @property
    def now(self) -> int:
        return to_millis(self.clock.now())

    async def tick(self) -> None:
        await liveness_tick(self.store, self.notifier, self.now, POLICY)

    async def agent_state(self, agent_id: str = "agt_1") -> AgentState:
        agent = await self.store.get_agent("ws_1", agent_id)
        assert agent is not None
        return agent.state

    async def job(self, job_id: str = "job_1") -> JobRecord:
        job = await self.store.get_job("ws_1", job_id)
        assert job is not None
        return job

    async def beat(self, running: list[RunningJob], agent_id: str = "agt_1") -> list[str]:
        _, stop = await self.store.record_heartbeat(agent_id, HeartbeatRequest(state=AgentState.READY,
                                                                               runningJobs=running), self.now)
        return stop

    async def send(self, event_type: type, agent_id: str = "agt_1", **fields: object) -> list[str]:
        self.seq += 1
        event = event_type(seq=self.seq, **fields)
        result = await self.store.apply_events(agent_id, [event], self.now)
        return [rejection.code for rejection in result.rejected]

    async def start_running(self, job_id: str = "job_1", agent_id: str = "agt_1") -> int:
        assignment = await self.store.claim_job(agent_id, FREE, None, self.now)
        assert assignment is not None and assignment.jobId == job_id
        assert await self.send(StartedEvent, agent_id, jobId=job_id, epoch=assignment.epoch,
                               at="2026-01-01T00:00:00Z") == []
        return assignment.epoch


@asynccontextmanager
async def world(tmp_path: Path, jobs: int = 1) -> AsyncIterator[World]:
    clock = ManualClock()
    async with open_sqlite_store(tmp_path / "db") as store:
        now = to_millis(clock.now())
        await store.bootstrap(user_id="usr_1", email="o@x", workspace_id="ws_1", workspace_name="w", plan="hobby",
                              tokens=[], now=now)
        for index in range(1, jobs + 1):
            await store.insert_job(JobRecord(id=f"job_{index}", workspace_id="ws_1", state=JobState.QUEUED,
                                             command="true", name=None, labels={}, resources=None, env={},
                                             timeout_seconds=60, created_at=now + index))
        for agent_id in ("agt_1", "agt_2"):
            await store.register_agent(
                AgentRecord(id=agent_id, workspace_id="ws_1", name=agent_id, state=AgentState.READY, labels={},
                            capacity=FREE.model_dump(), version="t", registered_at=now, last_heartbeat_at=now),
                TokenRecord(id=f"tok_{agent_id}", kind="agent", token_hash=f"hash_{agent_id}", workspace_id="ws_1",
                            user_id=None, agent_id=agent_id, name="a", created_at=now),
            )
        yield World(store, clock)


async def test_silent_agent_goes_down_then_its_jobs_are_lost_after_the_lease(tmp_path: Path) -> None:
    async with world(tmp_path) as w:
        await w.start_running()
        w.clock.advance(30)
        await w.tick()
        assert await w.agent_state() == AgentState.READY
        w.clock.advance(0.001)
        await w.tick()
        assert await w.agent_state() == AgentState.DOWN
        # DOWN is not LOST: the job keeps its owner for the lease window (grace + lease = 330 s).
        w.clock.advance(299.999)
        await w.tick()
        job = await w.job()
        assert job.state == JobState.RUNNING and job.agent_id == "agt_1"
        w.clock.advance(0.001)
        await w.tick()
        job = await w.job()
        assert job.state == JobState.LOST
        assert job.reason == "agent_lost" and job.finished_at == w.now
        # agt_2 was silent as long, so it is DOWN too; it held no jobs, so nothing else changed.
        assert await w.agent_state("agt_2") == AgentState.DOWN
        # A heartbeat brings it back.
        await w.beat([], agent_id="agt_2")
        assert await w.agent_state("agt_2") == AgentState.READY


async def test_agent_reconnecting_inside_the_lease_keeps_its_jobs(tmp_path: Path) -> None:
    async with world(tmp_path) as w:
        epoch = await w.start_running()
        w.clock.advance(200)
        await w.tick()
        assert await w.agent_state() == AgentState.DOWN
        # Back, still running the job: READY again, and the job is not to be stopped.
        assert await w.beat([RunningJob(jobId="job_1", epoch=epoch)]) == []
        assert await w.agent_state() == AgentState.READY
        # Past the moment the old silence would have expired the lease: nothing is lost.
        w.clock.advance(150)
        await w.tick()
        assert (await w.job()).state == JobState.RUNNING
        assert await w.send(FinishedEvent, jobId="job_1", epoch=epoch, at="2026-01-01T00:05:50Z",
                            state=JobState.SUCCEEDED, exitCode=0, runtimeMs=350_000) == []
        assert (await w.job()).state == JobState.SUCCEEDED


async def test_late_result_after_a_partition_wins_over_lost(tmp_path: Path) -> None:
    async with world(tmp_path) as w:
        epoch = await w.start_running()
        w.clock.advance(400)
        await w.tick()
        await w.tick()
        assert (await w.job()).state == JobState.LOST
        # The agent comes back still running it: it is not told to stop (its result still counts).
        assert await w.beat([RunningJob(jobId="job_1", epoch=epoch)]) == []
        # A stale epoch cannot claim the result; a second "started" cannot revive it.
        assert await w.send(FinishedEvent, jobId="job_1", epoch=epoch + 1, at="2026-01-01T00:06:40Z",
                            state=JobState.FAILED, exitCode=1, runtimeMs=1) == ["stale_epoch"]
        assert await w.send(StartedEvent, jobId="job_1", epoch=epoch, at="2026-01-01T00:00:00Z") == [
            "invalid_transition"]
        # Logs spooled during the partition still land, then the real result replaces LOST.
        assert await w.send(LogEvent, jobId="job_1", epoch=epoch, data="done\n") == []
        assert await w.send(FinishedEvent, jobId="job_1", epoch=epoch, at="2026-01-01T00:06:40Z",
                            state=JobState.FAILED, exitCode=3, runtimeMs=400_000) == []
        job = await w.job()
        assert (job.state, job.exit_code, job.runtime_ms) == (JobState.FAILED, 3, 400_000)
        # Terminal now for good: nothing moves it again.
        assert await w.send(FinishedEvent, jobId="job_1", epoch=epoch, at="2026-01-01T00:06:41Z",
                            state=JobState.SUCCEEDED, exitCode=0, runtimeMs=1) == ["invalid_transition"]


async def test_result_from_another_agent_is_refused(tmp_path: Path) -> None:
    async with world(tmp_path) as w:
        epoch = await w.start_running()
        assert await w.send(FinishedEvent, agent_id="agt_2", jobId="job_1", epoch=epoch,
                            at="2026-01-01T00:00:01Z", state=JobState.SUCCEEDED, exitCode=0,
                            runtimeMs=1) == ["stale_epoch"]
        assert (await w.job()).state == JobState.RUNNING


async def test_heartbeat_between_decision_and_write_wins(tmp_path: Path) -> None:
    async with world(tmp_path) as w:
        epoch = await w.start_running()
        w.clock.advance(400)
        decision = decide(await w.store.agent_pulses(), w.now, POLICY)
        assert "agt_1" in decision.mark_down and "agt_1" in decision.expire_leases
        await w.beat([RunningJob(jobId="job_1", epoch=epoch)])
        assert not await w.store.mark_agent_down("agt_1", seen_before=w.now - POLICY.grace_ms, now=w.now)
        assert await w.store.expire_leases("agt_1", seen_before=w.now - POLICY.lose_after_ms, now=w.now) == []
        assert await w.agent_state() == AgentState.READY
        assert (await w.job()).state == JobState.RUNNING


async def test_assigned_job_of_a_vanished_agent_is_lost_too(tmp_path: Path) -> None:
    async with world(tmp_path) as w:
        assert await w.store.claim_job("agt_1", FREE, None, w.now) is not None
        w.clock.advance(331)
        await w.tick()
        assert (await w.job()).state == JobState.LOST


async def test_cancel_that_never_reached_a_vanished_agent_ends_cancelled(tmp_path: Path) -> None:
    async with world(tmp_path) as w:
        await w.start_running()
        cancelled = await w.store.cancel_job("ws_1", "job_1", w.now)
        assert cancelled is not None and cancelled.state == JobState.RUNNING and cancelled.cancel_requested
        w.clock.advance(331)
        await w.tick()
        job = await w.job()
        assert (job.state, job.reason) == (JobState.CANCELLED, "cancelled")


async def test_stop_orders_name_cancelled_and_foreign_jobs(tmp_path: Path) -> None:
    async with world(tmp_path, jobs=2) as w:
        epoch = await w.start_running("job_1")
        await w.store.cancel_job("ws_1", "job_1", w.now)
        # Reported job cancelled, a job it does not own, and a stale epoch: all stopped.
        stop = await w.beat([RunningJob(jobId="job_1", epoch=epoch), RunningJob(jobId="job_2", epoch=1),
                             RunningJob(jobId="job_9", epoch=1)])
        assert stop == ["job_1", "job_2", "job_9"]
        # A cancelled running job the agent did not report is named too (reads, no write).
        orders = await w.store.agent_orders("agt_1", [])
        assert orders == (False, ["job_1"])


async def test_delete_agent_busy_unless_forced(tmp_path: Path) -> None:
    async with world(tmp_path, jobs=2) as w:
        await w.start_running("job_1")
        assert await w.store.claim_job("agt_1", FREE, None, w.now) is not None  # job_2 ASSIGNED
        assert await w.store.delete_agent("ws_1", "agt_1", force=False, now=w.now) == DeleteOutcome.BUSY
        assert await w.store.delete_agent("ws_other", "agt_1", force=True, now=w.now) == DeleteOutcome.NOT_FOUND
        assert await w.store.delete_agent("ws_1", "agt_1", force=True, now=w.now) == DeleteOutcome.DELETED
        running, assigned = await w.job("job_1"), await w.job("job_2")
        assert (running.state, running.reason) == (JobState.LOST, "agent_deleted")
        assert (assigned.state, assigned.agent_id) == (JobState.QUEUED, None)
        token = await w.store.find_token("hash_agt_1")
        assert token is not None and token.revoked_at == w.now
        assert await w.store.get_agent("ws_1", "agt_1") is None
        assert await w.store.agent_orders("agt_1", []) is None
        assert "agt_1" not in {pulse.agent_id for pulse in await w.store.agent_pulses()}
        # The requeued job goes to another agent with a new epoch.
        again = await w.store.claim_job("agt_2", FREE, None, w.now)
        assert again is not None and (again.jobId, again.epoch) == ("job_2", 2)
        assert await w.store.delete_agent("ws_1", "agt_1", force=True, now=w.now) == DeleteOutcome.NOT_FOUND


async def test_assigned_job_not_started_within_its_lease_is_queued_again_with_a_new_epoch(tmp_path: Path) -> None:
    async with world(tmp_path) as w:
        first = await w.store.claim_job("agt_1", FREE, None, w.now)
        assert first is not None and first.epoch == 1
        w.clock.advance(30)
        await w.beat([], agent_id="agt_2")  # agt_1 is silent (its claim's answer was lost, say)
        await w.tick()
        assert (await w.job()).state == JobState.ASSIGNED  # exactly at the lease: still its own
        w.clock.advance(0.001)
        await w.tick()
        job = await w.job()
        assert (job.state, job.agent_id) == (JobState.QUEUED, None)
        assert [(a.epoch, a.state, a.reason) for a in job.attempts] == [(1, JobState.QUEUED, "assignment_expired")]
        second = await w.store.claim_job("agt_2", FREE, None, w.now)
        assert second is not None and second.epoch == 2
        # The first claim's agent starting it late is refused: the job is another attempt's now.
        assert await w.send(StartedEvent, "agt_1", jobId="job_1", epoch=1, at="2026-01-01T00:00:00Z") == ["stale_epoch"]
        w.clock.advance(10)
        await w.tick()
        assert (await w.job()).state == JobState.ASSIGNED  # its own lease started at its claim


async def test_an_assignment_its_agent_lists_in_a_heartbeat_is_not_handed_to_another(tmp_path: Path) -> None:
    """The agent has the job (it lists it) but its `started` event is stuck behind a backlog of
    output in its spool: the lease must not queue the job again, or it would run twice."""
    async with world(tmp_path) as w:
        first = await w.store.claim_job("agt_1", FREE, None, w.now)
        assert first is not None
        await w.beat([RunningJob(jobId="job_1", epoch=first.epoch)])
        w.clock.advance(120)
        await w.beat([RunningJob(jobId="job_1", epoch=first.epoch)])
        await w.tick()
        assert ((await w.job()).state, (await w.job()).agent_id) == (JobState.ASSIGNED, "agt_1")
        assert await w.store.claim_job("agt_2", FREE, None, w.now) is None
        assert await w.send(StartedEvent, "agt_1", jobId="job_1", epoch=first.epoch,
                            at="2026-01-01T00:00:00Z") == []
        assert (await w.job()).state == JobState.RUNNING


async def test_a_started_job_has_no_assignment_lease(tmp_path: Path) -> None:
    async with world(tmp_path) as w:
        await w.start_running()
        await w.beat([RunningJob(jobId="job_1", epoch=1)])
        w.clock.advance(29)
        await w.beat([RunningJob(jobId="job_1", epoch=1)])
        w.clock.advance(29)
        await w.tick()
        assert (await w.job()).state == JobState.RUNNING


async def test_release_queues_the_assignment_again_once(tmp_path: Path) -> None:
    async with world(tmp_path) as w:
        assignment = await w.store.claim_job("agt_1", FREE, None, w.now)
        assert assignment is not None
        assert await w.store.release_assignment("agt_2", "job_1", assignment.epoch, w.now) is None  # not its job
        assert await w.store.release_assignment("agt_1", "job_1", assignment.epoch + 1, w.now) is None  # not that claim
        assert await w.store.release_assignment("agt_1", "job_1", assignment.epoch, w.now) == "ws_1"
        job = await w.job()
        assert (job.state, job.agent_id, job.attempts[-1].reason) == (JobState.QUEUED, None, "released")
        assert await w.store.release_assignment("agt_1", "job_1", assignment.epoch, w.now) is None  # idempotent
        again = await w.store.claim_job("agt_2", FREE, None, w.now)
        assert again is not None and again.epoch == assignment.epoch + 1


async def test_a_stopping_agent_is_draining_gets_no_work_and_its_goodbye_makes_it_down(tmp_path: Path) -> None:
    async with world(tmp_path, jobs=2) as w:
        epoch = await w.start_running()
        await w.store.record_heartbeat("agt_1", HeartbeatRequest(
            state=AgentState.DRAINING, runningJobs=[RunningJob(jobId="job_1", epoch=epoch)]), w.now)
        assert await w.agent_state() == AgentState.DRAINING  # though nobody asked it to drain
        assert await w.store.claim_job("agt_1", FREE, None, w.now) is None
        assert await w.send(FinishedEvent, jobId="job_1", epoch=epoch, at="2026-01-01T00:00:01Z",
                            state=JobState.SUCCEEDED, exitCode=0, runtimeMs=1000) == []
        await w.store.record_heartbeat("agt_1", HeartbeatRequest(state=AgentState.DRAINED), w.now)
        assert await w.agent_state() == AgentState.DRAINED
        # agt_2 holds an assignment it never started when it says goodbye: queued again at once.
        held = await w.store.claim_job("agt_2", FREE, None, w.now)
        assert held is not None and held.jobId == "job_2"
        assert await w.store.agent_goodbye("agt_2", w.now) == ["job_2"]
        assert await w.store.agent_goodbye("agt_1", w.now) == []
        assert await w.agent_state() == AgentState.DOWN and await w.agent_state("agt_2") == AgentState.DOWN
        assert (await w.job("job_2")).state == JobState.QUEUED


# --- heartbeats that change nothing are buffered, not written (coordinator/store/beats.py) ----
async def _quiet_beat(w: World, running: list[RunningJob] | None = None) -> None:
    await w.store.record_heartbeat("agt_1", HeartbeatRequest(state=AgentState.READY, runningJobs=running or []),
                                   w.now)


async def test_a_heartbeat_that_changes_nothing_is_not_a_write(tmp_path: Path) -> None:
    async with world(tmp_path) as w:
        epoch = await w.start_running()
        await w.beat([RunningJob(jobId="job_1", epoch=epoch)])  # RUNNING, listed: settled from here on
        w.clock.advance(5)
        commits = w.store.commits
        for _ in range(3):
            await _quiet_beat(w, [RunningJob(jobId="job_1", epoch=epoch)])
        # A first beat after a restart repeats labels, capacity and version: unchanged, nothing written,
        # and (``written`` False) the API wakes no waiting claim for it.
        answer = await w.store.record_heartbeat("agt_1", HeartbeatRequest(
            state=AgentState.READY, runningJobs=[RunningJob(jobId="job_1", epoch=epoch)], labels={}, capacity=FREE,
            version="t"), w.now)
        assert answer == (False, []) and not answer.written
        assert w.store.commits == commits
        # Shown at once all the same, then written by one flush.
        agent = await w.store.get_agent("ws_1", "agt_1")
        assert agent is not None and agent.last_heartbeat_at == w.now
        assert [p.last_heartbeat_at for p in await w.store.agent_pulses() if p.agent_id == "agt_1"] == [w.now - 5000]
        assert await w.store.flush_heartbeats() == 1
        assert w.store.commits == commits + 1
        assert [p.last_heartbeat_at for p in await w.store.agent_pulses() if p.agent_id == "agt_1"] == [w.now]
        assert await w.store.flush_heartbeats() == 0 and w.store.commits == commits + 1  # nothing left


async def test_a_heartbeat_that_changes_something_is_still_a_write(tmp_path: Path) -> None:
    async with world(tmp_path) as w:
        commits = w.store.commits
        answer = await w.store.record_heartbeat("agt_1", HeartbeatRequest(state=AgentState.READY,
                                                                          labels={"gpu": "a100"}), w.now)
        assert w.store.commits == commits + 1 and answer.written
        agent = await w.store.get_agent("ws_1", "agt_1")
        assert agent is not None and agent.labels == {"gpu": "a100"}
        # A claimed job the agent now lists: its assignment is confirmed, a write.
        assignment = await w.store.claim_job("agt_1", FREE, None, w.now)
        assert assignment is not None
        commits = w.store.commits
        await _quiet_beat(w, [RunningJob(jobId="job_1", epoch=assignment.epoch)])
        assert w.store.commits == commits + 1
        # Stopping on its own (DRAINING), then back to READY: state changes are writes.
        await w.store.record_heartbeat("agt_2", HeartbeatRequest(state=AgentState.DRAINING), w.now)
        assert await w.agent_state("agt_2") == AgentState.DRAINED
        commits = w.store.commits
        await w.store.record_heartbeat("agt_2", HeartbeatRequest(state=AgentState.READY), w.now)
        assert w.store.commits == commits + 1 and await w.agent_state("agt_2") == AgentState.READY


async def test_a_silent_agent_still_goes_down_when_its_last_beat_was_buffered(tmp_path: Path) -> None:
    async with world(tmp_path) as w:
        w.clock.advance(10)
        commits = w.store.commits
        await _quiet_beat(w)
        assert w.store.commits == commits  # buffered only
        w.clock.advance(30)  # exactly the grace since the buffered beat: still alive
        await w.tick()
        assert await w.agent_state() == AgentState.READY
        assert await w.agent_state("agt_2") == AgentState.DOWN  # silent since registration
        w.clock.advance(0.001)
        await w.tick()
        assert await w.agent_state() == AgentState.DOWN


async def test_a_beating_agent_is_never_marked_down_because_of_the_buffer(tmp_path: Path) -> None:
    async with world(tmp_path) as w:
        epoch = await w.start_running()
        await w.beat([RunningJob(jobId="job_1", epoch=epoch)])
        # 20 minutes of beats every 5 s, none of them written by itself, liveness checked between.
        for _ in range(240):
            w.clock.advance(5)
            await _quiet_beat(w, [RunningJob(jobId="job_1", epoch=epoch)])
            await w.tick()
            assert await w.agent_state() == AgentState.READY
        assert (await w.job()).state == JobState.RUNNING
        # The decision's own re-check counts a beat buffered after the pulses were read.
        w.clock.advance(400)
        decision = decide(await w.store.agent_pulses(), w.now, POLICY)
        assert "agt_1" in decision.mark_down and "agt_1" in decision.expire_leases
        await _quiet_beat(w, [RunningJob(jobId="job_1", epoch=epoch)])
        assert not await w.store.mark_agent_down("agt_1", seen_before=w.now - POLICY.grace_ms, now=w.now)
        assert await w.store.expire_leases("agt_1", seen_before=w.now - POLICY.lose_after_ms, now=w.now) == []
        assert (await w.job()).state == JobState.RUNNING


async def test_the_leader_decides_from_beats_another_replica_flushed(tmp_path: Path) -> None:
    async with world(tmp_path) as w, open_sqlite_store(tmp_path / "db") as replica_b:
        # The agent's beats land on replica B, which buffers them; A (the leader) runs liveness.
        start = w.now
        for _ in range(12):  # a minute of beats every 5 s, B flushing as serve_heartbeat_flush does
            w.clock.advance(5)
            commits = replica_b.commits
            await replica_b.record_heartbeat("agt_1", HeartbeatRequest(state=AgentState.READY), w.now)
            assert replica_b.commits == commits  # buffered, not written
            await replica_b.flush_heartbeats()
            await w.tick()
            assert await w.agent_state() == AgentState.READY
        assert await w.agent_state("agt_2") == AgentState.DOWN  # silent since `start`
        assert [p.last_heartbeat_at for p in await w.store.agent_pulses() if p.agent_id == "agt_1"] == [
            start + 60_000]
        # Then silent: DOWN once the grace has passed since its last flushed beat, not before.
        w.clock.advance(30)
        await w.tick()
        assert await w.agent_state() == AgentState.READY
        w.clock.advance(0.001)
        await w.tick()
        assert await w.agent_state() == AgentState.DOWN


async def test_the_flush_task_writes_what_is_buffered_when_it_stops(tmp_path: Path) -> None:
    async with world(tmp_path) as w:
        w.clock.advance(5)
        await _quiet_beat(w)
        async with trio.open_nursery() as nursery:
            await nursery.start(serve_heartbeat_flush, w.store, 3600.0)  # its own period never comes
            nursery.cancel_scope.cancel()
        assert len(w.store.beat_buffer) == 0
        assert [p.last_heartbeat_at for p in await w.store.agent_pulses() if p.agent_id == "agt_1"] == [w.now]


async def test_a_flush_never_moves_the_last_heartbeat_backwards(tmp_path: Path) -> None:
    async with world(tmp_path) as w:
        late = w.now
        w.clock.advance(10)
        await w.store.record_heartbeat("agt_1", HeartbeatRequest(state=AgentState.READY, version="2"), w.now)  # a write
        w.store.beat_buffer.heard("agt_1", late)  # an older beat, say from a request that was slow to arrive
        assert await w.store.flush_heartbeats() == 0
        assert [p.last_heartbeat_at for p in await w.store.agent_pulses() if p.agent_id == "agt_1"] == [w.now]
