"""PostgreSQL migrations: applied once under concurrency, refused when too new, and in step with SQLite."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import psycopg
import pytest

from coordinator.store.postgres_schema import migrate_postgresql, postgresql_migrations, schema_version
from coordinator.store.sqlite_core import SchemaTooNew, open_sync_connection

# Bookkeeping tables of each database, not part of the store's schema.
SQLITE_INTERNAL = {"sqlite_sequence"}
POSTGRESQL_INTERNAL = {"schema_migrations"}


def _latest() -> int:
    return postgresql_migrations()[-1][0]


def test_a_fresh_database_is_migrated_to_the_latest_step_once(postgres_url: str) -> None:
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        assert schema_version(conn) == 0
        assert migrate_postgresql(conn) == _latest()
        assert migrate_postgresql(conn) == _latest()  # a second run finds nothing to do
        applied = conn.execute("SELECT version FROM schema_migrations ORDER BY version").fetchall()
        # The audit log stays append-only on PostgreSQL too.
        conn.execute("INSERT INTO audit_events (id, at, action, result, status, request_id, method, path) "
                     "VALUES ('a1', 1, 'x', 'ok', 200, 'r', 'GET', '/')")
        with pytest.raises(psycopg.errors.RaiseException, match="audit rows are append-only"):
            conn.execute("UPDATE audit_events SET status = 500")
    assert [row[0] for row in applied] == [number for number, _, _ in postgresql_migrations()]


def test_three_replicas_migrating_an_empty_database_at_once_all_succeed(postgres_url: str) -> None:
    barrier = threading.Barrier(3)
    results: list[int] = []
    errors: list[BaseException] = []

    def replica() -> None:
        try:
            with psycopg.connect(postgres_url, autocommit=True) as conn:
                barrier.wait(timeout=30)
                results.append(migrate_postgresql(conn))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=replica) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert errors == []
    assert results == [_latest()] * 3
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        rows = conn.execute("SELECT version, count(*) FROM schema_migrations GROUP BY version").fetchall()
    assert all(count == 1 for _, count in rows)
    assert len(rows) == len(postgresql_migrations())


def test_a_database_migrated_by_a_newer_coordinator_is_refused(postgres_url: str) -> None:
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        migrate_postgresql(conn)
        conn.execute("INSERT INTO schema_migrations (version, name) VALUES (9999, '9999_future.sql')")
        with pytest.raises(SchemaTooNew, match=r"^the database's schema version 9999 is newer than this"):
            migrate_postgresql(conn)


def _sqlite_schema(path: Path) -> dict[str, set[str]]:
    with open_sync_connection(path) as conn:
        tables = [row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        return {table: {row[1] for row in conn.execute(f'PRAGMA table_info("{table}")')}
                for table in tables if table not in SQLITE_INTERNAL}


def _postgresql_schema(conn: psycopg.Connection[Any]) -> dict[str, set[str]]:
    schema: dict[str, set[str]] = {}
    for table, column in conn.execute(
            "SELECT table_name, column_name FROM information_schema.columns WHERE table_schema = 'public'"):
        if table not in POSTGRESQL_INTERNAL:
            schema.setdefault(table, set()).add(column)
    return schema


def test_both_databases_have_the_same_tables_and_columns(postgres_url: str, tmp_path: Path) -> None:
    """A migration added to one database only fails here: add its twin (same number) to the other."""
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        migrate_postgresql(conn)
        postgresql = _postgresql_schema(conn)
    sqlite = _sqlite_schema(tmp_path / "store.db")
    assert sorted(postgresql) == sorted(sqlite)
    for table in sqlite:
        assert (table, sorted(postgresql[table])) == (table, sorted(sqlite[table]))


def test_both_databases_have_the_same_latest_migration_number() -> None:
    from coordinator.store.sqlite_core import _migrations

    assert postgresql_migrations()[-1][0] == _migrations()[-1][0]
