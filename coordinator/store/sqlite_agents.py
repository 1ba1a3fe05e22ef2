"""SQLite queries for agents and the agent protocol (claims, heartbeats, events)."""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from common.clock import parse_rfc3339, to_millis
from common.protocol import (
    Assignment,
    CapacityMsg,
    EventsResponse,
    FinishedEvent,
    HeartbeatRequest,
    JobEvent,
    LogEvent,
    Rejection,
    StartedEvent,
    UsageEvent,
)
from common.states import AgentState, JobState, agent_state_after_heartbeat, can_transition
from coordinator import scheduler
from coordinator.store.base import (
    AgentRecord,
    TokenRecord,
)
from coordinator.store.sqlite_billing import record_usage, workspace_held
from coordinator.store.sqlite_core import SqliteCore, loads_or_none
from coordinator.store.sqlite_identity import insert_token_row
from coordinator.store.sqlite_jobs import LOG_RETENTION_BYTES
from coordinator.store.sqlite_webhooks import enqueue_job_event

_CLAIM_SCAN_LIMIT = 256
ASSIGNMENT_GRACE_MS = 10_000


class AgentQueries(SqliteCore):
    async def register_agent(self, agent: AgentRecord, token: TokenRecord) -> None:
        def write(conn: sqlite3.Connection) -> None:
            conn.execute(
                """INSERT INTO agents (id, workspace_id, name, state, labels, capacity, version,
                                       registered_at, last_heartbeat_at)
                   VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)""",
                (agent.id, agent.workspace_id, agent.name, agent.state.value, json.dumps(agent.labels),
                 json.dumps(agent.capacity), agent.version, agent.registered_at, agent.last_heartbeat_at),
            )
            insert_token_row(conn, token)

        await self._write(write)

    async def get_agent(self, workspace_id: str, agent_id: str) -> AgentRecord | None:
        rows = self._read(
            "SELECT * FROM agents WHERE id = ? AND workspace_id = ? AND deleted_at IS NULL",
            (agent_id, workspace_id),
        )
        return self._agent_with_jobs(rows[0]) if rows else None

    async def list_agents(self, workspace_id: str, *, limit: int, before_id: str | None) -> list[AgentRecord]:
        params: tuple[Any, ...] = (workspace_id, before_id or "\uffff", limit)
        rows = self._read(
            """SELECT * FROM agents WHERE workspace_id = ? AND deleted_at IS NULL AND id < ?
               ORDER BY id DESC LIMIT ?""",
            params,
        )
        return [self._agent_with_jobs(row) for row in rows]

    def _agent_with_jobs(self, row: sqlite3.Row) -> AgentRecord:
        jobs = self._read(
            "SELECT id FROM jobs WHERE agent_id = ? AND state IN ('ASSIGNED', 'RUNNING') ORDER BY id",
            (row["id"],),
        )
        return _agent(row, [job["id"] for job in jobs])

    async def record_heartbeat(self, agent_id: str, beat: HeartbeatRequest, now: int) -> tuple[bool, list[str]]:
        def write(conn: sqlite3.Connection) -> tuple[bool, list[str]]:
            agent = conn.execute("SELECT * FROM agents WHERE id = ?", (agent_id,)).fetchone()
            drain = bool(agent["drain_requested"])
            state = agent_state_after_heartbeat(drain, len(beat.runningJobs))
            updates = ["state = ?", "last_heartbeat_at = ?"]
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
            conn.execute(f"UPDATE agents SET {', '.join(updates)} WHERE id = ?", (*params, agent_id))
            stop: list[str] = []
            for running in beat.runningJobs:
                job = conn.execute(
                    "SELECT state, agent_id, epoch, cancel_requested FROM jobs WHERE id = ?", (running.jobId,)
                ).fetchone()
                if (job is None or job["agent_id"] != agent_id or job["epoch"] != running.epoch
                        or job["cancel_requested"] or JobState(job["state"]).is_terminal):
                    stop.append(running.jobId)
            # A claim whose answer never reached the agent (its connection dropped) leaves a
            # job ASSIGNED to an agent that does not know it: hand it back after a grace.
            reported = {running.jobId for running in beat.runningJobs}
            forgotten = conn.execute(
                "SELECT id FROM jobs WHERE agent_id = ? AND state = 'ASSIGNED' AND assigned_at < ?",
                (agent_id, now - ASSIGNMENT_GRACE_MS),
            ).fetchall()
            for row in forgotten:
                if row["id"] not in reported:
                    conn.execute(
                        "UPDATE jobs SET state = 'QUEUED', agent_id = NULL WHERE id = ? AND state = 'ASSIGNED'",
                        (row["id"],),
                    )
                    enqueue_job_event(conn, row["id"], "job.transitioned", now)
            return drain, stop

        return await self._write(write)

    async def set_agent_drain(self, workspace_id: str, agent_id: str, drain: bool) -> AgentRecord | None:
        def write(conn: sqlite3.Connection) -> bool:
            row = conn.execute(
                "SELECT state FROM agents WHERE id = ? AND workspace_id = ? AND deleted_at IS NULL",
                (agent_id, workspace_id),
            ).fetchone()
            if row is None:
                return False
            running = conn.execute(
                "SELECT COUNT(*) FROM jobs WHERE agent_id = ? AND state IN ('ASSIGNED', 'RUNNING')", (agent_id,)
            ).fetchone()[0]
            state = AgentState(row["state"])
            if state != AgentState.DOWN:
                state = agent_state_after_heartbeat(drain, running)
            conn.execute(
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

        def write(conn: sqlite3.Connection) -> Assignment | None:
            agent = conn.execute(
                "SELECT * FROM agents WHERE id = ? AND deleted_at IS NULL", (agent_id,)
            ).fetchone()
            if agent is None or agent["drain_requested"] or agent["state"] != AgentState.READY.value:
                return None
            if workspace_held(conn, agent["workspace_id"]):
                return None
            labels = json.loads(agent["labels"])
            rows = conn.execute(
                """SELECT * FROM jobs WHERE workspace_id = ? AND state = 'QUEUED'
                   ORDER BY created_at, id LIMIT ?""",
                (agent["workspace_id"], _CLAIM_SCAN_LIMIT),
            ).fetchall()
            chosen = scheduler.choose_job(
                rows,
                selector_of=lambda row: json.loads(row["labels"]),
                resources_of=lambda row: loads_or_none(row["resources"]),
                agent_labels=labels,
                free=free_map,
                defaults=defaults_map,
            )
            if chosen is None:
                return None
            epoch = chosen["epoch"] + 1
            conn.execute(
                """UPDATE jobs SET state = 'ASSIGNED', agent_id = ?, epoch = ?, assigned_at = ?
                   WHERE id = ? AND state = 'QUEUED'""",
                (agent_id, epoch, now, chosen["id"]),
            )
            enqueue_job_event(conn, chosen["id"], "job.transitioned", now)
            demand = scheduler.effective_demand(loads_or_none(chosen["resources"]), defaults_map)
            return Assignment(
                jobId=chosen["id"], epoch=epoch, command=chosen["command"], env=json.loads(chosen["env"]),
                timeoutSeconds=chosen["timeout_seconds"], cpus=demand.cpus or None,
                memoryMb=demand.memory_mb or None, gpus=demand.gpus, name=chosen["name"],
            )

        return await self._write(write)

    async def apply_events(self, agent_id: str, events: list[JobEvent], now: int) -> EventsResponse:
        def write(conn: sqlite3.Connection) -> EventsResponse:
            agent = conn.execute("SELECT workspace_id, last_seq FROM agents WHERE id = ?", (agent_id,)).fetchone()
            last_seq = int(agent["last_seq"])
            rejected: list[Rejection] = []
            for event in sorted(events, key=lambda e: e.seq):
                if event.seq <= last_seq:
                    continue
                problem = _apply_event(conn, agent_id, agent["workspace_id"], event, now)
                if problem is not None:
                    rejected.append(Rejection(seq=event.seq, code=problem))
                last_seq = event.seq
            conn.execute("UPDATE agents SET last_seq = ? WHERE id = ?", (last_seq, agent_id))
            return EventsResponse(appliedThrough=last_seq, rejected=rejected)

        return await self._write(write)


def _apply_event(conn: sqlite3.Connection, agent_id: str, workspace_id: str, event: JobEvent, now: int) -> str | None:
    """Apply one job event inside the caller's transaction; return a rejection code or None."""
    job = conn.execute(
        "SELECT * FROM jobs WHERE id = ? AND workspace_id = ?", (event.jobId, workspace_id)
    ).fetchone()
    if job is None:
        return "unknown_job"
    if job["agent_id"] != agent_id or job["epoch"] != event.epoch:
        return "stale_epoch"
    state = JobState(job["state"])
    if isinstance(event, LogEvent):
        _append_log(conn, event.jobId, int(job["log_size"]), event.data.encode())
        return None
    if isinstance(event, UsageEvent):
        record_usage(conn, agent_id, workspace_id, job, event, now)
        conn.execute(
            "UPDATE jobs SET cpu_seconds = ?, gb_seconds = ?, gpu_seconds = ? WHERE id = ?",
            (event.cpuSeconds, event.gbSeconds, event.gpuSeconds, event.jobId),
        )
        return None
    if isinstance(event, StartedEvent):
        if not can_transition(state, JobState.RUNNING):
            return "invalid_transition"
        conn.execute(
            "UPDATE jobs SET state = 'RUNNING', started_at = ? WHERE id = ?",
            (to_millis(parse_rfc3339(event.at)), event.jobId),
        )
        enqueue_job_event(conn, event.jobId, "job.transitioned", now)
        return None
    assert isinstance(event, FinishedEvent)
    if not can_transition(state, event.state):
        return "invalid_transition"
    finished_at = to_millis(parse_rfc3339(event.at))
    conn.execute(
        """UPDATE jobs SET state = ?, finished_at = ?, exit_code = ?, runtime_ms = ?, reason = ?,
                           started_at = COALESCE(started_at, ?)
           WHERE id = ?""",
        (event.state.value, finished_at, event.exitCode, event.runtimeMs, event.reason,
         finished_at - event.runtimeMs, event.jobId),
    )
    enqueue_job_event(conn, event.jobId, "job.transitioned", now)
    return None


def _append_log(conn: sqlite3.Connection, job_id: str, size: int, data: bytes) -> None:
    if not data:
        return
    conn.execute("INSERT INTO job_logs (job_id, offset, data) VALUES (?, ?, ?)", (job_id, size, data))
    new_size = size + len(data)
    conn.execute("UPDATE jobs SET log_size = ? WHERE id = ?", (new_size, job_id))
    # Keep at least the last LOG_RETENTION_BYTES: drop only chunks wholly older than that.
    conn.execute(
        "DELETE FROM job_logs WHERE job_id = ? AND offset + length(data) <= ?",
        (job_id, new_size - LOG_RETENTION_BYTES),
    )


def _agent(row: sqlite3.Row, current_jobs: list[str]) -> AgentRecord:
    return AgentRecord(
        id=row["id"], workspace_id=row["workspace_id"], name=row["name"], state=AgentState(row["state"]),
        labels=json.loads(row["labels"]), capacity=json.loads(row["capacity"]), version=row["version"],
        registered_at=row["registered_at"], last_heartbeat_at=row["last_heartbeat_at"],
        drain_requested=bool(row["drain_requested"]), current_jobs=current_jobs,
    )
