"""The agent's main loop: one nursery running registration, heartbeats, claims, jobs and the
uplink that ships the spool.

    ┌ register (once; credentials kept in the data dir) ┐
    │  heartbeats ── drain / cancel orders ─▶ claim loop, running jobs
    │  claim loop ── long-poll claim ──────▶ run job ─▶ spool ─▶ uplink ─▶ coordinator
    └ SIGTERM: stop claiming, finish (or hand back) jobs, flush the spool, return ┘

The coordinator may be unreachable at any point after registration: jobs keep running and
everything they produce waits in the spool until it is back.
"""

from __future__ import annotations

import codecs
import json
import os
from dataclasses import dataclass, field
from typing import Any

import structlog
import trio

from agentd.backoff import backoff_delay
from agentd.client import CoordinatorClient, CoordinatorRejected, CoordinatorUnavailable
from agentd.config import AgentConfig
from agentd.executor import ExecSpec, Outcome, execute
from agentd.fingerprint import Facts, Probe, collect, default_probes
from agentd.spool import Spool
from common import VERSION
from common.clock import Clock, SystemClock, to_rfc3339
from common.protocol import (
    MAX_HEARTBEAT_WAIT_SECONDS,
    Assignment,
    CapacityMsg,
    EventBatch,
    HeartbeatRequest,
    RegisterRequest,
    RunningJob,
)
from common.states import AgentState, JobState

log = structlog.get_logger("tanvrit.agentd")

CLAIM_WAIT_SECONDS = 25.0
UPLINK_BATCH = 200


class AgentFatal(Exception):
    """The agent cannot go on (for example its registration token was refused)."""


@dataclass
class _Running:
    assignment: Assignment
    cpus: float
    memory_mb: int
    gpus: int
    cancel: trio.Event = field(default_factory=trio.Event)


