"""Persistence behind one narrow interface (``Store``), on SQLite (the default) or PostgreSQL.

``factory.open_store(url or path)`` opens one; ``db`` is the transaction interface (``Tx``) and
the SQL dialects every query is written against; ``errors`` holds what the store raises.
"""

from coordinator.store.base import (
    AgentRecord,
    IdempotencyConflict,
    JobFilter,
    JobRecord,
    Store,
    TokenRecord,
)

__all__ = ["AgentRecord", "IdempotencyConflict", "JobFilter", "JobRecord", "Store", "TokenRecord"]
