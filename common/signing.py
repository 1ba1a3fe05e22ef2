"""Webhook signatures: how the coordinator signs a delivery and how a receiver checks it.

Header ``X-Compute-Signature: t=<unix seconds>,v1=<hex>[,v1=<hex>...]`` where each ``v1`` is
``HMAC-SHA256(key=secret as UTF-8, msg=f"{t}." + raw body bytes)``, one per secret that is
valid at send time (two during the 24 h after a rotation). A receiver accepts a delivery when
any ``v1`` matches its secret and ``t`` is within ``tolerance`` seconds of its own clock,
which bounds how long a captured request can be replayed; it de-duplicates on
``X-Compute-Event-Id`` because delivery is at least once.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable

SIGNATURE_HEADER = "X-Compute-Signature"
EVENT_ID_HEADER = "X-Compute-Event-Id"
DEFAULT_TOLERANCE_SECONDS = 300


class SignatureError(Exception):
    """The signature header is missing, malformed, stale, or matches none of the secrets."""


def compute_v1(secret: str, timestamp: int, body: bytes) -> str:
    """The hex HMAC-SHA256 of ``"<timestamp>." + body`` under ``secret``."""
    message = str(timestamp).encode() + b"." + body
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def signature_header(secrets: Iterable[str], timestamp: int, body: bytes) -> str:
    """``t=<timestamp>,v1=...`` with one ``v1`` per secret, in the order given."""
    parts = [f"t={timestamp}"] + [f"v1={compute_v1(secret, timestamp, body)}" for secret in secrets]
    if len(parts) == 1:
        raise ValueError("at least one secret is needed to sign")
    return ",".join(parts)


def parse_signature_header(header: str) -> tuple[int, list[str]]:
    """Split a header into its timestamp and its ``v1`` signatures (unknown schemes are ignored).

    Raises ``SignatureError`` when there is no integer ``t`` or no ``v1``.
    """
    timestamp: int | None = None
    signatures: list[str] = []
    for part in header.split(","):
        key, sep, value = part.strip().partition("=")
        if not sep:
            continue
        if key == "t":
            try:
                timestamp = int(value)
            except ValueError as exc:
                raise SignatureError("the signature timestamp is not an integer") from exc
        elif key == "v1":
            signatures.append(value)
    if timestamp is None:
        raise SignatureError("the signature header has no timestamp")
    if not signatures:
        raise SignatureError("the signature header has no v1 signature")
    return timestamp, signatures


def verify(header: str | None, body: bytes, secret: str, *, now: float,
           tolerance: int = DEFAULT_TOLERANCE_SECONDS) -> int:
    """Check a delivery's signature against ``secret``; return its timestamp.

    ``now`` is the receiver's clock in Unix seconds. Raises ``SignatureError`` when the
    header is absent or malformed, the timestamp is more than ``tolerance`` seconds away
    from ``now``, or no ``v1`` matches. Comparisons are constant-time.
    """
    if not header:
        raise SignatureError(f"the {SIGNATURE_HEADER} header is missing")
    timestamp, signatures = parse_signature_header(header)
    if abs(now - timestamp) > tolerance:
        raise SignatureError("the signature timestamp is outside the tolerance")
    expected = compute_v1(secret, timestamp, body)
    if not any(hmac.compare_digest(expected, candidate) for candidate in signatures):
        raise SignatureError("no signature matches the secret")
    return timestamp
