"""SQLite queries for agents and the agent protocol (claims, heartbeats, events)."""

from __future__ import annotations

import functools
import json
from typing import Any

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
    Assignment,
    CapacityMsg,
    EventsResponse,
    FinishedEvent,
    HandbackEvent,
    HeartbeatRequest,
    JobEvent,
    LogEvent,
    Rejection,
    RunningJob,
    StartedEvent,
    UsageEvent,
)
from common.states import (
    RESULT_STATES,
    AgentState,
    InvalidTransition,
    JobState,
    agent_state_after_heartbeat,
    can_transition,
)
from coordinator import scheduler
from coordinator.services import arrays, fairness
from coordinator.services.retries import end_attempt
from coordinator.services.usage_ledger import record_usage
from coordinator.store.base import (
    AgentPulse,
    AgentRecord,
    AuditRecord,
    DeleteOutcome,
    TokenRecord,
)
from coordinator.store.db import Dialect, Row, Tx
from coordinator.store.errors import StaleState
from coordinator.store.repo.billing import workspace_held
from coordinator.store.sqlite_audit import insert_audit_row
from coordinator.store.sqlite_core import SqliteCore, loads_or_none
from coordinator.store.sqlite_identity import insert_token_row
from coordinator.store.sqlite_jobs import CLAIMABLE_NOW_SQL, LOG_RETENTION_BYTES, transition_job

ASSIGNMENT_GRACE_MS = 10_000
FORGOTTEN_GRACE_MS = 60_000

# The placement shapes (selector, resources, submitter, array) of a workspace's QUEUED jobs, and
# the best job of one shape: both served by ``jobs_claim_shapes`` (0040), the first by skip-ahead
# over it. The selector test is also made here, in SQL, after DISTINCT (MATERIALIZED keeps SQLite
# from pushing it into the index walk, which would lose the skip-ahead), so that a queue of many
# distinct selectors the agent lacks (a label per run) costs a C-side JSON check per shape
# rather than a Python one. The index hint and the label test differ by database (``Dialect``).
@functools.cache
def _shapes_sql(dialect: Dialect) -> str:
    return f"""
WITH shapes AS MATERIALIZED (
    SELECT DISTINCT labels, resources, submitted_by, array_id FROM jobs {dialect.indexed_by("jobs_claim_shapes")}
    WHERE workspace_id = :workspace AND state = 'QUEUED')
SELECT labels, resources, submitted_by, array_id FROM shapes
WHERE labels = '{{}}' OR {dialect.labels_contain(":agent_labels", "shapes.labels")}
"""


@functools.cache
def _best_of_shape_sql(dialect: Dialect) -> str:
    # SKIP LOCKED (PostgreSQL): a job another replica is claiming right now is passed over
    # rather than waited for; the claim's compare-and-set is what refuses a double assignment.
    return f"""
SELECT id, priority, created_at FROM jobs {dialect.indexed_by("jobs_claim_shapes")}
WHERE workspace_id = ? AND state = 'QUEUED' AND labels = ? AND resources IS NOT DISTINCT FROM ?
  AND submitted_by IS NOT DISTINCT FROM ? AND array_id IS NOT DISTINCT FROM ? AND {CLAIMABLE_NOW_SQL}
ORDER BY priority DESC, created_at, id LIMIT 1 {dialect.skip_locked}
"""


