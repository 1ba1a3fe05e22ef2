"""PostgreSQL schema migrations: numbered like SQLite's, applied once however many replicas start.

The files are ``coordinator/store/migrations/postgresql/NNNN_name.sql``; a step has the same
number as its SQLite twin (``migrations/NNNN_name.sql``), and the first file is a baseline of the
whole SQLite schema as of its number. Applied steps are rows of ``schema_migrations``.

Each step runs in its own transaction that first takes a transaction-scoped advisory lock
(``pg_advisory_xact_lock``) and only then reads which steps are applied: replicas that start at
once on an empty database queue on the lock, the first applies the step, the others find it
applied and move on. PostgreSQL's DDL is transactional, so a step that fails leaves nothing.
"""

from __future__ import annotations

from importlib import resources
from typing import Any

import psycopg

from coordinator.store.sqlite_core import SchemaTooNew

__all__ = ["MIGRATION_LOCK_KEY", "migrate_postgresql", "postgresql_migrations", "schema_version"]

# The advisory lock key migrations take: any fixed 64-bit number, shared by every replica.
# (The bytes of "tanvrit\x01".)
MIGRATION_LOCK_KEY = 0x74616E7672697401

VERSION_TABLE = "schema_migrations"


def postgresql_migrations() -> list[tuple[int, str, str]]:
    """Every PostgreSQL migration as ``(number, file name, script)``, in order.

    Raises ``RuntimeError`` when two files share a number (one would be skipped silently on
    every database that has applied the other)."""
    folder = resources.files("coordinator.store") / "migrations" / "postgresql"
    found: dict[int, tuple[str, str]] = {}
    for entry in folder.iterdir():
        if entry.name.endswith(".sql"):
            number = int(entry.name.split("_", 1)[0])
            if number in found:
                raise RuntimeError(f"two PostgreSQL migrations share number {number}: "
                                   f"{found[number][0]} and {entry.name}")
            found[number] = (entry.name, entry.read_text())
    return sorted((number, name, script) for number, (name, script) in found.items())


def _ensure_version_table(conn: psycopg.Connection[Any]) -> None:
    conn.execute(f"""CREATE TABLE IF NOT EXISTS {VERSION_TABLE} (
                         version     BIGINT PRIMARY KEY,
                         name        TEXT NOT NULL,
                         applied_at  TIMESTAMPTZ NOT NULL DEFAULT now())""")


def _applied(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute(f"SELECT COALESCE(max(version), 0) FROM {VERSION_TABLE}").fetchone()
    return int(row[0]) if row else 0


def schema_version(conn: psycopg.Connection[Any]) -> int:
    """The newest applied step (0 for an empty database)."""
    exists = conn.execute("SELECT to_regclass(%s)", (VERSION_TABLE,)).fetchone()
    if exists is None or exists[0] is None:
        return 0
    return _applied(conn)


def migrate_postgresql(conn: psycopg.Connection[Any]) -> int:
    """Apply every step newer than the database's; return the database's version.

    ``conn`` must not be inside a transaction; it is left outside one. Safe to run from several
    processes at once. Raises ``SchemaTooNew`` when a newer coordinator migrated the database."""
    migrations = postgresql_migrations()
    latest = max((number for number, _, _ in migrations), default=0)
    previous_autocommit = conn.autocommit
    conn.autocommit = True
    try:
        current = 0
        # One transaction per step (plus one for the version table itself), each under the lock.
        steps: list[tuple[int, str, str] | None] = [None, *migrations]
        for step in steps:
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK_KEY,))
                # Creating the table under the lock: two concurrent CREATE TABLE IF NOT EXISTS can
                # both see it missing and the second then fails on the catalog's unique index.
                _ensure_version_table(conn)
                current = _applied(conn)
                if current > latest:
                    raise SchemaTooNew(
                        f"the database's schema version {current} is newer than this coordinator's ({latest}): "
                        "a newer version migrated it; run that version (docs/operations.md)")
                if step is None or step[0] <= current:
                    continue
                number, name, script = step
                # A script without parameters runs whole (the simple query protocol takes several
                # statements, dollar-quoted function bodies included).
                conn.execute(script.encode())
                conn.execute(f"INSERT INTO {VERSION_TABLE} (version, name) VALUES (%s, %s)", (number, name))
                current = number
        return current
    finally:
        conn.autocommit = previous_autocommit
