"""Agent liveness and job leases: pure decisions taking ``now``, and the loop that applies them.

Timeline of an agent that stops heartbeating (times relative to its last heartbeat)::

    0 ──────────── grace (30 s) ──────────── grace + lease (30 s + 5 min) ──────▶
    READY/DRAINING…         DOWN                     its ASSIGNED/RUNNING jobs → LOST
                    (jobs keep their owner: a reconnecting agent can still report them)

As in HTCondor, a missed heartbeat is not yet a lost job: a partitioned agent that comes back
inside the lease window finds its jobs still its own, and one that reports a final result even
after LOST wins, provided it holds the job's current lease epoch (the store checks that, so no
other attempt can have started). The decisions here read only the agents' last heartbeats;
the store re-checks the same condition inside its write, so a heartbeat that lands between the
decision and the write always wins. Heartbeats that change nothing are buffered in memory and
flushed in batches (coordinator/store/beats.py): a pass flushes this replica's buffer first,
and every replica flushes its own every ``DEFAULT_FLUSH_SECONDS`` (``serve_heartbeat_flush``),
so the leader decides from beats at most that old. The grace grows with the heartbeat
interval handed out to a large fleet (``stretched``, coordinator/cadence.py): the 30 s above is
that of a fleet small enough for the base 5 s interval.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace

import structlog
import trio

from common.clock import Clock, to_millis
from common.states import AgentState
from coordinator.cadence import HeartbeatCadence
from coordinator.leader import Leadership, sleep_unless_elected
from coordinator.notify import Notifier
from coordinator.store.base import AgentPulse, Store

log = structlog.get_logger("tanvrit.coordinator.liveness")


@dataclass(frozen=True)
class LivenessPolicy:
    """``grace_ms``: silence after which an agent is DOWN. ``lease_ms``: further silence after
    which its jobs are LOST."""

    grace_ms: int = 30_000
    lease_ms: int = 300_000
    # A job ASSIGNED (claimed) but not started within this is queued again under a new epoch:
    # its claim's answer was lost, or its agent could not start it.
    assignment_lease_ms: int = 30_000

    @property
    def lose_after_ms(self) -> int:
        return self.grace_ms + self.lease_ms


@dataclass(frozen=True)
class LivenessDecision:
    mark_down: tuple[str, ...] = ()
    expire_leases: tuple[str, ...] = ()

    @property
    def empty(self) -> bool:
        return not self.mark_down and not self.expire_leases


def last_seen(pulse: AgentPulse) -> int:
    """When the agent last showed life: its last heartbeat, else its registration."""
    return pulse.last_heartbeat_at if pulse.last_heartbeat_at is not None else pulse.registered_at


def is_down(pulse: AgentPulse, now: int, policy: LivenessPolicy) -> bool:
    """Silent for longer than the grace (strictly: exactly at the grace it is still alive)."""
    return now - last_seen(pulse) > policy.grace_ms


def lease_expired(pulse: AgentPulse, now: int, policy: LivenessPolicy) -> bool:
    """Silent for longer than grace plus lease: the jobs it holds are lost."""
    return now - last_seen(pulse) > policy.lose_after_ms


def assignment_cutoff(now: int, policy: LivenessPolicy) -> int:
    """Jobs ASSIGNED strictly before this, and still not started, have outlived their lease."""
    return now - policy.assignment_lease_ms


def decide(pulses: Iterable[AgentPulse], now: int, policy: LivenessPolicy) -> LivenessDecision:
    """Which agents to mark DOWN, and whose job leases to expire, at ``now``."""
    down: list[str] = []
    expire: list[str] = []
    for pulse in pulses:
        if pulse.state != AgentState.DOWN and is_down(pulse, now, policy):
            down.append(pulse.agent_id)
        if pulse.active_jobs and lease_expired(pulse, now, policy):
            expire.append(pulse.agent_id)
    return LivenessDecision(tuple(down), tuple(expire))


async def liveness_tick(store: Store, notifier: Notifier, now: int, policy: LivenessPolicy) -> LivenessDecision:
    """One pass: read the pulses, decide, apply. Returns what was decided (for tests and logs)."""
    # Beats that changed nothing wait in memory (coordinator/store/beats.py): this replica's
    # are written first, so the pulses below count every beat it received before this pass.
    await store.flush_heartbeats()
    # Only agents silent past the grace can be decided about (DOWN, or their leases expired):
    # the others are not read at all.
    decision = decide(await store.agent_pulses(silent_before=now - policy.grace_ms), now, policy)
    for agent_id in decision.mark_down:
        if await store.mark_agent_down(agent_id, seen_before=now - policy.grace_ms, now=now):
            log.warning("agent down: no heartbeat within the grace", agent_id=agent_id,
                        grace_s=policy.grace_ms / 1000)
    for agent_id in decision.expire_leases:
        lost = await store.expire_leases(agent_id, seen_before=now - policy.lose_after_ms, now=now)
        for job_id in lost:
            notifier.job_changed(job_id)
        if lost:
            log.warning("leases expired: jobs lost", agent_id=agent_id, jobs=lost)
    requeued = await store.requeue_stale_assignments(assigned_before=assignment_cutoff(now, policy), now=now)
    for job_id, workspace_id in requeued:
        notifier.job_changed(job_id)
        notifier.work_arrived(workspace_id)
    if requeued:
        log.warning("assignments not started within their lease: queued again",
                    jobs=[job_id for job_id, _ in requeued], lease_s=policy.assignment_lease_ms / 1000)
    # Why queued jobs wait follows what just changed (agents down, drained, caps reached).
    await store.refresh_queued_reasons(now)
    return decision


async def serve_heartbeat_flush(store: Store, flush_seconds: float, *,
                                task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Write this replica's buffered heartbeats every ``flush_seconds`` (on every replica, leader
    or not: the leader decides liveness from what all of them flushed), and once more when
    cancelled, so a clean shutdown loses no beat."""
    task_status.started()
    try:
        while True:
            await trio.sleep(flush_seconds)
            try:
                await store.flush_heartbeats()
            except Exception:
                # Kept buffered; the next flush retries. The grace covers a few missed flushes.
                log.exception("heartbeat flush failed")
    finally:
        with trio.CancelScope(shield=True), trio.move_on_after(5):
            try:
                await store.flush_heartbeats()
            except Exception:
                log.exception("final heartbeat flush failed")


