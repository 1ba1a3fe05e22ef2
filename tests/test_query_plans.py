"""Query plans of the queries that grow with the number of jobs (issue 15): every statement the
store runs for ``GET /v0/jobs`` (each filter), a claim and the ``/metrics`` counts is traced as it
runs, then explained; a full scan of a table, or a sort of a whole list, fails the test. So an
index dropped, or a query rewritten past its index, fails CI instead of the first big store.

SQLite without ANALYZE statistics (the coordinator never runs ANALYZE), so the plans are the ones
a store of any size gets. Figures at 1,000,000 jobs: ``bench/growth.py``, docs/performance.md.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from common.protocol import CapacityMsg
from common.states import AgentState, JobState
from coordinator.store.base import AgentRecord, JobFilter, JobRecord, TokenRecord
from coordinator.store.sqlite import SqliteStore, open_sqlite_store

FREE = CapacityMsg(cpus=64, memoryMb=1 << 20, gpus=0)
# What a plan may scan: subqueries, CTEs and table-valued functions, never a table.
SCANNABLE = re.compile(r"^(s\d+|merged|shapes|wanted|label|json_each|CONSTANT ROW)\b")
_STATEMENT = re.compile(r"^\s*(SELECT|WITH|UPDATE|DELETE|INSERT)\b", re.IGNORECASE)


def _plan(conn: sqlite3.Connection, sql: str) -> list[str]:
    return [row[3] for row in conn.execute("EXPLAIN QUERY PLAN " + sql).fetchall()]


def _problems(conn: sqlite3.Connection, statements: list[str], *, sorted_ok: bool) -> list[str]:
    found = []
    for sql in statements:
        if not _STATEMENT.match(sql):
            continue
        for detail in _plan(conn, sql):
            scanned = detail.removeprefix("SCAN ") if detail.startswith("SCAN ") else None
            if scanned is not None and not SCANNABLE.match(scanned):
                found.append(f"{detail!r} in {sql}")
            if not sorted_ok and detail.startswith("USE TEMP B-TREE FOR ORDER BY"):
                found.append(f"a sort of the whole result in {sql}")
    return found


async def _traced(conn: sqlite3.Connection, call: Callable[[], Awaitable[Any]]) -> list[str]:
    statements: list[str] = []
    conn.set_trace_callback(statements.append)
    try:
        await call()
    finally:
        conn.set_trace_callback(None)
    assert statements, "the call ran no statement on this connection"
    return statements


async def _store_with_jobs(path: Path) -> Any:
    store_cm = open_sqlite_store(path)
    store: SqliteStore = await store_cm.__aenter__()
    await store.bootstrap(user_id="usr_1", email="o@x", workspace_id="ws_1", workspace_name="w", plan="hobby",
                          tokens=[], now=0)
    for n, state_labels in enumerate([{}, {"team": "a"}, {"team": "b", "gpu": "yes"}] * 4):
        await store.insert_job(JobRecord(id=f"job_{n:04d}", workspace_id="ws_1", state=JobState.QUEUED,
                                         command="true", name=None, labels=state_labels, resources=None, env={},
                                         timeout_seconds=60, created_at=n))
    await store.register_agent(
        AgentRecord(id="agt_1", workspace_id="ws_1", name="a", state=AgentState.READY, labels={"team": "a"},
                    capacity=FREE.model_dump(), version="t", registered_at=0),
        TokenRecord(id="tok_agt_1", kind="agent", token_hash="hagt", workspace_id="ws_1", user_id=None,
                    agent_id="agt_1", name="a", created_at=0),
    )
    return store_cm, store


# Each list form, with the index walk its plan must contain (a filter served only by a walk of
# the whole workspace reads every job when few match).
LISTS = {
    "newest page": (JobFilter(), None, "jobs_by_workspace (workspace_id=?)"),
    "a later page": (JobFilter(), "job_0009", "jobs_by_workspace (workspace_id=? AND id<?)"),
    "one state": (JobFilter(states=(JobState.QUEUED,)), None, "jobs_by_workspace_state (workspace_id=? AND state=?)"),
    "several states": (JobFilter(states=(JobState.QUEUED, JobState.FAILED, JobState.RUNNING)), "job_0009",
                       "jobs_by_workspace_state (workspace_id=? AND state=? AND id<?)"),
    "one label": (JobFilter(labels=(("team", "b"),)), None,
                  "SEARCH l USING PRIMARY KEY (workspace_id=? AND key=? AND value=?)"),
    "two labels and a state": (JobFilter(labels=(("team", "b"), ("gpu", "yes")), states=(JobState.QUEUED,)),
                               "job_0009", "SEARCH l USING PRIMARY KEY (workspace_id=? AND key=? AND value=? AND "
                                           "job_id<?)"),
    "a creation window": (JobFilter(created_after=2, created_before=9), None,
                          "jobs_by_workspace (workspace_id=? AND id>? AND id<?)"),
    "a creation window and a state": (JobFilter(states=(JobState.QUEUED,), created_before=9), None,
                                      "jobs_by_workspace_state (workspace_id=? AND state=? AND id<?)"),
}


@pytest.mark.parametrize("name", sorted(LISTS))
async def test_job_lists_walk_an_index_newest_first(tmp_path: Path, name: str) -> None:
    store_cm, store = await _store_with_jobs(tmp_path / "plans.db")
    try:
        filters, before, walk = LISTS[name]
        statements = await _traced(store._reader, lambda: store.list_jobs("ws_1", filters, limit=50,
                                                                          before_id=before))
        # Several states merge one bounded walk per state: sorting at most limit x states rows is fine.
        assert _problems(store._reader, statements, sorted_ok=len(filters.states) > 1) == []
        plans = [detail for sql in statements if _STATEMENT.match(sql) for detail in _plan(store._reader, sql)]
        assert any(walk in detail for detail in plans), plans
    finally:
        await store_cm.__aexit__(None, None, None)


async def test_several_states_merge_ids_and_read_only_the_page(tmp_path: Path) -> None:
    """``state=RUNNING&state=FAILED``: each state's walk reads its index only (ids), and only
    the page's rows are read whole, by id: merging whole rows read ``limit`` rows per state."""
    store_cm, store = await _store_with_jobs(tmp_path / "plans.db")
    try:
        filters = JobFilter(states=(JobState.QUEUED, JobState.FAILED))
        statements = await _traced(store._reader, lambda: store.list_jobs("ws_1", filters, limit=5, before_id=None))
        [listing] = [sql for sql in statements if "merged" in sql]
        plan = _plan(store._reader, listing)
        walks = [detail for detail in plan if "jobs_by_workspace_state" in detail]
        assert len(walks) == 2 and all("COVERING INDEX" in detail for detail in walks), plan
        page = await store.list_jobs("ws_1", filters, limit=5, before_id=None)
        assert [job.id for job in page] == [f"job_{n:04d}" for n in range(11, 6, -1)]
    finally:
        await store_cm.__aexit__(None, None, None)


