"""Job arrays (issue 16): ``count`` tasks of one manifest, at most ``maxParallel`` running.

An array is a row of ``job_arrays`` and ``count`` ordinary jobs carrying its id and their index
(``TANVRIT_ARRAY_INDEX``, ``TANVRIT_ARRAY_COUNT`` and ``TANVRIT_ARRAY_ID`` in their env). A task
is claimed, run, cancelled and billed as any job; what is particular to arrays is here:

- ``job_arrays.active`` counts the tasks that are ASSIGNED or RUNNING. Entering that set (a
  claim) takes a slot by compare-and-set, ``active = active + 1 WHERE active < max_parallel``,
  and a claim that finds no slot (``ArrayFull``) changes nothing; leaving it (any transition to
  QUEUED or a terminal state) gives the slot back. Both happen inside the transaction of the
  transition itself, so the limit holds however many claims race, on either database.
- The claim skips an array at its limit as one placement shape (``full_arrays``), so a full
  array of 10,000 queued tasks costs a claim one lookup, not a walk past its tasks.
- A task LOST with its agent gives its slot back: the agent is gone, and the array goes on.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping

from common.states import JobState
from coordinator.services import wakeups
from coordinator.store.base import ArrayRecord, JobRecord
from coordinator.store.db import Tx
from coordinator.store.repo import arrays as array_rows

ACTIVE_STATES = frozenset({JobState.ASSIGNED, JobState.RUNNING})
# The reason a QUEUED task shows while its array has maxParallel tasks ASSIGNED or RUNNING.
ARRAY_MAX_PARALLEL = "array_max_parallel"


class ArrayFull(Exception):
    """The array already has ``maxParallel`` tasks ASSIGNED or RUNNING: the claim takes another job."""

    def __init__(self, array_id: str) -> None:
        super().__init__(f"job array {array_id} is at its maxParallel")
        self.array_id = array_id


def task_env(env: Mapping[str, str], array_id: str, index: int, count: int) -> dict[str, str]:
    """A task's env: the manifest's, plus where it sits in its array."""
    return {**env, "TANVRIT_ARRAY_ID": array_id, "TANVRIT_ARRAY_INDEX": str(index),
            "TANVRIT_ARRAY_COUNT": str(count)}


def manifest_bytes(template: JobRecord) -> int:
    """What one task's copy of the manifest takes in its row (command, name, labels, resources,
    env as stored, the array variables aside), in bytes: the unit of ``MAX_ARRAY_MANIFEST_BYTES``."""
    parts = [template.command, template.name or "", json.dumps(template.labels), json.dumps(template.env),
             "" if template.resources is None else json.dumps(template.resources),
             "" if template.retry is None else json.dumps(template.retry)]
    return sum(len(part.encode()) for part in parts)


def insert_array(tx: Tx, array: ArrayRecord, template: JobRecord, task_ids: list[str], *,
                 idempotency_key: str | None, request_hash: str | None) -> None:
    """The array's row and every task's, in the caller's transaction: one INSERT, then the tasks
    as one batch. ``template`` is the shared manifest; ``task_ids`` sort in index order."""
    array_rows.insert_array_row(tx, array_id=array.id, workspace_id=array.workspace_id, name=array.name,
                                count=array.count, max_parallel=array.max_parallel,
                                submitted_by=array.submitted_by, created_at=array.created_at,
                                idempotency_key=idempotency_key, request_hash=request_hash)
    labels = json.dumps(template.labels)
    resources = None if template.resources is None else json.dumps(template.resources)
    array_rows.insert_task_rows(tx, [
        (task_id, array.workspace_id, template.type, template.command, template.name, labels, resources,
         json.dumps(task_env(template.env, array.id, index, array.count)), template.timeout_seconds,
         array.created_at, template.reason, template.priority, array.id, index, array.submitted_by,
         None if template.retry is None else json.dumps(template.retry))
        for index, task_id in enumerate(task_ids)
    ])


def on_transition(tx: Tx, workspace_id: str, array_id: str | None, old: JobState, new: JobState) -> None:
    """Keep the array's ``active`` count with a task's transition; call before the job's row
    changes. Raises ``ArrayFull`` (nothing written) when a claim finds no slot. A slot given
    back is news for the claims waiting in the workspace (on every agent, not only the one
    whose task ended): they are woken once the write commits."""
    if array_id is None:
        return
    was_active, is_active = old in ACTIVE_STATES, new in ACTIVE_STATES
    if is_active and not was_active:
        if not array_rows.take_slot(tx, array_id):
            raise ArrayFull(array_id)
    elif was_active and not is_active:
        array_rows.give_back_slot(tx, array_id)
        wakeups.work_released(workspace_id)


def full_arrays(tx: Tx, workspace_id: str, array_ids: Iterable[str]) -> set[str]:
    """Those of ``array_ids`` (arrays of ``workspace_id``) that have no free slot."""
    return array_rows.full_arrays(tx, workspace_id, sorted(set(array_ids)))


def summary(tx: Tx, array_id: str) -> dict[JobState, int]:
    """How many of the array's tasks are in each state (states with none left out)."""
    return array_rows.task_counts(tx, array_id)


def array_state(count: int, counts: Mapping[JobState, int]) -> JobState:
    """One state for a whole array: QUEUED until a task is claimed, RUNNING while any task is
    not terminal, then SUCCEEDED when every task succeeded, CANCELLED when any was cancelled,
    FAILED otherwise (a task FAILED, TIMED_OUT or LOST)."""
    queued = counts.get(JobState.QUEUED, 0)
    if queued == count:
        return JobState.QUEUED
    if any(counts.get(state, 0) for state in (JobState.QUEUED, *ACTIVE_STATES)):
        return JobState.RUNNING
    if counts.get(JobState.SUCCEEDED, 0) == count:
        return JobState.SUCCEEDED
    if counts.get(JobState.CANCELLED, 0):
        return JobState.CANCELLED
    return JobState.FAILED
