"""Time behind an interface, so that leases, expiries and rate limits are testable.

All times are timezone-aware UTC ``datetime`` values; on the wire they are RFC 3339 with ``Z``.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime:
        """The current time, timezone-aware, in UTC."""
        ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)


class ManualClock:
    """A clock that moves only when told to; for tests."""

    def __init__(self, start: datetime | None = None) -> None:
        self._now = start or datetime(2026, 1, 1, tzinfo=UTC)

    def now(self) -> datetime:
        return self._now

    def advance(self, seconds: float) -> None:
        self._now += timedelta(seconds=seconds)

    def set(self, when: datetime) -> None:
        self._now = when


def to_rfc3339(moment: datetime) -> str:
    """``2026-04-26T09:13:21.123Z``: UTC, millisecond precision."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_rfc3339(text: str) -> datetime:
    """Parse an RFC 3339 timestamp; naive times are refused because they are ambiguous.

    Raises ``ValueError`` for anything else.
    """
    moment = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    if moment.tzinfo is None:
        raise ValueError("timestamp has no timezone offset")
    try:
        return moment.astimezone(UTC)
    except OverflowError as exc:  # 9999-12-31T23:59:59-14:00 is in year 10000 in UTC
        raise ValueError("timestamp is outside the years 1 to 9999 in UTC") from exc


def to_millis(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def from_millis(millis: int) -> datetime:
    return datetime.fromtimestamp(millis / 1000, UTC)


def millis_to_rfc3339(millis: int | None) -> str | None:
    return None if millis is None else to_rfc3339(from_millis(millis))