async def test_the_metrics_counts_read_no_table(tmp_path: Path) -> None:
    from coordinator.store.repo.job_lists import COUNT_JOBS_IN_STATE

    store_cm, store = await _store_with_jobs(tmp_path / "plans.db")
    try:
        # The counts run on a connection of their own in a worker thread: explain their statement.
        statement = COUNT_JOBS_IN_STATE.replace("?", "'QUEUED'")
        assert _problems(store._reader, [statement], sorted_ok=True) == []
        assert all("COVERING INDEX" in detail for detail in _plan(store._reader, statement))
        assert await store.count_jobs_by_state() == {"QUEUED": 12}
    finally:
        await store_cm.__aexit__(None, None, None)


async def test_a_claim_reads_through_indexes(tmp_path: Path) -> None:
    store_cm, store = await _store_with_jobs(tmp_path / "plans.db")
    try:
        statements = await _traced(store._writer_conn, lambda: store.claim_job("agt_1", FREE, None, 10))
        assert any(_STATEMENT.match(sql) and "UPDATE jobs" in sql for sql in statements), "nothing was claimed"
        assert _problems(store._writer_conn, statements, sorted_ok=True) == []
        # The queue's shapes: one seek per shape, each past the previous shape's key, never a
        # walk of every queued entry (14 ms at 10,000 queued jobs before migration 0066).
        [shapes] = [sql for sql in statements if "WITH RECURSIVE shapes" in sql]
        assert any("jobs_claim_shapes (workspace_id=? AND <expr>>?)" in detail
                   for detail in _plan(store._writer_conn, shapes)), _plan(store._writer_conn, shapes)
    finally:
        await store_cm.__aexit__(None, None, None)


def test_the_checker_sees_a_full_scan(tmp_path: Path) -> None:
    """The test above would pass vacuously if a scan went unnoticed: a query with no usable
    index is reported."""
    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE TABLE jobs (id TEXT PRIMARY KEY, command TEXT)")
    assert _problems(conn, ["SELECT * FROM jobs WHERE command = 'x'"], sorted_ok=True) != []
    assert _problems(conn, ["SELECT * FROM jobs WHERE id = 'x'"], sorted_ok=True) == []
    assert _problems(conn, ["SELECT * FROM jobs ORDER BY command LIMIT 5"], sorted_ok=False) != []


def test_job_labels_are_kept_on_postgresql_too(postgres_url: str) -> None:
    """The triggers of migration 0045 keep ``job_labels`` in step with ``jobs`` on PostgreSQL."""
    import psycopg

    from coordinator.store.postgres_schema import migrate_postgresql

    with psycopg.connect(postgres_url, autocommit=True) as conn:
        migrate_postgresql(conn)
        conn.execute("INSERT INTO workspaces (id, name, plan, created_at) VALUES ('ws_1', 'w', 'hobby', 0)")
        conn.execute("""INSERT INTO jobs (id, workspace_id, state, type, command, labels, env, timeout_seconds,
                                          created_at)
                        VALUES ('job_1', 'ws_1', 'QUEUED', 'COMMAND', 'true', '{"team": "b", "gpu": "yes"}', '{}',
                                60, 0)""")
        rows = conn.execute("SELECT workspace_id, key, value, job_id FROM job_labels ORDER BY key").fetchall()
        assert rows == [("ws_1", "gpu", "yes", "job_1"), ("ws_1", "team", "b", "job_1")]
        conn.execute("DELETE FROM jobs WHERE id = 'job_1'")
        assert conn.execute("SELECT COUNT(*) FROM job_labels").fetchone() == (0,)


async def test_retention_walks_indexes_to_what_it_deletes(tmp_path: Path) -> None:
    from coordinator.services.retention import RetentionPolicy

    store_cm, store = await _store_with_jobs(tmp_path / "plans.db")
    try:
        statements = await _traced(store._writer_conn,
                                   lambda: store.prune_expired(10**12, RetentionPolicy(job_logs_days=1)))
        assert _problems(store._writer_conn, statements, sorted_ok=True) == []
    finally:
        await store_cm.__aexit__(None, None, None)
