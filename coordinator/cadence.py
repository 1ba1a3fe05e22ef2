"""The heartbeat interval handed to agents, scaled with the fleet against a budget of beats/s.

Every agent heartbeats at the interval the coordinator tells it (``heartbeatIntervalSeconds``
in the register and heartbeat answers; ``agentd`` obeys the latest one). A fixed 5 s costs
``agents / 5`` requests a second: 1,000 a second at 5,000 agents, more than one core of HTTP
handling alone. As in Nomad (``max_heartbeats_per_second``, default 50, and
``min_heartbeat_ttl``, 10 s: TTL = max(min, nodes / rate)), the interval grows with the number
of live agents so the whole fleet beats about ``heartbeats_per_second`` times a second:

    target = clamp(live agents / heartbeats_per_second, heartbeat_interval_seconds,
                   heartbeat_interval_max_seconds)

Each answer hands out the target less a random part of up to ``JITTER`` of it (never below
the base), so agents that got their interval together drift apart instead of beating in step.

**Liveness follows the interval handed out.** An agent obeying a 60 s interval is silent for
60 s between beats; with the configured 30 s grace it would be marked DOWN. So the grace the
liveness pass applies is the configured grace plus how far the interval has grown past the
base (``grace_ms``): the slack an agent has for a late beat stays what it is at the base
interval (25 s by default). Fleets shrink as well as grow: the grace uses the largest target
of the recent past (``HOLD`` covers a beat sent just before the target fell and answered just
after), so an agent still obeying an older, longer interval is never marked down for it.

**The price** (as in Nomad): at a large fleet a dead agent is noticed later. With the defaults
(50 beats/s, 5 s .. 60 s) an agent that dies is DOWN after 30 s up to 250 agents, and after
up to 85 s (60 s interval + the same 25 s slack) from 3,000 agents on; its jobs are LOST a
lease (300 s) after that. Cancellations and drain orders are not slowed: a held heartbeat is
answered as soon as there is an order for its agent, whatever the interval.

**Several replicas** count the live agents of the whole cluster (one ``COUNT`` on the shared
database every ``REFRESH_SECONDS``, by every replica), so each hands out the same interval
and the leader's liveness grace covers what any replica handed out. Between two refreshes the
replicas' counts may differ by the agents that registered or went down in that time; the
slack above absorbs the resulting difference (a few seconds at most for a normal fleet).
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import structlog
import trio

from common.clock import Clock, to_millis
from coordinator.metrics import Metrics
from coordinator.store.base import Store

log = structlog.get_logger("tanvrit.coordinator.cadence")

# Up to this fraction of the target is taken off each interval handed out, at random.
JITTER = 0.2
# How often every replica counts the live agents of the cluster.
REFRESH_SECONDS = 5.0


@dataclass(frozen=True)
class CadencePolicy:
    """``base_seconds``: the interval of a small fleet (``heartbeat_interval_seconds``).
    ``per_second``: the fleet's heartbeat budget (0: off, every agent beats at the base).
    ``max_seconds``: the longest interval handed out (at most the longest held heartbeat)."""

    base_seconds: float = 5.0
    per_second: float = 50.0
    max_seconds: float = 60.0

    def target(self, live_agents: int) -> float:
        """The interval that keeps ``live_agents`` at about ``per_second`` beats a second."""
        if self.per_second <= 0:
            return self.base_seconds
        return max(self.base_seconds, min(self.max_seconds, live_agents / self.per_second))


class HeartbeatCadence:
    """This replica's view of the fleet size, the intervals it hands out, and the grace they need."""

    def __init__(self, policy: CadencePolicy, grace_ms: int, *,
                 rng: Callable[[], float] = random.random) -> None:
        self.policy = policy
        self.configured_grace_ms = grace_ms
        self._rng = rng
        self.live_agents = 0
        self._target = policy.base_seconds
        # (when, target) of the recent past, oldest first: the grace covers the largest of them.
        self._history: deque[tuple[int, float]] = deque()

    @property
    def target_seconds(self) -> float:
        return self._target

    def hold_ms(self) -> int:
        """How long a target keeps counting for the grace after it was replaced: an agent beats
        at most one interval after it was handed one, and that interval may have been handed
        out one interval after its previous beat; the grace itself on top."""
        return int(2 * self.policy.max_seconds * 1000) + self.configured_grace_ms + int(2 * REFRESH_SECONDS * 1000)

    def update(self, live_agents: int, now_ms: int) -> None:
        """The cluster now has ``live_agents`` agents that are not DOWN."""
        target = self.policy.target(live_agents)
        if target != self._target:
            log.info("heartbeat interval rescaled", live_agents=live_agents, interval_s=round(target, 2))
        self._history.append((now_ms, self._target))
        self.live_agents = live_agents
        self._target = target
        self._forget(now_ms)

    def _forget(self, now_ms: int) -> None:
        cutoff = now_ms - self.hold_ms()
        while self._history and self._history[0][0] < cutoff:
            self._history.popleft()

    def interval(self) -> float:
        """The interval to hand out now: the target less up to ``JITTER`` of it, at random."""
        target = self._target
        if target <= self.policy.base_seconds:
            return target
        return round(max(self.policy.base_seconds, target * (1 - JITTER * self._rng())), 3)

    def ceiling_seconds(self, now_ms: int) -> float:
        """The longest interval handed out within the hold (the current target included)."""
        self._forget(now_ms)
        return max([self._target, *(target for _, target in self._history)])

    def grace_ms(self, now_ms: int) -> int:
        """The liveness grace for intervals handed out lately: the configured grace, plus how far
        the longest of them exceeds the base interval."""
        stretch = max(0.0, self.ceiling_seconds(now_ms) - self.policy.base_seconds)
        return self.configured_grace_ms + int(stretch * 1000)


async def serve_cadence(store: Store, cadence: HeartbeatCadence, clock: Clock, refresh_seconds: float = REFRESH_SECONDS,
                        *, metrics: Metrics | None = None,
                        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Count the cluster's live agents every ``refresh_seconds`` and rescale (on every replica);
    the interval and grace now go to ``metrics``."""
    first = True
    while True:
        try:
            now = to_millis(clock.now())
            cadence.update(await store.live_agent_count(), now)
            if metrics is not None:
                metrics.observe_cadence(cadence.target_seconds, cadence.grace_ms(now) / 1000)
        except Exception:
            # The last count stands; the next refresh retries.
            log.exception("counting the live agents failed")
        if first:
            task_status.started()
            first = False
        if cadence.policy.per_second <= 0:
            return  # fixed interval: nothing to count
        await trio.sleep(refresh_seconds)
