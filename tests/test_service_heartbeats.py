"""``coordinator.services.heartbeats`` on a real SQLite transaction, with an injected ``now``."""

from __future__ import annotations

from pathlib import Path

from common.protocol import CapacityMsg, HeartbeatRequest, RunningJob
from common.states import AgentState
from coordinator.services.heartbeats import (
    ASSIGNMENT_GRACE_MS,
    FORGOTTEN_GRACE_MS,
    quiet_beat,
    record_heartbeat,
    stop_orders,
)
from coordinator.store.db import Tx
from tests.service_tx import add_agent, add_attempt, add_job, add_workspace, one, open_tx

T0 = 1_775_001_600_000


def setup(tx: Tx) -> None:
    add_workspace(tx, "ws_1", created_at=T0)
    add_agent(tx, "agt_1", "ws_1", registered_at=T0)


def assign(tx: Tx, job_id: str, *, state: str = "ASSIGNED", epoch: int = 1, at: int = T0, **columns: object) -> None:
    add_job(tx, job_id, "ws_1", state=state, created_at=at, agent_id="agt_1", epoch=epoch, assigned_at=at, **columns)
    add_attempt(tx, job_id, "ws_1", "agt_1", epoch=epoch, state=state, assigned_at=at)


def beat(*running: tuple[str, int], state: AgentState = AgentState.READY, **fields: object) -> HeartbeatRequest:
    return HeartbeatRequest(state=state, runningJobs=[RunningJob(jobId=job, epoch=epoch) for job, epoch in running],
                            **fields)  # type: ignore[arg-type]


def test_a_beat_records_the_agent_and_what_it_reports_about_itself(tmp_path: Path) -> None:
    with open_tx(tmp_path / "store.db") as tx:
        setup(tx)
        tx.execute("UPDATE agents SET state = 'DOWN', down_at = ?", (T0,))
        drain, stop = record_heartbeat(tx, "agt_1", beat(labels={"gpu": "yes"}, version="9.9",
                                                         capacity=CapacityMsg(cpus=2, memoryMb=512, gpus=0)), T0 + 5)
        assert (drain, stop) == (False, [])
        row = tx.execute("SELECT * FROM agents WHERE id = 'agt_1'").fetchone()
        assert (row["state"], row["last_heartbeat_at"], row["down_at"], row["labels"], row["version"]) == (
            "READY", T0 + 5, None, '{"gpu": "yes"}', "9.9")
        # Draining: asked for, or the agent stopping on its own.
        tx.execute("UPDATE agents SET drain_requested = 1")
        assert record_heartbeat(tx, "agt_1", beat(), T0 + 6) == (True, [])
        assert one(tx, "SELECT state FROM agents") == "DRAINED"
        tx.execute("UPDATE agents SET drain_requested = 0")
        record_heartbeat(tx, "agt_1", beat(state=AgentState.DRAINING), T0 + 7)
        assert one(tx, "SELECT state FROM agents") == "DRAINED"  # no running jobs: drained


def test_an_assignment_the_agent_never_lists_goes_back_to_the_queue_after_the_grace(tmp_path: Path) -> None:
    with open_tx(tmp_path / "store.db") as tx:
        setup(tx)
        assign(tx, "job_lost_answer")
        assign(tx, "job_listed")
        record_heartbeat(tx, "agt_1", beat(("job_listed", 1)), T0 + ASSIGNMENT_GRACE_MS)  # within the grace
        assert one(tx, "SELECT state FROM jobs WHERE id = 'job_lost_answer'") == "ASSIGNED"
        assert one(tx, "SELECT assignment_confirmed_at FROM jobs WHERE id = 'job_listed'") == T0 + ASSIGNMENT_GRACE_MS
        record_heartbeat(tx, "agt_1", beat(("job_listed", 1)), T0 + ASSIGNMENT_GRACE_MS + 1)
        assert one(tx, "SELECT state FROM jobs WHERE id = 'job_lost_answer'") == "QUEUED"
        assert one(tx, "SELECT reason FROM job_attempts WHERE job_id = 'job_lost_answer'") == "assignment_unconfirmed"
        assert one(tx, "SELECT state FROM jobs WHERE id = 'job_listed'") == "ASSIGNED"


