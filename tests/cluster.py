"""A cluster for tests and benchmarks: N coordinator processes on one database URL, each on a
free loopback port, and simulated agents that speak the agent protocol over real HTTP.

``running_cluster`` starts the replicas (the first one bootstraps the database and prints the
owner and registration tokens; the others join it), and stops every process it started, with
SIGKILL if need be, even when the test fails. Agents and submitters are spread over the
replicas: agent ``i`` lists the URLs starting at replica ``i % N`` (it stays with the first that
answers), submission ``j`` goes to replica ``j % N``.

``SimulatedAgent`` is the agent protocol without processes: it registers, claims, reports a
job ``started``, its usage (a fixed, known figure per attempt) and ``finished``, through
``agentd.client.CoordinatorClient`` (so it fails over between replicas exactly as agentd does),
and records every assignment it got.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import httpx
import trio

from agentd.client import CoordinatorClient, CoordinatorRejected, CoordinatorUnavailable
from common.protocol import (
    CapacityMsg,
    EventBatch,
    FinishedEvent,
    HeartbeatRequest,
    RegisterRequest,
    StartedEvent,
    UsageEvent,
)
from common.states import AgentState, JobState
from tests.procs import Coordinator

# Intervals short enough that liveness, leases, the leader lease, meter ticks and webhook retries
# settle within a test's deadlines, long enough not to busy a loaded 2-core machine.
FAST_CLUSTER_CONFIG = """
[server]
default_plan = "payg"
heartbeat_interval_seconds = 1
liveness_check_seconds = 0.5
agent_grace_seconds = 10
assignment_lease_seconds = 5
leader_lease_seconds = 3
leader_renew_seconds = 1

[rate_limits]
payg = false
unauthenticated = false

[billing]
meter_interval_seconds = 0.5

[webhooks]
retry_base_seconds = 0.2
retry_max_seconds = 1
# Generous: a receiver slowed by a loaded machine must not time out and be sent the event again.
timeout_seconds = 30
poll_seconds = 0.5
"""

# What a simulated agent reports for each attempt (cumulative usage, sent once before finished).
USAGE_CPU_SECONDS = 0.25


@dataclass
class Cluster:
    root: Path
    database: str | None
    replicas: list[Coordinator] = field(default_factory=list)

    @property
    def urls(self) -> list[str]:
        return [replica.url for replica in self.replicas]

    @property
    def token(self) -> str:
        return self.replicas[0].token

    @property
    def registration_token(self) -> str:
        return self.replicas[0].registration_token

    def urls_from(self, index: int) -> list[str]:
        """Every replica's URL, starting at replica ``index % N``: how agent ``index`` lists them."""
        urls = self.urls
        start = index % len(urls)
        return urls[start:] + urls[:start]

    def client(self, index: int = 0) -> httpx.Client:
        """An API client (owner token) on replica ``index % N``."""
        return self.replicas[index % len(self.replicas)].client(self.token)

    def kill(self, index: int) -> None:
        """SIGKILL replica ``index``: no goodbye, no flush, connections cut mid-request."""
        self.replicas[index].stop(signal.SIGKILL)

    def stop(self) -> None:
        for replica in self.replicas:
            replica.stop(signal.SIGTERM, timeout=15)


@contextlib.contextmanager
def running_cluster(root: Path, size: int, database: str | None, *, config: str = FAST_CLUSTER_CONFIG,
                    extra_args: Sequence[str] = ()) -> Iterator[Cluster]:
    """``size`` coordinator processes on ``database`` (a ``postgresql://`` URL; None: SQLite in
    the first replica's data dir, which only one replica may use)."""
    if database is None and size != 1:
        raise ValueError("SQLite serves one coordinator process: give a postgresql:// URL for replicas")
    root.mkdir(parents=True, exist_ok=True)
    config_path = root / "coordinator.toml"
    config_path.write_text(config)
    args = ("--config", str(config_path), "--allow-private-webhooks", *extra_args)
    if database is not None:
        args += ("--database", database)
    cluster = Cluster(root, database)
    try:
        cluster.replicas = [Coordinator(root / f"replica-{index}", extra_args=args) for index in range(size)]
        # The first bootstraps the empty database (and prints its secrets); the others join it
        # at once, side by side.
        cluster.replicas[0].start()
        with ThreadPoolExecutor(max_workers=max(1, size - 1)) as pool:
            for started in [pool.submit(replica.start) for replica in cluster.replicas[1:]]:
                started.result()
        if not cluster.replicas[0].init:
            raise AssertionError("the first replica did not bootstrap the database (no --init-json output)")
        yield cluster
    finally:
        cluster.stop()


