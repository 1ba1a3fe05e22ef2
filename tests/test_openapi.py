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
