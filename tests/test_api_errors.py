"""Bad input gets its status and error code from the spec, in the error envelope, and stores nothing."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.procs import Coordinator

OK = {"type": "COMMAND", "command": "echo hi"}

BAD_BODIES: list[tuple[str, Any, int, str, str | None]] = [
    ("missing type", {"command": "echo hi"}, 400, "missing_field", "type"),
    ("unknown type", {**OK, "type": "SCRIPT"}, 422, "invalid_value", "type"),
    ("timeout zero", {**OK, "timeoutSeconds": 0}, 422, "invalid_value", "timeoutSeconds"),
    ("timeout too long", {**OK, "timeoutSeconds": 604_801}, 422, "invalid_value", "timeoutSeconds"),
    ("timeout a string", {**OK, "timeoutSeconds": "30"}, 400, "invalid_type", "timeoutSeconds"),
    ("unknown field", {**OK, "urgency": 3}, 400, "unknown_field", "urgency"),
    ("priority too high", {**OK, "priority": 101}, 422, "invalid_value", "priority"),
    ("command empty", {**OK, "command": ""}, 422, "invalid_value", "command"),
    ("command with a NUL byte", {**OK, "command": "a\u0000b"}, 422, "invalid_value", "command"),
    ("env value with a NUL byte", {**OK, "env": {"A": "a\u0000b"}}, 422, "invalid_value", "env.A"),
    ("labels not a map", {**OK, "labels": ["a"]}, 400, "invalid_type", "labels"),
    ("negative cpus", {**OK, "resources": {"cpus": -1}}, 422, "invalid_value", "resources.cpus"),
    ("env value not a string", {**OK, "env": {"A": 1}}, 400, "invalid_type", "env.A"),
    ("body not an object", [OK], 400, "invalid_type", None),
    ("env sets the job's GPUs", {**OK, "env": {"A": "1", "CUDA_VISIBLE_DEVICES": "0,1"}}, 400, "reserved_env",
     "env.CUDA_VISIBLE_DEVICES"),
    ("env sets NVIDIA_VISIBLE_DEVICES", {**OK, "env": {"NVIDIA_VISIBLE_DEVICES": "all"}}, 400, "reserved_env",
     "env.NVIDIA_VISIBLE_DEVICES"),
    ("env sets a TANVRIT_ name", {**OK, "env": {"TANVRIT_JOB_ID": "job_x"}}, 400, "reserved_env",
     "env.TANVRIT_JOB_ID"),
]


def _assert_envelope(response: httpx.Response, status: int, code: str, field: str | None) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert set(error) == {"code", "message", "field", "requestId"}
    assert error["code"] == code
    assert error["field"] == field
    assert error["requestId"] == response.headers["X-Request-Id"]
    assert error["message"] and "Traceback" not in error["message"]
    assert response.headers["X-Compute-API-Version"] == "v0"


def _job_count(api: httpx.Client) -> int:
    return len(api.get("/v0/jobs", params={"limit": 500}).json()["items"])


@pytest.mark.parametrize(("body", "status", "code", "field"), [case[1:] for case in BAD_BODIES],
                         ids=[case[0] for case in BAD_BODIES])
def test_bad_job_bodies(shared_coordinator: Coordinator, body: Any, status: int, code: str,
                        field: str | None) -> None:
    with shared_coordinator.client() as api:
        before = _job_count(api)
        _assert_envelope(api.post("/v0/jobs", json=body), status, code, field)
        assert _job_count(api) == before


def test_reserved_env_message_names_the_variable(shared_coordinator: Coordinator) -> None:
    with shared_coordinator.client() as api:
        error = api.post("/v0/jobs", json={**OK, "env": {"TANVRIT_TOKEN": "x"}}).json()["error"]
        assert error["message"].startswith("env.TANVRIT_TOKEN: ")
        # Near misses are a job's own business.
        assert api.post("/v0/jobs", json={**OK, "env": {"tanvrit_x": "1", "MY_CUDA_VISIBLE_DEVICES": "0"},
                                         "labels": {"pool": "nobody"}}).status_code == 201


def test_non_json_body(shared_coordinator: Coordinator) -> None:
    with shared_coordinator.client() as api:
        before = _job_count(api)
        response = api.post("/v0/jobs", content=b"{not json", headers={"Content-Type": "application/json"})
        _assert_envelope(response, 400, "invalid_json", None)
        assert _job_count(api) == before


def test_body_over_one_mebibyte(shared_coordinator: Coordinator) -> None:
    with shared_coordinator.client() as api:
        before = _job_count(api)
        big = {**OK, "command": "x" * (1024 * 1024)}
        _assert_envelope(api.post("/v0/jobs", json=big), 413, "payload_too_large", None)
        assert _job_count(api) == before


@pytest.mark.parametrize(("header", "code"), [
    (None, "missing_token"),
    ("Bearer", "missing_token"),
    ("Basic abc", "missing_token"),
    ("Bearer tcp_pat_wrong", "invalid_token"),
])
def test_missing_or_wrong_token(shared_coordinator: Coordinator, header: str | None, code: str) -> None:
    headers = {"Authorization": header} if header is not None else {}
    with httpx.Client(base_url=shared_coordinator.url) as anonymous:
        _assert_envelope(anonymous.get("/v0/jobs", headers=headers), 401, code, None)


def test_wrong_token_stores_nothing(shared_coordinator: Coordinator) -> None:
    with shared_coordinator.client() as api:
        before = _job_count(api)
    with httpx.Client(base_url=shared_coordinator.url) as anonymous:
        response = anonymous.post("/v0/jobs", json=OK, headers={"Authorization": "Bearer tcp_pat_nope"})
    _assert_envelope(response, 401, "invalid_token", None)
    with shared_coordinator.client() as api:
        assert _job_count(api) == before


def test_registration_token_is_not_a_user_token(shared_coordinator: Coordinator) -> None:
    with shared_coordinator.client(shared_coordinator.registration_token) as api:
        _assert_envelope(api.get("/v0/jobs"), 401, "invalid_token", None)


def test_wrong_api_version(shared_coordinator: Coordinator) -> None:
    with shared_coordinator.client() as api:
        before = _job_count(api)
        response = api.post("/v0/jobs", json=OK, headers={"X-Compute-API-Version": "v1"})
        _assert_envelope(response, 400, "unsupported_api_version", "X-Compute-API-Version")
        assert _job_count(api) == before


def test_unknown_job_and_route(shared_coordinator: Coordinator) -> None:
    with shared_coordinator.client() as api:
        _assert_envelope(api.get("/v0/jobs/job_01jt9hello0000000000000000"), 404, "job_not_found", None)
        _assert_envelope(api.get("/v0/nothing-here"), 404, "not_found", None)
        _assert_envelope(api.delete("/v0/jobs"), 405, "method_not_allowed", None)


def test_list_paging_and_bad_cursor(shared_coordinator: Coordinator) -> None:
    with shared_coordinator.client() as api:
        created = [api.post("/v0/jobs", json={**OK, "name": f"page-{i}"}).json()["id"] for i in range(5)]
        seen: list[str] = []
        cursor = None
        while True:
            params: dict[str, Any] = {"limit": 2, **({"cursor": cursor} if cursor else {})}
            page = api.get("/v0/jobs", params=params).json()
            seen += [job["id"] for job in page["items"]]
            cursor = page["nextCursor"]
            if cursor is None:
                break
        assert seen == sorted(seen, reverse=True)
        assert set(created) <= set(seen)
        assert len(seen) == len(set(seen))
        _assert_envelope(api.get("/v0/jobs", params={"cursor": "garbage!"}), 400, "invalid_cursor", "cursor")
        _assert_envelope(api.get("/v0/jobs", params={"limit": 0}), 422, "invalid_value", "limit")


def test_idempotency_replay_and_conflict(shared_coordinator: Coordinator) -> None:
    with shared_coordinator.client() as api:
        first = api.post("/v0/jobs", json=OK, headers={"Idempotency-Key": "k-1"})
        again = api.post("/v0/jobs", json=OK, headers={"Idempotency-Key": "k-1"})
        assert first.status_code == again.status_code == 201
        assert first.json()["id"] == again.json()["id"]
        assert again.headers.get("Idempotent-Replayed") == "true"
        other = api.post("/v0/jobs", json={**OK, "command": "echo other"}, headers={"Idempotency-Key": "k-1"})
        _assert_envelope(other, 409, "idempotency_key_reused", "Idempotency-Key")


def test_service_endpoints(shared_coordinator: Coordinator) -> None:
    with httpx.Client(base_url=shared_coordinator.url) as anonymous:
        assert anonymous.get("/healthz").json() == {"status": "ok"}
        assert anonymous.get("/readyz").json() == {"status": "ready"}
        document = anonymous.get("/v0/openapi.json").json()
        assert document["openapi"].startswith("3.1")
        assert "/v0/jobs" in document["paths"]
        assert "post" in document["paths"]["/v0/jobs"]