class Agent:
    def __init__(self, config: AgentConfig, *, client: CoordinatorClient | None = None,
                 probes: list[Probe] | None = None, clock: Clock | None = None) -> None:
        self.config = config
        self.client = client or CoordinatorClient(config.coordinator)
        self.clock = clock or SystemClock()
        self._probes = probes if probes is not None else default_probes()
        self.facts = Facts()
        self.labels: dict[str, str] = {}
        self.capacity = CapacityMsg(cpus=0, memoryMb=0, gpus=0)
        self.agent_id: str | None = None
        self.running: dict[str, _Running] = {}
        self.draining = False
        self._stopping = False
        self._capacity_changed = trio.Event()
        self._heartbeat_interval = 5.0
        self._claim_failures = 0
        self._spool: Spool | None = None

    # --- set-up ---------------------------------------------------------------------------
    def _fingerprint(self) -> None:
        self.facts = collect(self._probes)
        self.labels = {**self.facts.labels, **self.config.labels}
        self.capacity = CapacityMsg(
            cpus=self.config.cpus if self.config.cpus is not None else self.facts.cpus,
            memoryMb=self.config.memory_mb if self.config.memory_mb is not None else self.facts.memory_mb,
            gpus=self.config.gpus if self.config.gpus is not None else self.facts.gpus,
        )

    @property
    def defaults(self) -> CapacityMsg:
        return CapacityMsg(cpus=self.config.default_cpus, memoryMb=self.config.default_memory_mb, gpus=0)

    async def _ensure_registered(self) -> None:
        creds_file = self.config.credentials_file
        if creds_file.exists():
            creds = json.loads(creds_file.read_text())
            self.agent_id = creds["agentId"]
            self.client.set_token(creds["agentToken"])
            return
        request = RegisterRequest(name=self.config.name, labels=self.labels, capacity=self.capacity, version=VERSION)
        attempt = 0
        while True:
            try:
                response = await self.client.register(self.config.registration_token, request)
                break
            except CoordinatorRejected as exc:
                raise AgentFatal(f"registration refused: {exc}") from exc
            except CoordinatorUnavailable as exc:
                attempt += 1
                delay = backoff_delay(attempt)
                log.warning("coordinator unreachable; will retry registration", error=str(exc), retry_in=delay)
                await trio.sleep(delay)
        # Written before use and readable only by us: it holds the agent's bearer token.
        tmp = creds_file.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump({"agentId": response.agentId, "agentToken": response.agentToken,
                       "workspaceId": response.workspaceId}, handle)
            handle.flush()
            os.fsync(handle.fileno())
        tmp.replace(creds_file)
        self.agent_id = response.agentId
        self.client.set_token(response.agentToken)
        self._heartbeat_interval = response.heartbeatIntervalSeconds
        log.info("registered", agent_id=self.agent_id, labels=self.labels)

    # --- the spool and uplink -----------------------------------------------------------
    @property
    def spool(self) -> Spool:
        assert self._spool is not None
        return self._spool

    def _emit(self, kind: str, job_id: str, epoch: int, **fields: Any) -> None:
        self.spool.append(kind, job_id, {"type": kind, "jobId": job_id, "epoch": epoch, **fields})

    async def _uplink(self) -> None:
        attempt = 0
        while True:
            pending = self.spool.pending(UPLINK_BATCH)
            if not pending:
                await self.spool.wait_for_change()
                continue
            batch = EventBatch.model_validate({"events": [{**body, "seq": seq} for seq, _, body in pending]})
            try:
                result = await self.client.send_events(batch)
            except CoordinatorUnavailable as exc:
                attempt += 1
                delay = backoff_delay(attempt)
                log.warning("cannot ship events; spooling", error=str(exc), pending=self.spool.depth(), retry_in=delay)
                await trio.sleep(delay)
                continue
            except CoordinatorRejected as exc:
                # A batch the coordinator cannot parse will never parse: keep it, say so, back off hard.
                attempt += 1
                log.error("coordinator refused an event batch", error=str(exc))
                await trio.sleep(backoff_delay(attempt, cap=300))
                continue
            attempt = 0
            for rejection in result.rejected:
                log.warning("coordinator refused an event", seq=rejection.seq, code=rejection.code)
            self.spool.ack(result.appliedThrough)

    async def flush(self) -> None:
        """Return once the spool is empty (callers bound the wait)."""
        while self.spool.depth():
            await self.spool.wait_for_change()

    # --- heartbeats ---------------------------------------------------------------------
    def state(self) -> AgentState:
        if not self.draining:
            return AgentState.READY
        return AgentState.DRAINING if self.running else AgentState.DRAINED

    async def _heartbeats(self) -> None:
        first = True
        attempt = 0
        while True:
            beat = HeartbeatRequest(
                state=self.state(),
                runningJobs=[RunningJob(jobId=job_id, epoch=r.assignment.epoch) for job_id, r in self.running.items()],
                labels=self.labels if first else None,
                capacity=self.capacity if first else None,
                version=VERSION if first else None,
                # Held heartbeat: the coordinator answers early with a cancel or drain order.
                waitSeconds=min(self._heartbeat_interval, MAX_HEARTBEAT_WAIT_SECONDS),
            )
            sent_at = trio.current_time()
            try:
                answer = await self.client.heartbeat(beat)
            except CoordinatorUnavailable as exc:
                attempt += 1
                delay = min(self._heartbeat_interval, backoff_delay(attempt))
                log.warning("heartbeat failed", error=str(exc), retry_in=delay)
                await trio.sleep(delay)
                continue
            except CoordinatorRejected as exc:
                attempt += 1
                log.error("heartbeat refused", error=str(exc))
                await trio.sleep(backoff_delay(attempt, cap=60))
                continue
            attempt = 0
            first = False
            self._heartbeat_interval = answer.heartbeatIntervalSeconds
            ordered = bool(answer.cancelJobs) or answer.drain != self.draining
            if answer.drain != self.draining:
                self.draining = answer.drain
                log.info("drain order" if answer.drain else "resume order")
                self._wake_claims()
            for job_id in answer.cancelJobs:
                running = self.running.get(job_id)
                if running is not None:
                    log.info("cancel order", job_id=job_id)
                    running.cancel.set()
            # The coordinator held the answer until it had an order or the interval passed: beat
            # again at once (after an order) or after what is left of the interval.
            if not ordered:
                await trio.sleep(max(0.0, self._heartbeat_interval - (trio.current_time() - sent_at)))

    # --- claims and jobs ----------------------------------------------------------------
    def free(self) -> CapacityMsg:
        return CapacityMsg(
            cpus=max(0.0, self.capacity.cpus - sum(r.cpus for r in self.running.values())),
            memoryMb=max(0, self.capacity.memoryMb - sum(r.memory_mb for r in self.running.values())),
            gpus=max(0, self.capacity.gpus - sum(r.gpus for r in self.running.values())),
        )

    def _wake_claims(self) -> None:
        self._capacity_changed.set()
        self._capacity_changed = trio.Event()

    async def _claims(self, jobs: trio.Nursery) -> None:
        while not self._stopping:
            changed = self._capacity_changed
            free = self.free()
            if self.draining or free.cpus <= 0 or free.memoryMb <= 0:
                await changed.wait()
                continue
            assignment = await self._claim_until_capacity_changes(free, changed)
            if assignment is not None:
                self._start_job(jobs, assignment)

    async def _claim_until_capacity_changes(self, free: CapacityMsg, changed: trio.Event) -> Assignment | None:
        """One long-poll claim, abandoned (and so re-made) if free capacity grows meanwhile."""
        assignment: Assignment | None = None
        async with trio.open_nursery() as race:

            async def interrupt() -> None:
                await changed.wait()
                race.cancel_scope.cancel()

            async def claim() -> None:
                nonlocal assignment
                try:
                    assignment = await self.client.claim(free, self.defaults, CLAIM_WAIT_SECONDS)
                    self._claim_failures = 0
                except (CoordinatorUnavailable, CoordinatorRejected) as exc:
                    self._claim_failures += 1
                    delay = backoff_delay(self._claim_failures)
                    log.warning("claim failed", error=str(exc), retry_in=delay)
                    await trio.sleep(delay)
                race.cancel_scope.cancel()

            race.start_soon(interrupt)
            race.start_soon(claim)
        return assignment

    def _start_job(self, jobs: trio.Nursery, assignment: Assignment) -> None:
        running = _Running(
            assignment,
            cpus=assignment.cpus or self.config.default_cpus,
            memory_mb=assignment.memoryMb or self.config.default_memory_mb,
            gpus=assignment.gpus,
        )
        self.running[assignment.jobId] = running
        self.spool.remember_running(assignment.jobId, assignment.model_dump())
        jobs.start_soon(self._run_job, running)

    async def _run_job(self, running: _Running) -> None:
        assignment = running.assignment
        job_id, epoch = assignment.jobId, assignment.epoch
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

        def on_output(chunk: bytes) -> None:
            text = decoder.decode(chunk)
            if text:
                self._emit("log", job_id, epoch, data=text)

        def on_started(at: Any) -> None:
            self._emit("started", job_id, epoch, at=to_rfc3339(at))

        spec = ExecSpec(
            job_id=job_id, command=assignment.command, env=assignment.env,
            timeout_seconds=assignment.timeoutSeconds, workdir=self.config.work_root / job_id,
            grace_seconds=self.config.kill_grace_seconds,
        )
        log.info("job started", job_id=job_id)
        outcome: Outcome = await execute(spec, on_output, running.cancel, clock=self.clock, on_started=on_started)
        tail = decoder.decode(b"", final=True)
        if tail:
            self._emit("log", job_id, epoch, data=tail)
        self._emit("finished", job_id, epoch, at=to_rfc3339(outcome.finished_at), state=outcome.state.value,
                   exitCode=outcome.exit_code, runtimeMs=outcome.runtime_ms, reason=outcome.reason)
        self.spool.forget_running(job_id)
        del self.running[job_id]
        log.info("job finished", job_id=job_id, state=outcome.state.value, exit_code=outcome.exit_code)
        self._wake_claims()

    def _reconcile_leftovers(self) -> None:
        """Jobs the spool says were running when the previous agent process died."""
        for job_id, body in self.spool.running().items():
            log.warning("job was running when the agent stopped; reporting it failed", job_id=job_id)
            self._emit("finished", job_id, int(body["epoch"]), at=to_rfc3339(self.clock.now()),
                       state=JobState.FAILED.value, exitCode=None, runtimeMs=0, reason="agent_restarted")
            self.spool.forget_running(job_id)

    # --- the whole ----------------------------------------------------------------------
    async def serve(self, stop: trio.Event, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run until ``stop`` is set, then shut down gracefully. Raises ``AgentFatal``."""
        self.config.data_dir.mkdir(parents=True, exist_ok=True)
        self.config.work_root.mkdir(parents=True, exist_ok=True)
        self._fingerprint()
        self._spool = Spool(self.config.spool_path, max_log_bytes=self.config.max_spooled_log_bytes)
        try:
            self._reconcile_leftovers()
            async with trio.open_nursery() as services:
                await self._ensure_registered()
                services.start_soon(self._uplink)
                services.start_soon(self._heartbeats)
                async with trio.open_nursery() as jobs:
                    claims = trio.CancelScope()

                    async def claim_loop() -> None:
                        with claims:
                            await self._claims(jobs)

                    jobs.start_soon(claim_loop)
                    task_status.started()
                    await stop.wait()
                    log.info("stopping: no new claims", running=len(self.running))
                    self._stopping = True
                    claims.cancel()
                    if self.config.shutdown == "handback":
                        for running in self.running.values():
                            running.cancel.set()
                with trio.move_on_after(10.0) as flushing:
                    await self.flush()
                if flushing.cancelled_caught:
                    log.warning("spool not empty at exit; it will be sent on the next start",
                                pending=self.spool.depth())
                services.cancel_scope.cancel()
        finally:
            self.spool.close()
            await self.client.aclose()
