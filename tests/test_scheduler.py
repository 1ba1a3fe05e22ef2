from __future__ import annotations

from typing import Any

from coordinator.scheduler import Demand, choose_job, effective_demand, fits, labels_match


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
