"""The command groups whose endpoints other branches are building (workspaces, members, audit,
billing, webhooks, tokens), plus help, version and shell completion.

This coordinator does not serve those endpoints yet, so each command is checked for what it can
show now: the API's 404 error envelope, printed as a message with its code, exit status 1, no
traceback. The end-to-end tests for them are listed in the branch report.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.cli_harness import assert_clean_error, cli_command, cli_env, run_cli
from tests.procs import Coordinator

WS = "ws_00000000000000000000000001"
PENDING = [
    ("workspaces", "list"),
    ("workspaces", "create", "research", "--region", "eu-west"),
    ("workspaces", "update", WS, "--name", "renamed", "--plan", "team"),
    ("members", "invite", "ada@example.com", "--role", "admin"),
    ("members", "list"),
    ("members", "set-role", "usr_00000000000000000000000001", "admin"),
    ("members", "remove", "usr_00000000000000000000000001"),
    ("audit", "--since", "1h", "--action", "jobs.create", "--actor", "usr_x"),
    ("audit", "--jsonl", "--since", "7d"),
    ("billing", "usage", "--start", "30d"),
    ("billing", "invoices"),
    ("billing", "limits"),
    ("billing", "limits", "--soft", "100", "--hard", "none"),
    ("webhooks", "create", "--url", "http://127.0.0.1:1/hook", "--event", "job.terminal"),
    ("webhooks", "list"),
    ("webhooks", "rm", "whk_00000000000000000000000001"),
    ("webhooks", "rotate-secret", "whk_00000000000000000000000001"),
    ("webhooks", "deliveries", "whk_00000000000000000000000001"),
    ("tokens", "create", "--name", "ci", "--expires-in", "30"),
    ("tokens", "list"),
    ("tokens", "revoke", "pat_00000000000000000000000001"),
]


@pytest.fixture(scope="module")
def coord(shared_coordinator: Coordinator) -> Coordinator:
    return shared_coordinator


@pytest.mark.parametrize("args", PENDING, ids=[" ".join(a[:2]) + ("" if i == 0 else f"#{i}")
                                               for i, a in enumerate(PENDING)])
def test_missing_endpoint_prints_the_api_error(coord: Coordinator, tmp_path: Path, args: tuple[str, ...]) -> None:
    # The workspace is the real one so that members/audit reach their own path, not a lookup.
    result = run_cli(tmp_path, coord, "--workspace", coord.init["workspaceId"], *args)
    assert_clean_error(result)
    assert result.stdout == ""
    assert "(not_found, HTTP 404" in result.stderr and "request req_" in result.stderr


def test_members_without_a_workspace_looks_it_up(coord: Coordinator, tmp_path: Path) -> None:
    result = run_cli(tmp_path, coord, "members", "list")  # GET /v0/workspaces, absent here
    assert_clean_error(result)
    assert "HTTP 404" in result.stderr


def test_bad_arguments_are_refused_before_any_request(tmp_path: Path) -> None:
    for args in (("billing", "limits", "--soft", "lots"), ("workspaces", "update", WS),
                 ("members", "invite", "a@b.c", "--role", "king"), ("audit", "--since", "last tuesday")):
        assert_clean_error(run_cli(tmp_path, None, "--token", "tcp_pat_x", "--url", "http://127.0.0.1:9", *args),
                           code=2)


def test_help_lists_every_group(tmp_path: Path) -> None:
    result = run_cli(tmp_path, None, "--help")
    assert result.returncode == 0
    for group in ("jobs", "agents", "auth", "workspaces", "members", "tokens", "audit", "billing", "webhooks",
                  "local", "completion"):
        assert f"\n  {group} " in result.stdout
    for group, sub in (("jobs", "run"), ("agents", "rm"), ("auth", "print-token"), ("webhooks", "rotate-secret"),
                       ("members", "set-role"), ("tokens", "revoke"), ("billing", "limits")):
        assert sub in run_cli(tmp_path, None, group, "--help").stdout


def test_version(tmp_path: Path) -> None:
    result = run_cli(tmp_path, None, "--version")
    assert (result.returncode, result.stdout.strip()) == (0, "tanvrit-compute, version 0.1.0")


@pytest.mark.parametrize("shell", ["bash", "zsh"])
def test_completion_script(tmp_path: Path, shell: str) -> None:
    result = run_cli(tmp_path, None, "completion", shell)
    assert result.returncode == 0 and len(result.stdout) > 200
    assert "tanvrit-compute" in result.stdout and "_TANVRIT_COMPUTE_COMPLETE" in result.stdout


def test_completion_completes_commands_and_job_ids(coord: Coordinator, tmp_path: Path) -> None:
    def complete(words: str) -> list[str]:
        env = {**cli_env(tmp_path, coord), "_TANVRIT_COMPUTE_COMPLETE": "bash_complete", "COMP_WORDS": words,
               "COMP_CWORD": str(len(words.split()) - (0 if words.endswith(" ") else 1))}
        out = subprocess.run(cli_command(), capture_output=True, text=True, env=env, timeout=30, check=True).stdout
        return [line.split(",", 1)[1] for line in out.splitlines()]

    assert complete("tanvrit-compute jo") == ["jobs"]
    assert set(complete("tanvrit-compute jobs ")) >= {"run", "list", "get", "logs", "cancel"}
    with coord.client() as http:
        job_id = http.post("/v0/jobs", json={"type": "COMMAND", "command": "true",
                                             "labels": {"nobody": "completion"}}).json()["id"]
    assert job_id in complete("tanvrit-compute jobs get job_")
