"""The durable outbox. Every state change, log chunk and usage figure is appended here first,
with a sequence number that never repeats, then shipped in order and deleted once the
coordinator confirms it applied it. A crash or an outage between the two loses nothing, and
the coordinator's per-agent high-water mark makes a re-sent event count once.

Two layers::

    callbacks (sync, on the event loop) ─▶ SpoolWriter queue (memory, bounded by back-pressure)
        ─▶ one transaction per batch, in a worker thread ─▶ Spool (SQLite, synchronous=FULL)
        ─▶ uplink reads ``pending`` and ``ack``s, also in a worker thread

``Spool`` is the synchronous store; every method is thread-safe (one lock around one
connection) and keeps running counters (events, unsent log bytes) so nothing scans the table
on the hot path. ``SpoolWriter`` is what the agent's event loop talks to: its ``append`` and
running-record calls only queue (in order), and its ``serve`` task commits what queued in one
transaction off the loop, so a job flooding output never holds the loop on an fsync. While
everything unacknowledged was committed by it (the usual case: the uplink keeps up), it also
keeps a copy of those events in memory, so that the uplink ships a commit at once instead of
reading it back from the disk in another worker thread.

A job's progress (output offset, usage) is merged into its ``running`` record in the same
transaction as the events that carried it, so a restarted agent resumes exactly after the last
event that reached the disk and reports nothing twice; events still queued in memory when the
process dies are produced again from the job's output file.

Log chunks are bounded: past ``max_log_bytes`` of unsent log, the oldest unsent chunks are
replaced by one marker event saying how much was dropped. State and usage are never dropped.
Space is given back after acknowledgement (incremental vacuum, WAL truncated), so the file
shrinks once a backlog is shipped.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from common.files import private_sqlite

# Free pages worth giving back to the file system at once (SQLite pages of 4 KiB: 4 MiB).
_RECLAIM_FREE_PAGES = 1024
_WAL_LIMIT_BYTES = 4 * 1024 * 1024
# The memory copy of unacknowledged events (``SpoolWriter``) is dropped, and the disk read
# instead, past this many bytes of event bodies.
MEMORY_COPY_BYTES = 1024 * 1024
# An acknowledgement of at most this many events and log bytes (of the memory copy) is applied
# on the event loop when the spool is free: a deletion that is not synced costs less than a
# worker thread's round trip.
ACK_AT_ONCE_EVENTS = 64
ACK_AT_ONCE_BYTES = 256 * 1024
# Once the spool is empty, a write-ahead log larger than this is truncated (a smaller one is
# reused as it is: truncating it after every shipped batch costs fsyncs on the result's path).
_WAL_RECLAIM_BYTES = 1024 * 1024


@dataclass(frozen=True)
class Append:
    kind: str
    job_id: str
    body: dict[str, Any]
    progress: dict[str, Any] | None = None


@dataclass(frozen=True)
class Remember:
    """Replace the job's running record."""

    job_id: str
    body: dict[str, Any]


@dataclass(frozen=True)
class Update:
    """Merge fields into the job's running record (no-op if it has none)."""

    job_id: str
    fields: dict[str, Any]


@dataclass(frozen=True)
class Forget:
    job_id: str


SpoolOp = Append | Remember | Update | Forget


