"""SQLite queries for agents and the agent protocol (claims, heartbeats, events).

What a heartbeat changes is decided in ``coordinator.services.heartbeats``, what a job event
changes in ``coordinator.services.job_events``, what becomes of an agent's jobs when it drains,
goes silent, leaves or is deleted in ``coordinator.services.agent_lifecycle``; their SQL is in
``coordinator.store.repo.agents``.
"""

from __future__ import annotations

import functools
import json
from typing import Any

from common.protocol import (
    Assignment,
    CapacityMsg,
    EventsResponse,
    HeartbeatRequest,
    JobEvent,
    RunningJob,
)
from common.states import (
    AgentState,
    JobState,
)
from coordinator import scheduler
from coordinator.services import agent_lifecycle, arrays, fairness, heartbeats, job_events
from coordinator.services.job_events import apply_event_batch
from coordinator.store.base import (
    AgentPulse,
    AgentRecord,
    DeleteOutcome,
    TokenRecord,
)
from coordinator.store.db import Dialect, Row, Tx
from coordinator.store.repo.billing import workspace_held
from coordinator.store.sqlite_core import SqliteCore, loads_or_none
from coordinator.store.sqlite_identity import insert_token_row
from coordinator.store.sqlite_jobs import CLAIMABLE_NOW_SQL, transition_job

# apply_event_batch is re-exported: callers that drive the event rules directly import it here.
__all__ = ["AgentQueries", "apply_event_batch", "best_claimable", "claim_next_job", "claimable_heads"]

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
def _best_of_shape_sql(dialect: Dialect, null_resources: bool, null_submitter: bool, null_array: bool) -> str:
    # ``= ?`` or ``IS NULL`` per column, never ``IS NOT DISTINCT FROM ?``: PostgreSQL cannot seek
    # an index on the latter. And the ORDER BY names the shape's columns too, constant here: a
    # column fixed by ``IS NULL`` does not count as fixed to PostgreSQL's planner, which would
    # then sort the whole shape instead of reading ``jobs_claim_shapes`` in order and stopping at
    # the first row it can lock.
    # SKIP LOCKED (PostgreSQL): a job another replica is claiming right now is passed over
    # rather than waited for; the claim's compare-and-set is what refuses a double assignment.
    resources = "resources IS NULL" if null_resources else "resources = ?"
    submitter = "submitted_by IS NULL" if null_submitter else "submitted_by = ?"
    array = "array_id IS NULL" if null_array else "array_id = ?"
    return f"""
SELECT id, priority, created_at FROM jobs {dialect.indexed_by("jobs_claim_shapes")}
WHERE workspace_id = ? AND state = 'QUEUED' AND labels = ? AND {resources}
  AND {submitter} AND {array} AND {CLAIMABLE_NOW_SQL}
ORDER BY labels, resources, submitted_by, array_id, priority DESC, created_at, id LIMIT 1 {dialect.skip_locked}
"""


def _best_of_shape(tx: Tx, workspace_id: str, shape: Row, held_until: int) -> Row | None:
    """The best claimable job of one placement shape, locked (PostgreSQL) for this claim."""
    keys = (shape["resources"], shape["submitted_by"], shape["array_id"])
    sql = _best_of_shape_sql(tx.dialect, *(key is None for key in keys))
    params = (workspace_id, shape["labels"], *(key for key in keys if key is not None), held_until)
    row: Row | None = tx.execute(sql, params).fetchone()
    return row


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
        row = _best_of_shape(tx, workspace_id, shape, held_until)
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
        return await self._write(lambda tx: heartbeats.record_heartbeat(tx, agent_id, beat, now))

    async def set_agent_drain(self, workspace_id: str, agent_id: str, drain: bool) -> AgentRecord | None:
        if not await self._write(lambda tx: agent_lifecycle.set_drain(tx, workspace_id, agent_id, drain)):
            return None
        return await self.get_agent(workspace_id, agent_id)

    async def claim_job(self, agent_id: str, free: CapacityMsg, defaults: CapacityMsg | None,
                        now: int) -> Assignment | None:
        free_map = free.model_dump()
        defaults_map = defaults.model_dump() if defaults else None
        return await self._write(lambda tx: claim_next_job(tx, agent_id, free_map, defaults_map, now))

    async def apply_events(self, agent_id: str, events: list[JobEvent], now: int, *,
                           refused: dict[int, str] | None = None, request_id: str = "") -> EventsResponse:
        return await self._write(lambda tx: job_events.apply_event_batch(
            tx, agent_id, events, now, refused=refused, request_id=request_id))

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
        return await self._write(lambda tx: agent_lifecycle.mark_down(tx, agent_id, seen_before=seen_before, now=now))

    async def expire_leases(self, agent_id: str, *, seen_before: int, now: int) -> list[str]:
        return await self._write(lambda tx: agent_lifecycle.expire_leases(tx, agent_id, seen_before=seen_before,
                                                                          now=now))

    async def release_assignment(self, agent_id: str, job_id: str, epoch: int, now: int) -> str | None:
        return await self._write(lambda tx: agent_lifecycle.release_assignment(tx, agent_id, job_id, epoch, now))

    async def requeue_stale_assignments(self, *, assigned_before: int, now: int) -> list[tuple[str, str]]:
        return await self._write(lambda tx: agent_lifecycle.requeue_stale_assignments(
            tx, assigned_before=assigned_before, now=now))

    async def agent_goodbye(self, agent_id: str, now: int) -> list[str]:
        return await self._write(lambda tx: agent_lifecycle.goodbye(tx, agent_id, now))

    async def agent_orders(self, agent_id: str, running: list[RunningJob]) -> tuple[bool, list[str]] | None:
        def read(tx: Tx) -> tuple[bool, list[str]] | None:
            row = tx.execute("SELECT drain_requested FROM agents WHERE id = ? AND deleted_at IS NULL",
                             (agent_id,)).fetchone()
            if row is None:
                return None
            return bool(row["drain_requested"]), heartbeats.stop_orders(tx, agent_id, running)

        return await self._read_with(read)

    # --- administration -------------------------------------------------------------------
    async def delete_agent(self, workspace_id: str, agent_id: str, *, force: bool, now: int) -> DeleteOutcome:
        return await self._write(lambda tx: agent_lifecycle.delete_agent(tx, workspace_id, agent_id, force=force,
                                                                         now=now))


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
