"""SQLite store: WAL mode, numbered migrations, one writer thread with group commit.

Writes are closures queued to a single writer task. The writer takes every write that is
waiting, runs each inside its own savepoint of one transaction, commits once, and only then
wakes the callers: writes that arrive together share one ``fsync``, and a caller is never
answered before its row is durable. Point reads run on a separate read-only connection in
the event-loop thread: an indexed lookup costs microseconds, less than a hop to a thread.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

import trio

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
    IdempotencyConflict,
    JobFilter,
    JobRecord,
    LogChunk,
    TokenRecord,
)

T = TypeVar("T")

LOG_RETENTION_BYTES = 8 * 1024 * 1024
_CLAIM_SCAN_LIMIT = 256
ASSIGNMENT_GRACE_MS = 30_000


def _migrations() -> list[tuple[int, str]]:
    folder = resources.files("coordinator.store") / "migrations"
    found = []
    for entry in folder.iterdir():
        if entry.name.endswith(".sql"):
            found.append((int(entry.name.split("_", 1)[0]), entry.read_text()))
    return sorted(found)


def _connect(path: Path, *, readonly: bool = False) -> sqlite3.Connection:
    uri = f"file:{path}?mode=ro" if readonly else f"file:{path}"
    conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA busy_timeout = 5000")
    conn.execute("PRAGMA foreign_keys = ON")
    if not readonly:
        conn.execute("PRAGMA journal_mode = WAL")
        # FULL: a commit is on disk before the caller hears of it, even across power loss.
        conn.execute("PRAGMA synchronous = FULL")
    return conn


def migrate(conn: sqlite3.Connection) -> int:
    """Apply every migration newer than ``PRAGMA user_version``; return the new version."""
    current = conn.execute("PRAGMA user_version").fetchone()[0]
    for number, script in _migrations():
        if number <= current:
            continue
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in _split_sql(script):
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {number}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        current = number
    return int(current)


def _split_sql(script: str) -> Iterator[str]:
    buffer = ""
    for line in script.splitlines(keepends=True):
        if line.lstrip().startswith("--"):
            continue
        buffer += line
        if sqlite3.complete_statement(buffer):
            yield buffer.strip()
            buffer = ""
    if buffer.strip():
        yield buffer.strip()


@dataclass
class _Write:
    fn: Callable[[sqlite3.Connection], Any]
    done: trio.Event = field(default_factory=trio.Event)
    result: Any = None
    error: BaseException | None = None


class StoreClosed(Exception):
    """The store no longer accepts writes (shutdown)."""


def request_hash(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


class SqliteStore:
    """The default ``Store``. Create it with ``open_sqlite_store``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._writer_conn = _connect(path)
        migrate(self._writer_conn)
        self._reader = _connect(path)
        self._send, self._receive = trio.open_memory_channel[_Write](10_000)
        self.commits = 0  # group-commit figure for benchmarks

    # --- machinery ----------------------------------------------------------------------
    async def serve_writer(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        try:
            while True:
                batch = [await self._receive.receive()]
                while True:
                    try:
                        batch.append(self._receive.receive_nowait())
                    except trio.WouldBlock:
                        break
                await trio.to_thread.run_sync(self._commit_batch, batch)
                for item in batch:
                    item.done.set()
        finally:
            # Shutting down: fail whatever is still queued rather than leave callers waiting.
            while True:
                try:
                    item = self._receive.receive_nowait()
                except (trio.WouldBlock, trio.EndOfChannel):
                    break
                item.error = StoreClosed("the store is shutting down")
                item.done.set()
            self._receive.close()

    def _commit_batch(self, batch: list[_Write]) -> None:
        conn = self._writer_conn
        try:
            conn.execute("BEGIN IMMEDIATE")
            for item in batch:
                conn.execute("SAVEPOINT w")
                try:
                    item.result = item.fn(conn)
                except Exception as exc:
                    conn.execute("ROLLBACK TO w")
                    item.error = exc
                conn.execute("RELEASE w")
            conn.execute("COMMIT")
            self.commits += 1
        except Exception as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            for item in batch:
                item.error = exc

    async def _write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        item = _Write(fn)
        try:
            await self._send.send(item)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise StoreClosed("the store is shutting down") from exc
        # The write is already queued: finish waiting even if we are cancelled, so the
        # caller never returns while the transaction it asked for may still commit.
        with trio.CancelScope(shield=True):
            await item.done.wait()
        if item.error is not None:
            raise item.error
        return item.result  # type: ignore[no-any-return]

    def _read(self, sql: str, params: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        return self._reader.execute(sql, params).fetchall()

    def close(self) -> None:
        self._writer_conn.close()
        self._reader.close()

    async def ready(self) -> bool:
        try:
            self._read("SELECT 1")
        except sqlite3.Error:
            return False
        return True

    # --- identity -----------------------------------------------------------------------
    async def is_empty(self) -> bool:
        return not self._read("SELECT 1 FROM users LIMIT 1")

    async def bootstrap(self, *, user_id: str, email: str, workspace_id: str, workspace_name: str,
                        plan: str, tokens: list[TokenRecord], now: int) -> None:
        def write(conn: sqlite3.Connection) -> None:
            conn.execute("INSERT INTO users (id, email, created_at) VALUES (?, ?, ?)", (user_id, email, now))
            conn.execute(
                "INSERT INTO workspaces (id, name, plan, created_at) VALUES (?, ?, ?, ?)",
                (workspace_id, workspace_name, plan, now),
            )
            conn.execute(
                "INSERT INTO memberships (workspace_id, user_id, role, created_at) VALUES (?, ?, 'owner', ?)",
                (workspace_id, user_id, now),
            )
            for token in tokens:
                _insert_token(conn, token)

        await self._write(write)

    async def find_token(self, token_hash: str) -> TokenRecord | None:
        rows = self._read("SELECT * FROM tokens WHERE token_hash = ?", (token_hash,))
        return _token(rows[0]) if rows else None

    async def insert_token(self, token: TokenRecord) -> None:
        await self._write(lambda conn: _insert_token(conn, token))

    async def member_role(self, workspace_id: str, user_id: str) -> str | None:
        rows = self._read(
            "SELECT role FROM memberships WHERE workspace_id = ? AND user_id = ?", (workspace_id, user_id)
        )
        return str(rows[0]["role"]) if rows else None

    # --- jobs ---------------------------------------------------------------------------
    async def insert_job(self, job: JobRecord, *, idempotency_key: str | None = None,
                         request_hash: str | None = None, idempotency_window_ms: int = 0) -> JobRecord:
        def write(conn: sqlite3.Connection) -> JobRecord:
            if idempotency_key is not None:
                earlier = conn.execute(
                    "SELECT * FROM jobs WHERE workspace_id = ? AND idempotency_key = ?",
                    (job.workspace_id, idempotency_key),
                ).fetchone()
                if earlier is not None:
                    if earlier["created_at"] >= job.created_at - idempotency_window_ms:
                        if earlier["request_hash"] != request_hash:
                            raise IdempotencyConflict(idempotency_key)
                        return _job(earlier)
                    # The key has expired: release it for this new job.
                    conn.execute("UPDATE jobs SET idempotency_key = NULL WHERE id = ?", (earlier["id"],))
            conn.execute(
                """INSERT INTO jobs (id, workspace_id, state, type, command, name, labels, resources, env,
                                     timeout_seconds, created_at, idempotency_key, request_hash)
                   VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
                (job.id, job.workspace_id, job.state.value, job.type, job.command, job.name,
                 json.dumps(job.labels), _dumps_or_none(job.resources), json.dumps(job.env),
                 job.timeout_seconds, job.created_at, idempotency_key, request_hash),
            )
            return job

        return await self._write(write)

    async def get_job(self, workspace_id: str, job_id: str) -> JobRecord | None:
        rows = self._read("SELECT * FROM jobs WHERE id = ? AND workspace_id = ?", (job_id, workspace_id))
        return _job(rows[0]) if rows else None

    async def list_jobs(self, workspace_id: str, filters: JobFilter, *, limit: int,
                        before_id: str | None) -> list[JobRecord]:
        where = ["workspace_id = ?"]
        params: list[Any] = [workspace_id]
        if filters.states:
            where.append(f"state IN ({', '.join('?' for _ in filters.states)})")
            params.extend(state.value for state in filters.states)
        for key, value in filters.labels:
            where.append("json_extract(labels, ?) = ?")
            params.extend((f'$."{key}"', value))
        if filters.created_after is not None:
            where.append("created_at > ?")
            params.append(filters.created_after)
        if filters.created_before is not None:
            where.append("created_at < ?")
            params.append(filters.created_before)
        if before_id is not None:
            where.append("id < ?")
            params.append(before_id)
        params.append(limit)
        sql = f"SELECT * FROM jobs WHERE {' AND '.join(where)} ORDER BY id DESC LIMIT ?"
        return [_job(row) for row in self._read(sql, tuple(params))]

    async def cancel_job(self, workspace_id: str, job_id: str, now: int) -> JobRecord | None:
        def write(conn: sqlite3.Connection) -> JobRecord | None:
            row = conn.execute(
                "SELECT * FROM jobs WHERE id = ? AND workspace_id = ?", (job_id, workspace_id)
            ).fetchone()
            if row is None:
                return None
            state = JobState(row["state"])
            if state in (JobState.QUEUED, JobState.ASSIGNED):
                conn.execute(
                    "UPDATE jobs SET state = 'CANCELLED', finished_at = ?, reason = 'cancelled' WHERE id = ?",
                    (now, job_id),
                )
            elif state == JobState.RUNNING:
                conn.execute("UPDATE jobs SET cancel_requested = 1 WHERE id = ?", (job_id,))
            return _job(conn.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone())

        return await self._write(write)

    async def read_log(self, workspace_id: str, job_id: str, offset: int) -> list[LogChunk]:
        rows = self._read(
            """SELECT l.offset, l.data FROM job_logs l JOIN jobs j ON j.id = l.job_id
               WHERE l.job_id = ? AND j.workspace_id = ? AND l.offset + length(l.data) > ?
               ORDER BY l.offset""",
            (job_id, workspace_id, offset),
        )
        chunks = [LogChunk(row["offset"], bytes(row["data"])) for row in rows]
        if chunks and chunks[0].offset < offset:
            first = chunks[0]
            chunks[0] = LogChunk(offset, first.data[offset - first.offset:])
        return chunks

    # --- agents -------------------------------------------------------------------------
    async def register_agent(self, agent: AgentRecord, token: TokenRecord) -> None:
        def write(conn: sqlite3.Connection) -> None:
            conn.execute(
                """INSERT INTO agents (id, workspace_id, name, state, labels, capacity, version,
                                       registered_at, last_heartbeat_at)
                   VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)""",
                (agent.id, agent.workspace_id, agent.name, agent.state.value, json.dumps(agent.labels),
                 json.dumps(agent.capacity), agent.version, agent.registered_at, agent.last_heartbeat_at),
            )
            _insert_token(conn, token)

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
            labels = json.loads(agent["labels"])
            rows = conn.execute(
                """SELECT * FROM jobs WHERE workspace_id = ? AND state = 'QUEUED'
                   ORDER BY created_at, id LIMIT ?""",
                (agent["workspace_id"], _CLAIM_SCAN_LIMIT),
            ).fetchall()
            chosen = scheduler.choose_job(
                rows,
                selector_of=lambda row: json.loads(row["labels"]),
                resources_of=lambda row: _loads_or_none(row["resources"]),
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
            demand = scheduler.effective_demand(_loads_or_none(chosen["resources"]), defaults_map)
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


def _insert_token(conn: sqlite3.Connection, token: TokenRecord) -> None:
    conn.execute(
        """INSERT INTO tokens (id, kind, token_hash, workspace_id, user_id, agent_id, name, created_at,
                               expires_at, revoked_at)
           VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
        (token.id, token.kind, token.token_hash, token.workspace_id, token.user_id, token.agent_id,
         token.name, token.created_at, token.expires_at, token.revoked_at),
    )


def _dumps_or_none(value: Any) -> str | None:
    return None if value is None else json.dumps(value)


def _loads_or_none(text: str | None) -> Any:
    return None if text is None else json.loads(text)


def _token(row: sqlite3.Row) -> TokenRecord:
    return TokenRecord(
        id=row["id"], kind=row["kind"], token_hash=row["token_hash"], workspace_id=row["workspace_id"],
        user_id=row["user_id"], agent_id=row["agent_id"], name=row["name"], created_at=row["created_at"],
        expires_at=row["expires_at"], revoked_at=row["revoked_at"],
    )


def _job(row: sqlite3.Row) -> JobRecord:
    return JobRecord(
        id=row["id"], workspace_id=row["workspace_id"], state=JobState(row["state"]), type=row["type"],
        command=row["command"], name=row["name"], labels=json.loads(row["labels"]),
        resources=_loads_or_none(row["resources"]), env=json.loads(row["env"]),
        timeout_seconds=row["timeout_seconds"], created_at=row["created_at"], started_at=row["started_at"],
        finished_at=row["finished_at"], exit_code=row["exit_code"], runtime_ms=row["runtime_ms"],
        agent_id=row["agent_id"], epoch=row["epoch"], reason=row["reason"], cpu_seconds=row["cpu_seconds"],
        gpu_seconds=row["gpu_seconds"], gb_seconds=row["gb_seconds"],
        cancel_requested=bool(row["cancel_requested"]), log_size=row["log_size"],
    )


def _agent(row: sqlite3.Row, current_jobs: list[str]) -> AgentRecord:
    return AgentRecord(
        id=row["id"], workspace_id=row["workspace_id"], name=row["name"], state=AgentState(row["state"]),
        labels=json.loads(row["labels"]), capacity=json.loads(row["capacity"]), version=row["version"],
        registered_at=row["registered_at"], last_heartbeat_at=row["last_heartbeat_at"],
        drain_requested=bool(row["drain_requested"]), current_jobs=current_jobs,
    )


@asynccontextmanager
async def open_sqlite_store(path: Path) -> AsyncIterator[SqliteStore]:
    """Open (creating and migrating) the store at ``path`` and run its writer until exit."""
    store = SqliteStore(path)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(store.serve_writer)
            yield store
            nursery.cancel_scope.cancel()
    finally:
        store.close()


@contextmanager
def open_sync_connection(path: Path) -> Iterator[sqlite3.Connection]:
    """A plain connection for offline tools (``init``), migrated first."""
    conn = _connect(path)
    try:
        migrate(conn)
        yield conn
    finally:
        conn.close()
