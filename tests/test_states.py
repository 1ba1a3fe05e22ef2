from __future__ import annotations

import pytest

from common.states import (
    TERMINAL_JOB_STATES,
    AgentState,
    InvalidTransition,
    JobState,
    agent_state_after_heartbeat,
    can_transition,
    check_transition,
)


def test_terminal_states_never_change_except_lost_to_a_late_result() -> None:
    for old in TERMINAL_JOB_STATES - {JobState.LOST}:
        for new in JobState:
            assert not can_transition(old, new), (old, new)
    assert can_transition(JobState.LOST, JobState.SUCCEEDED)
    assert not can_transition(JobState.LOST, JobState.RUNNING)


def test_the_happy_path_and_refusals() -> None:
    check_transition(JobState.QUEUED, JobState.ASSIGNED)
    check_transition(JobState.ASSIGNED, JobState.RUNNING)
    check_transition(JobState.RUNNING, JobState.SUCCEEDED)
    with pytest.raises(InvalidTransition, match=r"^job cannot go from QUEUED to RUNNING$"):
        check_transition(JobState.QUEUED, JobState.RUNNING)


@pytest.mark.parametrize(("drain", "running", "expected"), [
    (False, 0, AgentState.READY), (False, 3, AgentState.READY),
    (True, 2, AgentState.DRAINING), (True, 0, AgentState.DRAINED),
])
def test_agent_state_from_drain_flag(drain: bool, running: int, expected: AgentState) -> None:
    assert agent_state_after_heartbeat(drain, running) == expected
