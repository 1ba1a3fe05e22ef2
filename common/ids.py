"""Identifiers: a type prefix, ``_``, then a lowercase 26-character ULID (sortable by time)."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Literal

from ulid import ULID

IdPrefix = Literal["job", "agt", "ws", "usr", "whk", "evt", "inv", "pat", "req", "tok", "mbr", "aud", "arr"]

_ID_RE = re.compile(r"^(?P<prefix>[a-z]+)_(?P<ulid>[0-9a-hjkmnp-tv-z]{26})$")


def new_id(prefix: IdPrefix, at: datetime | None = None) -> str:
    """A fresh id; ``at`` sets the time part so that ids sort with the injected clock."""
    ulid = ULID() if at is None else ULID.from_timestamp(at.timestamp())
    return f"{prefix}_{str(ulid).lower()}"


def new_ids(prefix: IdPrefix, count: int, at: datetime | None = None) -> list[str]:
    """``count`` fresh ids that sort in the order given: one ULID, then its successors (the
    random part counts up, as a monotonic ULID generator does). Job array tasks use it so that
    their ids, and the claim's oldest-first order, follow their indexes."""
    first = int(ULID() if at is None else ULID.from_timestamp(at.timestamp()))
    return [f"{prefix}_{str(ULID.from_int(first + offset)).lower()}" for offset in range(count)]


def id_millis(value: str) -> int | None:
    """The time part of an id made by ``new_id`` (Unix milliseconds), None for any other text."""
    match = _ID_RE.match(value)
    if match is None:
        return None
    try:
        return int(ULID.from_str(match.group("ulid").upper()).milliseconds)
    except ValueError:
        return None


def has_prefix(value: str, prefix: IdPrefix) -> bool:
    match = _ID_RE.match(value)
    return match is not None and match.group("prefix") == prefix