def test_a_running_job_the_agent_stops_listing_is_lost_after_the_grace(tmp_path: Path) -> None:
    with open_tx(tmp_path / "store.db") as tx:
        setup(tx)
        assign(tx, "job_1", state="RUNNING", started_at=T0)
        record_heartbeat(tx, "agt_1", beat(), T0 + 1000)
        assert one(tx, "SELECT unreported_since FROM jobs") == T0 + 1000
        record_heartbeat(tx, "agt_1", beat(("job_1", 1)), T0 + 2000)  # listed again: forgiven
        assert one(tx, "SELECT unreported_since FROM jobs") is None
        record_heartbeat(tx, "agt_1", beat(), T0 + 3000)
        record_heartbeat(tx, "agt_1", beat(), T0 + 3000 + FORGOTTEN_GRACE_MS)
        assert one(tx, "SELECT state FROM jobs") == "RUNNING"  # not yet past the grace
        record_heartbeat(tx, "agt_1", beat(), T0 + 3001 + FORGOTTEN_GRACE_MS)
        assert (one(tx, "SELECT state FROM jobs"), one(tx, "SELECT reason FROM jobs")) == ("LOST", "agent_forgot")


def test_stop_orders_name_what_is_no_longer_the_agents_to_run(tmp_path: Path) -> None:
    with open_tx(tmp_path / "store.db") as tx:
        setup(tx)
        assign(tx, "job_mine", state="RUNNING")
        assign(tx, "job_old_epoch", state="RUNNING", epoch=2)
        assign(tx, "job_done", state="SUCCEEDED")
        assign(tx, "job_lost", state="LOST")
        assign(tx, "job_cancel", state="RUNNING", cancel_requested=1)
        assign(tx, "job_cancel_unlisted", state="RUNNING", cancel_requested=1)
        running = [RunningJob(jobId=job, epoch=1) for job in
                   ("job_mine", "job_old_epoch", "job_done", "job_lost", "job_cancel", "job_unknown")]
        # A LOST job at the agent's own epoch runs on: its result still replaces LOST.
        assert stop_orders(tx, "agt_1", running) == ["job_old_epoch", "job_done", "job_cancel", "job_unknown",
                                                     "job_cancel_unlisted"]


def test_a_beat_is_quiet_only_when_recording_it_would_change_nothing_but_the_time(tmp_path: Path) -> None:
    with open_tx(tmp_path / "store.db") as tx:
        setup(tx)
        assert quiet_beat(tx, "agt_1", beat()) == (False, [])
        same = {"cpus": 8, "memoryMb": 16384, "gpus": 2}
        assert quiet_beat(tx, "agt_1", beat(labels={}, version="test", capacity=CapacityMsg(**same))) == (False, [])
        # What it sends about itself differs from what is stored: a write.
        assert quiet_beat(tx, "agt_1", beat(labels={"gpu": "yes"})) is None
        assert quiet_beat(tx, "agt_1", beat(version="9.9")) is None
        assert quiet_beat(tx, "agt_1", beat(capacity=CapacityMsg(cpus=2, memoryMb=512, gpus=0))) is None
        # Its state would change: stopping, drain asked for.
        assert quiet_beat(tx, "agt_1", beat(state=AgentState.DRAINING)) is None
        tx.execute("UPDATE agents SET drain_requested = 1")
        assert quiet_beat(tx, "agt_1", beat()) is None
        tx.execute("UPDATE agents SET drain_requested = 0")
        # An assignment to confirm or hand back, a job to start or stop tracking as unreported.
        assign(tx, "job_1")
        assert quiet_beat(tx, "agt_1", beat(("job_1", 1))) is None
        tx.execute("UPDATE jobs SET state = 'RUNNING'")
        tx.execute("UPDATE job_attempts SET state = 'RUNNING'")
        assert quiet_beat(tx, "agt_1", beat()) is None  # would start the unreported clock
        assert quiet_beat(tx, "agt_1", beat(("job_1", 1))) == (False, [])
        assert quiet_beat(tx, "agt_1", beat(("job_1", 1), ("job_gone", 3))) == (False, ["job_gone"])  # stop orders
        tx.execute("UPDATE jobs SET unreported_since = ?", (T0,))
        assert quiet_beat(tx, "agt_1", beat(("job_1", 1))) is None  # would clear it
        # A DOWN agent is brought back by a write.
        tx.execute("UPDATE jobs SET unreported_since = NULL")
        tx.execute("UPDATE agents SET state = 'DOWN', down_at = ?", (T0,))
        assert quiet_beat(tx, "agt_1", beat(("job_1", 1))) is None
