"""The OpenAPI 3.1 document, generated from the registered endpoints and their models."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from common import VERSION
from common.models import ErrorEnvelope
from coordinator.api.http import MAX_FILTERS
from coordinator.api.registry import ENDPOINTS, Endpoint

_ERROR_TEXT = {
    400: "Bad input: a body, query or header that cannot be parsed (also an unsupported X-Compute-API-Version)",
    401: "No or bad token", 403: "Role, plan or token scope forbids", 404: "Absent or not yours",
    408: "The request body did not arrive within the body timeout; the connection is closed",
    409: "State conflict", 413: "Body over the size limit (1 MiB by default)",
    415: "The body is not sent as application/json",
    422: "Valid JSON, impossible request", 429: "Rate limited; Retry-After says when to try again",
}
_RETRY_AFTER = {"Retry-After": {"description": "Seconds to wait before trying again",
                                "schema": {"type": "integer", "minimum": 0}}}


def error_statuses(ep: Endpoint) -> list[int]:
    """Every error status the server may answer ``ep`` with: the ones its handler declares,
    plus those that come from the layers every request passes through (the API version header,
    rate limits, authentication, path lookups, body and query parsing)."""
    found = set(ep.errors) | {400, 429}
    if not ep.public:
        found |= {401, 403}
    if _path_params(ep.path):
        found.add(404)
    if ep.body is not None:
        found |= {408, 413, 422}
    if ep.query:
        found.add(422)
    return sorted(found)


def _error_response(status: int, envelope: dict[str, Any]) -> dict[str, Any]:
    response: dict[str, Any] = {"description": _ERROR_TEXT.get(status, "Error"),
                                "content": {"application/json": {"schema": envelope}}}
    if status == 429:
        response["headers"] = _RETRY_AFTER
    return response


def _close_pattern_properties(node: Any) -> None:
    """pydantic writes a dict with constrained keys as ``patternProperties`` alone, which lets any
    other key through; the server refuses such keys, so the document must too."""
    if isinstance(node, dict):
        if "patternProperties" in node and "additionalProperties" not in node:
            node["additionalProperties"] = False
        for value in node.values():
            _close_pattern_properties(value)
    elif isinstance(node, list):
        for value in node:
            _close_pattern_properties(value)


# Routes declared directly on the app (no request model, no token): listed so that the
# document covers everything a client may call.
_SERVICE_ENDPOINTS = {
    "/healthz": "Liveness: the process is up",
    "/readyz": "Readiness: the store is reachable (503 otherwise)",
    "/v0/openapi.json": "This OpenAPI 3.1 document",
    "/metrics": "Prometheus metrics (text exposition format; a bearer token when the config sets one)",
}
_SERVICE_CONTENT = {"/metrics": "text/plain"}
_SERVICE_ERRORS = {"/healthz": (400, 429), "/readyz": (400, 429, 503), "/v0/openapi.json": (400, 429),
                   "/metrics": (400, 401, 429)}
_ERROR_TEXT_SERVICE = {503: "The store is not reachable"}


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
                {"name": name, "in": "path", "required": True, "schema": {"type": "string", "pattern": "^[^/:]+$"}}
                for name in _path_params(ep.path)
            ] + [
                {"name": q.name, "in": "query", "required": False, "description": q.description,
                 "schema": {"type": "array", "items": q.schema, "maxItems": MAX_FILTERS} if q.repeatable else q.schema,
                 **({"explode": True} if q.repeatable else {})}
                for q in ep.query
            ],
            "responses": {},
        }
        if ep.body is not None:
            operation["requestBody"] = {"required": True,
                                        "content": {"application/json": {"schema": ref(ep.body, "validation")}}}
        success: dict[str, Any] = {"description": "OK" if ep.status != 204 else "Done; no content"}
        if ep.response is not None:
            success["content"] = {ep.content_type: {"schema": ref(ep.response)}}
        elif ep.content_type != "application/json":
            success["content"] = {ep.content_type: {"schema": {"type": "string"}}}
        for other in ep.alt_content_types:
            success.setdefault("content", {})[other] = {"schema": {"type": "string"}}
        operation["responses"][str(ep.status)] = success
        for status in error_statuses(ep):
            operation["responses"][str(status)] = _error_response(status, ref(ErrorEnvelope))
        if not ep.public:
            operation["security"] = [{"bearer": []}]
        paths.setdefault(ep.path, {})[ep.method] = operation
    for path, summary in _SERVICE_ENDPOINTS.items():
        responses: dict[str, Any] = {"200": {"description": "OK", "content": {
            _SERVICE_CONTENT.get(path, "application/json"):
                {"schema": {"type": "string"} if path in _SERVICE_CONTENT else {"type": "object"}}}}}
        for status in _SERVICE_ERRORS[path]:
            responses[str(status)] = _error_response(status, ref(ErrorEnvelope))
            if status in _ERROR_TEXT_SERVICE:
                responses[str(status)]["description"] = _ERROR_TEXT_SERVICE[status]
        paths.setdefault(path, {})["get"] = {
            "summary": summary, "tags": ["service"], "operationId": "get" + path.replace("/", "_").replace(".", "_"),
            "responses": responses,
        }
    _close_pattern_properties(schema)
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
