"""What the agent's job events change: event order and replays, started / log / usage /
handback / finished applied to the job and its attempt, and the refusals audited.

An agent numbers its events (``seq``) and re-sends until acknowledged. A batch is applied in
``seq`` order above the agent's ``last_seq`` (lower numbers are replays, ignored), never
across a gap (everything from the gap on waits); each event's figures are checked
(``common.event_checks``) before anything is written; an event that cannot be applied is
refused alone (undone whole, as in its own savepoint), with an audit row, and consumed.

Savepoints only when needed: a SAVEPOINT and a RELEASE per event were a third of a dispatched
job's statements on PostgreSQL (a round trip each), yet an event that fails half-way is rare
(the figures are checked before anything is written). ``apply_events_isolated`` first applies
the batch without them; should an event raise, that whole transaction is undone
(``EventNeedsIsolation``) and the batch applied again, each event in its own savepoint.

Read once per batch, not per event (each a round trip on PostgreSQL): the agent's row brings
the meter's last tick and whether its workspace has webhooks, and a job's row is read at its
first event and then carried from what its own writes return (``UPDATE ... RETURNING``): a
``started``, ``usage``, ``finished`` batch reads the job once, not three times. After any other
kind of event (a log, a result, a handback: they may change other jobs, its dependents), or an
event undone to its savepoint, the batch reads jobs afresh.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from common.event_checks import (
    INVALID_EVENT,
    INVALID_TIME,
    SEQUENCE_GAP,
    Attempt,
    Capacity,
    event_time,
    runtime_problem,
    sequence_problem,
    time_problem,
    usage_problem,
)
from common.ids import new_id
from common.protocol import (
    EVENTS_PATH,
    EventsResponse,
    FinishedEvent,
    HandbackEvent,
    JobEvent,
    LogEvent,
    Rejection,
    StartedEvent,
    UsageEvent,
)
from common.states import RESULT_STATES, InvalidTransition, JobState, can_transition
from coordinator import scheduler
from coordinator.services.retries import end_attempt
from coordinator.services.tx import Tx
from coordinator.services.usage_ledger import UNREAD, record_usage
from coordinator.store.base import AuditRecord
from coordinator.store.db import Row
from coordinator.store.errors import StaleState
from coordinator.store.queries.audit import insert_audit_row
from coordinator.store.queries.jobs import LOG_RETENTION_BYTES, transition_job
from coordinator.store.repo import agents as rows
from coordinator.store.repo.webhooks import note_webhook_count
from coordinator.store.sqlite_core import loads_or_none

# What applying one event may raise and be refused for (``invalid_event``), undone alone.
_EVENT_ERRORS = (ValueError, OverflowError, InvalidTransition)


class EventNeedsIsolation(Exception):
    """An event raised while its batch ran without savepoints: undo the transaction and apply
    the batch again with them (``isolate=True``)."""


async def apply_events_isolated(write: Callable[[Callable[[Tx], EventsResponse]], Awaitable[EventsResponse]],
                                agent_id: str, events: list[JobEvent], now: int, *,
                                refused: dict[int, str] | None = None, request_id: str = "") -> EventsResponse:
    """``apply_event_batch`` in a transaction of ``write`` (the store's), without a savepoint per
    event unless an event fails: then in a second transaction, with them (the first undone)."""
    try:
        return await write(lambda tx: apply_event_batch(tx, agent_id, events, now, refused=refused,
                                                        request_id=request_id, isolate=False))
    except EventNeedsIsolation:
        return await write(lambda tx: apply_event_batch(tx, agent_id, events, now, refused=refused,
                                                        request_id=request_id, isolate=True))


def apply_event_batch(tx: Tx, agent_id: str, events: list[JobEvent], now: int, *,
                      refused: dict[int, str] | None = None, request_id: str = "",
                      isolate: bool = True) -> EventsResponse:
    """Apply one batch of the agent's events in order of ``seq``, received ``now``.

    ``refused`` maps the seq of events whose content did not validate to their rejection
    code: they are consumed and refused like the rest. ``isolate``: each event in its own
    savepoint; without, an event that raises raises ``EventNeedsIsolation`` (the caller undoes
    the transaction and runs it again isolated: ``apply_events_isolated``). The agent's ``last_seq`` advances by
    compare-and-set: a batch racing another of the same agent (a retry and its original)
    that lost raises ``StaleState`` and runs again, when the events the winner applied are
    replays."""
    agent = rows.event_cursor(tx, agent_id)
    workspace_id = agent["workspace_id"]
    note_webhook_count(tx, workspace_id, int(agent["webhooks"]))
    read = _BatchReads(capacity=_capacity(agent["capacity"]), gpu_model=str(agent["gpu_model"] or ""),
                       last_tick=None if agent["last_tick_at"] is None else int(agent["last_tick_at"]))
    last_seq = int(agent["last_seq"])
    rejected: list[Rejection] = []
    items: list[tuple[int, JobEvent | str]] = [(event.seq, event) for event in events]
    items += list((refused or {}).items())  # events whose content did not validate: consumed, refused
    gap_at: int | None = None
    for seq, item in sorted(items, key=lambda pair: pair[0]):
        if seq <= last_seq:
            continue  # a replay of an event already applied (or refused)
        if gap_at is not None or sequence_problem(seq, last_seq) is not None:
            # Never skip ahead: one event with a huge seq would make every real event
            # after it look like a replay. Everything from the gap on waits.
            gap_at = seq if gap_at is None else gap_at
            rejected.append(Rejection(seq=seq, code=SEQUENCE_GAP))
            continue
        if isinstance(item, str):
            problem: str | None = item
        elif not isolate:
            try:
                problem = _apply_read(tx, agent_id, workspace_id, item, now, read)
            except _EVENT_ERRORS as exc:
                raise EventNeedsIsolation(f"event {seq} of agent {agent_id} failed: {exc}") from exc
        else:
            # One event's own savepoint: an event that cannot be applied (a time that
            # does not parse, an edge the state machine refuses) is refused alone and
            # undone whole, instead of failing the batch and holding back every event
            # after it.
            rows.savepoint(tx, "event")
            try:
                problem = _apply_read(tx, agent_id, workspace_id, item, now, read)
            except _EVENT_ERRORS:
                rows.rollback_to(tx, "event")
                read.jobs.clear()  # what the undone writes returned is gone with them
                problem = INVALID_EVENT
            rows.release(tx, "event")
        if problem is not None:
            rejected.append(Rejection(seq=seq, code=problem))
            audit_refusal(tx, workspace_id, agent_id, item, problem, now, request_id)
        last_seq = seq
    if gap_at is not None:  # one row per batch, not one per event held back
        audit_refusal(tx, workspace_id, agent_id, None, SEQUENCE_GAP, now, request_id)
    # Compare-and-set: a concurrent batch of the same agent (a retry racing its original)
    # that advanced it first makes this one's whole batch void.
    if last_seq != int(agent["last_seq"]) and not rows.advance_last_seq(
            tx, agent_id, expected=int(agent["last_seq"]), new=last_seq):
        raise StaleState(f"agent {agent_id}'s events advanced past {agent['last_seq']} meanwhile")
    return EventsResponse(appliedThrough=last_seq, rejected=rejected)


@dataclass
class _BatchReads:
    """What a batch read once: of its agent, and the rows of the jobs its events changed, as
    their writes returned them (see the module docstring)."""

    capacity: Capacity
    gpu_model: str
    last_tick: int | None
    jobs: dict[str, Row] = field(default_factory=dict)


def _apply_read(tx: Tx, agent_id: str, workspace_id: str, event: JobEvent, now: int, read: _BatchReads) -> str | None:
    """``apply_event`` with the batch's reads; keeps the job's row as the event left it when
    only that row changed (``started``, ``usage``), else forgets every row read."""
    cell: list[Row] = []
    try:
        return apply_event(tx, agent_id, workspace_id, read.capacity, event, now, agent_gpu_model=read.gpu_model,
                           job_row=read.jobs.get(event.jobId), last_tick=read.last_tick, changed_row=cell)
    finally:
        if cell and isinstance(event, (StartedEvent, UsageEvent)):
            read.jobs[event.jobId] = cell[-1]
        elif not isinstance(event, UsageEvent):  # a usage replay changed nothing
            read.jobs.clear()


def apply_event(tx: Tx, agent_id: str, workspace_id: str, capacity: Capacity, event: JobEvent,
                now: int, *, agent_gpu_model: str | None = None, job_row: Row | None = None,
                last_tick: int | object | None = UNREAD, changed_row: list[Row] | None = None) -> str | None:
    """Apply one job event inside the caller's transaction; return a rejection code or None.
    Every figure is checked (``common.event_checks``) before anything is written.
    ``agent_gpu_model``: the agent's gpuModel label ('' when none), if read already;
    ``job_row``: the job's row as this transaction has it now (in the agent's workspace), if
    known; ``last_tick``: the meter's last tick, if read already. ``changed_row``, when given,
    receives the job's row as a ``started`` or ``usage`` event changed it."""
    job = job_row if job_row is not None else rows.job_in_workspace(tx, event.jobId, workspace_id)
    if job is None:
        return "unknown_job"
    if isinstance(event, UsageEvent):
        # Usage belongs to the attempt (this agent, this epoch), not to the job's current
        # state: an earlier attempt's late figures are still billed, to that attempt.
        attempt = rows.agent_attempt(tx, event.jobId, event.epoch, agent_id)
        if attempt is None:
            return "stale_epoch"
        problem = usage_problem(cpu_seconds=event.cpuSeconds, gb_seconds=event.gbSeconds,
                                gpu_seconds=event.gpuSeconds, gpu_util_seconds=event.gpuUtilSeconds,
                                gpu_memory_gb_seconds=event.gpuMemoryGbSeconds, capacity=capacity,
                                attempt=_usage_attempt(job, attempt), now=now)
        if problem is not None:
            return problem
        changed = record_usage(tx, agent_id, workspace_id, attempt, event, now, agent_gpu_model=agent_gpu_model,
                               last_tick=last_tick)
        if changed is not None and changed_row is not None:
            changed_row.append(changed)
        return None
    if job["agent_id"] != agent_id or job["epoch"] != event.epoch:
        return "stale_epoch"
    state = JobState(job["state"])
    if isinstance(event, LogEvent):
        append_log(tx, event.jobId, int(job["log_size"]), event.data.encode())
        return None
    if isinstance(event, StartedEvent):
        started_at, problem = _reported_time(event.at, _attempt(job), now, after_start=False)
        if problem is not None:
            return problem
        if not can_transition(state, JobState.RUNNING):
            return "invalid_transition"
        changed = transition_job(tx, job, JobState.RUNNING, now=now, started_at=started_at)
        if changed_row is not None:
            changed_row.append(changed)
        return None
    if isinstance(event, HandbackEvent):
        ended_at, problem = _reported_time(event.at, _attempt(job), now, after_start=True)
        if problem is not None:
            return problem
        # Stopped without a result: back to the queue for a fresh attempt (a new claim, a new
        # epoch), unless its user asked to cancel it meanwhile.
        if job["cancel_requested"]:
            if not can_transition(state, JobState.CANCELLED):
                return "invalid_transition"
            transition_job(tx, job, JobState.CANCELLED, now=now, finished_at=ended_at, reason="cancelled")
            return None
        if state not in (JobState.ASSIGNED, JobState.RUNNING):
            return "invalid_transition"
        transition_job(tx, job, JobState.QUEUED, now=now, agent_id=None, assigned_at=None, started_at=None,
                       attempt_reason="handed_back", attempt_ended_at=ended_at)
        return None
    assert isinstance(event, FinishedEvent)
    if event.state not in RESULT_STATES:
        return "invalid_state"  # a result is SUCCEEDED, FAILED, CANCELLED or TIMED_OUT, nothing else
    finished_at, problem = _reported_time(event.at, _attempt(job), now, after_start=True)
    problem = problem or runtime_problem(event.runtimeMs, _attempt(job), now)
    if problem is not None:
        return problem
    if not can_transition(state, event.state):
        return "invalid_transition"
    # Reaching here from LOST means the job's own agent, holding the current epoch (checked
    # above), reports the result it produced during a partition: no other attempt can have
    # started, so the real result replaces LOST.
    started_at = job["started_at"] if job["started_at"] is not None else finished_at - event.runtimeMs
    end_attempt(tx, job, event.state, now=now, finished_at=finished_at, exit_code=event.exitCode,
                runtime_ms=event.runtimeMs, reason=event.reason, started_at=started_at, signal=event.signal)
    return None


