"""The agent's and the CLI's HTTP clients drop an idle connection well before the coordinator
does: reusing one the server is closing at that moment loses the request ("server
disconnected"), and a claim whose answer is lost leaves its job ASSIGNED until its lease ends."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import trio

from agentd.client import CoordinatorClient
from cli.api import ApiClient
from common.failover import KEEPALIVE_SECONDS
from coordinator.settings import Settings


def _expiry(client: httpx.Client | httpx.AsyncClient) -> float:
    pool: Any = client._transport._pool  # type: ignore[union-attr]
    return float(pool._keepalive_expiry)


def test_the_clients_close_idle_connections_before_the_coordinator_does(tmp_path: Path) -> None:
    server_idle = Settings(data_dir=tmp_path).idle_timeout_seconds
    assert server_idle >= 2 * KEEPALIVE_SECONDS

    cli = ApiClient("http://127.0.0.1:9", None)
    try:
        assert _expiry(cli._http) == KEEPALIVE_SECONDS
    finally:
        cli.close()

    async def agent() -> None:
        client = CoordinatorClient("http://127.0.0.1:9")
        try:
            assert _expiry(client._http) == KEEPALIVE_SECONDS
        finally:
            await client.aclose()

    trio.run(agent)


def test_the_dispatch_benchmarks_simulated_agents_do_as_the_agent_does() -> None:
    """bench/dispatch.py's agents pooled connections for httpx's default 5 s, the coordinator's
    idle timeout: 1-4 of 2,000 claims failed on a connection closed as it was reused."""
    from bench.agents_scale import KEEPALIVE_SECONDS as SIMULATED
    from bench.dispatch import client_limits

    assert SIMULATED == KEEPALIVE_SECONDS
    assert client_limits(50).keepalive_expiry == KEEPALIVE_SECONDS
