"""Data access for the usage ledger, hourly roll-ups, price versions, caps and invoices.

The rules that use these (what a usage event adds, what a meter tick changes, what an
invoice says) are in ``coordinator.services.usage_ledger``, ``billing_tick`` and ``invoices``.
"""

from __future__ import annotations

import json
from typing import Any

from coordinator import billing
from coordinator.store.base_billing import LimitsRecord
from coordinator.store.db import Row, Tx

_GPU_MODEL_KEY = "'gpuModel'"  # an SQL literal: the label's key


def last_tick_at(tx: Tx) -> int | None:
    """When the last meter tick ran (None: never)."""
    row = tx.execute("SELECT last_tick_at FROM meter_state WHERE id = 1").fetchone()
    return int(row[0]) if row else None


def set_meter_state(tx: Tx, last_tick: int, next_tick: int) -> None:
    tx.execute(
        """INSERT INTO meter_state (id, last_tick_at, next_tick_at) VALUES (1, ?, ?)
           ON CONFLICT (id) DO UPDATE SET last_tick_at = excluded.last_tick_at, next_tick_at = excluded.next_tick_at""",
        (last_tick, next_tick),
    )


def gpu_model_label_sql(tx: Tx) -> str:
    """The SQL of an agent's ``gpuModel`` label (NULL when it has none), over ``agents``' columns."""
    return tx.dialect.json_text("labels", _GPU_MODEL_KEY)


def agent_gpu_model_label(tx: Tx, agent_id: str) -> str:
    """The agent's ``gpuModel`` label ('' when it has none)."""
    label = tx.execute(
        f"SELECT {gpu_model_label_sql(tx)} FROM agents WHERE id = ?", (agent_id,)
    ).fetchone()
    return str(label[0] or "") if label else ""


def insert_usage_record(tx: Tx, *, agent_id: str, seq: int, workspace_id: str, job_id: str,
                        gpu_model: str, recorded_at: int, cpu_micros: int, gpu_micros: int, gb_micros: int,
                        gpu_memory_micros: int, gpu_util_micros: int) -> bool:
    """Ledger one row keyed by (agent, seq); False when that key is already there (a replay)."""
    inserted: int = tx.execute(
        """INSERT INTO usage_records (agent_id, seq, workspace_id, job_id, gpu_model, recorded_at,
                                     cpu_micros, gpu_micros, gb_micros, gpu_memory_micros, gpu_util_micros)
           VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (agent_id, seq) DO NOTHING""",
        (agent_id, seq, workspace_id, job_id, gpu_model, recorded_at, cpu_micros, gpu_micros, gb_micros,
         gpu_memory_micros, gpu_util_micros),
    ).rowcount
    return bool(inserted)


def raise_attempt_usage(tx: Tx, job_id: str, epoch: int, *, cpu_seconds: float,
                        gpu_seconds: float, gb_seconds: float, gpu_memory_gb_seconds: float | None,
                        gpu_util_seconds: float | None, gpu_model: str | None) -> None:
    """Raise the attempt's cumulative figures to these (never lower them)."""
    greatest = tx.dialect.greatest
    # A figure left out (None) keeps the attempt's own: COALESCE(?, column), the same on both databases.
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
        (cpu_seconds, gpu_seconds, gb_seconds, gpu_memory_gb_seconds, gpu_memory_gb_seconds,
         gpu_util_seconds, gpu_util_seconds, gpu_model, job_id, epoch),
    )


def sum_job_usage(tx: Tx, job_id: str) -> Row | None:
    """Set the job's usage to the sum over its attempts; the job's row as changed."""
    rows = tx.execute(
        """UPDATE jobs SET (cpu_seconds, gpu_seconds, gb_seconds) = (
               SELECT SUM(cpu_seconds), SUM(gpu_seconds), SUM(gb_seconds) FROM job_attempts WHERE job_id = ?)
           WHERE id = ? RETURNING *""",
        (job_id, job_id),
    ).fetchall()
    return rows[0] if rows else None


def workspace_held(tx: Tx, workspace_id: str) -> bool:
    """True while the workspace is past its hard cap (as of the last meter tick): dispatch nothing."""
    row = tx.execute(
        "SELECT hard_cap_reached FROM billing_state WHERE workspace_id = ?", (workspace_id,)
    ).fetchone()
    return bool(row and row[0])


def usage_between(tx: Tx, workspace_id: str, start: int, end: int) -> billing.UsageTotals:
    """Usage recorded in ``[start, end)``: roll-ups plus the rows not yet rolled up."""
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


def price_versions(tx: Tx) -> list[billing.PriceVersion]:
    """Every recorded price version, oldest first."""
    return [billing.PriceVersion(row["effective_at"], billing.prices_from_json(json.loads(row["body"])))
            for row in tx.execute("SELECT effective_at, body FROM price_versions ORDER BY effective_at").fetchall()]


