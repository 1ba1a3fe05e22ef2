from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path

import pytest
import trio

from agentd.spool import Append, Forget, Remember, Spool, SpoolWriter, Update


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


def test_a_batch_is_one_transaction_with_its_progress(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    seqs = spool.write([
        Remember("job_1", {"epoch": 1}),
        Append("log", "job_1", {"type": "log", "data": "ab"}, {"outputOffset": 2}),
        Append("log", "job_1", {"type": "log", "data": "cd"}, {"outputOffset": 4}),
        Update("job_1", {"launched": {"pid": 7}}),
        Remember("job_2", {"epoch": 3}),
        Forget("job_2"),
    ])
    assert seqs == [1, 2]
    assert spool.running() == {"job_1": {"epoch": 1, "outputOffset": 4, "launched": {"pid": 7}}}
    assert (spool.depth(), spool.log_bytes()) == (2, 4)
    spool.ack(1)
    assert (spool.depth(), spool.log_bytes()) == (1, 2)
    spool.close()
    reopened = Spool(tmp_path / "spool")
    assert (reopened.depth(), reopened.log_bytes()) == (1, 2)
    reopened.close()


def test_pending_is_bounded_by_bytes_but_never_empty(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    for _ in range(10):
        spool.append("log", "job_1", {"type": "log", "data": "x" * 1000})
    assert len(spool.pending(100, max_bytes=3500)) == 3
    assert len(spool.pending(100, max_bytes=10)) == 1
    spool.close()


def _spool_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.parent.iterdir() if p.name.startswith(path.name))


def test_space_is_given_back_after_acknowledgement(tmp_path: Path) -> None:
    path = tmp_path / "spool"
    spool = Spool(path)
    chunk = "y" * 64 * 1024
    for _start in range(0, 320, 32):  # 20 MiB of log
        spool.write([Append("log", "job_1", {"type": "log", "data": chunk}) for _ in range(32)])
    assert _spool_bytes(path) > 20 * 2**20
    spool.ack(spool.pending(1000)[-1][0])
    assert spool.depth() == 0
    assert _spool_bytes(path) < 2 * 2**20
    spool.close()


def test_an_old_spool_is_converted_to_give_space_back(tmp_path: Path) -> None:
    path = tmp_path / "spool"
    with sqlite3.connect(path) as db:  # as an older agent made it: no auto-vacuum
        db.execute("CREATE TABLE outbox (seq INTEGER PRIMARY KEY AUTOINCREMENT, kind TEXT NOT NULL, "
                   "job_id TEXT NOT NULL, size INTEGER NOT NULL, body TEXT NOT NULL)")
        db.execute("INSERT INTO outbox (kind, job_id, size, body) VALUES ('log', 'job_1', 1, '{\"data\": \"z\"}')")
    spool = Spool(path)
    assert spool.pending(10) == [(1, "log", {"data": "z"})]
    assert spool.log_bytes() == 1
    spool.close()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA auto_vacuum").fetchone()[0] == 2


async def test_writer_queues_in_order_and_commits_in_batches(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    writer = SpoolWriter(spool, max_queued_bytes=10)
    async with trio.open_nursery() as nursery:
        writer.remember_running("job_1", {"epoch": 1})
        for index in range(5):
            writer.append("log", "job_1", {"type": "log", "data": str(index)}, progress={"outputOffset": index + 1})
        writer.forget_running("job_1")
        assert writer.depth() == 5 and spool.depth() == 0  # queued, not yet written
        nursery.start_soon(writer.serve)
        await writer.committed()
        assert [body["data"] for _, _, body in await writer.pending(10)] == ["0", "1", "2", "3", "4"]
        assert spool.running() == {}
        writer.append("log", "job_1", {"type": "log", "data": "x" * 20})
        with trio.fail_after(10):
            await writer.room()  # over its bound until the batch is on disk
        assert writer.queued() == 0
        await writer.ack(6)
        assert writer.depth() == 0
        writer.append("finished", "job_1", {"type": "finished"})
        nursery.cancel_scope.cancel()
    # Cancelled with something queued: it was committed on the way out.
    assert [kind for _, kind, _ in spool.pending(10)] == ["finished"]
    spool.close()


async def test_writer_ships_what_it_committed_from_memory_and_the_disk_otherwise(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    spool.append("log", "job_0", {"type": "log", "data": "left by the last run"})
    writer = SpoolWriter(spool)
    read_disk = spool.pending
    disk_reads = 0

    def counted(limit: int, *, max_bytes: int | None = None) -> list[tuple[int, str, dict[str, object]]]:
        nonlocal disk_reads
        disk_reads += 1
        return read_disk(limit, max_bytes=max_bytes)

    spool.pending = counted  # type: ignore[method-assign]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(writer.serve)
        writer.append("started", "job_1", {"type": "started"})
        await writer.committed()
        # An event on disk from before this writer: the disk is read, and it is what is shipped.
        assert [kind for _, kind, _ in await writer.pending(10)] == ["log", "started"] and disk_reads == 1
        await writer.ack(2)
        for index in range(3):
            writer.append("log", "job_1", {"type": "log", "data": str(index)})
        writer.append("finished", "job_1", {"type": "finished"})
        await writer.committed()
        # Everything unacknowledged was committed by this writer: served from memory, as on disk.
        from_memory = await writer.pending(10, max_bytes=70)
        assert disk_reads == 1
        assert from_memory == read_disk(10, max_bytes=70) and [seq for seq, _, _ in from_memory] == [3, 4]
        await writer.ack(4)
        assert await writer.pending(10) == read_disk(10) and disk_reads == 1
        await writer.void(5, {"type": "log", "data": ""})
        assert [kind for _, kind, _ in await writer.pending(10)] == ["void", "finished"] and disk_reads == 2
        nursery.cancel_scope.cancel()
    spool.close()


async def test_a_small_acknowledgement_is_applied_at_once_unless_the_spool_is_busy(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    writer = SpoolWriter(spool)
    in_thread: list[int] = []
    ack = spool.ack

    def counted(through_seq: int) -> None:
        in_thread.append(through_seq)
        ack(through_seq)

    spool.ack = counted  # type: ignore[method-assign]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(writer.serve)
        for index in range(3):
            writer.append("log", "job_1", {"type": "log", "data": str(index)})
        await writer.committed()
        await writer.ack(2)
        assert in_thread == [] and spool.depth() == 1 and [seq for seq, _, _ in spool.pending(10)] == [3]
        held, release = threading.Event(), threading.Event()

        def busy() -> None:  # another thread's transaction (a commit) in progress
            with spool._lock:
                held.set()
                release.wait(30)

        holder = threading.Thread(target=busy)
        holder.start()
        held.wait(30)
        try:
            async def let_go() -> None:
                await trio.sleep(0.1)  # the loop is free meanwhile: the ack waits in a worker thread
                release.set()

            nursery.start_soon(let_go)
            await writer.ack(3)
        finally:
            release.set()
            holder.join()
        assert in_thread == [3] and spool.depth() == 0
        nursery.cancel_scope.cancel()
    spool.close()


def test_a_voided_event_keeps_its_number_and_stops_counting_as_log(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool.sqlite3")
    first = spool.append("log", "job_1", {"type": "log", "jobId": "job_1", "epoch": 1, "data": "x" * 100})
    second = spool.append("finished", "job_1", {"type": "finished", "jobId": "job_1", "epoch": 1})
    stand_in = {"type": "log", "jobId": "job_1", "epoch": 1, "data": ""}
    spool.void(first, stand_in)
    # Still there, under its own number, before the events after it: no gap for the coordinator.
    assert spool.pending(10) == [(first, "void", stand_in), (second, "finished", {
        "type": "finished", "jobId": "job_1", "epoch": 1})]
    assert (spool.depth(), spool.log_bytes()) == (2, 0)
    spool.close()
    reopened = Spool(tmp_path / "spool.sqlite3")
    assert [seq for seq, _, _ in reopened.pending(10)] == [first, second]
    reopened.close()


async def test_flushed_says_when_a_mark_is_on_disk_and_stops_waiting_when_the_writer_fails(tmp_path: Path) -> None:
    """The agent removes a finished job's directories only once ``flushed`` says its result is
    committed; a writer that fails must not leave that (shielded) wait hanging for ever."""
    spool = Spool(tmp_path / "spool")
    writer = SpoolWriter(spool)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(writer.serve)
        writer.append("finished", "job_1", {"type": "finished"})
        mark = writer.mark()
        writer.append("log", "job_2", {"type": "log", "data": "later"})  # after the mark: not waited for
        with trio.fail_after(10):
            assert await writer.flushed(mark)
        assert "finished" in [kind for _, kind, _ in spool.pending(10)]
        nursery.cancel_scope.cancel()
    spool.close()

    failing = Spool(tmp_path / "failing")
    writer = SpoolWriter(failing)

    def refuse(batch: object) -> list[int]:
        raise sqlite3.OperationalError("disk I/O error")

    failing.write = refuse  # type: ignore[method-assign]
    writer.append("finished", "job_1", {"type": "finished"})
    mark = writer.mark()
    answer: list[bool] = []

    async def wait_shielded() -> None:
        with trio.CancelScope(shield=True), trio.fail_after(10):
            answer.append(await writer.flushed(mark))

    with pytest.RaisesGroup(sqlite3.OperationalError, flatten_subgroups=True):  # the writer's failure
        async with trio.open_nursery() as nursery:
            nursery.start_soon(wait_shielded)
            nursery.start_soon(writer.serve)
    assert answer == [False]
    failing.close()
