"""Bearer tokens: 256 random bits with a readable kind prefix; only a hash is ever stored.

A SHA-256 of a 256-bit random secret cannot be brute-forced, so a slow password hash would
add latency to every request and no safety. Lookups go by hash; the final comparison is
constant-time anyway so that no code path compares secrets byte by byte.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from enum import StrEnum


class TokenKind(StrEnum):
    PAT = "pat"
    AGENT = "agent"
    REGISTRATION = "registration"
    ACCESS = "access"
    REFRESH = "refresh"
    INVITATION = "invitation"
    # A web-console sign-in: only ever sent as the HttpOnly session cookie, never as a bearer.
    SESSION = "session"


_PREFIX = {
    TokenKind.PAT: "tcp_pat_",
    TokenKind.AGENT: "tcp_agt_",
    TokenKind.REGISTRATION: "tcp_reg_",
    TokenKind.ACCESS: "tcp_oat_",
    TokenKind.REFRESH: "tcp_ort_",
    TokenKind.INVITATION: "tcp_inv_",
    TokenKind.SESSION: "tcp_ses_",
}


def prefix_of(kind: TokenKind) -> str:
    """The readable start of every secret of ``kind`` (``tcp_pat_``...), safe to show and log."""
    return _PREFIX[kind]


def generate_token(kind: TokenKind) -> str:
    """A new secret: the kind's prefix and 256 random bits (43 URL-safe characters)."""
    return _PREFIX[kind] + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    """The stored form of a secret (hex SHA-256)."""
    return hashlib.sha256(token.encode()).hexdigest()


def hashes_equal(left: str, right: str) -> bool:
    """Constant-time equality, so that timing reveals nothing about how much of a secret matched."""
    return hmac.compare_digest(left.encode(), right.encode())


def kind_of(token: str) -> TokenKind | None:
    for kind, prefix in _PREFIX.items():
        if token.startswith(prefix):
            return kind
    return None


def csrf_token_for(session_secret: str) -> str:
    """The CSRF token of a console session: an HMAC of the session secret, so the server keeps no
    second secret and the page (which may read this token) learns nothing that signs requests."""
    return hmac.new(session_secret.encode(), b"tanvrit-console-csrf", hashlib.sha256).hexdigest()