def claimable_heads(tx: Tx, workspace_id: str, agent_labels: dict[str, str],
                    free: dict[str, Any], defaults: dict[str, Any] | None, *,
                    now: int | None = None) -> list[fairness.Head]:
    """The best QUEUED job (highest priority, then oldest) of each placement shape the agent
    can run (issue 16): its labels contain the shape's selector, the shape's resources fit its
    free capacity, and its array (if any) is below its maxParallel. However many jobs it cannot
    run are queued ahead, they cost nothing: the decision is taken once per distinct shape, and
    each shape it can run is one index seek. ``fairness.choose`` picks among them. Jobs whose
    dependencies are pending, or whose retry backoff lasts past ``now`` (None: any backoff is
    over), are passed over."""
    held_until = now if now is not None else 2**62
    params = {"workspace": workspace_id, "agent_labels": json.dumps(agent_labels)}
    shapes = [shape for shape in tx.execute(_shapes_sql(tx.dialect), params).fetchall()
              if scheduler.labels_match(json.loads(shape["labels"]), agent_labels)
              and scheduler.fits(scheduler.effective_demand(loads_or_none(shape["resources"]), defaults), free)]
    full = arrays.full_arrays(tx, workspace_id,
                              (shape["array_id"] for shape in shapes if shape["array_id"] is not None))
    heads: list[fairness.Head] = []
    for shape in shapes:
        if shape["array_id"] in full:
            continue
        row = tx.execute(_best_of_shape_sql(tx.dialect), (workspace_id, shape["labels"], shape["resources"],
                                                          shape["submitted_by"], shape["array_id"],
                                                          held_until)).fetchone()
        if row is not None:
            heads.append(fairness.Head(job_id=row["id"], priority=row["priority"], created_at=row["created_at"],
                                       submitter=shape["submitted_by"] or "", array_id=shape["array_id"]))
    return heads


def best_claimable(tx: Tx, workspace_id: str, agent_labels: dict[str, str],
                   free: dict[str, Any], defaults: dict[str, Any] | None, *, now: int | None = None) -> str | None:
    """The id of the job the agent would be given at ``now`` (see ``claimable_heads`` and
    ``coordinator.services.fairness``), or None."""
    heads = claimable_heads(tx, workspace_id, agent_labels, free, defaults, now=now)
    chosen = fairness.choose(heads, fairness.turns_of(tx, workspace_id, {head.submitter for head in heads}))
    return chosen.job_id if chosen is not None else None


