"""Logical CPUs this process may use (affinity, not the host total)."""

from __future__ import annotations

import os

import psutil

from agentd.fingerprint import Facts


class CpuProbe:
    name = "cpu"

    def probe(self, facts: Facts) -> None:
        try:
            count = len(os.sched_getaffinity(0))
        except (AttributeError, OSError):
            count = psutil.cpu_count(logical=True) or 1
        facts.cpus = float(count)
        facts.labels["cpus"] = str(count)
