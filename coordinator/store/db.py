"""The transaction interface every store query is written against, and the dialects.

A store method runs its SQL through a ``Tx``: ``await self._write(fn)`` calls ``fn(tx)``
inside one transaction, ``await self._read_with(fn)`` calls it on a read-only snapshot.
The SQL is written once for both databases, so it keeps to what SQLite 3.40 and
PostgreSQL 15 both accept:

- ``?`` placeholders (or ``:name`` with a mapping); the PostgreSQL core translates them;
- ``INSERT ... ON CONFLICT (...) DO NOTHING / DO UPDATE``, ``RETURNING``;
- ``IS NOT DISTINCT FROM`` (never ``IS ?``), ``COALESCE`` (never ``IFNULL``);
- no ``INSERT OR IGNORE/REPLACE``, no ``rowid``, no two-argument ``max()``/``min()``, no
  inline ``json_extract``/``json_each``, no ``INDEXED BY``: what differs is asked of
  ``tx.dialect``.

Times are integer milliseconds, JSON columns are TEXT, booleans are INTEGER 0/1.
``tests/test_store_portable.py`` refuses the SQLite-only forms in the store's modules.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol

Params = Sequence[Any] | Mapping[str, Any]


class Row(Protocol):
    """One result row: indexed by column name and by position (as ``sqlite3.Row``)."""

    def __getitem__(self, key: Any, /) -> Any: ...

    def keys(self) -> list[str]: ...


class Cursor(Protocol):
    """What ``Tx.execute`` returns. ``rowcount`` is the number of rows an INSERT, UPDATE or
    DELETE changed: the outcome of a compare-and-set."""

    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...


class Dialect(Protocol):
    """The SQL fragments that differ between the databases."""

    name: str
    skip_locked: str
    """Appended to a ``SELECT`` that picks rows to change (a claim): ``FOR UPDATE SKIP
    LOCKED`` on PostgreSQL, so that concurrent claimers take different rows; empty on SQLite,
    whose single writer already serialises them."""
    for_update: str
    """Appended to a ``SELECT`` of a row whose lock serialises a rule over several rows (the
    last owner of a workspace): ``FOR UPDATE`` on PostgreSQL, empty on SQLite."""
    ordered_seeks: str
    """A column for the first ``SELECT`` of a transaction whose later queries must read an index
    in its order rather than sort what another index finds (the claim: ``indexed_by`` says it
    on SQLite; PostgreSQL has no hints). On PostgreSQL it turns sorts off for the rest of the
    transaction (``set_config(..., true)``, in a statement it sends anyway): where the planner's
    statistics say the queue is empty (never analysed yet, or analysed before a burst of
    submissions) it picks a smaller index and sorts the whole queue on every claim, 17 ms of
    the database's CPU per claim at 2,500 queued jobs instead of a seek. ``NULL`` on SQLite."""

    def json_text(self, column: str, key: str) -> str:
        """An expression for the text value at ``key`` (an SQL expression: ``?`` or a quoted
        literal) of the JSON object in ``column``; NULL when the key is absent."""
        ...

    def labels_contain(self, labels: str, selector: str) -> str:
        """A condition true when the JSON object ``labels`` holds every key/value pair of the
        JSON object ``selector`` (both SQL expressions of JSON text)."""
        ...

    def indexed_by(self, index: str) -> str:
        """A hint after a table name that forces ``index`` where the planner would not choose it."""
        ...

    def greatest(self, *expressions: str) -> str:
        """The largest of ``expressions`` (NULL if any is NULL, as in both databases' max)."""
        ...

    def __hash__(self) -> int: ...  # SQL built from a dialect is cached per dialect


class Tx(Protocol):
    """One transaction (or, for reads, one snapshot) of the store's database."""

    @property
    def dialect(self) -> Dialect: ...

    def execute(self, sql: str, params: Params = (), /) -> Cursor: ...

    def executemany(self, sql: str, seq_of_params: Iterable[Params], /) -> Cursor: ...


class SqliteDialect:
    name = "sqlite"
    skip_locked = ""
    for_update = ""
    ordered_seeks = "NULL"

    def json_text(self, column: str, key: str) -> str:
        return f"json_extract({column}, '$.\"' || {key} || '\"')"

    def labels_contain(self, labels: str, selector: str) -> str:
        # The quoted path is safe: a selector key is a ``LabelKey`` (letters, digits, ``_.-/``).
        return (f"NOT EXISTS (SELECT 1 FROM json_each({selector}) AS wanted "
                f"WHERE json_extract({labels}, '$.\"' || wanted.key || '\"') IS NOT wanted.value)")

    def indexed_by(self, index: str) -> str:
        return f"INDEXED BY {index}"

    def greatest(self, *expressions: str) -> str:
        return f"max({', '.join(expressions)})"


class PostgresqlDialect:
    name = "postgresql"
    skip_locked = "FOR UPDATE SKIP LOCKED"
    for_update = "FOR UPDATE"
    ordered_seeks = "set_config('enable_sort', 'off', true)"

    def json_text(self, column: str, key: str) -> str:
        return f"(({column})::jsonb ->> ({key}))"

    def labels_contain(self, labels: str, selector: str) -> str:
        return f"(({labels})::jsonb @> ({selector})::jsonb)"

    def indexed_by(self, index: str) -> str:
        return ""

    def greatest(self, *expressions: str) -> str:
        # PostgreSQL's GREATEST skips NULLs; the store only passes non-NULL expressions.
        return f"GREATEST({', '.join(expressions)})"


SQLITE = SqliteDialect()
POSTGRESQL = PostgresqlDialect()


class SqliteTx:
    """A ``Tx`` over one ``sqlite3`` connection. ``execute`` is the connection's own bound
    method (no wrapper call per statement: the SQLite store's hot paths stay as fast)."""

    __slots__ = ("connection", "dialect", "execute", "executemany")

    def __init__(self, connection: sqlite3.Connection) -> None:
        self.connection = connection
        self.dialect: Dialect = SQLITE
        self.execute = connection.execute
        self.executemany = connection.executemany
