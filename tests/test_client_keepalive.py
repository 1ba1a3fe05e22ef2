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
