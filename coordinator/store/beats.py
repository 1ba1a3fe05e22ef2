"""Heartbeats that change nothing, kept in memory and flushed in batches.

Most heartbeats only say "still here": same state, same running jobs, nothing to confirm.
Writing each as its own transaction made liveness the largest writer of a coordinator with
thousands of agents (5,000 agents beating every 5 s is 1,000 writes a second). Such a beat
is remembered here instead (agent id -> when it was heard), and every few seconds one
transaction moves the newest time of every agent heard into ``agents.last_heartbeat_at``.

The lease rules are unchanged because liveness is only ever decided from the database after
a flush:

- on one process, the liveness pass flushes this buffer before it reads the pulses, and a beat
  is put here *before* the store looks at it, so any beat that arrived before the pass counts;
- with several replicas, each flushes its own buffer every ``DEFAULT_FLUSH_SECONDS``; the leader sees
  an agent's beat at most that (plus one write) late. That is safe while
  ``heartbeat interval + flush interval`` stays well under the liveness grace (defaults:
  5 s + 2 s against 30 s).

A flush never moves ``last_heartbeat_at`` backwards (compare-and-set on the older value), and
it never revives a DOWN agent: only a beat that changes something does (the write path).
"""

from __future__ import annotations

from coordinator.store.db import Tx

# Flush at least this often: well under the 30 s liveness grace (see the module docstring).
DEFAULT_FLUSH_SECONDS = 2.0


class BeatBuffer:
    """The newest unflushed beat time (ms) of each agent heard since the last flush."""

    def __init__(self) -> None:
        self._seen: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._seen)

    def heard(self, agent_id: str, now: int) -> None:
        if self._seen.get(agent_id, -1) < now:
            self._seen[agent_id] = now

    def last_heard(self, agent_id: str) -> int | None:
        """The unflushed beat of ``agent_id`` (None: nothing newer than what was flushed)."""
        return self._seen.get(agent_id)

    def take(self) -> dict[str, int]:
        """Everything buffered, emptying the buffer (give it back with ``restore`` on failure)."""
        taken, self._seen = self._seen, {}
        return taken

    def restore(self, taken: dict[str, int]) -> None:
        for agent_id, at in taken.items():
            self.heard(agent_id, at)


def flush_beats(tx: Tx, seen: dict[str, int]) -> int:
    """Move each agent's buffered beat into ``last_heartbeat_at`` (only ever forwards); the
    number of agents whose row moved."""
    moved = 0
    for agent_id, at in seen.items():
        moved += tx.execute(
            """UPDATE agents SET last_heartbeat_at = ?
               WHERE id = ? AND (last_heartbeat_at IS NULL OR last_heartbeat_at < ?)""",
            (at, agent_id, at),
        ).rowcount
    return moved
