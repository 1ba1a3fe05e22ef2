"""Routes declared with their models, so the OpenAPI document is generated from the same
pydantic models that validate requests and shape responses."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from pydantic import BaseModel
from quart import Blueprint

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class QueryParam:
    name: str
    schema: dict[str, Any]
    description: str = ""
    repeatable: bool = False


@dataclass(frozen=True)
class Endpoint:
    method: str
    path: str
    summary: str
    tag: str
    body: type[BaseModel] | None
    response: type[BaseModel] | None
    status: int
    query: tuple[QueryParam, ...] = ()
    content_type: str = "application/json"
    public: bool = False
    errors: tuple[int, ...] = field(default=(400, 401, 404))
    # Other media types the success response may have (chosen by a query parameter).
    alt_content_types: tuple[str, ...] = ()


ENDPOINTS: list[Endpoint] = []
# Query parameter names each view (Flask endpoint name, "blueprint.function") declares: the app
# refuses any other, so the document lists every parameter the server reads.
DECLARED_QUERY: dict[str, frozenset[str]] = {}

_CONVERTER = re.compile(r"<(?:[a-z_]+:)?([a-z_]+)>")


def openapi_path(prefix: str, rule: str) -> str:
    return prefix + _CONVERTER.sub(r"{\1}", rule)


def endpoint(
    blueprint: Blueprint,
    method: str,
    rule: str,
    *,
    summary: str,
    tag: str,
    body: type[BaseModel] | None = None,
    response: type[BaseModel] | None = None,
    status: int = 200,
    query: tuple[QueryParam, ...] = (),
    content_type: str = "application/json",
    public: bool = False,
    errors: tuple[int, ...] = (400, 401, 404),
    alt_content_types: tuple[str, ...] = (),
) -> Callable[[F], F]:
    def register(handler: F) -> F:
        blueprint.add_url_rule(rule, view_func=handler, methods=[method], endpoint=handler.__name__)
        DECLARED_QUERY[f"{blueprint.name}.{handler.__name__}"] = frozenset(q.name for q in query)
        ENDPOINTS.append(
            Endpoint(method.lower(), openapi_path(blueprint.url_prefix or "", rule), summary, tag, body,
                     response, status, query, content_type, public, errors, alt_content_types)
        )
        return handler

    return register