class AgentQueries(SqliteCore):
    async def register_agent(self, agent: AgentRecord, token: TokenRecord) -> None:
        def write(tx: Tx) -> None:
            tx.execute(
                """INSERT INTO agents (id, workspace_id, name, state, labels, capacity, version,
                                       registered_at, last_heartbeat_at)
                   VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)""",
                (agent.id, agent.workspace_id, agent.name, agent.state.value, json.dumps(agent.labels),
                 json.dumps(agent.capacity), agent.version, agent.registered_at, agent.last_heartbeat_at),
            )
            insert_token_row(tx, token)

        await self._write(write)

    async def get_agent(self, workspace_id: str, agent_id: str) -> AgentRecord | None:
        def read(tx: Tx) -> AgentRecord | None:
            row = tx.execute(
                "SELECT * FROM agents WHERE id = ? AND workspace_id = ? AND deleted_at IS NULL",
                (agent_id, workspace_id),
            ).fetchone()
            return _agent_with_jobs(tx, row) if row is not None else None

        return await self._read_with(read)

    async def list_agents(self, workspace_id: str, *, limit: int, before_id: str | None) -> list[AgentRecord]:
        params: tuple[Any, ...] = (workspace_id, before_id or "\uffff", limit)

        def read(tx: Tx) -> list[AgentRecord]:
            rows = tx.execute(
                """SELECT * FROM agents WHERE workspace_id = ? AND deleted_at IS NULL AND id < ?
                   ORDER BY id DESC LIMIT ?""",
                params,
            ).fetchall()
            return [_agent_with_jobs(tx, row) for row in rows]

        return await self._read_with(read)

    async def record_heartbeat(self, agent_id: str, beat: HeartbeatRequest, now: int) -> tuple[bool, list[str]]:
        def write(tx: Tx) -> tuple[bool, list[str]]:
            agent = tx.execute("SELECT * FROM agents WHERE id = ?", (agent_id,)).fetchone()
            drain = bool(agent["drain_requested"])
            # An agent that is stopping (SIGTERM) reports DRAINING/DRAINED itself: shown as such,
            # and given no new claims, though nobody asked it to drain.
            stopping = beat.state in (AgentState.DRAINING, AgentState.DRAINED)
            state = agent_state_after_heartbeat(drain or stopping, len(beat.runningJobs))
            updates = ["state = ?", "last_heartbeat_at = ?", "down_at = NULL"]
            params: list[Any] = [state.value, now]
            if beat.labels is not None:
                updates.append("labels = ?")
                params.append(json.dumps(beat.labels))
            if beat.capacity is not None:
                updates.append("capacity = ?")
                params.append(beat.capacity.model_dump_json())
            if beat.version is not None:
                updates.append("version = ?")
                params.append(beat.version)
            tx.execute(f"UPDATE agents SET {', '.join(updates)} WHERE id = ?", (*params, agent_id))
            stop = _stop_orders(tx, agent_id, beat.runningJobs)
            # A claim whose answer never reached the agent (its connection dropped) leaves a
            # job ASSIGNED to an agent that does not know it: hand it back after a grace.
            reported = {running.jobId for running in beat.runningJobs}
            forgotten = tx.execute(
                "SELECT * FROM jobs WHERE agent_id = ? AND state = 'ASSIGNED' AND assigned_at < ?",
                (agent_id, now - ASSIGNMENT_GRACE_MS),
            ).fetchall()
            for row in forgotten:
                if row["id"] not in reported:
                    transition_job(tx, row, JobState.QUEUED, now=now, agent_id=None,
                                   attempt_reason="assignment_unconfirmed")
            for running in beat.runningJobs:
                tx.execute(
                    """UPDATE jobs SET assignment_confirmed_at = ? WHERE id = ? AND agent_id = ? AND epoch = ?
                         AND state = 'ASSIGNED' AND assignment_confirmed_at IS NULL""",
                    (now, running.jobId, agent_id, running.epoch),
                )
            _track_unreported(tx, agent_id, reported, now)
            return drain, stop

        return await self._write(write)

    async def set_agent_drain(self, workspace_id: str, agent_id: str, drain: bool) -> AgentRecord | None:
        def write(tx: Tx) -> bool:
            row = tx.execute(
                "SELECT state FROM agents WHERE id = ? AND workspace_id = ? AND deleted_at IS NULL",
                (agent_id, workspace_id),
            ).fetchone()
            if row is None:
                return False
            running = tx.execute(
                "SELECT COUNT(*) FROM jobs WHERE agent_id = ? AND state IN ('ASSIGNED', 'RUNNING')", (agent_id,)
            ).fetchone()[0]
            state = AgentState(row["state"])
            if state != AgentState.DOWN:
                state = agent_state_after_heartbeat(drain, running)
            tx.execute(
                "UPDATE agents SET drain_requested = ?, state = ? WHERE id = ?", (int(drain), state.value, agent_id)
            )
            return True

        if not await self._write(write):
            return None
        return await self.get_agent(workspace_id, agent_id)

    async def claim_job(self, agent_id: str, free: CapacityMsg, defaults: CapacityMsg | None,
                        now: int) -> Assignment | None:
        free_map = free.model_dump()
        defaults_map = defaults.model_dump() if defaults else None
        return await self._write(lambda tx: claim_next_job(tx, agent_id, free_map, defaults_map, now))

    async def apply_events(self, agent_id: str, events: list[JobEvent], now: int, *,
                           refused: dict[int, str] | None = None, request_id: str = "") -> EventsResponse:
        return await self._write(lambda tx: apply_event_batch(tx, agent_id, events, now, refused=refused,
                                                              request_id=request_id))

    # --- liveness -------------------------------------------------------------------------
    async def agent_pulses(self) -> list[AgentPulse]:
        rows = await self._read(
            """SELECT a.id, a.state, a.registered_at, a.last_heartbeat_at,
                      (SELECT COUNT(*) FROM jobs j WHERE j.agent_id = a.id
                                                     AND j.state IN ('ASSIGNED', 'RUNNING')) AS active
               FROM agents a WHERE a.deleted_at IS NULL"""
        )
        return [AgentPulse(agent_id=row["id"], state=AgentState(row["state"]), registered_at=row["registered_at"],
                           last_heartbeat_at=row["last_heartbeat_at"], active_jobs=row["active"]) for row in rows]

    async def mark_agent_down(self, agent_id: str, *, seen_before: int, now: int) -> bool:
        def write(tx: Tx) -> bool:
            cursor = tx.execute(
                """UPDATE agents SET state = 'DOWN', down_at = ?
                   WHERE id = ? AND deleted_at IS NULL AND state != 'DOWN'
                     AND COALESCE(last_heartbeat_at, registered_at) < ?""",
                (now, agent_id, seen_before),
            )
            return cursor.rowcount == 1

        return await self._write(write)

    async def expire_leases(self, agent_id: str, *, seen_before: int, now: int) -> list[str]:
        def write(tx: Tx) -> list[str]:
            silent = tx.execute(
                "SELECT 1 FROM agents WHERE id = ? AND COALESCE(last_heartbeat_at, registered_at) < ?",
                (agent_id, seen_before),
            ).fetchone()
            if silent is None:
                return []
            return _lose_jobs(tx, agent_id, "agent_lost", now, include_assigned=True)

        return await self._write(write)

    async def release_assignment(self, agent_id: str, job_id: str, epoch: int, now: int) -> str | None:
        def write(tx: Tx) -> str | None:
            row = tx.execute(
                "SELECT * FROM jobs WHERE id = ? AND agent_id = ? AND epoch = ? AND state = 'ASSIGNED'",
                (job_id, agent_id, epoch),
            ).fetchone()
            if row is None:
                return None
            transition_job(tx, row, JobState.QUEUED, now=now, agent_id=None, assigned_at=None,
                           attempt_reason="released")
            return str(row["workspace_id"])

        return await self._write(write)

    async def requeue_stale_assignments(self, *, assigned_before: int, now: int) -> list[tuple[str, str]]:
        def write(tx: Tx) -> list[tuple[str, str]]:
            # Through the agents, so that the partial index on (agent_id) for ASSIGNED/RUNNING
            # jobs is used instead of a scan of every job.
            rows = tx.execute(
                """SELECT * FROM jobs WHERE agent_id IN (SELECT id FROM agents)
                     AND state = 'ASSIGNED' AND assigned_at < ? AND assignment_confirmed_at IS NULL""",
                (assigned_before,),
            ).fetchall()
            for row in rows:
                transition_job(tx, row, JobState.QUEUED, now=now, agent_id=None, assigned_at=None,
                               attempt_reason="assignment_expired")
            return [(str(row["id"]), str(row["workspace_id"])) for row in rows]

        return await self._write(write)

    async def agent_goodbye(self, agent_id: str, now: int) -> list[str]:
        def write(tx: Tx) -> list[str]:
            tx.execute(
                "UPDATE agents SET state = 'DOWN', down_at = ? WHERE id = ? AND deleted_at IS NULL", (now, agent_id)
            )
            rows = tx.execute("SELECT * FROM jobs WHERE agent_id = ? AND state = 'ASSIGNED'", (agent_id,)).fetchall()
            for row in rows:
                transition_job(tx, row, JobState.QUEUED, now=now, agent_id=None, assigned_at=None,
                               attempt_reason="released")
            return [str(row["id"]) for row in rows]

        return await self._write(write)

    async def agent_orders(self, agent_id: str, running: list[RunningJob]) -> tuple[bool, list[str]] | None:
        def read(tx: Tx) -> tuple[bool, list[str]] | None:
            row = tx.execute("SELECT drain_requested FROM agents WHERE id = ? AND deleted_at IS NULL",
                             (agent_id,)).fetchone()
            if row is None:
                return None
            return bool(row["drain_requested"]), _stop_orders(tx, agent_id, running)

        return await self._read_with(read)

    # --- administration -------------------------------------------------------------------
    async def delete_agent(self, workspace_id: str, agent_id: str, *, force: bool, now: int) -> DeleteOutcome:
        def write(tx: Tx) -> DeleteOutcome:
            agent = tx.execute(
                "SELECT id FROM agents WHERE id = ? AND workspace_id = ? AND deleted_at IS NULL",
                (agent_id, workspace_id),
            ).fetchone()
            if agent is None:
                return DeleteOutcome.NOT_FOUND
            busy = tx.execute(
                "SELECT COUNT(*) FROM jobs WHERE agent_id = ? AND state IN ('ASSIGNED', 'RUNNING')", (agent_id,)
            ).fetchone()[0]
            if busy and not force:
                return DeleteOutcome.BUSY
            # Its token goes first: from this commit on the agent can make no protocol call, so
            # nothing it still sends can touch the jobs decided here.
            tx.execute(
                "UPDATE tokens SET revoked_at = ? WHERE agent_id = ? AND revoked_at IS NULL", (now, agent_id)
            )
            for row in tx.execute(
                "SELECT * FROM jobs WHERE agent_id = ? AND state = 'ASSIGNED'", (agent_id,)
            ).fetchall():
                transition_job(tx, row, JobState.QUEUED, now=now, agent_id=None, attempt_reason="agent_deleted")
            _lose_jobs(tx, agent_id, "agent_deleted", now, include_assigned=False)
            tx.execute("UPDATE agents SET deleted_at = ? WHERE id = ?", (now, agent_id))
            return DeleteOutcome.DELETED

        return await self._write(write)


