"""Work released inside a write: which workspaces have a job that became claimable.

A rule that releases work (a dependent whose dependencies are all met, a retry without
backoff) calls ``work_released`` inside the transaction; the store collects the workspaces
around each write (``collecting``) and, once the write has committed, wakes the claims that
wait in them. The collection is per thread: each store's writer runs one write at a time.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

_local = threading.local()


@contextmanager
def collecting(into: set[str]) -> Iterator[set[str]]:
    """Collect the workspaces released by the code run inside the block into ``into``."""
    outer = getattr(_local, "released", None)
    _local.released = into
    try:
        yield into
    finally:
        _local.released = outer


def work_released(workspace_id: str) -> None:
    """Note that a job of ``workspace_id`` became claimable (no-op outside ``collecting``)."""
    released: set[str] | None = getattr(_local, "released", None)
    if released is not None:
        released.add(workspace_id)
