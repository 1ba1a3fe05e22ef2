"""Every state change is a compare-and-set: correctness does not rest on the single writer.

Two connections to one SQLite file stand in for two transactions of two replicas. The loser
reads before the winner commits and writes after it, as under PostgreSQL's READ COMMITTED:
its reads run outside a transaction (each its own snapshot) and it takes the write lock only
at its first change (``RacingTx``). The store's own functions run on both; the lost race
must be refused (``StaleState``, nothing written), never a silent overwrite.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any

import pytest

from common.protocol import LogEvent
from common.states import AgentState, JobState
from coordinator.store.base import AgentRecord, JobRecord, TokenRecord
from coordinator.store.db import Dialect, Params, SqliteTx, Tx
from coordinator.store.errors import StaleState
from coordinator.store.sqlite import open_sqlite_store
from coordinator.store.sqlite_agents import apply_event_batch, claim_next_job
from coordinator.store.sqlite_core import _connect
from coordinator.store.sqlite_jobs import transition_job

FREE = {"cpus": 64.0, "memoryMb": 1 << 20, "gpus": 0}
_WRITES = ("INSERT", "UPDATE", "DELETE", "SAVEPOINT")


class RacingTx:
    """A ``Tx`` that reads outside any transaction and, at its first write, first lets
    ``rival`` run and commit a whole transaction of its own, then takes the write lock."""

    def __init__(self, conn: sqlite3.Connection, rival: Callable[[], None]) -> None:
        self._conn = conn
        self._rival: Callable[[], None] | None = rival
        self.dialect: Dialect = SqliteTx(conn).dialect

    def execute(self, sql: str, params: Params = (), /) -> Any:
        if self._rival is not None and sql.lstrip().upper().startswith(_WRITES):
            rival, self._rival = self._rival, None
            rival()
            self._conn.execute("BEGIN IMMEDIATE")
        return self._conn.execute(sql, params)

    def executemany(self, sql: str, seq_of_params: Any, /) -> Any:
        return self._conn.executemany(sql, seq_of_params)


@contextmanager
def _transaction(conn: sqlite3.Connection) -> Iterator[Tx]:
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield SqliteTx(conn)
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def _race(path: Path, winner: Callable[[Tx], Any], loser: Callable[[Tx], Any]) -> tuple[Any, BaseException | None]:
    """Run ``loser`` on one connection with ``winner`` committing on another between the
    loser's reads and its first write; return the winner's result and what the loser raised."""
    with closing(_connect(path)) as conn_a, closing(_connect(path)) as conn_b:
        won: list[Any] = []

        def rival() -> None:
            with _transaction(conn_a) as tx:
                won.append(winner(tx))

        try:
            loser(RacingTx(conn_b, rival))
        except StaleState as exc:
            conn_b.execute("ROLLBACK")
            return won[0], exc
        conn_b.execute("COMMIT")
        return won[0], None


async def _world(path: Path, *, jobs: int = 1, agents: tuple[str, ...] = ("agt_a", "agt_b")) -> None:
    async with open_sqlite_store(path) as store:
        await store.bootstrap(user_id="usr_1", email="o@x", workspace_id="ws_1", workspace_name="w", plan="hobby",
                              tokens=[], now=0)
        for index in range(jobs):
            await store.insert_job(JobRecord(id=f"job_{index}", workspace_id="ws_1", state=JobState.QUEUED,
                                             command="true", name=None, labels={}, resources=None, env={},
                                             timeout_seconds=60, created_at=index + 1))
        for agent_id in agents:
            await store.register_agent(
                AgentRecord(id=agent_id, workspace_id="ws_1", name=agent_id, state=AgentState.READY, labels={},
                            capacity=FREE, version="t", registered_at=0),
                TokenRecord(id=f"tok_{agent_id}", kind="agent", token_hash=f"h_{agent_id}", workspace_id="ws_1",
                            user_id=None, agent_id=agent_id, name="a", created_at=0),
            )


def _rows(path: Path, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    with closing(_connect(path)) as conn:
        return [tuple(row) for row in conn.execute(sql, params).fetchall()]


async def test_a_transition_decided_on_a_stale_row_is_refused_and_writes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "db"
    await _world(path)
    with closing(_connect(path)) as conn:
        stale = conn.execute("SELECT * FROM jobs WHERE id = 'job_0'").fetchone()

    def cancel(tx: Tx) -> None:
        transition_job(tx, stale, JobState.CANCELLED, now=5, finished_at=5, reason="cancelled")

    def assign(tx: Tx) -> None:
        transition_job(tx, stale, JobState.ASSIGNED, now=6, agent_id="agt_b", epoch=1, assigned_at=6)

    _, lost = _race(path, cancel, assign)
    assert isinstance(lost, StaleState)
    assert str(lost) == "job job_0 is no longer QUEUED at epoch 0"
    assert _rows(path, "SELECT state, agent_id, epoch FROM jobs") == [("CANCELLED", None, 0)]
    assert _rows(path, "SELECT COUNT(*) FROM job_attempts") == [(0,)]


async def test_two_claims_racing_for_one_job_give_exactly_one_winner(tmp_path: Path) -> None:
    path = tmp_path / "db"
    await _world(path, jobs=1)
    won, lost = _race(path, lambda tx: claim_next_job(tx, "agt_a", FREE, None, 10),
                      lambda tx: claim_next_job(tx, "agt_b", FREE, None, 10))
    assert won is not None and won.jobId == "job_0" and won.epoch == 1
    assert isinstance(lost, StaleState)
    assert _rows(path, "SELECT state, agent_id, epoch FROM jobs") == [("ASSIGNED", "agt_a", 1)]
    assert _rows(path, "SELECT job_id, epoch, agent_id FROM job_attempts") == [("job_0", 1, "agt_a")]
    # Run again (as the store does after a lost compare-and-set): nothing is left to claim.
    with closing(_connect(path)) as conn, _transaction(conn) as tx:
        assert claim_next_job(tx, "agt_b", FREE, None, 11) is None


async def test_the_loser_of_a_claim_race_takes_the_next_job_when_run_again(tmp_path: Path) -> None:
    path = tmp_path / "db"
    await _world(path, jobs=2)
    won, lost = _race(path, lambda tx: claim_next_job(tx, "agt_a", FREE, None, 10),
                      lambda tx: claim_next_job(tx, "agt_b", FREE, None, 10))
    assert won.jobId == "job_0" and isinstance(lost, StaleState)
    with closing(_connect(path)) as conn, _transaction(conn) as tx:
        again = claim_next_job(tx, "agt_b", FREE, None, 11)
    assert again is not None and again.jobId == "job_1"
    assert _rows(path, "SELECT id, agent_id, epoch FROM jobs ORDER BY id") == [("job_0", "agt_a", 1),
                                                                                ("job_1", "agt_b", 1)]


async def test_last_seq_advances_by_compare_and_set(tmp_path: Path) -> None:
    """A retried events batch racing its original: one applies it, the other is refused
    whole, and when run again finds every event a replay: the log holds each line once."""
    path = tmp_path / "db"
    await _world(path, jobs=1)
    with closing(_connect(path)) as conn, _transaction(conn) as tx:
        assignment = claim_next_job(tx, "agt_a", FREE, None, 10)
    assert assignment is not None
    batch = [LogEvent(seq=1, jobId="job_0", epoch=1, data="one\n"),
             LogEvent(seq=2, jobId="job_0", epoch=1, data="two\n")]

    won, lost = _race(path, lambda tx: apply_event_batch(tx, "agt_a", batch, 20),
                      lambda tx: apply_event_batch(tx, "agt_a", batch, 20))
    assert won.appliedThrough == 2 and won.rejected == []
    assert isinstance(lost, StaleState)
    with closing(_connect(path)) as conn, _transaction(conn) as tx:
        replay = apply_event_batch(tx, "agt_a", batch, 21)
    assert replay.appliedThrough == 2 and replay.rejected == []
    assert _rows(path, "SELECT last_seq FROM agents WHERE id = 'agt_a'") == [(2,)]
    assert _rows(path, 'SELECT "offset", data FROM job_logs ORDER BY "offset"') == [(0, b"one\n"), (4, b"two\n")]
    assert _rows(path, "SELECT log_size FROM jobs") == [(8,)]


async def test_last_seq_alone_is_compared(tmp_path: Path) -> None:
    """Events refused for their content write only audit rows and ``last_seq``: the
    compare-and-set on ``last_seq`` is what refuses the second of two racing batches."""
    path = tmp_path / "db"
    await _world(path, jobs=0)
    refused = {1: "invalid_event", 2: "invalid_event"}
    won, lost = _race(path, lambda tx: apply_event_batch(tx, "agt_a", [], 20, refused=refused),
                      lambda tx: apply_event_batch(tx, "agt_a", [], 20, refused=refused))
    assert won.appliedThrough == 2
    assert isinstance(lost, StaleState) and str(lost) == "agent agt_a's events advanced past 0 meanwhile"
    assert _rows(path, "SELECT COUNT(*) FROM audit_events WHERE action = 'agent.event_refused'") == [(2,)]


async def test_the_store_runs_a_write_again_after_a_lost_compare_and_set(tmp_path: Path) -> None:
    """Under the single writer a race is never lost; a write whose compare-and-set loses
    anyway is undone and run again on the data as it stands (``WRITE_TRIES`` in all)."""
    async with open_sqlite_store(tmp_path / "db") as store:
        runs: list[int] = []

        def flaky(tx: Tx) -> str:
            runs.append(1)
            tx.execute("INSERT INTO users (id, email, created_at) VALUES (?, ?, 0)",
                       (f"usr_{len(runs)}", f"{len(runs)}@x"))
            if len(runs) < 3:
                raise StaleState("lost")
            return "done"

        assert await store._write(flaky) == "done"
        assert [row["id"] for row in store.read_now("SELECT id FROM users")] == ["usr_3"]

        def hopeless(tx: Tx) -> None:
            raise StaleState("always lost")

        with pytest.raises(StaleState, match=r"^always lost$"):
            await store._write(hopeless)

