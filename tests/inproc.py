"""A real coordinator app served by Hypercorn on a loopback port, inside the test's own trio run.

Unlike the subprocess coordinator (``tests/procs.py``) the test can reach its ``Services``
(the notifier, the store) and inject a clock, so token expiry, rate-limit boundaries and
leases are tested exactly. The HTTP path is still real: requests travel over a socket to
Hypercorn and a real SQLite file. Everything is torn down when the ``async with`` block
exits, also on failure.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any, cast

import httpx
import trio
from hypercorn.config import Config
from hypercorn.trio import serve

from common.clock import Clock, ManualClock, SystemClock
from common.protocol import CapacityMsg, RegisterRequest
from coordinator.app import create_asgi
from coordinator.bootstrap import InitResult, initialize
from coordinator.context import Services
from coordinator.settings import Settings
from coordinator.store.factory import open_store
from coordinator.store.sqlite import SqliteStore


@dataclass
class InProcess:
    url: str
    init: InitResult
    store: SqliteStore
    services: Services
    clock: Any  # ManualClock where the test injected one

    @property
    def svc(self) -> Services:
        return self.services

    @property
    def token(self) -> str:
        return self.init.owner_token

    @property
    def workspace_id(self) -> str:
        return self.init.workspace_id

    def client(self, token: str | None = None, workspace: str | None = None, **kwargs: Any) -> httpx.AsyncClient:
        """A client with the owner's token (or ``token``; ``""`` sends none)."""
        headers = {"Authorization": f"Bearer {token or self.token}"} if token != "" else {}
        if workspace is not None:
            headers["X-Compute-Workspace"] = workspace
        return httpx.AsyncClient(base_url=self.url, headers=headers, timeout=kwargs.pop("timeout", 30), **kwargs)

    async def add_member(self, role: str) -> str:
        """Invite a new user with ``role`` into the first workspace through the API, redeem the
        invitation, and return the new member's access token."""
        async with self.client() as owner:
            invited = await owner.post(f"/v0/workspaces/{self.workspace_id}/members",
                                       json={"email": f"{role}-{uuid.uuid4().hex[:12]}@example.test", "role": role})
            assert invited.status_code == 201, invited.text
            redeemed = await owner.post("/v0/invitations:redeem", json={"code": invited.json()["invitation"]["code"]})
            assert redeemed.status_code in (200, 201), redeemed.text
        return str(redeemed.json()["token"]["access_token"])

    async def register_agent(self, name: str = "sim", labels: dict[str, str] | None = None,
                             cpus: float = 4, memory_mb: int = 8192, gpus: int = 0) -> tuple[str, httpx.AsyncClient]:
        """Register a simulated agent over HTTP; returns its id and a client holding its token."""
        async with httpx.AsyncClient(base_url=self.url, timeout=20) as anonymous:
            response = await anonymous.post(
                "/agent/v0/register",
                content=RegisterRequest(name=name, labels=labels or {}, version="test",
                                        capacity=CapacityMsg(cpus=cpus, memoryMb=memory_mb, gpus=gpus)
                                        ).model_dump_json(),
                headers={"Authorization": f"Bearer {self.init.registration_token}",
                         "Content-Type": "application/json"},
            )
        assert response.status_code == 201, response.text
        body = response.json()
        return body["agentId"], httpx.AsyncClient(
            base_url=self.url, timeout=60, headers={"Authorization": f"Bearer {body['agentToken']}"})


@asynccontextmanager
async def running_coordinator(data_dir: Path, *, plan: str = "hobby", clock: Clock | None = None,
                              **settings: Any) -> AsyncIterator[InProcess]:
    """Serve a fresh coordinator on 127.0.0.1 (port picked by the OS) until the block exits.
    The clock defaults to a ``ManualClock``; pass ``SystemClock()`` for wall time."""
    await trio.Path(data_dir).mkdir(parents=True, exist_ok=True)
    config_settings = Settings(data_dir=data_dir, bind="127.0.0.1:0", **settings)
    clock = clock or ManualClock(datetime(2026, 4, 26, 9, 0, tzinfo=UTC))
    # ``database_url`` (a setting) puts it on PostgreSQL; else the data dir's SQLite file.
    async with open_store(config_settings.database, pool_size=config_settings.store_pool_size,
                          statement_timeout_seconds=config_settings.store_statement_timeout_seconds,
                          pool_timeout_seconds=config_settings.store_pool_timeout_seconds) as opened:
        store = cast(SqliteStore, opened)  # PgStore is one too: the same mixins over its own core
        init = await initialize(store, clock, plan=plan)
        assert init is not None
        svc = Services(store=store, settings=config_settings, clock=clock)
        config = Config()
        config.bind = [config_settings.bind]
        config.accesslog = None
        config.errorlog = logging.getLogger("hypercorn.error")
        config.graceful_timeout = 1.0
        async with trio.open_nursery() as nursery:
            binds = await nursery.start(partial(serve, create_asgi(svc), config))
            try:
                yield InProcess(str(binds[0]), init, store, svc, clock)
            finally:
                nursery.cancel_scope.cancel()


def open_inprocess(tmp_path: Path, *, clock: Clock | None = None, **settings: Any) -> Any:
    """``running_coordinator`` on wall time unless a clock is given."""
    return running_coordinator(tmp_path, clock=clock or SystemClock(), **settings)
