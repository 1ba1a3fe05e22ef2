"""What handlers reach through ``services()``: the store, the clock, wake-ups and settings."""

from __future__ import annotations

from dataclasses import dataclass, field

from quart import current_app

from common.clock import Clock, SystemClock
from coordinator.notify import Notifier
from coordinator.settings import Settings
from coordinator.store.base import Store


@dataclass
class Services:
    store: Store
    settings: Settings
    clock: Clock = field(default_factory=SystemClock)
    notifier: Notifier = field(default_factory=Notifier)


def services() -> Services:
    found: Services = current_app.extensions["tanvrit"]
    return found
