"""Why each QUEUED job waits (``scheduler.queued_reason``), kept current by a periodic refresh."""

from __future__ import annotations

import json

from coordinator import scheduler
from coordinator.scheduler import AgentSnapshot
from coordinator.services.tx import Tx
from coordinator.store.repo import jobs as rows
from coordinator.store.repo.billing import workspace_held
from coordinator.store.sqlite_core import loads_or_none


def refresh_queued_reasons(tx: Tx, now: int | None = None) -> int:
    """Set the reason of every QUEUED job claimable at ``now`` to what placement says now;
    how many jobs changed. Held jobs (dependencies pending, a backoff running) keep their own
    reason (without ``now``, every backoff counts as running)."""
    held_until = now if now is not None else 2**62
    # Grouped: one decision per distinct (workspace, selector, resources), however many
    # jobs wait with it, so a long queue costs a handful of rows per tick.
    agents: dict[str, list[AgentSnapshot]] = {}
    held: dict[str, bool] = {}
    changed = 0
    for workspace_id, labels, resources, reason, _ in rows.queued_groups(tx, held_until):
        if workspace_id not in agents:
            agents[workspace_id] = rows.agent_snapshots(tx, workspace_id)
            held[workspace_id] = workspace_held(tx, workspace_id)
        wanted = scheduler.queued_reason(json.loads(labels), loads_or_none(resources), agents[workspace_id],
                                         held=held[workspace_id], waited=True)
        if wanted != reason:
            changed += rows.set_group_reason(tx, held_until, workspace_id=workspace_id, labels=labels,
                                             resources=resources, old_reason=reason, new_reason=wanted)
    return changed
