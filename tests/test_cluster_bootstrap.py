"""Replicas starting at once on an empty database: one initialises it, none crashes."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.procs import python_module, stop_process, wait_for

REPLICAS = 3


@pytest.fixture
def replicas(tmp_path: Path) -> Iterator[tuple[Path, list[tuple[subprocess.Popen[bytes], Path, Path]]]]:
    data_dir = tmp_path / "cluster"  # one data dir: one SQLite database for all three
    data_dir.mkdir()
    started: list[tuple[subprocess.Popen[bytes], Path, Path]] = []
    try:
        for n in range(REPLICAS):
            out, err = tmp_path / f"replica-{n}.out", tmp_path / f"replica-{n}.log"
            with out.open("wb") as stdout, err.open("wb") as stderr:
                process = subprocess.Popen(
                    python_module("coordinator", "serve", "--bind", "127.0.0.1:0", "--data-dir", str(data_dir),
                                  "--init-json"),
                    stdout=stdout, stderr=stderr)
            started.append((process, out, err))
        yield data_dir, started
    finally:
        for process, _, _ in started:
            stop_process(process, signal.SIGKILL, 10)


def test_three_replicas_starting_at_once_bootstrap_an_empty_database_once(
        replicas: tuple[Path, list[tuple[subprocess.Popen[bytes], Path, Path]]]) -> None:
    data_dir, started = replicas

    def all_listening() -> bool:
        for process, _, log in started:
            assert process.poll() is None, f"a replica exited with {process.returncode}: {log.read_text()[-3000:]}"
        return all("coordinator listening" in log.read_text() for _, _, log in started)

    # Three interpreters starting at once on a small loaded machine: allow them three starts.
    wait_for(all_listening, timeout=120, message="every replica listening")
    outputs = [out.read_text().strip() for _, out, _ in started]
    inits = [json.loads(text.splitlines()[0]) for text in outputs if text.startswith("{")]
    assert len(inits) == 1, outputs
    with sqlite3.connect(data_dir / "coordinator.sqlite3") as db:
        users = db.execute("SELECT id FROM users").fetchall()
        workspaces = db.execute("SELECT id FROM workspaces").fetchall()
        guard = db.execute("SELECT COUNT(*) FROM cluster_bootstrap").fetchone()[0]
    assert users == [(inits[0]["userId"],)] and workspaces == [(inits[0]["workspaceId"],)] and guard == 1