def append_log(tx: Tx, job_id: str, size: int, data: bytes) -> None:
    """Append a log chunk at byte ``size``; keep at least the last ``LOG_RETENTION_BYTES``
    (only chunks wholly older than that are dropped). Raises ``StaleState`` when the log
    grew meanwhile."""
    if not data:
        return
    if not rows.append_log_chunk(tx, job_id, size, data):
        raise StaleState(f"job {job_id}'s log grew past {size} bytes meanwhile")
    rows.drop_log_before(tx, job_id, size + len(data) - LOG_RETENTION_BYTES)


def audit_refusal(tx: Tx, workspace_id: str, agent_id: str, item: JobEvent | str | None,
                  code: str, now: int, request_id: str) -> None:
    """An audit row for an event the coordinator refused: what an agent reports is evidence."""
    target = None if item is None or isinstance(item, str) else item.jobId
    insert_audit_row(tx, AuditRecord(
        id=new_id("aud"), workspace_id=workspace_id, at=now, actor=agent_id, action="agent.event_refused",
        target=target, result="failed", status=422, error_code=code, request_id=request_id or new_id("req"),
        source=None, method="POST", path=EVENTS_PATH,
    ))


def _capacity(text: str) -> Capacity:
    data = json.loads(text)
    return Capacity(cpus=float(data.get("cpus", 0)), memory_mb=int(data.get("memoryMb", 0)),
                    gpus=int(data.get("gpus", 0)))


