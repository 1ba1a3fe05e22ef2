"""Real coordinator and agent processes for tests, on loopback ports picked by the OS.

Every process started here is stopped by its fixture's finaliser, even when the test fails.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx

T = TypeVar("T")

DEFAULT_DEADLINE = 30.0


def wait_for(condition: Callable[[], T], *, timeout: float = DEFAULT_DEADLINE, interval: float = 0.02,
              message: str = "condition") -> T:
    """Poll ``condition`` until it returns something truthy, or fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {message}")
        time.sleep(interval)


# Runs ``python -m MODULE ARGS`` after putting every signal a test sends back to its default.
# A process inherits ignored signals across exec: pytest started in the background of a shell
# (`pytest &`, CI runners) ignores SIGINT and SIGQUIT, and so would every process it starts,
# shrugging off the Ctrl-C or SIGQUIT a test sends it. Python installs its own SIGINT handler
# only when SIGINT is not ignored at start-up, so it is put back here by hand.
_DEFAULT_SIGNALS_THEN_RUN = """\
import runpy, signal, sys
signal.signal(signal.SIGINT, signal.default_int_handler)
for name in ("SIGQUIT", "SIGTERM", "SIGHUP", "SIGUSR1", "SIGUSR2"):
    signal.signal(getattr(signal, name), signal.SIG_DFL)
runpy.run_module(sys.argv.pop(1), run_name="__main__", alter_sys=True)
"""


def python_module(module: str, *args: str) -> list[str]:
    """The command line for ``python -m module args`` with default signal dispositions."""
    return [sys.executable, "-c", _DEFAULT_SIGNALS_THEN_RUN, module, *args]


_python_module = python_module


@dataclass
class Coordinator:
    data_dir: Path
    extra_args: tuple[str, ...] = ()
    process: subprocess.Popen[bytes] | None = None
    url: str = ""
    init: dict[str, str] = field(default_factory=dict)
    log_path: Path | None = None

    def start(self) -> Coordinator:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        url_file = self.data_dir / "coordinator.url"
        url_file.unlink(missing_ok=True)
        self.log_path = self.data_dir / "coordinator.log"
        stdout_path = self.data_dir / "coordinator.stdout"
        with self.log_path.open("ab") as log, stdout_path.open("wb") as out:
            self.process = subprocess.Popen(
                _python_module("coordinator", "serve", "--bind", "127.0.0.1:0", "--data-dir", str(self.data_dir),
                               "--init-json", *self.extra_args),
                stdout=out, stderr=log,
            )
        try:
            # Generous: a loaded machine has taken over 30 s to start one (imports, migrations).
            self.url = wait_for(lambda: self._ready_url(url_file), timeout=60, message="coordinator ready")
        except BaseException:
            # Not left running: a leftover would fail the next test on this worker.
            self.stop(signal.SIGKILL)
            raise
        text = stdout_path.read_text().strip()
        if text:
            self.init = json.loads(text.splitlines()[0])
        return self

    def _ready_url(self, url_file: Path) -> str | None:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"coordinator exited with {self.process.returncode}: {self.log()}")
        return ready_coordinator_url(url_file)

    def log(self) -> str:
        return self.log_path.read_text()[-4000:] if self.log_path and self.log_path.exists() else ""

    @property
    def token(self) -> str:
        return self.init["ownerToken"]

    @property
    def registration_token(self) -> str:
        return self.init["registrationToken"]

    def client(self, token: str | None = None) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {token or self.token}"},
                            timeout=30)  # generous: CI machines are small and noisy

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        return stop_process(self.process, sig, timeout)


# Every data dir an agent was started with in this test process: the session's last cleanup
# (tests/conftest.py) removes whatever cgroups they left, for the tests that manage their agents
# themselves and for a per-test cleanup that raced an exiting process.
STARTED_AGENT_DIRS: set[Path] = set()


