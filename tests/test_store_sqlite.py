"""What only the SQLite store does: group commit, migration files. The rest of the store's
behaviour is the contract every backend passes (tests/test_store_contract.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from common.protocol import CapacityMsg
from common.states import AgentState, JobState
from coordinator.store.base import AgentRecord, JobFilter, JobRecord, TokenRecord
from coordinator.store.sqlite import open_sqlite_store

FREE = CapacityMsg(cpus=64, memoryMb=1 << 20, gpus=0)


async def test_claims_that_arrive_together_share_a_commit(tmp_path: Path) -> None:
    async with open_sqlite_store(tmp_path / "db") as store:
        await store.bootstrap(user_id="usr_1", email="o@x", workspace_id="ws_1", workspace_name="w", plan="hobby",
                              tokens=[], now=0)
        for index in range(200):
            await store.insert_job(JobRecord(id=f"job_{index:04d}", workspace_id="ws_1", state=JobState.QUEUED,
                                             command="true", name=None, labels={}, resources=None, env={},
                                             timeout_seconds=60, created_at=index))
        agents = [f"agt_{n:02d}" for n in range(20)]
        for agent_id in agents:
            await store.register_agent(
                AgentRecord(id=agent_id, workspace_id="ws_1", name=agent_id, state=AgentState.READY, labels={},
                            capacity=FREE.model_dump(), version="t", registered_at=0),
                TokenRecord(id=f"tok_{agent_id}", kind="agent", token_hash=f"h{agent_id}", workspace_id="ws_1",
                            user_id=None, agent_id=agent_id, name="a", created_at=0),
            )
        before = store.commits

        async def claimer(agent_id: str) -> None:
            while await store.claim_job(agent_id, FREE, None, 1) is not None:
                pass

        async with trio.open_nursery() as nursery:
            for agent_id in agents:
                nursery.start_soon(claimer, agent_id)
        # 200 claims and 20 empty ones: writes that arrived together were committed together.
        assert store.commits - before < 200 + 20


async def test_reads_run_inline_in_the_event_loop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """SQLite's reads are awaitable (the interface PostgreSQL needs) but never leave the event
    loop: an indexed read costs microseconds, less than a hop to a worker thread (issue 15)."""
    async with open_sqlite_store(tmp_path / "db") as store:
        await store.bootstrap(user_id="usr_1", email="o@x", workspace_id="ws_1", workspace_name="w", plan="hobby",
                              tokens=[], now=0)

        def no_thread(*_args: object, **_kwargs: object) -> None:
            raise AssertionError("a read left the event loop")

        monkeypatch.setattr(trio.to_thread, "run_sync", no_thread)
        workspace = await store.get_workspace("ws_1")
        assert workspace is not None and workspace.name == "w"
        assert await store.list_jobs("ws_1", JobFilter(), limit=10, before_id=None) == []
        assert await store.membership("ws_1", "usr_1") is not None


def test_migration_numbers_are_unique() -> None:
    """A migration whose number another already uses would be skipped on every store that applied the first."""
    from coordinator.store.sqlite_core import _migrations

    numbers = [number for number, _ in _migrations()]
    assert numbers == sorted(set(numbers))


def test_a_duplicate_migration_number_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from coordinator.store import sqlite_core

    folder = tmp_path / "migrations"
    folder.mkdir()
    (folder / "0001_a.sql").write_text("CREATE TABLE a (x INTEGER);")
    (folder / "0001_b.sql").write_text("CREATE TABLE b (x INTEGER);")
    monkeypatch.setattr(sqlite_core.resources, "files", lambda _package: tmp_path)
    with pytest.raises(RuntimeError, match=r"^two migrations share number 1: 0001_\w\.sql and 0001_\w\.sql$"):
        sqlite_core._migrations()
