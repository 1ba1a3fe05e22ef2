"""The headers every answer gets are written by two functions: ``finish_headers`` on werkzeug's
``Headers`` (Quart's door) and ``finish_raw_headers`` on the encoded list the fast lane sends.
For any response a view can make they must send the same bytes, in the same order."""

from __future__ import annotations

from typing import Any

import pytest
from quart.utils import encode_headers
from werkzeug.datastructures import Headers

from coordinator.ratelimit import Decision
from coordinator.request_path import finish_headers, finish_raw_headers
from coordinator.request_state import RequestState


def _state(path: str, decision: Decision | None, request_id: str) -> RequestState:
    async def no_body() -> Any:
        yield b""

    state = RequestState(method="GET", path=path, headers={}, cookies={}, remote_addr="127.0.0.1",  # type: ignore[arg-type]
                         endpoint="jobs.get_job", route="/v0/jobs/<job_id>", view_args={}, args=(),
                         mimetype="", body=no_body, svc=None)  # type: ignore[arg-type]
    state.request_id = request_id
    state.rate_decision = decision
    return state


VIEW_HEADERS = [
    [("Content-Type", "application/json"), ("Content-Length", "12")],
    [("Content-Type", "application/json"), ("Idempotent-Replayed", "true")],
    [("Cache-Control", "no-cache"), ("X-Accel-Buffering", "no")],  # the followed log keeps its own
    [("X-Frame-Options", "SAMEORIGIN"), ("Content-Security-Policy", "default-src 'self'")],
    [("X-Request-Id", "req_from_view"), ("Retry-After", "3"), ("x-request-id", "req_second")],
    [("X-RateLimit-Limit", "1"), ("Content-Type", "text/plain"), ("X-RateLimit-Remaining", "0"),
     ("X-RateLimit-Limit", "2")],
    [("X-Compute-API-Version", "v9")],
    [],
]
DECISIONS = [None, Decision(allowed=True, limit=20, remaining=19, retry_after_seconds=0, cells=None),  # type: ignore[arg-type]
             Decision(allowed=False, limit=5, remaining=0, retry_after_seconds=2, cells=None)]  # type: ignore[arg-type]


@pytest.mark.parametrize("path", ["/v0/jobs/job_1", "/agent/v0/claim", "/healthz", "/ui/jobs"])
@pytest.mark.parametrize("decision", DECISIONS)
@pytest.mark.parametrize("view_headers", VIEW_HEADERS)
def test_both_doors_send_the_same_headers(path: str, decision: Decision | None,
                                          view_headers: list[tuple[str, str]]) -> None:
    headers = Headers(view_headers)
    finish_headers(_state(path, decision, "req_1"), headers)
    raw = encode_headers(Headers(view_headers))
    finish_raw_headers(_state(path, decision, "req_1"), raw)
    assert raw == encode_headers(headers)
