"""Hostile request bodies and queries: each is refused with a 4xx and the error envelope,
never a 500, and nothing of the body reaches the logs."""

from __future__ import annotations

import re

import httpx
import pytest

from common import protocol
from coordinator.api.http import MAX_FILTERS, MAX_JSON_DEPTH
from coordinator.api.registry import ENDPOINTS
from coordinator.app import create_app  # noqa: F401  (imports every API module, filling ENDPOINTS)
from tests.procs import Coordinator

DEEP = b"[" * 1000 + b"]" * 1000
_PARAM = re.compile(r"\{([a-z_]+)\}")


@pytest.fixture(scope="module")
def agent_token(shared_coordinator: Coordinator) -> str:
    with httpx.Client(base_url=shared_coordinator.url, timeout=30) as client:
        registered = client.post(protocol.REGISTER_PATH, headers={
            "Authorization": f"Bearer {shared_coordinator.registration_token}"}, json={
            "name": "hostile", "labels": {}, "version": "t", "capacity": {"cpus": 1, "memoryMb": 1024, "gpus": 0}})
    assert registered.status_code == 201, registered.text
    return str(registered.json()["agentToken"])


def _json_routes(coord: Coordinator, agent_token: str) -> list[tuple[str, str, str | None]]:
    """(method, path, bearer) of every route that reads a JSON body: the registry's and the agent protocol's."""
    routes: list[tuple[str, str, str | None]] = []
    for ep in ENDPOINTS:
        if ep.body is None:
            continue
        path = _PARAM.sub(lambda m: coord.init["workspaceId"] if m.group(1) == "workspace_id" else "zz_missing",
                          ep.path)
        routes.append((ep.method.upper(), path, None if ep.public else coord.token))
    routes.append(("POST", protocol.REGISTER_PATH, coord.registration_token))
    for path in (protocol.HEARTBEAT_PATH, protocol.CLAIM_PATH, protocol.EVENTS_PATH):
        routes.append(("POST", path, agent_token))
    return routes


def test_json_nested_past_the_bound_is_a_400_on_every_json_endpoint_and_never_logged(
        shared_coordinator: Coordinator, agent_token: str) -> None:
    routes = _json_routes(shared_coordinator, agent_token)
    assert ("POST", "/v0/oauth/token", None) in routes
    wrong = []
    with httpx.Client(base_url=shared_coordinator.url, timeout=30) as client:
        for method, path, bearer in routes:
            headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {bearer}"} if bearer else {})}
            response = client.request(method, path, content=DEEP, headers=headers)
            body = response.json() if response.headers.get("content-type", "").startswith("application/json") else {}
            if response.status_code != 400 or body.get("error", {}).get("code") != "json_too_deep":
                wrong.append(f"{method} {path}: {response.status_code} {response.text[:200]}")
    assert not wrong, "\n".join(wrong)
    log = shared_coordinator.log_path.read_text() if shared_coordinator.log_path else ""
    assert "[[[[" not in log
    assert "Traceback" not in log


def test_json_at_the_bound_still_parses(shared_coordinator: Coordinator) -> None:
    nested = "[" * (MAX_JSON_DEPTH - 1) + "]" * (MAX_JSON_DEPTH - 1)
    with shared_coordinator.client() as client:
        response = client.post("/v0/jobs", content=f'{{"type": "COMMAND", "command": "true", "x": {nested}}}',
                               headers={"Content-Type": "application/json"})
    # Parsed, then refused by the model for the unknown field: not a depth refusal.
    assert response.status_code in (400, 422), response.text
    assert response.json()["error"]["code"] != "json_too_deep"


def test_brackets_inside_strings_do_not_count_as_depth(shared_coordinator: Coordinator) -> None:
    with shared_coordinator.client() as client:
        response = client.post("/v0/jobs", json={"type": "COMMAND", "command": "echo '" + "[{" * 500 + "'"})
    assert response.status_code == 201, response.text


@pytest.mark.parametrize(("path", "name", "value"), [
    ("/v0/jobs", "label", "k=v"),
    ("/v0/jobs", "state", "QUEUED"),
    ("/v0/workspaces/{ws}/audit", "action", "job.submit"),
])
def test_more_filters_than_the_bound_is_a_400(shared_coordinator: Coordinator, path: str, name: str,
                                              value: str) -> None:
    url = path.format(ws=shared_coordinator.init["workspaceId"])
    with shared_coordinator.client() as client:
        at_bound = client.get(url, params=[(name, value)] * MAX_FILTERS)
        over = client.get(url, params=[(name, value)] * 999)
    assert at_bound.status_code == 200, at_bound.text
    assert over.status_code == 400, over.text
    assert over.json()["error"]["code"] == "too_many_filters"
    assert over.json()["error"]["field"] == name
