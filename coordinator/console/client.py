"""The console's way to the API: every read and change is a ``/v0`` request made in process.

The console holds no authority of its own. A page handler forwards the browser's cookie (the
session) and, for a change, the CSRF token the browser sent with its form, to the same ``/v0``
handler the CLI calls; that handler authenticates the session, checks the role and scopes the
query to the workspace, exactly as for a bearer token. The request goes through the whole app
(hooks included), so it is rate-limited, measured and audited like any other API call.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import httpx
from quart import current_app, request

from coordinator.auth import CSRF_HEADER
from coordinator.client_address import from_scope
from coordinator.context import services


@dataclass(frozen=True)
class ApiResult:
    status: int
    body: Any
    headers: httpx.Headers

    @property
    def ok(self) -> bool:
        return self.status < 400

    @property
    def error(self) -> str:
        """The error envelope's message (with its field), or a generic line."""
        if isinstance(self.body, dict) and isinstance(self.body.get("error"), dict):
            envelope = self.body["error"]
            field = envelope.get("field")
            message = str(envelope.get("message", "the request failed"))
            return f"{message} ({field})" if field and field not in message else message
        return f"the request failed with HTTP {self.status}"

    @property
    def code(self) -> str | None:
        if isinstance(self.body, dict) and isinstance(self.body.get("error"), dict):
            return str(self.body["error"].get("code"))
        return None


async def call_api(method: str, path: str, *, params: Any = None, body: Any = None, csrf: str | None = None,
                   workspace: str | None = None) -> ApiResult:
    """``method path`` against this app's ``/v0`` as the browser's session.

    ``csrf`` is forwarded as ``X-CSRF-Token`` (the API checks it for changes); ``workspace``
    becomes ``X-Compute-Workspace``. The scheme and host are the browser's, so cookies the API
    sets (``Secure`` behind TLS) are the ones it would set for a direct call.
    """
    headers = {"Accept": "application/json"}
    cookie = request.headers.get("Cookie")
    if cookie:
        headers["Cookie"] = cookie
    if csrf is not None:
        headers[CSRF_HEADER] = csrf
    if workspace is not None:
        headers["X-Compute-Workspace"] = workspace
    # The browser's address as the API would see it from the balancer (``client_address``): the
    # in-process call carries no X-Forwarded-For, so its peer must already be the client.
    address = from_scope(request.scope, services().settings.trusted_proxies)
    client_address = (address or "127.0.0.1", 0)
    transport = httpx.ASGITransport(app=current_app._get_current_object(), client=client_address)  # type: ignore[attr-defined]
    base = f"{request.scheme}://{request.host}"
    async with httpx.AsyncClient(transport=transport, base_url=base) as client:
        response = await client.request(method, path, params=params, json=body, headers=headers)
    parsed: Any = None
    if response.content:
        try:
            parsed = response.json()
        except (ValueError, json.JSONDecodeError):
            parsed = response.text
    return ApiResult(response.status_code, parsed, response.headers)
