"""A throwaway PostgreSQL server for tests: initdb + pg_ctl from the distribution's binaries.

One server per test session (``postgres_server`` in conftest.py), in a temporary directory, on a
free loopback port, with its unix socket inside that directory (never /var/run/postgresql, so it
cannot meet a system server or another engineer's test run). Each test gets a fresh database
(``postgres_url``), dropped afterwards. A test that opens a store on it gets a fresh database
already migrated (``migrated_database``): a copy of a template migrated once per session through
the store itself (``open_store``), which is quicker than running every migration per test.

The server refuses to run as root, so when the tests run as root it runs as the ``postgres``
user (created by the distribution's package) and the directory is handed to that user.

It is stopped (``pg_ctl stop -m fast``, then ``-m immediate``) and its directory removed when the
session ends, even after failures or Ctrl-C. Should pytest itself be killed outright, a small
watchdog process, holding the read end of a pipe whose write end only pytest holds, sees the pipe
close and does the same, so no server outlives its test run.

Only for tests: the server runs with ``fsync=off`` (a crash may lose it; it is thrown away anyway).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest
import trio

from coordinator.store.factory import open_store

INITDB_GLOB = "/usr/lib/postgresql/*/bin/initdb"
SUPERUSER = "postgres"
MISSING_BINARIES = (
    "PostgreSQL server binaries not found (no /usr/lib/postgresql/*/bin/initdb or initdb on PATH); "
    "`make test` installs the distribution's postgresql package"
)

# Run by the watchdog process: wait for pytest to go away (EOF on stdin), then stop the server and
# remove its directory. Normally pytest's own teardown got there first and this finds nothing.
_WATCHDOG = """\
import os, shutil, signal, subprocess, sys
for name in ("SIGINT", "SIGTERM", "SIGHUP"):
    signal.signal(getattr(signal, name), signal.SIG_IGN)
sys.stdin.buffer.read()
pg_ctl, data, root, user = sys.argv[1:5]
if os.path.exists(os.path.join(data, "postmaster.pid")):
    kwargs = {"user": int(user), "group": int(sys.argv[5]), "extra_groups": []} if user != "-" else {}
    subprocess.run([pg_ctl, "stop", "-D", data, "-m", "immediate", "-w", "-t", "30"],
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False, **kwargs)
shutil.rmtree(root, ignore_errors=True)
"""


def server_bin_dir() -> Path | None:
    """The newest installed server's bin directory, or None when no server binaries exist."""
    found = sorted(glob.glob(INITDB_GLOB), key=lambda path: _version_key(Path(path).parent.parent.name))
    if found:
        return Path(found[-1]).parent
    on_path = shutil.which("initdb")
    return Path(on_path).parent if on_path else None


