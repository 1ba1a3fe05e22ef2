"""Run the real ``tanvrit-compute`` binary as a subprocess, isolated from the user's own setup.

Every run gets an environment without the caller's ``TANVRIT_*`` variables and with its own
``XDG_CONFIG_HOME`` (so no test reads or writes the real ``~/.config``).
"""

from __future__ import annotations

import os
import pty
import subprocess
import threading
from pathlib import Path

from tests.procs import Coordinator, python_module, wait_for


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
    """``tanvrit-compute ARGS``, started with default signal dispositions (see ``python_module``)."""
    return python_module("cli", *args)


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


class PtyProcess:
    """The CLI with stdin, stdout and stderr on a pseudo-terminal, as a user at a terminal runs it.

    A thread drains the terminal into ``text`` so the child never blocks on a full buffer.
    """

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        master, slave = pty.openpty()
        self._master = master
        self.process = subprocess.Popen(args, stdin=slave, stdout=slave, stderr=slave, env=env, close_fds=True)
        os.close(slave)
        self._chunks: list[bytes] = []
        self._reader = threading.Thread(target=self._drain, daemon=True)
        self._reader.start()

    def _drain(self) -> None:
        while True:
            try:
                data = os.read(self._master, 4096)
            except OSError:  # EIO: the child closed its side
                return
            if not data:
                return
            self._chunks.append(data)

    @property
    def text(self) -> str:
        return b"".join(self._chunks).decode(errors="replace")

    def expect(self, needle: str, timeout: float = 30.0) -> None:
        wait_for(lambda: needle in self.text, timeout=timeout, message=f"{needle!r} on the terminal")

    def send(self, text: str) -> None:
        os.write(self._master, text.encode())

    def wait(self, timeout: float = 60.0) -> int:
        code = self.process.wait(timeout=timeout)
        self._reader.join(timeout=10)
        return code

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self._reader.join(timeout=10)
        os.close(self._master)


def fast_coordinator(data_dir: Path) -> Coordinator:
    """A coordinator whose agents heartbeat every 0.3 s, so drains and cancels of running jobs
    (which reach agents with heartbeats) settle quickly."""
    data_dir.mkdir(parents=True, exist_ok=True)
    config = data_dir / "coordinator.toml"
    config.write_text("[server]\nheartbeat_interval_seconds = 0.3\n")
    return Coordinator(data_dir, extra_args=("--config", str(config))).start()
