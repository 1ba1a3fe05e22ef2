"""The PostgreSQL database core: psycopg 3's sync API over a ``psycopg_pool`` in trio threads.

psycopg's async API runs on asyncio only, so every transaction runs in a worker thread on a
pooled connection: ``_DatabaseThreads``, at most as many threads as the pool has connections
(so none queues inside the pool), a cheaper hop than ``trio.to_thread.run_sync``. Cancelling a
caller waits for its thread: a write that was sent is never abandoned half-way, as on SQLite.

What a request costs here, from profiles of a replica under ``bench/replicas.py``: each store
call is a hop to a thread and back (the largest part), then a round trip per statement and
psycopg's Python per statement. Hence: no round trip to check a pooled connection that looks
sound (``_check_cheaply``), a read snapshot begun in one statement, row names read off the raw
result, and the cheap hop. A group commit as SQLite's would not pay here: every write in it
needs a SAVEPOINT and a RELEASE, each a round trip, where BEGIN and COMMIT are two.

Transactions. ``await self._write(fn)`` runs ``fn(tx)`` in one transaction at READ COMMITTED,
PostgreSQL's default, the level River, Oban and Que run their queues at. What keeps several
replicas right is not the isolation level but the store's own rules: every state change is a
compare-and-set whose row count is checked (``UPDATE ... WHERE id = ? AND state = ?``; at READ
COMMITTED an UPDATE that waited for a concurrent one re-checks its WHERE on the new row), and a
claim locks the row it takes with ``FOR UPDATE SKIP LOCKED`` (``tx.dialect.skip_locked``), so
concurrent claimers take different rows without waiting on each other. SERIALIZABLE would also
abort claimers whose index scans merely overlap, turning every busy claim into retries.
A transaction is run again, whole, when the database aborts it (serialization failure,
deadlock) or when ``fn`` raises ``StaleState`` (a compare-and-set it decided on lost), up to
``WRITE_TRIES`` times; ``fn`` must therefore only touch the database.

SQL is written once for both databases (``coordinator.store.db``): ``?`` and ``:name``
placeholders become psycopg's ``%s`` and ``%(name)s`` here, and a literal ``%`` is doubled.
Rows index by name (case-insensitively, as ``sqlite3.Row``) and by position. Values come back
as SQLite gives them: a ``numeric`` (what ``sum()`` of a BIGINT column is) as an int when
whole, else a float; Python booleans are stored as 0/1; strings are sent typed ``text``.
A ``None`` parameter is an untyped NULL: PostgreSQL takes its type from what it meets
(``COALESCE(?, column)``, ``column IS NOT DISTINCT FROM ?``), so a bare ``? IS NULL`` cannot be
typed and fails; write ``CAST(? AS TEXT) IS NULL`` there.
"""

from __future__ import annotations

import contextlib
import contextvars
import queue
import random
import select
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from functools import lru_cache
from typing import Any, TypeVar

import outcome
import psycopg
import psycopg.errors
import trio
from psycopg.adapt import Dumper, Loader
from psycopg.pq import Format
from psycopg.rows import RowMaker
from psycopg.types.string import StrDumper
from psycopg_pool import ConnectionPool, PoolTimeout

from coordinator.leader import fenced_write
from coordinator.store.db import POSTGRESQL, Dialect, Params, Row, Tx
from coordinator.store.errors import DatabaseUnavailable, StaleState, StoreClosed
from coordinator.store.factory import DEFAULT_POOL_SIZE, DEFAULT_POOL_TIMEOUT_SECONDS
from coordinator.store.postgres_schema import migrate_postgresql

__all__ = ["WRITE_TRIES", "PgRow", "PostgresCore", "PostgresTx", "translate"]

T = TypeVar("T")

# Runs of one write before its error is raised (the first run included).
WRITE_TRIES = 10
# Database errors after which the whole transaction is simply run again.
_RETRYABLE = (psycopg.errors.SerializationFailure, psycopg.errors.DeadlockDetected)
DEFAULT_POOL_MAX = DEFAULT_POOL_SIZE
READY_TIMEOUT_S = 2.0
CONNECT_TIMEOUT_S = 10
# How long a transaction waits for a pooled connection (all busy, or the database away), unless
# the store is given another (``[store] pool_timeout_seconds``).
POOL_TIMEOUT_S = DEFAULT_POOL_TIMEOUT_SECONDS


