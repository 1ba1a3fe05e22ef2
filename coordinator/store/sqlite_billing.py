"""SQLite queries for the usage ledger, hourly roll-ups, limits, caps and invoices.

The ledger holds one row per usage event, keyed by (agent, sequence number), so a replayed
event changes nothing. Agents report cumulative usage per attempt (one claim, one epoch);
the ledger stores the growth over the attempt's previous figure, so the ledger's sum over
any set of hours equals the sum of the jobs' own ``usage`` (the sum over their attempts).
The meter tick folds new rows into ``usage_hourly``; usage queries read roll-ups plus the
rows not yet rolled up.
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import structlog

from common.clock import from_millis, millis_to_rfc3339
from common.ids import new_id
from common.protocol import UsageEvent
from coordinator import billing, webhooks
from coordinator.store.base import AuditRecord
from coordinator.store.base_billing import InvoiceRecord, LimitsRecord, TickResult
from coordinator.store.db import Row, Tx
from coordinator.store.errors import InvalidValue
from coordinator.store.sqlite_audit import insert_audit_row
from coordinator.store.sqlite_core import SqliteCore
from coordinator.store.sqlite_webhooks import enqueue_workspace_event

log = structlog.get_logger("tanvrit.coordinator.billing")

UNCHANGED: Any = object()
_GPU_MODEL_KEY = "'gpuModel'"  # an SQL literal: the label's key


def record_usage(tx: Tx, agent_id: str, workspace_id: str, attempt: Row,
                 event: UsageEvent, now: int) -> None:
    """Ledger one usage event of one attempt, inside the events transaction. Keyed by (agent,
    seq): a replay is ignored.

    The agent's figures are cumulative per attempt; the ledger row is the growth over the
    attempt's previous figures (never negative), so attempts never net against each other.
    The attempt keeps its figures, and the job's usage is the sum over its attempts.

    The record is dated ``now``, but never before the last meter tick, so hours already rolled
    up (and months already invoiced) never change afterwards."""
    last_tick = tx.execute("SELECT last_tick_at FROM meter_state WHERE id = 1").fetchone()
    recorded_at = max(now, int(last_tick[0]) if last_tick else now)
    # The model the agent says the attempt's GPUs are (a job's GPUs are one model), else the
    # agent's gpuModel label (an older agent, or a host with one model).
    gpu_model = event.gpuModel
    if gpu_model is None:
        label = tx.execute(
            f"SELECT {tx.dialect.json_text('labels', _GPU_MODEL_KEY)} FROM agents WHERE id = ?", (agent_id,)
        ).fetchone()
        gpu_model = str(label[0] or "") if label else ""
    cpu = max(0, billing.to_micros(event.cpuSeconds) - billing.to_micros(attempt["cpu_seconds"]))
    gpu = max(0, billing.to_micros(event.gpuSeconds) - billing.to_micros(attempt["gpu_seconds"]))
    gb = max(0, billing.to_micros(event.gbSeconds) - billing.to_micros(attempt["gb_seconds"]))
    gpu_memory = max(0, billing.to_micros(event.gpuMemoryGbSeconds)
                     - billing.to_micros(attempt["gpu_memory_gb_seconds"])) if event.gpuMemoryGbSeconds else 0
    gpu_util = max(0, billing.to_micros(event.gpuUtilSeconds)
                   - billing.to_micros(attempt["gpu_util_seconds"])) if event.gpuUtilSeconds else 0
    inserted = tx.execute(
        """INSERT INTO usage_records (agent_id, seq, workspace_id, job_id, gpu_model, recorded_at,
                                     cpu_micros, gpu_micros, gb_micros, gpu_memory_micros, gpu_util_micros)
           VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (agent_id, seq) DO NOTHING""",
        (agent_id, event.seq, workspace_id, event.jobId, gpu_model, recorded_at, cpu, gpu, gb, gpu_memory, gpu_util),
    ).rowcount
    if not inserted:
        return
    greatest = tx.dialect.greatest
    # A figure the event leaves out (None) keeps the attempt's own: COALESCE(?, column).
    tx.execute(
        f"""UPDATE job_attempts SET cpu_seconds = {greatest("cpu_seconds", "?")},
                                    gpu_seconds = {greatest("gpu_seconds", "?")},
                                    gb_seconds = {greatest("gb_seconds", "?")},
                                    gpu_memory_gb_seconds = {greatest("COALESCE(gpu_memory_gb_seconds, ?)",
                                                                      "COALESCE(?, gpu_memory_gb_seconds)")},
                                    gpu_util_seconds = {greatest("COALESCE(gpu_util_seconds, ?)",
                                                                 "COALESCE(?, gpu_util_seconds)")},
                                    gpu_model = COALESCE(?, gpu_model)
            WHERE job_id = ? AND epoch = ?""",
        (event.cpuSeconds, event.gpuSeconds, event.gbSeconds, event.gpuMemoryGbSeconds, event.gpuMemoryGbSeconds,
         event.gpuUtilSeconds, event.gpuUtilSeconds, event.gpuModel, event.jobId, attempt["epoch"]),
    )
    tx.execute(
        """UPDATE jobs SET (cpu_seconds, gpu_seconds, gb_seconds) = (
               SELECT SUM(cpu_seconds), SUM(gpu_seconds), SUM(gb_seconds) FROM job_attempts WHERE job_id = ?)
           WHERE id = ?""",
        (event.jobId, event.jobId),
    )


def workspace_held(tx: Tx, workspace_id: str) -> bool:
    """True while the workspace is past its hard cap (as of the last meter tick): dispatch nothing."""
    row = tx.execute(
        "SELECT hard_cap_reached FROM billing_state WHERE workspace_id = ?", (workspace_id,)
    ).fetchone()
    return bool(row and row[0])


def _usage_between(tx: Tx, workspace_id: str, start: int, end: int) -> billing.UsageTotals:
    # One statement, so roll-ups and the not-yet-rolled tail are read from one snapshot.
    rows = tx.execute(
        """SELECT gpu_model, SUM(cpu_micros) AS cpu, SUM(gpu_micros) AS gpu, SUM(gb_micros) AS gb,
                  SUM(gpu_memory_micros) AS gpu_memory, SUM(gpu_util_micros) AS gpu_util FROM (
               SELECT gpu_model, cpu_micros, gpu_micros, gb_micros, gpu_memory_micros, gpu_util_micros
               FROM usage_hourly
               WHERE workspace_id = ? AND hour_start >= ? AND hour_start < ?
               UNION ALL
               SELECT gpu_model, cpu_micros, gpu_micros, gb_micros, gpu_memory_micros, gpu_util_micros
               FROM usage_records
               WHERE workspace_id = ? AND rolled_up = 0 AND recorded_at >= ? AND recorded_at < ?
           ) AS recorded GROUP BY gpu_model""",
        (workspace_id, start, end, workspace_id, start, end),
    ).fetchall()
    totals = billing.UsageTotals()
    for row in rows:
        totals.add(row["gpu_model"], int(row["cpu"] or 0), int(row["gpu"] or 0), int(row["gb"] or 0),
                   gpu_memory_micros=int(row["gpu_memory"] or 0), gpu_util_micros=int(row["gpu_util"] or 0))
    return totals


def _price_versions(tx: Tx) -> list[billing.PriceVersion]:
    return [billing.PriceVersion(row["effective_at"], billing.prices_from_json(json.loads(row["body"])))
            for row in tx.execute("SELECT effective_at, body FROM price_versions ORDER BY effective_at").fetchall()]


def _record_prices(tx: Tx, configured: billing.Prices, now: int) -> list[billing.PriceVersion]:
    """Record ``configured`` as a new price version if it differs from the latest; return all."""
    versions = _price_versions(tx)
    version = billing.new_price_version(versions, configured, now)
    if version is None:
        return versions
    tx.execute(
        """INSERT INTO price_versions (effective_at, recorded_at, body) VALUES (?, ?, ?)
           ON CONFLICT (effective_at) DO UPDATE SET recorded_at = excluded.recorded_at, body = excluded.body""",
        (version.effective_at, now, json.dumps(billing.prices_to_json(version.prices))),
    )
    log.info("price version recorded", effective_at=millis_to_rfc3339(version.effective_at),
             prices=billing.prices_to_json(version.prices))
    return _price_versions(tx)


def _priced_cost(tx: Tx, workspace_id: str, start: int, end: int,
                 versions: list[billing.PriceVersion], fallback: billing.Prices) -> Decimal:
    """The exact cost of the usage recorded in ``[start, end)``, each hour at the price then in effect."""
    return sum((billing.cost(_usage_between(tx, workspace_id, lo, hi), prices)
                for lo, hi, prices in billing.priced_spans(versions, start, end, fallback)), Decimal(0))


def _text(amount: Decimal | None) -> str | None:
    return None if amount is None else str(amount)


class BillingQueries(SqliteCore):
    async def usage_totals(self, workspace_id: str, start: int, end: int) -> billing.UsageTotals:
        """Usage recorded in ``[start, end)`` (whole hours), from roll-ups plus the open tail."""
        return await self._read_with(lambda tx: _usage_between(tx, workspace_id, start, end))

    async def usage_cost(self, workspace_id: str, start: int, end: int, fallback: billing.Prices) -> Decimal:
        """The exact cost of the usage recorded in ``[start, end)``, priced by the version in
        effect when it was recorded (``fallback`` before any version was recorded)."""
        return await self._read_with(
            lambda tx: _priced_cost(tx, workspace_id, start, end, _price_versions(tx), fallback))

    async def record_prices(self, configured: billing.Prices, now: int) -> list[billing.PriceVersion]:
        """Record ``configured`` as a new price version (from the next whole hour) if it
        differs from the latest one; return every version, oldest first."""
        return await self._write(lambda tx: _record_prices(tx, configured, now))

    async def workspace_plan(self, workspace_id: str) -> str | None:
        rows = await self._read("SELECT plan FROM workspaces WHERE id = ?", (workspace_id,))
        return str(rows[0]["plan"]) if rows else None

    async def hard_cap_reached(self, workspace_id: str) -> bool:
        rows = await self._read("SELECT hard_cap_reached FROM billing_state WHERE workspace_id = ?", (workspace_id,))
        return bool(rows and rows[0]["hard_cap_reached"])

    async def next_meter_tick(self) -> int | None:
        rows = await self._read("SELECT next_tick_at FROM meter_state WHERE id = 1")
        return int(rows[0]["next_tick_at"]) if rows else None

    async def get_limits(self, workspace_id: str) -> LimitsRecord:
        rows = await self._read("SELECT * FROM billing_state WHERE workspace_id = ?", (workspace_id,))
        return _limits(rows[0] if rows else None)

    async def request_limits(self, workspace_id: str, *, soft_cap_usd: Decimal | Any | None = UNCHANGED,
                             hard_cap_usd: Decimal | Any | None = UNCHANGED) -> LimitsRecord:
        """Record new caps for the next meter tick; an argument left ``UNCHANGED`` keeps its value.

        Raises ``InvalidValue`` (field ``hardCapUsd``) when the hard cap would be below the soft cap.
        """
        def write(tx: Tx) -> LimitsRecord:
            tx.execute("INSERT INTO billing_state (workspace_id) VALUES (?) ON CONFLICT (workspace_id) DO NOTHING",
                       (workspace_id,))
            row = tx.execute("SELECT * FROM billing_state WHERE workspace_id = ?", (workspace_id,)).fetchone()
            soft = billing.decimal_or_none(row["requested_soft_cap_usd"]) if soft_cap_usd is UNCHANGED else soft_cap_usd
            hard = billing.decimal_or_none(row["requested_hard_cap_usd"]) if hard_cap_usd is UNCHANGED else hard_cap_usd
            if soft is not None and hard is not None and hard < soft:
                raise InvalidValue(f"hardCapUsd ({hard}) must not be below softCapUsd ({soft})", field="hardCapUsd")
            tx.execute(
                """UPDATE billing_state SET requested_soft_cap_usd = ?, requested_hard_cap_usd = ?,
                          limits_pending = 1 WHERE workspace_id = ?""",
                (_text(soft), _text(hard), workspace_id),
            )
            updated = tx.execute("SELECT * FROM billing_state WHERE workspace_id = ?", (workspace_id,)).fetchone()
            return _limits(updated)

        return await self._write(write)

    async def list_invoices(self, workspace_id: str, *, limit: int, before_id: str | None) -> list[InvoiceRecord]:
        rows = await self._read(
            "SELECT * FROM invoices WHERE workspace_id = ? AND id < ? ORDER BY id DESC LIMIT ?",
            (workspace_id, before_id or "\uffff", limit),
        )
        return [InvoiceRecord(id=row["id"], workspace_id=row["workspace_id"], period_start=row["period_start"],
                              period_end=row["period_end"], issued_at=row["issued_at"], body=json.loads(row["body"]))
                for row in rows]

    async def meter_tick(self, now: int, config: billing.BillingConfig) -> TickResult:
        """One meter tick, in one transaction: roll up new usage, apply requested limits, decide
        caps on the month's unrounded cost, fire the soft-cap event once a month, and issue the
        invoices of closed months."""
        interval_ms = int(config.meter_interval_seconds * 1000)
        return await self._write(lambda tx: _tick(tx, now, config.prices, interval_ms))


def _tick(tx: Tx, now: int, prices: billing.Prices, interval_ms: int) -> TickResult:
    result = TickResult()
    # A tick is never dated before the previous one (a clock stepping back must not reopen hours).
    last = tx.execute("SELECT last_tick_at FROM meter_state WHERE id = 1").fetchone()
    now = max(now, int(last[0])) if last else now
    versions = _record_prices(tx, prices, now)
    rolled = tx.execute(
        f"""INSERT INTO usage_hourly (workspace_id, hour_start, gpu_model, cpu_micros, gpu_micros, gb_micros,
                                     gpu_memory_micros, gpu_util_micros)
           SELECT workspace_id, recorded_at - recorded_at % {billing.HOUR_MS} AS hour, gpu_model,
                  SUM(cpu_micros), SUM(gpu_micros), SUM(gb_micros), SUM(gpu_memory_micros), SUM(gpu_util_micros)
           FROM usage_records WHERE rolled_up = 0 GROUP BY workspace_id, hour, gpu_model
           ON CONFLICT (workspace_id, hour_start, gpu_model) DO UPDATE SET
               cpu_micros = cpu_micros + excluded.cpu_micros,
               gpu_micros = gpu_micros + excluded.gpu_micros,
               gb_micros = gb_micros + excluded.gb_micros,
               gpu_memory_micros = gpu_memory_micros + excluded.gpu_memory_micros,
               gpu_util_micros = gpu_util_micros + excluded.gpu_util_micros"""
    )
    result.rolled_up = rolled.rowcount
    tx.execute("UPDATE usage_records SET rolled_up = 1 WHERE rolled_up = 0")
    tx.execute(
        """INSERT INTO meter_state (id, last_tick_at, next_tick_at) VALUES (1, ?, ?)
           ON CONFLICT (id) DO UPDATE SET last_tick_at = excluded.last_tick_at, next_tick_at = excluded.next_tick_at""",
        (now, now + interval_ms),
    )
    this_month = billing.month_start(now)
    for workspace in tx.execute("SELECT id, plan, created_at FROM workspaces").fetchall():
        workspace_id = workspace["id"]
        tx.execute("INSERT INTO billing_state (workspace_id) VALUES (?) ON CONFLICT (workspace_id) DO NOTHING",
                       (workspace_id,))
        state = tx.execute("SELECT * FROM billing_state WHERE workspace_id = ?", (workspace_id,)).fetchone()
        soft, hard = billing.decimal_or_none(state["soft_cap_usd"]), billing.decimal_or_none(state["hard_cap_usd"])
        if state["limits_pending"]:
            soft = billing.decimal_or_none(state["requested_soft_cap_usd"])
            hard = billing.decimal_or_none(state["requested_hard_cap_usd"])
            tx.execute(
                """UPDATE billing_state SET soft_cap_usd = requested_soft_cap_usd,
                          hard_cap_usd = requested_hard_cap_usd, limits_pending = 0, limits_effective_at = ?
                   WHERE workspace_id = ?""",
                (now, workspace_id),
            )
        if soft is not None or hard is not None or state["hard_cap_reached"]:
            month_cost = _priced_cost(tx, workspace_id, this_month, now + 1, versions, prices)
            decision = billing.decide_caps(month_cost, soft, hard, state["soft_cap_notified_month"], this_month)
            if decision.hold != bool(state["hard_cap_reached"]):
                tx.execute("UPDATE billing_state SET hard_cap_reached = ? WHERE workspace_id = ?",
                             (int(decision.hold), workspace_id))
                (result.held if decision.hold else result.released).append(workspace_id)
            if decision.notify_soft_cap:
                tx.execute("UPDATE billing_state SET soft_cap_notified_month = ? WHERE workspace_id = ?",
                             (this_month, workspace_id))
                data = {"workspaceId": workspace_id, "periodStart": millis_to_rfc3339(this_month),
                        "softCapUsd": float(soft) if soft is not None else None,
                        "hardCapUsd": float(hard) if hard is not None else None,
                        "costUsd": float(billing.round_usd(month_cost))}
                event_id = enqueue_workspace_event(tx, workspace_id, webhooks.SOFT_CAP_REACHED, data,
                                                   ordering_key=f"billing:{workspace_id}", now=now)
                # Not a request: the meter tick is the actor, and the event id stands in for a request id.
                insert_audit_row(tx, AuditRecord(
                    id=new_id("aud", from_millis(now)), workspace_id=workspace_id, at=now, actor="system:meter",
                    action=webhooks.SOFT_CAP_REACHED, target=workspace_id, result="success", status=0,
                    error_code=None, request_id=event_id or new_id("req", from_millis(now)), source=None,
                    method="SYSTEM", path="meter tick"))
                log.warning("soft cap reached", workspace_id=workspace_id, cost=str(billing.round_usd(month_cost)),
                            soft_cap=str(soft))
                result.soft_cap_events.append(workspace_id)
        _issue_invoices(tx, workspace, state["next_invoice_month"], now, versions, prices, result)
    return result


def _issue_invoices(tx: Tx, workspace: Row, next_month: int | None, now: int,
                    versions: list[billing.PriceVersion], prices: billing.Prices, result: TickResult) -> None:
    workspace_id = workspace["id"]
    if workspace["plan"] not in billing.INVOICING_PLANS:
        if next_month is not None:
            tx.execute("UPDATE billing_state SET next_invoice_month = NULL WHERE workspace_id = ?", (workspace_id,))
        return
    if next_month is None:
        next_month = billing.first_invoice_month(workspace["created_at"], now)
    for period_start in billing.months_to_invoice(next_month, now):
        period_end = billing.next_month(period_start)
        # Each hour at the price in effect then: a price change mid-month gives a resource a
        # line per price.
        lines = billing.merge_invoice_lines([
            billing.invoice_lines(_usage_between(tx, workspace_id, lo, hi), span_prices)
            for lo, hi, span_prices in billing.priced_spans(versions, period_start, period_end, prices)])
        subtotal = sum((line.amount_usd for line in lines), Decimal(0))
        # Dated by the period it covers, so invoice ids sort by month even when a tick issues several.
        invoice_id = new_id("inv", from_millis(period_end - 1))
        body = {
            "id": invoice_id,
            "periodStart": millis_to_rfc3339(period_start),
            "periodEnd": millis_to_rfc3339(period_end),
            "issuedAt": millis_to_rfc3339(now),
            "currency": "USD",
            "lines": [
                {"resource": line.resource, "gpuModel": line.gpu_model, "unit": line.unit,
                 "quantity": str(line.quantity), "unitPriceUsd": str(line.unit_price_usd),
                 "amountUsd": str(line.amount_usd)}
                for line in lines
            ],
            "subtotalUsd": str(subtotal),
            "totalUsd": str(billing.round_usd(subtotal)),
        }
        inserted = tx.execute(
            """INSERT INTO invoices (id, workspace_id, period_start, period_end, issued_at, body)
               VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING""",
            (invoice_id, workspace_id, period_start, period_end, now, json.dumps(body)),
        ).rowcount
        if inserted:
            result.invoices.append(invoice_id)
        next_month = period_end
    tx.execute("UPDATE billing_state SET next_invoice_month = ? WHERE workspace_id = ?", (next_month, workspace_id))


def _limits(row: Row | None) -> LimitsRecord:
    if row is None:
        return LimitsRecord(None, None, None, False, False)
    pending = bool(row["limits_pending"])
    return LimitsRecord(
        soft_cap_usd=billing.decimal_or_none(row["requested_soft_cap_usd"]),
        hard_cap_usd=billing.decimal_or_none(row["requested_hard_cap_usd"]),
        effective_at=None if pending else row["limits_effective_at"],
        pending=pending,
        hard_cap_reached=bool(row["hard_cap_reached"]),
    )
