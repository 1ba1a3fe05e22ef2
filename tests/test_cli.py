"""The real ``tanvrit-compute`` binary against a real coordinator and agent: jobs, exit codes, errors."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cli_harness import assert_clean_error, cli_command, cli_env, run_cli
from tests.procs import AgentProc, Coordinator, wait_for, wait_terminal


@pytest.fixture(scope="module")
def coord(shared_coordinator: Coordinator) -> Coordinator:
    return shared_coordinator


@pytest.fixture(scope="module")
def runner(coord: Coordinator, tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentProc]:
    proc = AgentProc(coord, tmp_path_factory.mktemp("agent"), labels=("arch=arm64", "pool=cli")).start()
    try:
        proc.agent_id  # noqa: B018 - waits until it has registered
        yield proc
    finally:
        proc.stop()


def test_jobs_run_prints_output_and_exits_with_the_job_code(coord: Coordinator, runner: AgentProc,
                                                            tmp_path: Path) -> None:
    result = run_cli(tmp_path, coord, "jobs", "run", "--label", "arch=arm64", "--", "sh", "-c", "echo out; exit 7")
    assert result.stdout == "out\n"
    assert result.returncode == 7
    assert "FAILED" in result.stderr and "exit code 7" in result.stderr


def test_jobs_run_flags_become_the_job(coord: Coordinator, runner: AgentProc, tmp_path: Path) -> None:
    result = run_cli(tmp_path, coord, "jobs", "run", "--label", "pool=cli", "--env", "GREETING=hi there",
                     "--name", "flagged", "--timeout", "120", "--cpus", "0.5", "--memory", "256", "--",
                     'echo "$GREETING"')
    assert (result.returncode, result.stdout) == (0, "hi there\n")
    job_id = result.stderr.split()[1]
    job = json.loads(run_cli(tmp_path, coord, "jobs", "get", job_id, "--json").stdout)
    assert job["name"] == "flagged" and job["timeoutSeconds"] == 120
    assert job["labels"] == {"pool": "cli"} and job["env"] == {"GREETING": "hi there"}
    assert job["resources"]["cpus"] == 0.5 and job["resources"]["memoryMb"] == 256


def test_jobs_run_from_manifests_with_flags_over_them(coord: Coordinator, runner: AgentProc, tmp_path: Path) -> None:
    toml_manifest = tmp_path / "job.toml"
    toml_manifest.write_text('type = "COMMAND"\ncommand = "echo from-toml $X"\ntimeoutSeconds = 30\n'
                             '[labels]\narch = "arm64"\n[env]\nX = "1"\n')
    result = run_cli(tmp_path, coord, "jobs", "run", "-f", str(toml_manifest), "--env", "X=2")
    assert (result.returncode, result.stdout) == (0, "from-toml 2\n")

    json_manifest = tmp_path / "job.json"
    json_manifest.write_text(json.dumps({"type": "COMMAND", "command": "echo from-json", "name": "manifest"}))
    detached = run_cli(tmp_path, coord, "jobs", "run", "-f", str(json_manifest), "--detach")
    job_id = detached.stdout.strip()
    assert detached.returncode == 0 and job_id.startswith("job_") and "\n" not in job_id
    with coord.client() as http:
        job = wait_terminal(http, job_id)
    assert job["name"] == "manifest" and job["command"] == "echo from-json" and job["state"] == "SUCCEEDED"

    piped = run_cli(tmp_path, coord, "jobs", "run", "-f", "-", stdin=json.dumps({"command": "echo piped"}))
    assert (piped.returncode, piped.stdout) == (0, "piped\n")

    bad = tmp_path / "bad.toml"
    bad.write_text("command = [")
    assert_clean_error(run_cli(tmp_path, coord, "jobs", "run", "-f", str(bad)), code=2)
    assert "cannot read manifest" in run_cli(tmp_path, coord, "jobs", "run", "-f", str(bad)).stderr


def test_get_list_logs_json_and_tables(coord: Coordinator, runner: AgentProc, tmp_path: Path) -> None:
    job_id = run_cli(tmp_path, coord, "jobs", "run", "--detach", "--priority", "70", "--",
                     "echo one; echo two; echo three").stdout.strip()
    assert run_cli(tmp_path, coord, "jobs", "logs", "--follow", job_id).stdout == "one\ntwo\nthree\n"
    assert run_cli(tmp_path, coord, "jobs", "logs", job_id).stdout == "one\ntwo\nthree\n"
    assert run_cli(tmp_path, coord, "jobs", "logs", "--tail", "1", job_id).stdout == "three\n"

    got = json.loads(run_cli(tmp_path, coord, "--json", "jobs", "get", job_id).stdout)
    assert got["id"] == job_id and got["state"] == "SUCCEEDED" and got["exitCode"] == 0

    listed = json.loads(run_cli(tmp_path, coord, "jobs", "list", "--json").stdout)
    assert set(listed) == {"items", "nextCursor"} and job_id in [job["id"] for job in listed["items"]]
    only_failed = json.loads(run_cli(tmp_path, coord, "jobs", "list", "--state", "failed", "--json").stdout)
    assert job_id not in [job["id"] for job in only_failed["items"]]
    assert all(job["state"] == "FAILED" for job in only_failed["items"])

    table = run_cli(tmp_path, coord, "jobs", "list", "--since", "1h").stdout.splitlines()
    header = table[0]
    assert header.split() == ["ID", "NAME", "STATE", "EXIT", "REASON", "PRI", "TRIES", "AGENT", "CREATED", "COMMAND"]
    row = next(line for line in table if line.startswith(job_id))
    # Aligned: every column starts where its header does.
    for column in ("STATE", "EXIT", "PRI", "AGENT", "CREATED"):
        assert row[header.index(column) - 1] == " " and row[header.index(column)] != " "
    assert row[header.index("PRI"):].split()[0] == "70"  # `jobs run --priority 70`, shown by `jobs list`
    assert row.split()[2:4] == ["SUCCEEDED", "0"]
    assert "ago" in row or "just now" in row

    described = run_cli(tmp_path, coord, "jobs", "get", job_id).stdout
    assert "state:" in described and "SUCCEEDED" in described and runner.agent_id in described


def test_list_paging_prints_the_cursor(coord: Coordinator, runner: AgentProc, tmp_path: Path) -> None:
    for _ in range(2):
        run_cli(tmp_path, coord, "jobs", "run", "--detach", "--", "true")
    first = json.loads(run_cli(tmp_path, coord, "jobs", "list", "--limit", "1", "--json").stdout)
    assert len(first["items"]) == 1 and first["nextCursor"]
    table = run_cli(tmp_path, coord, "jobs", "list", "--limit", "1")
    assert f"--cursor {first['nextCursor']}" in table.stderr
    second = json.loads(run_cli(tmp_path, coord, "jobs", "list", "--limit", "1", "--cursor", first["nextCursor"],
                                "--json").stdout)
    assert second["items"][0]["id"] < first["items"][0]["id"]


def test_cancel_a_queued_job(coord: Coordinator, runner: AgentProc, tmp_path: Path) -> None:
    job_id = run_cli(tmp_path, coord, "jobs", "run", "-d", "--label", "nobody=has-this", "--", "true").stdout.strip()
    cancelled = json.loads(run_cli(tmp_path, coord, "jobs", "cancel", job_id, "--json").stdout)
    assert cancelled["state"] == "CANCELLED"
    again = run_cli(tmp_path, coord, "jobs", "cancel", job_id)
    assert again.returncode == 0 and again.stdout.split() == [job_id, "CANCELLED"]


def test_json_run_keeps_stdout_for_the_job(coord: Coordinator, runner: AgentProc, tmp_path: Path) -> None:
    result = run_cli(tmp_path, coord, "--json", "jobs", "run", "--", "echo to-stderr; exit 3")
    assert result.returncode == 3
    job = json.loads(result.stdout)
    assert job["state"] == "FAILED" and job["exitCode"] == 3
    assert "to-stderr" in result.stderr


def test_timed_out_job_exits_124(coord: Coordinator, runner: AgentProc, tmp_path: Path) -> None:
    result = run_cli(tmp_path, coord, "jobs", "run", "--timeout", "1", "--", "sleep 60")
    assert result.returncode == 124
    assert "TIMED_OUT" in result.stderr


def test_job_killed_by_a_signal_exits_128_plus_n(coord: Coordinator, runner: AgentProc, tmp_path: Path) -> None:
    result = run_cli(tmp_path, coord, "--json", "jobs", "run", "--", "kill -KILL $$")
    assert result.returncode == 137, result.stderr
    job = json.loads(result.stdout)
    assert (job["state"], job["exitCode"], job["signal"]) == ("FAILED", 137, "KILL")


def test_reserved_env_is_refused_naming_it(coord: Coordinator, tmp_path: Path) -> None:
    result = run_cli(tmp_path, coord, "jobs", "run", "--env", "CUDA_VISIBLE_DEVICES=0", "--", "true")
    assert_clean_error(result)
    assert "reserved_env" in result.stderr and "env.CUDA_VISIBLE_DEVICES" in result.stderr
    assert "HTTP 400" in result.stderr


def test_queued_jobs_say_why_in_get_list_and_run_without_a_terminal(coord: Coordinator, tmp_path: Path) -> None:
    selector = f"zone=nowhere-{time.monotonic_ns()}"
    job_id = run_cli(tmp_path, coord, "jobs", "run", "-d", "--label", selector, "--", "true").stdout.strip()
    shown = run_cli(tmp_path, coord, "jobs", "get", job_id)
    assert re.search(r"^reason:\s+no_matching_agent$", shown.stdout, re.M), shown.stdout
    listed = run_cli(tmp_path, coord, "jobs", "list", "--state", "QUEUED", "--label", selector)
    assert listed.stdout.splitlines()[0].split()[:5] == ["ID", "NAME", "STATE", "EXIT", "REASON"]
    assert "no_matching_agent" in listed.stdout.splitlines()[1]

    # `jobs run` with stderr in a pipe: one plain line saying why, no status line redrawn.
    run = subprocess.Popen(cli_command("jobs", "run", "--label", selector, "--", "true"), stdin=subprocess.DEVNULL,
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=cli_env(tmp_path, coord))
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(run.stderr.readline, b"")), daemon=True)  # type: ignore[union-attr]
    reader.start()
    try:
        wait_for(lambda: any(b"no_matching_agent" in line for line in lines), message="the reason on stderr")
        run.send_signal(signal.SIGTERM)  # no one to ask: the job is cancelled
        assert run.wait(timeout=60) == 130
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
        reader.join(timeout=10)
        assert run.stderr is not None
        run.stderr.close()
    said = [line.decode() for line in lines if b"no_matching_agent" in line]
    assert said == [f"job {said[0].split()[1]} queued: no_matching_agent: no agent matches labels {selector} "
                    "with room for its resources\n"]
    assert not any(b"\r" in line for line in lines)


def test_idempotency_key_returns_the_first_job(coord: Coordinator, runner: AgentProc, tmp_path: Path) -> None:
    key = f"k-{time.monotonic_ns()}"
    first = run_cli(tmp_path, coord, "jobs", "run", "-d", "--idempotency-key", key, "--", "true").stdout.strip()
    second = run_cli(tmp_path, coord, "jobs", "run", "-d", "--idempotency-key", key, "--", "true").stdout.strip()
    assert first == second and first.startswith("job_")


def test_wrong_token_is_refused_cleanly(coord: Coordinator, tmp_path: Path) -> None:
    result = run_cli(tmp_path, coord, "--token", "tcp_pat_wrong", "jobs", "list")
    assert_clean_error(result)
    assert "invalid_token" in result.stderr and "HTTP 401" in result.stderr
    assert "hint: log in with `tanvrit-compute auth login --url URL --token tcp_pat_...`" in result.stderr


def test_a_url_without_a_scheme_is_a_usage_error_with_the_fix(tmp_path: Path) -> None:
    result = run_cli(tmp_path, None, "--url", "127.0.0.1:8470", "--token", "tcp_pat_x", "jobs", "list")
    assert_clean_error(result, code=2)
    assert ("--url 127.0.0.1:8470 is not an http:// or https:// URL: did you mean http://127.0.0.1:8470?"
            in result.stderr)
    assert "cannot reach" not in result.stderr


def test_an_unknown_state_is_refused_before_asking(tmp_path: Path) -> None:
    # No coordinator at all: the CLI itself refuses, naming the states there are.
    result = run_cli(tmp_path, None, "--url", "http://127.0.0.1:9", "--token", "tcp_pat_x", "jobs", "list",
                     "--state", "BOGUS")
    assert_clean_error(result, code=2)
    assert "'BOGUS' is not one of 'QUEUED', 'ASSIGNED', 'RUNNING', 'SUCCEEDED'" in result.stderr
    assert "cannot reach" not in result.stderr


def test_unreachable_coordinator_is_a_clear_message(tmp_path: Path) -> None:
    started = time.monotonic()
    result = run_cli(tmp_path, None, "--url", "http://127.0.0.1:9", "--token", "tcp_pat_x", "jobs", "list",
                     timeout=30)
    assert_clean_error(result, code=2)
    assert "cannot reach the coordinator at http://127.0.0.1:9" in result.stderr
    assert time.monotonic() - started < 30


def test_api_errors_are_printed_with_code_and_field(coord: Coordinator, tmp_path: Path) -> None:
    result = run_cli(tmp_path, coord, "jobs", "run", "--timeout", "0", "--", "true")
    assert_clean_error(result)
    assert "invalid_value" in result.stderr and "timeoutSeconds" in result.stderr and "HTTP 422" in result.stderr
    missing = run_cli(tmp_path, coord, "jobs", "get", "job_00000000000000000000000000")
    assert_clean_error(missing)
    assert "job_not_found" in missing.stderr and "HTTP 404" in missing.stderr


def test_without_any_token_it_says_how_to_log_in(tmp_path: Path) -> None:
    result = run_cli(tmp_path, None, "jobs", "list")
    assert_clean_error(result)
    assert "not logged in" in result.stderr and "auth login" in result.stderr


def test_usage_errors_exit_2(coord: Coordinator, tmp_path: Path) -> None:
    assert_clean_error(run_cli(tmp_path, coord, "jobs", "run"), code=2)
    bad_since = run_cli(tmp_path, coord, "jobs", "list", "--since", "yesterday")
    assert_clean_error(bad_since, code=2)
    assert "duration like 30m" in bad_since.stderr
    assert_clean_error(run_cli(tmp_path, coord, "jobs", "run", "--label", "novalue", "--", "true"), code=2)
