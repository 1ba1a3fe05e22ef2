"""The OpenAPI 3.1 document, generated from the registered endpoints and their models."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from common import VERSION
from common.models import ErrorEnvelope
from coordinator.api.registry import ENDPOINTS

_ERROR_TEXT = {
    400: "Bad input", 401: "No or bad token", 403: "Role or plan forbids", 404: "Absent or not yours",
    409: "State conflict", 413: "Body over 1 MiB", 422: "Valid JSON, impossible request", 429: "Rate limited",
}


# Routes declared directly on the app (no request model, no token): listed so that the
# document covers everything a client may call.
_SERVICE_ENDPOINTS = {
    "/healthz": "Liveness: the process is up",
    "/readyz": "Readiness: the store is reachable (503 otherwise)",
    "/v0/openapi.json": "This OpenAPI 3.1 document",
    "/metrics": "Prometheus metrics (text exposition format; a bearer token when the config sets one)",
}
_SERVICE_CONTENT = {"/metrics": "text/plain"}


def build_openapi() -> dict[str, Any]:
    models: set[type[BaseModel]] = {ErrorEnvelope}
    for ep in ENDPOINTS:
        models.update(m for m in (ep.body, ep.response) if m is not None)
    ordered = sorted(models, key=lambda m: m.__name__)
    refs, schema = models_json_schema(
        [(model, "serialization") for model in ordered] + [(ep.body, "validation") for ep in ENDPOINTS if ep.body],
        ref_template="#/components/schemas/{model}",
    )

    def ref(model: type[BaseModel], mode: str = "serialization") -> dict[str, Any]:
        found: dict[str, Any] = refs[(model, mode)]  # type: ignore[index]
        return found

    paths: dict[str, dict[str, Any]] = {}
    for ep in ENDPOINTS:
        operation: dict[str, Any] = {
            "summary": ep.summary,
            "tags": [ep.tag],
            "operationId": f"{ep.method}_{ep.path}".replace("/", "_").replace("{", "").replace("}", "")
            .replace(":", "_"),
            "parameters": [
                {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
                for name in _path_params(ep.path)
            ] + [
                {"name": q.name, "in": "query", "required": False, "description": q.description,
                 "schema": {"type": "array", "items": q.schema} if q.repeatable else q.schema,
                 **({"explode": True} if q.repeatable else {})}
                for q in ep.query
            ],
            "responses": {},
        }
        if ep.body is not None:
            operation["requestBody"] = {"required": True,
                                        "content": {"application/json": {"schema": ref(ep.body, "validation")}}}
        success: dict[str, Any] = {"description": "OK"}
        if ep.response is not None:
            success["content"] = {ep.content_type: {"schema": ref(ep.response)}}
        elif ep.content_type != "application/json":
            success["content"] = {ep.content_type: {"schema": {"type": "string"}}}
        operation["responses"][str(ep.status)] = success
        for status in ep.errors:
            operation["responses"][str(status)] = {
                "description": _ERROR_TEXT.get(status, "Error"),
                "content": {"application/json": {"schema": ref(ErrorEnvelope)}},
            }
        if not ep.public:
            operation["security"] = [{"bearer": []}]
        paths.setdefault(ep.path, {})[ep.method] = operation
    for path, summary in _SERVICE_ENDPOINTS.items():
        paths.setdefault(path, {})["get"] = {
            "summary": summary, "tags": ["service"], "operationId": "get" + path.replace("/", "_").replace(".", "_"),
            "responses": {"200": {"description": "OK", "content": {
                _SERVICE_CONTENT.get(path, "application/json"):
                    {"schema": {"type": "string"} if path in _SERVICE_CONTENT else {"type": "object"}}}}},
        }
    return {
        "openapi": "3.1.0",
        "info": {"title": "Tanvrit Compute API", "version": VERSION},
        "servers": [{"url": "/"}],
        "paths": paths,
        "components": {
            "schemas": schema.get("$defs", {}),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }


def _path_params(path: str) -> list[str]:
    return [part[1:-1] for part in path.replace(":", "/").split("/") if part.startswith("{")]
