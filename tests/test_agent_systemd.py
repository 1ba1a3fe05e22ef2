"""systemd integration: sd_notify over a real unix datagram socket, the unit (verified by
systemd-analyze where it exists), and ``tanvrit-agentd install``."""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import sys
import tomllib
import uuid
from pathlib import Path

import pytest
import trio

from agentd.config import load_agent_config
from agentd.install import render_unit
from agentd.systemd import Notifier

REPO = Path(__file__).resolve().parent.parent


def _listener(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(10)
    return sock


def test_notify_sends_datagrams_to_the_socket(tmp_path: Path) -> None:
    with _listener(tmp_path / "notify") as sock:
        notifier = Notifier({"NOTIFY_SOCKET": str(tmp_path / "notify")})
        assert notifier.enabled
        assert notifier.ready() and notifier.stopping()
        assert sock.recv(64) == b"READY=1"
        assert sock.recv(64) == b"STOPPING=1"


def test_abstract_socket_names_are_understood(tmp_path: Path) -> None:
    name = f"tanvrit-test-{os.getpid()}-{os.urandom(3).hex()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(10)
        assert Notifier({"NOTIFY_SOCKET": "@" + name}).ready()
        assert sock.recv(64) == b"READY=1"


def test_without_notify_socket_nothing_happens() -> None:
    notifier = Notifier({})
    assert not notifier.enabled
    assert notifier.ready() is False
    assert notifier.watchdog_interval is None


async def test_watchdog_pings_at_half_the_timeout(tmp_path: Path) -> None:
    with _listener(tmp_path / "notify") as sock:
        sock.setblocking(False)
        notifier = Notifier({"NOTIFY_SOCKET": str(tmp_path / "notify"), "WATCHDOG_USEC": "100000",
                             "WATCHDOG_PID": str(os.getpid())})
        assert notifier.watchdog_interval == pytest.approx(0.05)
        received: list[bytes] = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(notifier.serve_watchdog)
            with trio.fail_after(10):
                while len(received) < 2:
                    await trio.lowlevel.wait_readable(sock)
                    received.append(sock.recv(64))
            nursery.cancel_scope.cancel()
    assert received == [b"WATCHDOG=1", b"WATCHDOG=1"]


def test_watchdog_for_another_pid_is_not_ours() -> None:
    notifier = Notifier({"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "100000", "WATCHDOG_PID": "1"})
    assert notifier.watchdog_interval is None or os.getpid() == 1


def test_the_repository_unit_is_the_rendered_template() -> None:
    shipped = (REPO / "systemd" / "tanvrit-agentd.service").read_text()
    assert shipped == render_unit("/usr/local/bin/tanvrit-agentd", Path("/etc/tanvrit/agentd.toml"))
    for line in ("Type=notify", "WatchdogSec=60s", "Delegate=yes", "Restart=on-failure", "KillMode=process"):
        assert line in shipped.splitlines()


def _verify(unit: Path) -> subprocess.CompletedProcess[str]:
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed here")
    return subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=120,
                          cwd=unit.parent)


def test_install_writes_config_and_a_unit_that_verifies(tmp_path: Path) -> None:
    config_path = tmp_path / "etc" / "agentd.toml"
    unit_dir = tmp_path / "units"
    job_user = f"tanvrit-it-{uuid.uuid4().hex[:8]}"  # a user of its own, removed below
    args = [sys.executable, "-m", "agentd", "install", "--coordinator", "http://coord:8470/",
            "--registration-token", "tcp_reg_secret", "--data-dir", str(tmp_path / "data"),
            "--work-dir", str(tmp_path / "jobs"), "--run-as", job_user,
            "--config-path", str(config_path), "--unit-dir", str(unit_dir), "--label", "zone=a"]
    try:
        result = subprocess.run(args, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        if os.geteuid() == 0:
            # The job user now exists: unprivileged, no login.
            created = pwd.getpwnam(job_user)
            assert created.pw_uid != 0 and created.pw_shell.endswith(("nologin", "false"))
            assert f"created the system user {job_user}" in result.stdout
        else:
            assert f"useradd --system --no-create-home --shell /usr/sbin/nologin {job_user}" in result.stderr
    finally:
        if os.geteuid() == 0:
            subprocess.run(["userdel", job_user], capture_output=True, check=False)
    assert "systemctl enable --now tanvrit-agentd.service" in result.stdout
    assert config_path.stat().st_mode & 0o777 == 0o600
    table = tomllib.loads(config_path.read_text())["agent"]
    assert table == {"coordinator": "http://coord:8470", "registration_token": "tcp_reg_secret",
                     "data_dir": str(tmp_path / "data"), "work_dir": str(tmp_path / "jobs"), "run_as": job_user,
                     "labels": {"zone": "a"}}
    config = load_agent_config(config_path, {})
    assert config.labels == {"zone": "a"} and config.registration_token == "tcp_reg_secret"
    unit = unit_dir / "tanvrit-agentd.service"
    assert f"--config {config_path}" in unit.read_text()
    again = subprocess.run(args, capture_output=True, text=True, timeout=60)
    assert again.returncode != 0 and "--force" in again.stderr
    verified = _verify(unit)
    assert verified.returncode == 0, verified.stderr


# --- the coordinator's unit and its sd_notify ------------------------------------------------

COORDINATOR_UNIT = REPO / "systemd" / "tanvrit-coordinator.service"


def test_the_coordinator_unit_is_hardened_and_verifies(tmp_path: Path) -> None:
    shipped = COORDINATOR_UNIT.read_text()
    lines = shipped.splitlines()
    for line in ("Type=notify", "NotifyAccess=main", "WatchdogSec=30s", "ProtectSystem=strict", "NoNewPrivileges=yes",
                 "StateDirectory=tanvrit-coordinator", "CapabilityBoundingSet=", "PrivateDevices=yes"):
        assert line in lines
    assert ("ExecStart=/usr/local/bin/tanvrit-coordinator serve --bind 0.0.0.0:8470 "
            "--data-dir /var/lib/tanvrit-coordinator") in lines
    # systemd-analyze insists that ExecStart exists: point it at this environment's script.
    here = Path(sys.executable).parent / "tanvrit-coordinator"
    unit = tmp_path / "tanvrit-coordinator.service"
    unit.write_text(shipped.replace("/usr/local/bin/tanvrit-coordinator", str(here)))
    verified = _verify(unit)
    assert verified.returncode == 0 and verified.stderr == "", verified.stderr


def test_systemd_analyze_catches_a_broken_unit(tmp_path: Path) -> None:
    # What the verify tests above rely on: a misspelt hardening option is reported.
    unit = tmp_path / "tanvrit-coordinator.service"
    here = str(Path(sys.executable).parent / "tanvrit-coordinator")
    unit.write_text(COORDINATOR_UNIT.read_text().replace("ProtectSystem=", "ProtectSystm=")
                    .replace("/usr/local/bin/tanvrit-coordinator", here))
    assert "Unknown key 'ProtectSystm'" in _verify(unit).stderr


def test_the_serving_coordinator_notifies_ready_watchdog_and_stopping(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    with _listener(tmp_path / "notify") as sock:
        sock.settimeout(120)  # a generous deadline for a start on a loaded machine, not a pace
        env = {**os.environ, "NOTIFY_SOCKET": str(tmp_path / "notify"), "WATCHDOG_USEC": "200000"}
        env.pop("WATCHDOG_PID", None)
        with (tmp_path / "serve.log").open("wb") as log:
            process = subprocess.Popen([sys.executable, "-m", "coordinator", "serve", "--bind", "127.0.0.1:0",
                                        "--data-dir", str(data_dir)], stdout=log, stderr=log, env=env)
        try:
            messages: list[bytes] = []
            while b"READY=1" not in messages:
                messages.append(sock.recv(64))
            assert (data_dir / "coordinator.url").exists(), "READY=1 comes once it listens"
            while messages.count(b"WATCHDOG=1") < 2:
                messages.append(sock.recv(64))
            process.terminate()
            while messages[-1] != b"STOPPING=1":
                messages.append(sock.recv(64))
            assert process.wait(timeout=30) == 0
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
