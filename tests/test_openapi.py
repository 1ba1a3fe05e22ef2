"""``GET /v0/openapi.json``: a valid OpenAPI 3.1 document that covers every public route."""

from __future__ import annotations

import re
from pathlib import Path

from openapi_spec_validator import validate

from coordinator.app import create_app
from coordinator.context import Services
from coordinator.settings import Settings
from coordinator.store.sqlite import open_sqlite_store
from tests.inproc import open_inprocess


async def test_document_is_valid_openapi_31_and_covers_every_route(tmp_path: Path) -> None:
    async with open_inprocess(tmp_path) as co, co.client() as api:
        response = await api.get("/v0/openapi.json", headers={"Authorization": ""})
        assert response.status_code == 200
        document = response.json()
    assert document["openapi"] == "3.1.0"
    validate(document)  # raises on anything that is not valid OpenAPI 3.1

    async with open_sqlite_store(tmp_path / "other.sqlite3") as store:
        app = create_app(Services(store=store, settings=Settings(data_dir=tmp_path)))
    routes = set()
    for rule in app.url_map.iter_rules():
        if rule.rule.startswith(("/agent/", "/ui")) or rule.endpoint == "static":
            continue  # the agent protocol and the web console's pages are not public API
        path = re.sub(r"<(?:[a-z_]+:)?([a-z_]+)>", r"{\1}", rule.rule)
        for method in rule.methods or ():
            if method not in {"HEAD", "OPTIONS"}:
                routes.add((path, method.lower()))
    documented = {(path, method) for path, item in document["paths"].items() for method in item}
    assert routes - documented == set()
    assert documented - routes == set()
    # The ones this issue added are there with their status codes.
    assert "409" in document["paths"]["/v0/agents/{agent_id}"]["delete"]["responses"]
    assert "201" in document["paths"]["/v0/registration-tokens"]["post"]["responses"]


async def test_operation_ids_are_unique(tmp_path: Path) -> None:
    async with open_inprocess(tmp_path) as co, co.client() as api:
        document = (await api.get("/v0/openapi.json")).json()
    ids = [op["operationId"] for item in document["paths"].values() for op in item.values()]
    assert len(ids) == len(set(ids))


async def test_every_operation_documents_the_statuses_every_request_can_get(tmp_path: Path) -> None:
    """400 (API version header), 429 (rate limits) everywhere; 401 where a token is needed; 408,
    413 and 422 where a body is read; 422 where query parameters are checked."""
    async with open_inprocess(tmp_path) as co, co.client() as api:
        document = (await api.get("/v0/openapi.json")).json()
    for path, item in document["paths"].items():
        for method, operation in item.items():
            responses = operation["responses"]
            assert {"400", "429"} <= set(responses), (method, path)
            assert "Retry-After" in responses["429"]["headers"]
            if operation.get("security"):
                assert "401" in responses, (method, path)
            if "requestBody" in operation:
                assert {"408", "413", "422"} <= set(responses), (method, path)
            if any(p["in"] == "query" for p in operation.get("parameters", ())):
                assert "422" in responses, (method, path)
    jobs_list = document["paths"]["/v0/jobs"]["get"]["responses"]
    assert "422" in jobs_list  # ?limit=0 is one


async def test_streamed_media_types_are_declared(tmp_path: Path) -> None:
    async with open_inprocess(tmp_path) as co, co.client() as api:
        document = (await api.get("/v0/openapi.json")).json()
    logs = document["paths"]["/v0/jobs/{job_id}/logs"]["get"]["responses"]["200"]["content"]
    assert set(logs) == {"text/plain", "text/event-stream"}
    audit = document["paths"]["/v0/workspaces/{workspace_id}/audit"]["get"]["responses"]["200"]["content"]
    assert set(audit) == {"application/json", "application/jsonl"}


async def test_a_405_names_the_allowed_methods(tmp_path: Path) -> None:
    async with open_inprocess(tmp_path) as co, co.client() as api:
        response = await api.delete("/v0/jobs")
        assert response.status_code == 405
        assert set(response.headers["Allow"].replace(" ", "").split(",")) >= {"GET", "POST"}
        response = await api.put("/healthz")
        assert response.status_code == 405
        assert "GET" in response.headers["Allow"]


