"""Counting the statements a store runs, on both backends, for the statement-bound tests."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from coordinator.store.postgresql import PgStore


@contextmanager
def store_statements(store: Any) -> Iterator[Callable[[], int]]:
    """A function giving the statements ``store`` ran since the block began (call it once the
    block has run): PostgreSQL's own counter (``tanvrit_store_statements``), or every statement
    SQLite's connections trace meanwhile. The trace reports an ``INSERT/UPDATE ... RETURNING``
    once per step: repeats in a row count once."""
    if isinstance(store, PgStore):
        before = store.statements
        yield lambda: store.statements - before
        return
    seen: list[str] = []
    connections: list[sqlite3.Connection] = [store._writer_conn, store._reader]
    for conn in connections:
        conn.set_trace_callback(seen.append)
    try:
        yield lambda: len([sql for i, sql in enumerate(seen) if i == 0 or sql != seen[i - 1]])
    finally:
        for conn in connections:
            conn.set_trace_callback(None)
