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
import fcntl
import functools
import hashlib
import json
import os
import time
from collections.abc import Awaitable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import structlog
import trio

from agentd.backoff import backoff_delay
from agentd.cgroups.base import CgroupManager, Limits
from agentd.cgroups.detect import detect_cgroups
from agentd.client import CoordinatorClient, CoordinatorRejected, CoordinatorUnavailable
from agentd.config import AgentConfig
from agentd.executor import ExecSpec, Launched, Outcome, RunAs, adopt, execute, remove_job_dirs
from agentd.exits import EX_CANTCREAT, EX_CONFIG, EX_NOPERM, EX_TEMPFAIL
from agentd.fingerprint import Facts, Probe, collect, default_probes
from agentd.fingerprint.gpu import GpuInventory, GpuUnit, discover
from agentd.gpus import GpuAllocator, GpuLocks, read_mig_caps
from agentd.job_user import (
    JobUids,
    JobUser,
    JobUserError,
    existing_ids,
    job_uid_range_for,
    prepare_work_root,
    resolve_job_user,
    uids_with_processes,
)
from agentd.looplag import LoopLag
from agentd.metering import GpuUtilisation, MeterState, NvmlUtilisation, Usage
from agentd.nvml import NvmlUnavailable, OffLoopNvml, process_counts
from agentd.spool import Spool, SpoolWriter
from agentd.systemd import Notifier
from common import VERSION
from common.clock import Clock, SystemClock, parse_rfc3339, to_rfc3339
from common.files import PRIVATE_FILE, private_dir
from common.protocol import (
    MAX_HEARTBEAT_WAIT_SECONDS,
    Assignment,
    CapacityMsg,
    EventBatch,
    GpuUnitMsg,
    HeartbeatRequest,
    HeartbeatResponse,
    RegisterRequest,
    RunningJob,
)
from common.states import AgentState, JobState
from common.waiting import first_of

log = structlog.get_logger("tanvrit.agentd")

CLAIM_WAIT_SECONDS = 25.0
MAX_CLAIMS_IN_FLIGHT = 2
# How long a claim in flight may still take once the agent stops (its answer is then released).
CLAIM_STOP_GRACE = 5.0
GOODBYE_TIMEOUT = 5.0
STOP_ANNOUNCE_TIMEOUT = 5.0
UPLINK_BATCH = 200
MAX_BATCH_BYTES = 512 * 1024


def batch_events(pending: list[tuple[int, str, dict[str, Any]]], max_bytes: int) -> list[dict[str, Any]]:
    """The longest prefix of ``pending`` whose JSON stays under ``max_bytes`` (at least one
    event): the coordinator refuses request bodies over 1 MiB, and a busy job's log chunks
    (up to 64 KiB each) would pass that long before the event-count bound."""
    events: list[dict[str, Any]] = []
    size = 0
    for seq, _, body in pending:
        event = {**body, "seq": seq}
        weight = len(json.dumps(event)) + 1
        if events and size + weight > max_bytes:
            break
        events.append(event)
        size += weight
    return events


def _hold_data_dir(data_dir: Path) -> int:
    """Hold ``data_dir`` for this process (an ``flock`` on its ``agent.lock``, which the kernel
    drops when the process dies: no stale lock after a crash) and return the descriptor to close
    at exit. Two agents on one data dir would share its identity and spool, both re-adopt the
    same jobs and both offer the whole host. Raises ``AgentFatal`` naming the holder's pid."""
    path = data_dir / "agent.lock"
    try:
        # Close-on-exec: jobs outlive the agent by design, and must not keep its lock.
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    except OSError as exc:
        raise AgentFatal(f"cannot open {path}: {exc}", exit_code=EX_CANTCREAT) from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise AgentFatal(f"another agent is running with data dir {data_dir} (pid {holder}); stop it, or give "
                         "this one its own data_dir", exit_code=EX_TEMPFAIL) from None
    os.fchmod(fd, PRIVATE_FILE)  # like every file of the data dir, even one a person loosened
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


class AgentFatal(Exception):
    """The agent cannot go on (for example its registration token was refused). ``str()`` is
    one line naming the problem and its fix; ``exit_code`` is the sysexits status to exit with
    (see ``agentd.exits``)."""

    def __init__(self, message: str, *, exit_code: int = EX_CONFIG) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass
class _Running:
    assignment: Assignment
    cpus: float
    memory_mb: int
    gpus: int
    gpu_units: tuple[GpuUnit, ...] = ()
    cancel: trio.Event = field(default_factory=trio.Event)
    handing_back: bool = False  # stopped because the agent shuts down with shutdown = "handback"
    claimed: float | None = None  # time.monotonic() when its claim was answered (None: re-adopted)


# When a job ends while a claim waits, the claim keeps waiting this long for a job that fits what
# it offered before a claim with the larger figure replaces it (see ``_claims``).
RECLAIM_DELAY = 0.2
# A scan of the host's processes for busy uids (``uids_with_processes``, several ms) is made while a
# claim waits, so that a job answered soon after starts without one; an older scan is made again.
BUSY_UIDS_MAX_AGE = 1.0

# Jobs whose result is on its way upstream, for the "job reported" line; bounded, so an agent cut
# off from its coordinator for days does not keep one entry per job it ran meanwhile.
MAX_TIMED_REPORTS = 1000


