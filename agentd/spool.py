"""The durable outbox. Every state change, log chunk and usage figure is appended here first,
with a sequence number that never repeats, then shipped in order and deleted once the
coordinator confirms it applied it. A crash or an outage between the two loses nothing, and
the coordinator's per-agent high-water mark makes a re-sent event count once.

Log chunks are bounded: past ``max_log_bytes`` of unsent log, the oldest unsent chunks are
replaced by one marker event saying how much was dropped. State and usage are never dropped.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import trio

from common.files import private_sqlite


class Spool:
    def __init__(self, path: Path, *, max_log_bytes: int = 64 * 1024 * 1024) -> None:
        private_sqlite(path)  # spooled job output is the job owner's business only
        self._conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._conn.execute("PRAGMA journal_mode = WAL")
        # FULL: an event is on disk before append() returns, even across a power loss. With
        # less, a power loss can roll back the last appends *and* the AUTOINCREMENT counter,
        # and the agent would reuse sequence numbers the coordinator already applied, which
        # it would then skip as duplicates: events lost. It costs ~0.3 ms per append here.
        self._conn.execute("PRAGMA synchronous = FULL")
        self._conn.execute(
            """CREATE TABLE IF NOT EXISTS outbox (
                   seq INTEGER PRIMARY KEY AUTOINCREMENT,
                   kind TEXT NOT NULL,
                   job_id TEXT NOT NULL,
                   size INTEGER NOT NULL,
                   body TEXT NOT NULL)"""
        )
        self._conn.execute(
            "CREATE TABLE IF NOT EXISTS running (job_id TEXT PRIMARY KEY, body TEXT NOT NULL)"
        )
        self._max_log_bytes = max_log_bytes
        self._changed = trio.Event()

    def close(self) -> None:
        self._conn.close()

    def append(self, kind: str, job_id: str, body: dict[str, Any], *, progress: dict[str, Any] | None = None) -> int:
        """Store one event durably and return its sequence number.

        ``progress`` is merged into the job's ``running`` record in the same transaction, so
        a restarted agent resumes exactly after the last event it spooled (output offset,
        usage so far) and reports nothing twice.
        """
        text = json.dumps(body)
        size = len(body.get("data", "")) if kind == "log" else 0
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            cursor = self._conn.execute(
                "INSERT INTO outbox (kind, job_id, size, body) VALUES (?, ?, ?, ?)", (kind, job_id, size, text)
            )
            if progress is not None:
                self._merge_running(job_id, progress)
            self._conn.execute("COMMIT")
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        if kind == "log":
            self._bound_logs()
        self._signal_change()
        return int(cursor.lastrowid or 0)

    def _signal_change(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    def _bound_logs(self) -> None:
        total = self._conn.execute("SELECT COALESCE(SUM(size), 0) FROM outbox WHERE kind = 'log'").fetchone()[0]
        if total <= self._max_log_bytes:
            return
        # Drop down to half the bound so this runs rarely. Each job keeps one marker, in the
        # place of its oldest dropped chunk, counting every byte dropped so far.
        target = self._max_log_bytes // 2
        markers: dict[str, tuple[int, int]] = {}
        for seq, job_id, body in self._conn.execute(
            "SELECT seq, job_id, body FROM outbox WHERE kind = 'log' AND size = 0 ORDER BY seq"
        ).fetchall():
            dropped = json.loads(body).get("dropped")
            if dropped is not None and job_id not in markers:
                markers[job_id] = (seq, int(dropped))
        rows = self._conn.execute(
            "SELECT seq, job_id, size FROM outbox WHERE kind = 'log' AND size > 0 ORDER BY seq"
        ).fetchall()
        self._conn.execute("BEGIN")
        for seq, job_id, size in rows:
            if total <= target:
                break
            if job_id in markers:
                marker_seq, dropped = markers[job_id]
                markers[job_id] = (marker_seq, dropped + size)
                self._conn.execute("DELETE FROM outbox WHERE seq = ?", (seq,))
            else:
                markers[job_id] = (seq, size)
            total -= size
        for marker_seq, dropped in markers.values():
            body = json.loads(self._conn.execute("SELECT body FROM outbox WHERE seq = ?", (marker_seq,)).fetchone()[0])
            body["data"] = f"\n[tanvrit-agentd: {dropped} bytes of log dropped while the coordinator was unreachable]\n"
            body["dropped"] = dropped
            self._conn.execute("UPDATE outbox SET body = ?, size = 0 WHERE seq = ?", (json.dumps(body), marker_seq))
        self._conn.execute("COMMIT")

    def pending(self, limit: int) -> list[tuple[int, str, dict[str, Any]]]:
        """The oldest ``limit`` unacknowledged events as (seq, kind, body), in order."""
        rows = self._conn.execute("SELECT seq, kind, body FROM outbox ORDER BY seq LIMIT ?", (limit,)).fetchall()
        events = []
        for seq, kind, text in rows:
            body = json.loads(text)
            body.pop("dropped", None)  # bookkeeping of this spool, not part of the event
            events.append((seq, kind, body))
        return events

    def ack(self, through_seq: int) -> None:
        self._conn.execute("DELETE FROM outbox WHERE seq <= ?", (through_seq,))
        self._signal_change()

    def depth(self) -> int:
        return int(self._conn.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])

    async def wait_for_change(self) -> None:
        """Return after the next append or acknowledgement."""
        await self._changed.wait()

    # Jobs this agent runs, so a restarted agent knows what it left behind.
    def remember_running(self, job_id: str, body: dict[str, Any]) -> None:
        self._conn.execute("INSERT OR REPLACE INTO running (job_id, body) VALUES (?, ?)", (job_id, json.dumps(body)))

    def _merge_running(self, job_id: str, fields: dict[str, Any]) -> None:
        row = self._conn.execute("SELECT body FROM running WHERE job_id = ?", (job_id,)).fetchone()
        if row is not None:
            body = {**json.loads(row[0]), **fields}
            self._conn.execute("UPDATE running SET body = ? WHERE job_id = ?", (json.dumps(body), job_id))

    def update_running(self, job_id: str, fields: dict[str, Any]) -> None:
        """Merge ``fields`` into the job's running record (no-op if it has none)."""
        self._merge_running(job_id, fields)

    def forget_running(self, job_id: str) -> None:
        self._conn.execute("DELETE FROM running WHERE job_id = ?", (job_id,))

    def running(self) -> dict[str, dict[str, Any]]:
        rows = self._conn.execute("SELECT job_id, body FROM running").fetchall()
        return {job_id: json.loads(body) for job_id, body in rows}