@lru_cache(maxsize=4096)
def translate(sql: str) -> str:
    """``sql`` with ``?`` as ``%s``, ``:name`` as ``%(name)s`` and ``%`` as ``%%``.

    Placeholders inside string literals, quoted identifiers and comments are left alone (a ``%``
    there is still doubled: psycopg reads the whole text); ``::type`` casts are not names."""
    out: list[str] = []
    i, n = 0, len(sql)
    while i < n:
        char = sql[i]
        if char in "'\"":
            end = i + 1
            while end < n:
                if sql[end] == char:
                    if end + 1 < n and sql[end + 1] == char:  # a doubled quote inside the literal
                        end += 2
                        continue
                    break
                end += 1
            out.append(sql[i:end + 1].replace("%", "%%"))
            i = end + 1
        elif sql.startswith("--", i):
            end = sql.find("\n", i)
            end = n if end < 0 else end
            out.append(sql[i:end].replace("%", "%%"))
            i = end
        elif sql.startswith("/*", i):
            end = sql.find("*/", i + 2)
            end = n if end < 0 else end + 2
            out.append(sql[i:end].replace("%", "%%"))
            i = end
        elif char == "?":
            out.append("%s")
            i += 1
        elif char == "%":
            out.append("%%")
            i += 1
        elif char == ":" and _starts_name(sql, i):
            end = i + 1
            while end < n and (sql[end].isalnum() or sql[end] == "_"):
                end += 1
            out.append(f"%({sql[i + 1:end]})s")
            i = end
        else:
            out.append(char)
            i += 1
    return "".join(out)


def _starts_name(sql: str, i: int) -> bool:
    """Whether the ``:`` at ``i`` begins a ``:name`` placeholder (not a ``::`` cast)."""
    following = sql[i + 1:i + 2]
    return (following.isalpha() or following == "_") and (i == 0 or sql[i - 1] != ":")


class PgRow(tuple[Any, ...]):
    """A row indexed by position and by column name (case-insensitively), like ``sqlite3.Row``."""

    __slots__ = ()
    _names: tuple[str, ...] = ()
    _index: dict[str, int] = {}  # noqa: RUF012 (set per result shape, on a subclass)

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, str):
            try:
                position = self._index[key]
            except KeyError:
                position = self._index[key.lower()]
            return tuple.__getitem__(self, position)
        return tuple.__getitem__(self, key)

    def keys(self) -> list[str]:
        return list(self._names)


@lru_cache(maxsize=1024)
def _row_class(names: tuple[str, ...]) -> type[PgRow]:
    index = {name: position for position, name in enumerate(names)}
    index.update({name.lower(): position for position, name in enumerate(names) if name.lower() not in index})
    return type("PgRow", (PgRow,), {"__slots__": (), "_names": names, "_index": index})


@lru_cache(maxsize=1024)
def _row_class_of_raw(raw_names: tuple[bytes, ...]) -> type[PgRow]:
    return _row_class(tuple(name.decode() for name in raw_names))


def pg_row(cursor: psycopg.Cursor[Any]) -> RowMaker[PgRow]:
    """psycopg row factory making ``PgRow``s."""
    result = cursor.pgresult
    if result is None or not result.nfields:
        return PgRow
    # The raw column names off the result, not ``cursor.description``: that builds a Column
    # object per column on every execute (``SELECT *`` of jobs has dozens), a profiled cost.
    fname = result.fname
    return _row_class_of_raw(tuple([fname(i) or b"" for i in range(result.nfields)]))


class _SqliteLikeNumericLoader(Loader):
    """``numeric`` as SQLite would give it: an int when whole (``sum()`` of integers), else a float."""

    def load(self, data: Any) -> int | float:
        text = bytes(data).decode()
        if text.lstrip("-").isdigit():
            return int(text)
        return float(text)


class _BoolAsIntDumper(Dumper):
    """Python booleans go in as 0/1 (booleans are INTEGER 0/1 columns on both databases)."""

    oid = psycopg.postgres.types["int8"].oid
    format = Format.TEXT

    def dump(self, obj: Any) -> bytes:
        return b"1" if obj else b"0"


