"""Architecture (normalised to Go/OCI names), operating system and hostname."""

from __future__ import annotations

import platform
import socket

from agentd.fingerprint import Facts

_ARCH = {
    "x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64", "ppc64le": "ppc64le",
    "s390x": "s390x", "riscv64": "riscv64", "i386": "386", "i686": "386", "armv7l": "arm",
}


def normalise_arch(machine: str) -> str:
    return _ARCH.get(machine.lower(), machine.lower())


class HostProbe:
    name = "host"

    def __init__(self, machine: str | None = None, system: str | None = None, hostname: str | None = None) -> None:
        self._machine = machine
        self._system = system
        self._hostname = hostname

    def probe(self, facts: Facts) -> None:
        facts.labels["arch"] = normalise_arch(self._machine or platform.machine())
        facts.labels["os"] = (self._system or platform.system()).lower()
        facts.labels["hostname"] = self._hostname or socket.gethostname()
