"""What handlers reach through ``services()``: the store, the clock, wake-ups and settings."""

from __future__ import annotations

from dataclasses import dataclass, field

from quart import current_app

from common.clock import Clock, SystemClock
from coordinator.cadence import CadencePolicy, HeartbeatCadence
from coordinator.identity_cache import IdentityCache
from coordinator.leader import Leadership
from coordinator.metrics import Metrics
from coordinator.notify import Notifier
from coordinator.ratelimit import AddressLimiter, RateLimiter
from coordinator.request_state import current_or_none
from coordinator.settings import Settings
from coordinator.store.base import Store


@dataclass
class Services:
    store: Store
    settings: Settings
    clock: Clock = field(default_factory=SystemClock)
    notifier: Notifier = field(default_factory=Notifier)
    metrics: Metrics = field(default_factory=Metrics)
    # This replica's view of the cluster lease; None: a lone process (tests), always the leader.
    leadership: Leadership | None = None
    ratelimiter: RateLimiter | None = None
    address_limiter: AddressLimiter | None = None
    # Failed authentications not yet written: (minute, client address, workspace or '') -> count.
    auth_failures: dict[tuple[int, str, str], int] = field(default_factory=dict)
    auth_failures_written_at: float = 0.0  # trio time of the last write
    identity_cache: IdentityCache | None = None
    # The heartbeat interval handed to agents, scaled with the fleet (coordinator/cadence.py).
    cadence: HeartbeatCadence | None = None

    def __post_init__(self) -> None:
        if self.ratelimiter is None:
            self.ratelimiter = RateLimiter(self.settings.rate_limits, replicas=self.live_replicas)
        if self.address_limiter is None:
            self.address_limiter = AddressLimiter(self.settings.unauthenticated_rate_limit,
                                                  replicas=self.live_replicas)

        if self.identity_cache is None:
            self.identity_cache = IdentityCache(self.settings.identity_cache_seconds)
        if self.cadence is None:
            self.cadence = heartbeat_cadence(self.settings)
        # Jobs a rule made claimable (dependencies met, a retry) wake the claims waiting for work.
        self.store.on_work_released(self.notifier.work_arrived)
        self.store.on_jobs_changed(self.notifier.job_changed)  # e.g. dependents cancelled with it

    def live_replicas(self) -> int:
        """Replicas sharing the rate limits (each enforces limit / this)."""
        return 1 if self.leadership is None else self.leadership.live_replicas

    @property
    def exports_cluster_gauges(self) -> bool:
        """Cluster-wide gauges (jobs and agents by state) come from the leader only, so a
        scrape of every replica counts each job once."""
        return self.leadership is None or self.leadership.is_leader


def heartbeat_cadence(settings: Settings) -> HeartbeatCadence:
    """The cadence the settings describe (before its first count of the fleet: the base interval)."""
    policy = CadencePolicy(base_seconds=settings.heartbeat_interval_seconds,
                           per_second=settings.heartbeats_per_second,
                           max_seconds=settings.heartbeat_interval_max_seconds)
    return HeartbeatCadence(policy, grace_ms=int(settings.agent_grace_seconds * 1000))


def heartbeat_interval(svc: Services) -> float:
    """The interval to hand an agent in this answer (coordinator/cadence.py)."""
    assert svc.cadence is not None
    return svc.cadence.interval()


def services() -> Services:
    """The coordinator's services: the serving request's (either front door), else the app's.
    (Called several times a request: ``current_or_none`` is imported once, at the top.)"""
    state = current_or_none()
    if state is not None:
        return state.svc
    found: Services = current_app.extensions["tanvrit"]
    return found
