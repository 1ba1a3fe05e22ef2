"""``coordinator.services.usage_ledger`` on a real SQLite transaction, with an injected ``now``."""

from __future__ import annotations

from pathlib import Path

from common.protocol import UsageEvent
from coordinator import billing
from coordinator.services.usage_ledger import record_usage
from coordinator.store.db import Row, Tx
from coordinator.store.repo import billing as rows
from tests.service_tx import add_agent, add_attempt, add_job, add_workspace, one, open_tx

T0 = 1_775_001_600_000


def attempt(tx: Tx) -> Row:
    row: Row = tx.execute("SELECT * FROM job_attempts WHERE job_id = 'job_1' AND epoch = 1").fetchone()
    return row


def usage(seq: int, cpu: float, *, gpu: float = 0.0, gpu_model: str | None = None) -> UsageEvent:
    return UsageEvent(seq=seq, jobId="job_1", epoch=1, cpuSeconds=cpu, gpuSeconds=gpu, gbSeconds=0.0,
                      gpuModel=gpu_model)


def setup(tx: Tx) -> None:
    add_workspace(tx, "ws_1", created_at=T0)
    add_agent(tx, "agt_1", "ws_1", labels={"gpuModel": "A100"}, registered_at=T0)
    add_job(tx, "job_1", "ws_1", state="RUNNING", created_at=T0, agent_id="agt_1", epoch=1)
    add_attempt(tx, "job_1", "ws_1", "agt_1", assigned_at=T0)


def test_the_ledger_holds_the_growth_of_cumulative_figures_and_ignores_replays(tmp_path: Path) -> None:
    with open_tx(tmp_path / "store.db") as tx:
        setup(tx)
        record_usage(tx, "agt_1", "ws_1", attempt(tx), usage(1, 2.5), T0 + 1000)
        record_usage(tx, "agt_1", "ws_1", attempt(tx), usage(2, 4.0), T0 + 2000)
        record_usage(tx, "agt_1", "ws_1", attempt(tx), usage(2, 9.0), T0 + 3000)  # a replay of seq 2: ignored
        # A lower cumulative figure (reordered on the wire) adds nothing and lowers nothing.
        record_usage(tx, "agt_1", "ws_1", attempt(tx), usage(3, 3.0), T0 + 4000)
        ledgered = [row[0] for row in tx.execute("SELECT cpu_micros FROM usage_records ORDER BY seq").fetchall()]
        assert ledgered == [2_500_000, 1_500_000, 0]
        assert attempt(tx)["cpu_seconds"] == 4.0
        assert one(tx, "SELECT cpu_seconds FROM jobs WHERE id = 'job_1'") == 4.0
        assert rows.usage_between(tx, "ws_1", T0, T0 + billing.HOUR_MS).cpu_micros == 4_000_000


def test_usage_is_never_dated_before_the_last_meter_tick(tmp_path: Path) -> None:
    with open_tx(tmp_path / "store.db") as tx:
        setup(tx)
        rows.set_meter_state(tx, T0 + 50_000, T0 + 110_000)
        record_usage(tx, "agt_1", "ws_1", attempt(tx), usage(1, 1.0), T0 + 1000)
        assert one(tx, "SELECT recorded_at FROM usage_records") == T0 + 50_000


def test_the_gpu_model_is_the_events_else_the_agents_label(tmp_path: Path) -> None:
    with open_tx(tmp_path / "store.db") as tx:
        setup(tx)
        record_usage(tx, "agt_1", "ws_1", attempt(tx), usage(1, 1.0, gpu=1.0), T0 + 1000)
        record_usage(tx, "agt_1", "ws_1", attempt(tx), usage(2, 2.0, gpu=2.0, gpu_model="H100"), T0 + 2000)
        models = [row[0] for row in tx.execute("SELECT gpu_model FROM usage_records ORDER BY seq").fetchall()]
        assert models == ["A100", "H100"]
        assert attempt(tx)["gpu_model"] == "H100"
