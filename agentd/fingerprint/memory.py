"""Total memory, in MiB."""

from __future__ import annotations

import psutil

from agentd.fingerprint import Facts


class MemoryProbe:
    name = "memory"

    def probe(self, facts: Facts) -> None:
        total_mb = psutil.virtual_memory().total // (1024 * 1024)
        facts.memory_mb = int(total_mb)
        facts.labels["memoryMb"] = str(total_mb)
