"""``/readyz`` checks the database: 503 with the reason while it cannot be reached, 200 again
once it is back (a load balancer takes a replica out of rotation on the 503)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

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
