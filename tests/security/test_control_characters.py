"""Control characters are refused, naming the field, wherever a person reads the string."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from common import protocol
from tests.procs import Coordinator

CAPACITY = {"cpus": 1, "memoryMb": 1024, "gpus": 0}

CASES: list[tuple[str, str, dict[str, Any], str]] = [
    ("POST", "/v0/jobs", {"type": "COMMAND", "command": "true", "name": "a\x00b"}, "name"),
    ("POST", "/v0/jobs", {"type": "COMMAND", "command": "true", "labels": {"k": "v\x1b[31m"}}, "labels.k"),
    ("POST", "/v0/workspaces", {"name": "evil\x00"}, "name"),
    ("PATCH", "/v0/workspaces/{ws}", {"name": "report\u202etxt.exe"}, "name"),
    ("POST", "/v0/tokens", {"name": "ci\nsecond line"}, "name"),
    ("POST", "/v0/registration-tokens", {"name": "bell\x07"}, "name"),
    ("POST", "/v0/workspaces/{ws}/members", {"email": "a\x00@example.test", "role": "member"}, "email"),
    ("POST", "/v0/webhooks", {"url": "https://93.184.216.34/hook\x00", "events": ["job.terminal"]}, "url"),
    ("POST", protocol.REGISTER_PATH, {"name": "host\x00", "labels": {}, "version": "t", "capacity": CAPACITY}, "name"),
    ("POST", protocol.REGISTER_PATH, {"name": "host", "labels": {}, "version": "t\x9b", "capacity": CAPACITY},
     "version"),
]


@pytest.mark.parametrize(("method", "path", "body", "field"), CASES,
                         ids=[f"{c[0]} {c[1]} {c[3]}" for c in CASES])
def test_a_control_character_in_a_human_readable_field_is_a_422_naming_it(
        shared_coordinator: Coordinator, method: str, path: str, body: dict[str, Any], field: str) -> None:
    bearer = shared_coordinator.registration_token if path.startswith("/agent/") else shared_coordinator.token
    with httpx.Client(base_url=shared_coordinator.url, timeout=30,
                      headers={"Authorization": f"Bearer {bearer}"}) as client:
        response = client.request(method, path.format(ws=shared_coordinator.init["workspaceId"]), json=body)
    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] == "invalid_value"
    assert response.json()["error"]["field"] == field
    if field not in ("email", "url"):  # these have their own patterns, quoted in their messages
        assert response.json()["error"]["message"] == f"{field}: must not contain control characters"


def test_names_in_any_script_are_still_welcome(shared_coordinator: Coordinator) -> None:
    with shared_coordinator.client() as client:
        response = client.post("/v0/jobs", json={"type": "COMMAND", "command": "true", "name": "Zürich — 東京 ✓",
                                                 "labels": {"team": "façade"}})
    assert response.status_code == 201, response.text
    with shared_coordinator.client() as client:
        job = client.get(f"/v0/jobs/{response.json()['id']}").json()
    assert (job["name"], job["labels"]) == ("Zürich — 東京 ✓", {"team": "façade"})
