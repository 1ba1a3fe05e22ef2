"""The billing and webhook parts of the store interface, and the records they return.

``Store`` (``coordinator.store.base``) includes these protocols. Times are integer
milliseconds since the epoch (UTC); caps are exact ``Decimal`` values.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Protocol

from coordinator.billing import BillingConfig, Prices, PriceVersion, UsageTotals
from coordinator.notify import Signal


@dataclass(frozen=True)
class LimitsRecord:
    soft_cap_usd: Decimal | None  # as last requested
    hard_cap_usd: Decimal | None
    effective_at: int | None  # when these caps took effect; None while pending (the next tick)
    pending: bool
    hard_cap_reached: bool


@dataclass(frozen=True)
class InvoiceRecord:
    id: str
    workspace_id: str
    period_start: int
    period_end: int
    issued_at: int
    body: dict[str, Any]


@dataclass
class TickResult:
    released: list[str] = field(default_factory=list)  # workspaces whose hold was lifted
    held: list[str] = field(default_factory=list)
    soft_cap_events: list[str] = field(default_factory=list)
    invoices: list[str] = field(default_factory=list)
    rolled_up: int = 0


@dataclass(frozen=True)
class WebhookRecord:
    id: str
    workspace_id: str
    url: str
    events: list[str]
    created_at: int


@dataclass(frozen=True)
class DueDelivery:
    id: int
    webhook_id: str
    event_id: str
    event_type: str
    ordering_key: str
    attempts: int
    created_at: int
    body: bytes
    # The claim's end (its next_attempt_at while claimed): the attempt is recorded only if the
    # delivery is still under this claim.
    claimed_until: int | None = None


@dataclass(frozen=True)
class DeliveryTarget:
    url: str
    secrets: list[str]  # valid now, newest first


@dataclass(frozen=True)
class AttemptRecord:
    id: int
    delivery_id: int
    event_id: str
    event_type: str
    attempted_at: int
    status_code: int | None
    latency_ms: int
    error: str | None
    delivery_state: str
    attempts: int


class BillingStore(Protocol):
    async def usage_totals(self, workspace_id: str, start: int, end: int) -> UsageTotals:
        """Usage recorded in ``[start, end)`` (whole hours), from roll-ups plus rows not yet rolled up."""
        ...

    async def usage_cost(self, workspace_id: str, start: int, end: int, fallback: Prices) -> Decimal:
        """The exact cost of the usage recorded in ``[start, end)``, each hour at the price version
        in effect then (``fallback`` where no version was recorded)."""
        ...

    async def record_prices(self, configured: Prices, now: int) -> list[PriceVersion]:
        """Record ``configured`` as a new price version (from the next whole hour) if it differs
        from the latest; return every version, oldest first."""
        ...

    async def workspace_plan(self, workspace_id: str) -> str | None: ...

    async def hard_cap_reached(self, workspace_id: str) -> bool:
        """True while the workspace is past its hard cap, as decided at the last meter tick."""
        ...

    async def next_meter_tick(self) -> int | None: ...

    async def get_limits(self, workspace_id: str) -> LimitsRecord: ...

    async def request_limits(self, workspace_id: str, *, soft_cap_usd: Any = ...,
                             hard_cap_usd: Any = ...) -> LimitsRecord:
        """Record caps for the next meter tick; raises ``InvalidValue`` (store.errors) when hard < soft."""
        ...

    async def list_invoices(self, workspace_id: str, *, limit: int, before_id: str | None) -> list[InvoiceRecord]: ...

    async def meter_tick(self, now: int, config: BillingConfig) -> TickResult:
        """Roll up usage, apply limits, decide caps, fire soft-cap events, issue invoices: one transaction."""
        ...


class WebhookStore(Protocol):
    @property
    def outbox_signal(self) -> Signal: ...

    async def insert_webhook(self, hook: WebhookRecord, secret: str) -> None: ...

    async def get_webhook(self, workspace_id: str, webhook_id: str) -> WebhookRecord | None: ...

    async def list_webhooks(self, workspace_id: str, *, limit: int, before_id: str | None) -> list[WebhookRecord]: ...

    async def delete_webhook(self, workspace_id: str, webhook_id: str, now: int) -> bool: ...

    async def rotate_webhook_secret(self, workspace_id: str, webhook_id: str, secret: str, now: int) -> int | None:
        """Add ``secret``; older ones keep signing for 24 h. Returns when they stop; None: no such webhook."""
        ...

    async def list_webhook_attempts(self, workspace_id: str, webhook_id: str, *, limit: int,
                                    before_id: int | None) -> list[AttemptRecord]: ...

    async def claim_deliveries(self, now: int, limit: int, claim_ms: int, *,
                               skip_webhooks: Collection[str] = ()) -> list[DueDelivery]:
        """Claim due deliveries that head their (webhook, job) queue for ``claim_ms``, none of
        ``skip_webhooks``: replicas never send the same one at once; one left by a dead
        claimer is due again after it."""
        ...

    async def release_deliveries(self, deliveries: list[DueDelivery], now: int) -> None:
        """Hand back claimed deliveries that were not started: due again at ``now``."""
        ...

    async def next_delivery_due_after(self, now: int) -> int | None: ...

    async def delivery_target(self, webhook_id: str, now: int) -> DeliveryTarget | None: ...

    async def record_delivery_attempt(self, delivery: DueDelivery, *, attempted_at: int, status_code: int | None,
                                      latency_ms: int, error: str | None, outcome: str,
                                      next_attempt_at: int | None, now: int) -> None: ...

    async def cancel_delivery(self, delivery_id: int, now: int) -> None: ...
