"""Credentials and profiles with the real binary against a real coordinator: ``auth login``,
``status``, ``logout``, ``print-token``, ``switch``, ``workspaces use``, the config file's mode,
and which setting wins (flags over environment over the profile)."""

from __future__ import annotations

import json
import subprocess
import tomllib
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
import tomli_w

from tests.cli_harness import assert_clean_error, cli_command, cli_env, run_cli
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

    # A PAT profile: print-token exchanges the PAT for a short-lived OAuth access token.
    printed = run_cli(tmp_path, None, "auth", "print-token")
    assert (printed.returncode, printed.stderr) == (0, "")
    access = printed.stdout.strip()
    assert access.startswith("tcp_oat_") and printed.stdout == access + "\n"
    with coord.client(access) as http:
        assert http.get("/v0/jobs").status_code == 200

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
    assert run_cli(tmp_path, None, "auth", "print-token").stdout.startswith("tcp_oat_")
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


def test_print_token_with_cached_and_refused_oauth_credentials(coord: Coordinator, tmp_path: Path) -> None:
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
    # Under a minute left: it asks POST /v0/oauth/token, which refuses an unknown refresh token;
    # the user gets the API's answer, and nothing on stdout.
    refresh = run_cli(tmp_path, None, "--profile", "expiring", "auth", "print-token")
    assert_clean_error(refresh)
    assert refresh.stdout == "" and "(invalid_grant, HTTP 400" in refresh.stderr
    assert "tcp_oat_old" in _config_file(tmp_path).read_text()  # nothing overwritten on failure


def _invite(coord: Coordinator, email: str, role: str = "member") -> tuple[str, str]:
    """A new member of the coordinator's first workspace: (user id, one-time code), via the CLI."""
    home = coord.data_dir.parent / f"inviter-{email}"
    invited = run_cli(home, coord, "--workspace", coord.init["workspaceId"], "members", "invite", email,
                      "--role", role, "--json")
    assert invited.returncode == 0, invited.stderr
    body = json.loads(invited.stdout)
    return body["member"]["userId"], body["invitation"]["code"]


def test_login_with_an_invitation_code(coord: Coordinator, tmp_path: Path) -> None:
    user, code = _invite(coord, "grace@example.com")
    login = run_cli(tmp_path, None, "auth", "login", "--invitation", code, "--url", coord.url)
    assert login.returncode == 0, login.stderr
    assert user in login.stdout and coord.init["workspaceId"] in login.stdout
    config = _config_file(tmp_path)
    assert config.stat().st_mode & 0o777 == 0o600
    stored = tomllib.loads(config.read_text())["profiles"]["default"]
    assert stored["refresh_token"].startswith("tcp_ort_") and stored["workspace"] == coord.init["workspaceId"]
    assert "token" not in stored

    printed = run_cli(tmp_path, None, "auth", "print-token")
    assert printed.returncode == 0 and printed.stderr == ""
    access = printed.stdout.strip()
    assert access.startswith("tcp_oat_")
    with coord.client(access) as http:
        me = http.get(f"/v0/workspaces/{coord.init['workspaceId']}")
    assert me.status_code == 200 and me.json()["role"] == "member"
    # The profile works for every command, as the invited member.
    members = run_cli(tmp_path, None, "members", "list", "--json")
    assert members.returncode == 0, members.stderr
    assert {"userId": user, "status": "active"}.items() <= next(
        m for m in json.loads(members.stdout)["items"] if m["userId"] == user).items()
    status = json.loads(run_cli(tmp_path, None, "auth", "status", "--json").stdout)
    assert (status["valid"], status["tokenSource"]) == (True, "oauth")

    # The code is spent.
    again = run_cli(tmp_path / "again", None, "auth", "login", "--invitation", code, "--url", coord.url)
    assert_clean_error(again)
    assert "invalid_invitation" in again.stderr
    assert not _config_file(tmp_path / "again").exists()


def _age_cached_access_token(home: Path) -> None:
    """What 15 minutes would do to the CLI, at once: its cached access token expired a second
    ago. (Tokens live their real 15 minutes in these tests, so no test races a short lifetime
    on a loaded machine; the coordinator's own expiry is tested with an injected clock. The
    coordinator's database is not written from here: a second process's connection closing
    on a live WAL database is not something to rely on.)"""
    document = tomllib.loads(_config_file(home).read_text())
    past = datetime.now(UTC) - timedelta(seconds=1)
    document["profiles"]["default"]["access_token_expires_at"] = past.isoformat().replace("+00:00", "Z")
    _config_file(home).write_bytes(tomli_w.dumps(document).encode())


def _logged_in_member(coord: Coordinator, home: Path, email: str) -> dict[str, str]:
    _, code = _invite(coord, email)
    login = run_cli(home, None, "auth", "login", "--invitation", code, "--url", coord.url)
    assert login.returncode == 0, login.stderr
    profile: dict[str, str] = tomllib.loads(_config_file(home).read_text())["profiles"]["default"]
    return profile


