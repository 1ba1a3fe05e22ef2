from __future__ import annotations

import json
from pathlib import Path

from agentd.spool import Spool


def test_sequence_numbers_survive_reopen_and_never_repeat(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    assert spool.append("started", "job_1", {"type": "started"}) == 1
    assert spool.append("log", "job_1", {"type": "log", "data": "x"}) == 2
    spool.ack(2)
    spool.close()
    reopened = Spool(tmp_path / "spool")
    assert reopened.pending(10) == []
    assert reopened.append("finished", "job_1", {"type": "finished"}) == 3
    reopened.close()


def test_unacked_events_are_pending_in_order(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    for index in range(5):
        spool.append("log", "job_1", {"data": str(index)})
    spool.ack(2)
    assert [(seq, body["data"]) for seq, _, body in spool.pending(10)] == [(3, "2"), (4, "3"), (5, "4")]
    spool.close()


def test_log_backlog_is_bounded_with_a_marker_and_state_is_kept(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", max_log_bytes=1000)
    spool.append("started", "job_1", {"type": "started"})
    for _ in range(30):
        spool.append("log", "job_1", {"type": "log", "data": "x" * 100})
    spool.append("finished", "job_1", {"type": "finished"})
    pending = spool.pending(100)
    kinds = [kind for _, kind, _ in pending]
    assert kinds[0] == "started" and kinds[-1] == "finished"
    logs = [body["data"] for _, kind, body in pending if kind == "log"]
    markers = [text for text in logs if "dropped" in text]
    assert len(markers) == 1
    kept = sum(len(text) for text in logs if "dropped" not in text)
    assert kept <= 1000
    dropped = int(markers[0].split(":")[1].split()[0])
    assert dropped + kept == 3000
    assert [seq for seq, _, _ in pending] == sorted(seq for seq, _, _ in pending)
    json.dumps(pending)
    spool.close()