class Spool:
    def __init__(self, path: Path, *, max_log_bytes: int = 64 * 1024 * 1024) -> None:
        private_sqlite(path)  # spooled job output is the job owner's business only
        self._lock = threading.Lock()
        self._path = path
        self._conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        # Incremental auto-vacuum lets acknowledged space go back to the file system. It must
        # be chosen before the first table exists; a spool made by an older agent is converted
        # once with VACUUM.
        if self._conn.execute("PRAGMA auto_vacuum").fetchone()[0] != 2:
            self._conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
            if self._conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()[0]:
                self._conn.execute("VACUUM")
        self._conn.execute("PRAGMA journal_mode = WAL")
        self._conn.execute(f"PRAGMA journal_size_limit = {_WAL_LIMIT_BYTES}")
        # FULL: an event is on disk before its transaction returns, even across a power loss.
        # With less, a power loss can roll back the last appends *and* the AUTOINCREMENT
        # counter, and the agent would reuse sequence numbers the coordinator already applied,
        # which it would then skip as duplicates: events lost. Batching makes it one fsync per
        # batch, not per event.
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
        # Running counters: read once here, then kept in step with every write.
        self._depth = int(self._conn.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])
        self.bounded = 0  # how many times old log chunks were dropped (``_bound_logs``)
        self._log_bytes = int(
            self._conn.execute("SELECT COALESCE(SUM(size), 0) FROM outbox WHERE kind = 'log'").fetchone()[0]
        )

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    # --- writes ---------------------------------------------------------------------------
    def append(self, kind: str, job_id: str, body: dict[str, Any], *, progress: dict[str, Any] | None = None) -> int:
        """Store one event durably and return its sequence number (``write`` of one)."""
        return self.write([Append(kind, job_id, body, progress)])[0]

    def write(self, ops: list[SpoolOp]) -> list[int]:
        """Apply ``ops`` in order in one durable transaction; the sequence numbers of its
        appends, in order. Blocks on the disk: call it from a worker thread on an event loop."""
        seqs: list[int] = []
        with self._lock:
            records: dict[str, dict[str, Any] | None] = {}  # running records touched, as they end up
            appended = 0
            log_bytes = 0
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                for op in ops:
                    if isinstance(op, Append):
                        size = len(op.body.get("data", "")) if op.kind == "log" else 0
                        cursor = self._conn.execute(
                            "INSERT INTO outbox (kind, job_id, size, body) VALUES (?, ?, ?, ?)",
                            (op.kind, op.job_id, size, json.dumps(op.body)),
                        )
                        seqs.append(int(cursor.lastrowid or 0))
                        appended += 1
                        log_bytes += size
                        if op.progress is not None:
                            self._merge(records, op.job_id, op.progress)
                    elif isinstance(op, Remember):
                        records[op.job_id] = dict(op.body)
                    elif isinstance(op, Update):
                        self._merge(records, op.job_id, op.fields)
                    else:
                        records[op.job_id] = None
                for job_id, record in records.items():
                    if record is None:
                        self._conn.execute("DELETE FROM running WHERE job_id = ?", (job_id,))
                    else:
                        self._conn.execute("INSERT OR REPLACE INTO running (job_id, body) VALUES (?, ?)",
                                           (job_id, json.dumps(record)))
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._depth += appended
            self._log_bytes += log_bytes
            if self._log_bytes > self._max_log_bytes:
                self._bound_logs()
        return seqs

    def _merge(self, records: dict[str, dict[str, Any] | None], job_id: str, fields: dict[str, Any]) -> None:
        if job_id not in records:
            row = self._conn.execute("SELECT body FROM running WHERE job_id = ?", (job_id,)).fetchone()
            records[job_id] = json.loads(row[0]) if row is not None else None
        record = records[job_id]
        if record is not None:
            record.update(fields)

    def _bound_logs(self) -> None:
        # Drop down to half the bound so this runs rarely. Each job keeps one marker, in the
        # place of its oldest dropped chunk, counting every byte dropped so far.
        target = self._max_log_bytes // 2
        total = self._log_bytes
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
                # Emptied, not deleted: the coordinator takes sequence numbers only without gaps
                # (the row count, and so the depth, stays).
                self._conn.execute("UPDATE outbox SET body = json_set(body, '$.data', ''), size = 0 WHERE seq = ?",
                                   (seq,))
            else:
                markers[job_id] = (seq, size)
            total -= size
        for marker_seq, dropped in markers.values():
            body = json.loads(self._conn.execute("SELECT body FROM outbox WHERE seq = ?", (marker_seq,)).fetchone()[0])
            body["data"] = f"\n[tanvrit-agentd: {dropped} bytes of log dropped while the coordinator was unreachable]\n"
            body["dropped"] = dropped
            self._conn.execute("UPDATE outbox SET body = ?, size = 0 WHERE seq = ?", (json.dumps(body), marker_seq))
        self._conn.execute("COMMIT")
        self._log_bytes = total
        self.bounded += 1

    # --- the uplink's side ----------------------------------------------------------------
    def pending(self, limit: int, *, max_bytes: int | None = None) -> list[tuple[int, str, dict[str, Any]]]:
        """The oldest unacknowledged events as (seq, kind, body), in order: at most ``limit``,
        and with ``max_bytes`` no more rows than fit in it (at least one)."""
        with self._lock:
            events: list[tuple[int, str, dict[str, Any]]] = []
            size = 0
            cursor = self._conn.execute("SELECT seq, kind, body FROM outbox ORDER BY seq LIMIT ?", (limit,))
            try:
                for seq, kind, text in cursor:
                    size += len(text)
                    if max_bytes is not None and events and size > max_bytes:
                        break
                    body = json.loads(text)
                    body.pop("dropped", None)  # bookkeeping of this spool, not part of the event
                    events.append((seq, kind, body))
            finally:
                cursor.close()  # an unfinished statement would hold a read snapshot open
            return events

    def void(self, seq: int, body: dict[str, Any]) -> None:
        """Put ``body`` (a harmless event) in the place of event ``seq``, keeping its number: the
        coordinator takes sequence numbers only without gaps, so an event it can never accept
        is replaced, not deleted (a deleted one would leave a gap that holds back every event
        after it for good). The row's kind becomes ``void``."""
        with self._lock:
            row = self._conn.execute("SELECT kind, size FROM outbox WHERE seq = ?", (seq,)).fetchone()
            if row is None:
                return
            self._conn.execute("UPDATE outbox SET kind = 'void', size = 0, body = ? WHERE seq = ?",
                               (json.dumps(body), seq))
            if row[0] == "log":
                self._log_bytes -= int(row[1])

    def ack(self, through_seq: int) -> None:
        """Delete what the coordinator applied, and give the space back once it adds up.

        Not synced to disk on its own (the next append's sync carries it): a deletion lost to a
        power cut only sends those events again, which the coordinator counts once (its
        per-agent high-water mark); the sequence counter is untouched by a deletion."""
        with self._lock:
            self._delete_through(through_seq)
            if self._reclaim_due():
                self._reclaim()

    def ack_at_once(self, through_seq: int) -> bool | None:
        """``ack`` on the calling thread (the event loop's), if that costs no wait: None (nothing
        done) while another thread uses the spool or its write-ahead log is big enough that the
        commit might checkpoint it (call ``ack`` in a worker thread then); else whether space is
        now worth giving back (``reclaim``, in a worker thread). The deletion is not synced, so
        it is a few writes to the page cache; callers keep it to a few events."""
        if not self._lock.acquire(blocking=False):
            return None
        try:
            if self._wal_bytes() > _WAL_RECLAIM_BYTES:
                return None
            self._delete_through(through_seq)
            return self._reclaim_due()
        finally:
            self._lock.release()

    def reclaim(self) -> None:
        """Give space back if it adds up (after ``ack_at_once``)."""
        with self._lock:
            if self._reclaim_due():
                self._reclaim()

    def _delete_through(self, through_seq: int) -> None:
        self._conn.execute("PRAGMA synchronous = NORMAL")
        try:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                count, log_bytes = self._conn.execute(
                    "SELECT COUNT(*), COALESCE(SUM(CASE WHEN kind = 'log' THEN size ELSE 0 END), 0) "
                    "FROM outbox WHERE seq <= ?", (through_seq,)
                ).fetchone()
                self._conn.execute("DELETE FROM outbox WHERE seq <= ?", (through_seq,))
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
        finally:
            self._conn.execute("PRAGMA synchronous = FULL")
        self._depth -= int(count)
        self._log_bytes -= int(log_bytes)

    def _reclaim_due(self) -> bool:
        return bool(self._conn.execute("PRAGMA freelist_count").fetchone()[0] >= _RECLAIM_FREE_PAGES
                    or (not self._depth and self._wal_bytes() > _WAL_RECLAIM_BYTES))

    def _wal_bytes(self) -> int:
        try:
            return self._path.with_name(self._path.name + "-wal").stat().st_size
        except OSError:
            return 0

    def _reclaim(self) -> None:
        # Each step of this pragma frees one page, and execute() steps once: executescript runs
        # it to the end.
        self._conn.executescript("PRAGMA incremental_vacuum;")
        self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()

    def depth(self) -> int:
        """Events stored and not yet acknowledged (a counter: no query)."""
        return self._depth

    def log_bytes(self) -> int:
        """Unsent log bytes stored (a counter: no query)."""
        return self._log_bytes

    # --- jobs this agent runs, so a restarted agent knows what it left behind -------------
    def remember_running(self, job_id: str, body: dict[str, Any]) -> None:
        self.write([Remember(job_id, body)])

    def update_running(self, job_id: str, fields: dict[str, Any]) -> None:
        """Merge ``fields`` into the job's running record (no-op if it has none)."""
        self.write([Update(job_id, fields)])

    def forget_running(self, job_id: str) -> None:
        self.write([Forget(job_id)])

    def running(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            rows = self._conn.execute("SELECT job_id, body FROM running").fetchall()
        return {job_id: json.loads(body) for job_id, body in rows}

    def discard_all(self) -> None:
        """Forget every event and running record (they belong to an identity the coordinator
        no longer accepts). Sequence numbers still never repeat."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            self._conn.execute("DELETE FROM outbox")
            self._conn.execute("DELETE FROM running")
            self._conn.execute("COMMIT")
            self._depth = 0
            self._log_bytes = 0
            self._reclaim()


class SpoolWriter:
    """The event loop's face of a ``Spool``: queue now (in order, never blocking), commit in
    batches from a worker thread in ``serve``. Run ``serve`` in the agent's nursery."""

    def __init__(self, spool: Spool, *, max_queued_bytes: int = 4 * 1024 * 1024) -> None:
        self.spool = spool
        self._queue: list[SpoolOp] = []
        self._queued_bytes = 0
        self._writing = 0  # appends in the transaction a worker thread is committing now
        self._max_queued_bytes = max_queued_bytes
        self._queued = trio.Event()
        self._committed = trio.Event()  # set (and replaced) after every batch
        self._changed = trio.Event()  # set (and replaced) after every commit or acknowledgement
        self._committed_output: dict[str, int] = {}  # per job: output offset its committed events reach
        self._queued_ops = 0  # operations ever queued, and ever committed: ``mark``/``flushed``
        self._committed_ops = 0
        self._stopped = False  # ``serve`` has ended: nothing more will be committed (``flushed``)
        # Every unacknowledged event, in order, while they were all committed by this writer
        # and fit in MEMORY_COPY_BYTES; None: read them from the disk.
        self._copy: list[tuple[int, str, dict[str, Any]]] | None = [] if spool.depth() == 0 else None
        self._copy_bytes = 0

    # queueing (sync, from callbacks on the loop)
    def append(self, kind: str, job_id: str, body: dict[str, Any], *, progress: dict[str, Any] | None = None) -> None:
        self._put(Append(kind, job_id, body, progress), len(body.get("data", "")) if kind == "log" else 0)

    def remember_running(self, job_id: str, body: dict[str, Any]) -> None:
        self._put(Remember(job_id, body), 0)

    def update_running(self, job_id: str, fields: dict[str, Any]) -> None:
        self._put(Update(job_id, fields), 0)

    def forget_running(self, job_id: str) -> None:
        self._put(Forget(job_id), 0)

    def _put(self, op: SpoolOp, size: int) -> None:
        self._queued_ops += 1
        self._queue.append(op)
        self._queued_bytes += size
        self._queued.set()

    def queued(self) -> int:
        return len(self._queue)

    def depth(self) -> int:
        """Events not yet acknowledged, queued or stored."""
        return self.spool.depth() + self._writing + sum(isinstance(op, Append) for op in self._queue)

    async def room(self) -> None:
        """Return once the queue holds less than its byte bound: producers of bulk data (a
        job's output) await this between reads, so memory stays bounded when the disk lags."""
        while self._queued_bytes >= self._max_queued_bytes:
            await self._committed.wait()

    def committed_output(self, job_id: str) -> int:
        """How far into the job's output the events on disk reach (its ``outputOffset``
        progress): a restarted agent reads on from there, so the output before it is not
        needed again."""
        return self._committed_output.get(job_id, 0)

    async def committed(self) -> None:
        """Return once everything queued before this call is on disk."""
        while self._queue:
            await self._committed.wait()

    def mark(self) -> int:
        """A mark of what has been queued so far, for ``flushed``."""
        return self._queued_ops

    async def flushed(self, mark: int) -> bool:
        """Wait until everything queued before ``mark`` was taken is on disk (whatever has been
        queued since: unlike ``committed``, a stream of later appends does not hold it); False
        if ``serve`` ended first without committing it."""
        while self._committed_ops < mark and not self._stopped:
            await self._committed.wait()
        return self._committed_ops >= mark

    async def serve(self) -> None:
        """Commit queued operations, one transaction per batch, until cancelled. On
        cancellation what is still queued is committed first (shielded), so a clean stop
        loses nothing."""
        self._stopped = False
        try:
            while True:
                if not self._queue:
                    self._queued = trio.Event()
                    await self._queued.wait()
                await self._commit_batch()
        finally:
            try:
                with trio.CancelScope(shield=True):
                    while self._queue:
                        await self._commit_batch()
            finally:
                # Even when a commit failed: whoever waits in ``flushed`` (shielded) stops waiting.
                self._stopped = True
                self._committed.set()
                self._committed = trio.Event()

    async def _commit_batch(self) -> None:
        batch, self._queue, self._queued_bytes = self._queue, [], 0
        self._writing = sum(isinstance(op, Append) for op in batch)
        if self._copy is None and self.spool.depth() == 0:
            self._copy, self._copy_bytes = [], 0  # nothing unacknowledged on disk: copy from here on
        bounded = self.spool.bounded
        try:
            seqs = await trio.to_thread.run_sync(self.spool.write, batch)
        except BaseException:
            self._queue[:0] = batch  # nothing of a failed transaction is on disk: keep it, in order
            self._copy = None
            raise
        finally:
            self._writing = 0
        self._committed_ops += len(batch)
        if self._copy is not None:
            appended = [op for op in batch if isinstance(op, Append)]
            self._copy.extend((seq, op.kind, op.body) for seq, op in zip(seqs, appended, strict=True))
            self._copy_bytes += sum(len(op.body.get("data", "")) + 200 for op in appended)
            if self._copy_bytes > MEMORY_COPY_BYTES or self.spool.bounded != bounded:
                self._copy = None  # too much to keep, or the disk's copy was changed (old logs dropped)
        for op in batch:
            if isinstance(op, Append) and op.progress is not None and "outputOffset" in op.progress:
                self._committed_output[op.job_id] = int(op.progress["outputOffset"])
            elif isinstance(op, Forget):
                self._committed_output.pop(op.job_id, None)
        self._committed.set()
        self._committed = trio.Event()
        self._signal_change()

    # the uplink's side
    async def pending(self, limit: int, *, max_bytes: int | None = None) -> list[tuple[int, str, dict[str, Any]]]:
        """As ``Spool.pending``; from the memory copy when there is one."""
        copy = self._copy
        if copy is not None and len(copy) > self.spool.depth():
            self._copy = None  # (cannot happen: every change of the disk's events passes here)
        # Equal unless a commit's thread has finished and its result is not yet back: the disk then.
        elif copy is not None and len(copy) == self.spool.depth():
            events: list[tuple[int, str, dict[str, Any]]] = []
            size = 0
            for seq, kind, body in copy[:limit]:
                size += len(json.dumps(body)) if max_bytes is not None else 0
                if max_bytes is not None and events and size > max_bytes:
                    break
                events.append((seq, kind, body))  # never changed in place: batch_events copies
            return events
        return await trio.to_thread.run_sync(lambda: self.spool.pending(limit, max_bytes=max_bytes))

    async def void(self, seq: int, body: dict[str, Any]) -> None:
        self._copy = None
        await trio.to_thread.run_sync(self.spool.void, seq, body)

    async def ack(self, through_seq: int) -> None:
        """``Spool.ack``: a few events of the memory copy at once on the loop when the spool is
        free (no thread's round trip on the way to the next batch), else in a worker thread."""
        copy = self._copy
        acked = [event for event in copy if event[0] <= through_seq] if copy is not None else None
        at_once = None
        if acked is not None and len(acked) <= ACK_AT_ONCE_EVENTS and \
                sum(len(body.get("data", "")) for _, _, body in acked) <= ACK_AT_ONCE_BYTES:
            at_once = self.spool.ack_at_once(through_seq)
        if at_once is None:
            await trio.to_thread.run_sync(self.spool.ack, through_seq)
        elif at_once:
            await trio.to_thread.run_sync(self.spool.reclaim)
        if self._copy is not None:
            kept = [event for event in self._copy if event[0] > through_seq]
            self._copy_bytes -= sum(len(body.get("data", "")) + 200 for seq, _, body in self._copy
                                    if seq <= through_seq)
            self._copy = kept
        self._signal_change()

    async def discard_all(self) -> None:
        """``Spool.discard_all``, off the loop."""
        await trio.to_thread.run_sync(self.spool.discard_all)
        self._copy, self._copy_bytes = [], 0

    def _signal_change(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    def next_change(self) -> trio.Event:
        """An event set by the next commit or acknowledgement. Take it *before* reading, then
        wait on it if what was read calls for it: a change in between is not missed."""
        return self._changed

    async def wait_for_change(self) -> None:
        """Return after the next commit or acknowledgement."""
        await self._changed.wait()
