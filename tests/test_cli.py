"""The real ``tanvrit-compute`` binary against a real coordinator and agent."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.procs import AgentProc, Coordinator


def run_cli(coordinator: Coordinator | None, *args: str, token: str | None = None,
            env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("TANVRIT_")}
    if coordinator is not None:
        base["TANVRIT_COMPUTE_URL"] = coordinator.url
        base["TANVRIT_COMPUTE_TOKEN"] = token or coordinator.token
    return subprocess.run([sys.executable, "-m", "cli", *args], capture_output=True, text=True,
                          env={**base, **(env or {})}, timeout=timeout, check=False)


def test_jobs_run_prints_output_and_exits_with_the_job_code(coordinator: Coordinator, agent: AgentProc) -> None:
    result = run_cli(coordinator, "jobs", "run", "--label", "arch=arm64", "--", "sh", "-c", "echo out; exit 7")
    assert result.stdout == "out\n"
    assert result.returncode == 7
    assert "FAILED" in result.stderr


def test_jobs_get_and_list_json(coordinator: Coordinator, agent: AgentProc) -> None:
    job_id = run_cli(coordinator, "jobs", "run", "--detach", "--", "echo listed").stdout.strip()
    assert job_id.startswith("job_")
    assert run_cli(coordinator, "jobs", "logs", "--follow", job_id).stdout == "listed\n"
    got = json.loads(run_cli(coordinator, "--json", "jobs", "get", job_id).stdout)
    assert got["id"] == job_id and got["state"] == "SUCCEEDED" and got["exitCode"] == 0
    listed = json.loads(run_cli(coordinator, "--json", "jobs", "list").stdout)
    assert [job["id"] for job in listed["items"]] == [job_id]
    table = run_cli(coordinator, "jobs", "list").stdout.splitlines()
    assert table[0].split()[:3] == ["ID", "STATE", "EXIT"]
    assert table[1].split()[:3] == [job_id, "SUCCEEDED", "0"]


def test_flags_override_environment(coordinator: Coordinator) -> None:
    result = run_cli(coordinator, "--token", "tcp_pat_wrong", "jobs", "list")
    assert result.returncode == 1
    assert "invalid_token" in result.stderr
    assert "Traceback" not in result.stderr


def test_unreachable_coordinator_is_a_clear_message() -> None:
    result = run_cli(None, "--url", "http://127.0.0.1:9", "--token", "tcp_pat_x", "jobs", "list", timeout=30)
    assert result.returncode == 2
    assert "cannot reach the coordinator at http://127.0.0.1:9" in result.stderr
    assert "Traceback" not in result.stderr


def test_api_errors_are_printed_with_code(coordinator: Coordinator) -> None:
    result = run_cli(coordinator, "jobs", "run", "--timeout", "0", "--", "true")
    assert result.returncode == 1
    assert "invalid_value" in result.stderr and "timeoutSeconds" in result.stderr
