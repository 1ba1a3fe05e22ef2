"""Which database a coordinator runs on: chosen by a URL, opened by ``open_store``.

- a plain path, or ``sqlite:///ABSOLUTE/PATH`` (``sqlite://`` then the path): the embedded
  SQLite store in that file (the default: ``coordinator.sqlite3`` in the data dir);
- ``postgresql://...`` (or ``postgres://...``), a libpq connection URL: the PostgreSQL store,
  for several replicas on one database. Its module (``coordinator.store.postgresql``,
  exporting ``open_postgresql_store(url)``) is imported only when such a URL is given.

The URL comes from ``--database``, else the environment (``TANVRIT_DATABASE_URL``), else
``[store] url`` in the config file, else the data dir's SQLite file.
"""

from __future__ import annotations

import importlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from coordinator.store.base import Store
from coordinator.store.errors import UnknownDatabaseUrl
from coordinator.store.sqlite import open_sqlite_store

ENV_VAR = "TANVRIT_DATABASE_URL"
# PostgreSQL: the connections one replica's pool keeps at most (``[store] pool_size``). Kept here,
# not in the PostgreSQL core, so that settings need not import psycopg.
DEFAULT_POOL_SIZE = 16
# PostgreSQL: how long a transaction waits for a pooled connection (all busy, or the database
# away) before it fails as unavailable (``[store] pool_timeout_seconds``; the API answers 503).
DEFAULT_POOL_TIMEOUT_SECONDS = 10.0
POSTGRESQL_MODULE = "coordinator.store.postgresql"


@dataclass(frozen=True)
class DatabaseUrl:
    """A parsed database URL: ``kind`` says which backend; ``path`` is set for SQLite."""

    kind: Literal["sqlite", "postgresql"]
    url: str
    path: Path | None = None

    def redacted(self) -> str:
        """The URL without its password, for logs and messages."""
        if self.kind != "postgresql" or "@" not in self.url:
            return self.url
        scheme, rest = self.url.split("://", 1)
        credentials, host = rest.rsplit("@", 1)
        user = credentials.split(":", 1)[0]
        return f"{scheme}://{user}:***@{host}" if ":" in credentials else self.url


def parse_database_url(value: str | Path) -> DatabaseUrl:
    """Parse ``value`` (a path or a URL). Raises ``UnknownDatabaseUrl`` for a scheme no backend serves."""
    if isinstance(value, Path):
        return DatabaseUrl("sqlite", str(value), value)
    text = value.strip()
    if not text:
        raise UnknownDatabaseUrl("the database URL is empty: give sqlite:///PATH or postgresql://HOST/DB")
    if "://" not in text:
        return DatabaseUrl("sqlite", text, Path(text))
    scheme, rest = text.split("://", 1)
    scheme = scheme.lower()
    if scheme == "sqlite":
        if not rest or rest == "/":
            raise UnknownDatabaseUrl(f"{text!r} names no file: give sqlite:///PATH (an absolute path)")
        return DatabaseUrl("sqlite", text, Path(rest))
    if scheme in ("postgresql", "postgres"):
        return DatabaseUrl("postgresql", text)
    raise UnknownDatabaseUrl(f"unknown database URL scheme {scheme!r} in {_shown(text)}: "
                             "give sqlite:///PATH or postgresql://USER@HOST/DB")


def _shown(text: str) -> str:
    return repr(DatabaseUrl("postgresql", text).redacted())  # never echo a password


@asynccontextmanager
async def open_store(database: str | Path | DatabaseUrl, *, pool_size: int = DEFAULT_POOL_SIZE,
                     statement_timeout_seconds: float = 0.0,
                     pool_timeout_seconds: float = DEFAULT_POOL_TIMEOUT_SECONDS) -> AsyncIterator[Store]:
    """Open (creating and migrating) the store ``database`` names and run it until exit.

    ``pool_size``, ``statement_timeout_seconds`` (0: none) and ``pool_timeout_seconds`` apply to
    PostgreSQL only: the SQLite store has one writer and one reader connection, and no server to
    cancel statements.

    Raises ``UnknownDatabaseUrl`` for a URL no backend serves, or whose backend is not
    installed; ``SchemaTooNew`` when a newer coordinator migrated the database."""
    parsed = database if isinstance(database, DatabaseUrl) else parse_database_url(database)
    if parsed.kind == "sqlite":
        assert parsed.path is not None
        async with open_sqlite_store(parsed.path) as store:
            yield store
        return
    try:
        module = importlib.import_module(POSTGRESQL_MODULE)
    except ModuleNotFoundError as exc:
        if exc.name not in (POSTGRESQL_MODULE, "psycopg", "psycopg_pool"):
            raise
        raise UnknownDatabaseUrl(f"the PostgreSQL store is not available in this installation ({exc.name} "
                                 "is missing); use sqlite:///PATH or install the PostgreSQL support") from exc
    async with module.open_postgresql_store(parsed.url, pool_max=pool_size,
                                            statement_timeout_seconds=statement_timeout_seconds,
                                            pool_timeout_seconds=pool_timeout_seconds) as pg_store:
        yield pg_store
