from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from coordinator.scheduler import (
    QUEUED_REASONS,
    AgentSnapshot,
    Demand,
    choose_job,
    effective_demand,
    fits,
    labels_match,
    queued_reason,
)


def test_labels_must_contain_every_selector_pair() -> None:
    agent = {"arch": "arm64", "os": "linux", "gpus": "0"}
    assert labels_match({}, agent)
    assert labels_match({"arch": "arm64"}, agent)
    assert not labels_match({"arch": "arm64", "os": "darwin"}, agent)
    assert not labels_match({"zone": "a"}, agent)


def test_absent_resources_take_the_agent_defaults() -> None:
    assert effective_demand(None, {"cpus": 1, "memoryMb": 512}) == Demand(1.0, 512, 0)
    assert effective_demand({"cpus": 0.5}, {"cpus": 1, "memoryMb": 512}) == Demand(0.5, 512, 0)


def test_fits_free_capacity_exactly() -> None:
    assert fits(Demand(0.1 + 0.2, 512, 0), {"cpus": 0.3, "memoryMb": 512, "gpus": 0})
    assert not fits(Demand(1, 513, 0), {"cpus": 4, "memoryMb": 512, "gpus": 0})
    assert not fits(Demand(1, 1, 1), {"cpus": 4, "memoryMb": 512, "gpus": 0})


def test_choose_takes_the_first_that_matches_and_fits() -> None:
    jobs: list[dict[str, Any]] = [
        {"id": 1, "labels": {"arch": "s390x"}, "resources": None},
        {"id": 2, "labels": {}, "resources": {"memoryMb": 4096}},
        {"id": 3, "labels": {"arch": "amd64"}, "resources": {"cpus": 1}},
        {"id": 4, "labels": {}, "resources": None},
    ]
    chosen = choose_job(jobs, selector_of=lambda j: j["labels"], resources_of=lambda j: j["resources"],
                        agent_labels={"arch": "amd64"}, free={"cpus": 2, "memoryMb": 1024, "gpus": 0},
                        defaults={"cpus": 1, "memoryMb": 256})
    assert chosen is not None and chosen["id"] == 3


# --- why a queued job waits -------------------------------------------------------------------

GPU_BOX = AgentSnapshot(labels={"gpu": "a100", "zone": "a"}, capacity={"cpus": 8, "memoryMb": 65536, "gpus": 1},
                        live=True, draining=False)
SMALL = AgentSnapshot(labels={"zone": "a"}, capacity={"cpus": 2, "memoryMb": 4096, "gpus": 0}, live=True,
                      draining=False)


def _why(selector: dict[str, str], agents: list[AgentSnapshot], *, resources: dict[str, Any] | None = None,
         held: bool = False, waited: bool = True) -> str | None:
    return queued_reason(selector, resources, agents, held=held, waited=waited)


def test_queued_reason_no_matching_agent() -> None:
    assert _why({"gpu": "h100"}, [GPU_BOX, SMALL]) == "no_matching_agent"
    assert _why({}, []) == "no_matching_agent"
    # Labels match but it can never fit: no agent that could take it, either.
    assert _why({"zone": "a"}, [GPU_BOX, SMALL], resources={"cpus": 16}) == "no_matching_agent"
    assert _why({"zone": "a"}, [SMALL], resources={"gpus": 1}) == "no_matching_agent"
    # A DOWN agent takes nothing.
    assert _why({"gpu": "a100"}, [replace(GPU_BOX, live=False)]) == "no_matching_agent"


def test_queued_reason_draining_capacity_and_cap() -> None:
    assert _why({"gpu": "a100"}, [replace(GPU_BOX, draining=True)]) == "agent_draining"
    # One able agent that is not draining is enough to wait for.
    assert _why({"zone": "a"}, [replace(GPU_BOX, draining=True), SMALL]) == "waiting_for_capacity"
    assert _why({"zone": "a"}, [SMALL, replace(GPU_BOX, draining=True)]) == "waiting_for_capacity"
    assert _why({"gpu": "a100"}, [SMALL, replace(GPU_BOX, draining=True), replace(GPU_BOX, live=False)]) == (
        "agent_draining")
    # Just submitted with an able agent: nothing stands in its way yet.
    assert _why({"zone": "a"}, [SMALL], waited=False) is None
    # The cap holds everything, whatever the agents.
    assert _why({"gpu": "h100"}, [], held=True) == "held_by_cap"
    assert set(QUEUED_REASONS) == {"no_matching_agent", "waiting_for_capacity", "held_by_cap", "agent_draining"}


def test_agent_snapshots_are_made_once_per_distinct_row_and_read_only() -> None:
    from coordinator.store.repo.jobs import agent_snapshots_of

    row = {"labels": '{"zone": "a"}', "capacity": '{"cpus": 2, "memoryMb": 4096, "gpus": 0}', "state": "READY",
           "drain_requested": 0}
    first, second, draining, down = agent_snapshots_of([row, dict(row), {**row, "drain_requested": 1},
                                                        {**row, "state": "DOWN"}])
    assert first is second
    assert (first.labels, first.capacity, first.live, first.draining) == (
        {"zone": "a"}, {"cpus": 2, "memoryMb": 4096, "gpus": 0}, True, False)
    assert (draining.draining, draining.live) == (True, True)
    assert (down.live, down.draining) == (False, False)
    with pytest.raises(TypeError):
        first.labels["zone"] = "b"  # type: ignore[index]
