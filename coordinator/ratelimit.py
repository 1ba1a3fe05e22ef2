"""Per-workspace request rate limits: a pure decision (GCRA) plus an in-memory table of state.

A plan's limit is a sustained rate ``R``, a burst rate ``P`` and a burst duration ``T``. Two
GCRA cells ("virtual schedulers") must both accept a request:

- the sustained cell: one request per ``1/R`` s, with a tolerance of ``(P − R)·T / R`` s. From
  rest, requests arriving at exactly ``P`` per second are accepted for ``T`` seconds
  (``P·T + 1`` requests, the first at 0 s and the last at ``T``), and the next one is refused;
  at ``R`` per second or less, nothing is ever refused.
- the peak cell: one request per ``1/P`` s with a tolerance of ``1 s − 1/P``: up to ``P``
  requests may arrive in one instant, and no more than ``P`` per second follow.

Time is integer nanoseconds, so boundaries are exact and tests can step a manual clock to
the boundary and one nanosecond past it. GCRA keeps one number per cell, so the hot path is
two comparisons and a dictionary lookup; the state lives in the coordinator's memory
(a restart forgets it, which only ever errs in the caller's favour).

Several replicas (docs/architecture.md): each one enforces its share of every limit, the
limit divided by the replicas alive (``replicas``, counted from their announcements in the
database every few seconds; coordinator/leader.py). The request path stays a dictionary
lookup with no database round trip; the price is that a workspace whose traffic the load
balancer sends unevenly gets less than its whole limit (all of it on one replica: a share).
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from functools import lru_cache

from coordinator.settings import PlanLimit

NANOS = 1_000_000_000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Cells:
    """Theoretical arrival times (ns) of the sustained and peak cells."""

    sustained_tat: int
    peak_tat: int


@dataclass(frozen=True)
class Decision:
    allowed: bool
    limit: int  # sustained requests per second, for X-RateLimit-Limit
    remaining: int  # requests that would be accepted right now, after this one
    retry_after_seconds: int  # 0 when allowed
    cells: Cells


def _intervals(limit: PlanLimit) -> tuple[int, int, int, int]:
    sustained = round(NANOS / limit.rate)
    peak = round(NANOS / limit.burst_rate)
    sustained_tolerance = round((limit.burst_rate - limit.rate) * limit.burst_seconds * NANOS / limit.rate)
    peak_tolerance = max(0, NANOS - peak)  # below 1 req/s, no two requests at once
    return sustained, sustained_tolerance, peak, peak_tolerance


def _room(tat: int, now: int, interval: int, tolerance: int) -> int:
    """How many more requests this cell would accept at ``now``."""
    ahead = max(tat, now) - now
    if ahead > tolerance:
        return 0
    return (tolerance - ahead) // interval + 1


def decide(limit: PlanLimit, cells: Cells | None, now_ns: int) -> Decision:
    """Accept or refuse one request at ``now_ns``; the returned cells replace the old ones.

    A refused request does not change the state (it consumes nothing).
    """
    sustained, sustained_tolerance, peak, peak_tolerance = _intervals(limit)
    state = cells or Cells(now_ns, now_ns)
    s_tat = max(state.sustained_tat, now_ns)
    p_tat = max(state.peak_tat, now_ns)
    if s_tat - now_ns > sustained_tolerance or p_tat - now_ns > peak_tolerance:
        wait_ns = max(s_tat - sustained_tolerance - now_ns, p_tat - peak_tolerance - now_ns)
        return Decision(False, _shown(limit.rate), 0, max(1, math.ceil(wait_ns / NANOS)), state)
    after = Cells(s_tat + sustained, p_tat + peak)
    remaining = min(_room(after.sustained_tat, now_ns, sustained, sustained_tolerance),
                    _room(after.peak_tat, now_ns, peak, peak_tolerance))
    return Decision(True, _shown(limit.rate), remaining, 0, after)


def _shown(rate: float) -> int:
    return max(1, math.floor(rate))


@lru_cache(maxsize=256)
def share(limit: PlanLimit, replicas: int) -> PlanLimit:
    """One replica's part of ``limit`` when ``replicas`` enforce it together: the rates
    divided, the burst duration kept (a burst at the whole peak rate, spread evenly over the
    replicas, lasts as long as on one)."""
    if replicas <= 1:
        return limit
    return PlanLimit(limit.rate / replicas, limit.burst_rate / replicas, limit.burst_seconds)


def _one() -> int:
    return 1


def to_nanos(moment: datetime) -> int:
    """Exact integer nanoseconds since the epoch (a float timestamp would round)."""
    return (moment - _EPOCH) // timedelta(microseconds=1) * 1000


class RateLimiter:
    """The per-workspace table of cells. Not thread-safe; it runs on the coordinator's trio loop."""

    def __init__(self, limits: dict[str, PlanLimit | None], *, replicas: Callable[[], int] = _one) -> None:
        self._limits = limits
        self._cells: dict[str, Cells] = {}
        self._replicas = replicas

    def check(self, workspace_id: str, plan: str, now: datetime) -> Decision | None:
        """The decision for one request of ``workspace_id`` on ``plan``; None when the plan has no limit.

        With several replicas, this replica's share of the limit is enforced; the decision's
        ``limit`` (``X-RateLimit-Limit``) stays the workspace's whole sustained rate, and its
        ``remaining`` is this replica's."""
        limit = self._limits.get(plan)
        if limit is None:
            return None
        decision = decide(share(limit, self._replicas()), self._cells.get(workspace_id), to_nanos(now))
        if decision.limit != _shown(limit.rate):
            decision = replace(decision, limit=_shown(limit.rate))
        if decision.allowed:
            self._cells[workspace_id] = decision.cells
        return decision