async def test_what_the_schema_refuses_the_server_refuses(tmp_path: Path) -> None:
    """PATCH workspace {"name": null} was schema-valid and refused; now the schema has no null
    branch for name and plan. Label keys, emails and webhook URLs carry the server's patterns."""
    async with open_inprocess(tmp_path) as co, co.client() as api:
        document = (await api.get("/v0/openapi.json")).json()
        schemas = document["components"]["schemas"]
        patch = schemas["WorkspacePatch"]["properties"]
        assert patch["name"]["type"] == "string" and "anyOf" not in patch["name"]
        assert patch["plan"]["type"] == "string" and "anyOf" not in patch["plan"]
        workspace_id = (await api.get("/v0/workspaces")).json()["items"][0]["id"]
        response = await api.patch(f"/v0/workspaces/{workspace_id}", json={"name": None})
        assert response.status_code == 422
        assert response.json()["error"]["field"] == "name"
    submit = next(schema for name, schema in schemas.items() if name.startswith("JobSubmit"))
    assert submit["properties"]["labels"]["additionalProperties"] is False
    assert "pattern" in schemas["MemberInvite"]["properties"]["email"]
    assert "pattern" in schemas["WebhookCreate"]["properties"]["url"]
    label_filter = next(p for p in document["paths"]["/v0/jobs"]["get"]["parameters"] if p["name"] == "label")
    assert "pattern" in label_filter["schema"]["items"]


async def test_custom_method_paths_advertise_only_their_own_methods(tmp_path: Path) -> None:
    """/v0/jobs/x:cancel used to match /v0/jobs/<job_id> too, so OPTIONS and 405 listed GET."""
    async with open_inprocess(tmp_path) as co, co.client() as api:
        response = await api.request("OPTIONS", "/v0/jobs/job_x:cancel")
        assert set(response.headers["Allow"].replace(" ", "").split(",")) == {"POST", "OPTIONS"}
        response = await api.get("/v0/jobs/job_x:cancel")
        assert response.status_code == 405
        assert response.headers["Allow"].replace(" ", "").split(",") == ["OPTIONS", "POST"]


async def test_the_server_takes_exactly_the_documented_query_parameters_and_numbers(tmp_path: Path) -> None:
    async with open_inprocess(tmp_path) as co, co.client() as api:
        response = await api.get("/v0/jobs", params={"limit": 5, "sort": "name"})
        assert response.status_code == 400
        assert response.json()["error"]["code"] == "unknown_parameter"
        assert response.json()["error"]["field"] == "sort"
        # A schema-valid cursor is a position, whatever the string.
        assert (await api.get("/v0/jobs", params={"cursor": "zz_any_position"})).status_code == 200
        # 60.0 is the integer 60 in JSON; NaN is not JSON.
        job = {"type": "COMMAND", "command": "true", "timeoutSeconds": 60.0}
        assert (await api.post("/v0/jobs", json=job)).status_code == 201
        response = await api.post("/v0/jobs", content=b'{"type": "COMMAND", "command": "true", "timeoutSeconds": NaN}',
                                  headers={"Content-Type": "application/json"})
        assert response.status_code == 400
        assert response.json()["error"]["code"] == "invalid_json"
        # An empty time or month is not "absent".
        assert (await api.get("/v0/billing/usage", params={"windowStart": ""})).status_code == 400


async def test_retries_and_dependencies_are_documented(tmp_path: Path) -> None:
    async with open_inprocess(tmp_path) as co, co.client() as api:
        schemas = (await api.get("/v0/openapi.json")).json()["components"]["schemas"]
    submit = schemas["JobSubmit"]["properties"]
    assert {"retry", "dependsOn"} <= set(submit)
    retry = schemas["RetrySpec"]
    assert retry["required"] == ["attempts"]
    assert (retry["properties"]["attempts"]["minimum"], retry["properties"]["attempts"]["maximum"]) == (1, 10)
    assert retry["properties"]["on"]["items"]["enum"] == ["FAILED", "TIMED_OUT", "LOST"]
    assert retry["properties"]["backoffSeconds"]["maximum"] == 86_400
    assert schemas["DependencySpec"]["properties"]["condition"]["enum"] == ["succeeded", "failed", "finished"]
    assert {"retry", "dependsOn", "notBefore", "attempts"} <= set(schemas["Job"]["properties"])
