"""Run the real ``tanvrit-compute`` binary as a subprocess, isolated from the user's own setup.

Every run gets an environment without the caller's ``TANVRIT_*`` variables and with its own
``XDG_CONFIG_HOME`` (so no test reads or writes the real ``~/.config``).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.procs import Coordinator


def cli_env(config_home: Path, coordinator: Coordinator | None = None, token: str | None = None,
            **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TANVRIT_") and k != "XDG_CONFIG_HOME"}
    env["XDG_CONFIG_HOME"] = str(config_home)
    env["NO_COLOR"] = "1"
    if coordinator is not None:
        env["TANVRIT_COMPUTE_URL"] = coordinator.url
        env["TANVRIT_COMPUTE_TOKEN"] = token or coordinator.token
    env.update(extra)
    return env


def cli_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "cli", *args]


def run_cli(config_home: Path, coordinator: Coordinator | None, *args: str, token: str | None = None,
            env: dict[str, str] | None = None, stdin: str | None = None,
            timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """``tanvrit-compute ARGS``; with ``coordinator``, its URL and token come from the environment."""
    return subprocess.run(cli_command(*args), capture_output=True, text=True, input=stdin,
                          stdin=None if stdin is not None else subprocess.DEVNULL,
                          env={**cli_env(config_home, coordinator, token), **(env or {})},
                          timeout=timeout, check=False)


def assert_clean_error(result: subprocess.CompletedProcess[str], code: int = 1) -> None:
    """A failure the user can read: the expected exit code, a message, no traceback."""
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout
    assert result.stderr.strip(), "an error must say what went wrong"
