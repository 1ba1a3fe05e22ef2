"""A small synchronous client for the public API; errors become ``ApiError`` or
``Unreachable`` with messages fit to print."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx

from common import API_VERSION, VERSION
from common.errors import ApiError


class Unreachable(Exception):
    """The coordinator could not be reached at all."""


@dataclass(frozen=True)
class SseEvent:
    event: str
    data: str
    id: str | None


class ApiClient:
    def __init__(self, base_url: str, token: str | None, *, timeout: float = 15.0,
                 workspace: str | None = None) -> None:
        headers = {"X-Compute-API-Version": API_VERSION, "User-Agent": f"tanvrit-compute/{VERSION}"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        if workspace:
            headers["X-Compute-Workspace"] = workspace
        self.base_url = base_url.rstrip("/")
        self._http = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def request(self, method: str, path: str, *, json_body: Any = None, params: Any = None,
                headers: dict[str, str] | None = None) -> Any:
        try:
            response = self._http.request(method, path, json=json_body, params=params, headers=headers)
        except httpx.TransportError as exc:
            raise Unreachable(f"cannot reach the coordinator at {self.base_url}: {exc}") from exc
        _raise_for_error(response)
        if response.status_code == 204:
            return None
        if response.headers.get("content-type", "").startswith("application/json"):
            return response.json()
        return response.text

    def stream_lines(self, path: str, params: Any = None) -> Iterator[str]:
        """Yield the lines of a streamed answer (JSON Lines) as they arrive, without holding it all."""
        try:
            with self._http.stream("GET", path, params=params, timeout=httpx.Timeout(15.0, read=60.0)) as response:
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
            with self._http.stream("GET", path, headers=headers, timeout=httpx.Timeout(15.0, read=60.0)) as response:
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


def _raise_for_error(response: httpx.Response) -> None:
    if response.status_code < 400:
        return
    try:
        error = response.json()["error"]
        raise ApiError(response.status_code, error["code"], error["message"], error.get("field"),
                       error.get("requestId"))
    except (ValueError, KeyError, TypeError, json.JSONDecodeError):
        raise ApiError(response.status_code, "http_error", response.text[:200] or response.reason_phrase) from None
