"""The coordinator's and the agent's data dirs are 0700 and their databases and secrets 0600,
also when an older version (or a person) left them looser."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from tests.procs import AgentProc, Coordinator, wait_for

# Written into the data dir by the test harness itself (its stdout and stderr), not by the processes.
HARNESS_FILES = {"coordinator.log", "coordinator.stdout", "agent.log"}


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _loose_files(data_dir: Path) -> dict[str, str]:
    """Files and dirs under ``data_dir`` (not job work dirs) that anyone but the owner may read."""
    loose = {}
    for path in [data_dir, *data_dir.iterdir()]:
        if path.name in HARNESS_FILES or path.name == "work":
            continue
        mode = _mode(path)
        if mode & 0o077:
            loose[path.name] = oct(mode)
    return loose


def _loosen(data_dir: Path) -> None:
    os.chmod(data_dir, 0o755)
    for path in data_dir.iterdir():
        if path.is_file():
            os.chmod(path, 0o644)


def test_the_coordinator_keeps_its_store_private_and_fixes_a_loose_one_on_start(tmp_path: Path) -> None:
    data_dir = tmp_path / "coordinator"
    data_dir.mkdir(mode=0o755)
    coordinator = Coordinator(data_dir).start()
    try:
        with coordinator.client() as client:  # a write, so the WAL and shared-memory files exist
            assert client.post("/v0/registration-tokens", json={"name": "x"}).status_code == 201
        db = data_dir / "coordinator.sqlite3"
        assert {p.name for p in data_dir.iterdir()} >= {db.name, db.name + "-wal", db.name + "-shm"}
        assert _mode(data_dir) == 0o700
        assert _loose_files(data_dir) == {}
    finally:
        coordinator.stop()
    _loosen(data_dir)
    coordinator = Coordinator(data_dir).start()
    try:
        assert _mode(data_dir) == 0o700
        assert _loose_files(data_dir) == {}
    finally:
        coordinator.stop()


def test_the_agent_keeps_its_data_dir_private_and_fixes_a_loose_one_on_start(coordinator: Coordinator,
                                                                            tmp_path: Path) -> None:
    data_dir = tmp_path / "agent"
    data_dir.mkdir(mode=0o755)
    agent = AgentProc(coordinator, data_dir).start()
    try:
        assert agent.agent_id
        wait_for(lambda: (data_dir / "spool.sqlite3").exists() or None, message="spool created")
        assert _mode(data_dir) == 0o700
        assert _loose_files(data_dir) == {}
    finally:
        agent.stop()
    _loosen(data_dir)
    agent = AgentProc(coordinator, data_dir).start()
    try:
        wait_for(lambda: _mode(data_dir) == 0o700 or None, message="data dir made private")
        wait_for(lambda: _loose_files(data_dir) == {} or None, message="files made private")
    finally:
        agent.stop()
