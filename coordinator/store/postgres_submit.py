"""A plain submission on PostgreSQL in one statement: the job, its audit row, and the check
that the workspace has no webhook, sent as one round trip that is its own transaction.

The general write (``services.job_requests.submit_job`` in ``PostgresCore._write``) costs five
statements: BEGIN, the job's INSERT, the webhooks lookup (``job.created`` is queued for each
subscriber), the audit row's INSERT and COMMIT, each a round trip and ~90 us of replica CPU in
psycopg (docs/deployment.md). Most submissions need none of what makes that path general: no
``dependsOn``, a workspace without webhooks, and no earlier job holding their
``Idempotency-Key`` (the CLI sends one with every submission). Those are written here by one
statement whose data-modifying CTEs PostgreSQL runs atomically: the job is inserted only if the
workspace has no live webhook (``hooks``) and its key, if any, is free (``taken``), and the
audit row only with the job (``FROM job``). Sent on an autocommit connection, the statement
is its own transaction, so no BEGIN and no COMMIT. When the workspace has a webhook, nothing is
written and the general path runs (one statement more for those workspaces: the outbox rows
need the job's rendered payload); so does a key already taken (a retry, which the API has
mostly answered before: the general path replays the earlier job, refuses another body, or
releases an expired key), and a key taken by a concurrent submission between the two (the
unique index refuses the second insert).

The webhook check is as strong as the general path's: that path reads the webhooks after its
INSERT, at READ COMMITTED, so a webhook committed while the submission is in flight may or may
not be seen there either; one committed before the request began is always seen.

A pooled connection found gone when the statement is sent (``_check_cheaply`` lets through a
backend the server ended a moment ago) leaves the outcome unknown: the statement may have
committed before the connection dropped. It is sent again on another connection; the job's id
is fixed before the first send, so ``ON CONFLICT (id) DO NOTHING`` makes the second run write
nothing if the first committed, and the job is then read back by its id (its audit row
committed with it). Values carry explicit casts: ``INSERT ... SELECT`` cannot take its
parameters' types from the columns as ``VALUES`` does, and a NULL would otherwise be ``text``.
"""

from __future__ import annotations

import json
from typing import Any

import psycopg
import psycopg.errors

from coordinator.store.base import AuditRecord, JobRecord
from coordinator.store.db import Row
from coordinator.store.postgres_core import WRITE_TRIES, PostgresCore, _connection_lost, _outage_is_unavailable
from coordinator.store.postgres_core import translate as _translate
from coordinator.store.sqlite_core import dumps_or_none

__all__ = ["SUBMIT_SQL", "run_submit"]

SUBMIT_SQL = _translate("""
WITH hooks AS (
    SELECT 1 FROM webhooks WHERE workspace_id = CAST(? AS TEXT) AND deleted_at IS NULL LIMIT 1
), taken AS (
    SELECT 1 FROM jobs WHERE workspace_id = CAST(? AS TEXT) AND idempotency_key = CAST(? AS TEXT) LIMIT 1
), job AS (
    INSERT INTO jobs (id, workspace_id, state, type, command, name, labels, resources, env,
                      timeout_seconds, created_at, reason, priority, retry, submitted_by,
                      idempotency_key, request_hash)
    SELECT CAST(? AS TEXT), CAST(? AS TEXT), CAST(? AS TEXT), CAST(? AS TEXT), CAST(? AS TEXT),
           CAST(? AS TEXT), CAST(? AS TEXT), CAST(? AS TEXT), CAST(? AS TEXT),
           CAST(? AS BIGINT), CAST(? AS BIGINT), CAST(? AS TEXT), CAST(? AS BIGINT), CAST(? AS TEXT),
           CAST(? AS TEXT), CAST(? AS TEXT), CAST(? AS TEXT)
    WHERE NOT EXISTS (SELECT 1 FROM hooks) AND NOT EXISTS (SELECT 1 FROM taken)
    ON CONFLICT (id) DO NOTHING
    RETURNING *
), audit AS (
    INSERT INTO audit_events (id, workspace_id, at, actor, action, target, result, status, error_code,
                              request_id, source, method, path)
    SELECT CAST(? AS TEXT), CAST(? AS TEXT), CAST(? AS BIGINT), CAST(? AS TEXT), CAST(? AS TEXT), job.id,
           CAST(? AS TEXT), CAST(? AS BIGINT), CAST(? AS TEXT), CAST(? AS TEXT), CAST(? AS TEXT),
           CAST(? AS TEXT), CAST(? AS TEXT)
    FROM job
)
SELECT * FROM job
""")

_JOB_BY_ID_SQL = _translate("SELECT * FROM jobs WHERE id = ?")


def _params(job: JobRecord, audit: AuditRecord, idempotency_key: str | None,
            request_hash: str | None) -> tuple[Any, ...]:
    return (
        job.workspace_id,
        job.workspace_id, idempotency_key,
        job.id, job.workspace_id, job.state.value, job.type, job.command, job.name, json.dumps(job.labels),
        dumps_or_none(job.resources), json.dumps(job.env), job.timeout_seconds, job.created_at, job.reason,
        job.priority, dumps_or_none(job.retry), job.submitted_by, idempotency_key, request_hash,
        audit.id, audit.workspace_id, audit.at, audit.actor, audit.action, audit.result, audit.status,
        audit.error_code, audit.request_id, audit.source, audit.method, audit.path,
    )


def run_submit(core: PostgresCore, job: JobRecord, audit: AuditRecord, *, idempotency_key: str | None = None,
               request_hash: str | None = None) -> Row | None:
    """Write ``job`` and ``audit`` (targeted at the job) in one statement, in the caller's
    thread: the job's row as stored, or None when nothing was written (the workspace has a
    webhook, or ``idempotency_key`` is already taken): then the general path decides."""
    params = _params(job, audit, idempotency_key, request_hash)
    sent_before = False  # a run whose connection was lost may have committed
    with _outage_is_unavailable():
        for tries_left in reversed(range(WRITE_TRIES)):
            with core._pool.connection() as conn:
                core._count(1)
                try:
                    rows = conn.execute(SUBMIT_SQL, params).fetchall()
                except psycopg.errors.UniqueViolation:
                    # A concurrent submission took the same Idempotency-Key first (committed
                    # while this one waited on the key's index entry): nothing was written.
                    return None
                except psycopg.Error as exc:
                    if not tries_left or not _connection_lost(conn, exc):
                        raise
                    sent_before = True
                    continue
                if rows:
                    core.commits += 1
                    inserted: Row = rows[0]
                    return inserted
                if not sent_before:
                    return None
                core._count(1)
                # Nothing written by this run: the lost one committed the job (and its audit
                # row), or the workspace has a webhook, or the key was taken.
                found = conn.execute(_JOB_BY_ID_SQL, (job.id,)).fetchall()
                return found[0] if found else None
    raise AssertionError("unreachable")
