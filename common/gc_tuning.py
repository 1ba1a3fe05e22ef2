"""The garbage collector's settings for a long-running process of ours (``serve``, ``agentd run``).

Generation-0 collections every 700 allocations (the interpreter's default) run thousands of
times a second under load, and each full collection walks every object the process holds: the
app, its modules and, with thousands of agents, every held request (issue 15 measured 24-57% of
a coordinator's wall time in 0.4-0.8 s pauses). What exists at start-up lives as long as the
process, so it is frozen out of collection, and the thresholds make young collections rarer.
In the agent, bench/e2e.py counted 55 young and 5 middle-generation collections over 155 jobs
with the defaults, 0.35 s of its wall time at a load average of 22 (a middle one 27 ms: a job's
p99); with these, 14 and 2 (0.1 s). The coordinator's figures are in docs/performance.md.
``TANVRIT_GC=default`` keeps the interpreter's settings.
"""

from __future__ import annotations

import gc
import os

GC_THRESHOLDS = (50_000, 20, 100)


def tune_gc() -> None:
    """Freeze what start-up allocated and raise the collection thresholds (see above). Call it
    once start-up is over, only in a process that is ours (not a test's or an embedding one's)."""
    if os.environ.get("TANVRIT_GC") == "default":
        return
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
