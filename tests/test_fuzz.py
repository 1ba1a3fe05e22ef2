"""Standing fuzz suite: schemathesis against a real coordinator process, with an owner token.

Coverage and fuzzing phases over every operation in ``GET /v0/openapi.json``, every check
schemathesis has. A failure names the check and prints the curl command that reproduces it.
The fuzzer may do anything an owner may, except cut its own branch: deleting its own
membership or revoking its own token would turn every later case into a 401.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from schemathesis.config import SchemathesisConfig

from coordinator.app import create_app  # noqa: F401  (registers every route)
from coordinator.openapi import build_openapi
from tests.procs import Coordinator

# Fuzzing examples per operation: with the coverage phase's cases this keeps the suite to a few
# minutes on a small (2-core) machine.
MAX_EXAMPLES = 15

# CI replays one fixed seed, so a submission is never refused for what a new random draw finds; a
# developer's run draws afresh (or replays TANVRIT_FUZZ_SEED) so the suite keeps exploring.
FUZZ_SEED = os.environ.get("TANVRIT_FUZZ_SEED") or ("20261202" if os.environ.get("CI") else None)

_CONFIG = """
request-timeout = 30
# The job body's patterns (env names, label keys, control characters) make generation slow on
# a loaded machine; that is not a finding.
suppress-health-check = ["too_slow"]

[generation]
max-examples = {max_examples}
database = "none"

[phases]
examples.enabled = false
coverage.enabled = true
fuzzing.enabled = true
stateful.enabled = false

[checks]
enabled = true
""" + "".join(
    f"""
[[operations]]
include-name = "{method} {path}"
checks.positive_data_acceptance.expected-statuses = ["2xx", "401", "403", "404", "409", "{status}", "429"]
"""
    for method, path, status in (
        # Rules no JSON Schema can state, answered 422 naming the field:
        ("POST", "/v0/jobs", 422),  # array.maxParallel not above array.count; dependsOn jobs must exist
        ("POST", "/v0/tokens", 422),  # userId must be a member of the workspace
        ("POST", "/v0/registration-tokens", 422),  # expiresAt must be in the future
        ("POST", "/v0/webhooks", 422),  # the URL must resolve to a public unicast address
        ("POST", "/v0/sessions", 422),  # exactly one of pat and invitationCode
        ("GET", "/v0/billing/usage", 422),  # windowEnd after windowStart
        ("PATCH", "/v0/billing/limits", 422),  # the hard cap not below the soft cap
        # RFC 6749 §5.2: an unknown or used refresh token is 400 invalid_grant, not 401.
        ("POST", "/v0/oauth/token", 400),
    )
)


@pytest.fixture(scope="module")
def fuzz_target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Coordinator]:
    tmp_path = tmp_path_factory.mktemp("fuzz")
    co = Coordinator(tmp_path / "co")
    co.start()
    _owner_token["token"] = co.token
    try:
        yield co
    finally:
        co.stop()


class _Self:
    """What the fuzzer must not remove from under itself."""

    def __init__(self, co: Coordinator) -> None:
        with co.client() as api:
            tokens = api.get("/v0/tokens", params={"limit": 500}).json()["items"]
        self.user_id = co.init["userId"]
        self.token_ids = {token["id"] for token in tokens}


@pytest.fixture(scope="module")
def fuzz_self(fuzz_target: Coordinator) -> _Self:
    return _Self(fuzz_target)


# The document is built here as the server builds it (test_served_document_is_the_fuzzed_one
# checks they agree): schemathesis's fixture-based loader does not work with pytest 9.
schema = schemathesis.openapi.from_dict(build_openapi(),
                                        config=SchemathesisConfig.from_str(
                                            (f"seed = {int(FUZZ_SEED)}\n" if FUZZ_SEED else "")
                                            + _CONFIG.format(max_examples=MAX_EXAMPLES)))


# The owner token of the running coordinator, set by its fixture. Schemathesis builds the
# coverage phase's cases (with auth) while collecting, before any fixture runs: those carry
# this placeholder, swapped for the token when the case is sent.
_owner_token: dict[str, str] = {}
_PENDING = "owner-token-not-yet-known"


@schema.auth()
class _OwnerToken:
    """Given to schemathesis as the API's auth, so it can also try each operation without it."""

    def get(self, case: Any, ctx: Any) -> str:
        return _owner_token.get("token", _PENDING)

    def set(self, case: Any, data: str, ctx: Any) -> None:
        case.headers = {**(case.headers or {}), "Authorization": f"Bearer {data}"}


def test_served_document_is_the_fuzzed_one(fuzz_target: Coordinator) -> None:
    assert httpx.get(f"{fuzz_target.url}/v0/openapi.json", timeout=30).json() == build_openapi()


def _cuts_own_branch(case: Any, own: _Self) -> bool:
    params = case.path_parameters or {}
    path = case.operation.path
    method = case.method.upper()
    if method == "DELETE" and path == "/v0/tokens/{token_id}" and params.get("token_id") in own.token_ids:
        return True
    if method in {"DELETE", "PATCH"} and path == "/v0/workspaces/{workspace_id}/members/{user_id}":
        return bool(params.get("user_id") == own.user_id)
    return False


def _follows_forever(case: Any) -> bool:
    """``?follow=true`` streams a log until its job ends; the fuzzer's jobs never run (there is
    no agent), so the stream never ends. tests/test_log_stream.py covers following."""
    follow = str((case.query or {}).get("follow", "")).lower()
    return bool(case.operation.path.endswith("/logs") and follow in {"1", "true", "yes"})


@schema.parametrize()
def test_the_api_keeps_its_document(case: Any, fuzz_target: Coordinator, fuzz_self: _Self) -> None:
    if _cuts_own_branch(case, fuzz_self) or _follows_forever(case):
        return
    if (case.headers or {}).get("Authorization") == f"Bearer {_PENDING}":
        case.headers["Authorization"] = f"Bearer {fuzz_target.token}"
    case.call_and_validate(base_url=fuzz_target.url)
