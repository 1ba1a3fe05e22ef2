"""Data access for claims: the placement shapes of a workspace's queue, the best job of a
shape, the claiming agent and the chosen job."""

from __future__ import annotations

import functools
import json

from coordinator.store.db import Dialect, Row, Tx
from coordinator.store.repo.jobs import CLAIMABLE_NOW_SQL


# The placement shapes (selector, resources, submitter, array) of a workspace's QUEUED jobs, and
# the best job of one shape: both served by ``jobs_claim_shapes`` (0040), the first by skip-ahead
# over it. The selector test is also made here, in SQL, after DISTINCT (MATERIALIZED keeps SQLite
# from pushing it into the index walk, which would lose the skip-ahead), so that a queue of many
# distinct selectors the agent lacks (a label per run) costs a C-side JSON check per shape
# rather than a Python one. The index hint and the label test differ by database (``Dialect``).
@functools.cache
def _shapes_sql(dialect: Dialect) -> str:
    return f"""
WITH shapes AS MATERIALIZED (
    SELECT DISTINCT labels, resources, submitted_by, array_id FROM jobs {dialect.indexed_by("jobs_claim_shapes")}
    WHERE workspace_id = :workspace AND state = 'QUEUED')
SELECT labels, resources, submitted_by, array_id FROM shapes
WHERE labels = '{{}}' OR {dialect.labels_contain(":agent_labels", "shapes.labels")}
"""


@functools.cache
def _best_of_shape_sql(dialect: Dialect, null_resources: bool, null_submitter: bool, null_array: bool) -> str:
    # ``= ?`` or ``IS NULL`` per column, never ``IS NOT DISTINCT FROM ?``: PostgreSQL cannot seek
    # an index on the latter. And the ORDER BY names the shape's columns too, constant here: a
    # column fixed by ``IS NULL`` does not count as fixed to PostgreSQL's planner, which would
    # then sort the whole shape instead of reading ``jobs_claim_shapes`` in order and stopping at
    # the first row it can lock (tests/test_postgres_claim_plan.py).
    # SKIP LOCKED (PostgreSQL): a job another replica is claiming right now is passed over
    # rather than waited for; the claim's compare-and-set is what refuses a double assignment.
    resources = "resources IS NULL" if null_resources else "resources = ?"
    submitter = "submitted_by IS NULL" if null_submitter else "submitted_by = ?"
    array = "array_id IS NULL" if null_array else "array_id = ?"
    return f"""
SELECT id, priority, created_at FROM jobs {dialect.indexed_by("jobs_claim_shapes")}
WHERE workspace_id = ? AND state = 'QUEUED' AND labels = ? AND {resources}
  AND {submitter} AND {array} AND {CLAIMABLE_NOW_SQL}
ORDER BY labels, resources, submitted_by, array_id, priority DESC, created_at, id LIMIT 1 {dialect.skip_locked}
"""


def queued_shapes(tx: Tx, workspace_id: str, agent_labels: dict[str, str]) -> list[Row]:
    """The distinct (labels, resources, submitted_by, array_id) of the workspace's QUEUED jobs
    whose selector ``agent_labels`` may satisfy (the database's own label test)."""
    params = {"workspace": workspace_id, "agent_labels": json.dumps(agent_labels)}
    return tx.execute(_shapes_sql(tx.dialect), params).fetchall()


def best_of_shape(tx: Tx, workspace_id: str, shape: Row, held_until: int) -> Row | None:
    """``id``, ``priority``, ``created_at`` of the shape's best QUEUED job claimable at
    ``held_until`` (dependencies met, backoff over): highest priority, then oldest."""
    keys = (shape["resources"], shape["submitted_by"], shape["array_id"])
    sql = _best_of_shape_sql(tx.dialect, *(key is None for key in keys))
    params = (workspace_id, shape["labels"], *(key for key in keys if key is not None), held_until)
    row: Row | None = tx.execute(sql, params).fetchone()
    return row


def claiming_agent(tx: Tx, agent_id: str) -> Row | None:
    """The agent's row, None once it is deleted."""
    row: Row | None = tx.execute("SELECT * FROM agents WHERE id = ? AND deleted_at IS NULL", (agent_id,)).fetchone()
    return row


def job_row(tx: Tx, job_id: str) -> Row:
    row: Row = tx.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
    return row
