"""``tanvrit-compute local up``: coordinator and agent on this machine, demo job, clean stop."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil

from tests.procs import wait_for


def test_local_up_runs_demo_and_stops_cleanly(tmp_path: Path) -> None:
    env = {**os.environ, "TANVRIT_COMPUTE_HOME": str(tmp_path / "home")}
    out = tmp_path / "out.txt"
    with out.open("w") as handle:
        process = subprocess.Popen([sys.executable, "-m", "cli", "local", "up", "--port", "0", "--demo"],
                                   stdout=handle, stderr=subprocess.STDOUT, env=env)
    try:
        wait_for(lambda: "Demo job SUCCEEDED" in out.read_text() or process.poll() is not None,
                 timeout=60, message="demo job output")
        text = out.read_text()
        assert "hello from Tanvrit Compute" in text
        assert "export TANVRIT_COMPUTE_TOKEN=tcp_pat_" in text
        children = psutil.Process(process.pid).children()
        assert len(children) == 2

        second = subprocess.run([sys.executable, "-m", "cli", "local", "up", "--port", "0"], env=env,
                                capture_output=True, text=True, timeout=30, check=False)
        assert second.returncode == 1
        assert "already running" in second.stderr

        status = subprocess.run([sys.executable, "-m", "cli", "local", "status"], env=env, capture_output=True,
                                text=True, timeout=30, check=False)
        assert status.returncode == 0 and "running" in status.stdout
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=60)
    assert "Stopped." in out.read_text()
    assert all(not child.is_running() or child.status() == psutil.STATUS_ZOMBIE for child in children)
    credentials = Path(env["TANVRIT_COMPUTE_HOME"]) / "local" / "credentials.json"
    assert credentials.stat().st_mode & 0o777 == 0o600
