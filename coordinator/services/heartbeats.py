"""What a heartbeat changes: the agent's state, assignments it confirms or never got, jobs it
stopped listing, and the jobs it must stop.

An agent beats every few seconds listing the jobs it runs (``runningJobs``, each with its
epoch). From one beat the coordinator decides, in the beat's transaction:

- the agent's state (``agent_state_after_heartbeat``): drain requested or the agent stopping
  (it reports DRAINING/DRAINED itself on SIGTERM) leave it draining;
- a job ASSIGNED to it more than ``ASSIGNMENT_GRACE_MS`` ago that it does not list never
  reached it (the claim's answer was lost): back to QUEUED;
- a job it lists while ASSIGNED is confirmed;
- a RUNNING job it stops listing for more than ``FORGOTTEN_GRACE_MS`` is LOST;
- the stop orders it gets back (``stop_orders``).
"""

from __future__ import annotations

import json

from common.protocol import HeartbeatRequest, RunningJob
from common.states import AgentState, JobState, agent_state_after_heartbeat
from coordinator.services.retries import end_attempt
from coordinator.services.tx import Tx
from coordinator.store.queries.jobs import transition_job
from coordinator.store.repo import agents as rows

ASSIGNMENT_GRACE_MS = 10_000
FORGOTTEN_GRACE_MS = 60_000


def record_heartbeat(tx: Tx, agent_id: str, beat: HeartbeatRequest, now: int) -> tuple[bool, list[str]]:
    """Apply one heartbeat received ``now``; return (drain requested, jobs to stop)."""
    agent = rows.agent_row(tx, agent_id)
    drain = bool(agent["drain_requested"])
    # An agent that is stopping (SIGTERM) reports DRAINING/DRAINED itself: shown as such,
    # and given no new claims, though nobody asked it to drain.
    stopping = beat.state in (AgentState.DRAINING, AgentState.DRAINED)
    state = agent_state_after_heartbeat(drain or stopping, len(beat.runningJobs))
    rows.record_beat(tx, agent_id, state=state.value, now=now, labels=beat.labels,
                     capacity_json=beat.capacity.model_dump_json() if beat.capacity is not None else None,
                     version=beat.version)
    stop = stop_orders(tx, agent_id, beat.runningJobs)
    # A claim whose answer never reached the agent (its connection dropped) leaves a
    # job ASSIGNED to an agent that does not know it: hand it back after a grace.
    reported = {running.jobId for running in beat.runningJobs}
    for row in rows.assigned_before(tx, agent_id, now - ASSIGNMENT_GRACE_MS):
        if row["id"] not in reported:
            transition_job(tx, row, JobState.QUEUED, now=now, agent_id=None,
                           attempt_reason="assignment_unconfirmed")
    for running in beat.runningJobs:
        rows.confirm_assignment(tx, running.jobId, agent_id, running.epoch, now)
    track_unreported(tx, agent_id, reported, now)
    return drain, stop


def quiet_beat(tx: Tx, agent_id: str, beat: HeartbeatRequest) -> tuple[bool, list[str]] | None:
    """(drain requested, jobs to stop) when ``record_heartbeat`` would change nothing but the
    agent's last-seen time; None when it would change something (then record it as a write).

    Nothing changes when the agent keeps its state (it is not DOWN), the labels, capacity and
    version it sends (if any) are those stored, and every job it holds is RUNNING, listed in
    the beat and not marked unreported: no assignment to confirm or hand back, no job to
    start or stop tracking. Read-only; the caller records the beat's time (``BeatBuffer``)."""
    agent = tx.execute("SELECT * FROM agents WHERE id = ?", (agent_id,)).fetchone()
    if agent is None or agent["down_at"] is not None:
        return None
    drain = bool(agent["drain_requested"])
    stopping = beat.state in (AgentState.DRAINING, AgentState.DRAINED)
    if agent_state_after_heartbeat(drain or stopping, len(beat.runningJobs)).value != agent["state"]:
        return None
    if beat.labels is not None and json.loads(agent["labels"]) != beat.labels:
        return None
    if beat.capacity is not None and _present(json.loads(agent["capacity"])) != _present(beat.capacity.model_dump()):
        return None
    if beat.version is not None and beat.version != agent["version"]:
        return None
    reported = {running.jobId for running in beat.runningJobs}
    for job in rows.active_jobs(tx, agent_id, include_assigned=True):
        if job["state"] != JobState.RUNNING.value or job["id"] not in reported or job["unreported_since"] is not None:
            return None
    return drain, stop_orders(tx, agent_id, beat.runningJobs)


def _present(capacity: dict[str, object]) -> dict[str, object]:
    """A capacity without its unset fields: stored with or without them, it is the same."""
    return {key: value for key, value in capacity.items() if value is not None}


def track_unreported(tx: Tx, agent_id: str, reported: set[str], now: int) -> None:
    """A live agent that stops listing one of its RUNNING jobs has lost it (its data dir was
    wiped, its result was refused...): after ``FORGOTTEN_GRACE_MS`` of beats without it, the
    job is LOST. The grace covers a result still on its way from the agent's spool; a result
    that arrives later at the job's own epoch still replaces LOST."""
    for row in rows.running_jobs(tx, agent_id):
        if row["id"] in reported:
            if row["unreported_since"] is not None:
                rows.set_unreported_since(tx, row["id"], None)
        elif row["unreported_since"] is None:
            rows.set_unreported_since(tx, row["id"], now)
        elif now - row["unreported_since"] > FORGOTTEN_GRACE_MS:
            end_attempt(tx, row, JobState.LOST, now=now, finished_at=now, reason="agent_forgot")


def stop_orders(tx: Tx, agent_id: str, running: list[RunningJob]) -> list[str]:
    """Jobs the agent must stop: those it reports that are no longer its own at that epoch,
    were cancelled or finished; plus its RUNNING jobs with a cancel requested. A job that went
    LOST at the agent's own epoch is left running: its result still wins over LOST."""
    stop: list[str] = []
    for report in running:
        job = rows.job_ownership(tx, report.jobId)
        if job is None or job["agent_id"] != agent_id or job["epoch"] != report.epoch or job["cancel_requested"]:
            stop.append(report.jobId)
            continue
        state = JobState(job["state"])
        if state.is_terminal and state != JobState.LOST:
            stop.append(report.jobId)
    reported = {report.jobId for report in running}
    for job_id in rows.running_jobs_to_cancel(tx, agent_id):
        if job_id not in reported:
            stop.append(job_id)
    return stop
