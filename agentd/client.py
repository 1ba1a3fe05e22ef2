"""The agent's typed client for the agent protocol. The transport is injectable (tests and
benchmarks pass ``httpx.MockTransport`` or an ASGI transport); library errors are
translated here into two outcomes the daemon cares about: try again later, or give up.

Several coordinator URLs (replicas of one cluster, or load balancers in front of it) are
tried in turn: a connection error, a timeout or a 502/503/504 moves the request to the next
URL, and the client stays with the first that answers. Registration is the one request that
is not safe to send twice (it creates an agent), so it moves on only when the request surely
never left (the connection could not be made); every other agent request is safe to repeat:
heartbeats and releases are idempotent, events carry sequence numbers the coordinator
de-duplicates, and an assignment whose answer was lost is requeued by its lease."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import httpx
import structlog

from common import API_VERSION, VERSION, protocol
from common.failover import CLIENT_LIMITS, FAILOVER_STATUSES, NOT_SENT
from common.failover import split_urls as coordinator_urls
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


log = structlog.get_logger("tanvrit.agentd")



class CoordinatorClient:
    def __init__(self, base_url: str | Sequence[str], *, transport: httpx.AsyncBaseTransport | None = None,
                 timeout: float = 10.0) -> None:
        self.urls = coordinator_urls(base_url)
        self._current = 0
        self._http = httpx.AsyncClient(
            transport=transport, timeout=timeout, limits=CLIENT_LIMITS,
            headers={"X-Compute-API-Version": API_VERSION, "User-Agent": f"tanvrit-agentd/{VERSION}"},
        )
        self._token: str | None = None

    @property
    def current_url(self) -> str:
        """The URL the next request goes to first (the last one that answered)."""
        return self.urls[self._current]

    def set_token(self, token: str) -> None:
        self._token = token

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _post(self, path: str, body: Any, *, token: str | None = None,
                    read_timeout: float | None = None, resend: bool = True) -> httpx.Response:
        """POST ``body`` to the current URL, failing over to the others in order. ``resend``:
        whether the request may reach a second coordinator after the first may have seen it."""
        bearer = token or self._token
        headers = {"Authorization": f"Bearer {bearer}"} if bearer else {}
        content = body.model_dump_json()
        failure = ""
        for step in range(len(self.urls)):
            index = (self._current + step) % len(self.urls)
            try:
                response = await self._http.post(
                    self.urls[index] + path, content=content,
                    headers={**headers, "Content-Type": "application/json"},
                    timeout=read_timeout if read_timeout is not None else httpx.USE_CLIENT_DEFAULT,
                )
            except httpx.HTTPError as exc:
                failure = f"{self.urls[index]}: {type(exc).__name__}: {exc}"
                if resend or isinstance(exc, NOT_SENT):
                    continue
                self._current = (index + 1) % len(self.urls)
                raise CoordinatorUnavailable(failure) from exc
            if response.status_code in FAILOVER_STATUSES:
                failure = f"{self.urls[index]} answered {response.status_code}"
                if resend:
                    continue
                self._current = (index + 1) % len(self.urls)
                raise CoordinatorUnavailable(failure)
            if index != self._current:
                # Said once per move, not per request: the client stays with this URL.
                log.warning("coordinator failed; using the next one", failed=self.urls[self._current],
                            now_using=self.urls[index], error=failure)
            self._current = index
            return _checked(response)
        raise CoordinatorUnavailable(failure if len(self.urls) == 1 else f"no coordinator answered; last: {failure}")

    async def register(self, registration_token: str, request: RegisterRequest) -> RegisterResponse:
        response = await self._post(protocol.REGISTER_PATH, request, token=registration_token, resend=False)
        return RegisterResponse.model_validate_json(response.content)

    async def heartbeat(self, beat: HeartbeatRequest) -> HeartbeatResponse:
        # A held heartbeat may take up to ``waitSeconds`` to be answered, and is not re-sent to
        # another coordinator once one may have seen it: its running-jobs list may be a minute
        # old by then, and a replica taking it would hand back jobs assigned since (a job
        # ASSIGNED to this agent and missing from the list). The daemon's loop sends a fresh beat.
        response = await self._post(protocol.HEARTBEAT_PATH, beat,
                                    read_timeout=beat.waitSeconds + 15 if beat.waitSeconds else None,
                                    resend=not beat.waitSeconds)
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


def _checked(response: httpx.Response) -> httpx.Response:
    """``response`` if it is a success; else the error the daemon acts on."""
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
