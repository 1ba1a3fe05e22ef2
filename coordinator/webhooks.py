"""Webhook decisions, pure: event types, payloads, secrets, the retry schedule, URL safety.

The delivery loop that carries these out is ``coordinator.webhook_delivery``; the outbox
rows are queued by ``coordinator.services.webhook_events`` in the same transaction as the
state change that causes them.
"""

from __future__ import annotations

import ipaddress
import json
import random
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import trio

from common.config import ConfigError
from common.errors import Unprocessable

JOB_CREATED = "job.created"
JOB_TRANSITIONED = "job.transitioned"
JOB_TERMINAL = "job.terminal"
SOFT_CAP_REACHED = "billing.soft_cap_reached"
EVENT_TYPES = (JOB_CREATED, JOB_TRANSITIONED, JOB_TERMINAL, SOFT_CAP_REACHED)

ROTATION_OVERLAP_MS = 24 * 3600 * 1000
MAX_URL_LENGTH = 2048


@dataclass(frozen=True)
class DeliveryConfig:
    """How the delivery worker behaves; every figure is configurable (``[webhooks]``)."""

    timeout_seconds: float = 10.0
    retry_base_seconds: float = 5.0
    retry_max_seconds: float = 3600.0
    retry_window_seconds: float = 24 * 3600.0
    per_endpoint_concurrency: int = 4
    max_in_flight: int = 64
    poll_seconds: float = 5.0


def new_secret() -> str:
    return "whsec_" + secrets.token_urlsafe(32)


def event_body(event_id: str, event_type: str, created_at: str, data: dict[str, Any]) -> bytes:
    """The exact bytes sent (and signed) for every attempt of this event."""
    return json.dumps({"id": event_id, "type": event_type, "createdAt": created_at, "data": data},
                      separators=(",", ":")).encode()


# --- retries --------------------------------------------------------------------------------

@dataclass(frozen=True)
class RetryDecision:
    give_up: bool
    next_attempt_at: int | None  # ms; None when giving up


def retry_after_failure(attempts: int, first_queued_at: int, now: int, config: DeliveryConfig,
                        rng: random.Random) -> RetryDecision:
    """After the ``attempts``-th failed attempt: wait ``base * 2^(attempts-1)`` (capped), jittered
    uniformly over its upper half so that retries of many deliveries spread out; give up once
    the next attempt would fall past ``retry_window_seconds`` after the event was queued."""
    ceiling = min(config.retry_base_seconds * 2 ** min(attempts - 1, 40), config.retry_max_seconds)
    # Strictly under the ceiling (by 1 ms): the wake-up is scheduled on a clock whose readings
    # are rounded to the microsecond, so a delay of exactly the ceiling could come out a hair
    # over it (retry_max_seconds is a cap the gap between attempts must never pass).
    delay_ms = min(int(rng.uniform(ceiling / 2, ceiling) * 1000), int(ceiling * 1000) - 1)
    next_at = now + max(delay_ms, 1)
    if next_at > first_queued_at + int(config.retry_window_seconds * 1000):
        return RetryDecision(True, None)
    return RetryDecision(False, next_at)


# --- URL safety -----------------------------------------------------------------------------

Resolver = Callable[[str, int], Awaitable[list[str]]]

# Cloud metadata endpoints, refused even when private addresses are allowed.
_METADATA = {ipaddress.ip_address("169.254.169.254"), ipaddress.ip_address("fd00:ec2::254"),
             ipaddress.ip_address("100.100.100.200")}


_NAT64 = ipaddress.ip_network("64:ff9b::/96")  # RFC 6052 well-known prefix: the IPv4 address is the last 32 bits
_NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")  # RFC 8215 local-use: always inside someone's network
_IPV4_COMPATIBLE = ipaddress.ip_network("::/96")  # deprecated ::a.b.c.d


