"""Data access for claims: the placement shapes of a workspace's queue, the best job of a
shape, the claiming agent and the chosen job."""

from __future__ import annotations

import functools
from dataclasses import dataclass

from coordinator.store.db import Dialect, Row, Tx
from coordinator.store.repo.jobs import CLAIMABLE_NOW_SQL

# The placement shapes (selector, resources, submitter, array) of a workspace's QUEUED jobs, and
# the best job of one shape: both served by ``jobs_claim_shapes`` (0066), keyed by the shape as
# one text (``_shape_key``: the four columns joined by newlines, which none of them holds). The
# shapes are listed by seeking from each key to the next (a recursive query: one seek per shape,
# however many jobs each holds, reading the index only), never by walking the queue; the best job
# of a shape is an equality on its key, read in the index's order. The expression must be the
# index's, word for word, for the database to use it.
_SEPARATOR = "\n"


def _shape_key(dialect: Dialect, alias: str) -> str:
    newline = "chr(10)" if dialect.name == "postgresql" else "char(10)"
    return (f"({alias}.labels || {newline} || COALESCE({alias}.resources, '') || {newline}"
            f" || COALESCE({alias}.submitted_by, '') || {newline} || COALESCE({alias}.array_id, ''))")


@dataclass(frozen=True)
class Shape:
    """A placement shape: ``key`` as the index holds it, and its parts (None for '')."""

    key: str
    labels: str
    resources: str | None
    submitted_by: str | None
    array_id: str | None

    @classmethod
    def of(cls, key: str) -> Shape:
        labels, resources, submitted_by, array_id = key.split(_SEPARATOR)
        return cls(key, labels, resources or None, submitted_by or None, array_id or None)


@functools.cache
def _shapes_sql(dialect: Dialect) -> str:
    hint = dialect.indexed_by("jobs_claim_shapes")
    first, later = _shape_key(dialect, "first"), _shape_key(dialect, "later")
    return f"""
WITH RECURSIVE shapes(key) AS (
    SELECT (SELECT {first} FROM jobs AS first {hint}
            WHERE first.workspace_id = :workspace AND first.state = 'QUEUED' ORDER BY {first} LIMIT 1)
    UNION ALL
    SELECT (SELECT {later} FROM jobs AS later {hint}
            WHERE later.workspace_id = :workspace AND later.state = 'QUEUED' AND {later} > shapes.key
            ORDER BY {later} LIMIT 1)
    FROM shapes WHERE shapes.key IS NOT NULL
)
SELECT key FROM shapes WHERE key IS NOT NULL
"""


@functools.cache
def _best_of_shape_sql(dialect: Dialect) -> str:
    # SKIP LOCKED (PostgreSQL): a job another replica is claiming right now is passed over
    # rather than waited for; the claim's compare-and-set is what refuses a double assignment.
    # The whole row: the claim assigns the head it picks without reading it again (a statement
    # less per claim); the row is locked and read from the table anyway.
    return f"""
SELECT * FROM jobs {dialect.indexed_by("jobs_claim_shapes")}
WHERE workspace_id = ? AND state = 'QUEUED' AND {_shape_key(dialect, "jobs")} = ? AND {CLAIMABLE_NOW_SQL}
ORDER BY priority DESC, created_at, id LIMIT 1 {dialect.skip_locked}
"""


def queued_shapes(tx: Tx, workspace_id: str) -> list[Shape]:
    """The distinct placement shapes of the workspace's QUEUED jobs, in the index's order."""
    rows = tx.execute(_shapes_sql(tx.dialect), {"workspace": workspace_id}).fetchall()
    return [Shape.of(row[0]) for row in rows]


def best_of_shape(tx: Tx, workspace_id: str, shape: Shape, held_until: int) -> Row | None:
    """The row of the shape's best QUEUED job claimable at ``held_until`` (dependencies met,
    backoff over): highest priority, then oldest."""
    row: Row | None = tx.execute(_best_of_shape_sql(tx.dialect), (workspace_id, shape.key, held_until)).fetchone()
    return row


def claiming_agent(tx: Tx, agent_id: str) -> Row | None:
    """What a claim needs of its agent, None once it is deleted: ``workspace_id``, ``labels``,
    ``state``, ``drain_requested``; with them, in the same statement (each is a round trip on
    PostgreSQL), ``held`` (the workspace is past its hard cap: ``repo.billing.workspace_held``)
    and ``webhooks`` (how many live webhooks the workspace has: ``repo.webhooks.live_webhooks``).
    Also the transaction's queries read ``jobs_claim_shapes`` in its order, whatever the
    planner's statistics say (``Dialect.ordered_seeks``)."""
    row: Row | None = tx.execute(
        f"""SELECT a.workspace_id, a.labels, a.state, a.drain_requested,
                   COALESCE((SELECT b.hard_cap_reached FROM billing_state b WHERE b.workspace_id = a.workspace_id), 0)
                       AS held,
                   (SELECT COUNT(*) FROM webhooks w WHERE w.workspace_id = a.workspace_id AND w.deleted_at IS NULL)
                       AS webhooks,
                   {tx.dialect.ordered_seeks} AS ordered_seeks
            FROM agents a WHERE a.id = ? AND a.deleted_at IS NULL""", (agent_id,)).fetchone()
    return row


# ``claimant_row``'s columns and ``queued`` (whether the workspace has any QUEUED job: the seek
# of ``has_queued``) in one statement: what a claim request looks at before its first pass. Run
# alone, not in a transaction (on PostgreSQL a read snapshot adds a BEGIN and a COMMIT).
# Parameters: workspace, agent, workspace.
CLAIM_LOOK_SQL = """SELECT labels, state, drain_requested,
       EXISTS (SELECT 1 FROM jobs WHERE workspace_id = ? AND state = 'QUEUED') AS queued
FROM agents WHERE id = ? AND workspace_id = ? AND deleted_at IS NULL"""


def claimant_row(tx: Tx, workspace_id: str, agent_id: str) -> Row | None:
    """The agent's labels, state and drain flag, None once it is deleted."""
    row: Row | None = tx.execute(
        "SELECT labels, state, drain_requested FROM agents WHERE id = ? AND workspace_id = ? AND deleted_at IS NULL",
        (agent_id, workspace_id)).fetchone()
    return row
