"""Data access for the agent protocol: heartbeats, stop orders, event cursors, job logs."""

from __future__ import annotations

import json
from typing import Any

from coordinator.store.db import Row, Tx
from coordinator.store.repo.billing import gpu_model_label_sql


def agent_row(tx: Tx, agent_id: str) -> Row:
    row: Row = tx.execute("SELECT * FROM agents WHERE id = ?", (agent_id,)).fetchone()
    return row


def record_beat(tx: Tx, agent_id: str, *, state: str, now: int, labels: dict[str, str] | None,
                capacity_json: str | None, version: str | None) -> None:
    """The agent was heard from ``now``: its state, and whatever of labels, capacity and
    version the heartbeat carried (None: unchanged)."""
    updates = ["state = ?", "last_heartbeat_at = ?", "down_at = NULL"]
    params: list[Any] = [state, now]
    if labels is not None:
        updates.append("labels = ?")
        params.append(json.dumps(labels))
    if capacity_json is not None:
        updates.append("capacity = ?")
        params.append(capacity_json)
    if version is not None:
        updates.append("version = ?")
        params.append(version)
    tx.execute(f"UPDATE agents SET {', '.join(updates)} WHERE id = ?", (*params, agent_id))


def job_ownership(tx: Tx, job_id: str) -> Row | None:
    """``state``, ``agent_id``, ``epoch`` and ``cancel_requested`` of a job (None: no such job)."""
    row: Row | None = tx.execute(
        "SELECT state, agent_id, epoch, cancel_requested FROM jobs WHERE id = ?", (job_id,)
    ).fetchone()
    return row


def running_jobs_to_cancel(tx: Tx, agent_id: str) -> list[str]:
    """Ids of the agent's RUNNING jobs whose cancel was requested, in id order."""
    return [row["id"] for row in tx.execute(
        "SELECT id FROM jobs WHERE agent_id = ? AND state = 'RUNNING' AND cancel_requested = 1 ORDER BY id",
        (agent_id,),
    ).fetchall()]


def assigned_before(tx: Tx, agent_id: str, before: int) -> list[Row]:
    """The agent's ASSIGNED jobs assigned before ``before``."""
    return tx.execute(
        "SELECT * FROM jobs WHERE agent_id = ? AND state = 'ASSIGNED' AND assigned_at < ?",
        (agent_id, before),
    ).fetchall()


def confirm_assignment(tx: Tx, job_id: str, agent_id: str, epoch: int, now: int) -> None:
    """The agent reported the job at ``epoch``: its assignment is confirmed (once)."""
    tx.execute(
        """UPDATE jobs SET assignment_confirmed_at = ? WHERE id = ? AND agent_id = ? AND epoch = ?
             AND state = 'ASSIGNED' AND assignment_confirmed_at IS NULL""",
        (now, job_id, agent_id, epoch),
    )


def running_jobs(tx: Tx, agent_id: str) -> list[Row]:
    return tx.execute("SELECT * FROM jobs WHERE agent_id = ? AND state = 'RUNNING'", (agent_id,)).fetchall()


def set_unreported_since(tx: Tx, job_id: str, since: int | None) -> None:
    tx.execute("UPDATE jobs SET unreported_since = ? WHERE id = ?", (since, job_id))


def event_cursor(tx: Tx, agent_id: str) -> Row:
    """The agent's ``workspace_id``, ``last_seq`` (the events applied so far), ``capacity`` and
    ``gpu_model`` (its gpuModel label, NULL when none: what its usage is billed as, read here
    rather than once per usage event); with them, in the same statement (each is a round trip on
    PostgreSQL), ``last_tick_at`` (the meter's last tick: ``repo.billing.last_tick_at``) and
    ``webhooks`` (how many live webhooks its workspace has)."""
    row: Row = tx.execute(
        f"""SELECT a.workspace_id, a.last_seq, a.capacity, {gpu_model_label_sql(tx)} AS gpu_model,
                   (SELECT m.last_tick_at FROM meter_state m WHERE m.id = 1) AS last_tick_at,
                   (SELECT COUNT(*) FROM webhooks w WHERE w.workspace_id = a.workspace_id AND w.deleted_at IS NULL)
                       AS webhooks
            FROM agents a WHERE a.id = ?""", (agent_id,)).fetchone()
    return row


def advance_last_seq(tx: Tx, agent_id: str, *, expected: int, new: int) -> bool:
    """Compare-and-set the agent's ``last_seq`` from ``expected`` to ``new``; False: it moved meanwhile."""
    changed: int = tx.execute("UPDATE agents SET last_seq = ? WHERE id = ? AND last_seq = ?",
                              (new, agent_id, expected)).rowcount
    return changed == 1


def job_in_workspace(tx: Tx, job_id: str, workspace_id: str) -> Row | None:
    row: Row | None = tx.execute(
        "SELECT * FROM jobs WHERE id = ? AND workspace_id = ?", (job_id, workspace_id)
    ).fetchone()
    return row


def agent_attempt(tx: Tx, job_id: str, epoch: int, agent_id: str) -> Row | None:
    """The job's attempt at ``epoch`` if it was ``agent_id``'s."""
    row: Row | None = tx.execute(
        "SELECT * FROM job_attempts WHERE job_id = ? AND epoch = ? AND agent_id = ?", (job_id, epoch, agent_id),
    ).fetchone()
    return row


