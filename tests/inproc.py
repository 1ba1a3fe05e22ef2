"""A coordinator served in-process by Hypercorn on a loopback port, with an injected clock.

Real HTTP over a real socket and a real SQLite file; only time is fake, so that token expiry
and rate-limit boundaries are tested exactly. Everything is torn down when the ``async with``
block exits, also on failure.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import trio
from hypercorn.config import Config
from hypercorn.trio import serve

from common.clock import ManualClock
from coordinator.app import create_app
from coordinator.bootstrap import InitResult, initialize
from coordinator.context import Services
from coordinator.settings import Settings
from coordinator.store.sqlite import SqliteStore, open_sqlite_store


@dataclass
class InProcess:
    url: str
    init: InitResult
    store: SqliteStore
    services: Services
    clock: ManualClock

    @property
    def token(self) -> str:
        return self.init.owner_token

    @property
    def workspace_id(self) -> str:
        return self.init.workspace_id

    def client(self, token: str | None = None, workspace: str | None = None, **kwargs: Any) -> httpx.AsyncClient:
        headers = {"Authorization": f"Bearer {token or self.token}"} if token != "" else {}
        if workspace is not None:
            headers["X-Compute-Workspace"] = workspace
        return httpx.AsyncClient(base_url=self.url, headers=headers, timeout=30, **kwargs)


@asynccontextmanager
async def running_coordinator(data_dir: Path, *, plan: str = "hobby", clock: ManualClock | None = None,
                              **settings: Any) -> AsyncIterator[InProcess]:
    await trio.Path(data_dir).mkdir(parents=True, exist_ok=True)
    config_settings = Settings(data_dir=data_dir, bind="127.0.0.1:0", **settings)
    clock = clock or ManualClock(datetime(2026, 4, 26, 9, 0, tzinfo=UTC))
    async with open_sqlite_store(config_settings.database_path) as store:
        init = await initialize(store, clock, plan=plan)
        assert init is not None
        svc = Services(store=store, settings=config_settings, clock=clock)
        app = create_app(svc)
        config = Config()
        config.bind = [config_settings.bind]
        config.accesslog = None
        config.errorlog = logging.getLogger("hypercorn.error")
        config.graceful_timeout = 1.0
        async with trio.open_nursery() as nursery:
            binds = await nursery.start(partial(serve, app, config))
            try:
                yield InProcess(str(binds[0]), init, store, svc, clock)
            finally:
                nursery.cancel_scope.cancel()
