"""Price versions and what recorded usage costs under them."""

from __future__ import annotations

from decimal import Decimal

import structlog

from common.clock import millis_to_rfc3339
from coordinator import billing
from coordinator.store.db import Tx
from coordinator.store.repo import billing as rows

log = structlog.get_logger("tanvrit.coordinator.billing")


def record_prices(tx: Tx, configured: billing.Prices, now: int) -> list[billing.PriceVersion]:
    """Record ``configured`` as a new price version if it differs from the latest; return all."""
    versions = rows.price_versions(tx)
    version = billing.new_price_version(versions, configured, now)
    if version is None:
        return versions
    rows.upsert_price_version(tx, version, now)
    log.info("price version recorded", effective_at=millis_to_rfc3339(version.effective_at),
             prices=billing.prices_to_json(version.prices))
    return rows.price_versions(tx)


def priced_cost(tx: Tx, workspace_id: str, start: int, end: int,
                versions: list[billing.PriceVersion], fallback: billing.Prices) -> Decimal:
    """The exact cost of the usage recorded in ``[start, end)``, each hour at the price then in effect."""
    return sum((billing.cost(rows.usage_between(tx, workspace_id, lo, hi), prices)
                for lo, hi, prices in billing.priced_spans(versions, start, end, fallback)), Decimal(0))