def _configure(conn: psycopg.Connection[Any]) -> None:
    conn.adapters.register_loader("numeric", _SqliteLikeNumericLoader)
    conn.adapters.register_dumper(bool, _BoolAsIntDumper)
    # Typed ``text`` rather than psycopg's default "unknown": ``? IS NULL`` and ``COALESCE(?, x)``
    # need a type, and a string never lands silently in a column of another type.
    conn.adapters.register_dumper(str, StrDumper)
    conn.row_factory = pg_row


def _check_cheaply(conn: psycopg.Connection[Any]) -> None:
    """The pool's check of a connection it hands out, without a round trip when it looks sound.

    ``ConnectionPool.check_connection`` sends an empty query on every checkout: a round trip per
    transaction, a sixth of a submission's. An idle connection out of a transaction has nothing
    to read; one the server closed or is closing (a restart, a terminated backend, a lost TCP
    connection that was reset) has its end-of-file or its last error message waiting. Only then
    is the full check run, which raises, and the pool replaces the connection. One whose end has
    not reached this process yet (a backend still ending, a silent death) fails on its first
    statement instead: a read and a write that had not committed are then run again on another
    connection (``_connection_lost``, ``_LostBeforeCommit``); a read snapshot cut off after its
    BEGIN raises ``DatabaseUnavailable``."""
    if conn.closed:
        ConnectionPool.check_connection(conn)
        return
    poller = select.poll()
    poller.register(conn.pgconn.socket, select.POLLIN | select.POLLPRI)
    if poller.poll(0):
        ConnectionPool.check_connection(conn)


# One statement (one round trip) that starts a read's snapshot: psycopg's ``transaction()``
# sends BEGIN and a SET TRANSACTION would be a second.
_BEGIN_SNAPSHOT = "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY"


_Job = tuple[Callable[..., Any], tuple[Any, ...], contextvars.Context, trio.lowlevel.TrioToken, trio.lowlevel.Task]


