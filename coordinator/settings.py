"""Coordinator settings: defaults, overridden by a TOML file, overridden by flags."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from coordinator.billing import BillingConfig
from coordinator.webhooks import DeliveryConfig


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
    billing: BillingConfig = field(default_factory=BillingConfig)
    webhook_delivery: DeliveryConfig = field(default_factory=DeliveryConfig)

    @property
    def database_path(self) -> Path:
        return self.data_dir / "coordinator.sqlite3"

    @property
    def url_file(self) -> Path:
        return self.data_dir / "coordinator.url"
