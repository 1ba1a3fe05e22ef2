"""The PostgreSQL core: placeholders, rows, values as SQLite gives them, transactions and their retries."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest
import trio

from coordinator.store.db import Tx
from coordinator.store.errors import StaleState, StoreClosed
from coordinator.store.postgres_core import WRITE_TRIES, PostgresCore, translate
from tests.postgres import PostgresServer


@pytest.mark.parametrize(("sql", "expected"), [
    ("SELECT * FROM t WHERE a = ? AND b = ?", "SELECT * FROM t WHERE a = %s AND b = %s"),
    ("SELECT * FROM t WHERE a = :a AND b = :b_2", "SELECT * FROM t WHERE a = %(a)s AND b = %(b_2)s"),
    ("SELECT x::jsonb FROM t WHERE y = :y", "SELECT x::jsonb FROM t WHERE y = %(y)s"),
    ("SELECT '?', ':no', 'it''s ?' FROM t", "SELECT '?', ':no', 'it''s ?' FROM t"),
    ("SELECT \"odd?name\" FROM t", "SELECT \"odd?name\" FROM t"),
    ("SELECT a % 2, 'x%' FROM t WHERE b LIKE ?", "SELECT a %% 2, 'x%%' FROM t WHERE b LIKE %s"),
    ("SELECT 1 -- what? :x\nFROM t WHERE a = ?", "SELECT 1 -- what? :x\nFROM t WHERE a = %s"),
    ("SELECT /* ? */ 1 WHERE a = ?", "SELECT /* ? */ 1 WHERE a = %s"),
])
def test_placeholders_become_psycopg_ones(sql: str, expected: str) -> None:
    assert translate(sql) == expected


@pytest.fixture
async def core(postgres_url: str) -> AsyncIterator[PostgresCore]:
    core = PostgresCore(postgres_url, pool_max=4)
    await core.open()
    try:
        yield core
    finally:
        core.close()


async def _table(core: PostgresCore) -> None:
    def create(tx: Tx) -> None:
        tx.execute("CREATE TABLE items (id TEXT PRIMARY KEY, n BIGINT NOT NULL, flag BIGINT NOT NULL DEFAULT 0, "
                   "note TEXT, blob BYTEA)")
        tx.executemany("INSERT INTO items (id, n) VALUES (?, ?)", [("a", 1), ("b", 2), ("c", 3)])
    await core._write(create)


async def test_rows_index_by_name_and_position_and_values_read_as_on_sqlite(core: PostgresCore) -> None:
    await _table(core)
    await core._write(lambda tx: tx.execute("UPDATE items SET flag = ?, note = ?, blob = ? WHERE id = ?",
                                            (True, "50% off", b"\x00\xff", "a")))
    [row] = await core._read("SELECT id, n AS Count, flag, note, blob FROM items WHERE id = :id", {"id": "a"})
    assert (row["id"], row[1], row["count"], row["Count"], row["flag"]) == ("a", 1, 1, 1, 1)
    assert (row["note"], row["blob"], row.keys()) == ("50% off", b"\x00\xff", ["id", "count", "flag", "note", "blob"])
    assert dict(row) == {"id": "a", "count": 1, "flag": 1, "note": "50% off", "blob": b"\x00\xff"}
    # sum() of a BIGINT is numeric on PostgreSQL: it comes back an int, as SQLite's would.
    [total] = await core._read("SELECT sum(n) AS total, avg(n) AS mean FROM items")
    assert (total["total"], type(total["total"]), total["mean"]) == (6, int, 2.0)
    # A NULL parameter takes its type from the column beside it, and a literal % survives.
    rows = await core._read("SELECT id FROM items WHERE COALESCE(?, id) = id AND note IS NOT DISTINCT FROM ? "
                            "AND note LIKE '50%'", (None, "50% off"))
    assert [r["id"] for r in rows] == ["a"]


async def test_a_write_that_raises_is_undone_whole(core: PostgresCore) -> None:
    await _table(core)

    def half_then_fail(tx: Tx) -> None:
        tx.execute("UPDATE items SET n = 100 WHERE id = 'a'")
        raise ValueError("no")

    with pytest.raises(ValueError, match=r"^no$"):
        await core._write(half_then_fail)
    assert [tuple(r) for r in await core._read("SELECT n FROM items WHERE id = 'a'")] == [(1,)]


async def test_a_lost_compare_and_set_runs_the_write_again(core: PostgresCore) -> None:
    await _table(core)
    runs: list[int] = []

    def bump(tx: Tx) -> int:
        [row] = tx.execute("SELECT n FROM items WHERE id = 'a'").fetchall()
        runs.append(row["n"])
        if len(runs) == 1:
            # Another replica changes the row between our read and our compare-and-set.
            with psycopg.connect(core.url, autocommit=True) as other:
                other.execute("UPDATE items SET n = 10 WHERE id = 'a'")
        changed = tx.execute("UPDATE items SET n = ? WHERE id = 'a' AND n = ?", (row["n"] + 1, row["n"])).rowcount
        if changed != 1:
            raise StaleState("n moved")
        return int(row["n"]) + 1

    assert await core._write(bump) == 11
    assert runs == [1, 10]

    def always_stale(tx: Tx) -> None:
        raise StaleState("lost again")

    with pytest.raises(StaleState, match=r"^lost again$"):
        await core._write(always_stale)
    assert core.retries == 1 + WRITE_TRIES - 1


async def test_a_deadlock_victim_is_run_again_and_both_writes_commit(core: PostgresCore) -> None:
    await _table(core)
    both_hold_one = threading.Barrier(2)

    def lock_in_order(first: str, second: str) -> Any:
        runs: list[int] = []

        def fn(tx: Tx) -> None:
            tx.execute("UPDATE items SET n = n + 1 WHERE id = ?", (first,))
            runs.append(1)
            if len(runs) == 1:  # the first run of each holds one row and wants the other's
                both_hold_one.wait(timeout=10)
            tx.execute("UPDATE items SET n = n + 1 WHERE id = ?", (second,))
        return fn

    async with trio.open_nursery() as nursery:
        nursery.start_soon(core._write, lock_in_order("a", "b"))
        nursery.start_soon(core._write, lock_in_order("b", "a"))
    rows = await core._read("SELECT id, n FROM items WHERE id IN ('a', 'b') ORDER BY id")
    assert [tuple(r) for r in rows] == [("a", 3), ("b", 4)]
    assert core.retries >= 1


async def test_skip_locked_claimers_take_different_rows(core: PostgresCore) -> None:
    await _table(core)
    claimed: list[str] = []
    both_locked = threading.Barrier(2)

    def claim(tx: Tx) -> None:
        sql = f"SELECT id FROM items WHERE flag = 0 ORDER BY n LIMIT 1 {tx.dialect.skip_locked}"
        [row] = tx.execute(sql).fetchall()
        tx.execute("UPDATE items SET flag = 1 WHERE id = ? AND flag = 0", (row["id"],))
        claimed.append(row["id"])
        both_locked.wait(timeout=10)  # neither commits before the other has claimed

    async with trio.open_nursery() as nursery:
        nursery.start_soon(core._write, claim)
        nursery.start_soon(core._write, claim)
    assert sorted(claimed) == ["a", "b"]


async def test_ready_says_whether_the_database_answers(core: PostgresCore, postgres_server: PostgresServer) -> None:
    assert await core.ready()
    gone = PostgresCore(f"postgresql://postgres@127.0.0.1:{_closed_port()}/x")
    try:
        assert not await gone.ready()
    finally:
        gone.close()
    core.close()
    with pytest.raises(StoreClosed):
        await core._read("SELECT 1")


def _closed_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_a_statement_past_the_timeout_is_cancelled_and_unavailable(postgres_url: str) -> None:
    from coordinator.store.errors import DatabaseUnavailable

    core = PostgresCore(f"{postgres_url}?options=-c%20application_name%3Dtimeout-test", pool_max=2,
                        statement_timeout_seconds=0.05)
    await core.open()  # migrations run without the timeout
    try:
        with pytest.raises(DatabaseUnavailable, match="statement timeout"):
            await core._read("SELECT pg_sleep(2)")
        # The URL's own options are kept beside the timeout.
        rows = await core._read("SELECT current_setting('statement_timeout'), current_setting('application_name')")
        assert tuple(rows[0]) == ("50ms", "timeout-test")
        assert [tuple(row) for row in await core._read("SELECT 1")] == [(1,)]
    finally:
        core.close()


async def test_a_read_snapshot_that_raises_leaves_its_connection_usable(core: PostgresCore) -> None:
    await _table(core)

    def failing(tx: Tx) -> None:
        tx.execute("SELECT n FROM items")
        tx.execute("SELECT no_such_column FROM items")

    for _ in range(6):  # more reads than the pool has connections
        with pytest.raises(psycopg.errors.UndefinedColumn):
            await core._read_with(failing)

    def snapshot(tx: Tx) -> tuple[str, list[int]]:
        level = tx.execute("SELECT current_setting('transaction_isolation')").fetchone()[0]
        return level, [row["n"] for row in tx.execute("SELECT n FROM items ORDER BY n").fetchall()]

    assert await core._read_with(snapshot) == ("repeatable read", [1, 2, 3])
    # Writes still run at READ COMMITTED on the same pooled connections.
    levels = {await core._write(lambda tx: tx.execute("SHOW transaction_isolation").fetchone()[0]) for _ in range(4)}
    assert levels == {"read committed"}


async def test_a_pooled_connection_the_server_ended_is_replaced_not_used(core: PostgresCore, postgres_url: str) -> None:
    pids = {row[0] for row in [(await core._read("SELECT pg_backend_pid()"))[0] for _ in range(3)]}
    with psycopg.connect(postgres_url, autocommit=True) as admin:
        for pid in pids:
            # With a timeout it returns once the backend is gone (its goodbye sent).
            assert admin.execute("SELECT pg_terminate_backend(%s, 10000)", (pid,)).fetchone()[0]
    # Every terminated connection is noticed at checkout (its socket has the server's goodbye)
    # and replaced: reads, which are not retried, do not fail.
    for _ in range(6):
        assert [tuple(row) for row in await core._read("SELECT 1")] == [(1,)]
