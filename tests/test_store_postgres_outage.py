"""The database going away and coming back: 503 while it is down, served again once it is up.

The stores here wait at most ``POOL_WAIT_S`` for a connection (``[store] pool_timeout_seconds``)
instead of the default 10 s: each failure during the outage is then quick, and the outage short
enough that the pool's reconnection backoff (1 s, then doubling) has not grown long."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import trio

from coordinator.store.db import Tx
from coordinator.store.errors import DatabaseUnavailable
from coordinator.store.postgres_core import PostgresCore
from tests.inproc import open_inprocess
from tests.postgres import PostgresServer, server_or_skip

POOL_WAIT_S = 0.5


@pytest.fixture(scope="module")
def own_server() -> Iterator[PostgresServer]:
    """A server of this module's own (one for its outage tests, which run one after another):
    halting the session's would pull it from under other tests."""
    with server_or_skip() as server:
        yield server


@pytest.fixture
def haltable(own_server: PostgresServer) -> Iterator[tuple[PostgresServer, str]]:
    """``own_server`` and the URL of a fresh database on it; the server is running again after
    the test, even one that failed during its outage."""
    name = own_server.create_database()
    try:
        yield own_server, own_server.url(name)
    finally:
        if not (own_server.data_dir / "postmaster.pid").exists():
            own_server.resume()
        own_server.drop_database(name)


async def _until_ready(core: PostgresCore) -> None:
    """Wait (a condition, generous deadline) until the pool has reconnected, as a load balancer does."""
    with trio.fail_after(90):
        for _ in range(100_000):  # polls a server process: no event to wait on
            if await core.unready_reason() is None:
                return
            await trio.sleep(0.1)


async def test_an_outage_is_unavailable_then_the_pool_reconnects(haltable: tuple[PostgresServer, str]) -> None:
    server, url = haltable
    core = PostgresCore(url, pool_max=2, pool_timeout_seconds=POOL_WAIT_S)
    await core.open()
    try:
        await core._write(lambda tx: tx.execute("CREATE TABLE t (n BIGINT)"))
        server.halt()
        assert await core.unready_reason() is not None

        def insert(tx: Tx) -> None:
            tx.execute("INSERT INTO t (n) VALUES (1)")

        with pytest.raises(DatabaseUnavailable, match=r"^(the database is unavailable|no database connection)"):
            await core._write(insert)
        with pytest.raises(DatabaseUnavailable):
            await core._read("SELECT n FROM t")
        server.resume()
        # Connections broken by the restart are replaced when they are next taken.
        await _until_ready(core)
        await core._write(insert)
        assert [tuple(row) for row in await core._read("SELECT n FROM t")] == [(1,)]
        assert await core.unready_reason() is None
    finally:
        core.close()


async def test_a_connection_lost_before_commit_runs_the_write_again(postgres_url: str) -> None:
    core = PostgresCore(postgres_url, pool_max=2)
    await core.open()
    try:
        await core._write(lambda tx: tx.execute("CREATE TABLE t (n BIGINT)"))
        runs: list[int] = []

        def insert(tx: Tx) -> None:
            tx.execute("INSERT INTO t (n) VALUES (?)", (len(runs),))
            runs.append(1)
            if len(runs) == 1:  # the server drops this connection mid-transaction
                pid = tx.execute("SELECT pg_backend_pid()").fetchone()[0]
                with psycopg.connect(postgres_url, autocommit=True) as admin:
                    admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
                tx.execute("SELECT 1")

        await core._write(insert)
        assert len(runs) == 2
        assert [tuple(row) for row in await core._read("SELECT n FROM t")] == [(1,)]  # only the second run's row
    finally:
        core.close()


async def test_the_api_answers_503_while_the_database_is_down(tmp_path: Path,
                                                             haltable: tuple[PostgresServer, str]) -> None:
    server, url = haltable
    async with open_inprocess(tmp_path, database_url=url, store_pool_timeout_seconds=POOL_WAIT_S) as co, \
            co.client() as api:
        assert (await api.get("/v0/jobs")).status_code == 200
        server.halt()
        down = await api.post("/v0/jobs", json={"type": "COMMAND", "command": "true"})
        assert down.status_code == 503, down.text
        assert down.json()["error"]["code"] == "store_unavailable"
        assert down.headers["Retry-After"] == "1"
        assert (await api.get("/readyz")).status_code == 503
        server.resume()
        # Ready again once the pool has reconnected (after its backoff), as a load balancer sees.
        with trio.fail_after(90):
            for _ in range(100_000):  # polls a server process: no event to wait on
                if (await api.get("/readyz")).status_code == 200:
                    break
                await trio.sleep(0.2)
        assert (await api.post("/v0/jobs", json={"type": "COMMAND", "command": "true"})).status_code == 201


def _terminate_pool(url: str) -> None:
    """End every other backend of the database (the pool's idle connections) from the server side,
    as a restart does; ``pg_terminate_backend`` only signals them, so some may not be gone yet."""
    with psycopg.connect(url, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                      " WHERE datname = current_database() AND pid <> pg_backend_pid()")


@pytest.mark.parametrize("call", ["write", "read", "read_with"])
async def test_pooled_connections_the_server_ended_are_never_an_unexpected_error(postgres_url: str,
                                                                                 call: str) -> None:
    core = PostgresCore(postgres_url, pool_max=3, pool_timeout_seconds=10)
    await core.open()
    try:
        await core._write(lambda tx: tx.execute("CREATE TABLE t (n BIGINT)"))
        written = 0
        for _ in range(3):
            _terminate_pool(postgres_url)
            try:
                if call == "write":
                    await core._write(lambda tx: tx.execute("INSERT INTO t (n) VALUES (1)"))
                    written += 1
                elif call == "read":
                    await core._read("SELECT count(*) FROM t")
                else:
                    await core._read_with(lambda tx: tx.execute("SELECT count(*) FROM t").fetchall())
            except DatabaseUnavailable:
                # Only for a read snapshot whose backend ended after its BEGIN (``fn`` ran): a
                # write runs again, and so does a read that found its connection gone first.
                assert call == "read_with"
        assert written == (3 if call == "write" else 0)
        assert (await core._read("SELECT count(*) FROM t"))[0][0] == written
    finally:
        core.close()
