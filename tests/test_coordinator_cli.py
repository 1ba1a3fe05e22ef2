"""``tanvrit-coordinator`` as a command: init once, and clear errors instead of tracebacks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.procs import Coordinator


def _coordinator(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "coordinator", *args], capture_output=True, text=True, timeout=60,
                          check=False)


def test_init_prints_secrets_once(tmp_path: Path) -> None:
    first = _coordinator("init", "--data-dir", str(tmp_path), "--json")
    assert first.returncode == 0, first.stderr
    secrets = json.loads(first.stdout)
    assert secrets["ownerToken"].startswith("tcp_pat_")
    assert secrets["registrationToken"].startswith("tcp_reg_")
    again = _coordinator("init", "--data-dir", str(tmp_path), "--json")
    assert again.returncode == 1
    assert "already initialised" in again.stderr
    assert "tcp_pat_" not in again.stdout + again.stderr


def test_port_in_use_is_a_message(coordinator: Coordinator, tmp_path: Path) -> None:
    port = coordinator.url.rsplit(":", 1)[1]
    result = _coordinator("serve", "--bind", f"127.0.0.1:{port}", "--data-dir", str(tmp_path / "other"))
    assert result.returncode == 1
    assert f"cannot serve on 127.0.0.1:{port}: Address already in use" in result.stderr
    assert "Traceback" not in result.stderr
