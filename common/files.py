"""Private files: the coordinator's store holds token hashes and webhook signing secrets, the
agent's data dir its bearer token and spooled job output. Only their owner may read them."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

PRIVATE_DIR = 0o700
PRIVATE_FILE = 0o600
_SQLITE_SIDE_FILES = ("-wal", "-shm", "-journal")


def private_dir(path: Path) -> None:
    """Create ``path`` (and parents) if missing and make it 0700, also when it already existed
    with a looser mode (a data dir made by an older version, or by hand)."""
    path.mkdir(parents=True, exist_ok=True, mode=PRIVATE_DIR)
    os.chmod(path, PRIVATE_DIR)


def private_sqlite(path: Path) -> None:
    """Make the database at ``path`` and its side files 0600 before SQLite opens it. SQLite
    creates a missing database with 0644 and gives its -wal and -shm files the database's mode,
    so creating the database file 0600 first covers the side files it makes later; side files
    left by an earlier run are fixed here."""
    # Never open (and so close) a database file that exists: closing any descriptor of a file
    # drops every POSIX lock this process holds on it, the locks of its SQLite connections too.
    if not path.exists():
        with contextlib.suppress(FileExistsError):
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE))
    for candidate in (path, *(path.with_name(path.name + suffix) for suffix in _SQLITE_SIDE_FILES)):
        with contextlib.suppress(FileNotFoundError):
            os.chmod(candidate, PRIVATE_FILE)


def write_private_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` as a 0600 file (also when it existed with a looser mode)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, PRIVATE_FILE)
    with os.fdopen(fd, "w") as handle:
        os.fchmod(handle.fileno(), PRIVATE_FILE)
        handle.write(text)
