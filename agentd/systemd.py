"""The agent's systemd notifier: the shared ``common.systemd.Notifier`` (the coordinator uses it too)."""

from common.systemd import Notifier

__all__ = ["Notifier"]
