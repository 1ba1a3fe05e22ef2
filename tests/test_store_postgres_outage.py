"""The database going away and coming back: 503 while it is down, served again once it is up."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest
import trio

from coordinator.store.db import Tx
from coordinator.store.errors import DatabaseUnavailable
from coordinator.store.postgres_core import PostgresCore
from tests.inproc import open_inprocess
from tests.postgres import fresh_database, running_server


async def test_an_outage_is_unavailable_then_the_pool_reconnects(tmp_path: Path) -> None:
    # A server of its own: halting the session's would pull it from under other tests.
    with running_server() as server, fresh_database(server) as url:
        core = PostgresCore(url, pool_max=2)
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


async def test_the_api_answers_503_while_the_database_is_down(tmp_path: Path) -> None:
    with running_server() as server, fresh_database(server) as url:
        async with open_inprocess(tmp_path, database_url=url) as co, co.client() as api:
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
