"""``coordinator.services.job_events`` on a real SQLite transaction, with an injected ``now``."""

from __future__ import annotations

from pathlib import Path

import pytest

from common.clock import millis_to_rfc3339
from common.event_checks import SEQUENCE_GAP
from common.protocol import FinishedEvent, JobEvent, LogEvent, Rejection, StartedEvent
from common.states import JobState
from coordinator.services import job_events
from coordinator.store.db import Tx
from tests.service_tx import add_agent, add_attempt, add_job, add_workspace, one, open_tx

T0 = 1_775_001_600_000


def setup(tx: Tx) -> None:
    add_workspace(tx, "ws_1", created_at=T0)
    add_agent(tx, "agt_1", "ws_1", registered_at=T0)
    add_job(tx, "job_1", "ws_1", state="ASSIGNED", created_at=T0, agent_id="agt_1", epoch=1, assigned_at=T0)
    add_attempt(tx, "job_1", "ws_1", "agt_1", state="ASSIGNED", assigned_at=T0)


def at(millis: int) -> str:
    return millis_to_rfc3339(millis) or ""


def refusals(tx: Tx) -> list[tuple[str, str | None]]:
    return [(row["error_code"], row["target"]) for row in tx.execute(
        "SELECT error_code, target FROM audit_events WHERE action = 'agent.event_refused' ORDER BY seq").fetchall()]


def test_events_apply_in_order_once_and_never_across_a_gap(tmp_path: Path) -> None:
    with open_tx(tmp_path / "store.db") as tx:
        setup(tx)
        started = StartedEvent(seq=1, jobId="job_1", epoch=1, at=at(T0 + 100))
        log = LogEvent(seq=2, jobId="job_1", epoch=1, data="hello\n")
        beyond = LogEvent(seq=4, jobId="job_1", epoch=1, data="late\n")
        events: list[JobEvent] = [beyond, log, started]
        response = job_events.apply_event_batch(tx, "agt_1", events, T0 + 200, request_id="req_1")
        assert response.appliedThrough == 2
        assert response.rejected == [Rejection(seq=4, code=SEQUENCE_GAP)]
        assert refusals(tx) == [(SEQUENCE_GAP, None)]  # one row per batch
        assert (one(tx, "SELECT state FROM jobs"), one(tx, "SELECT started_at FROM jobs")) == ("RUNNING", T0 + 100)
        # The same batch again: replays below last_seq change nothing.
        again = job_events.apply_event_batch(tx, "agt_1", [log, started], T0 + 300)
        assert (again.appliedThrough, again.rejected) == (2, [])
        assert one(tx, "SELECT log_size FROM jobs") == len("hello\n")
        assert one(tx, "SELECT last_seq FROM agents") == 2


def test_an_event_that_cannot_apply_is_refused_alone_audited_and_consumed(tmp_path: Path) -> None:
    with open_tx(tmp_path / "store.db") as tx:
        setup(tx)
        events: list[JobEvent] = [
            StartedEvent(seq=1, jobId="job_1", epoch=7, at=at(T0 + 100)),  # not this attempt
            StartedEvent(seq=2, jobId="job_1", epoch=1, at="not a time"),
            FinishedEvent(seq=3, jobId="job_1", epoch=1, at=at(T0 + 150), state=JobState.QUEUED, exitCode=None,
                          runtimeMs=0),
            StartedEvent(seq=4, jobId="job_1", epoch=1, at=at(T0 + 100)),
            FinishedEvent(seq=5, jobId="job_1", epoch=1, at=at(T0 + 160), state=JobState.SUCCEEDED, exitCode=0,
                          runtimeMs=60),
        ]
        response = job_events.apply_event_batch(tx, "agt_1", events, T0 + 200, refused={6: "invalid_event"})
        assert response.appliedThrough == 6
        assert [(r.seq, r.code) for r in response.rejected] == [
            (1, "stale_epoch"), (2, "invalid_time"), (3, "invalid_state"), (6, "invalid_event")]
        assert refusals(tx) == [("stale_epoch", "job_1"), ("invalid_time", "job_1"), ("invalid_state", "job_1"),
                                ("invalid_event", None)]
        job = tx.execute("SELECT state, exit_code, runtime_ms, finished_at FROM jobs").fetchone()
        assert tuple(job) == ("SUCCEEDED", 0, 60, T0 + 160)


def test_the_log_keeps_its_newest_bytes_and_drops_only_whole_chunks(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(job_events, "LOG_RETENTION_BYTES", 10)
    with open_tx(tmp_path / "store.db") as tx:
        setup(tx)
        for offset in (0, 6, 12):
            job_events.append_log(tx, "job_1", offset, b"abcdef")
        chunks = [tuple(row) for row in tx.execute('SELECT "offset", length(data) FROM job_logs ORDER BY 1').fetchall()]
        assert chunks == [(6, 6), (12, 6)]  # the first ended at 6 <= 18 - 10; the second still holds kept bytes
        assert one(tx, "SELECT log_size FROM jobs") == 18
