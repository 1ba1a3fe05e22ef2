"""Credentials and profiles with the real binary against a real coordinator: ``auth login``,
``status``, ``logout``, ``print-token``, ``switch``, ``workspaces use``, the config file's mode,
and which setting wins (flags over environment over the profile)."""

from __future__ import annotations

import json
import tomllib
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import tomli_w

from tests.cli_harness import assert_clean_error, run_cli
from tests.procs import Coordinator


@pytest.fixture(scope="module")
def coord(shared_coordinator: Coordinator) -> Coordinator:
    return shared_coordinator


def _config_file(home: Path) -> Path:
    return home / "tanvrit-compute" / "config.toml"


def _write_config(home: Path, document: dict[str, object]) -> None:
    path = _config_file(home)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(tomli_w.dumps(document).encode())


def test_login_stores_a_checked_token_privately(coord: Coordinator, tmp_path: Path) -> None:
    result = run_cli(tmp_path, None, "auth", "login", "--token", coord.token, "--url", coord.url)
    assert result.returncode == 0, result.stderr
    assert "Logged in" in result.stdout
    config = _config_file(tmp_path)
    assert config.stat().st_mode & 0o777 == 0o600
    assert config.parent.stat().st_mode & 0o777 == 0o700
    stored = tomllib.loads(config.read_text())
    assert stored == {"default_profile": "default", "profiles": {"default": {"token": coord.token, "url": coord.url}}}

    # No flags, no environment: the profile is enough.
    listed = run_cli(tmp_path, None, "jobs", "list", "--json")
    assert listed.returncode == 0 and "items" in json.loads(listed.stdout)

    printed = run_cli(tmp_path, None, "auth", "print-token")
    assert (printed.returncode, printed.stdout, printed.stderr) == (0, coord.token + "\n", "")

    status = run_cli(tmp_path, None, "auth", "status")
    assert status.returncode == 0
    assert "valid" in status.stdout and coord.url in status.stdout and "(from the profile)" in status.stdout
    assert coord.token not in status.stdout and coord.token[:12] in status.stdout
    described = json.loads(run_cli(tmp_path, None, "auth", "status", "--json").stdout)
    assert described["profile"] == "default" and described["valid"] is True and described["urlSource"] == "profile"


def test_login_refuses_a_wrong_token_and_stores_nothing(coord: Coordinator, tmp_path: Path) -> None:
    result = run_cli(tmp_path, None, "auth", "login", "--token", "tcp_pat_wrong", "--url", coord.url)
    assert_clean_error(result)
    assert "invalid_token" in result.stderr
    assert not _config_file(tmp_path).exists()

    unreachable = run_cli(tmp_path, None, "auth", "login", "--token", coord.token, "--url", "http://127.0.0.1:9")
    assert_clean_error(unreachable, code=2)
    assert "cannot reach the coordinator" in unreachable.stderr


def test_login_reads_the_token_from_stdin_into_a_named_profile(coord: Coordinator, tmp_path: Path) -> None:
    result = run_cli(tmp_path, None, "--profile", "lab", "auth", "login", "--url", coord.url,
                     stdin=coord.token + "\n")
    assert result.returncode == 0, result.stderr
    stored = tomllib.loads(_config_file(tmp_path).read_text())
    assert stored["default_profile"] == "lab" and stored["profiles"]["lab"]["token"] == coord.token

    # In CI the token is often already in the environment: login stores that one.
    ci = run_cli(tmp_path, None, "--profile", "ci", "auth", "login", "--url", coord.url,
                 env={"TANVRIT_COMPUTE_TOKEN": coord.token})
    assert ci.returncode == 0, ci.stderr
    assert tomllib.loads(_config_file(tmp_path).read_text())["profiles"]["ci"]["token"] == coord.token


def test_precedence_flags_over_environment_over_profile(coord: Coordinator, tmp_path: Path) -> None:
    workspace = coord.init["workspaceId"]
    _write_config(tmp_path, {"default_profile": "good", "profiles": {
        "good": {"url": coord.url, "token": coord.token},
        "bad": {"url": coord.url, "token": "tcp_pat_wrong"},
        "nowhere": {"url": "http://127.0.0.1:9", "token": coord.token},
        "elsewhere": {"url": coord.url, "token": coord.token, "workspace": "ws_00000000000000000000000000"},
    }})

    def jobs_list(*args: str, **env: str) -> int:
        return run_cli(tmp_path, None, *args, "jobs", "list", env=env).returncode

    assert jobs_list() == 0                                                        # the default profile
    assert jobs_list("--profile", "bad") == 1                                      # a chosen profile
    assert jobs_list(TANVRIT_COMPUTE_PROFILE="bad") == 1                           # chosen by environment
    assert jobs_list("--profile", "good", TANVRIT_COMPUTE_PROFILE="bad") == 0      # flag over environment
    assert jobs_list("--profile", "bad", TANVRIT_COMPUTE_TOKEN=coord.token) == 0   # env token over profile
    assert jobs_list("--token", "tcp_pat_wrong", TANVRIT_COMPUTE_TOKEN=coord.token) == 1  # flag over env
    assert jobs_list("--profile", "nowhere") == 2                                  # profile URL unreachable
    assert jobs_list("--profile", "nowhere", TANVRIT_COMPUTE_URL=coord.url) == 0   # env URL over profile
    assert jobs_list("--url", "http://127.0.0.1:9", TANVRIT_COMPUTE_URL=coord.url) == 2  # flag URL over env
    assert jobs_list("--profile", "elsewhere") == 1                                # profile's unknown workspace
    assert jobs_list("--profile", "elsewhere", TANVRIT_COMPUTE_WORKSPACE=workspace) == 0
    assert jobs_list("--workspace", "ws_00000000000000000000000000", TANVRIT_COMPUTE_WORKSPACE=workspace) == 1

    status = json.loads(run_cli(tmp_path, None, "--profile", "bad", "auth", "status", "--json",
                                env={"TANVRIT_COMPUTE_URL": coord.url}).stdout)
    assert (status["profile"], status["urlSource"], status["tokenSource"], status["valid"]) == (
        "bad", "env", "profile", False)
    refused = run_cli(tmp_path, None, "--profile", "bad", "auth", "status")
    assert refused.returncode == 1 and "refused" in refused.stdout and "invalid_token" in refused.stdout


