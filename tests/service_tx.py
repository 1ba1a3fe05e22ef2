"""A real SQLite transaction for the service tests: a migrated store file in a temp dir, one
``BEGIN IMMEDIATE`` open while the test runs (the ``tx`` a store write hands a service), and
small helpers that insert the rows a rule needs."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from coordinator.store.db import SqliteTx, Tx
from coordinator.store.sqlite_core import open_sync_connection


@contextmanager
def open_tx(path: Path) -> Iterator[SqliteTx]:
    """One write transaction on the store at ``path`` (created and migrated), committed at exit."""
    with open_sync_connection(path) as conn:
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield SqliteTx(conn)
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")


def add_workspace(tx: Tx, workspace_id: str, *, plan: str = "payg", created_at: int = 0) -> None:
    tx.execute("INSERT INTO workspaces (id, name, plan, created_at) VALUES (?, ?, ?, ?)",
               (workspace_id, workspace_id, plan, created_at))


def add_agent(tx: Tx, agent_id: str, workspace_id: str, *, labels: dict[str, str] | None = None,
              state: str = "READY", registered_at: int = 0) -> None:
    tx.execute(
        """INSERT INTO agents (id, workspace_id, name, state, labels, capacity, version, registered_at,
                               last_heartbeat_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)""",
        (agent_id, workspace_id, agent_id, state, json.dumps(labels or {}),
         json.dumps({"cpus": 8, "memoryMb": 16384, "gpus": 2}), "test", registered_at, registered_at),
    )


def add_job(tx: Tx, job_id: str, workspace_id: str, *, state: str = "QUEUED",
            created_at: int = 0, **columns: Any) -> None:
    values = {"id": job_id, "workspace_id": workspace_id, "state": state, "type": "COMMAND", "command": "true",
              "labels": "{}", "env": "{}", "timeout_seconds": 60, "created_at": created_at, **columns}
    tx.execute(f"INSERT INTO jobs ({', '.join(values)}) VALUES ({', '.join('?' for _ in values)})",
               tuple(values.values()))


def add_attempt(tx: Tx, job_id: str, workspace_id: str, agent_id: str, *, epoch: int = 1,
                state: str = "RUNNING", assigned_at: int = 0) -> None:
    tx.execute(
        """INSERT INTO job_attempts (job_id, epoch, workspace_id, agent_id, assigned_at, state)
           VALUES (?, ?, ?, ?, ?, ?)""",
        (job_id, epoch, workspace_id, agent_id, assigned_at, state),
    )


def add_webhook(tx: Tx, webhook_id: str, workspace_id: str, events: list[str]) -> None:
    tx.execute("INSERT INTO webhooks (id, workspace_id, url, events, created_at) VALUES (?, ?, ?, ?, 0)",
               (webhook_id, workspace_id, "http://127.0.0.1:9/hook", json.dumps(events)))


def one(tx: Tx, sql: str, params: tuple[Any, ...] = ()) -> Any:
    """The first column of the first row of ``sql``."""
    row = tx.execute(sql, params).fetchone()
    return None if row is None else row[0]