@dataclass
class AgentProc:
    coordinator: Coordinator
    data_dir: Path
    labels: tuple[str, ...] = ()
    extra_args: tuple[str, ...] = ()
    process: subprocess.Popen[bytes] | None = None
    env: dict[str, str] | None = None
    # Jobs of test agents run as the agent's own user, root here, by explicit opt-in: the files
    # tests share with their jobs (gates, markers) live under pytest's private temp dirs, which
    # no other user can reach. tests/test_job_user.py runs agents with the default user instead.
    root_jobs: bool = True
    # --coordinator URLs in this order (replicas, a dead one first; "" gives none, for a config
    # file's list); default: coordinator.url.
    urls: tuple[str, ...] = ()

    def start(self) -> AgentProc:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        args = ["run", "--data-dir", str(self.data_dir)]
        for url in self.urls or (self.coordinator.url,):
            args += ["--coordinator", url] if url else []
        if self.root_jobs:
            args += ["--run-as", pwd.getpwuid(os.geteuid()).pw_name, "--allow-root-jobs",
                     "--work-dir", str(self.data_dir.with_name(self.data_dir.name + "-work"))]
        args += list(self.extra_args)
        for label in self.labels:
            args += ["--label", label]
        # The registration token in the environment, not argv: any local user can read argv.
        env = {**os.environ, "TANVRIT_REGISTRATION_TOKEN": self.coordinator.registration_token, **(self.env or {})}
        STARTED_AGENT_DIRS.add(self.data_dir)
        with (self.data_dir / "agent.log").open("ab") as log:
            self.process = subprocess.Popen(_python_module("agentd", *args), stdout=log, stderr=log, env=env)
        return self

    @property
    def agent_id(self) -> str:
        creds = wait_for(lambda: _read_json(self.data_dir / "agent.json"), message="agent registered")
        return str(creds["agentId"])

    def log(self) -> str:
        path = self.data_dir / "agent.log"
        return path.read_text()[-4000:] if path.exists() else ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        return stop_process(self.process, sig, timeout)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def stop_process(process: subprocess.Popen[bytes] | None, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
    """Send ``sig`` and wait up to ``timeout`` seconds for the exit, then SIGKILL; its return code."""
    if process is None:
        return 0
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


REFERENCE_JOB = {"type": "COMMAND", "command": "echo hello", "timeoutSeconds": 30, "labels": {"arch": "arm64"}}


def wait_terminal(client: httpx.Client, job_id: str, timeout: float = DEFAULT_DEADLINE) -> dict[str, Any]:
    terminal = {"SUCCEEDED", "FAILED", "CANCELLED", "TIMED_OUT", "LOST"}

    def done() -> dict[str, Any] | None:
        job: dict[str, Any] = client.get(f"/v0/jobs/{job_id}").json()
        return job if job["state"] in terminal else None

    return wait_for(done, timeout=timeout, message=f"job {job_id} to finish")


# Meter ticks every 0.2 s and webhook retries within a second, on the payg plan: billing and
# webhook tests see ticks and retries happen within their deadlines.
QUICK_TICKS = """
[server]
default_plan = "payg"

[billing]
meter_interval_seconds = 0.2
cpu_second_usd = "0.001"

[webhooks]
retry_base_seconds = 0.05
retry_max_seconds = 0.3
timeout_seconds = 5
poll_seconds = 1
"""


def quick_ticking_coordinator(tmp_path: Path) -> Coordinator:
    """A coordinator (not yet started) with ``QUICK_TICKS`` that accepts loopback webhooks."""
    config = tmp_path / "coordinator.toml"
    config.write_text(QUICK_TICKS)
    return Coordinator(tmp_path / "fast-coordinator", extra_args=("--config", str(config), "--allow-private-webhooks"))


def running_records(data_dir: Path) -> dict[str, dict[str, Any]]:
    """The jobs an agent's spool lists as running, by job id (the agent's own records)."""
    with sqlite3.connect(data_dir / "spool.sqlite3") as db:
        return {job_id: json.loads(body) for job_id, body in db.execute("SELECT job_id, body FROM running")}


def kill_jobs_left_by(data_dir: Path) -> None:
    """SIGKILL the process group of every job a (killed) agent's spool still lists as running:
    jobs outlive their agent by design, and a test must not leave them behind."""
    if not (data_dir / "spool.sqlite3").exists():
        return
    for record in running_records(data_dir).values():
        pid = record.get("launched", {}).get("pid")
        if pid:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)


def ready_coordinator_url(url_file: Path) -> str | None:
    """The URL a coordinator wrote to ``url_file`` once ``/readyz`` answers 200 there, else None."""
    if not url_file.exists():
        return None
    url = url_file.read_text().strip()
    try:
        return url if httpx.get(f"{url}/readyz", timeout=2).status_code == 200 else None
    except httpx.TransportError:
        return None
