"""Prometheus metrics of one coordinator: its own registry (not the library's global one), so
that several apps in one process, as in tests, never share counters.

Request counters and latency are recorded by the app's hooks; job, agent and queue gauges are
read from the store at scrape time, so they are right after a restart and cost nothing between
scrapes.

With several replicas on one database, the job, agent and queue gauges describe the whole
cluster: only the leader exports them (their own registry), so a sum over every replica's
scrape counts each job once. Per-process series (requests, latency, dispatch, ``tanvrit_leader``)
come from every replica.
"""

from __future__ import annotations

import contextlib

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from common.states import AgentState, JobState
from coordinator.store.base import Store

CONTENT_TYPE = CONTENT_TYPE_LATEST

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_DISPATCH_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "tanvrit_http_requests", "HTTP requests answered, by route template, method and status",
            ["route", "method", "status"], registry=self.registry,
        )
        self.latency = Histogram(
            "tanvrit_http_request_duration_seconds", "Time from request to response headers, by route",
            ["route", "method"], buckets=_LATENCY_BUCKETS, registry=self.registry,
        )
        self.dispatch = Histogram(
            "tanvrit_job_dispatch_latency_seconds", "Time from a job's submission to its assignment to an agent",
            buckets=_DISPATCH_BUCKETS, registry=self.registry,
        )
        self.cluster_registry = CollectorRegistry(auto_describe=True)
        self.jobs = Gauge("tanvrit_jobs", "Jobs in the store, by state (exported by the leader only)", ["state"],
                          registry=self.cluster_registry)
        self.agents = Gauge("tanvrit_agents", "Registered agents, by state (exported by the leader only)",
                            ["state"], registry=self.cluster_registry)
        self.leader = Gauge("tanvrit_leader", "1 while this replica holds the cluster lease, else 0",
                            registry=self.registry)
        self.agent_loop_lag = Gauge(
            "tanvrit_agent_loop_lag_seconds",
            "Worst event-loop delay an agent reported in its last heartbeat, by agent", ["agent"],
            registry=self.registry,
        )
        self.store_statements = Gauge(
            "tanvrit_store_statements", "Statements this replica has sent to PostgreSQL (BEGIN and COMMIT included)",
            registry=self.registry,
        )
        # The heartbeat cadence this replica hands out (coordinator/cadence.py): it grows with the fleet.
        self.heartbeat_interval = Gauge(
            "tanvrit_heartbeat_interval_seconds",
            "Heartbeat interval handed to agents now, before jitter (grows with the number of live agents)",
            registry=self.registry,
        )
        self.agent_grace = Gauge(
            "tanvrit_agent_grace_seconds",
            "Silence after which an agent is DOWN now (the configured grace, stretched with the interval)",
            registry=self.registry,
        )
        self._request_series: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}
        self.queue_depth = Gauge("tanvrit_queue_depth", "Jobs waiting to be assigned (QUEUED; leader only)",
                                 registry=self.cluster_registry)

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        key = (route, method, status)
        series = self._request_series.get(key)
        if series is None:
            # Each label lookup validates and joins its labels: kept per series, as a request
            # costs two of them (routes are templates, so the series are few).
            series = (self.requests.labels(route, method, str(status)), self.latency.labels(route, method))
            self._request_series[key] = series
        series[0].inc()
        series[1].observe(seconds)

    def observe_agent_loop_lag(self, agent_id: str, lag_ms: float) -> None:
        self.agent_loop_lag.labels(agent_id).set(lag_ms / 1000)

    def forget_agent(self, agent_id: str) -> None:
        """Drop an agent's own series (it was deleted or said goodbye)."""
        with contextlib.suppress(KeyError):
            self.agent_loop_lag.remove(agent_id)

    def observe_cadence(self, interval_seconds: float, grace_seconds: float) -> None:
        self.heartbeat_interval.set(interval_seconds)
        self.agent_grace.set(grace_seconds)

    def observe_dispatch(self, seconds: float) -> None:
        self.dispatch.observe(max(0.0, seconds))

    async def render(self, store: Store, *, cluster: bool = True, leader: bool = True) -> bytes:
        """The text exposition, with store gauges read now when ``cluster`` (this replica leads)."""
        self.leader.set(int(leader))
        statements = getattr(store, "statements", None)  # PostgreSQL only: a round trip each
        if isinstance(statements, int):
            self.store_statements.set(statements)
        if not cluster:
            return generate_latest(self.registry)
        jobs = await store.count_jobs_by_state()
        for state in JobState:
            self.jobs.labels(state.value).set(jobs.get(state.value, 0))
        agents = await store.count_agents_by_state()
        for agent_state in AgentState:
            self.agents.labels(agent_state.value).set(agents.get(agent_state.value, 0))
        self.queue_depth.set(jobs.get(JobState.QUEUED.value, 0))
        return generate_latest(self.registry) + generate_latest(self.cluster_registry)