def claim_next_job(tx: Tx, agent_id: str, free_map: dict[str, Any], defaults_map: dict[str, Any] | None,
                   now: int) -> Assignment | None:
    """Assign the agent the best job it can run (``best_claimable``), if any, inside ``tx``.

    The assignment is a compare-and-set on the job's state and epoch (``transition_job``):
    where another transaction assigned the same job first, it raises ``StaleState`` and the
    write runs again on the data as it now stands, so a job is never assigned twice."""
    agent = tx.execute(
        "SELECT * FROM agents WHERE id = ? AND deleted_at IS NULL", (agent_id,)
    ).fetchone()
    if agent is None or agent["drain_requested"] or agent["state"] != AgentState.READY.value:
        return None
    if workspace_held(tx, agent["workspace_id"]):
        return None
    workspace_id = agent["workspace_id"]
    heads = claimable_heads(tx, workspace_id, json.loads(agent["labels"]), free_map, defaults_map,
                            now=now)
    turns = fairness.turns_of(tx, workspace_id, {head.submitter for head in heads})
    while True:
        picked = fairness.choose(heads, turns)
        if picked is None:
            return None
        chosen = tx.execute("SELECT * FROM jobs WHERE id = ?", (picked.job_id,)).fetchone()
        epoch = chosen["epoch"] + 1
        try:
            transition_job(tx, chosen, JobState.ASSIGNED, now=now, agent_id=agent_id, epoch=epoch,
                           assigned_at=now, assignment_confirmed_at=None)
        except arrays.ArrayFull:
            # Another claim took the array's last slot since it was read (compare-and-set).
            heads = [head for head in heads if head.array_id != picked.array_id]
            continue
        fairness.record_turn(tx, workspace_id, picked.submitter)
        break
    demand = scheduler.effective_demand(loads_or_none(chosen["resources"]), defaults_map)
    return Assignment(
        jobId=chosen["id"], epoch=epoch, command=chosen["command"], env=json.loads(chosen["env"]),
        timeoutSeconds=chosen["timeout_seconds"], cpus=demand.cpus or None,
        memoryMb=demand.memory_mb or None, gpus=demand.gpus, name=chosen["name"],
    )