class Agent:
    def __init__(self, config: AgentConfig, *, client: CoordinatorClient | None = None,
                 probes: list[Probe] | None = None, clock: Clock | None = None,
                 cgroups: CgroupManager | None = None, notifier: Notifier | None = None, nvml: Any = None) -> None:
        self.config = config
        self.client = client or CoordinatorClient(config.coordinator_urls)
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
        self._claims_stopped = trio.Event()
        self._heartbeat_interval = 5.0
        self._claim_failures = 0
        self._claim_scopes: set[trio.CancelScope] = set()
        self._claims_in_flight = 0
        self._refused = trio.Event()  # the coordinator refused this agent's own token
        self._reregistering = False
        self._stop_announced = trio.Event()  # the coordinator has heard that the agent is stopping
        self._answered = trio.Event()  # set (and replaced) by every successful heartbeat
        self._spool: SpoolWriter | None = None
        self.loop_lag = LoopLag()
        self._cgroups = cgroups
        self._notifier = notifier or Notifier()
        self._nvml_module = nvml  # pynvml, or a fake at its call boundary; None: import pynvml
        self._nvml: OffLoopNvml | None = None  # set while NVML is initialised for metering
        self._run_as: RunAs | None = None
        self._job_user: JobUser | None = None
        self._job_uids: JobUids | None = None  # a uid of its own per running job (root agent, default user)
        self._gpus = GpuAllocator(())
        self._gpu_inventory = GpuInventory()
        self._gpu_poll_now = trio.Event()
        self._beat_now = trio.Event()
        self._reporting: dict[str, dict[str, float | None]] = {}  # job id -> its timings (monotonic)
        self._busy_uids: tuple[float, set[int]] | None = None  # (trio time the scan began, its uids)
        self._busy_scan: trio.Event | None = None  # set when the scan in progress ends

    # --- set-up ---------------------------------------------------------------------------
    async def _fingerprint(self) -> None:
        self.facts = collect(self._probes)
        units = await self._discover_gpus()
        self.facts.gpus = len(units)
        self.facts.gpu_memory_mb = [unit.memory_mb for unit in units]
        gpu_labels = GpuInventory(list(units), self._gpu_inventory.failed).labels()
        if self._gpu_inventory.units:
            gpu_labels["gpuIsolation"] = self._gpu_isolation()
        self.labels = {**self.facts.labels, **gpu_labels, "isolation": self.cgroups.kind if self.cgroups.kind == "none"
                       else f"cgroup{self.cgroups.kind}", **self.config.labels}
        self.capacity = CapacityMsg(
            cpus=self.config.cpus if self.config.cpus is not None else self.facts.cpus,
            memoryMb=self.config.memory_mb if self.config.memory_mb is not None else self.facts.memory_mb,
            gpus=len(units),
            gpuModels=GpuInventory(list(units)).models() or None,
            gpuUnits=[GpuUnitMsg(uuid=unit.uuid, model=unit.model, memoryMb=unit.memory_mb,
                                 parentUuid=unit.parent_uuid) for unit in units] or None,
        )

    async def _discover_gpus(self) -> tuple[GpuUnit, ...]:
        """What NVML detects, off the event loop and bounded; the units this agent offers.

        Raises ``AgentFatal`` when the configured ``gpus`` exceeds what NVML detects: offering
        GPUs the host does not have would bill jobs GPU prices for nothing."""
        module = self._nvml_module
        if module is None:
            try:
                import pynvml

                module = pynvml
            except ImportError as exc:  # the wheel depends on nvidia-ml-py; a broken install is no GPUs
                log.info("no NVIDIA GPUs: pynvml cannot be imported", reason=str(exc))
        inventory = GpuInventory(unavailable="pynvml is not installed")
        if module is not None:
            nvml = OffLoopNvml(module, timeout=self.config.nvml_timeout_seconds)
            try:
                inventory = await nvml.call(discover)
            except NvmlUnavailable as exc:
                log.error("GPU discovery abandoned: NVML did not answer; offering no GPUs", error=str(exc))
                inventory = GpuInventory(unavailable=str(exc))
            if inventory.units:
                try:
                    await nvml.call(lambda m: m.nvmlInit())  # kept open for metering and the GPU watch
                    self._nvml = nvml
                except Exception as exc:
                    log.warning("NVML init for metering failed; GPU utilisation and memory not metered",
                                error=str(exc))
        self._gpu_inventory = inventory
        detected = inventory.units
        wanted = self.config.gpus
        if wanted is not None and wanted > len(detected):
            why = f" ({inventory.unavailable})" if inventory.unavailable else ""
            failed = f"; left out as failing: {'; '.join(inventory.failed)}" if inventory.failed else ""
            raise AgentFatal(f"gpus = {wanted} is configured, but NVML detects {len(detected)} usable GPU(s){why}"
                             f"{failed}: an agent never offers GPUs it does not have")
        offered = tuple(detected if wanted is None else detected[:wanted])
        locks = None
        if offered:
            locks = GpuLocks(self.config.gpu_lock_dir)
            try:
                locks.prepare()
            except OSError as exc:
                raise AgentFatal(f"gpu_lock_dir {self.config.gpu_lock_dir} cannot be used ({exc}): GPUs are locked "
                                 "there against other agents on this host; set gpu_lock_dir to a directory the "
                                 "agent can write") from exc
        self._gpus = GpuAllocator(offered, host_units=detected, locks=locks,
                                  mig_caps=read_mig_caps() if offered else None)
        if offered and self._nvml is not None:
            # One look before the first claim: a GPU someone else is computing on is not offered.
            try:
                self._gpus.observe(await self._nvml.call(functools.partial(process_counts,
                                                                           uuids=self._gpus.idle_uuids())))
            except NvmlUnavailable as exc:
                log.warning("cannot ask NVML whether GPUs are in use", error=str(exc))
        if detected:
            log.info("GPUs", offered=[f"{unit.uuid} ({unit.model})" for unit in offered],
                     isolation=self._gpu_isolation())
        return offered

    def _gpu_isolation(self) -> str:
        """``devices``: cgroup v1's devices controller denies the GPUs a job was not given.
        ``env``: only the job's environment names its GPUs (cgroup v2 without a BPF device
        program, or no cgroups): a job that ignores CUDA_VISIBLE_DEVICES can open the others."""
        controllers = getattr(self.cgroups, "controllers", ())
        return "devices" if self.cgroups.kind == "v1" and "devices" in controllers else "env"

    @property
    def cgroups(self) -> CgroupManager:
        assert self._cgroups is not None
        return self._cgroups

    def _setup_isolation(self) -> None:
        """Pick the cgroup backend and the job user; warn loudly once if jobs run unisolated."""
        if self._cgroups is None:
            if self.config.cgroups == "none":
                from agentd.cgroups.none import NoCgroups

                self._cgroups = NoCgroups("disabled by configuration (cgroups = \"none\")")
            else:
                # One subtree per data dir: two agents on a host never touch each other's jobs.
                digest = hashlib.sha256(str(self.config.data_dir.resolve()).encode()).hexdigest()[:8]
                self._cgroups = detect_cgroups(base_name=f"tanvrit-agentd-{digest}")
        if self.cgroups.kind == "none":
            log.warning("!!! JOBS RUN WITHOUT ISOLATION: no cgroup could be created; memory, CPU and pids "
                        "limits are NOT enforced, and the agent reports isolation=none !!!",
                        reason=getattr(self.cgroups, "reason", ""))
        else:
            log.info("job isolation", cgroups=self.cgroups.kind)
        try:
            user = resolve_job_user(self.config.run_as, allow_root_jobs=self.config.allow_root_jobs,
                                    euid=os.geteuid())
            prepare_work_root(self.config.work_root, user)
        except JobUserError as exc:
            raise AgentFatal(str(exc), exit_code=exc.exit_code) from exc
        self._job_user = user
        self._run_as = RunAs(user.uid, user.gid) if user.switch else None
        uid_range = job_uid_range_for(user, self.config.job_uid_range)
        if uid_range is not None:
            self._job_uids = JobUids(uid_range, existing=existing_ids())
            log.info("each job runs as a uid of its own", job_uid_range=self.config.job_uid_range,
                     skipped_existing=self._job_uids.skipped)
        if user.is_root:
            log.warning("jobs run as root (allow_root_jobs = true): they can read the agent's credentials and leave "
                        "their cgroup", run_as=user.name)
        elif not user.switch and os.geteuid() != 0:
            log.warning("jobs run as the agent's own user: they can read its credentials; run the agent as root "
                        "to run them as an unprivileged user of their own", run_as=user.name)
        else:
            log.info("jobs run as", run_as=user.name, work_dir=str(self.config.work_root))

    @property
    def defaults(self) -> CapacityMsg:
        return CapacityMsg(cpus=self.config.default_cpus, memoryMb=self.config.default_memory_mb, gpus=0)

    async def _ensure_registered(self) -> None:
        creds_file = self.config.credentials_file
        if creds_file.exists():
            os.chmod(creds_file, PRIVATE_FILE)  # it holds the agent's bearer token
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
                before = ("the coordinator refused this agent's own token (agent deleted or token revoked), then "
                          if self._reregistering else "")
                raise AgentFatal(f"{before}the coordinator refused the registration token ({exc}); mint a new one "
                                 "(POST /v0/registration-tokens, or tanvrit-coordinator admin registration-token) "
                                 "and set registration_token",
                                 exit_code=EX_NOPERM) from exc
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
    def spool(self) -> SpoolWriter:
        assert self._spool is not None
        return self._spool

    def _emit(self, kind: str, job_id: str, epoch: int, *, progress: dict[str, Any] | None = None,
              **fields: Any) -> None:
        self.spool.append(kind, job_id, {"type": kind, "jobId": job_id, "epoch": epoch, **fields}, progress=progress)

    async def _uplink(self) -> None:
        attempt = 0
        one_at_a_time_through = 0  # after a refused batch: ship singly up to this seq
        while True:
            changed = self.spool.next_change()
            pending = await self.spool.pending(1 if one_at_a_time_through else UPLINK_BATCH,
                                               max_bytes=MAX_BATCH_BYTES)
            if not pending:
                await changed.wait()
                continue
            events = batch_events(pending, MAX_BATCH_BYTES)
            batch = EventBatch.model_validate({"events": events})
            try:
                sent = time.monotonic()
                result = await self.client.send_events(batch)
            except CoordinatorUnavailable as exc:
                attempt += 1
                delay = backoff_delay(attempt)
                log.warning("cannot ship events; spooling", error=str(exc), pending=self.spool.depth(), retry_in=delay)
                if await self._wait_backoff(delay):
                    attempt = 0
                continue
            except CoordinatorRejected as exc:
                if exc.status in (400, 413, 422):
                    # The coordinator can never take this content. Find the event it refuses by
                    # shipping one at a time; that one is dropped (loudly) so that it does not
                    # hold back every event after it, and everything else is still delivered.
                    if len(events) > 1:
                        one_at_a_time_through = events[-1]["seq"]
                        continue
                    refused = events[0]
                    log.error("coordinator can never accept this event; dropping it", seq=refused["seq"],
                              type=refused["type"], job_id=refused["jobId"], error=str(exc))
                    if pending[0][1] == "void":
                        await self.spool.ack(refused["seq"])  # not even its stand-in: give up on it
                    else:
                        # Its number stays, carried by an empty log line: deleting it would leave
                        # a gap, and the coordinator refuses every event after a gap.
                        await self.spool.void(refused["seq"], {
                            "type": "log", "jobId": refused["jobId"], "epoch": refused["epoch"],
                            "data": f"\n[tanvrit-agentd: a {refused['type']} event the coordinator refused "
                                    "was dropped]\n"})
                    continue
                # Refused otherwise: keep everything, say so, back off hard. A refused token
                # (401) ends this session: the agent registers again or exits.
                attempt += 1
                log.error("coordinator refused an event batch", error=str(exc))
                if exc.status == 401:
                    self._credentials_refused(exc)
                if await self._wait_backoff(backoff_delay(attempt, cap=300)):
                    attempt = 0
                continue
            attempt = 0
            for rejection in result.rejected:
                log.warning("coordinator refused an event", seq=rejection.seq, code=rejection.code)
            answered = time.monotonic()
            await self.spool.ack(result.appliedThrough)
            self._log_reported(events, result.appliedThrough, sent, answered)
            if result.appliedThrough >= one_at_a_time_through:
                one_at_a_time_through = 0

    def _time_report(self, job_id: str, running: _Running, outcome: Outcome) -> None:
        """Keep the job's timings until the coordinator has its result (``_log_reported``)."""
        if len(self._reporting) >= MAX_TIMED_REPORTS:
            self._reporting.pop(next(iter(self._reporting)))
        self._reporting[job_id] = {"claimed": running.claimed, "spawned": outcome.spawned, "exited": outcome.exited,
                                   "finished": time.monotonic()}

    def _log_reported(self, events: list[dict[str, Any]], applied_through: int, sent: float,
                      acked: float) -> None:
        """One line per job whose result the coordinator just took, with where the agent's time
        went: claim answer to spawn, the job itself, its exit to its result queued (teardown),
        to its upload (spool commit, the uplink's turn) and to the coordinator's answer."""
        for event in events:
            if event["type"] != "finished" or event["seq"] > applied_through:
                continue
            stamps = self._reporting.pop(event["jobId"], None)
            if stamps is None:
                continue
            stamps["sent"] = sent  # the upload that succeeded: after an outage, the outage is in it

            def between(start: str, end: str, stamps: dict[str, float | None] = stamps) -> float | None:
                first, last = stamps[start], stamps[end]
                return round((last - first) * 1000, 2) if first is not None and last is not None else None

            stamps["acked"] = acked
            log.info("job reported", job_id=event["jobId"], claim_to_spawn_ms=between("claimed", "spawned"),
                     run_ms=between("spawned", "exited"), exit_to_result_ms=between("exited", "finished"),
                     result_to_sent_ms=between("finished", "sent"), sent_to_ack_ms=between("sent", "acked"),
                     exit_to_sent_ms=between("exited", "sent"), exit_to_ack_ms=between("exited", "acked"))

    async def _wait_backoff(self, delay: float) -> bool:
        """Sleep ``delay``, or less if a heartbeat gets an answer meanwhile; True then."""
        answered = self._answered
        with trio.move_on_after(delay):
            await answered.wait()
        return answered.is_set()

    async def flush(self) -> None:
        """Return once the spool is empty (callers bound the wait)."""
        while self.spool.depth():
            await self.spool.wait_for_change()

    # --- heartbeats ---------------------------------------------------------------------
    def state(self) -> AgentState:
        """DRAINING/DRAINED when drained by order, and also while stopping (SIGTERM), so the
        coordinator shows it and sends it no work."""
        if not self.draining and not self._stopping:
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
                loopLagMs=round(self.loop_lag.take_worst() * 1000, 1),
            )
            beat_now = self._beat_now  # taken before sending: a request made meanwhile is not lost
            sent_at = trio.current_time()
            try:
                answer = await self._send_heartbeat(beat, beat_now)
                if answer is None:
                    continue  # asked to beat now (it is stopping, say): this beat's news goes at once
            except CoordinatorUnavailable as exc:
                attempt += 1
                delay = min(self._heartbeat_interval, backoff_delay(attempt))
                log.warning("heartbeat failed", error=str(exc), retry_in=delay)
                await trio.sleep(delay)
                continue
            except CoordinatorRejected as exc:
                attempt += 1
                log.error("heartbeat refused", error=str(exc))
                if exc.status == 401:
                    self._credentials_refused(exc)
                await trio.sleep(backoff_delay(attempt, cap=60))
                continue
            attempt = 0
            first = False
            if beat.state != AgentState.READY and self._stopping:
                self._stop_announced.set()
            # The coordinator answers: whatever waits out a backoff (the uplink after an
            # outage) tries again now instead of after up to 30 s.
            self._answered.set()
            self._answered = trio.Event()
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
            # again at once after an order (or when asked to, e.g. a drain completed), else after
            # what is left of the interval.
            if not ordered:
                with trio.move_on_after(max(0.0, self._heartbeat_interval - (trio.current_time() - sent_at))):
                    await beat_now.wait()

    async def _send_heartbeat(self, beat: HeartbeatRequest, beat_now: trio.Event) -> HeartbeatResponse | None:
        """Send one (held) heartbeat; None if ``beat_now`` fired first. The coordinator records a
        beat at once and holds only its answer, so giving up on that answer loses nothing (orders
        are repeated in every answer), and what changed goes out without waiting for the hold."""
        answer: HeartbeatResponse | None = None
        failure: Exception | None = None
        async with trio.open_nursery() as race:

            async def send() -> None:
                nonlocal answer, failure
                try:
                    answer = await self.client.heartbeat(beat)
                except (CoordinatorUnavailable, CoordinatorRejected) as exc:
                    failure = exc
                race.cancel_scope.cancel()

            async def interrupt() -> None:
                await beat_now.wait()
                race.cancel_scope.cancel()

            race.start_soon(send)
            race.start_soon(interrupt)
        if failure is not None:
            raise failure
        return answer

    def _heartbeat_soon(self) -> None:
        """Tell the coordinator now (not at the next interval), e.g. that a drain completed."""
        self._beat_now.set()
        self._beat_now = trio.Event()

    # --- claims and jobs ----------------------------------------------------------------
    def free(self) -> CapacityMsg:
        return CapacityMsg(
            cpus=max(0.0, self.capacity.cpus - sum(r.cpus for r in self.running.values())),
            memoryMb=max(0, self.capacity.memoryMb - sum(r.memory_mb for r in self.running.values())),
            gpus=self._gpus.free_count(),
        )

    def _wake_claims(self) -> None:
        self._capacity_changed.set()
        self._capacity_changed = trio.Event()

    async def _claims(self, jobs: trio.Nursery) -> None:
        """Claim while there is free capacity. A claim in flight is never abandoned: when free
        capacity grows meanwhile, a new claim with the larger figure is sent beside it (the
        coordinator ends the older one with 204), and every answer is checked against what is
        free when it arrives (``_take``).

        The larger claim goes out ``RECLAIM_DELAY`` after the growth, unless the waiting claim
        is answered first: it can take any job that fits what it offered, and with jobs coming
        one after another each is then claimed by one request instead of three (the claim sent
        when the previous job started, its replacement when that job ended, and the 204)."""
        async with trio.open_nursery() as in_flight:
            while not self._stopping:
                changed = self._capacity_changed
                free = self.free()
                # With every job uid held, a claimed job could only be handed back: wait for one.
                uids_full = self._job_uids is not None and self._job_uids.full
                if self.draining or free.cpus <= 0 or free.memoryMb <= 0 or uids_full:
                    await changed.wait()
                    continue
                answered = trio.Event()
                in_flight.start_soon(self._claim, jobs, free, answered)
                if self._claims_in_flight >= MAX_CLAIMS_IN_FLIGHT:
                    await answered.wait()
                else:
                    await first_of(answered, changed)
                    if not answered.is_set() and not self._stopping and not self.draining:
                        with trio.move_on_after(RECLAIM_DELAY):
                            await first_of(answered, self._claims_stopped)

    async def _claim(self, jobs: trio.Nursery, free: CapacityMsg, answered: trio.Event) -> None:
        """One long-poll claim, shielded: once sent, its answer is always taken or released,
        even when the agent stops meanwhile (it then waits at most ``CLAIM_STOP_GRACE``)."""
        failures = 0
        self._claims_in_flight += 1
        with trio.CancelScope(shield=True) as scope:
            self._claim_scopes.add(scope)
            try:
                if self._job_uids is not None and not self._busy_uids_fresh():
                    jobs.start_soon(self._scan_busy_uids)
                try:
                    assignment = await self.client.claim(free, self.defaults, CLAIM_WAIT_SECONDS)
                except (CoordinatorUnavailable, CoordinatorRejected) as exc:
                    self._claim_failures += 1
                    failures = self._claim_failures
                    log.warning("claim failed", error=str(exc))
                    if isinstance(exc, CoordinatorRejected) and exc.status == 401:
                        self._credentials_refused(exc)
                else:
                    self._claim_failures = 0
                    if assignment is not None:
                        await self._take(jobs, assignment, time.monotonic())
            finally:
                self._claim_scopes.discard(scope)
        try:
            if failures and not self._stopping:
                # Cut short when the coordinator answers a heartbeat or capacity changes (a
                # stop among them).
                with trio.move_on_after(backoff_delay(failures)):
                    await first_of(self._answered, self._capacity_changed)
        finally:
            self._claims_in_flight -= 1
            answered.set()

    async def _take(self, jobs: trio.Nursery, assignment: Assignment, claimed: float | None = None) -> None:
        """Start the job if the agent can still run it; else hand it back at once, which
        queues it again and wakes the other waiting claims."""
        busy: set[int] = set()
        if self._job_uids is not None:
            # Before the check below, which nothing may come between and the start.
            busy = await self._busy_uids_now()
        why = self._cannot_take(assignment)
        if why is None:
            self._start_job(jobs, assignment, busy, claimed)
            return
        log.info("releasing an assignment the agent cannot use", job_id=assignment.jobId, why=why)
        try:
            await self.client.release(assignment.jobId, assignment.epoch)
        except (CoordinatorUnavailable, CoordinatorRejected) as exc:
            # The coordinator's assignment lease queues it again soon enough.
            log.warning("could not release an assignment", job_id=assignment.jobId, error=str(exc))

    def _busy_uids_fresh(self) -> bool:
        return self._busy_uids is not None and trio.current_time() - self._busy_uids[0] <= BUSY_UIDS_MAX_AGE

    async def _scan_busy_uids(self) -> None:
        """Read every process on the host for the uids in use: off the loop (thousands take a
        while), one scan at a time."""
        if self._busy_scan is not None:
            await self._busy_scan.wait()
            return
        self._busy_scan = done = trio.Event()
        began = trio.current_time()
        try:
            self._busy_uids = (began, await trio.to_thread.run_sync(uids_with_processes))
        finally:
            self._busy_scan = None
            done.set()

    async def _busy_uids_now(self) -> set[int]:
        """The uids processes run as: the scan made while the claim waited if it began at most
        ``BUSY_UIDS_MAX_AGE`` ago (a process that took a uid of the range since would have to
        be another root's: the agent's own jobs hold theirs), else a scan now."""
        if not self._busy_uids_fresh():
            await self._scan_busy_uids()
            if not self._busy_uids_fresh():
                await self._scan_busy_uids()  # the one in progress began too long ago
        assert self._busy_uids is not None
        return self._busy_uids[1]

    def _cannot_take(self, assignment: Assignment) -> str | None:
        if self._stopping:
            return "stopping"
        if self.draining:
            return "draining"
        free = self.free()
        cpus = assignment.cpus or self.config.default_cpus
        memory_mb = assignment.memoryMb or self.config.default_memory_mb
        if cpus > free.cpus + 1e-9 or memory_mb > free.memoryMb or assignment.gpus > free.gpus:
            return "no longer fits"  # another claim's answer took the room first
        if self._job_uids is not None and self._job_uids.full:
            return "every job uid is held"  # (a claim sent before the last one was taken)
        return None

    def _stop_claims(self) -> None:
        """No new claims; those in flight get ``CLAIM_STOP_GRACE`` more to be answered (the
        coordinator ends them at once when it hears the agent is stopping)."""
        self._stopping = True
        self._claims_stopped.set()
        self._wake_claims()
        deadline = trio.current_time() + CLAIM_STOP_GRACE
        for scope in self._claim_scopes:
            scope.deadline = min(scope.deadline, deadline)

    def _credentials_refused(self, exc: Exception) -> None:
        if not self._refused.is_set():
            log.error("the coordinator refused this agent's token (agent deleted or token revoked)", error=str(exc))
            self._refused.set()

    def _start_job(self, jobs: trio.Nursery, assignment: Assignment, busy_uids: set[int],
                   claimed: float | None = None) -> None:
        running = _Running(
            assignment,
            cpus=assignment.cpus or self.config.default_cpus,
            memory_mb=assignment.memoryMb or self.config.default_memory_mb,
            gpus=assignment.gpus,
            claimed=claimed,
        )
        units = self._gpus.allocate(assignment.jobId, assignment.gpus)
        uid = self._job_uids.allocate(assignment.jobId, busy=busy_uids) if self._job_uids is not None else None
        self.running[assignment.jobId] = running
        # The uid is recorded before the job starts: a re-adopted job keeps it.
        self.spool.remember_running(assignment.jobId, {**assignment.model_dump(),
                                                       "gpuUuids": [unit.uuid for unit in units or ()],
                                                       **({"jobUid": uid} if uid is not None else {})})
        if self._job_uids is not None and uid is None:
            log.warning("every uid of job_uid_range is in use; handing the job back", job_id=assignment.jobId,
                        job_uid_range=self.config.job_uid_range)
            jobs.start_soon(self._hand_back_unstarted, running)
            return
        if units is None:
            # Fitted to our free count at claim time, but a GPU went meanwhile (another agent on
            # this host locked it, or NVML found it busy): the job goes back to the queue.
            log.warning("no free GPUs for a job that asked for them; handing it back", job_id=assignment.jobId,
                        gpus=assignment.gpus)
            jobs.start_soon(self._hand_back_unstarted, running)
            return
        running.gpu_units = units
        spec = self._spec(assignment, units, uid)
        jobs.start_soon(self._supervise_job, running, spec, None)

    def _spec(self, assignment: Assignment, units: tuple[GpuUnit, ...], uid: int | None) -> ExecSpec:
        cpus = assignment.cpus or self.config.default_cpus
        memory_mb = assignment.memoryMb or self.config.default_memory_mb
        limits = Limits(memory_bytes=memory_mb * 2**20, cpus=cpus, pids=self.config.default_pids,
                        denied_devices=self._gpus.denied_devices(units))
        return ExecSpec(
            job_id=assignment.jobId, command=assignment.command, env=assignment.env,
            timeout_seconds=assignment.timeoutSeconds, workdir=self.config.work_root / assignment.jobId,
            grace_seconds=self.config.kill_grace_seconds, limits=limits,
            run_as=self._run_as if uid is None else RunAs(uid, uid, init_groups=False), gpus=units,
            host_has_gpus=bool(self._gpu_inventory.units),
            state_dir=self.config.jobs_root / assignment.jobId, meter_interval=self.config.meter_interval_seconds,
        )

    def _gpu_util(self, units: tuple[GpuUnit, ...]) -> GpuUtilisation | None:
        if not units or self._nvml is None:
            return None
        return NvmlUtilisation(self._nvml, tuple(unit.uuid for unit in units))

    def _usage_fields(self, usage: Usage, running: _Running) -> dict[str, Any]:
        """A usage event's figures, with the model its GPU-seconds are priced at."""
        fields = usage.to_event()
        if running.gpu_units:
            fields["gpuModel"] = running.gpu_units[0].model
        return fields

    async def _hand_back_unstarted(self, running: _Running) -> None:
        job_id, epoch = running.assignment.jobId, running.assignment.epoch
        self._emit("handback", job_id, epoch, at=to_rfc3339(self.clock.now()))
        self._job_done(job_id)

    async def _watch_gpus(self) -> None:
        """Ask NVML, off the loop, which units not held by a job have processes on them: a
        released unit is offered again only once its last process has left the driver."""
        nvml = self._nvml
        if nvml is None or not self._gpus.units:
            return
        failing = False
        while True:
            poll_now = self._gpu_poll_now
            idle = self._gpus.idle_uuids()
            try:
                counts = await nvml.call(functools.partial(process_counts, uuids=idle))
            except NvmlUnavailable as exc:
                if not failing:
                    log.warning("cannot ask NVML whether GPUs are free; released GPUs stay unoffered",
                                error=str(exc))
                failing = True
            else:
                failing = False
                if self._gpus.observe(counts):
                    self._wake_claims()
            with trio.move_on_after(self.config.gpu_poll_seconds):
                await poll_now.wait()

    def _job_done(self, job_id: str) -> None:
        self.spool.forget_running(job_id)
        if self._job_uids is not None:
            # Its processes are gone (the cgroup is empty); one that escaped keeps the uid busy.
            self._job_uids.release(job_id)
        if self._gpus.held_by(job_id):
            self._gpus.release(job_id)
            if self._nvml is None:
                # No NVML to ask (its init for metering failed): nothing can confirm the GPUs
                # are empty, and waiting for ever would lose them, so they are free at once.
                self._gpus.observe(dict.fromkeys(self._gpus.settling, 0))
            self._gpu_poll_now.set()  # look for the job's processes on its GPUs now
            self._gpu_poll_now = trio.Event()
        del self.running[job_id]
        self._wake_claims()
        if (self.draining or self._stopping) and not self.running:
            self._heartbeat_soon()

    async def _supervise_job(self, running: _Running, spec: ExecSpec, resume: dict[str, Any] | None) -> None:
        """Run (or, with ``resume``, re-adopt) one job and spool everything it produces."""
        assignment = running.assignment
        job_id, epoch = assignment.jobId, assignment.epoch
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        offset = int(resume.get("outputOffset", 0)) if resume else 0
        last_report = time.monotonic()

        def on_output(chunk: bytes) -> None:
            nonlocal offset
            offset += len(chunk)
            text = decoder.decode(chunk)
            if text:
                # Bytes of a split UTF-8 character stay unreported until the rest arrives.
                emitted = offset - len(decoder.getstate()[0])
                self._emit("log", job_id, epoch, progress={"outputOffset": emitted}, data=text)

        def on_skip(length: int) -> None:
            # A hole the job made in its output: counted in the offset, never shipped.
            nonlocal offset
            offset += length

        def on_launched(launched: Launched) -> None:
            self.spool.update_running(job_id, {"launched": launched.to_dict()})

        def on_started(at: datetime) -> None:
            self._emit("started", job_id, epoch, progress={"startedAt": to_rfc3339(at)}, at=to_rfc3339(at))

        def on_meter(state: MeterState) -> None:
            # What the meter needs to go on after a restart, next to the job's other progress.
            self.spool.update_running(job_id, {"meter": state.to_dict()})

        def on_usage(usage: Usage) -> None:
            nonlocal last_report
            if time.monotonic() - last_report >= self.config.usage_report_seconds:
                last_report = time.monotonic()
                self._emit("usage", job_id, epoch, progress={"usage": usage.to_event()},
                           **self._usage_fields(usage, running))

        run: Awaitable[Outcome]
        if resume is None:
            log.info("job started", job_id=job_id, uid=spec.run_as.uid if spec.run_as is not None else os.geteuid())
            if self._job_user is not None and self._job_user.is_root:
                log.warning("job runs as root (allow_root_jobs = true)", job_id=job_id, run_as=self._job_user.name)
            run = execute(spec, on_output, running.cancel, clock=self.clock, on_started=on_started,
                          cgroups=self.cgroups, on_launched=on_launched, on_usage=on_usage,
                          gpu_util=self._gpu_util(spec.gpus), on_meter=on_meter, pace=self.spool.room,
                          freeable=functools.partial(self.spool.committed_output, job_id), on_skip=on_skip,
                          leave_dirs=True)
        else:
            log.info("job re-adopted", job_id=job_id)
            usage = Usage.from_event(resume["usage"]) if resume.get("usage") else None
            meter = MeterState.from_dict(resume["meter"]) if resume.get("meter") else None
            started = resume.get("startedAt")
            run = adopt(spec, Launched.from_dict(resume["launched"]), on_output, running.cancel, offset=offset,
                        usage=usage, started_at=parse_rfc3339(started) if started else self.clock.now(),
                        clock=self.clock, cgroups=self.cgroups, on_usage=on_usage,
                        gpu_util=self._gpu_util(spec.gpus), meter=meter, on_meter=on_meter, pace=self.spool.room,
                        freeable=functools.partial(self.spool.committed_output, job_id), on_skip=on_skip,
                        leave_dirs=True)
        outcome = await run
        tail = decoder.decode(b"", final=True)
        if tail:
            self._emit("log", job_id, epoch, data=tail)
        self._emit("usage", job_id, epoch, **self._usage_fields(outcome.usage, running))
        if running.handing_back and outcome.state == JobState.CANCELLED:
            # Usage so far is real and billed; the job itself goes back to the queue.
            self._emit("handback", job_id, epoch, at=to_rfc3339(outcome.finished_at))
            log.info("job handed back", job_id=job_id)
        else:
            self._emit("finished", job_id, epoch, at=to_rfc3339(outcome.finished_at), state=outcome.state.value,
                       exitCode=outcome.exit_code, runtimeMs=outcome.runtime_ms, reason=outcome.reason,
                       signal=outcome.signal)
            self._time_report(job_id, running, outcome)
            log.info("job finished", job_id=job_id, state=outcome.state.value, exit_code=outcome.exit_code,
                     reason=outcome.reason)
        self._job_done(job_id)
        # The next job's cgroup is made ahead (``CgroupManager.prepare``) at once, in a worker
        # thread: it overlaps the result's spool commit, which waits on its fsync. (Started only
        # once the commit was done, it took the CPU and the GIL from the result's upload: result
        # to upload 9.8 against 7.7 ms p50 in bench/e2e.py at a load of 12.) The job's
        # directories go only once the result is on disk: until then the spool lists the job
        # running, and an agent restarted after a crash re-adopts it from its state dir (exit
        # status, output); without it the job stayed RUNNING for ever.
        result = self.spool.mark()
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(self.cgroups.prepare)
            if await self.spool.flushed(result):
                await remove_job_dirs(spec)

    def _reconcile_leftovers(self, jobs: trio.Nursery) -> None:
        """Jobs the spool says were running when the previous agent process died: re-adopt
        those that were launched (a live one is supervised on; a dead one's remaining output
        and exit status are reported), report the others FAILED ``agent_restarted``."""
        leftovers = self.spool.spool.running()
        for job_id, body in leftovers.items():
            assignment = Assignment.model_validate({k: v for k, v in body.items() if k in Assignment.model_fields})
            uuids = [str(uuid) for uuid in body.get("gpuUuids", ())]
            if "gpuUuids" not in body:
                # Recorded by an agent before GPUs were kept by UUID: indices in NVML order,
                # which is the order units are discovered in on a host without MIG.
                uuids = [self._gpus.units[int(i)].uuid for i in body.get("gpuIndices", ())
                         if int(i) < len(self._gpus.units)]
            running = _Running(assignment, cpus=assignment.cpus or self.config.default_cpus,
                               memory_mb=assignment.memoryMb or self.config.default_memory_mb, gpus=assignment.gpus)
            self.running[job_id] = running
            if "launched" not in body:
                log.warning("job was claimed but never started before the agent stopped", job_id=job_id)
                self._emit("finished", job_id, assignment.epoch, at=to_rfc3339(self.clock.now()),
                           state=JobState.FAILED.value, exitCode=None, runtimeMs=0, reason="agent_restarted")
                self._job_done(job_id)
                continue
            try:
                running.gpu_units = self._gpus.restore(job_id, uuids)
            except ValueError as exc:
                log.error("re-adopted job's GPUs cannot be restored", job_id=job_id, gpus=uuids, error=str(exc))
                running.gpu_units = tuple(unit for uuid in uuids if (unit := self._gpus.unit(uuid)) is not None)
            uid = body.get("jobUid")
            if uid is not None and self._job_uids is not None:
                self._job_uids.restore(job_id, int(uid))  # (with the range off it keeps its uid all the same)
            jobs.start_soon(self._supervise_job, running,
                            self._spec(assignment, running.gpu_units, int(uid) if uid is not None else None), body)

    async def _sweep_cgroups(self) -> None:
        """Before re-adopting: kill and remove what an earlier life of this agent left in its
        cgroups (``CgroupManager.sweep``): groups no record speaks for (the agent died between
        creating and recording them), those of jobs it reports FAILED ``agent_restarted`` (never
        launched, as far as it knows: they must not run on unmetered), and its subtrees left
        elsewhere in a hierarchy. The groups of launched jobs are kept, wherever they are: those
        jobs are re-adopted. In a worker thread: the kernel may take a moment to finish the kills."""
        launched = {job_id for job_id, body in self.spool.spool.running().items() if "launched" in body}
        swept = await trio.to_thread.run_sync(functools.partial(self.cgroups.sweep, launched))
        if swept.removed or swept.kept_busy:
            log.warning("removed cgroups left by an earlier run of this agent", removed=len(swept.removed),
                        killed=swept.killed, still_busy=[str(path) for path in swept.kept_busy])
        # The first job's cgroup, made ahead (after the sweep, which would remove it).
        await trio.to_thread.run_sync(self.cgroups.prepare)

    # --- the whole ----------------------------------------------------------------------
    async def serve(self, stop: trio.Event, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run until ``stop`` is set, then shut down gracefully. Raises ``AgentFatal``."""
        try:
            private_dir(self.config.data_dir)  # it holds the agent token and spooled job output
            self.config.jobs_root.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            raise AgentFatal(f"cannot create the data directory: {exc}; fix data_dir or its parent's permissions",
                             exit_code=EX_CANTCREAT) from exc
        held = _hold_data_dir(self.config.data_dir)
        try:
            await self._serve_holding(stop, task_status)
        finally:
            os.close(held)

    async def _serve_holding(self, stop: trio.Event, task_status: trio.TaskStatus[None]) -> None:
        self._setup_isolation()
        await self._fingerprint()
        self._spool = SpoolWriter(Spool(self.config.spool_path, max_log_bytes=self.config.max_spooled_log_bytes))
        try:
            async with trio.open_nursery() as writer:
                # Its own nursery, closed last: whatever the rest queued is committed before exit.
                writer.start_soon(self.spool.serve)
                writer.start_soon(self.loop_lag.serve)
                await self._serve_registered(stop, task_status)
                writer.cancel_scope.cancel()
        finally:
            self.spool.spool.close()
            await self.client.aclose()
            await self._close_nvml()
            if not self.running:
                self.cgroups.close()

    async def _serve_registered(self, stop: trio.Event, task_status: trio.TaskStatus[None]) -> None:
        """Sessions: register (or reuse credentials), serve until ``stop``; when the coordinator
        refuses the agent's token, stop the jobs, drop the credentials and register again."""
        while True:
            refused = await self._session(stop, task_status)
            if not refused:
                return
            task_status = trio.TASK_STATUS_IGNORED  # started() once, for the first session
            log.warning("discarding this agent's credentials and spool; registering again")
            await self.spool.committed()
            await self.spool.discard_all()
            self.config.credentials_file.unlink(missing_ok=True)
            self._reregistering = True
            self._refused = trio.Event()
            self._stop_announced = trio.Event()
            self._stopping = False
            self._claims_stopped = trio.Event()
            self.draining = False
            self._claim_failures = 0

    async def _session(self, stop: trio.Event, task_status: trio.TaskStatus[None]) -> bool:
        """One registration's life; True if it ended because the coordinator refused its token."""
        async with trio.open_nursery() as services:
            if not await self._register_unless(stop):
                log.info("stopped before registration completed")
                services.cancel_scope.cancel()
                return False
            services.start_soon(self._uplink)
            heartbeats = trio.CancelScope()

            async def heartbeat_loop() -> None:
                with heartbeats:
                    await self._heartbeats()

            services.start_soon(heartbeat_loop)
            services.start_soon(self._notifier.serve_watchdog)
            services.start_soon(self._watch_gpus)
            async with trio.open_nursery() as jobs:
                await self._sweep_cgroups()
                self._reconcile_leftovers(jobs)
                jobs.start_soon(self._claims, jobs)
                task_status.started()
                self._notifier.ready()
                await first_of(stop, self._refused)
                self._stop_claims()
                if self._refused.is_set():
                    # The coordinator has already made these jobs LOST: nothing they report
                    # would be accepted. Stop them (TERM, grace, KILL) and start over.
                    log.warning("stopping every job: this agent's identity is gone", running=len(self.running))
                    for running in self.running.values():
                        running.cancel.set()
                else:
                    self._notifier.stopping()
                    log.info("stopping: no new claims", running=len(self.running), shutdown=self.config.shutdown)
                    self._heartbeat_soon()  # shown DRAINING now, and its waiting claims end
                    if self.config.shutdown == "handback":
                        # Jobs handed back go to the queue at once: the coordinator must know first
                        # that this agent takes no more work, or it could hand them straight back.
                        with trio.move_on_after(STOP_ANNOUNCE_TIMEOUT):
                            await self._stop_announced.wait()
                        for running in self.running.values():
                            running.handing_back = True
                            running.cancel.set()
            if self._refused.is_set():
                services.cancel_scope.cancel()
                return True
            with trio.move_on_after(10.0) as flushing:
                await self.flush()
            if flushing.cancelled_caught:
                log.warning("spool not empty at exit; it will be sent on the next start",
                            pending=self.spool.depth())
            heartbeats.cancel()
            if not self.running and not self.spool.depth():
                await self._goodbye()
            services.cancel_scope.cancel()
        return False

    async def _register_unless(self, stop: trio.Event) -> bool:
        """Register (retrying while the coordinator is unreachable) unless ``stop`` comes
        first; False then."""
        with trio.CancelScope() as registering:
            async with trio.open_nursery() as watch:

                async def cancel_on_stop() -> None:
                    await stop.wait()
                    registering.cancel()

                watch.start_soon(cancel_on_stop)
                await self._ensure_registered()
                watch.cancel_scope.cancel()
        return not registering.cancelled_caught

    async def _goodbye(self) -> None:
        """Tell the coordinator this agent is gone (it shows DOWN at once, not READY for its
        grace). Best effort: without it the agent goes DOWN when its grace passes."""
        with trio.move_on_after(GOODBYE_TIMEOUT):
            try:
                await self.client.goodbye()
                log.info("said goodbye to the coordinator")
            except (CoordinatorUnavailable, CoordinatorRejected) as exc:
                log.warning("could not say goodbye", error=str(exc))

    async def _close_nvml(self) -> None:
        self._gpus.close()
        if self._nvml is not None:
            with trio.CancelScope(shield=True):
                try:
                    await self._nvml.call(lambda module: module.nvmlShutdown())
                except Exception as exc:
                    log.debug("nvmlShutdown failed", error=str(exc))
            self._nvml = None