class _DatabaseThreads:
    """The threads that run the store's blocking database calls, at most one per pooled connection.

    What ``trio.to_thread.run_sync`` does, for less: an empty hop cost ~170 us of CPU there
    (its capacity limiter, cancel scope and thread cache on top of the hand-over) and ~75 us
    here, on the loaded development machine; the hop was the largest store cost in a profiled
    replica. The threads stay; one that finds more work queued takes it without sleeping; a
    thread is started while every one has a call, up to ``size``. The caller waits for the call
    to finish even when cancelled (it may be a write that is being committed): the cancellation
    lands at its next checkpoint. Calls run in a copy of the caller's context (its context
    variables), as with ``trio.to_thread``."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._outstanding = 0  # calls queued or running; only the event loop's thread changes it

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        await trio.lowlevel.checkpoint_if_cancelled()
        # A thread for every call not yet answered (up to ``size``): calls may wait on each other
        # (one holds a row lock another needs), so none may queue behind a busy thread.
        if self._outstanding >= len(self._threads) and len(self._threads) < self._size:
            self._start_thread()
        task = trio.lowlevel.current_task()
        self._jobs.put((fn, args, contextvars.copy_context(), trio.lowlevel.current_trio_token(), task))
        self._outstanding += 1
        try:
            result: T = await trio.lowlevel.wait_task_rescheduled(lambda _: trio.lowlevel.Abort.FAILED)
        finally:
            self._outstanding -= 1
        return result

    def _start_thread(self) -> None:
        thread = threading.Thread(target=self._work, name=f"tanvrit-store-{len(self._threads)}", daemon=True)
        self._threads.append(thread)
        thread.start()

    def _work(self) -> None:
        jobs = self._jobs
        while True:
            job = jobs.get()
            if job is None:
                return
            fn, args, context, token, task = job
            del job
            result = outcome.capture(context.run, fn, *args)
            del fn, args, context
            # RunFinishedError: the event loop that asked has ended; nobody is waiting.
            with contextlib.suppress(trio.RunFinishedError):
                token.run_sync_soon(trio.lowlevel.reschedule, task, result)
            del token, task, result

    def close(self) -> None:
        """Let every thread end once the calls queued before this one are done."""
        for _ in self._threads:
            self._jobs.put(None)


class PostgresTx:
    """A ``Tx`` over one pooled connection inside one transaction."""

    __slots__ = ("connection", "memo", "statements")

    dialect: Dialect = POSTGRESQL

    def __init__(self, connection: psycopg.Connection[Any]) -> None:
        self.connection = connection
        self.statements = 0  # sent on this transaction (an executemany counts one per row)
        # What this transaction has read and may read again without a round trip (a workspace's
        # webhooks: ``repo.webhooks.live_webhooks``); gone with the transaction, a retry included.
        self.memo: dict[Any, Any] = {}

    def execute(self, sql: str, params: Params = (), /) -> psycopg.Cursor[Any]:
        self.statements += 1
        return self.connection.execute(translate(sql), params)

    def executemany(self, sql: str, seq_of_params: Iterable[Params], /) -> psycopg.Cursor[Any]:
        params = list(seq_of_params)
        self.statements += len(params)
        cursor = self.connection.cursor()
        cursor.executemany(translate(sql), params)
        return cursor


class PostgresCore:
    """Pool, migrations and transactions; the store's query mixins build on it.

    Construct, then ``await open()`` (connects and migrates); ``close()`` at the end."""

    dialect: Dialect = POSTGRESQL

    def __init__(self, url: str, *, pool_max: int = DEFAULT_POOL_MAX, statement_timeout_seconds: float = 0.0,
                 pool_timeout_seconds: float = POOL_TIMEOUT_S) -> None:
        """``pool_max``: connections kept at most (``[store] pool_size``); ``statement_timeout_seconds``:
        the server cancels a statement running longer (``[store] statement_timeout_seconds``; 0: never),
        and the call raises ``DatabaseUnavailable``. Migrations run without it. ``pool_timeout_seconds``:
        how long a transaction waits for a connection before ``DatabaseUnavailable`` (``[store]
        pool_timeout_seconds``)."""
        self.url = url
        kwargs: dict[str, Any] = {"autocommit": True}
        if statement_timeout_seconds > 0:
            # A startup option, not a SET per connection: no round trip, and RESET returns to it.
            options = psycopg.conninfo.conninfo_to_dict(url).get("options")
            timeout = f"-c statement_timeout={max(1, round(statement_timeout_seconds * 1000))}"
            kwargs["options"] = f"{options} {timeout}" if options else timeout
        self._pool: ConnectionPool[psycopg.Connection[Any]] = ConnectionPool(
            url, min_size=1, max_size=pool_max, open=False, configure=_configure,
            check=_check_cheaply, kwargs=kwargs, name="tanvrit-store",
            timeout=pool_timeout_seconds,
        )
        self._threads = _DatabaseThreads(pool_max)
        self._closed = False
        self.commits = 0
        self.retries = 0  # transactions run again after a serialization failure, deadlock or lost race
        # Statements sent to the database (BEGIN and COMMIT included): a statement is a round
        # trip, the largest cost per operation left (docs/deployment.md); ``/metrics`` shows it.
        self.statements = 0
        self._statements_lock = threading.Lock()

    async def open(self) -> None:
        """Connect and bring the schema up to date (safe when several replicas start at once)."""
        await trio.to_thread.run_sync(self._open_sync)

    def _open_sync(self) -> None:
        # One plain connection first: its error says why (refused, unknown host, no such
        # database, authentication), where the pool would only time out after retrying.
        try:
            psycopg.connect(self.url, connect_timeout=CONNECT_TIMEOUT_S).close()
        except psycopg.Error as exc:
            reason = _first_line(exc)
            raise DatabaseUnavailable(f"cannot connect to the database {_redacted(self.url)}: {reason}") from exc
        try:
            self._pool.open(wait=True, timeout=CONNECT_TIMEOUT_S * 3)
        except PoolTimeout as exc:
            raise DatabaseUnavailable(f"cannot open connections to the database {_redacted(self.url)}") from exc
        with self._pool.connection() as conn:
            # A migration may rewrite a large table: no statement timeout for it.
            conn.execute("SET statement_timeout = 0")
            try:
                migrate_postgresql(conn)
            finally:
                if not conn.closed:
                    conn.execute("RESET statement_timeout")

    # --- transactions (run in worker threads) --------------------------------------------
    def _run_write(self, fn: Callable[[Tx], T]) -> T:
        with _outage_is_unavailable():
            return self._run_write_tries(fn)

    def _run_write_tries(self, fn: Callable[[Tx], T]) -> T:
        for tries_left in reversed(range(WRITE_TRIES)):
            with self._pool.connection() as conn:
                tx = PostgresTx(conn)
                try:
                    result = _in_transaction(conn, fn, tx)
                except (*_RETRYABLE, StaleState):
                    self._count(tx.statements + 2)
                    if not tries_left:
                        raise
                    self.retries += 1
                except _LostBeforeCommit as lost:
                    self._count(tx.statements + 1)
                    # The connection died before COMMIT was sent (a restarted server, a stale
                    # pooled connection): nothing was written, so the write runs again on another.
                    if not tries_left:
                        cause = lost.__cause__
                        assert cause is not None
                        raise cause from None
                    self.retries += 1
                else:
                    self._count(tx.statements + 2)  # with BEGIN and COMMIT
                    self.commits += 1
                    return result
            # Spread the retries of transactions that collided, so they do not collide again.
            time.sleep(random.uniform(0, 0.002 * 2 ** min(WRITE_TRIES - tries_left, 6)))
        raise AssertionError("unreachable")

    def _run_read(self, sql: str, params: Params) -> list[Row]:
        with _outage_is_unavailable():
            for tries_left in reversed(range(WRITE_TRIES)):
                with self._pool.connection() as conn:
                    self._count(1)
                    try:
                        return conn.execute(translate(sql), params).fetchall()
                    except psycopg.Error as exc:
                        # A pooled connection the server had ended unseen (``_check_cheaply``):
                        # a read has no effect, so it runs again on another.
                        if not tries_left or not _connection_lost(conn, exc):
                            raise
            raise AssertionError("unreachable")

    def _run_read_with(self, fn: Callable[[Tx], T]) -> T:
        with _outage_is_unavailable():
            for tries_left in reversed(range(WRITE_TRIES)):
                with self._pool.connection() as conn:
                    # One snapshot for every query of the read, and no writes. Ended with COMMIT
                    # even when ``fn`` raised: a read-only transaction has nothing to undo, and
                    # psycopg forgets every prepared statement of a connection on a ROLLBACK it
                    # is sent.
                    try:
                        conn.execute(_BEGIN_SNAPSHOT, prepare=False)
                    except psycopg.Error as exc:
                        # As in ``_run_read``; ``fn`` has not run, so running it later is safe.
                        self._count(1)
                        if not tries_left or not _connection_lost(conn, exc):
                            raise
                        continue
                    tx = PostgresTx(conn)
                    try:
                        return fn(tx)
                    finally:
                        self._count(tx.statements + 2)
                        if not conn.closed:
                            conn.execute("COMMIT", prepare=False)
            raise AssertionError("unreachable")

    def _count(self, statements: int) -> None:
        with self._statements_lock:
            self.statements += statements

    # --- the core interface ----------------------------------------------------------------
    async def _write(self, fn: Callable[[Tx], T]) -> T:
        """Run ``fn(tx)`` in one transaction and return its result once committed; what ``fn``
        raises is raised here, and its writes undone. ``fn`` may run several times (see module).
        A leader task's write checks its fence in the same transaction (coordinator/leader.py)."""
        if self._closed:
            raise StoreClosed("the store is shutting down")
        # Wrapped here, in the caller's task: the fence is a context variable of that task.
        return await self._threads.run(self._run_write, fenced_write(fn))

    async def _read(self, sql: str, params: tuple[Any, ...] | dict[str, Any] = ()) -> list[Row]:
        """The rows of one query, from the latest committed data."""
        if self._closed:
            raise StoreClosed("the store is shutting down")
        return await self._threads.run(self._run_read, sql, params)

    async def _read_with(self, fn: Callable[[Tx], T]) -> T:
        """Run ``fn(tx)`` on one read-only snapshot (several queries that must agree)."""
        if self._closed:
            raise StoreClosed("the store is shutting down")
        return await self._threads.run(self._run_read_with, fn)

    def read_now(self, sql: str, params: tuple[Any, ...] = ()) -> list[Row]:
        """The rows of one query, synchronously (blocking the caller's thread): for tests and
        diagnostics only, as on SQLite (the store's own methods use ``await self._read``)."""
        return self._run_read(sql, params)

    def close(self) -> None:
        self._closed = True
        self._threads.close()
        self._pool.close()

    async def ready(self) -> bool:
        return await self.unready_reason() is None

    async def unready_reason(self) -> str | None:
        """None when the database answers a query within ``READY_TIMEOUT_S``; else why not."""
        # Waiting for a connection no longer than a request would (``pool_timeout_seconds``).
        wait = min(READY_TIMEOUT_S, self._pool.timeout)

        def probe() -> None:
            with self._pool.connection(timeout=wait) as conn:
                conn.execute("SELECT 1")

        if self._closed:
            return "the store is shutting down"
        try:
            with trio.fail_after(READY_TIMEOUT_S * 2):
                # Abandoned on timeout: a hung database must not hold the readiness answer.
                await trio.to_thread.run_sync(probe, abandon_on_cancel=True)
        except PoolTimeout:
            return f"no database connection within {wait:g} s"
        except psycopg.Error as exc:
            return f"the database does not answer: {_first_line(exc)}"
        except trio.TooSlowError:
            return f"the database did not answer within {READY_TIMEOUT_S * 2:g} s"
        return None


