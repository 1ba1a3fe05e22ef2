"""What the agent and the CLI share when they are given several coordinator URLs (replicas)."""

from __future__ import annotations

from collections.abc import Sequence

import httpx

# Answers that say "this replica (or the proxy's backend) cannot serve now; another may".
FAILOVER_STATUSES = frozenset({502, 503, 504})
# Errors raised before a byte of the request reached a server: safe to send anywhere else.
NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout)
# A pooled connection is not reused after this long idle. The coordinator closes one idle for
# ``[server] idle_timeout_seconds`` (5 s by default); a client keeping it exactly as long (httpx's
# default is also 5 s) sometimes sends its next request as the server closes it, and gets
# "server disconnected" for a request the server never read. Well under the server's bound,
# the client always closes first.
KEEPALIVE_SECONDS = 2.0
CLIENT_LIMITS = httpx.Limits(keepalive_expiry=KEEPALIVE_SECONDS)


def split_urls(given: str | Sequence[str]) -> list[str]:
    """The base URLs in ``given`` (one URL, a comma list, or a sequence of either), in order,
    without trailing slashes or duplicates. Raises ``ValueError`` when there is none."""
    parts = [given] if isinstance(given, str) else list(given)
    urls: list[str] = []
    for part in parts:
        for url in part.split(","):
            url = url.strip().rstrip("/")
            if url and url not in urls:
                urls.append(url)
    if not urls:
        raise ValueError("no coordinator URL given")
    return urls
