"""Spending caps a workspace asks for: checked here, applied by the next meter tick."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from coordinator import billing
from coordinator.store.base_billing import LimitsRecord
from coordinator.store.db import Tx
from coordinator.store.errors import InvalidValue
from coordinator.store.repo import billing as rows

UNCHANGED: Any = object()


def _text(amount: Decimal | None) -> str | None:
    return None if amount is None else str(amount)


def request_limits(tx: Tx, workspace_id: str, *, soft_cap_usd: Decimal | Any | None = UNCHANGED,
                   hard_cap_usd: Decimal | Any | None = UNCHANGED) -> LimitsRecord:
    """Record new caps for the next meter tick; an argument left ``UNCHANGED`` keeps the value
    last requested.

    Raises ``InvalidValue`` (field ``hardCapUsd``) when the hard cap would be below the soft cap.
    """
    row = rows.billing_state(tx, workspace_id)
    soft = billing.decimal_or_none(row["requested_soft_cap_usd"]) if soft_cap_usd is UNCHANGED else soft_cap_usd
    hard = billing.decimal_or_none(row["requested_hard_cap_usd"]) if hard_cap_usd is UNCHANGED else hard_cap_usd
    if soft is not None and hard is not None and hard < soft:
        raise InvalidValue(f"hardCapUsd ({hard}) must not be below softCapUsd ({soft})", field="hardCapUsd")
    rows.set_requested_limits(tx, workspace_id, _text(soft), _text(hard))
    return rows.limits_record(rows.billing_state(tx, workspace_id))
