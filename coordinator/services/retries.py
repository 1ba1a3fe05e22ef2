"""Automatic retries of failed attempts (issue 16), as Buildkite's automatic retries and
Nomad's reschedule policy.

A job submitted with ``retry: {"attempts": N, "on": [...], "exitCodes": [...],
"backoffSeconds": s}`` gets at most N attempts that end in failure. When an attempt ends
FAILED, TIMED_OUT or LOST and the policy covers that outcome, the job is not terminal: it goes
back to QUEUED (the attempt keeps its result, exit code, times and usage) and is not claimable
before ``now + backoffSeconds``; its next claim opens a new attempt under a new epoch. A job
whose cancel was requested is never retried. Attempts that end without a result (handed back
by a stopping agent, a claim never confirmed) do not count: they are not failures.

Webhooks follow the transitions: ``job.transitioned`` for every change of every attempt (a
retry is a transition to QUEUED), ``job.terminal`` once, when the job is finally terminal.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from common.states import JobState
from coordinator.services.tx import Tx
from coordinator.services.wakeups import work_released

# The outcomes a policy may retry. SUCCEEDED is success, CANCELLED is what its user wanted.
RETRYABLE = frozenset({JobState.FAILED, JobState.TIMED_OUT, JobState.LOST})
WAITING_FOR_RETRY = "waiting_for_retry"  # the queue reason of a job inside its backoff


@dataclass(frozen=True)
class RetryPolicy:
    """``attempts``: the most attempts that may end in failure (1: never retried). ``on``: the
    outcomes that are retried. ``exit_codes``: when given, a FAILED attempt is retried only
    with one of these exit codes (an attempt that could not start has none). ``backoff_seconds``:
    how long the job waits in the queue before its next attempt."""

    attempts: int
    on: frozenset[JobState] = RETRYABLE
    exit_codes: frozenset[int] = frozenset()
    backoff_seconds: int = 0

    def to_json(self) -> str:
        return json.dumps({"attempts": self.attempts, "on": sorted(state.value for state in self.on),
                           "exitCodes": sorted(self.exit_codes), "backoffSeconds": self.backoff_seconds})

    @classmethod
    def from_json(cls, text: str | None) -> RetryPolicy | None:
        if text is None:
            return None
        data = json.loads(text)
        return cls(attempts=int(data["attempts"]), on=frozenset(JobState(state) for state in data["on"]),
                   exit_codes=frozenset(int(code) for code in data["exitCodes"]),
                   backoff_seconds=int(data["backoffSeconds"]))

    def as_dict(self) -> dict[str, Any]:
        loaded: dict[str, Any] = json.loads(self.to_json())
        return loaded


def should_retry(policy: RetryPolicy | None, outcome: JobState, exit_code: int | None, *, failures: int,
                 cancel_requested: bool) -> bool:
    """Whether an attempt that ended in ``outcome`` is followed by another one.

    ``failures`` counts the job's attempts that ended in failure, this one included."""
    if policy is None or cancel_requested or outcome not in policy.on or failures >= policy.attempts:
        return False
    if outcome == JobState.FAILED and policy.exit_codes:
        return exit_code in policy.exit_codes
    return True


def retry_at(policy: RetryPolicy, now: int) -> int:
    """When the next attempt may be claimed, in milliseconds: the backoff counts from when the
    coordinator learnt of the failure (an agent's clock and its spool's delay play no part)."""
    return now + policy.backoff_seconds * 1000


def failed_attempts(tx: Tx, job_id: str, epoch: int) -> int:
    """Attempts of the job before ``epoch`` that ended in failure."""
    row = tx.execute(
        f"""SELECT COUNT(*) FROM job_attempts WHERE job_id = ? AND epoch < ?
            AND state IN ({', '.join('?' for _ in RETRYABLE)})""",
        (job_id, epoch, *sorted(state.value for state in RETRYABLE)),
    ).fetchone()
    return int(row[0])


def end_attempt(tx: Tx, job: Any, outcome: JobState, *, now: int,
                **fields: Any) -> JobState:
    """The job's current attempt ended in ``outcome`` (a result state or LOST) with ``fields``
    (job columns: finished_at, exit_code, reason, ...): make that the job's final state, or,
    when its retry policy covers it, queue the job again after the backoff. Returns the state
    the job is in afterwards. Raises ``InvalidTransition`` as ``transition_job`` does."""
    from coordinator.store.queries.jobs import transition_job  # the store's transition hook

    policy = RetryPolicy.from_json(job["retry"])
    old = JobState(job["state"])
    cancel_requested = bool(job["cancel_requested"])
    # The earlier failures are counted only where the policy may retry this outcome: most jobs
    # have no policy, and the count is a statement (a round trip on PostgreSQL).
    may_retry = policy is not None and not cancel_requested and outcome in policy.on
    # A late result replacing LOST is final: the job's dependents were decided at LOST already.
    if old != JobState.LOST and may_retry and should_retry(
            policy, outcome, fields.get("exit_code"), cancel_requested=cancel_requested,
            failures=failed_attempts(tx, job["id"], job["epoch"]) + (1 if outcome in RETRYABLE else 0)):
        assert policy is not None
        finished_at = fields.get("finished_at", now)
        result = {"state": outcome.value, "finished_at": finished_at, "exit_code": fields.get("exit_code"),
                  "reason": fields.get("reason"), "started_at": fields.get("started_at", job["started_at"])}
        transition_job(tx, job, JobState.QUEUED, now=now, attempt_result=result, agent_id=None,
                       assigned_at=None, started_at=None, finished_at=None, exit_code=None, runtime_ms=None,
                       signal=None, assignment_confirmed_at=None, unreported_since=None,
                       reason=WAITING_FOR_RETRY if policy.backoff_seconds else None,
                       not_before=retry_at(policy, now))
        # Waiting claims wake now: they take it, or learn when it becomes claimable.
        work_released(job["workspace_id"])
        return JobState.QUEUED
    transition_job(tx, job, outcome, now=now, **fields)
    return outcome