def append_log_chunk(tx: Tx, job_id: str, size: int, data: bytes) -> bool:
    """Append ``data`` at byte ``size`` of the job's log, compare-and-set on the log's size;
    False: the log grew meanwhile (nothing written)."""
    new_size = size + len(data)
    if tx.execute("UPDATE jobs SET log_size = ? WHERE id = ? AND log_size = ?", (new_size, job_id, size)).rowcount != 1:
        return False
    tx.execute('INSERT INTO job_logs (job_id, "offset", data) VALUES (?, ?, ?)', (job_id, size, data))
    return True


def drop_log_before(tx: Tx, job_id: str, offset: int) -> None:
    """Delete the job's log chunks that end at or before byte ``offset``."""
    tx.execute('DELETE FROM job_logs WHERE job_id = ? AND "offset" + length(data) <= ?', (job_id, offset))


def savepoint(tx: Tx, name: str) -> None:
    tx.execute(f"SAVEPOINT {name}")


def rollback_to(tx: Tx, name: str) -> None:
    tx.execute(f"ROLLBACK TO {name}")


def release(tx: Tx, name: str) -> None:
    tx.execute(f"RELEASE {name}")


# --- drain, liveness, goodbye, deletion ----------------------------------------------------

def live_agent_state(tx: Tx, workspace_id: str, agent_id: str) -> str | None:
    """The agent's state, None when it is not a live (undeleted) agent of the workspace."""
    row = tx.execute(
        "SELECT state FROM agents WHERE id = ? AND workspace_id = ? AND deleted_at IS NULL",
        (agent_id, workspace_id),
    ).fetchone()
    return None if row is None else str(row["state"])


def active_job_count(tx: Tx, agent_id: str) -> int:
    """How many jobs are ASSIGNED to or RUNNING on the agent."""
    return int(tx.execute(
        "SELECT COUNT(*) FROM jobs WHERE agent_id = ? AND state IN ('ASSIGNED', 'RUNNING')", (agent_id,)
    ).fetchone()[0])


def set_drain(tx: Tx, agent_id: str, drain: bool, state: str) -> None:
    tx.execute("UPDATE agents SET drain_requested = ?, state = ? WHERE id = ?", (int(drain), state, agent_id))


def mark_down_if_silent(tx: Tx, agent_id: str, *, seen_before: int, now: int) -> bool:
    """DOWN from ``now`` if the live agent was last heard from before ``seen_before`` and is
    not DOWN already (compare-and-set); False: it was heard from meanwhile, or is DOWN."""
    cursor = tx.execute(
        """UPDATE agents SET state = 'DOWN', down_at = ?
           WHERE id = ? AND deleted_at IS NULL AND state != 'DOWN'
             AND COALESCE(last_heartbeat_at, registered_at) < ?""",
        (now, agent_id, seen_before),
    )
    return cursor.rowcount == 1


def silent_since(tx: Tx, agent_id: str, seen_before: int) -> bool:
    """True when the agent was last heard from (or registered) before ``seen_before``."""
    return tx.execute(
        "SELECT 1 FROM agents WHERE id = ? AND COALESCE(last_heartbeat_at, registered_at) < ?",
        (agent_id, seen_before),
    ).fetchone() is not None


def mark_down(tx: Tx, agent_id: str, now: int) -> None:
    tx.execute("UPDATE agents SET state = 'DOWN', down_at = ? WHERE id = ? AND deleted_at IS NULL", (now, agent_id))


def assignment_at_epoch(tx: Tx, job_id: str, agent_id: str, epoch: int) -> Row | None:
    """The job while it is ASSIGNED to the agent at ``epoch``."""
    row: Row | None = tx.execute(
        "SELECT * FROM jobs WHERE id = ? AND agent_id = ? AND epoch = ? AND state = 'ASSIGNED'",
        (job_id, agent_id, epoch),
    ).fetchone()
    return row


def unconfirmed_assignments_before(tx: Tx, assigned_before: int) -> list[Row]:
    """Every ASSIGNED job no agent has confirmed, assigned before ``assigned_before``."""
    # Through the agents, so that the partial index on (agent_id) for ASSIGNED/RUNNING
    # jobs is used instead of a scan of every job.
    return tx.execute(
        """SELECT * FROM jobs WHERE agent_id IN (SELECT id FROM agents)
             AND state = 'ASSIGNED' AND assigned_at < ? AND assignment_confirmed_at IS NULL""",
        (assigned_before,),
    ).fetchall()


def assigned_jobs(tx: Tx, agent_id: str) -> list[Row]:
    return tx.execute("SELECT * FROM jobs WHERE agent_id = ? AND state = 'ASSIGNED'", (agent_id,)).fetchall()


def active_jobs(tx: Tx, agent_id: str, *, include_assigned: bool) -> list[Row]:
    """The agent's RUNNING jobs, and its ASSIGNED ones too when ``include_assigned``."""
    states = "('ASSIGNED', 'RUNNING')" if include_assigned else "('RUNNING')"
    return tx.execute(f"SELECT * FROM jobs WHERE agent_id = ? AND state IN {states}", (agent_id,)).fetchall()


def revoke_agent_tokens(tx: Tx, agent_id: str, now: int) -> None:
    tx.execute("UPDATE tokens SET revoked_at = ? WHERE agent_id = ? AND revoked_at IS NULL", (now, agent_id))


def soft_delete_agent(tx: Tx, agent_id: str, now: int) -> None:
    tx.execute("UPDATE agents SET deleted_at = ? WHERE id = ?", (now, agent_id))
