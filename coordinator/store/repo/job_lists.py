"""The SQL of ``GET /v0/jobs`` (the list and its filters) and of the ``/metrics`` job counts.

Written so that each form is served by an index at any size (issue 15; the plans are checked
by ``tests/test_query_plans.py``), in SQL both SQLite and PostgreSQL accept:

- no filter, or one state: the workspace's ``(workspace_id, id)`` or ``(workspace_id, state,
  id)`` index, walked newest first and stopped after ``limit`` rows;
- several states: one such walk per state, each bounded by ``limit`` and reading ids only,
  merged; then the page's rows (a single ``state IN (...)`` would read every job in those
  states and sort them);
- labels: driven by ``job_labels`` (kept by triggers, migration 0045), walked newest first on
  the first label; the others are checked per job. A selector no job has costs one seek;
- a creation window: the id walk is bounded by ids. A job's id is minted with its creation
  time (``common.ids.new_id("job", now)`` beside ``created_at = now``; ULIDs sort by time), so
  jobs created inside the window have ids inside ``[id at createdAfter - 1 s, id at
  createdBefore + 1 s]`` (the second of slack covers rounding); ``created_at`` itself is still
  compared exactly. Without the bounds, a window far in the past walked every newer job.
"""

from __future__ import annotations

from typing import Any

from ulid import ULID

from common.states import JobState
from coordinator.store.base import JobFilter


def list_jobs_query(workspace_id: str, filters: JobFilter, *, limit: int,
                    before_id: str | None) -> tuple[str, tuple[Any, ...]]:
    """(sql, params) selecting the workspace's jobs that pass ``filters``, newest first, at most
    ``limit`` of them, older than ``before_id`` when given (the page cursor)."""
    if filters.labels:
        return _by_labels(workspace_id, filters, limit=limit, before_id=before_id)
    states = filters.states or (None,)
    if len(states) == 1:
        where, params = _conditions("jobs", workspace_id, filters, states[0], before_id)
        return f"SELECT * FROM jobs WHERE {where} ORDER BY id DESC LIMIT ?", (*params, limit)
    # Several states: each walk and the merge read ids only (each walk through the covering
    # ``(workspace_id, state, id)`` index), and only the page's own rows are read whole: merging
    # whole rows read and sorted ``limit`` rows per state to keep ``limit`` of them.
    branches: list[str] = []
    params = []
    for n, state in enumerate(states):
        where, branch_params = _conditions("jobs", workspace_id, filters, state, before_id)
        walk = f"SELECT id FROM jobs WHERE {where} ORDER BY id DESC LIMIT ?"
        branches.append(f"SELECT id FROM ({walk}) AS s{n}")
        params.extend((*branch_params, limit))
    union = " UNION ALL ".join(branches)
    return (f"SELECT * FROM jobs WHERE workspace_id = ? AND id IN "
            f"(SELECT id FROM ({union}) AS merged ORDER BY id DESC LIMIT ?) ORDER BY id DESC",
            (workspace_id, *params, limit))


def _conditions(table: str, workspace_id: str, filters: JobFilter, state: JobState | None,
                before_id: str | None) -> tuple[str, list[Any]]:
    where = [f"{table}.workspace_id = ?"]
    params: list[Any] = [workspace_id]
    if state is not None:
        where.append(f"{table}.state = ?")
        params.append(state.value)
    if filters.created_after is not None:
        where.append(f"{table}.created_at > ? AND {table}.id >= ?")
        params.extend((filters.created_after, _job_id_at(filters.created_after - _SLACK_MS, upper=False)))
    if filters.created_before is not None:
        where.append(f"{table}.created_at < ? AND {table}.id <= ?")
        params.extend((filters.created_before, _job_id_at(filters.created_before + _SLACK_MS, upper=True)))
    if filters.array_id is not None:
        where.append(f"{table}.array_id = ?")
        params.append(filters.array_id)
    if before_id is not None:
        where.append(f"{table}.id < ?")
        params.append(before_id)
    return " AND ".join(where), params


_SLACK_MS = 1000


def _job_id_at(millis: int, *, upper: bool) -> str:
    """The lowest (or highest) job id that ``new_id`` can mint at ``millis``."""
    millis = min(max(millis, 0), 2**48 - 1)
    randomness = b"\xff" * 10 if upper else b"\x00" * 10
    return "job_" + str(ULID.from_bytes(millis.to_bytes(6, "big") + randomness)).lower()


def _by_labels(workspace_id: str, filters: JobFilter, *, limit: int,
               before_id: str | None) -> tuple[str, tuple[Any, ...]]:
    (first_key, first_value), *others = filters.labels
    where, params = _conditions("jobs", workspace_id, filters, None, before_id)
    clauses = ["l.workspace_id = ?", "l.key = ?", "l.value = ?", "jobs.id = l.job_id", where]
    all_params: list[Any] = [workspace_id, first_key, first_value, *params]
    if filters.states:
        clauses.append(f"jobs.state IN ({', '.join('?' for _ in filters.states)})")
        all_params.extend(state.value for state in filters.states)
    if before_id is not None:
        clauses.append("l.job_id < ?")  # also bounds the index walk, not only the join
        all_params.append(before_id)
    for key, value in others:
        clauses.append("EXISTS (SELECT 1 FROM job_labels AS o WHERE o.workspace_id = jobs.workspace_id "
                       "AND o.key = ? AND o.value = ? AND o.job_id = jobs.id)")
        all_params.extend((key, value))
    # CROSS JOIN: SQLite keeps the order written (labels first; left to itself, it walked the
    # whole workspace and sorted); PostgreSQL reads it as a plain join and plans it itself.
    sql = (f"SELECT jobs.* FROM job_labels AS l CROSS JOIN jobs WHERE {' AND '.join(clauses)} "
           "ORDER BY l.job_id DESC LIMIT ?")
    return sql, (*all_params, limit)


# One seek per state into ``jobs_by_state`` (0045): a count that never reads the table.
COUNT_JOBS_IN_STATE = "SELECT COUNT(*) FROM jobs WHERE state = ?"
