from __future__ import annotations

import os
import signal
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from agentd.config import DEFAULT_JOB_USER
from agentd.job_user import ensure_system_user
from common.logs import configure_logging
from coordinator.store.base import Store
from coordinator.store.factory import open_store
from tests.cgroup_fixtures import cleanup_agent_cgroups
from tests.cli_harness import fast_coordinator
from tests.installed import Installed, build_and_install, remove
from tests.postgres import PostgresServer, fresh_database, migrated_database, server_or_skip
from tests.procs import STARTED_AGENT_DIRS, AgentProc, Coordinator, kill_jobs_left_by, quick_ticking_coordinator


@pytest.fixture(scope="session", autouse=True)
def production_logging() -> None:
    """Coordinators and agents run in the test process log as their own processes do
    (``configure_logging``): without it structlog's development defaults render every logged
    exception as a rich traceback with each frame's local variables, seconds of CPU apiece on
    this machine, and a rendering no deployment uses."""
    configure_logging()


@pytest.fixture(scope="session", autouse=True)
def job_user() -> str:
    """The default job user exists where the tests run as root (as `tanvrit-agentd install`
    would have made it): an agent started without run_as uses it."""
    if os.geteuid() == 0:
        ensure_system_user(DEFAULT_JOB_USER)
    return DEFAULT_JOB_USER


@pytest.fixture
def coordinator(tmp_path: Path) -> Iterator[Coordinator]:
    coord = Coordinator(tmp_path / "coordinator").start()
    try:
        yield coord
    finally:
        coord.stop()


@pytest.fixture
def agent(coordinator: Coordinator, tmp_path: Path) -> Iterator[AgentProc]:
    proc = AgentProc(coordinator, tmp_path / "agent", labels=("arch=arm64",)).start()
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def shared_coordinator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Coordinator]:
    """One coordinator for a module whose tests do not disturb each other."""
    coord = Coordinator(tmp_path_factory.mktemp("shared") / "coordinator").start()
    try:
        yield coord
    finally:
        coord.stop()


@pytest.fixture
def fast(tmp_path: Path) -> Iterator[Coordinator]:
    """A coordinator with quick meter ticks and webhook retries (see ``QUICK_TICKS``)."""
    coord = quick_ticking_coordinator(tmp_path).start()
    try:
        yield coord
    finally:
        coord.stop()


@pytest.fixture(scope="module")
def quick_heartbeat_coordinator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Coordinator]:
    """One coordinator per module whose agents heartbeat every 0.3 s (drains and cancels settle fast)."""
    coordinator = fast_coordinator(tmp_path_factory.mktemp("quick-heartbeat") / "coordinator")
    try:
        yield coordinator
    finally:
        coordinator.stop()


@pytest.fixture(scope="session")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Installed]:
    """The wheel built from this checkout, installed into a fresh venv outside it (once per run)."""
    built = build_and_install(tmp_path_factory.mktemp("installed"))
    try:
        yield built
    finally:
        remove(built)


@pytest.fixture
def agents() -> Iterator[list[AgentProc]]:
    """Agents a test starts (it appends them); each is SIGKILLed at the end, with the jobs and
    cgroups it left behind."""
    started: list[AgentProc] = []
    try:
        yield started
    finally:
        for proc in started:
            proc.stop(signal.SIGKILL)
        for data_dir in {proc.data_dir for proc in started}:
            kill_jobs_left_by(data_dir)
            cleanup_agent_cgroups(data_dir)


@pytest.fixture(scope="session", autouse=True)
def _agent_cgroups_left_at_the_end() -> Iterator[None]:
    """After the last test of this process: the jobs and cgroups of every agent it started
    (``tests/procs.py: STARTED_AGENT_DIRS``) are gone, whichever test started it. Each full run
    left one empty agent subtree in the pids, cpu and cpuacct hierarchies before this."""
    yield
    # Only through the cgroups (their members pinned by pidfd): a pid in a spool this old may
    # belong to another process by now, so no kill by recorded pid here.
    for data_dir in sorted(STARTED_AGENT_DIRS):
        cleanup_agent_cgroups(data_dir)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One throwaway PostgreSQL server for the session (tests/postgres.py); skips only where the
    server binaries are missing."""
    with server_or_skip() as server:
        yield server


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> Iterator[str]:
    """``postgresql://...`` of a fresh empty database for this test, dropped afterwards."""
    with fresh_database(postgres_server) as url:
        yield url


# --- the store contract: every backend ------------------------------------------------------

STORE_BACKENDS = ["sqlite", "postgresql"]


@pytest.fixture
def migrated_postgres_url(postgres_server: PostgresServer) -> Iterator[str]:
    """``postgresql://...`` of a fresh database already holding the store's schema (a copy of a
    template migrated once per session), dropped afterwards: for tests that open a store on it."""
    with migrated_database(postgres_server) as url:
        yield url


@pytest.fixture(params=STORE_BACKENDS)
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Where a contract test's store lives: a SQLite file, or a fresh PostgreSQL database (with
    the store's schema already: every user opens a store on it, and migrating is idempotent)."""
    if request.param == "sqlite":
        return str(tmp_path / "coordinator.sqlite3")
    url: str = request.getfixturevalue("migrated_postgres_url")
    return url


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[Store]:
    """An open store on each backend (``open_store``), closed after the test."""
    async with open_store(store_url) as opened:
        yield opened
