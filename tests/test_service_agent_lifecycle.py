"""``coordinator.services.agent_lifecycle`` on a real SQLite transaction, with an injected ``now``."""

from __future__ import annotations

from pathlib import Path

from coordinator.services import agent_lifecycle
from coordinator.store.base import DeleteOutcome
from coordinator.store.db import Tx
from tests.service_tx import add_agent, add_attempt, add_job, add_workspace, one, open_tx

T0 = 1_775_001_600_000


def setup(tx: Tx) -> None:
    add_workspace(tx, "ws_1", created_at=T0)
    add_agent(tx, "agt_1", "ws_1", registered_at=T0)


def assign(tx: Tx, job_id: str, *, state: str = "ASSIGNED", at: int = T0, **columns: object) -> None:
    add_job(tx, job_id, "ws_1", state=state, created_at=at, agent_id="agt_1", epoch=1, assigned_at=at, **columns)
    add_attempt(tx, job_id, "ws_1", "agt_1", state=state, assigned_at=at)


def state_of(tx: Tx, job_id: str) -> tuple[str, str | None]:
    row = tx.execute("SELECT state, reason FROM jobs WHERE id = ?", (job_id,)).fetchone()
    return row["state"], row["reason"]


def test_drain_follows_running_jobs_and_a_down_agent_stays_down(tmp_path: Path) -> None:
    with open_tx(tmp_path / "store.db") as tx:
        setup(tx)
        assert not agent_lifecycle.set_drain(tx, "ws_other", "agt_1", True)  # another workspace's agent
        assign(tx, "job_1", state="RUNNING")
        assert agent_lifecycle.set_drain(tx, "ws_1", "agt_1", True)
        assert (one(tx, "SELECT state FROM agents"), one(tx, "SELECT drain_requested FROM agents")) == ("DRAINING", 1)
        tx.execute("UPDATE agents SET state = 'DOWN'")
        agent_lifecycle.set_drain(tx, "ws_1", "agt_1", False)
        assert (one(tx, "SELECT state FROM agents"), one(tx, "SELECT drain_requested FROM agents")) == ("DOWN", 0)


def test_a_silent_agent_goes_down_once_and_its_jobs_are_lost_or_cancelled(tmp_path: Path) -> None:
    with open_tx(tmp_path / "store.db") as tx:
        setup(tx)
        assign(tx, "job_running", state="RUNNING")
        assign(tx, "job_assigned")
        assign(tx, "job_cancelled", state="RUNNING", cancel_requested=1)
        assert not agent_lifecycle.mark_down(tx, "agt_1", seen_before=T0, now=T0 + 10)  # heard from at T0
        assert agent_lifecycle.expire_leases(tx, "agt_1", seen_before=T0, now=T0 + 10) == []
        assert agent_lifecycle.mark_down(tx, "agt_1", seen_before=T0 + 1, now=T0 + 10)
        assert not agent_lifecycle.mark_down(tx, "agt_1", seen_before=T0 + 1, now=T0 + 11)  # already DOWN
        assert one(tx, "SELECT down_at FROM agents") == T0 + 10
        lost = agent_lifecycle.expire_leases(tx, "agt_1", seen_before=T0 + 1, now=T0 + 20)
        assert sorted(lost) == ["job_assigned", "job_cancelled", "job_running"]
        assert state_of(tx, "job_running") == ("LOST", "agent_lost")
        assert state_of(tx, "job_assigned") == ("LOST", "agent_lost")
        assert state_of(tx, "job_cancelled") == ("CANCELLED", "cancelled")


def test_unconfirmed_released_and_goodbye_assignments_go_back_to_the_queue(tmp_path: Path) -> None:
    with open_tx(tmp_path / "store.db") as tx:
        setup(tx)
        assign(tx, "job_stale", at=T0)
        assign(tx, "job_confirmed", at=T0, assignment_confirmed_at=T0 + 1)
        assign(tx, "job_fresh", at=T0 + 100)
        assert agent_lifecycle.requeue_stale_assignments(tx, assigned_before=T0 + 50, now=T0 + 60) == [
            ("job_stale", "ws_1")]
        assert one(tx, "SELECT reason FROM job_attempts WHERE job_id = 'job_stale'") == "assignment_expired"
        assert agent_lifecycle.release_assignment(tx, "agt_1", "job_fresh", 2, T0 + 70) is None  # wrong epoch
        assert agent_lifecycle.release_assignment(tx, "agt_1", "job_fresh", 1, T0 + 70) == "ws_1"
        assert state_of(tx, "job_fresh")[0] == "QUEUED"
        assert agent_lifecycle.goodbye(tx, "agt_1", T0 + 80) == ["job_confirmed"]
        assert (one(tx, "SELECT state FROM agents"), state_of(tx, "job_confirmed")[0]) == ("DOWN", "QUEUED")


def test_deleting_a_busy_agent_needs_force_and_revokes_its_token_first(tmp_path: Path) -> None:
    with open_tx(tmp_path / "store.db") as tx:
        setup(tx)
        tx.execute("""INSERT INTO tokens (id, kind, token_hash, workspace_id, agent_id, name, created_at)
                      VALUES ('tok_1', 'agent', 'h', 'ws_1', 'agt_1', 'agt_1', 0)""")
        assign(tx, "job_running", state="RUNNING")
        assign(tx, "job_assigned")
        assert agent_lifecycle.delete_agent(tx, "ws_2", "agt_1", force=True, now=T0) == DeleteOutcome.NOT_FOUND
        assert agent_lifecycle.delete_agent(tx, "ws_1", "agt_1", force=False, now=T0) == DeleteOutcome.BUSY
        assert one(tx, "SELECT revoked_at FROM tokens") is None
        assert agent_lifecycle.delete_agent(tx, "ws_1", "agt_1", force=True, now=T0 + 5) == DeleteOutcome.DELETED
        assert one(tx, "SELECT revoked_at FROM tokens") == T0 + 5
        assert state_of(tx, "job_assigned")[0] == "QUEUED"
        assert state_of(tx, "job_running") == ("LOST", "agent_deleted")
        assert one(tx, "SELECT deleted_at FROM agents") == T0 + 5
