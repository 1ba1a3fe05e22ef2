"""Every query mixin in one class: what the SQLite and PostgreSQL stores share.

Each store puts its database core under it (``SqliteStore``: the SQLite core the mixins are
declared over; ``PgStore``: ``PostgresCore`` first in the MRO) and overrides only what it does
through its own database rather than through a ``Tx``.
"""

from __future__ import annotations

from coordinator.store.queries.agents import AgentQueries
from coordinator.store.queries.arrays import ArrayQueries
from coordinator.store.queries.audit import AuditQueries
from coordinator.store.queries.billing import BillingQueries
from coordinator.store.queries.cluster import ClusterQueries
from coordinator.store.queries.identity import IdentityQueries
from coordinator.store.queries.jobs import JobQueries
from coordinator.store.queries.metrics import ServiceQueries
from coordinator.store.queries.retention import RetentionQueries
from coordinator.store.queries.webhooks import WebhookQueries


class SharedStore(IdentityQueries, JobQueries, AgentQueries, AuditQueries, ServiceQueries, BillingQueries,
                  WebhookQueries, ClusterQueries, ArrayQueries, RetentionQueries):
    """The backend-neutral store methods (portable SQL over a ``Tx``, rules in ``coordinator.services``)."""
