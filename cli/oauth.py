"""Short-lived OAuth access tokens from ``POST /v0/oauth/token`` (spec: 15-minute lifetime).

Isolated on purpose: a profile that holds a refresh token (from ``auth login --invitation``)
or client credentials, instead of a PAT, gets its bearer token from here; invitation codes are
redeemed here, and ``auth print-token`` exchanges a PAT here; nothing else in the CLI knows
about OAuth.

The request follows RFC 6749 (section 6 for ``refresh_token``, 4.4 for ``client_credentials``):
a form-encoded body, and a JSON answer ``{"access_token", "token_type", "expires_in",
"refresh_token"?}``. camelCase names (``accessToken``, ``expiresIn``, ``refreshToken``) are
accepted too, since the rest of the API speaks camelCase. A returned refresh token replaces the
stored one (rotation). Errors come back as the API's error envelope or as RFC 6749's
``{"error", "error_description"}``; both become ``ApiError``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import httpx

from cli.api import Unreachable
from common.clock import parse_rfc3339, to_rfc3339
from common.errors import ApiError

TOKEN_PATH = "/v0/oauth/token"
REDEEM_PATH = "/v0/invitations:redeem"
# Refresh this long before expiry, so that a token printed by `auth print-token` still works
# for the command the user runs with it; at most half the token's lifetime, so that a coordinator
# configured with very short-lived tokens does not make every cached token look stale.
REFRESH_MARGIN = timedelta(seconds=60)


@dataclass(frozen=True)
class AccessToken:
    token: str
    expires_at: datetime
    refresh_token: str | None


def has_oauth_credentials(profile: Mapping[str, Any]) -> bool:
    return bool(profile.get("refresh_token") or (profile.get("client_id") and profile.get("client_secret")))


def refresh_margin(issued_at: datetime | None, expires_at: datetime) -> timedelta:
    """``REFRESH_MARGIN``, or half the token's lifetime when that is shorter."""
    if issued_at is None or issued_at >= expires_at:
        return REFRESH_MARGIN
    return min(REFRESH_MARGIN, (expires_at - issued_at) / 2)


def cached_token(profile: Mapping[str, Any], now: datetime) -> str | None:
    """The stored access token if it is still good for at least its refresh margin, else ``None``."""
    token, expires = profile.get("access_token"), profile.get("access_token_expires_at")
    if not token or not expires:
        return None
    try:
        expires_at = parse_rfc3339(str(expires))
        issued = profile.get("access_token_issued_at")
        issued_at = parse_rfc3339(str(issued)) if issued else None
    except ValueError:
        return None
    return str(token) if expires_at - refresh_margin(issued_at, expires_at) > now else None


def grant_for(profile: Mapping[str, Any]) -> dict[str, str]:
    """The form body that asks for a new access token with what the profile holds."""
    if profile.get("refresh_token"):
        return {"grant_type": "refresh_token", "refresh_token": str(profile["refresh_token"])}
    if profile.get("client_id") and profile.get("client_secret"):
        return {"grant_type": "client_credentials", "client_id": str(profile["client_id"]),
                "client_secret": str(profile["client_secret"])}
    raise ValueError("the profile holds no OAuth credentials")


def request_token(http: httpx.Client, grant: Mapping[str, str], now: datetime) -> AccessToken:
    """POST the grant to the token endpoint. Raises ``ApiError`` or ``Unreachable``."""
    response, body = _post(http, TOKEN_PATH, data=dict(grant))
    if response.status_code >= 400 or not isinstance(body, dict):
        raise _token_error(response, body)
    token = body.get("access_token") or body.get("accessToken")
    expires_in = body.get("expires_in", body.get("expiresIn"))
    if not isinstance(token, str) or not isinstance(expires_in, int | float):
        raise ApiError(response.status_code, "invalid_token_response",
                       "the token endpoint answered without access_token and expires_in")
    refresh = body.get("refresh_token") or body.get("refreshToken")
    return AccessToken(token, now + timedelta(seconds=float(expires_in)), refresh if isinstance(refresh, str) else None)


def _post(http: httpx.Client, path: str, **kwargs: Any) -> tuple[httpx.Response, Any]:
    try:
        response = http.post(path, headers={"Accept": "application/json"}, **kwargs)
    except httpx.TransportError as exc:
        raise Unreachable(f"cannot reach the coordinator at {http.base_url}: {exc}") from exc
    try:
        body: Any = response.json()
    except ValueError:
        body = None
    return response, body


@dataclass(frozen=True)
class Redeemed:
    user_id: str
    workspace_id: str
    role: str
    token: AccessToken


def redeem_invitation(http: httpx.Client, code: str, now: datetime) -> Redeemed:
    """``POST /v0/invitations:redeem``: a one-time invitation code for the invitee's first refresh
    and access tokens. Raises ``ApiError`` (e.g. ``invalid_invitation``) or ``Unreachable``."""
    response, body = _post(http, REDEEM_PATH, json={"code": code})
    if response.status_code >= 400 or not isinstance(body, dict):
        raise _token_error(response, body)
    try:
        token = body["token"]
        access = AccessToken(str(token["access_token"]), now + timedelta(seconds=float(token["expires_in"])),
                             str(token["refresh_token"]))
        return Redeemed(str(body["userId"]), str(body["workspaceId"]), str(body["role"]), access)
    except (KeyError, TypeError, ValueError):
        raise ApiError(response.status_code, "invalid_token_response",
                       "the coordinator redeemed the invitation but answered without tokens") from None


def token_updates(fresh: AccessToken, now: datetime) -> dict[str, str]:
    """The profile keys that store ``fresh`` (and its rotated refresh token, if any)."""
    updates = {"access_token": fresh.token, "access_token_expires_at": to_rfc3339(fresh.expires_at),
               "access_token_issued_at": to_rfc3339(now)}
    if fresh.refresh_token:
        updates["refresh_token"] = fresh.refresh_token
    return updates


def exchange_pat(http: httpx.Client, pat: str, now: datetime) -> AccessToken:
    """A short-lived access token for a personal access token (``client_credentials``, the PAT
    as client secret); it dies with the PAT."""
    return request_token(http, {"grant_type": "client_credentials", "client_secret": pat}, now)


def _token_error(response: httpx.Response, body: Any) -> ApiError:
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and "code" in error:
            return ApiError(response.status_code, str(error["code"]), str(error.get("message", "")),
                            error.get("field"), error.get("requestId"))
        if isinstance(error, str):
            return ApiError(response.status_code, error, str(body.get("error_description") or error))
    return ApiError(response.status_code, "http_error", response.text[:200] or response.reason_phrase)


def access_token(profile: Mapping[str, Any], http: httpx.Client, now: datetime) -> tuple[str, dict[str, str]]:
    """A valid access token for ``profile``, and the profile keys to store (empty if none changed).

    Uses the cached token while it has its refresh margin left, else asks the token endpoint.
    """
    cached = cached_token(profile, now)
    if cached is not None:
        return cached, {}
    fresh = request_token(http, grant_for(profile), now)
    return fresh.token, token_updates(fresh, now)
