"""No cgroups: jobs still run, signalled by process group and metered with psutil by the
executor. The agent reports the label ``isolation=none`` and warns at start."""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path

from agentd.cgroups.base import Limits, Sample, Swept


class NoJobCgroup:
    def __init__(self, name: str) -> None:
        self.name = name

    @property
    def procs_files(self) -> list[Path]:
        return []

    def pids(self) -> list[int]:
        return []

    def signal(self, signum: int) -> None:
        return None

    def sample(self) -> Sample | None:
        return None

    def oom_killed(self) -> bool:
        return False

    def remove(self) -> None:
        return None


class NoCgroups:
    kind = "none"

    def __init__(self, reason: str = "") -> None:
        self.reason = reason

    def create(self, name: str, limits: Limits) -> NoJobCgroup:
        return NoJobCgroup(name)

    def prepare(self) -> None:
        return None

    def open(self, name: str) -> NoJobCgroup | None:
        return None

    def job_names(self) -> list[str]:
        return []

    def sweep(self, keep: Collection[str], *, timeout: float = 5.0) -> Swept:
        return Swept()

    def close(self) -> None:
        return None
