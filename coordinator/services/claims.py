"""Which job a claim gets, and the assignment it answers with.

An agent claims with its free capacity. The candidates are the best QUEUED job of each
placement shape it can run (its labels hold the shape's selector, the shape's resources fit,
the shape's array is below its ``maxParallel``, dependencies are met and any retry backoff is
over); fair share between submitters (``coordinator.services.fairness``) picks one; the
assignment is a compare-and-set on the job's state and epoch. A held workspace (past its hard
cap) or a draining agent gets nothing.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from typing import Any

from common.protocol import Assignment
from common.states import AgentState, JobState
from coordinator import scheduler
from coordinator.services import arrays, fairness
from coordinator.services.tx import Tx
from coordinator.store.db import Row
from coordinator.store.queries.jobs import transition_job
from coordinator.store.repo import claims as rows
from coordinator.store.repo.webhooks import note_webhook_count
from coordinator.store.sqlite_core import loads_or_none


# A queue's shapes repeat from one claim to the next: their selectors and resources are decoded
# once. Never mutated by the callers; bounded, since selectors may be one per run.
@functools.lru_cache(maxsize=4096)
def _decoded(text: str) -> dict[str, Any]:
    value: dict[str, Any] = json.loads(text)
    return value


def _decoded_or_none(text: str | None) -> dict[str, Any] | None:
    return _decoded(text) if text is not None else None


def claimable_heads(tx: Tx, workspace_id: str, agent_labels: dict[str, str],
                    free: dict[str, Any], defaults: dict[str, Any] | None, *,
                    now: int | None = None) -> list[fairness.Head]:
    """The best QUEUED job (highest priority, then oldest) of each placement shape the agent
    can run (issue 16): its labels contain the shape's selector, the shape's resources fit its
    free capacity, and its array (if any) is below its maxParallel. However many jobs it cannot
    run are queued ahead, they cost nothing: the decision is taken once per distinct shape, and
    each shape it can run is one index seek. ``fairness.choose`` picks among them. Jobs whose
    dependencies are pending, or whose retry backoff lasts past ``now`` (None: any backoff is
    over), are passed over."""
    return [head for head, _row in _heads_with_rows(tx, workspace_id, agent_labels, free, defaults, now=now)]


def _heads_with_rows(tx: Tx, workspace_id: str, agent_labels: Mapping[str, str],
                     free: dict[str, Any], defaults: dict[str, Any] | None, *,
                     now: int | None = None) -> list[tuple[fairness.Head, Row]]:
    """``claimable_heads``, each with its job's whole row (as locked on PostgreSQL)."""
    held_until = now if now is not None else 2**62
    shapes = [shape for shape in rows.queued_shapes(tx, workspace_id)
              if scheduler.labels_match(_decoded(shape.labels), agent_labels)
              and scheduler.fits(scheduler.effective_demand(_decoded_or_none(shape.resources), defaults), free)]
    full = arrays.full_arrays(tx, workspace_id, (shape.array_id for shape in shapes if shape.array_id is not None))
    heads: list[tuple[fairness.Head, Row]] = []
    for shape in shapes:
        if shape.array_id in full:
            continue
        row = rows.best_of_shape(tx, workspace_id, shape, held_until)
        if row is not None:
            heads.append((fairness.Head(job_id=row["id"], priority=row["priority"], created_at=row["created_at"],
                                        submitter=shape.submitted_by or "", array_id=shape.array_id), row))
    return heads


def _turns(tx: Tx, workspace_id: str, heads: list[fairness.Head]) -> dict[str, int]:
    """The submitters' turns ``fairness.choose`` needs: none to read when the heads are all one
    submitter's (the usual case: then the turns cannot change the choice; a statement saved)."""
    submitters = {head.submitter for head in heads}
    return fairness.turns_of(tx, workspace_id, submitters) if len(submitters) > 1 else {}


def best_claimable(tx: Tx, workspace_id: str, agent_labels: dict[str, str],
                   free: dict[str, Any], defaults: dict[str, Any] | None, *, now: int | None = None) -> str | None:
    """The id of the job the agent would be given at ``now`` (see ``claimable_heads`` and
    ``coordinator.services.fairness``), or None."""
    heads = claimable_heads(tx, workspace_id, agent_labels, free, defaults, now=now)
    chosen = fairness.choose(heads, _turns(tx, workspace_id, heads))
    return chosen.job_id if chosen is not None else None


def claimant(tx: Tx, workspace_id: str, agent_id: str) -> tuple[dict[str, str], bool] | None:
    """The agent's labels and whether it takes new work now (READY, not draining); None once
    it is deleted."""
    agent = rows.claimant_row(tx, workspace_id, agent_id)
    if agent is None:
        return None
    takes_work = agent["state"] == AgentState.READY.value and not agent["drain_requested"]
    return dict(_decoded(agent["labels"])), takes_work


def claim_look(row: Row | None) -> tuple[dict[str, str], bool, bool] | None:
    """``claimant`` and whether the workspace has any QUEUED job, from a row of
    ``repo.claims.CLAIM_LOOK_SQL``; None once the agent is deleted."""
    if row is None:
        return None
    takes_work = row["state"] == AgentState.READY.value and not row["drain_requested"]
    return dict(_decoded(row["labels"])), takes_work, bool(row["queued"])


def claim_next_job(tx: Tx, agent_id: str, free_map: dict[str, Any], defaults_map: dict[str, Any] | None,
                   now: int) -> Assignment | None:
    """Assign the agent the best job it can run (``best_claimable``), if any, inside ``tx``.

    The assignment is a compare-and-set on the job's state and epoch (``transition_job``):
    where another transaction assigned the same job first, it raises ``StaleState`` and the
    write runs again on the data as it now stands, so a job is never assigned twice."""
    agent = rows.claiming_agent(tx, agent_id)  # with the hard-cap hold and the webhook count
    if agent is None or agent["drain_requested"] or agent["state"] != AgentState.READY.value:
        return None
    if agent["held"]:
        return None
    workspace_id = agent["workspace_id"]
    note_webhook_count(tx, workspace_id, int(agent["webhooks"]))
    candidates = _heads_with_rows(tx, workspace_id, _decoded(agent["labels"]), free_map, defaults_map, now=now)
    heads = [head for head, _row in candidates]
    job_rows = {head.job_id: row for head, row in candidates}
    turns = _turns(tx, workspace_id, heads)
    while True:
        picked = fairness.choose(heads, turns)
        if picked is None:
            return None
        chosen = job_rows[picked.job_id]  # read (and locked) by its seek: not read again
        epoch = chosen["epoch"] + 1
        try:
            transition_job(tx, chosen, JobState.ASSIGNED, now=now, agent_id=agent_id, epoch=epoch,
                           assigned_at=now, assignment_confirmed_at=None)
        except arrays.ArrayFull:
            # Another claim took the array's last slot since it was read (compare-and-set).
            heads = [head for head in heads if head.array_id != picked.array_id]
            continue
        fairness.record_turn(tx, workspace_id, picked.submitter)
        break
    demand = scheduler.effective_demand(loads_or_none(chosen["resources"]), defaults_map)
    return Assignment(
        jobId=chosen["id"], epoch=epoch, command=chosen["command"], env=json.loads(chosen["env"]),
        timeoutSeconds=chosen["timeout_seconds"], cpus=demand.cpus or None,
        memoryMb=demand.memory_mb or None, gpus=demand.gpus, name=chosen["name"],
    )
