"""sd_notify: tell systemd we are ready, alive (watchdog) and stopping; both daemons use it.

A no-op without ``NOTIFY_SOCKET`` (not started by systemd with ``Type=notify``). Datagrams
go to the unix socket it names; a leading ``@`` means the abstract namespace.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Mapping

import trio


class Notifier:
    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET", "")
        self._address = "\0" + address[1:] if address.startswith("@") else address
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        mine = not pid or pid == str(os.getpid())
        self.watchdog_interval: float | None = int(usec) / 2e6 if usec.isdigit() and int(usec) > 0 and mine else None

    @property
    def enabled(self) -> bool:
        return bool(self._address)

    def notify(self, message: str) -> bool:
        """Send one state line (``READY=1``...); False if there is nobody to tell or it failed."""
        if not self._address:
            return False
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            try:
                sock.sendto(message.encode(), self._address)
            except OSError:
                return False
        return True

    def ready(self) -> bool:
        return self.notify("READY=1")

    def stopping(self) -> bool:
        return self.notify("STOPPING=1")

    async def serve_watchdog(self) -> None:
        """Ping the watchdog at half its timeout, forever (returns at once without one)."""
        if self.watchdog_interval is None or not self.enabled:
            return
        while True:
            with contextlib.suppress(OSError):
                self.notify("WATCHDOG=1")
            await trio.sleep(self.watchdog_interval)
