"""How late the agent's event loop runs: a task asks to wake every ``interval`` and measures
how much later than asked it did. Anything that blocks the loop (a synchronous disk write, a
long read, a slow library call) shows up here, and so in the heartbeat (``loopLagMs``) and the
coordinator's ``tanvrit_agent_loop_lag_seconds`` metric."""

from __future__ import annotations

import structlog
import trio

log = structlog.get_logger("tanvrit.agentd")

# A lag worth a log line: long enough that heartbeats or timeouts may have been late.
WARN_LAG_SECONDS = 1.0


class LoopLag:
    def __init__(self, interval: float = 0.05) -> None:
        self.interval = interval
        self.worst_ever = 0.0
        self._worst_since_taken = 0.0

    def record(self, lag: float) -> None:
        lag = max(0.0, lag)
        self.worst_ever = max(self.worst_ever, lag)
        self._worst_since_taken = max(self._worst_since_taken, lag)
        if lag >= WARN_LAG_SECONDS:
            log.warning("event loop was blocked", lag_s=round(lag, 3))

    def take_worst(self) -> float:
        """The worst lag (seconds) since the last call; resets it."""
        worst, self._worst_since_taken = self._worst_since_taken, 0.0
        return worst

    async def serve(self) -> None:
        while True:
            asked = trio.current_time() + self.interval
            await trio.sleep_until(asked)
            self.record(trio.current_time() - asked)
