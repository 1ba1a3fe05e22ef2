"""Identifiers: a type prefix, ``_``, then a lowercase 26-character ULID (sortable by time)."""

from __future__ import annotations

import os
import re
import threading
import time
from datetime import datetime
from typing import Literal

IdPrefix = Literal["job", "agt", "ws", "usr", "whk", "evt", "inv", "pat", "req", "tok", "mbr", "aud", "arr"]

_ID_RE = re.compile(r"^(?P<prefix>[a-z]+)_(?P<ulid>[0-9a-hjkmnp-tv-z]{26})$")

# The ULIDs are made here rather than by the ``ulid`` package's ``ULID()``: every request takes a
# request id and every submission two more, and its object, generator and encoder cost about
# 15 µs an id where this costs about 2 (docs/performance.md). The result is the same: 48 bits
# of milliseconds, then 80 random bits, and within one millisecond the random part counts up
# (the package's default "strict monotonic" policy), so that ids made in the same millisecond
# sort in the order they were made (a claim takes the oldest job first by id).
_RANDOM_BITS = 80
_MAX_RANDOM = (1 << _RANDOM_BITS) - 1
_MAX_MILLIS = (1 << 48) - 1
# Crockford's base 32, lowercase (what ULIDs are written in), two characters (10 bits) at a time.
_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"
_PAIRS = [first + second for first in _ALPHABET for second in _ALPHABET]
_lock = threading.Lock()
_last_millis = -1
_last_random = 0


def _millis(at: datetime) -> int:
    millis = int(at.timestamp() * 1000)
    if not 0 <= millis <= _MAX_MILLIS:
        raise ValueError("the time is outside what a ULID can hold")
    return millis


def _reserve(at: datetime | None, count: int) -> int:
    """The first of ``count`` consecutive ULIDs (as integers) at ``at`` (None: now), after every
    one made before in the same millisecond. Thread-safe: the store's writer threads make ids too.

    "Now" is read under the lock and never goes back from the last id's millisecond: a thread
    that read the clock, then waited for the lock while another made ids in the next
    millisecond, would otherwise start that earlier millisecond afresh, and then the next one
    too, with a random part that may sort before (or land on) ids already made in it."""
    global _last_millis, _last_random
    fixed = None if at is None else _millis(at)
    with _lock:
        millis = fixed if fixed is not None else max(time.time_ns() // 1_000_000, _last_millis)
        if millis == _last_millis:
            first = _last_random + 1
            if first + count - 1 > _MAX_RANDOM:
                raise ValueError("the random part of this millisecond's ULIDs is exhausted")
        else:
            first = int.from_bytes(os.urandom(_RANDOM_BITS // 8), "big")
            while first + count - 1 > _MAX_RANDOM:  # leave room for the successors (never in practice)
                first = int.from_bytes(os.urandom(_RANDOM_BITS // 8), "big")
        _last_millis, _last_random = millis, first + count - 1
    return millis << _RANDOM_BITS | first


def encode(value: int) -> str:
    """A 128-bit ULID as its 26 lowercase Crockford base-32 characters (130 bits, the first two
    zero), ten bits at a time."""
    pairs = _PAIRS
    return "".join((pairs[value >> 120], pairs[value >> 110 & 1023], pairs[value >> 100 & 1023],
                    pairs[value >> 90 & 1023], pairs[value >> 80 & 1023], pairs[value >> 70 & 1023],
                    pairs[value >> 60 & 1023], pairs[value >> 50 & 1023], pairs[value >> 40 & 1023],
                    pairs[value >> 30 & 1023], pairs[value >> 20 & 1023], pairs[value >> 10 & 1023],
                    pairs[value & 1023]))


def new_id(prefix: IdPrefix, at: datetime | None = None) -> str:
    """A fresh id; ``at`` sets the time part so that ids sort with the injected clock."""
    return f"{prefix}_{encode(_reserve(at, 1))}"


def new_ids(prefix: IdPrefix, count: int, at: datetime | None = None) -> list[str]:
    """``count`` fresh ids that sort in the order given: one ULID, then its successors (the
    random part counts up, as for ids made in the same millisecond). Job array tasks use it so
    that their ids, and the claim's oldest-first order, follow their indexes. The successors are
    reserved: the next id made in the same millisecond comes after the last of them."""
    if count <= 0:
        return []
    first = _reserve(at, count)
    return [f"{prefix}_{encode(first + offset)}" for offset in range(count)]


def id_millis(value: str) -> int | None:
    """The time part of an id made by ``new_id`` (Unix milliseconds: its first 10 characters,
    48 bits), None for any other text."""
    match = _ID_RE.match(value)
    if match is None:
        return None
    millis = 0
    for char in match.group("ulid")[:10]:
        millis = millis * 32 + _ALPHABET.index(char)
    return millis


def has_prefix(value: str, prefix: IdPrefix) -> bool:
    match = _ID_RE.match(value)
    return match is not None and match.group("prefix") == prefix