class _LostBeforeCommit(Exception):
    """The connection was lost inside the transaction, before its COMMIT."""


# The server ending a connection: its restart or shutdown, a terminated backend. The error can
# come as the answer to the next statement while the connection still looks open.
_SERVER_ENDED = (psycopg.errors.AdminShutdown, psycopg.errors.CrashShutdown, psycopg.errors.ConnectionException)


def _connection_lost(conn: psycopg.Connection[Any], exc: psycopg.Error) -> bool:
    """Whether ``exc`` says ``conn`` is gone (not a statement's own error, not a timeout)."""
    if isinstance(exc, _RETRYABLE):
        return False
    return conn.closed or isinstance(exc, _SERVER_ENDED)


def _in_transaction(conn: psycopg.Connection[Any], fn: Callable[[Tx], T], tx: PostgresTx) -> T:
    """``fn(tx)`` in one transaction on ``conn``; ``_LostBeforeCommit`` when the connection is
    found gone before COMMIT was sent, BEGIN included: a pooled connection the server ended
    passes ``_check_cheaply`` until its end reaches this process, and then fails on BEGIN."""
    began = False
    try:
        with conn.transaction():
            began = True
            try:
                return fn(tx)
            except psycopg.Error as exc:
                if _connection_lost(conn, exc):
                    raise _LostBeforeCommit from exc
                raise
    except psycopg.Error as exc:
        # Raised by BEGIN (nothing sent yet) or by COMMIT (outcome unknown: not run again).
        if not began and _connection_lost(conn, exc):
            raise _LostBeforeCommit from exc
        raise


