"""``coordinator.services.claims`` on a real SQLite transaction, with an injected ``now``."""

from __future__ import annotations

import json
from pathlib import Path

from coordinator.services.claims import claim_next_job
from coordinator.store.db import Tx
from tests.service_tx import add_agent, add_job, add_workspace, one, open_tx

T0 = 1_775_001_600_000
FREE = {"cpus": 8.0, "memoryMb": 16384, "gpus": 2}


def setup(tx: Tx, *, labels: dict[str, str] | None = None) -> None:
    add_workspace(tx, "ws_1", created_at=T0)
    add_agent(tx, "agt_1", "ws_1", labels=labels or {"arch": "arm64"}, registered_at=T0)


def test_the_claim_takes_the_best_job_the_agent_can_run_and_opens_an_attempt(tmp_path: Path) -> None:
    with open_tx(tmp_path / "store.db") as tx:
        setup(tx)
        add_job(tx, "job_1_other_arch", "ws_1", created_at=T0, labels=json.dumps({"arch": "x86_64"}), priority=90)
        add_job(tx, "job_2_too_big", "ws_1", created_at=T0, resources=json.dumps({"gpus": 4}), priority=90)
        add_job(tx, "job_3_old", "ws_1", created_at=T0 + 1, priority=50)
        add_job(tx, "job_4_urgent", "ws_1", created_at=T0 + 2, labels=json.dumps({"arch": "arm64"}), priority=70)
        add_job(tx, "job_5_backoff", "ws_1", created_at=T0, priority=99, not_before=T0 + 1000)
        assignment = claim_next_job(tx, "agt_1", FREE, None, T0 + 10)
        assert assignment is not None
        assert (assignment.jobId, assignment.epoch) == ("job_4_urgent", 1)
        row = tx.execute("SELECT state, agent_id, assigned_at FROM jobs WHERE id = 'job_4_urgent'").fetchone()
        assert tuple(row) == ("ASSIGNED", "agt_1", T0 + 10)
        assert one(tx, "SELECT state FROM job_attempts WHERE job_id = 'job_4_urgent' AND epoch = 1") == "ASSIGNED"
        assert claim_next_job(tx, "agt_1", FREE, None, T0 + 11).jobId == "job_3_old"  # type: ignore[union-attr]
        assert claim_next_job(tx, "agt_1", FREE, None, T0 + 12) is None  # the backoff has not passed
        assert claim_next_job(tx, "agt_1", FREE, None, T0 + 1000).jobId == "job_5_backoff"  # type: ignore[union-attr]


def test_a_draining_agent_or_a_held_workspace_gets_nothing(tmp_path: Path) -> None:
    with open_tx(tmp_path / "store.db") as tx:
        setup(tx)
        add_job(tx, "job_1", "ws_1", created_at=T0)
        tx.execute("INSERT INTO billing_state (workspace_id, hard_cap_reached) VALUES ('ws_1', 1)")
        assert claim_next_job(tx, "agt_1", FREE, None, T0) is None
        tx.execute("UPDATE billing_state SET hard_cap_reached = 0")
        tx.execute("UPDATE agents SET drain_requested = 1")
        assert claim_next_job(tx, "agt_1", FREE, None, T0) is None
        tx.execute("UPDATE agents SET drain_requested = 0")
        assert claim_next_job(tx, "agt_1", FREE, None, T0) is not None
        assert one(tx, "SELECT state FROM jobs") == "ASSIGNED"
