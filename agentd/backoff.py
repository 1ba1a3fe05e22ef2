"""Retry delays, pure: exponential with full jitter, capped. Never zero, so never a hot loop."""

from __future__ import annotations

import random


def backoff_delay(attempt: int, *, base: float = 0.2, cap: float = 30.0, rng: random.Random | None = None) -> float:
    """Seconds to wait before retry number ``attempt`` (1-based): uniform in [base/2, min(cap, base*2^n)]."""
    ceiling = min(cap, base * (2 ** max(0, attempt - 1)))
    floor = min(base / 2, ceiling)
    return (rng or random).uniform(floor, max(floor, ceiling))
