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


_PREFIX = {
    TokenKind.PAT: "tcp_pat_",
    TokenKind.AGENT: "tcp_agt_",
    TokenKind.REGISTRATION: "tcp_reg_",
    TokenKind.ACCESS: "tcp_oat_",
    TokenKind.REFRESH: "tcp_ort_",
}


def generate_token(kind: TokenKind) -> str:
    return _PREFIX[kind] + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def hashes_equal(left: str, right: str) -> bool:
    return hmac.compare_digest(left.encode(), right.encode())


def kind_of(token: str) -> TokenKind | None:
    for kind, prefix in _PREFIX.items():
        if token.startswith(prefix):
            return kind
    return None
