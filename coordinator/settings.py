"""Coordinator settings: defaults, overridden by a TOML file, overridden by flags."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass
class Settings:
    data_dir: Path
    bind: str = "127.0.0.1:8470"
    default_plan: str = "hobby"
    heartbeat_interval_seconds: float = 5.0
    max_body_bytes: int = 1024 * 1024
    idempotency_window_seconds: int = 24 * 3600
    sse_keepalive_seconds: float = 15.0
    allow_private_webhooks: bool = False
    # Liveness: an agent silent for the grace is DOWN; silent for grace + lease, its jobs are LOST.
    agent_grace_seconds: float = 30.0
    lease_seconds: float = 300.0
    liveness_check_seconds: float = 1.0

    @property
    def database_path(self) -> Path:
        return self.data_dir / "coordinator.sqlite3"

    @property
    def url_file(self) -> Path:
        return self.data_dir / "coordinator.url"
