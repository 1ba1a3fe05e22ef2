"""Billing and webhook costs, in-process on a real SQLite file. Prints figures, writes JSON.

1. ``GET /v0/billing/usage`` for a month: roll-ups plus the open tail, against summing the raw
   usage records of that month (what the roll-ups avoid).
2. ``insert_job`` with the webhook outbox: no webhook in the workspace, against one that
   subscribes to ``job.created`` (an event row and a delivery row in the same transaction).

Usage: ``.venv/bin/python bench/bench_billing.py [--records N] [--json PATH]``
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import trio

from common.states import JobState
from coordinator import billing
from coordinator.billing import BillingConfig
from coordinator.store.base import JobRecord
from coordinator.store.base_billing import WebhookRecord
from coordinator.store.repo.billing import usage_between
from coordinator.store.sqlite import open_sqlite_store

MONTH = 1_775_001_600_000  # 2026-04-01T00:00:00Z


def _median_ms(fn: object, repeat: int) -> float:
    timings = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()  # type: ignore[operator]
        timings.append((time.perf_counter() - started) * 1000)
    return statistics.median(timings)


async def bench(records: int, jobs: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        async with open_sqlite_store(Path(tmp) / "db") as store:
            await store.bootstrap(user_id="usr_1", email="o@x", workspace_id="ws_1", workspace_name="w",
                                  plan="payg", tokens=[], now=MONTH)
            await store.bootstrap(user_id="usr_2", email="p@x", workspace_id="ws_2", workspace_name="w",
                                  plan="payg", tokens=[], now=MONTH)
            span = 30 * 24 * billing.HOUR_MS

            def fill(conn: object) -> None:
                conn.executemany(  # type: ignore[attr-defined]
                    """INSERT INTO usage_records (agent_id, seq, workspace_id, job_id, recorded_at, cpu_micros,
                                                  gpu_micros, gb_micros)
                       VALUES ('agt_1', ?, 'ws_1', 'job', ?, ?, 0, ?)""",
                    [(n, MONTH + n * span // records, 1_000_000 + n % 977, 250_000) for n in range(1, records + 1)],
                )

            await store._write(fill)
            await store.meter_tick(MONTH + span, BillingConfig())
            end = MONTH + span + billing.HOUR_MS
            def rollups() -> None:
                usage_between(store._reader_tx, "ws_1", MONTH, end)

            def raw() -> None:
                store._reader.execute(
                    """SELECT SUM(cpu_micros), SUM(gpu_micros), SUM(gb_micros) FROM usage_records
                       WHERE workspace_id = 'ws_1' AND recorded_at >= ? AND recorded_at < ?""",
                    (MONTH, end),
                ).fetchall()

            usage_rollup = _median_ms(rollups, 30)
            usage_raw = _median_ms(raw, 10)

            async def insert(workspace: str, count: int, run: int) -> float:
                started = time.perf_counter()
                async with trio.open_nursery() as nursery:
                    for n in range(count):
                        nursery.start_soon(store.insert_job, JobRecord(
                            id=f"job_{workspace}_{run}_{n:06d}", workspace_id=workspace, state=JobState.QUEUED,
                            command="true", name=None, labels={}, resources=None, env={}, timeout_seconds=60,
                            created_at=MONTH))
                return (time.perf_counter() - started) / count * 1e6

            await store.insert_webhook(WebhookRecord(id="whk_1", workspace_id="ws_2", url="https://x/",
                                                     events=["job.created"], created_at=MONTH), "whsec_x")
            without = statistics.median([await insert("ws_1", jobs, run) for run in range(3)])
            with_hook = statistics.median([await insert("ws_2", jobs, run) for run in range(3)])
            return {
                "usage_records": records,
                "usage_month_rollups_ms_median": round(usage_rollup, 3),
                "usage_month_raw_scan_ms_median": round(usage_raw, 3),
                "usage_raw_over_rollups": round(usage_raw / usage_rollup, 1),
                "insert_job_us_no_webhook": round(without, 1),
                "insert_job_us_one_webhook": round(with_hook, 1),
                "insert_job_webhook_over_none": round(with_hook / without, 2),
            }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--jobs", type=int, default=500)
    parser.add_argument("--json", type=Path, default=Path(__file__).resolve().parent / "results" / "billing.json")
    args = parser.parse_args()
    figures = trio.run(bench, args.records, args.jobs)
    for key, value in figures.items():
        print(f"{key:40} {value}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