def apply_event_batch(tx: Tx, agent_id: str, events: list[JobEvent], now: int, *,
                      refused: dict[int, str] | None = None, request_id: str = "") -> EventsResponse:
    """Apply one batch of the agent's events in order of ``seq`` inside ``tx``; see ``apply_events``.

    The agent's ``last_seq`` advances by compare-and-set: a batch racing another of the same
    agent (a retry and its original) that lost raises ``StaleState`` and runs again, when
    the events the winner applied are replays."""
    agent = tx.execute("SELECT workspace_id, last_seq, capacity FROM agents WHERE id = ?",
                         (agent_id,)).fetchone()
    workspace_id = agent["workspace_id"]
    capacity = _capacity(agent["capacity"])
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
        else:
            # One event's own savepoint: an event that cannot be applied (a time that
            # does not parse, an edge the state machine refuses) is refused alone and
            # undone whole, instead of failing the batch and holding back every event
            # after it.
            tx.execute("SAVEPOINT event")
            try:
                problem = _apply_event(tx, agent_id, workspace_id, capacity, item, now)
            except (ValueError, OverflowError, InvalidTransition):
                tx.execute("ROLLBACK TO event")
                problem = INVALID_EVENT
            tx.execute("RELEASE event")
        if problem is not None:
            rejected.append(Rejection(seq=seq, code=problem))
            _audit_refusal(tx, workspace_id, agent_id, item, problem, now, request_id)
        last_seq = seq
    if gap_at is not None:  # one row per batch, not one per event held back
        _audit_refusal(tx, workspace_id, agent_id, None, SEQUENCE_GAP, now, request_id)
    if last_seq != int(agent["last_seq"]):
        # Compare-and-set: a concurrent batch of the same agent (a retry racing its
        # original) that advanced it first makes this one's whole batch void.
        advanced = tx.execute("UPDATE agents SET last_seq = ? WHERE id = ? AND last_seq = ?",
                              (last_seq, agent_id, agent["last_seq"])).rowcount
        if advanced != 1:
            raise StaleState(f"agent {agent_id}'s events advanced past {agent['last_seq']} meanwhile")
    return EventsResponse(appliedThrough=last_seq, rejected=rejected)



