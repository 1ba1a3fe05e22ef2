"""Queries for agents and the agent protocol (claims, heartbeats, events).

What a heartbeat changes is decided in ``coordinator.services.heartbeats``, what a job event
changes in ``coordinator.services.job_events``, what becomes of an agent's jobs when it drains,
goes silent, leaves or is deleted in ``coordinator.services.agent_lifecycle``, which job a
claim gets in ``coordinator.services.claims``; their SQL is in ``coordinator.store.repo.agents``
and ``coordinator.store.repo.claims``.
"""

from __future__ import annotations

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
)
from coordinator.services import agent_lifecycle, claims, heartbeats, job_events
from coordinator.services.claims import best_claimable, claim_next_job, claimable_heads
from coordinator.services.job_events import apply_event_batch
from coordinator.store.base import (
    AgentPulse,
    AgentRecord,
    DeleteOutcome,
    HeartbeatAnswer,
    TokenRecord,
)
from coordinator.store.beats import BeatBuffer, flush_beats
from coordinator.store.db import Row, Tx
from coordinator.store.queries.identity import insert_token_row
from coordinator.store.repo.claims import CLAIM_LOOK_SQL
from coordinator.store.sqlite_core import SqliteCore

# Re-exported: callers that drive the claim and event rules directly import them here.
__all__ = ["AgentQueries", "apply_event_batch", "best_claimable", "claim_next_job", "claimable_heads"]

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
        beats = self.beat_buffer

        def read(tx: Tx) -> AgentRecord | None:
            row = tx.execute(
                "SELECT * FROM agents WHERE id = ? AND workspace_id = ? AND deleted_at IS NULL",
                (agent_id, workspace_id),
            ).fetchone()
            return _agent_with_jobs(tx, row, beats) if row is not None else None

        return await self._read_with(read)

    async def claimant(self, workspace_id: str, agent_id: str) -> tuple[dict[str, str], bool] | None:
        return await self._read_with(lambda tx: claims.claimant(tx, workspace_id, agent_id))

    async def claim_look(self, workspace_id: str, agent_id: str) -> tuple[dict[str, str], bool, bool] | None:
        rows = await self._read(CLAIM_LOOK_SQL, (workspace_id, agent_id, workspace_id))
        return claims.claim_look(rows[0] if rows else None)

    async def list_agents(self, workspace_id: str, *, limit: int, before_id: str | None) -> list[AgentRecord]:
        params: tuple[Any, ...] = (workspace_id, before_id or "\uffff", limit)
        beats = self.beat_buffer

        def read(tx: Tx) -> list[AgentRecord]:
            rows = tx.execute(
                """SELECT * FROM agents WHERE workspace_id = ? AND deleted_at IS NULL AND id < ?
                   ORDER BY id DESC LIMIT ?""",
                params,
            ).fetchall()
            return [_agent_with_jobs(tx, row, beats) for row in rows]

        return await self._read_with(read)

    @property
    def beat_buffer(self) -> BeatBuffer:
        """Beats that changed nothing, not yet flushed (coordinator/store/beats.py)."""
        buffer = self.__dict__.get("_beat_buffer")
        if buffer is None:
            buffer = self.__dict__["_beat_buffer"] = BeatBuffer()
        return buffer

    async def record_heartbeat(self, agent_id: str, beat: HeartbeatRequest, now: int) -> HeartbeatAnswer:
        # Buffered before the look, so a liveness pass that flushes from now on counts this beat.
        self.beat_buffer.heard(agent_id, now)
        quiet = await self._read_with(lambda tx: heartbeats.quiet_beat(tx, agent_id, beat))
        if quiet is not None:
            return HeartbeatAnswer(*quiet, written=False)
        drain, stop = await self._write(lambda tx: heartbeats.record_heartbeat(tx, agent_id, beat, now))
        return HeartbeatAnswer(drain, stop, written=True)

    async def flush_heartbeats(self) -> int:
        """Write the buffered beats in one transaction; the number of agents whose last-seen
        time moved. On failure they stay buffered for the next flush."""
        taken = self.beat_buffer.take()
        if not taken:
            return 0
        try:
            return await self._write(lambda tx: flush_beats(tx, taken))
        except BaseException:
            self.beat_buffer.restore(taken)
            raise

    async def set_agent_drain(self, workspace_id: str, agent_id: str, drain: bool) -> AgentRecord | None:
        if not await self._write(lambda tx: agent_lifecycle.set_drain(tx, workspace_id, agent_id, drain)):
            return None
        return await self.get_agent(workspace_id, agent_id)

    async def claim_job(self, agent_id: str, free: CapacityMsg, defaults: CapacityMsg | None,
                        now: int) -> Assignment | None:
        free_map = free.model_dump()
        defaults_map = defaults.model_dump() if defaults else None
        return await self._write(lambda tx: claims.claim_next_job(tx, agent_id, free_map, defaults_map, now))

    async def apply_events(self, agent_id: str, events: list[JobEvent], now: int, *,
                           refused: dict[int, str] | None = None, request_id: str = "") -> EventsResponse:
        return await job_events.apply_events_isolated(self._write, agent_id, events, now, refused=refused,
                                                      request_id=request_id)

    # --- liveness -------------------------------------------------------------------------
    async def agent_pulses(self, *, silent_before: int | None = None) -> list[AgentPulse]:
        if silent_before is None:
            rows = await self._read(
                """SELECT a.id, a.state, a.registered_at, a.last_heartbeat_at,
                          (SELECT COUNT(*) FROM jobs j WHERE j.agent_id = a.id
                                                         AND j.state IN ('ASSIGNED', 'RUNNING')) AS active
                   FROM agents a WHERE a.deleted_at IS NULL"""
            )
        else:
            # Only the silent ones, and of those DOWN only the ones still holding jobs: with a
            # fleet that beats, none, where counting every agent's jobs each second cost 16 ms
            # of CPU at 5,000 agents (docs/performance.md).
            rows = await self._read(
                """SELECT a.id, a.state, a.registered_at, a.last_heartbeat_at,
                          (SELECT COUNT(*) FROM jobs j WHERE j.agent_id = a.id
                                                         AND j.state IN ('ASSIGNED', 'RUNNING')) AS active
                   FROM agents a
                   WHERE a.deleted_at IS NULL AND COALESCE(a.last_heartbeat_at, a.registered_at) < ?
                     AND (a.state != 'DOWN' OR EXISTS (SELECT 1 FROM jobs j WHERE j.agent_id = a.id
                                                       AND j.state IN ('ASSIGNED', 'RUNNING')))""",
                (silent_before,),
            )
        return [AgentPulse(agent_id=row["id"], state=AgentState(row["state"]), registered_at=row["registered_at"],
                           last_heartbeat_at=row["last_heartbeat_at"], active_jobs=row["active"]) for row in rows]

    async def live_agent_count(self) -> int:
        rows = await self._read("SELECT COUNT(*) FROM agents WHERE deleted_at IS NULL AND state != 'DOWN'")
        return int(rows[0][0])

    def _heard_since(self, agent_id: str, since: int) -> bool:
        """This replica buffered a beat of the agent at or after ``since``: it is not silent
        since then, whatever the database says yet (the write re-checks the flushed time)."""
        heard = self.beat_buffer.last_heard(agent_id)
        return heard is not None and heard >= since

    async def mark_agent_down(self, agent_id: str, *, seen_before: int, now: int) -> bool:
        if self._heard_since(agent_id, seen_before):
            return False
        return await self._write(lambda tx: agent_lifecycle.mark_down(tx, agent_id, seen_before=seen_before, now=now))

    async def expire_leases(self, agent_id: str, *, seen_before: int, now: int) -> list[str]:
        if self._heard_since(agent_id, seen_before):
            return []
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


def _agent_with_jobs(tx: Tx, row: Row, beats: BeatBuffer) -> AgentRecord:
    jobs = tx.execute(
        "SELECT id FROM jobs WHERE agent_id = ? AND state IN ('ASSIGNED', 'RUNNING') ORDER BY id",
        (row["id"],),
    ).fetchall()
    return _agent(row, [job["id"] for job in jobs], beats.last_heard(row["id"]))


def _newest(flushed: int | None, heard: int | None) -> int | None:
    """The agent's last heartbeat as shown: a buffered beat not yet flushed counts."""
    if heard is None:
        return flushed
    return heard if flushed is None else max(flushed, heard)


def _agent(row: Row, current_jobs: list[str], heard: int | None = None) -> AgentRecord:
    return AgentRecord(
        id=row["id"], workspace_id=row["workspace_id"], name=row["name"], state=AgentState(row["state"]),
        labels=json.loads(row["labels"]), capacity=json.loads(row["capacity"]), version=row["version"],
        registered_at=row["registered_at"], last_heartbeat_at=_newest(row["last_heartbeat_at"], heard),
        drain_requested=bool(row["drain_requested"]), current_jobs=current_jobs,
    )
