"""The job and agent state machines, written once; every transition goes through here.

Job states::

                 claim              started
    QUEUED ───────────────▶ ASSIGNED ───────────▶ RUNNING
      │  ▲                    │  │                   │
      │  ├──── handed back ───┘  │ could not start   │ exit 0      ─▶ SUCCEEDED
      │  └──── handed back (agent shutting down) ────┤
      │                          ├──────────────────▶│ exit != 0   ─▶ FAILED
      │ cancel                   │ cancel            │ cancel      ─▶ CANCELLED
      ▼                          ▼                   │ timeout     ─▶ TIMED_OUT
   CANCELLED                 CANCELLED               │ agent gone  ─▶ LOST
                                                     ▼
                                         (terminal states never change,
                                          except LOST ─▶ the result its own
                                          agent reports late, same epoch)

A job with a retry policy (``coordinator.services.retries``) whose attempt ends FAILED,
TIMED_OUT or LOST, and that the policy covers, takes the ASSIGNED/RUNNING ─▶ QUEUED edge
instead of the terminal one: the attempt keeps its result, the job waits out its backoff and
its next claim opens a new epoch. It becomes terminal only with its final attempt.

Agent states: READY ⇄ DRAINING → DRAINED, and any of them → DOWN when heartbeats stop;
a DOWN agent that heartbeats again returns to the state its drain flag implies.
"""

from __future__ import annotations

from enum import StrEnum


class JobState(StrEnum):
    QUEUED = "QUEUED"
    ASSIGNED = "ASSIGNED"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    TIMED_OUT = "TIMED_OUT"
    LOST = "LOST"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_JOB_STATES


TERMINAL_JOB_STATES = frozenset(
    {JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED, JobState.TIMED_OUT, JobState.LOST}
)
RESULT_STATES = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED, JobState.TIMED_OUT})

_JOB_TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    JobState.QUEUED: frozenset({JobState.ASSIGNED, JobState.CANCELLED}),
    JobState.ASSIGNED: frozenset({JobState.RUNNING, JobState.QUEUED, JobState.LOST} | RESULT_STATES),
    # RUNNING → QUEUED: its agent stopped it while shutting down with shutdown = "handback".
    JobState.RUNNING: frozenset({JobState.QUEUED, JobState.LOST} | RESULT_STATES),
    # A late result from the job's own lease epoch wins over LOST (see docstring).
    JobState.LOST: RESULT_STATES,
}


class InvalidTransition(Exception):
    def __init__(self, old: JobState, new: JobState) -> None:
        super().__init__(f"job cannot go from {old} to {new}")
        self.old = old
        self.new = new


def can_transition(old: JobState, new: JobState) -> bool:
    return new in _JOB_TRANSITIONS.get(old, frozenset())


def check_transition(old: JobState, new: JobState) -> None:
    """Raise ``InvalidTransition`` unless ``old → new`` is an edge of the machine above."""
    if not can_transition(old, new):
        raise InvalidTransition(old, new)


def result_state_for_exit(exit_code: int) -> JobState:
    return JobState.SUCCEEDED if exit_code == 0 else JobState.FAILED


class AgentState(StrEnum):
    READY = "READY"
    DRAINING = "DRAINING"
    DRAINED = "DRAINED"
    DOWN = "DOWN"


def agent_state_after_heartbeat(drain_requested: bool, running_jobs: int) -> AgentState:
    """What a live agent is, given its drain flag and how many jobs it still runs."""
    if not drain_requested:
        return AgentState.READY
    return AgentState.DRAINING if running_jobs else AgentState.DRAINED