def embedded_ipv4(ip: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """The IPv4 addresses an IPv6 address reaches through a translator or tunnel: mapped
    (``::ffff:a.b.c.d``), IPv4-compatible (``::a.b.c.d``), NAT64 (``64:ff9b::a.b.c.d``), 6to4
    (``2002:aabb:ccdd::``) and Teredo (server and client)."""
    found = []
    if ip.ipv4_mapped is not None:
        found.append(ip.ipv4_mapped)
    if ip in _NAT64 or (ip in _IPV4_COMPATIBLE and int(ip) > 1):  # :: and ::1 are not IPv4 addresses
        found.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    if ip.sixtofour is not None:
        found.append(ip.sixtofour)
    if ip.teredo is not None:
        found.extend(ip.teredo)
    return found


def address_problem(address: str, *, allow_private: bool) -> str | None:
    """Why a webhook may not be sent to ``address``, or None if it may. An IPv6 address that
    embeds an IPv4 one (see ``embedded_ipv4``) is judged by both: a NAT64 gateway or 6to4
    relay would deliver to the embedded address."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address):
        if ip in _NAT64_LOCAL and not allow_private:
            return "a private address"
        for inner in embedded_ipv4(ip):
            problem = _problem(inner, allow_private=allow_private)
            if problem is not None:
                return f"{problem} ({inner} embedded in an IPv6 address)"
    return _problem(ip, allow_private=allow_private)


def _problem(ip: ipaddress.IPv4Address | ipaddress.IPv6Address, *, allow_private: bool) -> str | None:
    if ip in _METADATA:
        return "a cloud metadata address"
    if ip.is_link_local:
        return "a link-local address"
    if ip.is_unspecified or ip.is_multicast:
        return "not a unicast address"
    if ip.is_loopback:
        return None if allow_private else "a loopback address"
    if ip.is_private or not ip.is_global:
        return None if allow_private else "a private address"
    return None


async def check_url(url: str, *, allow_private: bool, resolve: Resolver) -> list[str]:
    """Refuse (``Unprocessable``, field ``url``) a URL that is not http(s), or any of whose
    addresses is loopback, private, link-local or a metadata endpoint (loopback and private
    are accepted with ``allow_private``). ``resolve(host, port)`` returns IP address strings.

    Returns the vetted addresses, so that the caller connects to one of them rather than
    resolving the name again (which could answer differently: DNS rebinding)."""
    if len(url) > MAX_URL_LENGTH:
        raise Unprocessable(f"url must be at most {MAX_URL_LENGTH} characters", field="url")
    try:
        parts = urlsplit(url)
        port = parts.port if parts.port is not None else (443 if parts.scheme == "https" else 80)
    except ValueError as exc:
        raise Unprocessable("url is not a valid URL", field="url") from exc
    if port == 0:
        raise Unprocessable("url port must be between 1 and 65535", field="url")
    if parts.scheme not in ("http", "https"):
        raise Unprocessable("url must be an http or https URL", field="url")
    host = parts.hostname
    if not host:
        raise Unprocessable("url has no host", field="url")
    if parts.username or parts.password:
        raise Unprocessable("url must not carry credentials", field="url")
    try:
        addresses = [str(ipaddress.ip_address(host))]
    except ValueError:
        try:
            addresses = await resolve(host, port)
        except (OSError, UnicodeError) as exc:  # UnicodeError: a name IDNA cannot encode (a label over 63)
            raise Unprocessable(f"url host {host!r} does not resolve", field="url") from exc
    if not addresses:
        raise Unprocessable(f"url host {host!r} does not resolve", field="url")
    for address in addresses:
        problem = address_problem(address, allow_private=allow_private)
        if problem is not None:
            hint = "" if allow_private or "metadata" in problem or "link-local" in problem else (
                "; a coordinator started with --allow-private-webhooks (or webhooks.allow_private) accepts it")
            raise Unprocessable(f"url host {host!r} resolves to {address}, {problem}{hint}", field="url")
    return addresses


def pinned_request(url: str, address: str) -> tuple[str, dict[str, str], dict[str, Any]]:
    """``url`` rewritten to connect to ``address``: the new URL, the ``Host`` header naming the
    original host, and for https the SNI name, so the certificate is still checked against it."""
    parts = urlsplit(url)
    literal = f"[{address}]" if ":" in address else address
    netloc = literal if parts.port is None else f"{literal}:{parts.port}"
    host_header = parts.netloc.rsplit("@", 1)[-1]
    extensions: dict[str, Any] = {"sni_hostname": parts.hostname} if parts.scheme == "https" else {}
    return urlunsplit((parts.scheme, netloc, parts.path or "/", parts.query, "")), {"Host": host_header}, extensions


async def resolve_with_trio(host: str, port: int) -> list[str]:
    """The real resolver: every address ``host`` resolves to."""
    infos = await trio.socket.getaddrinfo(host, port, type=trio.socket.SOCK_STREAM)
    return sorted({str(info[4][0]) for info in infos})


DELIVERY_KEYS = {
    "timeout_seconds": float, "retry_base_seconds": float, "retry_max_seconds": float,
    "retry_window_seconds": float, "per_endpoint_concurrency": int, "max_in_flight": int, "poll_seconds": float,
}


def delivery_config_from_toml(table: dict[str, Any], source: str = "config") -> DeliveryConfig:
    """Read the delivery options of the ``[webhooks]`` table (``allow_private`` is read elsewhere)."""
    unknown = set(table) - set(DELIVERY_KEYS) - {"allow_private"}
    if unknown:
        raise ConfigError(f"{source}: unknown option(s) webhooks.{', webhooks.'.join(sorted(unknown))}")
    values: dict[str, Any] = {}
    for key, kind in DELIVERY_KEYS.items():
        if key not in table:
            continue
        value = table[key]
        wrong_kind = kind is int and not isinstance(value, int)
        if isinstance(value, bool) or not isinstance(value, int | float) or wrong_kind:
            raise ConfigError(f"{source}: webhooks.{key} must be a {'whole ' if kind is int else ''}number")
        if value <= 0:
            raise ConfigError(f"{source}: webhooks.{key} must be above zero")
        values[key] = kind(value)
    return DeliveryConfig(**values)
