"""Host fingerprinting: one probe per concern, run by ``collect``.

A probe returns labels (strings, as the API shows them) and may add to the capacity the
agent offers. A probe that fails is logged and skipped; fingerprinting never stops the agent.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import structlog

log = structlog.get_logger("tanvrit.agentd.fingerprint")


@dataclass
class Facts:
    labels: dict[str, str] = field(default_factory=dict)
    cpus: float = 0.0
    memory_mb: int = 0
    gpus: int = 0
    gpu_memory_mb: list[int] = field(default_factory=list)


class Probe(Protocol):
    name: str

    def probe(self, facts: Facts) -> None:
        """Add what this probe knows to ``facts``; raise nothing for a missing feature."""
        ...


def collect(probes: list[Probe]) -> Facts:
    facts = Facts()
    for probe in probes:
        try:
            probe.probe(facts)
        except Exception as exc:  # a broken probe must not stop the agent
            log.warning("fingerprint probe failed", probe=probe.name, error=str(exc))
    return facts


def default_probes() -> list[Probe]:
    """The synchronous probes. GPUs are not among them: the agent discovers those itself,
    off its event loop with a timeout (``agentd.fingerprint.gpu.discover``)."""
    from agentd.fingerprint.cpu import CpuProbe
    from agentd.fingerprint.host import HostProbe
    from agentd.fingerprint.memory import MemoryProbe

    return [HostProbe(), CpuProbe(), MemoryProbe()]
