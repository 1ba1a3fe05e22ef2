"""What the agent and the CLI share when they are given several coordinator URLs (replicas)."""

from __future__ import annotations

from collections.abc import Sequence

import httpx

# Answers that say "this replica (or the proxy's backend) cannot serve now; another may".
FAILOVER_STATUSES = frozenset({502, 503, 504})
# Errors raised before a byte of the request reached a server: safe to send anywhere else.
NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout)


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