def upsert_price_version(tx: Tx, version: billing.PriceVersion, now: int) -> None:
    tx.execute(
        """INSERT INTO price_versions (effective_at, recorded_at, body) VALUES (?, ?, ?)
           ON CONFLICT (effective_at) DO UPDATE SET recorded_at = excluded.recorded_at, body = excluded.body""",
        (version.effective_at, now, json.dumps(billing.prices_to_json(version.prices))),
    )


def roll_up_usage(tx: Tx) -> int:
    """Fold every ledger row not yet rolled up into ``usage_hourly``; return the roll-up rows touched.

    The rows are first marked as being rolled up (2), then summed, then marked done (1): on
    PostgreSQL each statement sees the rows committed before it started, so summing ``= 0`` and
    then marking ``= 0`` done would mark a row committed in between without counting it."""
    tx.execute("UPDATE usage_records SET rolled_up = 2 WHERE rolled_up = 0")
    # The target's columns are named with the table: PostgreSQL finds a bare name there ambiguous.
    rolled = tx.execute(
        f"""INSERT INTO usage_hourly (workspace_id, hour_start, gpu_model, cpu_micros, gpu_micros, gb_micros,
                                     gpu_memory_micros, gpu_util_micros)
           SELECT workspace_id, recorded_at - recorded_at % {billing.HOUR_MS} AS hour, gpu_model,
                  SUM(cpu_micros), SUM(gpu_micros), SUM(gb_micros), SUM(gpu_memory_micros), SUM(gpu_util_micros)
           FROM usage_records WHERE rolled_up = 2 GROUP BY workspace_id, hour, gpu_model
           ON CONFLICT (workspace_id, hour_start, gpu_model) DO UPDATE SET
               cpu_micros = usage_hourly.cpu_micros + excluded.cpu_micros,
               gpu_micros = usage_hourly.gpu_micros + excluded.gpu_micros,
               gb_micros = usage_hourly.gb_micros + excluded.gb_micros,
               gpu_memory_micros = usage_hourly.gpu_memory_micros + excluded.gpu_memory_micros,
               gpu_util_micros = usage_hourly.gpu_util_micros + excluded.gpu_util_micros"""
    )
    count: int = rolled.rowcount
    tx.execute("UPDATE usage_records SET rolled_up = 1 WHERE rolled_up = 2")
    return count


def workspaces(tx: Tx) -> list[Row]:
    """Every workspace: ``id``, ``plan``, ``created_at``."""
    return tx.execute("SELECT id, plan, created_at FROM workspaces").fetchall()


def billing_state(tx: Tx, workspace_id: str) -> Row:
    """The workspace's ``billing_state`` row, created (all defaults) if it has none yet."""
    tx.execute("INSERT INTO billing_state (workspace_id) VALUES (?) ON CONFLICT (workspace_id) DO NOTHING",
               (workspace_id,))
    row: Row = tx.execute("SELECT * FROM billing_state WHERE workspace_id = ?", (workspace_id,)).fetchone()
    return row


def set_requested_limits(tx: Tx, workspace_id: str, soft_cap_usd: str | None,
                         hard_cap_usd: str | None) -> None:
    """Record caps (decimal strings) to take effect at the next meter tick."""
    tx.execute(
        """UPDATE billing_state SET requested_soft_cap_usd = ?, requested_hard_cap_usd = ?,
                  limits_pending = 1 WHERE workspace_id = ?""",
        (soft_cap_usd, hard_cap_usd, workspace_id),
    )


def apply_requested_limits(tx: Tx, workspace_id: str, now: int) -> None:
    """The requested caps become the caps in force, effective ``now``."""
    tx.execute(
        """UPDATE billing_state SET soft_cap_usd = requested_soft_cap_usd,
                  hard_cap_usd = requested_hard_cap_usd, limits_pending = 0, limits_effective_at = ?
           WHERE workspace_id = ?""",
        (now, workspace_id),
    )


def set_hard_cap_reached(tx: Tx, workspace_id: str, reached: bool) -> None:
    tx.execute("UPDATE billing_state SET hard_cap_reached = ? WHERE workspace_id = ?", (int(reached), workspace_id))


def set_soft_cap_notified_month(tx: Tx, workspace_id: str, month: int) -> None:
    tx.execute("UPDATE billing_state SET soft_cap_notified_month = ? WHERE workspace_id = ?", (month, workspace_id))


def set_next_invoice_month(tx: Tx, workspace_id: str, month: int | None) -> None:
    tx.execute("UPDATE billing_state SET next_invoice_month = ? WHERE workspace_id = ?", (month, workspace_id))


def insert_invoice(tx: Tx, *, invoice_id: str, workspace_id: str, period_start: int,
                   period_end: int, issued_at: int, body: dict[str, Any]) -> bool:
    """Store one invoice; False when an invoice with that id is already there."""
    inserted: int = tx.execute(
        """INSERT INTO invoices (id, workspace_id, period_start, period_end, issued_at, body)
           VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING""",
        (invoice_id, workspace_id, period_start, period_end, issued_at, json.dumps(body)),
    ).rowcount
    return bool(inserted)


def limits_record(row: Row | None) -> LimitsRecord:
    """The caps as last requested, from a ``billing_state`` row (None: the defaults, no caps)."""
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
