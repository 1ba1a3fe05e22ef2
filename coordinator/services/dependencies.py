"""Job dependencies (issue 16), as Slurm's ``afterok`` / ``afternotok`` / ``afterany``.

A job submitted with ``dependsOn: [{"jobId", "condition"}]`` waits QUEUED with reason
``waiting_for_dependencies`` and is not claimable until every dependency has met its
condition. Conditions are decided on a dependency's *final* state, never on one attempt:

- ``succeeded``: it ended SUCCEEDED;
- ``failed``: it ended without success (FAILED, TIMED_OUT, LOST or CANCELLED, including a
  CANCELLED ``dependency_failed`` of its own);
- ``finished``: it ended, whichever way.

A dependency that will be retried (its retry policy covers the failure) is QUEUED again, not
terminal, so its dependents go on waiting for its final outcome. When a dependency ends in a
state its condition excludes, the dependent is CANCELLED with reason ``dependency_failed``,
and its own dependents follow in the same transaction, transitively. A late result that
replaces LOST does not reopen what was decided at LOST.

Dependencies must exist in the job's workspace when it is submitted, so a cycle cannot be
built. One already terminal at submit counts at once: met, or the new job is created
CANCELLED (``dependency_failed``), exactly as if it had ended a moment later.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Sequence

from common.states import JobState
from coordinator.services.tx import Tx
from coordinator.services.wakeups import job_changed, work_released

CONDITIONS = ("succeeded", "failed", "finished")
WAITING_FOR_DEPENDENCIES = "waiting_for_dependencies"
DEPENDENCY_FAILED = "dependency_failed"
MAX_DEPENDENCIES = 64


class UnknownDependency(Exception):
    """A dependency names no job of the workspace (absent or in another: never said which)."""

    def __init__(self, index: int, job_id: str) -> None:
        super().__init__(f"no such job {job_id} in this workspace")
        self.index = index
        self.job_id = job_id


def condition_met(condition: str, state: JobState) -> bool | None:
    """Whether a dependency in ``state`` meets ``condition``: None while it has not ended."""
    if not state.is_terminal:
        return None
    if condition == "succeeded":
        return state == JobState.SUCCEEDED
    if condition == "failed":
        return state != JobState.SUCCEEDED
    return True


def add_dependencies(tx: Tx, job_id: str, workspace_id: str,
                     depends_on: Sequence[tuple[str, str]]) -> tuple[int, bool]:
    """Record the new job's dependencies ((job id, condition) pairs); return how many are
    still pending and whether one can no longer be met. Raises ``UnknownDependency``."""
    pending = 0
    failed = False
    for index, (dependency_id, condition) in enumerate(depends_on):
        row = tx.execute("SELECT state FROM jobs WHERE id = ? AND workspace_id = ?",
                           (dependency_id, workspace_id)).fetchone()
        if row is None:
            raise UnknownDependency(index, dependency_id)
        met = condition_met(condition, JobState(row["state"]))
        tx.execute(
            """INSERT INTO job_dependencies (job_id, depends_on, workspace_id, position, condition, satisfied)
               VALUES (?, ?, ?, ?, ?, ?)""",
            (job_id, dependency_id, workspace_id, index, condition, None if met is None else int(met)),
        )
        pending += met is None
        failed = failed or met is False
    return pending, failed


_cascade = threading.local()


def job_ended(tx: Tx, job_id: str, state: JobState, *, now: int) -> None:
    """``job_id`` has just become terminal in ``state`` (inside the caller's transaction):
    decide its waiting dependents. Those with nothing left pending become claimable; those
    whose condition it fails are CANCELLED ``dependency_failed``, which ends them in turn.

    The cascade runs as a loop, not a recursion: a chain of thousands of jobs is one pass."""
    queue: deque[tuple[str, JobState]] | None = getattr(_cascade, "queue", None)
    if queue is not None:  # called from a cancellation below: the running loop takes it
        queue.append((job_id, state))
        return
    queue = _cascade.queue = deque([(job_id, state)])
    try:
        while queue:
            ended_id, ended_state = queue.popleft()
            _decide_dependents(tx, ended_id, ended_state, now)
    finally:
        _cascade.queue = None


def _decide_dependents(tx: Tx, job_id: str, state: JobState, now: int) -> None:
    from coordinator.store.queries.jobs import transition_job  # the store's transition hook

    for edge in tx.execute(
        "SELECT job_id, condition FROM job_dependencies WHERE depends_on = ? AND satisfied IS NULL", (job_id,)
    ).fetchall():
        met = condition_met(edge["condition"], state)
        if met is None:
            continue
        decided = tx.execute(
            "UPDATE job_dependencies SET satisfied = ? WHERE job_id = ? AND depends_on = ? AND satisfied IS NULL",
            (int(met), edge["job_id"], job_id),
        ).rowcount
        if not decided:
            continue  # compare-and-set: decided already
        dependent = tx.execute("SELECT * FROM jobs WHERE id = ?", (edge["job_id"],)).fetchone()
        if dependent is None or dependent["state"] != JobState.QUEUED.value:
            continue  # cancelled meanwhile: nothing waits any more
        if not met:
            transition_job(tx, dependent, JobState.CANCELLED, now=now, finished_at=now, reason=DEPENDENCY_FAILED,
                           dependencies_pending=0)
            job_changed(dependent["id"])  # its log followers learn it has ended
            continue
        # The count after this decrement, as committed writers left it (two dependencies may
        # end at once on PostgreSQL): the one that takes it to 0 releases the job.
        left = tx.execute(
            """UPDATE jobs SET dependencies_pending = dependencies_pending - 1,
                   reason = CASE WHEN dependencies_pending = 1 THEN NULL ELSE reason END
               WHERE id = ? AND state = 'QUEUED' AND dependencies_pending > 0
               RETURNING dependencies_pending""",
            (dependent["id"],),
        ).fetchone()
        if left is not None and left[0] == 0:
            work_released(dependent["workspace_id"])
