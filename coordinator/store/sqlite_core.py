"""SQLite store: WAL mode, numbered migrations, one writer thread with group commit.

Writes are closures queued to a single writer task. The writer takes every write that is
waiting, runs each inside its own savepoint of one transaction, commits once, and only then
wakes the callers: writes that arrive together share one ``fsync``, and a caller is never
answered before its row is durable. Point reads run on a separate read-only connection in
the event-loop thread: an indexed lookup costs microseconds, less than a hop to a thread.
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
from coordinator.leader import fenced_write

T = TypeVar("T")


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


class SchemaTooNew(Exception):
    """The store was migrated by a newer coordinator than this one; running on it could corrupt it."""


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
    fn: Callable[[sqlite3.Connection], Any]
    done: trio.Event = field(default_factory=trio.Event)
    result: Any = None
    error: BaseException | None = None


class StoreClosed(Exception):
    """The store no longer accepts writes (shutdown)."""


def request_hash(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


class SqliteCore:
    """Connections, migrations and the group-committing writer; query mixins build on it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._writer_conn = _connect(path)
        migrate(self._writer_conn)
        # The file the connections hold open: a store whose path no longer leads to it (deleted,
        # replaced, its disk unmounted) is not ready, though the open descriptors still read.
        # One descriptor, kept open until close(): closing any descriptor of the database file
        # drops every POSIX lock this process holds on it, its SQLite connections' locks too, and
        # another process's connection could then think itself the last one and delete the WAL
        # (a probe that opened and closed the file lost every later commit of this process).
        self._probe_fd = os.open(path, os.O_RDONLY)
        self._identity = _file_identity(path, self._probe_fd)
        self._reader = _connect(path)
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
        conn = self._writer_conn
        try:
            conn.execute("BEGIN IMMEDIATE")
            for item in batch:
                conn.execute("SAVEPOINT w")
                try:
                    item.result = item.fn(conn)
                except Exception as exc:
                    conn.execute("ROLLBACK TO w")
                    item.error = exc
                conn.execute("RELEASE w")
            conn.execute("COMMIT")
            self.commits += 1
        except Exception as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            for item in batch:
                item.error = exc

    async def _write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        # A leader task's write checks its fence in the same transaction (coordinator/leader.py).
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

    def _read(self, sql: str, params: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
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
            self._read("SELECT count(*) FROM sqlite_master")
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
