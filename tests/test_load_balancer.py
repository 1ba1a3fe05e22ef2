"""Real HAProxy, configured as docs/deployment/haproxy.cfg says, in front of two coordinator
processes: it spreads traffic over both, takes a replica whose /readyz fails out of rotation and
back, and a replica killed with SIGKILL costs no request (connection failures are re-sent)."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.load_balancer import HAProxy, running_haproxy
from tests.procs import Coordinator, wait_for


@pytest.fixture
def replicas(tmp_path: Path) -> Iterator[list[Coordinator]]:
    started: list[Coordinator] = []
    try:
        for name in ("c1", "c2"):
            started.append(Coordinator(tmp_path / name).start())
        yield started
    finally:
        for coordinator in started:
            coordinator.stop(signal.SIGKILL)


@pytest.fixture
def haproxy(replicas: list[Coordinator], tmp_path: Path) -> Iterator[HAProxy]:
    try:
        context = running_haproxy([c.url for c in replicas], tmp_path / "haproxy")
        proxy = context.__enter__()
    except LookupError as exc:
        pytest.skip(str(exc))
    try:
        yield proxy
    finally:
        context.__exit__(None, None, None)


def _get_many(proxy: HAProxy, count: int) -> list[int]:
    """``count`` requests, each on a new connection (so each is balanced on its own)."""
    statuses = []
    for _ in range(count):
        with httpx.Client(timeout=30) as client:
            statuses.append(client.get(f"{proxy.url}/v0/openapi.json").status_code)
    return statuses


def test_haproxy_spreads_traffic_and_follows_readyz(haproxy: HAProxy, replicas: list[Coordinator]) -> None:
    wait_for(lambda: all(haproxy.status(s) == "UP" for s in ("c1", "c2")), message="both replicas UP")
    before = {s: haproxy.sessions(s) for s in ("c1", "c2")}
    assert _get_many(haproxy, 20) == [200] * 20
    assert all(haproxy.sessions(s) > before[s] for s in ("c1", "c2")), haproxy.stats()

    # c1's database goes away: its /readyz answers 503 and the check takes it out of rotation.
    database = replicas[0].data_dir / "coordinator.sqlite3"
    aside = database.with_name("moved-away.sqlite3")
    database.rename(aside)
    try:
        wait_for(lambda: haproxy.status("c1").startswith("DOWN"), message="c1 DOWN after /readyz fails")
        assert haproxy.status("c2") == "UP"
        c1_sessions = haproxy.sessions("c1")
        assert _get_many(haproxy, 10) == [200] * 10
        assert haproxy.sessions("c1") == c1_sessions
    finally:
        aside.rename(database)
    wait_for(lambda: haproxy.status("c1") == "UP", message="c1 back UP once /readyz answers 200")


def test_haproxy_loses_no_request_when_a_replica_is_killed(haproxy: HAProxy, replicas: list[Coordinator]) -> None:
    wait_for(lambda: all(haproxy.status(s) == "UP" for s in ("c1", "c2")), message="both replicas UP")
    replicas[0].stop(signal.SIGKILL)
    # Before the check notices, a connection refused by c1 is re-sent to c2 (retry-on
    # conn-failure, option redispatch): no request fails.
    assert _get_many(haproxy, 10) == [200] * 10
    wait_for(lambda: haproxy.status("c1").startswith("DOWN"), message="c1 DOWN after SIGKILL")
    assert _get_many(haproxy, 5) == [200] * 5
