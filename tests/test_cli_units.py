"""The CLI's pure decisions: which setting wins, when an OAuth access token is refreshed and
what is stored afterwards, times such as ``2h``, relative times, the config file's format.

The OAuth exchange runs over an injected httpx transport that answers as RFC 6749 (and our
spec) say ``POST /v0/oauth/token`` does; the coordinator's endpoint is being built on another
branch, and an end-to-end test belongs with it.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import parse_qs

import httpx
import pytest

from cli import local, oauth
from cli.config import Config, ConfigFileError, load_config, resolve, save_config
from cli.jobs import exit_code_for
from cli.options import parse_moment
from cli.output import relative_time
from common.clock import to_rfc3339
from common.errors import ApiError

NOW = datetime(2026, 4, 26, 9, 0, tzinfo=UTC)


def test_resolve_prefers_flags_then_environment_then_profile() -> None:
    config = Config(default_profile="p", profiles={"p": {"url": "http://profile", "token": "t-profile",
                                                         "workspace": "ws_p"},
                                                   "q": {"url": "http://q"}})
    everything = resolve({"url": "http://flag", "token": "t-flag", "workspace": "ws_f"},
                         {"TANVRIT_COMPUTE_URL": "http://env", "TANVRIT_COMPUTE_TOKEN": "t-env"}, config)
    assert (everything.url.value, everything.token.value, everything.workspace.value) == ("http://flag", "t-flag",
                                                                                          "ws_f")
    assert everything.url.source == "flag"
    env = resolve({}, {"TANVRIT_COMPUTE_URL": "http://env", "TANVRIT_COMPUTE_TOKEN": "t-env"}, config)
    assert (env.url.value, env.url.source, env.token.value, env.workspace.value) == ("http://env", "env", "t-env",
                                                                                     "ws_p")
    profile = resolve({}, {}, config)
    assert (profile.profile_name, profile.url.value, profile.token.source) == ("p", "http://profile", "profile")
    chosen = resolve({"profile": "q"}, {"TANVRIT_COMPUTE_PROFILE": "p"}, config)
    assert (chosen.profile_name, chosen.url.value, chosen.token.value) == ("q", "http://q", None)
    by_env = resolve({}, {"TANVRIT_COMPUTE_PROFILE": "q"}, config)
    assert by_env.profile_name == "q"
    empty = resolve({}, {}, Config())
    assert (empty.profile_name, empty.url.value, empty.url.source) == ("default", "http://127.0.0.1:8470", "default")


def test_config_round_trip_is_private_and_keeps_unknown_keys(tmp_path: Path) -> None:
    path = tmp_path / "tanvrit-compute" / "config.toml"
    path.parent.mkdir()
    path.write_text('future_option = 3\ndefault_profile = "a"\n[profiles.a]\nurl = "http://a"\nnew_key = true\n')
    path.chmod(0o644)
    config = load_config(path)
    config.profile("b")["token"] = "secret"
    save_config(path, config)
    assert path.stat().st_mode & 0o777 == 0o600
    again = load_config(path)
    assert again.extra == {"future_option": 3}
    assert again.profiles == {"a": {"url": "http://a", "new_key": True}, "b": {"token": "secret"}}
    assert list(path.parent.iterdir()) == [path]  # no temporary file left behind
    assert load_config(tmp_path / "absent.toml") == Config()
    path.write_text("profiles = 3")
    with pytest.raises(ConfigFileError, match="must be tables"):
        load_config(path)


class TokenEndpoint:
    """Answers ``POST /v0/oauth/token`` as RFC 6749 describes, recording the grants it got."""

    def __init__(self, lifetime: int = 900, rotate: bool = True, refuse: str | None = None) -> None:
        self.grants: list[dict[str, list[str]]] = []
        self.lifetime = lifetime
        self.rotate = rotate
        self.refuse = refuse

    def __call__(self, request: httpx.Request) -> httpx.Response:
        assert (request.method, request.url.path) == ("POST", "/v0/oauth/token")
        assert request.headers["content-type"] == "application/x-www-form-urlencoded"
        self.grants.append(parse_qs(request.content.decode()))
        if self.refuse == "envelope":
            return httpx.Response(401, json={"error": {"code": "invalid_grant", "message": "refresh token revoked",
                                                       "field": None, "requestId": "req_1"}})
        if self.refuse == "rfc":
            return httpx.Response(400, json={"error": "invalid_grant", "error_description": "expired"})
        body = {"access_token": f"tcp_oat_{len(self.grants)}", "token_type": "Bearer", "expires_in": self.lifetime}
        if self.rotate:
            body["refresh_token"] = f"tcp_ort_{len(self.grants)}"
        return httpx.Response(200, json=body)


def _http(endpoint: TokenEndpoint) -> httpx.Client:
    return httpx.Client(base_url="http://coordinator", transport=httpx.MockTransport(endpoint))


def test_access_token_is_fetched_cached_and_refreshed_before_expiry() -> None:
    endpoint = TokenEndpoint()
    profile: dict[str, str] = {"refresh_token": "tcp_ort_0"}
    with _http(endpoint) as http:
        token, updates = oauth.access_token(profile, http, NOW)
        assert token == "tcp_oat_1"
        expires = to_rfc3339(NOW + timedelta(minutes=15))
        assert updates == {"access_token": "tcp_oat_1", "access_token_expires_at": expires,
                           "access_token_issued_at": to_rfc3339(NOW), "refresh_token": "tcp_ort_1"}
        assert endpoint.grants == [{"grant_type": ["refresh_token"], "refresh_token": ["tcp_ort_0"]}]
        profile.update(updates)

        # Still 61 s of life: the cached token, no request.
        later = NOW + timedelta(minutes=15) - timedelta(seconds=61)
        assert oauth.access_token(profile, http, later) == ("tcp_oat_1", {})
        assert len(endpoint.grants) == 1

        # Under a minute left: refreshed, with the rotated refresh token.
        token, updates = oauth.access_token(profile, http, later + timedelta(seconds=2))
        assert token == "tcp_oat_2" and updates["refresh_token"] == "tcp_ort_2"
        assert endpoint.grants[-1]["refresh_token"] == ["tcp_ort_1"]


def test_short_lived_tokens_are_refreshed_at_half_their_lifetime() -> None:
    # A coordinator configured with 4-second tokens: a one-minute margin would make every
    # cached token stale at once; half the lifetime (2 s) is used instead.
    endpoint = TokenEndpoint(lifetime=4)
    profile: dict[str, str] = {"refresh_token": "tcp_ort_0"}
    with _http(endpoint) as http:
        token, updates = oauth.access_token(profile, http, NOW)
        profile.update(updates)
        assert oauth.access_token(profile, http, NOW + timedelta(seconds=1.9)) == (token, {})
        fresh, _ = oauth.access_token(profile, http, NOW + timedelta(seconds=2.1))
    assert (token, fresh, len(endpoint.grants)) == ("tcp_oat_1", "tcp_oat_2", 2)
    # A profile written before the issue time was stored keeps the one-minute margin.
    assert oauth.refresh_margin(None, NOW) == oauth.REFRESH_MARGIN


def test_client_credentials_grant_and_no_rotation() -> None:
    endpoint = TokenEndpoint(rotate=False)
    with _http(endpoint) as http:
        token, updates = oauth.access_token({"client_id": "cli_1", "client_secret": "s3cret"}, http, NOW)
    assert token == "tcp_oat_1" and "refresh_token" not in updates
    assert endpoint.grants == [{"grant_type": ["client_credentials"], "client_id": ["cli_1"],
                                "client_secret": ["s3cret"]}]


@pytest.mark.parametrize(("refuse", "code", "message"), [("envelope", "invalid_grant", "refresh token revoked"),
                                                          ("rfc", "invalid_grant", "expired")])
def test_token_endpoint_errors_become_api_errors(refuse: str, code: str, message: str) -> None:
    with _http(TokenEndpoint(refuse=refuse)) as http, pytest.raises(ApiError) as raised:
        oauth.access_token({"refresh_token": "tcp_ort_0"}, http, NOW)
    assert (raised.value.code, raised.value.message) == (code, message)


def test_only_profiles_with_oauth_credentials_use_it() -> None:
    assert oauth.has_oauth_credentials({"refresh_token": "x"})
    assert oauth.has_oauth_credentials({"client_id": "a", "client_secret": "b"})
    assert not oauth.has_oauth_credentials({"client_id": "a"})
    assert not oauth.has_oauth_credentials({"token": "tcp_pat_x"})
    assert oauth.cached_token({"access_token": "t", "access_token_expires_at": "garbage"}, NOW) is None


def test_parse_moment() -> None:
    assert parse_moment("2h", NOW) == "2026-04-26T07:00:00.000Z"
    assert parse_moment("7d", NOW) == "2026-04-19T09:00:00.000Z"
    assert parse_moment("2026-04-01T00:00:00Z", NOW) == "2026-04-01T00:00:00.000Z"
    with pytest.raises(ValueError, match=r"^'soon' is neither a duration"):
        parse_moment("soon", NOW)


def test_relative_time() -> None:
    assert relative_time(None, NOW) == "-"
    assert relative_time("2026-04-26T09:00:00Z", NOW) == "just now"
    assert relative_time("2026-04-26T08:59:30Z", NOW) == "30s ago"
    assert relative_time("2026-04-26T07:00:00Z", NOW) == "2h ago"
    assert relative_time("2026-04-20T09:00:00Z", NOW) == "6d ago"
    assert relative_time("2026-04-26T09:05:00Z", NOW) == "in 5m"
    assert relative_time("not a time", NOW) == "not a time"


def test_local_state_is_live_only_for_the_same_process() -> None:
    assert local.is_live({"pid": 1, "startedAt": 1000.0}, 1000.2)
    assert not local.is_live({"pid": 1, "startedAt": 1000.0}, 2000.0)  # the pid now belongs to another program
    assert not local.is_live({"pid": 1, "startedAt": 1000.0}, None)    # no such process
    assert local.is_live({"pid": 1}, 5.0)                              # an older state file without a start time


def test_coordinator_start_up_error_is_found_in_its_log(tmp_path: Path) -> None:
    log = tmp_path / "coordinator.log"
    log.write_text("info starting\n  | Traceback (most recent call last):\n"
                   "    |   File \"config.py\", line 275, in _create_sockets\n"
                   "    | OSError: [Errno 98] Address already in use\n    +------------\n")
    assert local._last_error(log) == "OSError: [Errno 98] Address already in use"


@pytest.mark.parametrize(("job", "code"), [
    ({"state": "SUCCEEDED", "exitCode": 0, "signal": None}, 0),
    ({"state": "FAILED", "exitCode": 4, "signal": None}, 4),
    ({"state": "FAILED", "exitCode": 137, "signal": "KILL", "reason": "killed_by_signal_9"}, 137),
    ({"state": "FAILED", "exitCode": 139, "signal": "SEGV"}, 139),
    ({"state": "FAILED", "exitCode": -15}, 143),  # a coordinator from before the `signal` field
    ({"state": "FAILED", "exitCode": None, "signal": None, "reason": "start_failed"}, 126),
    ({"state": "TIMED_OUT", "exitCode": 143, "signal": "TERM"}, 124),
    ({"state": "TIMED_OUT", "exitCode": 137, "signal": "KILL"}, 137),
    ({"state": "CANCELLED", "exitCode": 143, "signal": "TERM"}, 130),
    ({"state": "LOST", "exitCode": None}, 125),
])
def test_jobs_run_exit_code_is_the_shells_never_1(job: dict[str, object], code: int) -> None:
    assert exit_code_for(job) == code
