"""Every state change is a compare-and-set: correctness does not rest on the single writer.

Two connections to one database stand in for two replicas' transactions, on each backend. The
loser reads before the winner commits and writes after it, as under PostgreSQL's READ
COMMITTED: at its first write (``RacingTx``) it lets the rival run and commit a whole
transaction, then goes on. On SQLite its reads run outside a transaction (each its own
snapshot) and it takes the write lock only then. The store's own functions run on both
connections; a lost race must be refused (``StaleState``, nothing written), never a silent
overwrite. On PostgreSQL a claim may also be passed over instead (``SKIP LOCKED``): either
way each job is assigned once.
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, closing, contextmanager
from pathlib import Path
from typing import Any, Protocol

import pytest

from common.protocol import LogEvent
from common.states import AgentState, JobState
from coordinator.store.base import AgentRecord, Store, TokenRecord
from coordinator.store.db import Dialect, Params, SqliteTx, Tx
from coordinator.store.errors import StaleState
from coordinator.store.factory import open_store
from coordinator.store.queries.agents import apply_event_batch, claim_next_job
from coordinator.store.queries.jobs import transition_job
from coordinator.store.sqlite_core import _connect

FREE = {"cpus": 64.0, "memoryMb": 1 << 20, "gpus": 0}
_WRITES = ("INSERT", "UPDATE", "DELETE", "SAVEPOINT")
# A statement that writes through a WITH (PostgreSQL: a job's compare-and-set with its attempt).
_WRITING_WITH = re.compile(r"^\s*WITH\b.*?\bAS\s*\(\s*(INSERT|UPDATE|DELETE)\b", re.IGNORECASE | re.DOTALL)


class Outcome:
    """What a race left: the winner's result, and the loser's result or what it raised."""

    def __init__(self, won: Any, lost: Any, error: StaleState | None) -> None:
        self.won, self.lost, self.error = won, lost, error


class Database(Protocol):
    def transaction(self) -> AbstractContextManager[Tx]: ...

    def race(self, winner: Callable[[Tx], Any], loser: Callable[[Tx], Any]) -> Outcome: ...


class RacingTx:
    """A ``Tx`` whose first write first runs ``rival`` (a whole transaction on another
    connection, committed), then ``begin`` (SQLite: take the write lock), then itself."""

    def __init__(self, inner: Tx, rival: Callable[[], None], begin: Callable[[], None]) -> None:
        self._inner = inner
        self._rival: Callable[[], None] | None = rival
        self._begin = begin
        self.dialect: Dialect = inner.dialect

    def execute(self, sql: str, params: Params = (), /) -> Any:
        if self._rival is not None and (sql.lstrip().upper().startswith(_WRITES) or _WRITING_WITH.match(sql)):
            rival, self._rival = self._rival, None
            rival()
            self._begin()
        return self._inner.execute(sql, params)

    def executemany(self, sql: str, seq_of_params: Any, /) -> Any:
        return self._inner.executemany(sql, seq_of_params)


class SqliteDatabase:
    def __init__(self, path: Path) -> None:
        self.path = path

    @contextmanager
    def transaction(self) -> Iterator[Tx]:
        with closing(_connect(self.path)) as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield SqliteTx(conn)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def race(self, winner: Callable[[Tx], Any], loser: Callable[[Tx], Any]) -> Outcome:
        won: list[Any] = []

        def rival() -> None:
            with self.transaction() as tx:
                won.append(winner(tx))

        with closing(_connect(self.path)) as conn:
            try:
                lost = loser(RacingTx(SqliteTx(conn), rival, lambda: conn.execute("BEGIN IMMEDIATE")))
            except StaleState as exc:
                conn.execute("ROLLBACK")
                return Outcome(won[0], None, exc)
            conn.execute("COMMIT")
        return Outcome(won[0], lost, None)


class PostgresqlDatabase:
    def __init__(self, url: str) -> None:
        self.url = url

    def _connect(self) -> Any:
        import psycopg

        from coordinator.store import postgres_core

        conn = psycopg.connect(self.url, autocommit=True)
        postgres_core._configure(conn)
        return conn

    @contextmanager
    def transaction(self) -> Iterator[Tx]:
        from coordinator.store.postgres_core import PostgresTx

        with closing(self._connect()) as conn, conn.transaction():
            yield PostgresTx(conn)

    def race(self, winner: Callable[[Tx], Any], loser: Callable[[Tx], Any]) -> Outcome:
        from coordinator.store.postgres_core import PostgresTx

        won: list[Any] = []

        def rival() -> None:
            with self.transaction() as tx:
                won.append(winner(tx))

        with closing(self._connect()) as conn:
            try:
                with conn.transaction():  # READ COMMITTED: each statement sees what is committed
                    lost = loser(RacingTx(PostgresTx(conn), rival, lambda: None))
            except StaleState as exc:
                return Outcome(won[0], None, exc)
        return Outcome(won[0], lost, None)


@pytest.fixture
async def db(store_url: str) -> Database:
    """The database of ``store_url`` with a workspace, two jobs' worth of room and agents
    ``agt_a`` and ``agt_b`` (made through the store), for raw connections to race on."""
    if store_url.startswith("postgresql"):
        if importlib.util.find_spec("coordinator.store.postgres_core") is None:
            pytest.skip("the PostgreSQL core (coordinator/store/postgres_core.py) is not on main yet")
        database: Database = PostgresqlDatabase(store_url)
    else:
        database = SqliteDatabase(Path(store_url))
    async with open_store(store_url) as store:
        await store.bootstrap(user_id="usr_1", email="o@x", workspace_id="ws_1", workspace_name="w", plan="hobby",
                              tokens=[], now=0)
        for agent_id in ("agt_a", "agt_b"):
            await store.register_agent(
                AgentRecord(id=agent_id, workspace_id="ws_1", name=agent_id, state=AgentState.READY, labels={},
                            capacity=FREE, version="t", registered_at=0),
                TokenRecord(id=f"tok_{agent_id}", kind="agent", token_hash=f"h_{agent_id}", workspace_id="ws_1",
                            user_id=None, agent_id=agent_id, name="a", created_at=0),
            )
    return database


def _add_jobs(db: Database, count: int) -> None:
    with db.transaction() as tx:
        for index in range(count):
            tx.execute(
                """INSERT INTO jobs (id, workspace_id, state, type, command, labels, env, timeout_seconds,
                                     created_at) VALUES (?, 'ws_1', 'QUEUED', 'COMMAND', 'true', '{}', '{}', 60, ?)""",
                (f"job_{index}", index + 1),
            )


def _rows(db: Database, sql: str) -> list[tuple[Any, ...]]:
    with db.transaction() as tx:
        return [tuple(row) for row in tx.execute(sql).fetchall()]


async def test_a_transition_decided_on_a_stale_row_is_refused_and_writes_nothing(db: Database) -> None:
    _add_jobs(db, 1)
    with db.transaction() as tx:
        stale = tx.execute("SELECT * FROM jobs WHERE id = 'job_0'").fetchone()

    def cancel(tx: Tx) -> None:
        transition_job(tx, stale, JobState.CANCELLED, now=5, finished_at=5, reason="cancelled")

    def assign(tx: Tx) -> None:
        transition_job(tx, stale, JobState.ASSIGNED, now=6, agent_id="agt_b", epoch=1, assigned_at=6)

    outcome = db.race(cancel, assign)
    assert isinstance(outcome.error, StaleState)
    assert str(outcome.error) == "job job_0 is no longer QUEUED at epoch 0"
    assert _rows(db, "SELECT state, agent_id, epoch FROM jobs") == [("CANCELLED", None, 0)]
    assert _rows(db, "SELECT COUNT(*) FROM job_attempts") == [(0,)]


@pytest.mark.parametrize("jobs", [1, 2])
async def test_claims_racing_assign_each_job_once(db: Database, jobs: int) -> None:
    _add_jobs(db, jobs)
    outcome = db.race(lambda tx: claim_next_job(tx, "agt_a", FREE, None, 10),
                      lambda tx: claim_next_job(tx, "agt_b", FREE, None, 10))
    claims = {agent: assignment for agent, assignment in (("agt_a", outcome.won), ("agt_b", outcome.lost))
              if assignment is not None}
    # However the race went (the loser refused on SQLite; on PostgreSQL perhaps the winner
    # passed over the row the loser had locked), no job is assigned twice.
    assert len({assignment.jobId for assignment in claims.values()}) == len(claims) >= 1
    assigned = _rows(db, "SELECT id, agent_id, epoch FROM jobs WHERE state = 'ASSIGNED' ORDER BY id")
    assert sorted(assigned) == sorted((a.jobId, agent, 1) for agent, a in claims.items())
    assert len(_rows(db, "SELECT job_id FROM job_attempts")) == len(claims)
    if outcome.error is not None:
        assert outcome.lost is None
        # Run again, as the store does after a lost compare-and-set: the next job, if any.
        with db.transaction() as tx:
            again = claim_next_job(tx, "agt_b", FREE, None, 11)
        assert (again.jobId if again is not None else None) == ("job_1" if jobs == 2 else None)
    assert len(_rows(db, "SELECT id FROM jobs WHERE state = 'ASSIGNED'")) == jobs


async def test_last_seq_advances_by_compare_and_set(db: Database) -> None:
    """A retried events batch racing its original: one applies it, the other is refused
    whole, and when run again finds every event a replay: the log holds each line once."""
    _add_jobs(db, 1)
    with db.transaction() as tx:
        assert claim_next_job(tx, "agt_a", FREE, None, 10) is not None
    batch = [LogEvent(seq=1, jobId="job_0", epoch=1, data="one\n"),
             LogEvent(seq=2, jobId="job_0", epoch=1, data="two\n")]

    outcome = db.race(lambda tx: apply_event_batch(tx, "agt_a", batch, 20),
                      lambda tx: apply_event_batch(tx, "agt_a", batch, 20))
    assert outcome.won.appliedThrough == 2 and outcome.won.rejected == []
    assert isinstance(outcome.error, StaleState)
    with db.transaction() as tx:
        replay = apply_event_batch(tx, "agt_a", batch, 21)
    assert replay.appliedThrough == 2 and replay.rejected == []
    assert _rows(db, "SELECT last_seq FROM agents WHERE id = 'agt_a'") == [(2,)]
    assert _rows(db, 'SELECT "offset", data FROM job_logs ORDER BY "offset"') == [(0, b"one\n"), (4, b"two\n")]
    assert _rows(db, "SELECT log_size FROM jobs") == [(8,)]


async def test_last_seq_alone_is_compared(db: Database) -> None:
    """Events refused for their content write only audit rows and ``last_seq``: the
    compare-and-set on ``last_seq`` is what refuses the second of two racing batches."""
    refused = {1: "invalid_event", 2: "invalid_event"}
    outcome = db.race(lambda tx: apply_event_batch(tx, "agt_a", [], 20, refused=refused),
                      lambda tx: apply_event_batch(tx, "agt_a", [], 20, refused=refused))
    assert outcome.won.appliedThrough == 2
    assert isinstance(outcome.error, StaleState)
    assert str(outcome.error) == "agent agt_a's events advanced past 0 meanwhile"
    assert _rows(db, "SELECT COUNT(*) FROM audit_events WHERE action = 'agent.event_refused'") == [(2,)]


async def test_the_store_runs_a_write_again_after_a_lost_compare_and_set(store: Store) -> None:
    """A write whose compare-and-set lost is undone and run again on the data as it stands
    (``WRITE_TRIES`` in all, on every backend); past that the loss is raised."""
    runs: list[int] = []

    def flaky(tx: Tx) -> str:
        runs.append(1)
        tx.execute("INSERT INTO users (id, email, created_at) VALUES (?, ?, 0)", (f"usr_{len(runs)}", f"{len(runs)}@x"))
        if len(runs) < 3:
            raise StaleState("lost")
        return "done"

    assert await store._write(flaky) == "done"  # type: ignore[attr-defined]
    assert [row["id"] for row in await store._read("SELECT id FROM users")] == ["usr_3"]  # type: ignore[attr-defined]

    def hopeless(tx: Tx) -> None:
        raise StaleState("always lost")

    with pytest.raises(StaleState, match=r"^always lost$"):
        await store._write(hopeless)  # type: ignore[attr-defined]

