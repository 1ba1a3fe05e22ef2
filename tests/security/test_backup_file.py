"""A backup holds what the store holds (token hashes, webhook signing secrets): nobody but its
owner may read it at any moment, the moments while it is being written included."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
from pathlib import Path

import pytest

from coordinator.store.backup import BackupError, backup_database


def test_the_backup_is_never_readable_by_others_while_it_is_written(tmp_path: Path) -> None:
    source = tmp_path / "store.sqlite3"
    with sqlite3.connect(source) as db:  # big enough that copying and checking it takes a while
        db.execute("CREATE TABLE t (x BLOB)")
        db.executemany("INSERT INTO t VALUES (?)", ((os.urandom(4096),) for _ in range(12_000)))
    target = tmp_path / "out" / "backup.sqlite3"
    target.parent.mkdir()
    seen: set[int] = set()
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            for entry in os.scandir(target.parent):
                with contextlib.suppress(FileNotFoundError):  # renamed or removed meanwhile
                    seen.add(entry.stat(follow_symlinks=False).st_mode & 0o777)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        backup_database(source, target)
    finally:
        done.set()
        watcher.join()
    assert seen, "the watcher never saw the backup being written"
    assert seen == {0o600}, f"modes seen while the backup was written: {sorted(oct(m) for m in seen)}"
    assert target.stat().st_mode & 0o777 == 0o600


def test_the_backup_never_replaces_the_live_stores_side_files(tmp_path: Path) -> None:
    source = tmp_path / "store.sqlite3"
    with sqlite3.connect(source) as db:
        db.execute("CREATE TABLE t (x)")
    for name in ("store.sqlite3", "store.sqlite3-wal", "store.sqlite3-shm", "store.sqlite3-journal"):
        with pytest.raises(BackupError, match=r"^the backup must not overwrite the live store"):
            backup_database(source, tmp_path / name)
        assert not (tmp_path / name).exists() or name == "store.sqlite3"
