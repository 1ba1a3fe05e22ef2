"""A short-lived, in-process cache of token and membership lookups on the request path.

Every authenticated request resolves its bearer token (``find_token``) and, for user calls, the
caller's membership of the active workspace (``membership``). Both change rarely and are read on
every request, so this process keeps what it read for at most ``ttl_seconds``
(``[auth] identity_cache_seconds``, default 1 s; 0 turns the cache off).

How a change is seen:

- on this process, at once: any request that may change a token or a membership (every
  mutating request other than the hot paths listed in ``coordinator.app``) empties the cache
  when it begins and again when it ends, so the request after a revocation, a role change or a
  member's removal reads the store afresh;
- a lookup that was in flight while the cache was emptied is not kept (the ``generation``
  check), so it cannot put back what the change made stale;
- on other replicas (issue 14) and after offline changes (``tanvrit-coordinator admin``), within
  ``ttl_seconds``: each entry expires, whatever happens. That bound is the documented delay of a
  revocation made elsewhere (``docs/security.md``); ``invalidate`` is the hook for a
  cross-replica notice that shortens it.

Only positive lookups are kept: a token that was not found is looked up again next time (a
token minted elsewhere works at once). Expiry and revocation are checked by the caller on the
cached record against the current clock, as they are on a fresh one.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable

_MAX_ENTRIES = 50_000


class IdentityCache:
    """Token records by hash and memberships by (workspace, user), each kept ``ttl_seconds``."""

    def __init__(self, ttl_seconds: float, monotonic: Callable[[], float] = time.monotonic) -> None:
        self.ttl_seconds = ttl_seconds
        self._monotonic = monotonic
        self.generation = 0
        self._entries: dict[Hashable, tuple[float, object]] = {}

    @property
    def enabled(self) -> bool:
        return self.ttl_seconds > 0

    def get(self, key: Hashable) -> object | None:
        """The value kept for ``key`` if it is younger than the bound, else None."""
        found = self._entries.get(key)
        if found is None:
            return None
        expires, value = found
        if self._monotonic() >= expires:
            del self._entries[key]
            return None
        return value

    def put(self, key: Hashable, value: object, generation: int) -> None:
        """Keep ``value``, read from the store after ``generation`` was current; dropped if the
        cache was emptied since (the read may predate the change that emptied it)."""
        if not self.enabled or generation != self.generation:
            return
        if len(self._entries) >= _MAX_ENTRIES:
            self._entries.clear()  # a flood of distinct tokens: start over rather than grow
        self._entries[key] = (self._monotonic() + self.ttl_seconds, value)

    def invalidate(self) -> None:
        """Forget everything (a token or membership may have changed)."""
        self.generation += 1
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)