def stretched(policy: LivenessPolicy, cadence: HeartbeatCadence | None, now: int) -> LivenessPolicy:
    """``policy`` with the grace the heartbeat intervals handed out lately need (an agent told to
    beat every 60 s is not DOWN after 30 s of silence: coordinator/cadence.py)."""
    if cadence is None:
        return policy
    grace_ms = max(policy.grace_ms, cadence.grace_ms(now))
    return policy if grace_ms == policy.grace_ms else replace(policy, grace_ms=grace_ms)


async def serve_liveness(store: Store, notifier: Notifier, clock: Clock, policy: LivenessPolicy,
                         check_interval_seconds: float, *, leadership: Leadership | None = None,
                         cadence: HeartbeatCadence | None = None,
                         task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Run ``liveness_tick`` every ``check_interval_seconds`` until cancelled; with
    ``leadership``, only while this replica holds the cluster lease, its writes fenced; with
    ``cadence``, under the grace its intervals need (``stretched``)."""
    task_status.started()

    async def tick() -> None:
        now = to_millis(clock.now())
        await liveness_tick(store, notifier, now, stretched(policy, cadence, now))

    while True:
        try:
            if leadership is None:
                await tick()
            else:
                await leadership.run(tick)
        except Exception:
            # One failed pass must not take the API down with it; the next pass retries.
            log.exception("liveness check failed")
        await sleep_unless_elected(leadership, check_interval_seconds)
