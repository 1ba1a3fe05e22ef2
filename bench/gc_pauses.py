"""What ``tune_gc`` (common/gc_tuning.py) changes: the cost of a full collection in a started
coordinator, with and without the start-up heap frozen, and how often each generation runs.

    .venv/bin/python -m bench.gc_pauses [--held 5000]

Builds the app as ``serve`` does (store, services, routes, OpenAPI document), adds ``--held``
objects shaped like what a held long-poll keeps alive (a dict of headers, a request object, an
event), then times ``gc.collect()`` (median of 20) before and after ``gc.freeze()``, and counts
collections per generation over a fixed allocation workload under the default and the tuned
thresholds. Timings are CPU-bound and short: the machine's load moves them less than the HTTP
figures, but compare the two columns of one run, not runs.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import trio


def _full_collection_ms(repeat: int = 20) -> float:
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        gc.collect()
        samples.append((time.perf_counter() - started) * 1000)
    return round(statistics.median(samples), 3)


def _collections(thresholds: tuple[int, int, int], allocations: int = 2_000_000) -> list[int]:
    gc.set_threshold(*thresholds)
    before = [entry["collections"] for entry in gc.get_stats()]
    keep: list[Any] = []
    for n in range(allocations):
        keep.append({"n": n})  # container objects: what generation 0 counts
        if len(keep) > 1000:
            keep.clear()
    return [entry["collections"] - then for entry, then in zip(gc.get_stats(), before, strict=True)]


async def _measure(held: int) -> dict[str, Any]:
    from common.gc_tuning import GC_THRESHOLDS
    from coordinator.app import create_app
    from coordinator.context import Services
    from coordinator.settings import Settings
    from coordinator.store.sqlite import open_sqlite_store

    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(data_dir=Path(tmp))
        async with open_sqlite_store(settings.database_path) as store:
            create_app(Services(store=store, settings=settings))
            gc.collect()
            startup_objects = len(gc.get_objects())
            def hold() -> list[Any]:
                return [({"authorization": "Bearer x" * 4, "content-type": "application/json"},
                         {"free": {"cpus": 8}}, trio.Event()) for _ in range(held)]

            held_requests = hold()
            unfrozen = _full_collection_ms()
            del held_requests
            gc.collect()
            gc.freeze()  # what tune_gc does once start-up is over; the held requests come after
            held_requests = hold()
            frozen = _full_collection_ms()
            gc.unfreeze()
            default = _collections((700, 10, 10))
            tuned = _collections(GC_THRESHOLDS)
            del held_requests
    return {"startupObjects": startup_objects, "heldRequests": held,
            "fullCollectionMs": {"unfrozen": unfrozen, "frozen": frozen},
            "collectionsPer2MAllocations": {"default (700, 10, 10)": default, f"tuned {GC_THRESHOLDS}": tuned}}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.gc_pauses", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--held", type=int, default=5000)
    args = parser.parse_args()
    print(json.dumps(trio.run(_measure, args.held), indent=2))


if __name__ == "__main__":
    main()