def _attempt(job: Row, assigned_at: int | None = None) -> Attempt:
    assigned = assigned_at if assigned_at is not None else job["assigned_at"]
    return Attempt(created_at=int(job["created_at"]),
                   assigned_at=int(assigned if assigned is not None else job["created_at"]),
                   started_at=job["started_at"])


def _usage_attempt(job: Row, attempt: Row) -> Attempt:
    """What bounds one attempt's usage: its wall time, which stops at its end once it is over
    (a LOST one may still be running on a partitioned agent: no end), and the GPUs the job
    asked for (an agent gives a job exactly those)."""
    state = JobState(attempt["state"])
    over = state not in (JobState.ASSIGNED, JobState.RUNNING, JobState.LOST)
    ended_at = attempt["finished_at"] if over and attempt["finished_at"] is not None else None
    gpus = scheduler.effective_demand(loads_or_none(job["resources"]), None).gpus
    return Attempt(created_at=int(job["created_at"]), assigned_at=int(attempt["assigned_at"]),
                   started_at=attempt["started_at"], ended_at=None if ended_at is None else int(ended_at), gpus=gpus)


def _reported_time(text: str, attempt: Attempt, now: int, *, after_start: bool) -> tuple[int, str | None]:
    at = event_time(text)
    if at is None:
        return 0, INVALID_TIME
    return at, time_problem(at, attempt, now, after_start=after_start)
