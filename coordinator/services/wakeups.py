"""News from inside a write: which workspaces have a job that became claimable, and which
jobs a rule changed besides the one the caller asked about.

A rule that releases work (a dependent whose dependencies are all met, a retry) calls
``work_released`` inside the transaction, and one that ends a job as a side effect (a
dependent cancelled ``dependency_failed``) calls ``job_changed``; the store collects them
around each write (``collecting``) and, once the write has committed, wakes the claims that
wait in those workspaces and the followers of those jobs. The collection is per thread: a
store runs each write in one thread from start to end.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

_local = threading.local()


@dataclass
class News:
    workspaces: set[str] = field(default_factory=set)  # with work released
    jobs: set[str] = field(default_factory=set)  # changed by a rule


@contextmanager
def collecting(into: News) -> Iterator[News]:
    """Collect the news of the code run inside the block into ``into``."""
    outer = getattr(_local, "released", None)
    _local.released = into
    try:
        yield into
    finally:
        _local.released = outer


def work_released(workspace_id: str) -> None:
    """Note that a job of ``workspace_id`` became claimable (no-op outside ``collecting``)."""
    news: News | None = getattr(_local, "released", None)
    if news is not None:
        news.workspaces.add(workspace_id)


def job_changed(job_id: str) -> None:
    """Note that a rule changed ``job_id`` (no-op outside ``collecting``)."""
    news: News | None = getattr(_local, "released", None)
    if news is not None:
        news.jobs.add(job_id)