def test_logout_switch_and_not_logged_in(coord: Coordinator, tmp_path: Path) -> None:
    _write_config(tmp_path, {"default_profile": "one", "profiles": {
        "one": {"url": coord.url, "token": coord.token}, "two": {"url": coord.url, "token": coord.token}}})
    out = run_cli(tmp_path, None, "auth", "logout")
    assert out.returncode == 0 and "one" in out.stdout
    stored = tomllib.loads(_config_file(tmp_path).read_text())
    assert stored["profiles"]["one"] == {"url": coord.url} and stored["profiles"]["two"]["token"] == coord.token

    not_logged_in = run_cli(tmp_path, None, "auth", "print-token")
    assert_clean_error(not_logged_in)
    assert not_logged_in.stdout == "" and "not logged in" in not_logged_in.stderr
    status = run_cli(tmp_path, None, "auth", "status")
    assert status.returncode == 1 and "not logged in" in status.stdout

    switched = run_cli(tmp_path, None, "auth", "switch", "two")
    assert switched.returncode == 0
    assert run_cli(tmp_path, None, "auth", "print-token").stdout == coord.token + "\n"
    unknown = run_cli(tmp_path, None, "auth", "switch", "three")
    assert_clean_error(unknown)
    assert "no profile 'three'" in unknown.stderr and "one, two" in unknown.stderr


def test_workspaces_use_checks_and_stores(coord: Coordinator, tmp_path: Path) -> None:
    run_cli(tmp_path, None, "auth", "login", "--token", coord.token, "--url", coord.url)
    workspace = coord.init["workspaceId"]
    used = run_cli(tmp_path, None, "workspaces", "use", workspace)
    assert used.returncode == 0 and workspace in used.stdout
    assert tomllib.loads(_config_file(tmp_path).read_text())["profiles"]["default"]["workspace"] == workspace
    assert run_cli(tmp_path, None, "jobs", "list").returncode == 0

    wrong = run_cli(tmp_path, None, "workspaces", "use", "ws_00000000000000000000000000")
    assert_clean_error(wrong)
    assert "workspace_not_found" in wrong.stderr
    assert tomllib.loads(_config_file(tmp_path).read_text())["profiles"]["default"]["workspace"] == workspace


def test_a_broken_config_file_is_a_clear_error(tmp_path: Path) -> None:
    path = _config_file(tmp_path)
    path.parent.mkdir(parents=True)
    path.write_text("profiles = [")
    result = run_cli(tmp_path, None, "jobs", "list")
    assert_clean_error(result)
    assert str(path) in result.stderr


def test_print_token_with_oauth_credentials(coord: Coordinator, tmp_path: Path) -> None:
    fresh = (datetime.now(UTC) + timedelta(minutes=10)).isoformat().replace("+00:00", "Z")
    stale = (datetime.now(UTC) + timedelta(seconds=30)).isoformat().replace("+00:00", "Z")
    _write_config(tmp_path, {"default_profile": "sso", "profiles": {
        "sso": {"url": "http://127.0.0.1:9", "refresh_token": "tcp_ort_x", "access_token": "tcp_oat_cached",
                "access_token_expires_at": fresh},
        "expiring": {"url": coord.url, "refresh_token": "tcp_ort_x", "access_token": "tcp_oat_old",
                     "access_token_expires_at": stale},
    }})
    # A cached access token with minutes left is printed without asking anyone (the URL is dead).
    cached = run_cli(tmp_path, None, "auth", "print-token")
    assert (cached.returncode, cached.stdout, cached.stderr) == (0, "tcp_oat_cached\n", "")
    # Under a minute left: it asks POST /v0/oauth/token, which this coordinator does not serve yet,
    # so the user gets the API's answer, and nothing on stdout.
    refresh = run_cli(tmp_path, None, "--profile", "expiring", "auth", "print-token")
    assert_clean_error(refresh)
    assert refresh.stdout == "" and "HTTP 404" in refresh.stderr
    assert "tcp_oat_old" in _config_file(tmp_path).read_text()  # nothing overwritten on failure
