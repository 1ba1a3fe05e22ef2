"""``/readyz`` checks the database: 503 with the reason while it cannot be reached, 200 again
once it is back (a load balancer takes a replica out of rotation on the 503)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.cluster import running_cluster
from tests.postgres import PostgresServer, fresh_database, server_or_skip
from tests.procs import Coordinator, wait_for


@pytest.fixture
def sqlite_coordinator(tmp_path: Path) -> Iterator[Coordinator]:
    coord = Coordinator(tmp_path / "coordinator").start()
    try:
        yield coord
    finally:
        coord.stop()


def test_readyz_is_503_while_the_sqlite_file_is_gone_and_200_once_it_is_back(
        sqlite_coordinator: Coordinator) -> None:
    database = sqlite_coordinator.data_dir / "coordinator.sqlite3"
    assert httpx.get(f"{sqlite_coordinator.url}/readyz", timeout=10).json() == {"status": "ready"}
    aside = database.with_name("moved-away.sqlite3")
    database.rename(aside)
    try:
        answer = httpx.get(f"{sqlite_coordinator.url}/readyz", timeout=10)
        assert answer.status_code == 503
        error = answer.json()["error"]
        assert error["code"] == "store_unavailable"
        assert error["message"].startswith("not ready: the database file ")
        assert str(database) in error["message"]
        # Liveness is a different question: the process itself is fine.
        assert httpx.get(f"{sqlite_coordinator.url}/healthz", timeout=10).status_code == 200
    finally:
        aside.rename(database)
    answer = httpx.get(f"{sqlite_coordinator.url}/readyz", timeout=10)
    assert (answer.status_code, answer.json()) == (200, {"status": "ready"})


def test_readyz_is_503_while_the_sqlite_file_is_replaced_by_another(sqlite_coordinator: Coordinator) -> None:
    database = sqlite_coordinator.data_dir / "coordinator.sqlite3"
    aside = database.with_name("moved-away.sqlite3")
    database.rename(aside)
    database.write_bytes(b"")
    try:
        answer = httpx.get(f"{sqlite_coordinator.url}/readyz", timeout=10)
        assert answer.status_code == 503
        assert "is not the one opened" in answer.json()["error"]["message"]
    finally:
        aside.replace(database)
    wait_for(lambda: httpx.get(f"{sqlite_coordinator.url}/readyz", timeout=10).status_code == 200,
             message="ready again")


@pytest.fixture
def own_server() -> Iterator[PostgresServer]:
    # A server of its own: halting the session's server would fail every other test using it.
    with server_or_skip() as server:
        yield server


def test_readyz_follows_postgresql_going_down_and_coming_back(tmp_path: Path, own_server: PostgresServer) -> None:
    server = own_server
    with fresh_database(server) as url, running_cluster(tmp_path / "cluster", 1, url) as cluster:
        readyz = f"{cluster.urls[0]}/readyz"
        assert httpx.get(readyz, timeout=10).json() == {"status": "ready"}
        server.halt()
        try:
            answer = wait_for(lambda: _unready(readyz), timeout=60, message="/readyz 503 with PostgreSQL down")
            assert answer["code"] == "store_unavailable" and answer["message"].startswith("not ready: ")
            assert httpx.get(f"{cluster.urls[0]}/healthz", timeout=10).status_code == 200
        finally:
            server.resume()
        wait_for(lambda: httpx.get(readyz, timeout=10).status_code == 200, timeout=60,
                 message="/readyz 200 once PostgreSQL is back")
        # And the store works again, not only the probe.
        with cluster.client() as api:
            assert api.post("/v0/jobs", json={"type": "COMMAND", "command": "true"}).status_code == 201


def _unready(url: str) -> dict[str, str] | None:
    answer = httpx.get(url, timeout=10)
    return answer.json()["error"] if answer.status_code == 503 else None
