"""The store interface: every query is scoped to a workspace, every write is one transaction.

Times are integer milliseconds since the epoch (UTC). Implementations must make a write
durable before its coroutine returns: a handler that answers ``201`` after ``insert_job``
returns has a row that survives the process being killed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from common.protocol import Assignment, CapacityMsg, EventsResponse, HeartbeatRequest, JobEvent
from common.states import AgentState, JobState
from coordinator.store.base_billing import BillingStore, WebhookStore


class IdempotencyConflict(Exception):
    """The idempotency key was used before with a different request body."""


@dataclass(frozen=True)
class TokenRecord:
    id: str
    kind: str
    token_hash: str
    workspace_id: str
    user_id: str | None
    agent_id: str | None
    name: str
    created_at: int
    expires_at: int | None = None
    revoked_at: int | None = None


@dataclass(frozen=True)
class JobRecord:
    id: str
    workspace_id: str
    state: JobState
    command: str
    name: str | None
    labels: dict[str, str]
    resources: dict[str, Any] | None
    env: dict[str, str]
    timeout_seconds: int
    created_at: int
    type: str = "COMMAND"
    started_at: int | None = None
    finished_at: int | None = None
    exit_code: int | None = None
    runtime_ms: int | None = None
    agent_id: str | None = None
    epoch: int = 0
    reason: str | None = None
    cpu_seconds: float | None = None
    gpu_seconds: float | None = None
    gb_seconds: float | None = None
    cancel_requested: bool = False
    log_size: int = 0


@dataclass(frozen=True)
class AgentRecord:
    id: str
    workspace_id: str
    name: str
    state: AgentState
    labels: dict[str, str]
    capacity: dict[str, Any]
    version: str
    registered_at: int
    last_heartbeat_at: int | None = None
    drain_requested: bool = False
    current_jobs: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class JobFilter:
    states: tuple[JobState, ...] = ()
    labels: tuple[tuple[str, str], ...] = ()
    created_after: int | None = None
    created_before: int | None = None


@dataclass(frozen=True)
class LogChunk:
    offset: int
    data: bytes


class Store(BillingStore, WebhookStore, Protocol):
    # --- identity ---------------------------------------------------------------------
    async def is_empty(self) -> bool:
        """True until the first owner has been created."""
        ...

    async def bootstrap(self, *, user_id: str, email: str, workspace_id: str, workspace_name: str,
                        plan: str, tokens: list[TokenRecord], now: int) -> None:
        """Create the first owner, their workspace and initial tokens in one transaction."""
        ...

    async def find_token(self, token_hash: str) -> TokenRecord | None: ...

    async def insert_token(self, token: TokenRecord) -> None: ...

    async def member_role(self, workspace_id: str, user_id: str) -> str | None: ...

    # --- jobs -------------------------------------------------------------------------
    async def insert_job(self, job: JobRecord, *, idempotency_key: str | None = None,
                         request_hash: str | None = None, idempotency_window_ms: int = 0) -> JobRecord:
        """Store a new job; with an idempotency key already used for the same body inside
        the window, return that earlier job instead. Raises ``IdempotencyConflict``."""
        ...

    async def get_job(self, workspace_id: str, job_id: str) -> JobRecord | None: ...

    async def list_jobs(self, workspace_id: str, filters: JobFilter, *, limit: int,
                        before_id: str | None) -> list[JobRecord]:
        """Newest first; at most ``limit`` jobs with ids below ``before_id``."""
        ...

    async def cancel_job(self, workspace_id: str, job_id: str, now: int) -> JobRecord | None:
        """Cancel at once if not yet running; flag a running job for its agent to stop."""
        ...

    async def read_log(self, workspace_id: str, job_id: str, offset: int) -> list[LogChunk]:
        """Retained log chunks covering bytes from ``offset`` on, in order."""
        ...

    # --- agents -----------------------------------------------------------------------
    async def register_agent(self, agent: AgentRecord, token: TokenRecord) -> None: ...

    async def get_agent(self, workspace_id: str, agent_id: str) -> AgentRecord | None: ...

    async def list_agents(self, workspace_id: str, *, limit: int, before_id: str | None) -> list[AgentRecord]: ...

    async def set_agent_drain(self, workspace_id: str, agent_id: str, drain: bool) -> AgentRecord | None:
        """Set or clear the drain flag; the agent learns of it at its next heartbeat."""
        ...

    async def record_heartbeat(self, agent_id: str, beat: HeartbeatRequest, now: int) -> tuple[bool, list[str]]:
        """Record liveness; return (drain requested, ids of jobs the agent must stop)."""
        ...

    async def claim_job(self, agent_id: str, free: CapacityMsg, defaults: CapacityMsg | None,
                        now: int) -> Assignment | None:
        """Assign the oldest queued job that fits, to exactly one claimant, with a new epoch."""
        ...

    async def apply_events(self, agent_id: str, events: list[JobEvent], now: int) -> EventsResponse:
        """Apply events with sequence numbers above the agent's last applied one, in order."""
        ...

    async def ready(self) -> bool: ...