class Progress:
    """The distinct jobs simulated agents have run, shared by them; ``reached(n)`` waits for n."""

    def __init__(self) -> None:
        self.jobs: set[str] = set()
        self._waiters: list[tuple[int, trio.Event]] = []

    def ran(self, job_id: str) -> None:
        self.jobs.add(job_id)
        for count, event in self._waiters:
            if len(self.jobs) >= count:
                event.set()

    async def reached(self, count: int) -> None:
        if len(self.jobs) >= count:
            return
        event = trio.Event()
        self._waiters.append((count, event))
        await event.wait()


@dataclass
class SimulatedAgent:
    """One agent's protocol conversation, run in a trio task (see the module docstring)."""

    name: str
    urls: list[str]
    registration_token: str
    cpus: float = 1.0
    ran: list[tuple[str, int]] = field(default_factory=list)  # (job id, epoch) of each assignment
    failovers: int = 0
    progress: Progress | None = None
    client: CoordinatorClient | None = None
    _seq: int = 0

    async def register(self) -> str:
        self.client = CoordinatorClient(self.urls, timeout=15.0)
        capacity = CapacityMsg(cpus=self.cpus, memoryMb=1024, gpus=0)
        request = RegisterRequest(name=self.name, labels={"sim": "1"}, capacity=capacity, version="cluster-test")
        while True:
            try:
                registered = await self.client.register(self.registration_token, request)
                break
            except CoordinatorUnavailable:
                await trio.sleep(0.1)
        self.client.set_token(registered.agentToken)
        await self._send([], heartbeat=True)
        return registered.agentId

    async def run(self, stop: trio.Event, *, wait_seconds: float = 1.0) -> None:
        """Claim and "run" jobs until ``stop`` is set: each assignment is started, metered and
        finished (exit 0) at once."""
        assert self.client is not None
        free = CapacityMsg(cpus=self.cpus, memoryMb=1024, gpus=0)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._heartbeats, stop)
            while not stop.is_set():
                before = self.client.current_url
                try:
                    assignment = await self.client.claim(free, free, wait_seconds)
                except CoordinatorUnavailable:
                    await trio.sleep(0.05)
                    continue
                finally:
                    self.failovers += self.client.current_url != before
                if assignment is None:
                    continue
                self.ran.append((assignment.jobId, assignment.epoch))
                now = datetime.now(UTC).isoformat().replace("+00:00", "Z")
                job, epoch = assignment.jobId, assignment.epoch
                await self._send([
                    StartedEvent(seq=self._next(), jobId=job, epoch=epoch, at=now),
                    UsageEvent(seq=self._next(), jobId=job, epoch=epoch, cpuSeconds=USAGE_CPU_SECONDS,
                               gbSeconds=0.0, gpuSeconds=0.0),
                    FinishedEvent(seq=self._next(), jobId=job, epoch=epoch, at=now, state=JobState.SUCCEEDED,
                                  exitCode=0, runtimeMs=1),
                ])
                if self.progress is not None:
                    self.progress.ran(job)
            nursery.cancel_scope.cancel()

    async def _heartbeats(self, stop: trio.Event) -> None:
        while not stop.is_set():
            await trio.sleep(1.0)
            with contextlib.suppress(CoordinatorUnavailable):
                await self._send([], heartbeat=True)

    def _next(self) -> int:
        self._seq += 1
        return self._seq

    async def _send(self, events: list[StartedEvent | UsageEvent | FinishedEvent], *, heartbeat: bool = False) -> None:
        """Deliver ``events`` in order, re-sending the same batch (same seqs) until a replica
        applies it: what agentd's spool does."""
        assert self.client is not None
        while True:
            try:
                if heartbeat:
                    await self.client.heartbeat(HeartbeatRequest(state=AgentState.READY))
                    return
                answer = await self.client.send_events(EventBatch(events=list(events)))
                if answer.rejected:
                    raise AssertionError(f"{self.name}: events refused: {answer.rejected}")
                return
            except CoordinatorUnavailable:
                await trio.sleep(0.05)
            except CoordinatorRejected as exc:
                raise AssertionError(f"{self.name}: {exc}") from exc

    async def aclose(self) -> None:
        if self.client is not None:
            await self.client.aclose()
