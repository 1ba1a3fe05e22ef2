"""What a user sees while waiting: one self-rewriting status line on stderr, on a terminal only.

Without a terminal on stderr nothing is redrawn; only a change of why a queued job waits is
printed, once, on a line of its own.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from typing import Any, TextIO

import click

from cli.api import ApiClient, Unreachable
from cli.output import colour_enabled
from common.errors import ApiError

_SPINNER = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"
POLL_SECONDS = 0.25
POLL_SECONDS_QUIET = 1.0  # without a terminal: only to report why a job waits


class StatusLine:
    """A line rewritten in place (``\\r`` + erase); ``finish`` leaves it on screen, ``clear`` removes it."""

    def __init__(self, stream: TextIO | None = None, enabled: bool | None = None) -> None:
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self._frame = 0
        self._shown = False
        self._lock = threading.Lock()

    def update(self, text: str) -> None:
        if not self.enabled:
            return
        with self._lock:
            self._frame = (self._frame + 1) % len(_SPINNER)
            self.stream.write(f"\r\x1b[K{_SPINNER[self._frame]} {text}")
            self.stream.flush()
            self._shown = True

    def finish(self, text: str) -> None:
        if not self.enabled:
            return
        with self._lock:
            self.stream.write(f"\r\x1b[K{text}\n")
            self.stream.flush()
            self._shown = False

    def clear(self) -> None:
        if not self.enabled:
            return
        with self._lock:
            if self._shown:
                self.stream.write("\r\x1b[K")
                self.stream.flush()
                self._shown = False


def _styled(text: str, colour: str) -> str:
    return click.style(text, fg=colour) if colour_enabled(sys.stderr) else text


def _selector(job: dict[str, Any]) -> str:
    return ",".join(f"{k}={v}" for k, v in (job.get("labels") or {}).items()) or "(any)"


_QUEUED_REASONS: dict[str, Callable[[dict[str, Any]], str]] = {
    "no_matching_agent": lambda job: f"no agent matches labels {_selector(job)} with room for its resources",
    "agent_draining": lambda job: f"every agent that matches {_selector(job)} is draining",
    "waiting_for_capacity": lambda job: f"agents that match {_selector(job)} are busy",
    "held_by_cap": lambda job: "the workspace is past its monthly hard cap",
    "waiting_for_dependencies": lambda job: "until " + ", ".join(
        f"{d.get('jobId')} has {d.get('condition')}" for d in job.get("dependsOn") or []),
    "waiting_for_retry": lambda job: f"attempt {len(job.get('attempts') or []) + 1} may start at "
                                     f"{job.get('notBefore')}",
}


def queued_reason_text(job: dict[str, Any]) -> str | None:
    """``no_matching_agent: no agent matches labels gpu=a100 ...`` for a QUEUED job with a reason."""
    reason = job.get("reason")
    if job.get("state") != "QUEUED" or not reason:
        return None
    explain = _QUEUED_REASONS.get(reason)
    return f"{reason}: {explain(job)}" if explain else str(reason)


def describe_job_wait(history: list[str], job: dict[str, Any], waited: float | None = None) -> str:
    """``job_x: QUEUED → RUNNING on agt_y (2.1s)``; names why it waits while it is queued."""
    text = f"{job['id']}: {' → '.join(history)}"
    if job.get("agentId") and job["state"] in ("ASSIGNED", "RUNNING"):
        text += f" on {job['agentId']}"
    if job["state"] == "QUEUED":
        why = queued_reason_text(job)
        if why is not None:
            text += f" · {why}"
        else:
            text += " · waiting for an agent that matches"
            if job.get("labels"):
                text += " " + _selector(job)
    return text if waited is None else f"{text} ({waited:.0f}s)"


class JobWatcher:
    """Polls a job in a background thread and shows its state changes until ``stop``.

    Used while ``jobs run`` waits for the first line of output: the log stream itself says
    nothing until the job prints, so the user would otherwise stare at a silent terminal.
    """

    def __init__(self, make_client: Callable[[], ApiClient], job_id: str, line: StatusLine,
                 initial_state: str = "QUEUED") -> None:
        self._make_client = make_client
        self._job_id = job_id
        self._line = line
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="job-watcher", daemon=True)
        self.history: list[str] = [initial_state]
        self._job: dict[str, Any] | None = None

    def start(self) -> JobWatcher:
        # Without a terminal it still polls (slower), to say on a line of its own why the job waits.
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop polling and leave the last state line on screen (once)."""
        if not self._thread.is_alive():
            return
        self._stop.set()
        self._thread.join()
        if self._job is not None:
            self._line.finish(describe_job_wait(self.history, self._job))

    def _run(self) -> None:
        started = time.monotonic()
        client = self._make_client()
        said: str | None = None
        try:
            while not self._stop.is_set():
                try:
                    job: dict[str, Any] = client.request("GET", f"/v0/jobs/{self._job_id}")
                except (ApiError, Unreachable):
                    job = self._job or {"id": self._job_id, "state": "?"}
                if self.history[-1] != job["state"]:
                    self.history.append(job["state"])
                self._job = job
                if self._line.enabled:
                    self._line.update(describe_job_wait(self.history, job, time.monotonic() - started))
                else:
                    why = queued_reason_text(job)
                    if why is not None and why != said:
                        self._line.stream.write(f"job {self._job_id} queued: {why}\n")
                        self._line.stream.flush()
                        said = why
                self._stop.wait(POLL_SECONDS if self._line.enabled else POLL_SECONDS_QUIET)
        finally:
            client.close()


def wait_for_drain(client: ApiClient, agent: dict[str, Any], line: StatusLine,
                   poll_seconds: float = 0.5) -> dict[str, Any]:
    """Poll until the agent is ``DRAINED`` (or ``DOWN``, which ends a drain too); show progress."""
    started = time.monotonic()
    while agent["state"] == "DRAINING":
        jobs = len(agent.get("currentJobs") or [])
        line.update(f"{agent['id']} {_styled('DRAINING', 'yellow')} · waiting for {jobs} running job(s) "
                    f"to finish ({time.monotonic() - started:.0f}s)")
        time.sleep(poll_seconds)
        agent = client.request("GET", f"/v0/agents/{agent['id']}")
    line.clear()
    return agent
