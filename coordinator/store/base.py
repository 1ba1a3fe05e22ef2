"""The store interface: every query is scoped to a workspace, every write is one transaction.

Times are integer milliseconds since the epoch (UTC). Implementations must make a write
durable before its coroutine returns: a handler that answers ``201`` after ``insert_job``
returns has a row that survives the process being killed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Protocol

from common.protocol import Assignment, CapacityMsg, EventsResponse, HeartbeatRequest, JobEvent, RunningJob
from common.states import AgentState, JobState
from coordinator.scheduler import AgentSnapshot
from coordinator.store.base_billing import BillingStore, WebhookStore
from coordinator.store.base_cluster import ClusterStore
from coordinator.store.errors import IdempotencyConflict as IdempotencyConflict  # re-exported: the store's errors
from coordinator.store.errors import MembershipConflict as MembershipConflict

if TYPE_CHECKING:
    from coordinator.services.retention import Pruned, RetentionPolicy


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
    family_id: str | None = None
    parent_id: str | None = None
    created_by: str | None = None
    # The invitation whose redemption began this login; None for the user's own login. It then
    # reaches only memberships with the same ``invitation_id`` (``auth.reaches``).
    invitation_id: str | None = None


@dataclass(frozen=True)
class WorkspaceRecord:
    id: str
    name: str
    plan: str
    default_region: str | None
    created_at: int
    role: str | None = None  # the caller's role, when read through a membership
    max_member_priority: int = 50  # the highest job priority a member may submit


@dataclass(frozen=True)
class Membership:
    workspace_id: str
    user_id: str
    role: str
    plan: str
    # The invitation that made this membership (for a new or an existing account), or that the
    # login which created the workspace came from: the only invitation-derived logins that reach
    # it (``auth.reaches``). None: the user's own logins only (an owner at initialisation, an
    # existing account added before migration 0080 issued it a code).
    invitation_id: str | None = None


@dataclass(frozen=True)
class MemberRecord:
    workspace_id: str
    user_id: str
    email: str
    role: str
    created_at: int
    invited: bool = False  # an invitation is still unredeemed


@dataclass(frozen=True)
class InvitationRecord:
    id: str
    workspace_id: str
    user_id: str
    code_hash: str
    role: str
    created_by: str | None
    created_at: int
    expires_at: int
    redeemed_at: int | None = None
    revoked_at: int | None = None


@dataclass(frozen=True)
class AuditRecord:
    id: str
    workspace_id: str | None
    at: int
    actor: str | None
    action: str
    target: str | None
    result: str
    status: int
    error_code: str | None
    request_id: str
    source: str | None
    method: str
    path: str
    seq: int = 0


@dataclass(frozen=True)
class AuditFilter:
    since: int | None = None
    until: int | None = None
    actions: tuple[str, ...] = ()
    actor: str | None = None


@dataclass(frozen=True)
class AttemptRecord:
    """One attempt at a job: one claim by one agent under one epoch, and what it used.

    ``state`` is where the attempt left the job: ASSIGNED or RUNNING while it goes on, the
    result (or LOST) when it ended, QUEUED when it was handed back for another attempt."""

    epoch: int
    agent_id: str
    assigned_at: int
    state: JobState
    started_at: int | None = None
    finished_at: int | None = None
    exit_code: int | None = None
    reason: str | None = None
    cpu_seconds: float = 0.0
    gpu_seconds: float = 0.0
    gb_seconds: float = 0.0
    gpu_memory_gb_seconds: float | None = None
    gpu_util_seconds: float | None = None
    gpu_model: str | None = None


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
    signal: str | None = None
    cpu_seconds: float | None = None
    gpu_seconds: float | None = None
    gb_seconds: float | None = None
    cancel_requested: bool = False
    log_size: int = 0
    attempts: list[AttemptRecord] = field(default_factory=list)  # oldest first
    priority: int = 50  # 0-100, higher claimed first (issue 16)
    # Retries and dependencies (issue 16): the policy as submitted (``RetryPolicy.as_dict``),
    # when a retried job becomes claimable, its dependencies (job id, condition) and how many
    # of them are still pending.
    retry: dict[str, Any] | None = None
    not_before: int | None = None
    depends_on: list[tuple[str, str]] = field(default_factory=list)
    dependencies_pending: int = 0
    array_id: str | None = None  # the job array it is a task of (issue 16)
    array_index: int | None = None
    submitted_by: str | None = None  # a user id, else the submitting token's id: fair share is per submitter


@dataclass(frozen=True)
class ArrayRecord:
    """A job array (issue 16): ``count`` tasks sharing one manifest, at most ``max_parallel``
    (None: no limit) of them ASSIGNED or RUNNING; ``summary`` counts its tasks by state."""

    id: str
    workspace_id: str
    count: int
    max_parallel: int | None
    created_at: int
    name: str | None = None
    submitted_by: str | None = None
    summary: dict[JobState, int] = field(default_factory=dict)


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
    array_id: str | None = None


@dataclass(frozen=True)
class LogChunk:
    offset: int
    data: bytes


@dataclass(frozen=True)
class AgentPulse:
    """What the liveness loop needs to know about one (not deleted) agent."""

    agent_id: str
    state: AgentState
    registered_at: int
    last_heartbeat_at: int | None
    active_jobs: int


class HeartbeatAnswer(tuple[bool, list[str]]):
    """(drain requested, ids of jobs the agent must stop), as a plain pair; ``written`` says
    whether the beat changed anything stored (False: only its time, buffered in memory), so
    the caller wakes waiting claims only for labels or capacity that really changed."""

    written: bool

    def __new__(cls, drain: bool, stop: list[str], *, written: bool) -> HeartbeatAnswer:
        answer = super().__new__(cls, (drain, stop))
        answer.written = written
        return answer


class DeleteOutcome(StrEnum):
    DELETED = "deleted"
    NOT_FOUND = "not_found"
    BUSY = "busy"


class Store(BillingStore, WebhookStore, ClusterStore, Protocol):
    # --- identity ---------------------------------------------------------------------
    async def is_empty(self) -> bool:
        """True until the first owner has been created."""
        ...

    async def bootstrap(self, *, user_id: str, email: str, workspace_id: str, workspace_name: str,
                        plan: str, tokens: list[TokenRecord], now: int) -> bool:
        """Create the first owner, their workspace and initial tokens in one transaction; False
        (nothing written) when the store was already bootstrapped, by another replica perhaps."""
        ...

    async def find_token(self, token_hash: str) -> TokenRecord | None: ...

    async def insert_token(self, token: TokenRecord) -> None: ...

    async def member_role(self, workspace_id: str, user_id: str) -> str | None: ...

    async def membership(self, workspace_id: str, user_id: str) -> Membership | None:
        """The user's role in the workspace and the workspace's plan (one indexed read per request)."""
        ...

    async def create_workspace(self, workspace: WorkspaceRecord, owner_id: str,
                               invitation_id: str | None = None) -> None:
        """The workspace and its owner's membership; ``invitation_id``: that of the login that
        creates it, which then reaches it (``Membership.invitation_id``)."""
        ...

    async def get_workspace(self, workspace_id: str) -> WorkspaceRecord | None: ...

    async def first_workspace(self) -> WorkspaceRecord | None:
        """The oldest workspace (the one ``init`` created), or None in an empty store."""
        ...

    async def list_user_workspaces(self, user_id: str, *, limit: int, before_id: str | None,
                                   invitation_id: str | None = None) -> list[WorkspaceRecord]:
        """Workspaces the user belongs to, oldest first, with ``role`` set."""
        ...

    async def update_workspace(self, workspace_id: str, changes: dict[str, Any]) -> WorkspaceRecord | None:
        """Apply ``changes`` (keys ``name``, ``default_region``, ``plan``); None if absent."""
        ...

    async def invite_member(self, *, workspace_id: str, email: str, role: str, new_user_id: str,
                            invitation: InvitationRecord) -> MemberRecord:
        """Create the user if the email is new, the membership and its invitation, in one transaction.
        Raises ``MembershipConflict('already_member')``; ``invitation.user_id`` is ignored."""
        ...

    async def list_members(self, workspace_id: str, *, limit: int, before_id: str | None) -> list[MemberRecord]: ...

    async def get_member(self, workspace_id: str, user_id: str) -> MemberRecord | None: ...

    async def set_member_role(self, workspace_id: str, user_id: str, role: str) -> MemberRecord | None:
        """Raises ``MembershipConflict('last_owner')`` rather than leave a workspace without an owner."""
        ...

    async def remove_member(self, workspace_id: str, user_id: str, now: int) -> bool:
        """Delete the membership and revoke its open invitations and the tokens others minted
        for the user in this workspace (bound to it); False if absent.
        Raises ``MembershipConflict('last_owner')``."""
        ...

    async def redeem_invitation(self, code_hash: str, now: int, tokens: list[TokenRecord]) -> InvitationRecord | None:
        """Mark the invitation redeemed and store ``tokens`` (whose user and workspace are filled in
        from it) in one transaction; None if unknown, used, revoked, expired or its membership is gone."""
        ...

    async def list_tokens(self, workspace_id: str, kind: str, *, limit: int,
                          before_id: str | None) -> list[TokenRecord]:
        ...

    async def get_token(self, workspace_id: str, token_id: str) -> TokenRecord | None: ...

    async def revoke_token(self, workspace_id: str, token_id: str, now: int, *,
                           kind: str | None = None) -> TokenRecord | None:
        """Revoke the token and every token it minted; idempotent; None if absent from this
        workspace (or not of ``kind`` when given)."""
        ...

    async def rotate_refresh_token(self, token_hash: str, now: int, access: TokenRecord,
                                   refresh: TokenRecord) -> TokenRecord | None:
        """Exchange a live refresh token for ``access`` and ``refresh`` (same family) atomically.
        A refresh token presented after it was rotated revokes its whole family (replay of a stolen
        token). Returns the old token, or None when refused."""
        ...

    # --- audit ------------------------------------------------------------------------
    async def append_audit(self, record: AuditRecord) -> None: ...

    async def list_audit(self, workspace_id: str, filters: AuditFilter, *, limit: int,
                         before_seq: int | None) -> list[AuditRecord]:
        """Newest first; at most ``limit`` rows with ``seq`` below ``before_seq``."""
        ...

    # --- service metrics (the only cross-workspace reads: counts, no rows) -------------
    async def count_jobs_by_state(self) -> dict[str, int]: ...

    async def count_agents_by_state(self) -> dict[str, int]: ...

    # --- retention (coordinator/retention.py) ------------------------------------------
    async def prune_expired(self, now: int, policy: RetentionPolicy) -> Pruned:
        """Delete one batch of what ``policy`` no longer keeps at ``now``, in one transaction
        (rules: ``coordinator.services.retention``)."""
        ...

    # --- jobs -------------------------------------------------------------------------
    async def insert_job(self, job: JobRecord, *, idempotency_key: str | None = None,
                         request_hash: str | None = None, idempotency_window_ms: int = 0,
                         audit: AuditRecord | None = None) -> JobRecord:
        """Store a new job; with an idempotency key already used for the same body inside
        the window, return that earlier job instead. Raises ``IdempotencyConflict``, and
        ``UnknownDependency`` for a ``depends_on`` job absent from the workspace. A job with a
        dependency that can no longer meet its condition is stored CANCELLED (dependency_failed).
        ``audit``, when given, is appended in the same transaction with its target set to
        the returned job's id (one trip through the writer per submission)."""
        ...

    async def find_idempotent_job(self, workspace_id: str, key: str, since: int) -> tuple[JobRecord, str | None] | None:
        """The job created with ``key`` at or after ``since``, with its request hash."""
        ...

    async def get_job(self, workspace_id: str, job_id: str) -> JobRecord | None: ...

    async def job_created_at(self, workspace_id: str, job_id: str) -> int | None:
        """When the job was submitted (ms), or None if the workspace has no such job: one indexed
        read (the dispatch-latency histogram needs nothing else of the job)."""
        ...

    async def list_jobs(self, workspace_id: str, filters: JobFilter, *, limit: int,
                        before_id: str | None) -> list[JobRecord]:
        """Newest first; at most ``limit`` jobs with ids below ``before_id``."""
        ...

    async def agent_snapshots(self, workspace_id: str) -> list[AgentSnapshot]:
        """The workspace's agents (not deleted), as the queue-reason decision sees them."""
        ...

    async def submission_state(self, workspace_id: str) -> tuple[bool, list[AgentSnapshot]]:
        """What a submission reads before its write, in one query: whether the workspace is past
        its hard cap (``hard_cap_reached``), and ``agent_snapshots``."""
        ...

    async def refresh_queued_reasons(self, now: int | None = None) -> int:
        """Set ``reason`` on every QUEUED job from ``scheduler.queued_reason`` (waited), one
        decision per workspace, selector and resources; return how many jobs changed. Jobs
        held by their dependencies, or by a retry backoff that lasts past ``now``, keep theirs."""
        ...

    async def has_queued(self, workspace_id: str) -> bool:
        """Whether the workspace has any QUEUED job: one index seek, read before a claim's write
        so that a claim with nothing to find (most, once the queue is drained) costs no write."""
        ...

    async def next_claimable_at(self, workspace_id: str, now: int) -> int | None:
        """The earliest time after ``now`` at which a QUEUED job of the workspace leaves its
        retry backoff (a waiting claim wakes then); None if no job waits for one."""
        ...

    def on_work_released(self, listener: Callable[[str], None]) -> None:
        """Call ``listener(workspace_id)`` after each write that made a job claimable by a rule
        (dependencies met, a retry queued), once that write has committed."""
        ...

    def on_jobs_changed(self, listener: Callable[[str], None]) -> None:
        """Call ``listener(job_id)`` after each write in which a rule changed a job besides the
        one the write was about (a dependent cancelled with its dependency), once committed."""
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

    async def claimant(self, workspace_id: str, agent_id: str) -> tuple[dict[str, str], bool] | None:
        """What a claim long-poll needs of its agent: its labels, and whether it takes new work
        now (READY, not draining); None once it is deleted. One indexed read, not the agent's
        record with its jobs (issue 15: read on every claim)."""
        ...

    async def claim_look(self, workspace_id: str, agent_id: str) -> tuple[dict[str, str], bool, bool] | None:
        """``claimant`` and ``has_queued`` in one statement, outside any transaction: (labels,
        takes work now, the workspace has a QUEUED job), or None once the agent is deleted. What
        a claim request reads before its first pass."""
        ...

    async def list_agents(self, workspace_id: str, *, limit: int, before_id: str | None) -> list[AgentRecord]: ...

    async def set_agent_drain(self, workspace_id: str, agent_id: str, drain: bool) -> AgentRecord | None:
        """Set or clear the drain flag; the agent learns of it at its next heartbeat."""
        ...

    async def record_heartbeat(self, agent_id: str, beat: HeartbeatRequest, now: int) -> HeartbeatAnswer:
        """Record liveness; return (drain requested, ids of jobs the agent must stop). A beat
        that changes nothing but the agent's last-seen time is buffered in memory, not written
        (coordinator/store/beats.py): ``flush_heartbeats`` writes it."""
        ...

    async def flush_heartbeats(self) -> int:
        """Write the buffered last-seen times in one transaction; the number of agents moved."""
        ...

    # --- job arrays and the queue (issue 16) ------------------------------------------------
    async def insert_array(self, array: ArrayRecord, template: JobRecord, task_ids: list[str], *,
                           idempotency_key: str | None = None, request_hash: str | None = None,
                           idempotency_window_ms: int = 0) -> ArrayRecord:
        """The array and its tasks (``template`` is the shared manifest; ``task_ids`` sort in
        index order) in one transaction; an idempotent replay returns the earlier array."""
        ...

    async def find_idempotent_array(self, workspace_id: str, key: str,
                                    since: int) -> tuple[ArrayRecord, str | None] | None: ...

    async def get_array(self, workspace_id: str, array_id: str) -> ArrayRecord | None: ...

    async def list_arrays(self, workspace_id: str, *, limit: int, before_id: str | None) -> list[ArrayRecord]:
        """Newest first, ids below ``before_id``."""
        ...

    async def cancel_array(self, workspace_id: str, array_id: str,
                           now: int) -> tuple[ArrayRecord, list[tuple[str | None, str]]] | None:
        """Cancel every task not yet terminal; the (agent id or None, job id) of each task changed."""
        ...

    async def array_task_logs(self, workspace_id: str, array_id: str,
                              index: int | None) -> list[tuple[int, str]]:
        """(index, job id) of the tasks with output in index order, or the task ``index`` alone."""
        ...

    async def arrays_at_limit(self, workspace_id: str, array_ids: set[str]) -> set[str]:
        """Those of ``array_ids`` with ``maxParallel`` tasks ASSIGNED or RUNNING."""
        ...

    async def queue_positions(self, workspace_id: str, jobs: list[JobRecord]) -> dict[str, int]:
        """Each QUEUED job's position in the dispatch order (1 = next)."""
        ...

    async def claim_job(self, agent_id: str, free: CapacityMsg, defaults: CapacityMsg | None,
                        now: int) -> Assignment | None:
        """Assign the oldest queued job that fits, to exactly one claimant, with a new epoch."""
        ...

    async def count_auth_failures(self, counts: dict[tuple[int, str, str], int]) -> None:
        """Add failed-authentication counts, keyed (minute, client address, workspace or '')."""
        ...

    async def auth_failures(self, *, since: int) -> list[tuple[int, str, str, int]]:
        """Failed-authentication counts from minute ``since`` on, oldest first."""
        ...

    async def apply_events(self, agent_id: str, events: list[JobEvent], now: int, *,
                           refused: dict[int, str] | None = None, request_id: str = "") -> EventsResponse:
        """Apply events with sequence numbers above the agent's last applied one, in order and
        contiguously (``common.event_checks``): an event past a gap is refused with
        ``sequence_gap`` and not consumed. ``refused`` maps the seqs of events whose content
        did not validate to their code: they are consumed and refused. Every refusal is audited."""
        ...

    async def ready(self) -> bool:
        """Whether the database answers now. A store may also offer ``unready_reason() -> str |
        None`` (None when ready, else why not, for an operator): ``/readyz`` prints it."""
        ...

    # --- liveness, agent administration, registration tokens (additive) ----------------
    async def agent_pulses(self, *, silent_before: int | None = None) -> list[AgentPulse]:
        """Every agent not deleted, across workspaces (the liveness loop is global). With
        ``silent_before``: only those whose last sign of life is strictly before it, less the
        DOWN ones that hold no job (nothing is left to decide about them)."""
        ...

    async def live_agent_count(self) -> int:
        """Agents not deleted and not DOWN, across workspaces: the fleet that heartbeats
        (coordinator/cadence.py scales the heartbeat interval with it)."""
        ...

    async def mark_agent_down(self, agent_id: str, *, seen_before: int, now: int) -> bool:
        """Mark the agent DOWN if its last sign of life is still before ``seen_before``."""
        ...

    async def expire_leases(self, agent_id: str, *, seen_before: int, now: int) -> list[str]:
        """If the agent is still silent since before ``seen_before``, make its ASSIGNED and
        RUNNING jobs LOST; return their ids."""
        ...

    async def release_assignment(self, agent_id: str, job_id: str, epoch: int, now: int) -> str | None:
        """If ``job_id`` is still ASSIGNED to ``agent_id`` at ``epoch``, queue it again; return
        its workspace id then, else None."""
        ...

    async def requeue_stale_assignments(self, *, assigned_before: int, now: int) -> list[tuple[str, str]]:
        """Queue again every job ASSIGNED before ``assigned_before`` and never started; return
        (job id, workspace id) of each."""
        ...

    async def agent_goodbye(self, agent_id: str, now: int) -> list[str]:
        """A clean exit: mark the agent DOWN now and queue again its ASSIGNED jobs (returned)."""
        ...

    async def agent_orders(self, agent_id: str, running: list[RunningJob]) -> tuple[bool, list[str]] | None:
        """Read-only: (drain requested, which of ``running`` to stop, plus running jobs of the
        agent whose cancel was requested); None if the agent is gone."""
        ...

    async def delete_agent(self, workspace_id: str, agent_id: str, *, force: bool, now: int) -> DeleteOutcome:
        """Deregister: revoke its tokens, hand ASSIGNED jobs back to the queue and make RUNNING
        ones LOST (``force``); ``BUSY`` without ``force`` while it holds jobs."""
        ...

