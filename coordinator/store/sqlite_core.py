"""The SQLite database core: WAL mode, numbered migrations, one writer thread with group commit.

Writes are closures ``fn(tx)`` (``coordinator.store.db.Tx``) queued to a single writer task.
The writer takes every write that is waiting, runs each inside its own savepoint of one
transaction, commits once, and only then wakes the callers: writes that arrive together
share one ``fsync``, and a caller is never answered before its row is durable. Reads are
awaitable (``await self._read(sql, params)``, ``await self._read_with(fn)``) so that the
same store methods run over a core that must leave the event loop for its database
(PostgreSQL); here they run inline on a separate connection in the event-loop thread, with
no thread hop: an indexed lookup costs microseconds, less than a hop to a thread.

The writer thread is not what keeps the data right: every state change is a
compare-and-set whose row count is checked (``transition_job``), so the same SQL holds
when several transactions race, as they do on PostgreSQL.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

import trio

from common.files import private_sqlite
from coordinator.store.db import SQLITE, Dialect, Row, SqliteTx, Tx
from coordinator.store.errors import SchemaTooNew, StaleState, StoreClosed

__all__ = ["SchemaTooNew", "SqliteCore", "StoreClosed", "migrate", "open_sync_connection", "request_hash"]
from coordinator.leader import fenced_write

T = TypeVar("T")

# A write whose compare-and-set lost is run again on the data as it now stands; this many
# tries in all. With the single writer it never loses; the bound only stops a livelock.
WRITE_TRIES = 3


def _migrations() -> list[tuple[int, str]]:
    folder = resources.files("coordinator.store") / "migrations"
    found: dict[int, tuple[str, str]] = {}
    for entry in folder.iterdir():
        if entry.name.endswith(".sql"):
            number = int(entry.name.split("_", 1)[0])
            if number in found:
                # Two branches that each add "the next" migration would otherwise have one of them skipped
                # silently on every store that already applied the other.
                raise RuntimeError(f"two migrations share number {number}: {found[number][0]} and {entry.name}")
            found[number] = (entry.name, entry.read_text())
    return sorted((number, script) for number, (_, script) in found.items())


def _connect(path: Path, *, readonly: bool = False) -> sqlite3.Connection:
    if not readonly:
        private_sqlite(path)  # it holds token hashes and webhook signing secrets
    uri = f"file:{path}?mode=ro" if readonly else f"file:{path}"
    conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA busy_timeout = 5000")
    conn.execute("PRAGMA foreign_keys = ON")
    if not readonly:
        conn.execute("PRAGMA journal_mode = WAL")
        # FULL: a commit is on disk before the caller hears of it, even across power loss.
        conn.execute("PRAGMA synchronous = FULL")
    return conn


def migrate(conn: sqlite3.Connection) -> int:
    """Apply every migration newer than ``PRAGMA user_version``; return the new version.

    Raises ``SchemaTooNew`` for a store that a newer version has migrated (a downgrade)."""
    current = conn.execute("PRAGMA user_version").fetchone()[0]
    migrations = _migrations()
    latest = max((number for number, _ in migrations), default=0)
    if current > latest:
        raise SchemaTooNew(f"the store's schema version {current} is newer than this coordinator's ({latest}): "
                           "a newer version migrated it; run that version, or restore the backup taken before "
                           "the upgrade (docs/operations.md)")
    for number, script in migrations:
        if number <= current:
            continue
        conn.execute("BEGIN IMMEDIATE")
        try:
            # Read again under the write lock: replicas starting at once on one new file all
            # saw version 0, and whoever got the lock first may have applied this one already.
            current = conn.execute("PRAGMA user_version").fetchone()[0]
            if number <= current:
                conn.execute("COMMIT")
                continue
            for statement in _split_sql(script):
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {number}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        current = number
    return int(current)


def _split_sql(script: str) -> Iterator[str]:
    buffer = ""
    for line in script.splitlines(keepends=True):
        if line.lstrip().startswith("--"):
            continue
        buffer += line
        if sqlite3.complete_statement(buffer):
            yield buffer.strip()
            buffer = ""
    if buffer.strip():
        yield buffer.strip()


@dataclass
class _Write:
    fn: Callable[[Tx], Any]
    done: trio.Event = field(default_factory=trio.Event)
    result: Any = None
    error: BaseException | None = None


def request_hash(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


class SqliteCore:
    """Connections, migrations and the group-committing writer; query mixins build on it."""

    dialect: Dialect = SQLITE

    def __init__(self, path: Path) -> None:
        self.path = path
        self._writer_conn = _connect(path)
        migrate(self._writer_conn)
        self._writer_tx = SqliteTx(self._writer_conn)
        # The file the connections hold open: a store whose path no longer leads to it (deleted,
        # replaced, its disk unmounted) is not ready, though the open descriptors still read.
        # One descriptor, kept open until close(): closing any descriptor of the database file
        # drops every POSIX lock this process holds on it, its SQLite connections' locks too, and
        # another process's connection could then think itself the last one and delete the WAL
        # (a probe that opened and closed the file lost every later commit of this process).
        self._probe_fd = os.open(path, os.O_RDONLY)
        self._identity = _file_identity(path, self._probe_fd)
        self._reader = _connect(path)
        self._reader_tx = SqliteTx(self._reader)
        self._send, self._receive = trio.open_memory_channel[_Write](10_000)
        self.commits = 0  # group-commit figure for benchmarks

    # --- machinery ----------------------------------------------------------------------
    async def serve_writer(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        try:
            while True:
                batch = [await self._receive.receive()]
                while True:
                    try:
                        batch.append(self._receive.receive_nowait())
                    except trio.WouldBlock:
                        break
                await trio.to_thread.run_sync(self._commit_batch, batch)
                for item in batch:
                    item.done.set()
        finally:
            # Shutting down: fail whatever is still queued rather than leave callers waiting.
            while True:
                try:
                    item = self._receive.receive_nowait()
                except (trio.WouldBlock, trio.EndOfChannel):
                    break
                item.error = StoreClosed("the store is shutting down")
                item.done.set()
            self._receive.close()

    def _commit_batch(self, batch: list[_Write]) -> None:
        conn, tx = self._writer_conn, self._writer_tx
        try:
            conn.execute("BEGIN IMMEDIATE")
            for item in batch:
                for tries_left in reversed(range(WRITE_TRIES)):
                    conn.execute("SAVEPOINT w")
                    try:
                        item.result = item.fn(tx)
                        item.error = None
                    except Exception as exc:
                        conn.execute("ROLLBACK TO w")
                        item.error = exc
                    conn.execute("RELEASE w")
                    if not (isinstance(item.error, StaleState) and tries_left):
                        break
            conn.execute("COMMIT")
            self.commits += 1
        except Exception as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            for item in batch:
                item.error = exc

    async def _write(self, fn: Callable[[Tx], T]) -> T:
        """Run ``fn(tx)`` in one transaction (a savepoint of the writer's batch) and return
        its result once committed; what ``fn`` raises is raised here, and its writes undone.

        ``fn`` reads what it decides on inside ``tx`` and may be run again: a ``StaleState``
        (a compare-and-set that lost) undoes it and runs it afresh, up to ``WRITE_TRIES``
        times in all (every core does the same). A leader task's write checks its fence in
        the same transaction (coordinator/leader.py)."""
        item = _Write(fenced_write(fn))
        try:
            await self._send.send(item)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise StoreClosed("the store is shutting down") from exc
        # The write is already queued: finish waiting even if we are cancelled, so the
        # caller never returns while the transaction it asked for may still commit.
        with trio.CancelScope(shield=True):
            await item.done.wait()
        if item.error is not None:
            raise item.error
        return item.result  # type: ignore[no-any-return]

    async def _read(self, sql: str, params: tuple[Any, ...] | dict[str, Any] = ()) -> list[Row]:
        """The rows of one query, from the latest committed data."""
        return self._reader.execute(sql, params).fetchall()

    async def _read_with(self, fn: Callable[[Tx], T]) -> T:
        """Run ``fn(tx)`` on the read-only side: for a read of several queries (jobs and their
        attempts). It must not write. Inline here: no thread hop, no await inside."""
        return fn(self._reader_tx)

    def read_now(self, sql: str, params: tuple[Any, ...] = ()) -> list[Row]:
        """The rows of one query, synchronously: for tests and diagnostics of the SQLite file
        only (the store's own methods use ``await self._read``)."""
        return self._reader.execute(sql, params).fetchall()

    def close(self) -> None:
        self._writer_conn.close()
        self._reader.close()
        os.close(self._probe_fd)

    async def ready(self) -> bool:
        return await self.unready_reason() is None

    async def unready_reason(self) -> str | None:
        """None when the database answers a read of its schema through its own path; else why not."""
        try:
            if _file_identity(self.path, self._probe_fd) != self._identity:
                return f"the database file {self.path} is not the one opened (removed or replaced)"
            await self._read("SELECT count(*) FROM sqlite_master")
        except OSError as exc:
            return f"the database file {self.path} cannot be reached: {exc.strerror or exc}"
        except sqlite3.Error as exc:
            return f"the database does not answer: {exc}"
        return None


def _file_identity(path: Path, fd: int) -> tuple[int, int]:
    """(device, inode) of ``path``; raises ``OSError`` when it cannot be read. Reads through
    ``fd`` (the store's own descriptor of the file): never open and close the database file."""
    stat = path.stat()
    os.pread(fd, 16, 0)  # the header: a dead disk raises here
    return stat.st_dev, stat.st_ino


def dumps_or_none(value: Any) -> str | None:
    return None if value is None else json.dumps(value)


def loads_or_none(text: str | None) -> Any:
    return None if text is None else json.loads(text)


@contextmanager
def open_sync_connection(path: Path) -> Iterator[sqlite3.Connection]:
    """A plain connection for offline tools (``init``), migrated first."""
    conn = _connect(path)
    try:
        migrate(conn)
        yield conn
    finally:
        conn.close()
