"""Wake-ups without polling: a waiting agent or log follower sleeps on an event that the
write path fires. Capture the event *before* looking at the store, then wait on it, so a
change that lands between the look and the wait is never missed.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import trio


class Signal:
    def __init__(self) -> None:
        self._event = trio.Event()

    def snapshot(self) -> trio.Event:
        return self._event

    def fire(self) -> None:
        self._event.set()
        self._event = trio.Event()


class Notifier:
    """Signals for 'new work in a workspace' and 'news about a job' (log, state)."""

    def __init__(self) -> None:
        self._work: dict[str, Signal] = {}
        self._jobs: dict[str, tuple[Signal, int]] = {}

    def work_signal(self, workspace_id: str) -> Signal:
        return self._work.setdefault(workspace_id, Signal())

    def work_arrived(self, workspace_id: str) -> None:
        self.work_signal(workspace_id).fire()

    @contextmanager
    def watch_job(self, job_id: str) -> Iterator[Signal]:
        """A signal for one job, kept only while someone watches it."""
        signal, watchers = self._jobs.get(job_id, (Signal(), 0))
        self._jobs[job_id] = (signal, watchers + 1)
        try:
            yield signal
        finally:
            signal, watchers = self._jobs[job_id]
            if watchers == 1:
                del self._jobs[job_id]
            else:
                self._jobs[job_id] = (signal, watchers - 1)

    def job_changed(self, job_id: str) -> None:
        entry = self._jobs.get(job_id)
        if entry is not None:
            entry[0].fire()

    @property
    def watched_jobs(self) -> int:
        return len(self._jobs)
