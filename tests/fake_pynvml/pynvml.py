"""A stand-in for the ``pynvml`` module in agent *processes* started by tests: put this
directory first on PYTHONPATH and name a host description in FAKE_NVML_HOST (JSON:
``{"gpus": [{"uuid", "name", "minor", "memory_mb", "lost"}], "fromEnvironment": bool,
"processesFile": path}``). Every pynvml function the agent calls is the fake's (tests/fake_nvml.py),
so the agent's own code path runs unchanged, in its own process."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from tests.fake_nvml import FakeGpu, FakeNvml, NVMLError

__all__ = ["NVMLError"]


def _host() -> FakeNvml:
    spec = json.loads(Path(os.environ["FAKE_NVML_HOST"]).read_text())
    processes = spec.get("processesFile")
    return FakeNvml([FakeGpu(**gpu) for gpu in spec["gpus"]], from_environment=bool(spec.get("fromEnvironment")),
                    processes_file=Path(processes) if processes else None)


_HOST = _host()


def __getattr__(name: str) -> Any:
    return getattr(_HOST, name)