@contextmanager
def _outage_is_unavailable() -> Iterator[None]:
    """The database going away (a lost connection, a shutdown, no free connection in time)
    raised as ``DatabaseUnavailable``: the API answers 503 and the client tries again. A write
    cut off this way is not run again here: whether its COMMIT landed is unknown (clients retry
    with their idempotency keys)."""
    try:
        yield
    except PoolTimeout as exc:
        # The pool's message names the timeout this store was given ([store] pool_timeout_seconds).
        raise DatabaseUnavailable(f"no database connection free in time: {exc}") from exc
    except _RETRYABLE:
        raise
    except psycopg.OperationalError as exc:
        raise DatabaseUnavailable(f"the database is unavailable: {_first_line(exc)}") from exc
    except psycopg.DatabaseError as exc:
        # The bare class is what psycopg raises for an error without a SQLSTATE, which libpq
        # makes itself when the connection is lost while reading a result.
        if type(exc) is not psycopg.DatabaseError:
            raise
        raise DatabaseUnavailable(f"the database is unavailable: {_first_line(exc)}") from exc


def _redacted(url: str) -> str:
    """``url`` without its password (for messages)."""
    scheme, _, rest = url.partition("://")
    credentials, at, host = rest.rpartition("@")
    if not at or ":" not in credentials:
        return url
    return f"{scheme}://{credentials.split(':', 1)[0]}:***@{host}"


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
