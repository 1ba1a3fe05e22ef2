"""A consistent copy of a live SQLite store, through SQLite's online backup API.

Copying ``coordinator.sqlite3`` with ``cp`` while the coordinator serves can tear a page or
miss what still sits in the WAL. ``sqlite3.Connection.backup`` copies the database as of one
read snapshot instead: in WAL mode the serving writer is never blocked, and the copy holds
every transaction committed before the snapshot, WAL included. The copy is written beside
the target and renamed into place once checked, so a target path never holds half a backup.
"""

from __future__ import annotations

import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path


class BackupError(Exception):
    """The backup could not be taken or did not check out; the message says why."""


@dataclass(frozen=True)
class BackupResult:
    path: Path
    size_bytes: int
    schema_version: int


def backup_database(source: Path, target: Path) -> BackupResult:
    """Copy the store at ``source`` to ``target`` (replacing it) and check the copy's integrity.

    Raises ``BackupError``."""
    if not source.is_file():
        raise BackupError(f"no store at {source}")
    target = target.resolve()
    live = source.resolve()
    # Its -wal holds committed transactions not yet in the main file: replacing it loses them.
    if target in {live, *(live.with_name(live.name + suffix) for suffix in ("-wal", "-shm", "-journal"))}:
        raise BackupError("the backup must not overwrite the live store or its -wal, -shm or -journal file")
    partial = target.with_name(f".{target.name}.partial-{os.getpid()}")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        partial.unlink(missing_ok=True)
        # Private from its first byte: SQLite would create it 0644 and the copy (token hashes,
        # webhook secrets) would be readable by anyone on the host until the chmod below. O_EXCL
        # with O_NOFOLLOW: a file or link planted at this name since the unlink is refused.
        os.close(os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600))
        src = sqlite3.connect(f"file:{source}?mode=ro", uri=True)
        try:
            src.execute("PRAGMA busy_timeout = 10000")
            dst = sqlite3.connect(partial)
            try:
                src.backup(dst)  # all pages in one step: one snapshot, however busy the writer is
                dst.execute("PRAGMA journal_mode = DELETE")  # a single self-contained file
                (check,) = dst.execute("PRAGMA integrity_check").fetchone()
                (version,) = dst.execute("PRAGMA user_version").fetchone()
            finally:
                dst.close()
        finally:
            src.close()
        if check != "ok":
            raise BackupError(f"the copy failed its integrity check: {check}")
        with partial.open("rb") as handle:
            os.fsync(handle.fileno())
        os.chmod(partial, 0o600)  # it holds token hashes and job data, as the store does
        os.replace(partial, target)
    except (OSError, sqlite3.Error) as exc:
        raise BackupError(f"cannot back up {source} to {target}: {exc}") from exc
    finally:
        partial.unlink(missing_ok=True)
    return BackupResult(target, target.stat().st_size, int(version))
