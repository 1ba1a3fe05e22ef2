"""``tanvrit-compute jobs run --retry ... --after ...`` and how ``jobs get``/``list`` show
attempts, retry policies and dependencies: the real binary, coordinator and agent."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from cli.progress import queued_reason_text
from tests.cli_harness import assert_clean_error, run_cli
from tests.procs import AgentProc, Coordinator, wait_for, wait_terminal


@pytest.fixture(scope="module")
def runner(shared_coordinator: Coordinator, tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentProc]:
    proc = AgentProc(shared_coordinator, tmp_path_factory.mktemp("agent")).start()
    try:
        proc.agent_id  # noqa: B018 - waits until it has registered
        yield proc
    finally:
        proc.stop()


def test_jobs_run_retries_and_get_shows_every_attempt(shared_coordinator: Coordinator, runner: AgentProc,
                                                      tmp_path: Path) -> None:
    marker = tmp_path / "tried"
    result = run_cli(tmp_path, shared_coordinator, "jobs", "run", "--retry", "2", "--retry-on", "failed",
                     "--retry-exit-code", "3", "--retry-backoff", "0", "--",
                     f"if [ -e {marker} ]; then echo second; else touch {marker}; echo first; exit 3; fi")
    # The log of both attempts is followed through the retry; the exit code is the final one.
    assert (result.returncode, result.stdout) == (0, "first\nsecond\n"), result.stderr
    job_id = result.stderr.split()[1]
    job = json.loads(run_cli(tmp_path, shared_coordinator, "jobs", "get", job_id, "--json").stdout)
    assert job["retry"] == {"attempts": 2, "on": ["FAILED"], "exitCodes": [3], "backoffSeconds": 0}
    shown = run_cli(tmp_path, shared_coordinator, "jobs", "get", job_id).stdout
    assert "retry:" in shown and "2 attempts on FAILED (exit codes 3), backoff 0s" in shown
    assert f"#1 FAILED exit 3 on {runner.agent_id}" in shown and f"#2 SUCCEEDED exit 0 on {runner.agent_id}" in shown
    listed = run_cli(tmp_path, shared_coordinator, "jobs", "list", "--limit", "1").stdout.splitlines()
    header, row = listed[0].split(), listed[1].split()
    assert row[header.index("TRIES")] == "2"


def test_jobs_run_after_waits_for_its_dependency(shared_coordinator: Coordinator, runner: AgentProc,
                                                 tmp_path: Path) -> None:
    gate = tmp_path / "go"
    try:
        _run_after_behind_a_gate(shared_coordinator, tmp_path, gate)
    finally:
        gate.touch()  # the gated job outlives the agent otherwise (agents leave jobs running when stopped)


def _run_after_behind_a_gate(shared_coordinator: Coordinator, tmp_path: Path, gate: Path) -> None:
    first = run_cli(tmp_path, shared_coordinator, "jobs", "run", "--detach", "--",
                    f"while [ ! -e {gate} ]; do sleep 0.05; done").stdout.strip()
    done = run_cli(tmp_path, shared_coordinator, "jobs", "run", "--detach", "--", "true").stdout.strip()
    second = run_cli(tmp_path, shared_coordinator, "jobs", "run", "--detach", "--after", first,
                     "--after", f"{done}:finished", "--", "echo after").stdout.strip()
    assert second.startswith("job_"), second
    shown = run_cli(tmp_path, shared_coordinator, "jobs", "get", second).stdout
    assert re.search(rf"^depends on: +{first}:succeeded, {done}:finished$", shown, re.MULTILINE), shown
    assert "waiting_for_dependencies" in shown
    with shared_coordinator.client() as api:
        wait_for(lambda: api.get(f"/v0/jobs/{first}").json()["state"] == "RUNNING", message="first running")
        assert api.get(f"/v0/jobs/{second}").json()["state"] == "QUEUED"
        gate.touch()
        assert wait_terminal(api, second, timeout=60)["state"] == "SUCCEEDED"


def test_bad_retry_and_after_flags_are_clear_errors(shared_coordinator: Coordinator, tmp_path: Path) -> None:
    bad_condition = run_cli(tmp_path, shared_coordinator, "jobs", "run", "--after", "job_x:afterok", "--", "true")
    assert_clean_error(bad_condition, code=2)
    assert "the condition one of succeeded, failed, finished" in bad_condition.stderr
    without_attempts = run_cli(tmp_path, shared_coordinator, "jobs", "run", "--retry-on", "LOST", "--", "true")
    assert_clean_error(without_attempts, code=2)
    assert "need --retry N" in without_attempts.stderr
    unknown = run_cli(tmp_path, shared_coordinator, "jobs", "run", "--after", "job_" + "0" * 26, "--", "true")
    assert_clean_error(unknown, code=1)
    assert "dependsOn.0.jobId: no job job_" in unknown.stderr


def test_waiting_reasons_are_explained() -> None:
    waiting = {"state": "QUEUED", "reason": "waiting_for_dependencies",
               "dependsOn": [{"jobId": "job_a", "condition": "succeeded"}, {"jobId": "job_b", "condition": "finished"}]}
    assert queued_reason_text(waiting) == "waiting_for_dependencies: until job_a has succeeded, job_b has finished"
    backoff = {"state": "QUEUED", "reason": "waiting_for_retry", "attempts": [{}], "notBefore": "2026-04-26T09:00:30Z"}
    assert queued_reason_text(backoff) == "waiting_for_retry: attempt 2 may start at 2026-04-26T09:00:30Z"
