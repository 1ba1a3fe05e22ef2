"""Persistence behind one narrow interface (``Store``); ``sqlite`` is the default backend."""

from coordinator.store.base import (
    AgentRecord,
    IdempotencyConflict,
    JobFilter,
    JobRecord,
    Store,
    TokenRecord,
)

__all__ = ["AgentRecord", "IdempotencyConflict", "JobFilter", "JobRecord", "Store", "TokenRecord"]
