"""``tanvrit-agentd install``: write the agent's TOML config and its systemd unit.

The unit is rendered from one template (``UNIT_TEMPLATE``); ``systemd/tanvrit-agentd.service``
in the repository is its rendering for ``/usr/local/bin/tanvrit-agentd`` and
``/etc/tanvrit/agentd.toml``, and a test keeps the two equal.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import tomli_w

from agentd.exits import PERMANENT_FAILURES

UNIT_NAME = "tanvrit-agentd.service"

UNIT_TEMPLATE = """\
[Unit]
Description=Tanvrit Compute agent
Documentation=https://github.com/tanvrit/compute
After=network-online.target
Wants=network-online.target

[Service]
Type=notify
NotifyAccess=main
ExecStart={exec_start} run --config {config_path}
Restart=on-failure
RestartSec=5s
# Failures only a person can fix (agentd/exits.py): no restart loop.
RestartPreventExitStatus={prevent}
# The agent pings at half this; a hung event loop is restarted.
WatchdogSec=60s
# SIGTERM lets running jobs finish (shutdown = "finish"): give them time.
TimeoutStopSec=15min
# The agent owns its cgroup subtree and puts each job in a group of its own.
Delegate=yes
# Only the agent is stopped with the service: jobs outlive an agent restart and the new agent
# re-adopts them from its spool (they are still killed by the agent on timeout or cancel).
KillMode=process
StateDirectory=tanvrit-agentd
StateDirectoryMode=0700
LimitNOFILE=65536

# Hardening that still lets jobs run: they exec ordinary binaries, write their workdir and
# /tmp, and drop to run_as with setpriv (which needs no new privileges).
NoNewPrivileges=yes
ProtectSystem=full
PrivateTmp=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectClock=yes
ProtectHostname=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
LockPersonality=yes
RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK

[Install]
WantedBy=multi-user.target
"""


def render_unit(exec_start: str, config_path: Path) -> str:
    return UNIT_TEMPLATE.format(exec_start=exec_start, config_path=config_path,
                                prevent=" ".join(str(code) for code in PERMANENT_FAILURES))


def render_config(settings: dict[str, Any]) -> str:
    """The ``[agent]`` table as TOML; ``None`` values are left out (the defaults apply)."""
    return tomli_w.dumps({"agent": {key: value for key, value in settings.items() if value is not None}})


def write_private(path: Path, text: str, mode: int) -> None:
    """Write ``text`` to ``path`` atomically, created with ``mode`` (the config holds a token)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    tmp.replace(path)


def systemctl_commands(unit_name: str = UNIT_NAME) -> list[str]:
    return ["systemctl daemon-reload", f"systemctl enable --now {unit_name}", f"systemctl status {unit_name}"]
