"""Retention: what is deleted, and when (issue 14). Pure rules over a ``tx``, with ``now`` given.

Kept for good: jobs themselves (the list is the history), audit rows (append-only, as the
contract says: ``audit_events`` refuses DELETE), invoices, hourly usage roll-ups.

Deleted once older than their setting (``[retention]``, docs/configuration.md; 0 keeps forever):

- ``job_logs_days``: the log chunks of a job that reached a terminal state that long ago
  (``finished_at``). Its ``logSize`` stays, and a read of the log answers empty.
- ``webhook_deliveries_days``: deliveries that are no longer pending (delivered, failed,
  cancelled) and completed that long ago, their attempts, and then each event none of
  whose deliveries is left.
- ``usage_detail_days``: ledger rows already rolled up into ``usage_hourly`` and older than the
  end of the workspace's last issued invoice. Nothing reads a rolled-up row (usage queries read
  the roll-ups plus the rows not yet rolled up) and agents' re-sent records are refused by their
  sequence number (``agents.last_seq``), not by this row, so deleting it changes no figure.
- ``auth_failures_days``: the per-minute counts of failed authentications.

Each call deletes at most ``batch`` rows of each kind, so that one transaction stays short (the
writer is shared with every request); the caller repeats until less than a batch was found.
Every statement walks an index to what it deletes (migrations 0045, 0046), never a table.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ulid import ULID

from common.states import TERMINAL_JOB_STATES
from coordinator.services.tx import Tx

DAY_MS = 86_400_000


@dataclass(frozen=True)
class RetentionPolicy:
    """How long each kind is kept, in days (0: forever), and how often retention runs."""

    interval_seconds: float = 3600.0
    job_logs_days: float = 30.0
    webhook_deliveries_days: float = 30.0
    usage_detail_days: float = 90.0
    auth_failures_days: float = 90.0
    batch: int = 1000


@dataclass
class Pruned:
    """Rows deleted, by kind."""

    job_logs: int = 0
    webhook_deliveries: int = 0
    webhook_attempts: int = 0
    webhook_events: int = 0
    usage_records: int = 0
    auth_failures: int = 0
    # Kinds that found a whole batch: there is more to delete.
    more: set[str] = field(default_factory=set)

    def add(self, other: Pruned) -> None:
        for name in ("job_logs", "webhook_deliveries", "webhook_attempts", "webhook_events", "usage_records",
                     "auth_failures"):
            setattr(self, name, getattr(self, name) + getattr(other, name))

    @property
    def total(self) -> int:
        return (self.job_logs + self.webhook_deliveries + self.webhook_attempts + self.webhook_events
                + self.usage_records + self.auth_failures)


def cutoff(now: int, days: float) -> int | None:
    """The time before which a kind kept ``days`` is deleted; None when kept forever."""
    return None if days <= 0 else now - int(days * DAY_MS)


def _job_id_bound(millis: int) -> str:
    """The highest job id minted at ``millis`` (ids sort by creation time; ``common.ids``)."""
    millis = min(max(millis, 0), 2**48 - 1)
    return "job_" + str(ULID.from_bytes(millis.to_bytes(6, "big") + b"\xff" * 10)).lower()


def prune_batch(tx: Tx, now: int, policy: RetentionPolicy) -> Pruned:
    """One transaction's worth of pruning at ``now`` (see the module docstring)."""
    pruned = Pruned()
    batch = policy.batch
    logs_before = cutoff(now, policy.job_logs_days)
    if logs_before is not None:
        pruned.job_logs, more = _prune_job_logs(tx, logs_before, batch)
        if more:
            pruned.more.add("job_logs")
    deliveries_before = cutoff(now, policy.webhook_deliveries_days)
    if deliveries_before is not None:
        _prune_deliveries(tx, deliveries_before, batch, pruned)
    usage_before = cutoff(now, policy.usage_detail_days)
    if usage_before is not None:
        pruned.usage_records = _prune_usage(tx, usage_before, batch)
        if pruned.usage_records >= batch:
            pruned.more.add("usage_records")
    failures_before = cutoff(now, policy.auth_failures_days)
    if failures_before is not None:
        pruned.auth_failures = tx.execute("DELETE FROM auth_failures WHERE minute < ?", (failures_before,)).rowcount
    return pruned


def _prune_job_logs(tx: Tx, before: int, batch: int) -> tuple[int, bool]:
    # A job finished before ``before`` was created before it too, so only log rows of jobs
    # created before it are read: a range of the log table's key, which holds just the logs
    # retention has not reached yet. A batch is ``batch`` jobs' logs.
    terminal = sorted(state.value for state in TERMINAL_JOB_STATES)
    jobs = [row[0] for row in tx.execute(
        f"""SELECT l.job_id FROM job_logs AS l JOIN jobs AS j ON j.id = l.job_id
            WHERE l.job_id <= ? AND j.state IN ({', '.join('?' for _ in terminal)}) AND j.finished_at < ?
            GROUP BY l.job_id ORDER BY l.job_id LIMIT ?""",
        (_job_id_bound(before), *terminal, before, batch),
    ).fetchall()]
    deleted = 0
    for start in range(0, len(jobs), 500):
        chunk = jobs[start:start + 500]
        deleted += tx.execute(f"DELETE FROM job_logs WHERE job_id IN ({', '.join('?' for _ in chunk)})",
                              tuple(chunk)).rowcount
    return deleted, len(jobs) >= batch


def _prune_deliveries(tx: Tx, before: int, batch: int, pruned: Pruned) -> None:
    rows = tx.execute(
        """SELECT id, event_id FROM webhook_deliveries WHERE state <> 'pending' AND completed_at < ?
           ORDER BY completed_at LIMIT ?""",
        (before, batch),
    ).fetchall()
    if not rows:
        return
    if len(rows) >= batch:
        pruned.more.add("webhook_deliveries")
    ids = [row[0] for row in rows]
    events = sorted({row[1] for row in rows})
    for start in range(0, len(ids), 500):
        chunk = ids[start:start + 500]
        marks = ", ".join("?" for _ in chunk)
        pruned.webhook_attempts += tx.execute(f"DELETE FROM webhook_attempts WHERE delivery_id IN ({marks})",
                                              tuple(chunk)).rowcount
        pruned.webhook_deliveries += tx.execute(f"DELETE FROM webhook_deliveries WHERE id IN ({marks})",
                                                tuple(chunk)).rowcount
    for start in range(0, len(events), 500):
        chunk = events[start:start + 500]
        pruned.webhook_events += tx.execute(
            f"""DELETE FROM webhook_events WHERE id IN ({', '.join('?' for _ in chunk)})
                AND NOT EXISTS (SELECT 1 FROM webhook_deliveries AS d WHERE d.event_id = webhook_events.id)""",
            tuple(chunk),
        ).rowcount


def _prune_usage(tx: Tx, before: int, batch: int) -> int:
    rows = tx.execute(
        """SELECT u.agent_id, u.seq FROM usage_records AS u
           WHERE u.rolled_up = 1 AND u.recorded_at < ?
             AND u.recorded_at < (SELECT COALESCE(MAX(i.period_end), 0) FROM invoices AS i
                                  WHERE i.workspace_id = u.workspace_id)
           ORDER BY u.recorded_at LIMIT ?""",
        (before, batch),
    ).fetchall()
    deleted = 0
    for row in rows:
        deleted += tx.execute("DELETE FROM usage_records WHERE agent_id = ? AND seq = ?", (row[0], row[1])).rowcount
    return deleted
