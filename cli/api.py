"""A small synchronous client for the public API; errors become ``ApiError`` or
``Unreachable`` with messages fit to print.

The client takes several coordinator URLs (a comma list or a sequence: replicas of one
cluster) and fails over between them in order: a connection error, a timeout or a 502/503/504
sends the request to the next URL, and the client stays with the first that answers. A request
that is not idempotent (POST, PATCH) is sent to a second URL after the first may have seen it
only when it carries an ``Idempotency-Key`` (the coordinator then returns the first job rather
than creating another); without one it moves on only when the connection could not be made."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx

from common import API_VERSION, VERSION
from common.errors import ApiError
from common.failover import CLIENT_LIMITS, FAILOVER_STATUSES, NOT_SENT, split_urls

T = TypeVar("T")


class Unreachable(Exception):
    """The coordinator could not be reached at all."""


@dataclass(frozen=True)
class SseEvent:
    event: str
    data: str
    id: str | None


# Methods RFC 9110 calls idempotent: sending one twice has the effect of sending it once.
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})


def on_first_reachable(urls: str | Sequence[str], attempt: Callable[[httpx.Client], T]) -> T:
    """``attempt`` with a client on each URL in turn until one can be connected to. For requests
    that must never be sent twice (OAuth token grants rotate refresh tokens): an ``Unreachable``
    whose cause is anything but a failed connection is raised at once, not retried elsewhere."""
    failure: Unreachable | None = None
    for url in split_urls(urls):
        with httpx.Client(base_url=url, timeout=15.0) as http:
            try:
                return attempt(http)
            except Unreachable as exc:
                if not isinstance(exc.__cause__, NOT_SENT):
                    raise
                failure = exc
    assert failure is not None
    raise failure


class ApiClient:
    def __init__(self, base_url: str | Sequence[str], token: str | None, *, timeout: float = 15.0,
                 workspace: str | None = None, transport: httpx.BaseTransport | None = None) -> None:
        headers = {"X-Compute-API-Version": API_VERSION, "User-Agent": f"tanvrit-compute/{VERSION}"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        if workspace:
            headers["X-Compute-Workspace"] = workspace
        self.urls = split_urls(base_url)
        self._current = 0
        self._http = httpx.Client(headers=headers, timeout=timeout, transport=transport, limits=CLIENT_LIMITS)

    @property
    def base_url(self) -> str:
        """The URL the next request goes to first (the last one that answered)."""
        return self.urls[self._current]

    def close(self) -> None:
        self._http.close()

    def _send(self, method: str, path: str, send: Callable[[str], httpx.Response], *,
              resend: bool) -> httpx.Response:
        """``send(url)`` for each URL in turn from the current one until one answers with
        something other than 502/503/504; ``resend``: whether a request the previous URL may
        have seen can go to the next. Raises ``Unreachable`` when none answers."""
        failure = ""
        for step in range(len(self.urls)):
            index = (self._current + step) % len(self.urls)
            url = self.urls[index]
            try:
                response = send(url + path)
            except httpx.TransportError as exc:
                failure = f"cannot reach the coordinator at {url}: {exc}"
                if resend or isinstance(exc, NOT_SENT):
                    continue
                self._current = (index + 1) % len(self.urls)
                raise Unreachable(f"{failure} (not re-sent elsewhere: {method} without an Idempotency-Key "
                                  "may have been applied)") from exc
            if response.status_code in FAILOVER_STATUSES and step + 1 < len(self.urls):
                failure = f"{url} answered {response.status_code}"
                if resend:
                    response.close()
                    continue
            self._current = index
            return response
        if len(self.urls) > 1:
            failure = f"no coordinator of {', '.join(self.urls)} answered; last: {failure}"
        raise Unreachable(failure)

    def request(self, method: str, path: str, *, json_body: Any = None, params: Any = None,
                headers: dict[str, str] | None = None) -> Any:
        method = method.upper()
        resend = method in IDEMPOTENT_METHODS or any(k.lower() == "idempotency-key" for k in (headers or {}))
        response = self._send(method, path, lambda url: self._http.request(
            method, url, json=json_body, params=params, headers=headers), resend=resend)
        _raise_for_error(response)
        if response.status_code == 204:
            return None
        if response.headers.get("content-type", "").startswith("application/json"):
            return response.json()
        return response.text

    def _stream(self, path: str, *, params: Any = None,
                headers: dict[str, str] | None = None) -> AbstractContextManager[httpx.Response]:
        """A GET whose body is read as it arrives, from the first URL that answers its head."""
        def send(url: str) -> httpx.Response:
            request = self._http.build_request("GET", url, params=params, headers=headers,
                                               timeout=httpx.Timeout(15.0, read=60.0))
            return self._http.send(request, stream=True)
        response = self._send("GET", path, send, resend=True)
        return _closing(response)

    def stream_lines(self, path: str, params: Any = None) -> Iterator[str]:
        """Yield the lines of a streamed answer (JSON Lines) as they arrive, without holding it all."""
        try:
            with self._stream(path, params=params) as response:
                if response.status_code >= 400:
                    response.read()
                    _raise_for_error(response)
                yield from (line for line in response.iter_lines() if line)
        except httpx.TransportError as exc:
            raise Unreachable(f"lost the connection to {self.base_url}: {exc}") from exc

    def stream_events(self, path: str, last_event_id: str | None = None) -> Iterator[SseEvent]:
        """Yield Server-Sent Events until the server closes the stream."""
        headers = {"Accept": "text/event-stream"}
        if last_event_id is not None:
            headers["Last-Event-ID"] = last_event_id
        try:
            with self._stream(path, headers=headers) as response:
                if response.status_code >= 400:
                    response.read()
                    _raise_for_error(response)
                event, event_id = "message", None
                data: list[str] = []
                for line in response.iter_lines():
                    if line == "":
                        if data:
                            yield SseEvent(event, "\n".join(data), event_id)
                        event, data = "message", []
                    elif line.startswith(":"):
                        continue
                    else:
                        name, _, value = line.partition(":")
                        value = value[1:] if value.startswith(" ") else value
                        if name == "event":
                            event = value
                        elif name == "data":
                            data.append(value)
                        elif name == "id":
                            event_id = value
        except httpx.TransportError as exc:
            raise Unreachable(f"lost the connection to {self.base_url}: {exc}") from exc


class _closing(AbstractContextManager[httpx.Response]):
    """A streamed response, closed on leaving the ``with`` block."""

    def __init__(self, response: httpx.Response) -> None:
        self._response = response

    def __enter__(self) -> httpx.Response:
        return self._response

    def __exit__(self, *exc: object) -> None:
        self._response.close()


def _raise_for_error(response: httpx.Response) -> None:
    if response.status_code < 400:
        return
    try:
        error = response.json()["error"]
        raise ApiError(response.status_code, error["code"], error["message"], error.get("field"),
                       error.get("requestId"))
    except (ValueError, KeyError, TypeError, json.JSONDecodeError):
        raise ApiError(response.status_code, "http_error", response.text[:200] or response.reason_phrase) from None
