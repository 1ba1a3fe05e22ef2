"""What happens to an agent's jobs when it drains, goes silent, says goodbye or is deleted.

- Drain: a live agent's state follows its drain flag and running jobs
  (``agent_state_after_heartbeat``); a DOWN agent stays DOWN.
- Silent past the liveness bound: the agent is DOWN; past its lease, its ASSIGNED and RUNNING
  jobs are LOST (or CANCELLED where a cancel was requested and never carried out).
- An assignment nobody confirmed in time, or that the agent hands back, goes back to QUEUED.
- Goodbye (a clean shutdown): DOWN at once, its ASSIGNED jobs back to QUEUED.
- Deletion: its token is revoked first, ASSIGNED jobs go back to QUEUED, RUNNING ones are lost.
"""

from __future__ import annotations

from common.states import AgentState, JobState, agent_state_after_heartbeat
from coordinator.services.retries import end_attempt
from coordinator.services.tx import Tx
from coordinator.store.base import DeleteOutcome
from coordinator.store.queries.jobs import transition_job
from coordinator.store.repo import agents as rows


def set_drain(tx: Tx, workspace_id: str, agent_id: str, drain: bool) -> bool:
    """Ask the agent to drain (or resume); False when it is not a live agent of the workspace."""
    current = rows.live_agent_state(tx, workspace_id, agent_id)
    if current is None:
        return False
    state = AgentState(current)
    if state != AgentState.DOWN:
        state = agent_state_after_heartbeat(drain, rows.active_job_count(tx, agent_id))
    rows.set_drain(tx, agent_id, drain, state.value)
    return True


def mark_down(tx: Tx, agent_id: str, *, seen_before: int, now: int) -> bool:
    """The agent is DOWN from ``now`` if still silent since before ``seen_before``; True if it changed."""
    return rows.mark_down_if_silent(tx, agent_id, seen_before=seen_before, now=now)


def expire_leases(tx: Tx, agent_id: str, *, seen_before: int, now: int) -> list[str]:
    """If the agent is still silent since before ``seen_before``, its jobs are lost; their ids."""
    if not rows.silent_since(tx, agent_id, seen_before):
        return []
    return lose_jobs(tx, agent_id, "agent_lost", now, include_assigned=True)


def release_assignment(tx: Tx, agent_id: str, job_id: str, epoch: int, now: int) -> str | None:
    """The agent gives back a claim it will not run: QUEUED again. Returns the job's workspace,
    None when the job is no longer ASSIGNED to the agent at that epoch."""
    row = rows.assignment_at_epoch(tx, job_id, agent_id, epoch)
    if row is None:
        return None
    transition_job(tx, row, JobState.QUEUED, now=now, agent_id=None, assigned_at=None, attempt_reason="released")
    return str(row["workspace_id"])


def requeue_stale_assignments(tx: Tx, *, assigned_before: int, now: int) -> list[tuple[str, str]]:
    """Assignments no agent confirmed since before ``assigned_before`` go back to QUEUED;
    (job id, workspace id) of each."""
    stale = rows.unconfirmed_assignments_before(tx, assigned_before)
    for row in stale:
        transition_job(tx, row, JobState.QUEUED, now=now, agent_id=None, assigned_at=None,
                       attempt_reason="assignment_expired")
    return [(str(row["id"]), str(row["workspace_id"])) for row in stale]


def goodbye(tx: Tx, agent_id: str, now: int) -> list[str]:
    """A clean shutdown: DOWN at once; its ASSIGNED jobs go back to QUEUED (their ids)."""
    rows.mark_down(tx, agent_id, now)
    assigned = rows.assigned_jobs(tx, agent_id)
    for row in assigned:
        transition_job(tx, row, JobState.QUEUED, now=now, agent_id=None, assigned_at=None, attempt_reason="released")
    return [str(row["id"]) for row in assigned]


def delete_agent(tx: Tx, workspace_id: str, agent_id: str, *, force: bool, now: int) -> DeleteOutcome:
    """Delete the agent; refused (``BUSY``) while it has jobs unless ``force``."""
    if rows.live_agent_state(tx, workspace_id, agent_id) is None:
        return DeleteOutcome.NOT_FOUND
    if rows.active_job_count(tx, agent_id) and not force:
        return DeleteOutcome.BUSY
    # Its token goes first: from this commit on the agent can make no protocol call, so
    # nothing it still sends can touch the jobs decided here.
    rows.revoke_agent_tokens(tx, agent_id, now)
    for row in rows.assigned_jobs(tx, agent_id):
        transition_job(tx, row, JobState.QUEUED, now=now, agent_id=None, attempt_reason="agent_deleted")
    lose_jobs(tx, agent_id, "agent_deleted", now, include_assigned=False)
    rows.soft_delete_agent(tx, agent_id, now)
    return DeleteOutcome.DELETED


def lose_jobs(tx: Tx, agent_id: str, reason: str, now: int, *, include_assigned: bool) -> list[str]:
    """The agent's RUNNING (and, if ``include_assigned``, ASSIGNED) jobs end LOST with
    ``reason`` (retried where their policy says so), or CANCELLED where a cancel was
    requested; their ids."""
    lost: list[str] = []
    for row in rows.active_jobs(tx, agent_id, include_assigned=include_assigned):
        # A cancel that the agent never got to carry out ends as CANCELLED, not LOST.
        if row["cancel_requested"]:
            transition_job(tx, row, JobState.CANCELLED, now=now, finished_at=now, reason="cancelled")
        else:
            end_attempt(tx, row, JobState.LOST, now=now, finished_at=now, reason=reason)
        lost.append(row["id"])
    return lost