def _track_unreported(tx: Tx, agent_id: str, reported: set[str], now: int) -> None:
    """A live agent that stops listing one of its RUNNING jobs has lost it (its data dir was
    wiped, its result was refused...): after ``FORGOTTEN_GRACE_MS`` of beats without it, the
    job is LOST. The grace covers a result still on its way from the agent's spool; a result
    that arrives later at the job's own epoch still replaces LOST."""
    for row in tx.execute("SELECT * FROM jobs WHERE agent_id = ? AND state = 'RUNNING'", (agent_id,)).fetchall():
        if row["id"] in reported:
            if row["unreported_since"] is not None:
                tx.execute("UPDATE jobs SET unreported_since = NULL WHERE id = ?", (row["id"],))
        elif row["unreported_since"] is None:
            tx.execute("UPDATE jobs SET unreported_since = ? WHERE id = ?", (now, row["id"]))
        elif now - row["unreported_since"] > FORGOTTEN_GRACE_MS:
            end_attempt(tx, row, JobState.LOST, now=now, finished_at=now, reason="agent_forgot")


def _stop_orders(tx: Tx, agent_id: str, running: list[RunningJob]) -> list[str]:
    """Jobs the agent must stop: those it reports that are no longer its own at that epoch,
    were cancelled or finished; plus its RUNNING jobs with a cancel requested. A job that went
    LOST at the agent's own epoch is left running: its result still wins over LOST."""
    stop: list[str] = []
    for report in running:
        job = tx.execute(
            "SELECT state, agent_id, epoch, cancel_requested FROM jobs WHERE id = ?", (report.jobId,)
        ).fetchone()
        if job is None or job["agent_id"] != agent_id or job["epoch"] != report.epoch or job["cancel_requested"]:
            stop.append(report.jobId)
            continue
        state = JobState(job["state"])
        if state.is_terminal and state != JobState.LOST:
            stop.append(report.jobId)
    reported = {report.jobId for report in running}
    for row in tx.execute(
        "SELECT id FROM jobs WHERE agent_id = ? AND state = 'RUNNING' AND cancel_requested = 1 ORDER BY id",
        (agent_id,),
    ).fetchall():
        if row["id"] not in reported:
            stop.append(row["id"])
    return stop


def _lose_jobs(tx: Tx, agent_id: str, reason: str, now: int, *, include_assigned: bool) -> list[str]:
    states = "('ASSIGNED', 'RUNNING')" if include_assigned else "('RUNNING')"
    lost: list[str] = []
    for row in tx.execute(f"SELECT * FROM jobs WHERE agent_id = ? AND state IN {states}", (agent_id,)).fetchall():
        # A cancel that the agent never got to carry out ends as CANCELLED, not LOST.
        if row["cancel_requested"]:
            transition_job(tx, row, JobState.CANCELLED, now=now, finished_at=now, reason="cancelled")
        else:
            end_attempt(tx, row, JobState.LOST, now=now, finished_at=now, reason=reason)
        lost.append(row["id"])
    return lost


def _capacity(text: str) -> Capacity:
    data = json.loads(text)
    return Capacity(cpus=float(data.get("cpus", 0)), memory_mb=int(data.get("memoryMb", 0)),
                    gpus=int(data.get("gpus", 0)))


