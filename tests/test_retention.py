"""Retention (coordinator/services/retention.py): what is pruned, when, in batches, and what is
kept, on an injected ``now``; the same rules on SQLite (through the store) and PostgreSQL."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import trio

from common.clock import ManualClock, from_millis
from coordinator.retention import run_retention, serve_retention
from coordinator.services.retention import DAY_MS, RetentionPolicy
from coordinator.settings import load_settings
from coordinator.store.sqlite import SqliteStore, open_sqlite_store

T0 = 1_780_000_000_000  # the seeded rows' time
NOW = T0 + 61 * DAY_MS  # when the main test prunes: past every setting for what was seeded at T0
POLICY = RetentionPolicy(job_logs_days=30, webhook_deliveries_days=7, usage_detail_days=60, auth_failures_days=14)


def _job_id(n: int, created: int) -> str:
    from ulid import ULID

    return "job_" + str(ULID.from_bytes(created.to_bytes(6, "big") + n.to_bytes(10, "big"))).lower()


def seed(tx: Any) -> dict[str, Any]:
    """A workspace with finished and running jobs with logs, webhook deliveries in each state,
    usage detail on both sides of an invoice, auth failure counts and an audit row."""
    tx.execute("INSERT INTO workspaces (id, name, plan, created_at) VALUES ('ws_1', 'w', 'hobby', 0)")
    jobs = {}
    for n, (state, finished) in enumerate([("SUCCEEDED", T0), ("FAILED", T0), ("RUNNING", None),
                                           ("SUCCEEDED", NOW - 10 * DAY_MS)]):
        job_id = _job_id(n, T0 - 3_600_000)
        jobs[n] = job_id
        tx.execute("""INSERT INTO jobs (id, workspace_id, state, type, command, labels, env, timeout_seconds,
                                        created_at, finished_at, log_size)
                      VALUES (?, 'ws_1', ?, 'COMMAND', 'true', '{}', '{}', 60, ?, ?, 8)""",
                   (job_id, state, T0 - 3_600_000, finished))
        for offset in (0, 4):
            tx.execute('INSERT INTO job_logs (job_id, "offset", data) VALUES (?, ?, ?)', (job_id, offset, b"log\n"))
    tx.execute("INSERT INTO webhooks (id, workspace_id, url, events, created_at) "
               "VALUES ('wh_1', 'ws_1', 'https://example.test/h', '[\"job.created\"]', 0)")
    for n, (state, completed) in enumerate([("delivered", T0), ("failed", T0), ("pending", None),
                                           ("delivered", NOW - DAY_MS)]):
        event_id = f"evt_{n}"
        tx.execute("INSERT INTO webhook_events (id, workspace_id, type, created_at, body) "
                   "VALUES (?, 'ws_1', 'job.created', ?, ?)", (event_id, T0, b"{}"))
        tx.execute("""INSERT INTO webhook_deliveries (id, webhook_id, event_id, ordering_key, state, attempts,
                                                      created_at, next_attempt_at, completed_at)
                      VALUES (?, 'wh_1', ?, 'k', ?, 1, ?, ?, ?)""", (n + 1, event_id, state, T0, T0, completed))
        tx.execute("""INSERT INTO webhook_attempts (id, delivery_id, webhook_id, event_id, attempted_at, latency_ms)
                      VALUES (?, ?, 'wh_1', ?, ?, 5)""", (n + 1, n + 1, event_id, T0))
    tx.execute("INSERT INTO invoices (id, workspace_id, period_start, period_end, issued_at, body) "
               "VALUES ('inv_1', 'ws_1', 0, ?, ?, '{}')", (T0 + DAY_MS, T0 + DAY_MS))
    for seq, (recorded, rolled) in enumerate([(T0, 1), (T0, 0), (T0 + 2 * DAY_MS, 1)], start=1):
        tx.execute("""INSERT INTO usage_records (agent_id, seq, workspace_id, job_id, recorded_at, cpu_micros,
                                                 gpu_micros, gb_micros, rolled_up)
                      VALUES ('agt_1', ?, 'ws_1', ?, ?, 1000, 0, 0, ?)""", (seq, jobs[0], recorded, rolled))
    for minute in (T0, NOW - DAY_MS):
        tx.execute("INSERT INTO auth_failures (minute, source, workspace_id, failures) VALUES (?, '10.0.0.1', '', 3)",
                   (minute,))
    tx.execute("""INSERT INTO audit_events (id, workspace_id, at, action, result, status, request_id, method, path)
                  VALUES ('aud_1', 'ws_1', 0, 'job.submit', 'success', 201, 'req_1', 'POST', '/v0/jobs')""")
    return jobs


def _count(tx: Any, sql: str, params: tuple[Any, ...] = ()) -> int:
    return int(tx.execute(sql, params).fetchone()[0])


def snapshot(tx: Any, jobs: dict[int, str]) -> dict[str, Any]:
    return {
        "logs": {n: _count(tx, "SELECT COUNT(*) FROM job_logs WHERE job_id = ?", (job_id,))
                 for n, job_id in jobs.items()},
        "deliveries": sorted(row[0] for row in tx.execute("SELECT id FROM webhook_deliveries").fetchall()),
        "attempts": sorted(row[0] for row in tx.execute("SELECT delivery_id FROM webhook_attempts").fetchall()),
        "events": sorted(row[0] for row in tx.execute("SELECT id FROM webhook_events").fetchall()),
        "usage": sorted(row[0] for row in tx.execute("SELECT seq FROM usage_records").fetchall()),
        "auth_failures": _count(tx, "SELECT COUNT(*) FROM auth_failures"),
        "audit": _count(tx, "SELECT COUNT(*) FROM audit_events"),
    }


# What is left under POLICY: before anything is due, and at NOW.
UNTOUCHED = {"logs": {0: 2, 1: 2, 2: 2, 3: 2}, "deliveries": [1, 2, 3, 4], "attempts": [1, 2, 3, 4],
             "events": ["evt_0", "evt_1", "evt_2", "evt_3"], "usage": [1, 2, 3], "auth_failures": 2, "audit": 1}
AT_NOW = {
    # Finished 61 days ago: gone; still running, or finished 10 days ago: kept.
    "logs": {0: 0, 1: 0, 2: 2, 3: 2},
    # Completed 61 days ago: gone with their attempts and events; pending, or completed a day ago: kept.
    "deliveries": [3, 4], "attempts": [3, 4], "events": ["evt_2", "evt_3"],
    # Rolled up and before the invoice's end: gone; not rolled up, or after the invoice: kept.
    "usage": [2, 3],
    "auth_failures": 1,
    "audit": 1,  # never pruned
}


async def _sqlite_store(tmp_path: Path) -> Any:
    manager = open_sqlite_store(tmp_path / "store.db")
    store: SqliteStore = await manager.__aenter__()
    jobs = await store._write(seed)
    return manager, store, jobs


async def test_nothing_is_pruned_before_its_time(tmp_path: Path) -> None:
    manager, store, jobs = await _sqlite_store(tmp_path)
    try:
        pruned = await run_retention(store, T0 + 7 * DAY_MS, POLICY)
        assert pruned.total == 0
        assert snapshot(store._reader, jobs) == UNTOUCHED
    finally:
        await manager.__aexit__(None, None, None)


async def test_what_has_expired_is_pruned_and_the_rest_kept(tmp_path: Path) -> None:
    manager, store, jobs = await _sqlite_store(tmp_path)
    try:
        pruned = await run_retention(store, NOW, POLICY)
        assert snapshot(store._reader, jobs) == AT_NOW
        assert (pruned.job_logs, pruned.webhook_deliveries, pruned.webhook_attempts, pruned.webhook_events,
                pruned.usage_records, pruned.auth_failures) == (4, 2, 2, 2, 1, 1)
        assert await store.read_log("ws_1", jobs[0], 0) == []  # an empty log, not an error
        again = await run_retention(store, NOW, POLICY)
        assert again.total == 0
    finally:
        await manager.__aexit__(None, None, None)


async def test_each_kind_waits_for_its_own_setting(tmp_path: Path) -> None:
    manager, store, jobs = await _sqlite_store(tmp_path)
    try:
        # Day 30 + 1 ms: logs of jobs finished at T0 are due; usage (60 days) is not yet.
        await run_retention(store, T0 + 30 * DAY_MS + 1, POLICY)
        state = snapshot(store._reader, jobs)
        assert state["logs"] == {0: 0, 1: 0, 2: 2, 3: 2} and state["usage"] == [1, 2, 3]
        assert (await run_retention(store, T0 + 30 * DAY_MS + 1, POLICY)).total == 0
    finally:
        await manager.__aexit__(None, None, None)


async def test_zero_days_keeps_forever(tmp_path: Path) -> None:
    manager, store, jobs = await _sqlite_store(tmp_path)
    try:
        forever = RetentionPolicy(job_logs_days=0, webhook_deliveries_days=0, usage_detail_days=0,
                                  auth_failures_days=0)
        assert (await run_retention(store, T0 + 3650 * DAY_MS, forever)).total == 0
        assert snapshot(store._reader, jobs) == UNTOUCHED
    finally:
        await manager.__aexit__(None, None, None)


async def test_a_batch_is_one_short_transaction_and_the_run_repeats_it(tmp_path: Path) -> None:
    manager, store, jobs = await _sqlite_store(tmp_path)
    try:
        small = RetentionPolicy(job_logs_days=30, webhook_deliveries_days=7, usage_detail_days=60,
                                auth_failures_days=14, batch=1)
        first = await store.prune_expired(NOW, small)
        assert (first.job_logs, first.webhook_deliveries) == (2, 1)  # one job's logs, one delivery
        assert {"job_logs", "webhook_deliveries", "usage_records"} <= first.more
        await run_retention(store, NOW, small)
        assert snapshot(store._reader, jobs) == AT_NOW
    finally:
        await manager.__aexit__(None, None, None)


async def test_serve_retention_prunes_at_start_and_on_its_interval(tmp_path: Path) -> None:
    manager, store, jobs = await _sqlite_store(tmp_path)
    try:
        runs: list[int] = []
        ran = [trio.Event()]
        prune = store.prune_expired

        async def observed(now: int, policy: RetentionPolicy) -> Any:
            result = await prune(now, policy)
            runs.append(now)
            ran[0].set()
            return result

        store.prune_expired = observed  # type: ignore[method-assign]
        clock = ManualClock(from_millis(T0 + 7 * DAY_MS))
        frequent = RetentionPolicy(**{**POLICY.__dict__, "interval_seconds": 0.05})
        async with trio.open_nursery() as nursery:
            await nursery.start(serve_retention, store, clock, frequent)
            with trio.fail_after(30):
                await ran[0].wait()  # the run at start
            assert snapshot(store._reader, jobs) == UNTOUCHED  # nothing was due yet
            clock.advance((NOW - T0 - 7 * DAY_MS) / 1000)
            with trio.fail_after(30):
                while runs[-1] < NOW:  # the next run, interval_seconds of trio time later
                    ran[0] = trio.Event()
                    await ran[0].wait()
            assert snapshot(store._reader, jobs) == AT_NOW
            nursery.cancel_scope.cancel()
    finally:
        await manager.__aexit__(None, None, None)


async def test_the_same_rules_through_the_postgresql_store(postgres_url: str) -> None:
    from coordinator.store.postgresql import open_postgresql_store

    async with open_postgresql_store(postgres_url) as store:
        jobs = await store._write(seed)
        assert (await run_retention(store, T0 + 7 * DAY_MS, POLICY)).total == 0
        assert await store._read_with(lambda tx: snapshot(tx, jobs)) == UNTOUCHED
        pruned = await run_retention(store, NOW, POLICY)
        assert await store._read_with(lambda tx: snapshot(tx, jobs)) == AT_NOW
        assert (pruned.job_logs, pruned.webhook_deliveries, pruned.usage_records) == (4, 2, 1)


def test_retention_settings_come_from_the_config_file(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text("[retention]\njob_logs_days = 7\nusage_detail_days = 0\ninterval_seconds = 600\n")
    settings = load_settings(tmp_path, config)
    assert settings.retention == RetentionPolicy(interval_seconds=600, job_logs_days=7, usage_detail_days=0)
    assert load_settings(tmp_path).retention == RetentionPolicy()
