"""Placement decisions, pure: given a job and an agent's labels and free capacity, does it fit?"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

J = TypeVar("J")


@dataclass(frozen=True)
class Demand:
    cpus: float
    memory_mb: int
    gpus: int


def effective_demand(resources: Mapping[str, Any] | None, defaults: Mapping[str, Any] | None) -> Demand:
    """The job's own resources, each absent field taken from the agent's defaults (else 0)."""
    own = resources or {}
    fallback = defaults or {}

    def pick(key: str) -> Any:
        value = own.get(key)
        return fallback.get(key, 0) if value is None else value

    return Demand(cpus=float(pick("cpus") or 0), memory_mb=int(pick("memoryMb") or 0), gpus=int(pick("gpus") or 0))


def labels_match(selector: Mapping[str, str], agent_labels: Mapping[str, str]) -> bool:
    """The agent's labels contain every pair of the selector."""
    return all(agent_labels.get(key) == value for key, value in selector.items())


def fits(demand: Demand, free: Mapping[str, Any]) -> bool:
    # A small epsilon keeps float sums of fractional CPUs from refusing an exact fit.
    return (
        demand.cpus <= float(free.get("cpus", 0)) + 1e-9
        and demand.memory_mb <= int(free.get("memoryMb", 0))
        and demand.gpus <= int(free.get("gpus", 0))
    )


def choose_job(
    candidates: Iterable[J],
    *,
    selector_of: Callable[[J], Mapping[str, str]],
    resources_of: Callable[[J], Mapping[str, Any] | None],
    agent_labels: Mapping[str, str],
    free: Mapping[str, Any],
    defaults: Mapping[str, Any] | None,
) -> J | None:
    """The first candidate (callers pass them oldest first) that the agent matches and fits."""
    for job in candidates:
        if labels_match(selector_of(job), agent_labels) and fits(effective_demand(resources_of(job), defaults), free):
            return job
    return None


# --- why a queued job waits -----------------------------------------------------------------

NO_MATCHING_AGENT = "no_matching_agent"
WAITING_FOR_CAPACITY = "waiting_for_capacity"
HELD_BY_CAP = "held_by_cap"
AGENT_DRAINING = "agent_draining"
QUEUED_REASONS = (NO_MATCHING_AGENT, WAITING_FOR_CAPACITY, HELD_BY_CAP, AGENT_DRAINING)


@dataclass(frozen=True)
class AgentSnapshot:
    """What the queue-reason decision needs of an agent: its labels, whole capacity, and
    whether it takes work (``live``: not DOWN; ``draining``: asked to drain)."""

    labels: Mapping[str, str]
    capacity: Mapping[str, Any]
    live: bool
    draining: bool


def queued_reason(selector: Mapping[str, str], resources: Mapping[str, Any] | None,
                  agents: Iterable[AgentSnapshot], *, held: bool, waited: bool) -> str | None:
    """Why a QUEUED job is not running, or None when nothing stands in its way yet.

    ``held``: the workspace is past its hard cap. ``waited``: the job has been queued through
    at least one claim opportunity (a tick), so an agent that could take it is busy. A job's
    absent resources count as 0 here: the agent's defaults are only known to the agent.
    """
    if held:
        return HELD_BY_CAP
    demand = effective_demand(resources, None)
    # The first able agent that is not draining decides it: every submission asks, and a
    # workspace may have thousands of agents.
    draining_only = False
    for agent in agents:
        if agent.live and labels_match(selector, agent.labels) and fits(demand, agent.capacity):
            if not agent.draining:
                return WAITING_FOR_CAPACITY if waited else None
            draining_only = True
    return AGENT_DRAINING if draining_only else NO_MATCHING_AGENT
