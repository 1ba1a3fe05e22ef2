"""What a usage event adds to the ledger.

The ledger holds one row per usage event, keyed by (agent, sequence number), so a replayed
event changes nothing. Agents report cumulative usage per attempt (one claim, one epoch);
the ledger stores the growth over the attempt's previous figure, so the ledger's sum over
any set of hours equals the sum of the jobs' own ``usage`` (the sum over their attempts).
"""

from __future__ import annotations

from common.protocol import UsageEvent
from coordinator import billing
from coordinator.store.db import Row, Tx
from coordinator.store.repo import billing as rows

# ``record_usage``'s ``last_tick`` when the caller has not read it.
UNREAD = object()


def record_usage(tx: Tx, agent_id: str, workspace_id: str, attempt: Row,
                 event: UsageEvent, now: int, *, agent_gpu_model: str | None = None,
                 last_tick: int | object | None = UNREAD) -> Row | None:
    """Ledger one usage event of one attempt, inside the events transaction. Keyed by (agent,
    seq): a replay is ignored.

    The agent's figures are cumulative per attempt; the ledger row is the growth over the
    attempt's previous figures (never negative), so attempts never net against each other.
    The attempt keeps its figures, and the job's usage is the sum over its attempts.

    The record is dated ``now``, but never before the last meter tick, so hours already rolled
    up (and months already invoiced) never change afterwards. ``agent_gpu_model``: the agent's
    gpuModel label ('' when none) where the caller has read it already, else it is read here;
    ``last_tick``: the meter's last tick (None: never) where this transaction has read it already
    (an events batch reads it with its agent), else it is read here. Returns the job's row once
    its usage changed, None for a replay (nothing changed)."""
    if last_tick is UNREAD:
        last_tick = rows.last_tick_at(tx)
    assert last_tick is None or isinstance(last_tick, int)
    recorded_at = max(now, last_tick if last_tick is not None else now)
    # The model the agent says the attempt's GPUs are (a job's GPUs are one model), else the
    # agent's gpuModel label (an older agent, or a host with one model).
    gpu_model = event.gpuModel
    if gpu_model is None:
        gpu_model = agent_gpu_model if agent_gpu_model is not None else rows.agent_gpu_model_label(tx, agent_id)
    cpu = max(0, billing.to_micros(event.cpuSeconds) - billing.to_micros(attempt["cpu_seconds"]))
    gpu = max(0, billing.to_micros(event.gpuSeconds) - billing.to_micros(attempt["gpu_seconds"]))
    gb = max(0, billing.to_micros(event.gbSeconds) - billing.to_micros(attempt["gb_seconds"]))
    gpu_memory = max(0, billing.to_micros(event.gpuMemoryGbSeconds)
                     - billing.to_micros(attempt["gpu_memory_gb_seconds"])) if event.gpuMemoryGbSeconds else 0
    gpu_util = max(0, billing.to_micros(event.gpuUtilSeconds)
                   - billing.to_micros(attempt["gpu_util_seconds"])) if event.gpuUtilSeconds else 0
    inserted = rows.insert_usage_record(
        tx, agent_id=agent_id, seq=event.seq, workspace_id=workspace_id, job_id=event.jobId, gpu_model=gpu_model,
        recorded_at=recorded_at, cpu_micros=cpu, gpu_micros=gpu, gb_micros=gb, gpu_memory_micros=gpu_memory,
        gpu_util_micros=gpu_util)
    if not inserted:
        return None
    rows.raise_attempt_usage(tx, event.jobId, attempt["epoch"], cpu_seconds=event.cpuSeconds,
                             gpu_seconds=event.gpuSeconds, gb_seconds=event.gbSeconds,
                             gpu_memory_gb_seconds=event.gpuMemoryGbSeconds, gpu_util_seconds=event.gpuUtilSeconds,
                             gpu_model=event.gpuModel)
    return rows.sum_job_usage(tx, event.jobId)