class AddressLimiter:
    """Per-client-address cells for traffic that no workspace pays for: requests without
    credentials and requests whose credentials failed. IPv6 clients are keyed by their /64,
    which one host usually holds whole. The table is pruned of cells at rest when it grows, so
    many addresses cannot grow it without bound."""

    def __init__(self, limit: PlanLimit | None, *, max_entries: int = 100_000,
                 replicas: Callable[[], int] = _one) -> None:
        self._whole_limit = limit
        self._cells: dict[str, Cells] = {}
        self._max_entries = max_entries
        self._replicas = replicas

    @property
    def _limit(self) -> PlanLimit | None:
        """This replica's share of the per-address limit."""
        return None if self._whole_limit is None else share(self._whole_limit, self._replicas())

    @staticmethod
    def key(address: str | None) -> str:
        if not address:
            return "unknown"
        try:
            ip = ipaddress.ip_address(address.split("%", 1)[0])
        except ValueError:
            return address
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is None:
            return str(ipaddress.ip_network(f"{ip}/64", strict=False))
        return str(ip.ipv4_mapped or ip) if isinstance(ip, ipaddress.IPv6Address) else str(ip)

    def check(self, address: str | None, now: datetime, *, consume: bool) -> Decision | None:
        """The decision for one request from ``address``: ``consume`` counts it (an anonymous
        request, a failed authentication); otherwise only whether the address is over its
        limit right now. None when there is no limit."""
        if self._limit is None or (not consume and not self._cells):
            return None  # nothing counted yet: no address can be over its limit
        key = self.key(address)
        now_ns = to_nanos(now)
        state = self._cells.get(key)
        if not consume:
            if state is None:
                return None
            peek = decide(self._limit, state, now_ns)
            return None if peek.allowed else peek
        decision = decide(self._limit, state, now_ns)
        if decision.allowed:
            if len(self._cells) >= self._max_entries:
                self._prune(now_ns)
            self._cells[key] = decision.cells
        return decision

    def _prune(self, now_ns: int) -> None:
        for key in [k for k, cells in self._cells.items() if max(cells.sustained_tat, cells.peak_tat) <= now_ns]:
            del self._cells[key]
