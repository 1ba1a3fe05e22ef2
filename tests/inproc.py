"""A real coordinator app served by Hypercorn on a loopback port, inside the test's own trio run.

Unlike the subprocess coordinator (``tests/procs.py``) the test can reach its ``Services``:
the notifier (to prove a disconnected follower leaves nothing behind), the store, and an
injected clock. The HTTP path is still real: requests travel over a socket to Hypercorn.
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import trio
from hypercorn.config import Config
from hypercorn.trio import serve

from common.clock import Clock, SystemClock, to_millis
from common.ids import new_id
from common.protocol import CapacityMsg, RegisterRequest
from coordinator.app import create_app
from coordinator.bootstrap import InitResult, initialize
from coordinator.context import Services
from coordinator.settings import Settings
from coordinator.store.base import TokenRecord
from coordinator.store.sqlite import SqliteStore, open_sqlite_store
from coordinator.tokens import TokenKind, generate_token, hash_token


@dataclass
class InProcess:
    url: str
    svc: Services
    init: InitResult

    @property
    def store(self) -> SqliteStore:
        store = self.svc.store
        assert isinstance(store, SqliteStore)
        return store

    def client(self, token: str | None = None, **kwargs: Any) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.url, timeout=kwargs.pop("timeout", 20),
                                 headers={"Authorization": f"Bearer {token or self.init.owner_token}"}, **kwargs)

    async def add_member(self, role: str) -> str:
        """A new user with ``role`` in the first workspace; returns a PAT for them."""
        now = self.svc.clock.now()
        user_id = new_id("usr", now)
        secret = generate_token(TokenKind.PAT)

        def write(conn: sqlite3.Connection) -> None:
            conn.execute("INSERT INTO users (id, email, created_at) VALUES (?, ?, ?)",
                         (user_id, f"{user_id}@example.test", to_millis(now)))
            conn.execute("INSERT INTO memberships (workspace_id, user_id, role, created_at) VALUES (?, ?, ?, ?)",
                         (self.init.workspace_id, user_id, role, to_millis(now)))

        await self.store._write(write)
        await self.store.insert_token(TokenRecord(
            id=new_id("pat", now), kind=TokenKind.PAT.value, token_hash=hash_token(secret),
            workspace_id=self.init.workspace_id, user_id=user_id, agent_id=None, name=role,
            created_at=to_millis(now)))
        return secret

    async def register_agent(self, name: str = "sim", labels: dict[str, str] | None = None,
                             cpus: float = 4, memory_mb: int = 8192) -> tuple[str, httpx.AsyncClient]:
        """Register a simulated agent over HTTP; returns its id and a client holding its token."""
        async with httpx.AsyncClient(base_url=self.url, timeout=20) as anonymous:
            response = await anonymous.post(
                "/agent/v0/register",
                content=RegisterRequest(name=name, labels=labels or {}, version="test",
                                        capacity=CapacityMsg(cpus=cpus, memoryMb=memory_mb, gpus=0)
                                        ).model_dump_json(),
                headers={"Authorization": f"Bearer {self.init.registration_token}",
                         "Content-Type": "application/json"},
            )
        assert response.status_code == 201, response.text
        body = response.json()
        return body["agentId"], httpx.AsyncClient(
            base_url=self.url, timeout=60, headers={"Authorization": f"Bearer {body['agentToken']}"})


@asynccontextmanager
async def open_inprocess(tmp_path: Path, *, clock: Clock | None = None, **settings: Any) -> AsyncIterator[InProcess]:
    """Serve a fresh coordinator on 127.0.0.1 (port picked by the OS) until the block exits."""
    clock = clock or SystemClock()
    config = Settings(data_dir=tmp_path, bind="127.0.0.1:0", **settings)
    async with open_sqlite_store(config.database_path) as store:
        init = await initialize(store, clock, plan="hobby")
        assert init is not None
        svc = Services(store=store, settings=config, clock=clock)
        hyper = Config()
        hyper.bind = [config.bind]
        hyper.accesslog = None
        hyper.graceful_timeout = 1.0
        async with trio.open_nursery() as nursery:
            binds = await nursery.start(serve, create_app(svc), hyper)
            try:
                yield InProcess(url=str(binds[0]), svc=svc, init=init)
            finally:
                nursery.cancel_scope.cancel()
