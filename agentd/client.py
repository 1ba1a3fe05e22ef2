"""The agent's typed client for the agent protocol. The transport is injectable (tests and
benchmarks pass ``httpx.MockTransport`` or an ASGI transport); library errors are
translated here into two outcomes the daemon cares about: try again later, or give up."""

from __future__ import annotations

from typing import Any

import httpx

from common import API_VERSION, VERSION, protocol
from common.protocol import (
    Assignment,
    CapacityMsg,
    ClaimRequest,
    EventsResponse,
    HeartbeatRequest,
    HeartbeatResponse,
    RegisterRequest,
    RegisterResponse,
    ReleaseRequest,
)


class CoordinatorUnavailable(Exception):
    """Cannot reach the coordinator, or it answered 5xx: retry with backoff."""


class CoordinatorRejected(Exception):
    """The coordinator refused the request (4xx): retrying the same thing will not help."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code


class CoordinatorClient:
    def __init__(self, base_url: str, *, transport: httpx.AsyncBaseTransport | None = None,
                 timeout: float = 10.0) -> None:
        self._http = httpx.AsyncClient(
            base_url=base_url, transport=transport, timeout=timeout,
            headers={"X-Compute-API-Version": API_VERSION, "User-Agent": f"tanvrit-agentd/{VERSION}"},
        )
        self._token: str | None = None

    def set_token(self, token: str) -> None:
        self._token = token

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _post(self, path: str, body: Any, *, token: str | None = None,
                    read_timeout: float | None = None) -> httpx.Response:
        bearer = token or self._token
        headers = {"Authorization": f"Bearer {bearer}"} if bearer else {}
        try:
            response = await self._http.post(
                path, content=body.model_dump_json(), headers={**headers, "Content-Type": "application/json"},
                timeout=read_timeout if read_timeout is not None else httpx.USE_CLIENT_DEFAULT,
            )
        except httpx.HTTPError as exc:
            raise CoordinatorUnavailable(f"{type(exc).__name__}: {exc}") from exc
        if response.status_code >= 500:
            raise CoordinatorUnavailable(f"coordinator answered {response.status_code}")
        if response.status_code >= 400:
            try:
                error = response.json()["error"]
                code, message = str(error["code"]), str(error["message"])
            except (ValueError, KeyError, TypeError):
                code, message = "http_error", response.text[:200]
            raise CoordinatorRejected(response.status_code, code, message)
        return response

    async def register(self, registration_token: str, request: RegisterRequest) -> RegisterResponse:
        response = await self._post(protocol.REGISTER_PATH, request, token=registration_token)
        return RegisterResponse.model_validate_json(response.content)

    async def heartbeat(self, beat: HeartbeatRequest) -> HeartbeatResponse:
        # A held heartbeat may take up to ``waitSeconds`` to be answered.
        response = await self._post(protocol.HEARTBEAT_PATH, beat,
                                    read_timeout=beat.waitSeconds + 15 if beat.waitSeconds else None)
        return HeartbeatResponse.model_validate_json(response.content)

    async def claim(self, free: CapacityMsg, defaults: CapacityMsg, wait_seconds: float) -> Assignment | None:
        request = ClaimRequest(free=free, defaults=defaults, waitSeconds=wait_seconds)
        response = await self._post(protocol.CLAIM_PATH, request, read_timeout=wait_seconds + 15)
        if response.status_code == 204:
            return None
        return Assignment.model_validate_json(response.content)

    async def release(self, job_id: str, epoch: int) -> None:
        """Hand an assignment the agent cannot use back to the queue."""
        await self._post(protocol.RELEASE_PATH, ReleaseRequest(jobId=job_id, epoch=epoch))

    async def goodbye(self) -> None:
        """Tell the coordinator this agent exits cleanly (it shows it DOWN at once)."""
        await self._post(protocol.GOODBYE_PATH, protocol.GoodbyeRequest())

    async def send_events(self, batch: protocol.EventBatch) -> EventsResponse:
        response = await self._post(protocol.EVENTS_PATH, batch)
        return EventsResponse.model_validate_json(response.content)