def _version_key(name: str) -> tuple[int, ...]:
    return tuple(int(part) for part in name.split(".") if part.isdigit())


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _server_account() -> pwd.struct_passwd | None:
    """The account the server runs as: None (ourselves) unless we are root, who may not run it."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    raise RuntimeError("running as root and neither a `postgres` nor a `nobody` account exists to run PostgreSQL")


@dataclass
class PostgresServer:
    """A running server; ``url(dbname)`` gives a connection URL (TCP on 127.0.0.1, trust auth)."""

    bin_dir: Path
    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="tanvrit-pg-")))
    port: int = 0
    account: pwd.struct_passwd | None = None
    _watchdog: subprocess.Popen[bytes] | None = None
    _migrated_template: str | None = None

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def socket_dir(self) -> Path:
        return self.root / "socket"

    @property
    def log_path(self) -> Path:
        return self.root / "server.log"

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{dbname}"

    def _as_server_user(self) -> dict[str, Any]:
        if self.account is None:
            return {}
        return {"user": self.account.pw_uid, "group": self.account.pw_gid, "extra_groups": []}

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.bin_dir / args[0]), *args[1:]], capture_output=True, text=True, check=check,
            start_new_session=True, cwd=self.root, **self._as_server_user(),
        )

    def start(self) -> PostgresServer:
        self.account = _server_account()
        self.socket_dir.mkdir()
        if self.account is not None:
            for path in (self.root, self.socket_dir):
                os.chown(path, self.account.pw_uid, self.account.pw_gid)
        self._start_watchdog()
        self._run("initdb", "-D", str(self.data_dir), "-U", SUPERUSER, "--auth=trust", "-E", "UTF8",
                  "--locale=C", "--no-sync")
        # A port picked now may be taken by someone else before the server binds it: try again.
        for attempt in range(5):
            self.port = _free_port()
            self._configure()
            started = self._run("pg_ctl", "start", "-D", str(self.data_dir), "-l", str(self.log_path),
                                "-w", "-t", "60", check=False)
            if started.returncode == 0:
                return self
            if attempt == 4 or "already in use" not in self._log_tail():
                raise RuntimeError(f"pg_ctl start failed: {started.stdout}{started.stderr}\n{self._log_tail()}")
        raise AssertionError("unreachable")

    def _configure(self) -> None:
        settings = {
            "listen_addresses": "'127.0.0.1'",
            "port": str(self.port),
            "unix_socket_directories": f"'{self.socket_dir}'",
            "shared_buffers": "'16MB'",
            # Replicas, pools and 20 agents' worth of requests in one test need room.
            "max_connections": "200",
            # Tests only: nothing here must survive a crash.
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
        }
        conf = self.data_dir / "postgresql.auto.conf"
        text = "".join(f"{key} = {value}\n" for key, value in settings.items())
        conf.write_text(text)
        if self.account is not None:
            os.chown(conf, self.account.pw_uid, self.account.pw_gid)

    def _start_watchdog(self) -> None:
        account = self.account
        user, group = (str(account.pw_uid), str(account.pw_gid)) if account else ("-", "-")
        self._watchdog = subprocess.Popen(
            [sys.executable, "-c", _WATCHDOG, str(self.bin_dir / "pg_ctl"), str(self.data_dir), str(self.root),
             user, group],
            stdin=subprocess.PIPE, start_new_session=True,
        )

    def _log_tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def stop(self) -> None:
        """Stop the server (fast, then immediate) and remove its directory. Safe to call twice."""
        try:
            if (self.data_dir / "postmaster.pid").exists():
                for mode in ("fast", "immediate"):
                    try:
                        result = self._run("pg_ctl", "stop", "-D", str(self.data_dir), "-m", mode, "-w", "-t", "30",
                                           check=False)
                    except subprocess.SubprocessError:
                        continue
                    if result.returncode == 0:
                        break
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
            if self._watchdog is not None:
                # Closing its stdin lets it finish; it finds nothing left to do.
                with contextlib.suppress(OSError):
                    if self._watchdog.stdin is not None:
                        self._watchdog.stdin.close()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self._watchdog.wait(timeout=30)
                self._watchdog = None

    def halt(self) -> None:
        """Stop the server, keeping its data: the database is down until ``resume``."""
        self._run("pg_ctl", "stop", "-D", str(self.data_dir), "-m", "fast", "-w", "-t", "30")

    def resume(self) -> None:
        """Start a halted server again, on the same port."""
        self._run("pg_ctl", "start", "-D", str(self.data_dir), "-l", str(self.log_path), "-w", "-t", "60")

    def create_database(self) -> str:
        """A fresh, empty database; returns its name."""
        name = f"t_{uuid.uuid4().hex[:16]}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return name

    def create_migrated_database(self) -> str:
        """A fresh database holding the store's current schema and nothing else; returns its name.

        A copy (``CREATE DATABASE ... TEMPLATE``) of a database that ``open_store`` migrated the
        first time one was asked for; nothing connects to that template afterwards, as copying
        requires."""
        if self._migrated_template is None:
            template = self.create_database()
            # In a thread of its own: the caller may be inside a trio run already.
            with concurrent.futures.ThreadPoolExecutor(max_workers=1) as thread:
                thread.submit(trio.run, _open_and_close, self.url(template)).result()
            self._migrated_template = template
        name = f"t_{uuid.uuid4().hex[:16]}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{self._migrated_template}"')
        return name

    def drop_database(self, name: str) -> None:
        """Drop a database, disconnecting whatever still holds it (a pool a test did not close)."""
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def _open_and_close(url: str) -> None:
    async with open_store(url):
        pass


@contextlib.contextmanager
def server_or_skip() -> Iterator[PostgresServer]:
    """``running_server()``, or the test skipped where the server binaries are missing."""
    if server_bin_dir() is None:
        pytest.skip(MISSING_BINARIES)
    with running_server() as server:
        yield server


@contextlib.contextmanager
def running_server() -> Iterator[PostgresServer]:
    """A started server, stopped and removed on the way out. Raises LookupError without binaries."""
    bin_dir = server_bin_dir()
    if bin_dir is None:
        raise LookupError(MISSING_BINARIES)
    server = PostgresServer(bin_dir)
    try:
        yield server.start()
    finally:
        server.stop()


@contextlib.contextmanager
def fresh_database(server: PostgresServer) -> Iterator[str]:
    """The URL of a new empty database on ``server``, dropped on the way out."""
    name = server.create_database()
    try:
        yield server.url(name)
    finally:
        server.drop_database(name)


@contextlib.contextmanager
def migrated_database(server: PostgresServer) -> Iterator[str]:
    """The URL of a new database on ``server`` with the store's schema (``create_migrated_database``),
    dropped on the way out."""
    name = server.create_migrated_database()
    try:
        yield server.url(name)
    finally:
        server.drop_database(name)
