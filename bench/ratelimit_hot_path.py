"""How much the rate limiter adds to a request: ``RateLimiter.check`` per call, against a
baseline of the dictionary lookup every request does anyway. Prints figures, writes JSON.

Run: ``.venv/bin/python bench/ratelimit_hot_path.py [out.json]``
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta

from coordinator.ratelimit import RateLimiter
from coordinator.settings import DEFAULT_RATE_LIMITS

CALLS = 20_000
ROUNDS = 7
WORKSPACES = 1000


def _per_call_ns(fn: object) -> float:
    start = time.perf_counter_ns()
    fn()  # type: ignore[operator]
    return (time.perf_counter_ns() - start) / CALLS


def main() -> None:
    limiter = RateLimiter(DEFAULT_RATE_LIMITS)
    base = datetime(2026, 1, 1, tzinfo=UTC)
    moments = [base + timedelta(microseconds=i * 50) for i in range(CALLS)]  # 20 000 req/s overall
    names = [f"ws_{i % WORKSPACES}" for i in range(CALLS)]
    table = {name: 1 for name in names}

    def baseline() -> None:
        for name in names:
            table.get(name)

    def limited() -> None:
        for name, now in zip(names, moments, strict=True):
            limiter.check(name, "payg", now)

    base_ns = statistics.median(_per_call_ns(baseline) for _ in range(ROUNDS))
    check_ns = statistics.median(_per_call_ns(limited) for _ in range(ROUNDS))
    result = {"calls": CALLS, "rounds": ROUNDS, "workspaces": WORKSPACES, "baseline_dict_get_ns": round(base_ns, 1),
              "ratelimit_check_ns": round(check_ns, 1), "ratio": round(check_ns / base_ns, 1)}
    print(f"rate-limit check: {check_ns / 1000:.2f} µs per request (median of {ROUNDS}); "
          f"dict lookup baseline {base_ns:.0f} ns; ratio {result['ratio']}x")
    if len(sys.argv) > 1:
        with open(sys.argv[1], "w") as out:
            json.dump(result, out, indent=2)


if __name__ == "__main__":
    main()