def _audit_refusal(tx: Tx, workspace_id: str, agent_id: str, item: JobEvent | str | None,
                   code: str, now: int, request_id: str) -> None:
    """An audit row for an event the coordinator refused: what an agent reports is evidence."""
    target = None if item is None or isinstance(item, str) else item.jobId
    insert_audit_row(tx, AuditRecord(
        id=new_id("aud"), workspace_id=workspace_id, at=now, actor=agent_id, action="agent.event_refused",
        target=target, result="failed", status=422, error_code=code, request_id=request_id or new_id("req"),
        source=None, method="POST", path=EVENTS_PATH,
    ))


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


def _apply_event(tx: Tx, agent_id: str, workspace_id: str, capacity: Capacity, event: JobEvent,
                 now: int) -> str | None:
    """Apply one job event inside the caller's transaction; return a rejection code or None.
    Every figure is checked (``common.event_checks``) before anything is written."""
    job = tx.execute(
        "SELECT * FROM jobs WHERE id = ? AND workspace_id = ?", (event.jobId, workspace_id)
    ).fetchone()
    if job is None:
        return "unknown_job"
    if isinstance(event, UsageEvent):
        # Usage belongs to the attempt (this agent, this epoch), not to the job's current
        # state: an earlier attempt's late figures are still billed, to that attempt.
        attempt = tx.execute(
            "SELECT * FROM job_attempts WHERE job_id = ? AND epoch = ? AND agent_id = ?",
            (event.jobId, event.epoch, agent_id),
        ).fetchone()
        if attempt is None:
            return "stale_epoch"
        problem = usage_problem(cpu_seconds=event.cpuSeconds, gb_seconds=event.gbSeconds,
                                gpu_seconds=event.gpuSeconds, gpu_util_seconds=event.gpuUtilSeconds,
                                gpu_memory_gb_seconds=event.gpuMemoryGbSeconds, capacity=capacity,
                                attempt=_usage_attempt(job, attempt), now=now)
        if problem is not None:
            return problem
        record_usage(tx, agent_id, workspace_id, attempt, event, now)
        return None
    if job["agent_id"] != agent_id or job["epoch"] != event.epoch:
        return "stale_epoch"
    state = JobState(job["state"])
    if isinstance(event, LogEvent):
        _append_log(tx, event.jobId, int(job["log_size"]), event.data.encode())
        return None
    if isinstance(event, StartedEvent):
        started_at, problem = _reported_time(event.at, _attempt(job), now, after_start=False)
        if problem is not None:
            return problem
        if not can_transition(state, JobState.RUNNING):
            return "invalid_transition"
        transition_job(tx, job, JobState.RUNNING, now=now, started_at=started_at)
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


def _append_log(tx: Tx, job_id: str, size: int, data: bytes) -> None:
    if not data:
        return
    new_size = size + len(data)
    if tx.execute("UPDATE jobs SET log_size = ? WHERE id = ? AND log_size = ?", (new_size, job_id, size)).rowcount != 1:
        raise StaleState(f"job {job_id}'s log grew past {size} bytes meanwhile")
    tx.execute('INSERT INTO job_logs (job_id, "offset", data) VALUES (?, ?, ?)', (job_id, size, data))
    # Keep at least the last LOG_RETENTION_BYTES: drop only chunks wholly older than that.
    tx.execute(
        'DELETE FROM job_logs WHERE job_id = ? AND "offset" + length(data) <= ?',
        (job_id, new_size - LOG_RETENTION_BYTES),
    )


def _agent_with_jobs(tx: Tx, row: Row) -> AgentRecord:
    jobs = tx.execute(
        "SELECT id FROM jobs WHERE agent_id = ? AND state IN ('ASSIGNED', 'RUNNING') ORDER BY id",
        (row["id"],),
    ).fetchall()
    return _agent(row, [job["id"] for job in jobs])


def _agent(row: Row, current_jobs: list[str]) -> AgentRecord:
    return AgentRecord(
        id=row["id"], workspace_id=row["workspace_id"], name=row["name"], state=AgentState(row["state"]),
        labels=json.loads(row["labels"]), capacity=json.loads(row["capacity"]), version=row["version"],
        registered_at=row["registered_at"], last_heartbeat_at=row["last_heartbeat_at"],
        drain_requested=bool(row["drain_requested"]), current_jobs=current_jobs,
    )
