"""The real coordinator on PostgreSQL: `serve --database postgresql://...`, a real agent, real jobs."""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tests.procs import REFERENCE_JOB, AgentProc, Coordinator, python_module, wait_terminal


@pytest.fixture
def pg_coordinator(tmp_path: Path, postgres_url: str) -> Iterator[Coordinator]:
    coord = Coordinator(tmp_path / "coordinator", extra_args=("--database", postgres_url)).start()
    try:
        yield coord
    finally:
        coord.stop()


def test_jobs_run_end_to_end_and_live_in_postgresql(pg_coordinator: Coordinator, postgres_url: str,
                                                     agents: list[AgentProc], tmp_path: Path) -> None:
    agents.append(AgentProc(pg_coordinator, tmp_path / "agent", labels=("arch=arm64",)).start())
    with pg_coordinator.client() as api:
        ok = api.post("/v0/jobs", json=REFERENCE_JOB).json()["id"]
        failing = api.post("/v0/jobs", json={"type": "COMMAND", "command": "echo oops >&2; exit 3",
                                             "labels": {"arch": "arm64"}}).json()["id"]
        job = wait_terminal(api, ok)
        assert (job["state"], job["exitCode"], job["agentId"]) == ("SUCCEEDED", 0, agents[0].agent_id)
        assert api.get(f"/v0/jobs/{ok}/logs").text == "hello\n"
        assert (wait_terminal(api, failing)["state"], api.get(f"/v0/jobs/{failing}/logs").text) == ("FAILED", "oops\n")
    # The rows are in PostgreSQL, and the data dir holds no SQLite store.
    with psycopg.connect(postgres_url) as conn:
        rows = conn.execute("SELECT id, state, exit_code FROM jobs ORDER BY id").fetchall()
        logs = conn.execute("SELECT data FROM job_logs WHERE job_id = %s", (ok,)).fetchall()
    assert sorted(rows) == sorted([(ok, "SUCCEEDED", 0), (failing, "FAILED", 3)])
    assert b"".join(row[0] for row in logs) == b"hello\n"
    assert not list((tmp_path / "coordinator").glob("*.sqlite3*"))


def test_a_restarted_coordinator_keeps_its_jobs_and_identity(pg_coordinator: Coordinator) -> None:
    with pg_coordinator.client() as api:
        ids = [api.post("/v0/jobs", json=REFERENCE_JOB).json()["id"] for _ in range(3)]
    pg_coordinator.stop()
    pg_coordinator.start()  # the same database: already initialised, so no new secrets
    with pg_coordinator.client() as api:
        states = [api.get(f"/v0/jobs/{job_id}").json()["state"] for job_id in ids]
    assert states == ["QUEUED"] * 3


@pytest.mark.parametrize("command", ["serve", "init"])
def test_an_unreachable_database_is_a_clear_error_without_the_password(command: str, tmp_path: Path) -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"postgresql://tanvrit:s3cret-pw@127.0.0.1:{port}/tanvrit"
    args = ["--bind", "127.0.0.1:0"] if command == "serve" else []
    result = subprocess.run(python_module("coordinator", command, "--data-dir", str(tmp_path), "--database", url,
                                          *args),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith(
        f"Error: cannot connect to the database postgresql://tanvrit:***@127.0.0.1:{port}/tanvrit: ")
    assert "Traceback" not in result.stderr and "s3cret-pw" not in result.stderr + result.stdout