def test_print_token_refreshes_an_expired_access_token(coord: Coordinator, tmp_path: Path) -> None:
    home = tmp_path / "home"
    first = _logged_in_member(coord, home, "linus-refresh@example.com")
    expires_at = datetime.fromisoformat(first["access_token_expires_at"].replace("Z", "+00:00"))
    # The spec's 15 minutes (less what this test took so far: generous for a loaded machine).
    assert timedelta(minutes=10) < expires_at - datetime.now(UTC) <= timedelta(minutes=15)
    with coord.client(first["access_token"]) as http:
        assert http.get("/v0/jobs").status_code == 200
    # A cached token with minutes left is used as it is...
    assert run_cli(home, None, "auth", "print-token").stdout.strip() == first["access_token"]
    # ...one past its expiry is refreshed.
    _age_cached_access_token(home)

    printed = run_cli(home, None, "auth", "print-token")
    assert printed.returncode == 0, printed.stderr
    second = printed.stdout.strip()
    assert second.startswith("tcp_oat_") and second != first["access_token"]
    with coord.client(second) as http:
        assert http.get("/v0/jobs").status_code == 200
    stored = tomllib.loads(_config_file(home).read_text())["profiles"]["default"]
    assert stored["access_token"] == second
    assert stored["refresh_token"].startswith("tcp_ort_") and stored["refresh_token"] != first["refresh_token"]
    assert _config_file(home).stat().st_mode & 0o777 == 0o600
    # The old refresh token is dead: rotation, not a second copy.
    with httpx.Client(base_url=coord.url, timeout=30) as http:
        reused = http.post("/v0/oauth/token", data={"grant_type": "refresh_token",
                                                   "refresh_token": first["refresh_token"]})
    assert reused.status_code == 400 and reused.json()["error"]["code"] == "invalid_grant"


def test_concurrent_refreshes_share_one_rotation(coord: Coordinator, tmp_path: Path) -> None:
    """Several CLI processes refreshing one profile at once must not present the same refresh
    token twice (the coordinator would take that for theft and revoke the family)."""
    home = tmp_path / "home"
    first = _logged_in_member(coord, home, "grace-concurrent@example.com")
    _age_cached_access_token(home)
    env = cli_env(home)
    runs = [subprocess.Popen(cli_command("auth", "print-token"), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             stdin=subprocess.DEVNULL, env=env, text=True) for _ in range(4)]
    results = [(*run.communicate(timeout=60), run.returncode) for run in runs]
    assert [code for _, _, code in results] == [0] * 4, results
    tokens = {out.strip() for out, _, _ in results}
    assert first["access_token"] not in tokens
    for token in tokens:
        with coord.client(token) as http:
            assert http.get("/v0/jobs").status_code == 200  # the family was not revoked
    stored = tomllib.loads(_config_file(home).read_text())["profiles"]["default"]
    assert stored["access_token"] in tokens


def test_print_token_with_a_pat_from_the_environment(coord: Coordinator, tmp_path: Path) -> None:
    printed = run_cli(tmp_path, coord, "auth", "print-token")
    assert printed.returncode == 0 and printed.stderr == ""
    access = printed.stdout.strip()
    assert access.startswith("tcp_oat_") and coord.token not in printed.stdout
    with coord.client(access) as http:
        assert http.get("/v0/jobs").status_code == 200
    refused = run_cli(tmp_path, coord, "auth", "print-token", token="tcp_pat_wrong")
    assert_clean_error(refused)
    assert refused.stdout == "" and "invalid_client" in refused.stderr


def test_login_with_client_credentials(coord: Coordinator, tmp_path: Path) -> None:
    with coord.client() as http:
        pat = http.post("/v0/tokens", json={"name": "ci-client"}).json()
    home = tmp_path / "home"
    login = run_cli(home, None, "auth", "login", "--url", coord.url, "--client-id", pat["id"],
                    "--client-secret", pat["token"])
    assert login.returncode == 0, login.stderr
    stored = tomllib.loads(_config_file(home).read_text())["profiles"]["default"]
    assert stored["client_id"] == pat["id"]
    printed = run_cli(home, None, "auth", "print-token")
    assert printed.returncode == 0, printed.stderr
    access = printed.stdout.strip()
    assert access.startswith("tcp_oat_")
    with coord.client(access) as http:
        assert http.get("/v0/jobs").status_code == 200
    wrong = run_cli(tmp_path / "other", None, "auth", "login", "--url", coord.url, "--client-id", pat["id"],
                    "--client-secret", "tcp_pat_wrong")
    assert_clean_error(wrong)
    assert "invalid_client" in wrong.stderr
    assert not _config_file(tmp_path / "other").exists()
