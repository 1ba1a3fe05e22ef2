"""Errors to HTTP answers, in one place for both front doors (Quart's error handlers and the
fast lane): the envelope ``{"error": {"code", "message", "field", "requestId"}}`` of the
contract, with ``Retry-After`` and ``Allow`` where they apply.

``ComputeError`` carries its own status; the store's errors carry no HTTP and are mapped here
(common.errors' statuses); werkzeug's (404 for no route, 405, 413 past Quart's body limit) get
codes of ours; anything else is a 500 that names only the request id.
"""

from __future__ import annotations

import logging

from quart import Response
from werkzeug.exceptions import HTTPException, MethodNotAllowed

from common.errors import ComputeError
from common.ids import new_id
from coordinator.api.http import respond
from coordinator.request_state import RequestState
from coordinator.store import errors as store_errors

log = logging.getLogger("tanvrit.coordinator")

_HTTP_CODES = {
    404: "not_found", 405: "method_not_allowed", 413: "payload_too_large", 400: "bad_request",
}

# Most specific first: the first class the error is an instance of gives the status.
_STORE_STATUSES: dict[type[store_errors.StoreError], int] = {
    store_errors.NotFound: 404,
    store_errors.StaleState: 409,
    store_errors.Conflict: 409,
    store_errors.InvalidValue: 422,
    store_errors.StoreClosed: 503,
    store_errors.DatabaseUnavailable: 503,
}

_INTERNAL = "an internal error occurred; quote the request id when reporting it"


def envelope(state: RequestState | None, status: int, code: str, message: str, field: str | None = None) -> Response:
    """The error answer; ``code`` is noted for the request's audit row."""
    request_id = (state.request_id if state is not None else "") or new_id("req")
    if state is not None:
        state.error_code = code  # for the audit row (coordinator/observability.py)
    return respond({"error": {"code": code, "message": message, "field": field, "requestId": request_id}}, status)


def error_response(exc: Exception, state: RequestState | None) -> Response:
    """The answer to ``exc``, raised while serving the request of ``state``."""
    if isinstance(exc, ComputeError):
        response = envelope(state, exc.status, exc.code, exc.message, exc.field)
        retry_after = getattr(exc, "retry_after_seconds", None)
        if retry_after is not None:
            response.headers["Retry-After"] = str(retry_after)
        return response
    where = f"{state.method} {state.path}" if state is not None else "a request"
    if isinstance(exc, store_errors.StoreError):
        status = next((code for kind, code in _STORE_STATUSES.items() if isinstance(exc, kind)), 500)
        if status == 500:
            log.error("store error in %s: %s", where, exc)
            return envelope(state, 500, "internal_error", _INTERNAL)
        response = envelope(state, status, exc.code, exc.message, getattr(exc, "field", None))
        if status == 503:
            response.headers["Retry-After"] = "1"
        return response
    if isinstance(exc, HTTPException):
        status = exc.code or 500
        if status == 413 and state is not None:
            message = f"the request body is over {state.svc.settings.max_body_bytes // 1024} KiB"
        else:
            message = exc.description or exc.name
        response = envelope(state, status, _HTTP_CODES.get(status, exc.name.lower().replace(" ", "_")), message)
        if isinstance(exc, MethodNotAllowed) and exc.valid_methods:
            # RFC 9110 §15.5.6: a 405 names the methods the resource does support.
            response.headers["Allow"] = ", ".join(sorted(exc.valid_methods))
        return response
    log.error("unhandled error in %s", where, exc_info=exc)
    return envelope(state, 500, "internal_error", _INTERNAL)
