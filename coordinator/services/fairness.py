"""Fair share between submitters within a workspace (issue 16), and each queued job's position.

Dispatch order, for the jobs an agent can run:

1. Higher ``priority`` first (0-100).
2. Within the best priority, **round robin between submitters**: the submitter served least
   recently goes first (``submitter_turns``: a workspace-wide turn number recorded at each
   claim; never served counts as turn 0). Ties (two submitters never served) go to the one whose
   waiting job is older.
3. Within one submitter, oldest first (an array's tasks in index order).

So one user's 10,000 queued jobs hold back another user's single job of the same priority for
at most one claim: the next claim that can run it takes it. There are no weights and no
memory of usage beyond the last turn (Slurm's fair-share factor decays usage over time; this
is its simplest form, and cheap: the claim reads one row per submitter with a job it can run).

A job's ``position`` (1 = next) applies the same order to the whole queue, ignoring placement:
the jobs of higher priority, plus, at its priority, the jobs of its own submitter queued before
it and, from each other submitter, as many as round robin serves first: ``min(n, rank)`` or
``min(n, rank + 1)`` when that submitter's turn comes before its own. Labels, resources, array
limits and jobs that arrive later can change it: it is an estimate, cheap enough for every view
(three counts over the ``jobs_queue_position`` index).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from coordinator.store.db import Tx
from coordinator.store.repo import queue


@dataclass(frozen=True)
class Head:
    """The best QUEUED job of one placement shape (selector, resources, submitter, array)."""

    job_id: str
    priority: int
    created_at: int
    submitter: str  # '' for jobs submitted before submitters were recorded
    array_id: str | None = None


def choose(heads: Sequence[Head], turns: Mapping[str, int]) -> Head | None:
    """The job to dispatch among ``heads`` (jobs the agent can run), by the order above."""
    if not heads:
        return None
    top = max(head.priority for head in heads)
    level = [head for head in heads if head.priority == top]
    oldest: dict[str, Head] = {}
    for head in level:
        held = oldest.get(head.submitter)
        if held is None or (head.created_at, head.job_id) < (held.created_at, held.job_id):
            oldest[head.submitter] = head
    return min(oldest.values(), key=lambda head: (turns.get(head.submitter, 0), head.created_at, head.job_id))


def turns_of(tx: Tx, workspace_id: str, submitters: Iterable[str]) -> dict[str, int]:
    """The last turn of each of ``submitters`` (absent: never served)."""
    return queue.turns_of(tx, workspace_id, sorted(set(submitters)))


def record_turn(tx: Tx, workspace_id: str, submitter: str) -> None:
    """``submitter`` was just served: its turn becomes the workspace's newest."""
    queue.record_turn(tx, workspace_id, submitter)


@dataclass(frozen=True)
class QueuedJob:
    """What a position needs of a QUEUED job."""

    job_id: str
    priority: int
    created_at: int
    submitter: str


@dataclass(frozen=True)
class _Level:
    ahead: int  # queued jobs of higher priority
    submitters: dict[str, tuple[int, int]]  # submitter -> (queued at this priority, oldest created_at)


def position(job: QueuedJob, level: _Level, rank: int, turns: Mapping[str, int]) -> int:
    """``job``'s place (1 = next) given its priority level, its ``rank`` among its submitter's
    jobs at that level (0 = its oldest) and the submitters' turns: see the module docstring."""
    mine = (turns.get(job.submitter, 0), level.submitters.get(job.submitter, (0, job.created_at))[1])
    others = 0
    for submitter, (queued, oldest) in level.submitters.items():
        if submitter == job.submitter:
            continue
        first = (turns.get(submitter, 0), oldest) < mine
        others += min(queued, rank + (1 if first else 0))
    return level.ahead + rank + others + 1


def positions(tx: Tx, workspace_id: str, jobs: Sequence[QueuedJob]) -> dict[str, int]:
    """The position of each of ``jobs`` (all QUEUED in ``workspace_id``)."""
    levels = {priority: _Level(queue.queued_above(tx, workspace_id, priority),
                               queue.queued_by_submitter(tx, workspace_id, priority))
              for priority in {job.priority for job in jobs}}
    turns = turns_of(tx, workspace_id, {s for level in levels.values() for s in level.submitters})
    groups: dict[tuple[int, str], list[QueuedJob]] = {}
    for job in jobs:
        groups.setdefault((job.priority, job.submitter), []).append(job)
    found: dict[str, int] = {}
    for (priority, submitter), group in groups.items():
        ranks = _ranks(tx, workspace_id, priority, submitter, group)
        for job in group:
            found[job.job_id] = position(job, levels[priority], ranks[job.job_id], turns)
    return found


def _ranks(tx: Tx, workspace_id: str, priority: int, submitter: str,
           group: list[QueuedJob]) -> dict[str, int]:
    """Each job's rank among its submitter's QUEUED jobs of its priority (0 = oldest): a count up
    to the oldest of ``group`` (in the index), then the ids from there to the newest, so that a
    page of jobs costs one count and one short range, not a count each."""
    group = sorted(group, key=lambda job: (job.created_at, job.job_id))
    first, last = group[0], group[-1]
    base = queue.queued_before(tx, workspace_id, priority, submitter, first.created_at, first.job_id)
    if len(group) == 1:
        return {first.job_id: base}
    ids = queue.queued_between(tx, workspace_id, priority, submitter, (first.created_at, first.job_id),
                               (last.created_at, last.job_id))
    ranks = {job_id: base + offset for offset, job_id in enumerate(ids)}
    # A job that left the queue since it was read is ranked where it was: after the one before.
    return {job.job_id: ranks.get(job.job_id, base) for job in group}
