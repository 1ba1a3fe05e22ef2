"""HAProxy started from the configuration documented in docs/deployment/haproxy.cfg, in front of
coordinator processes on loopback ports; stopped (and its socket removed) even on failure."""

from __future__ import annotations

import contextlib
import re
import shutil
import signal
import socket
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.procs import stop_process, wait_for

DOCUMENTED_CONFIG = Path(__file__).resolve().parent.parent / "docs" / "deployment" / "haproxy.cfg"
MISSING = "haproxy is not installed (`make test` installs the distribution's haproxy package)"


def haproxy_binary() -> str | None:
    return shutil.which("haproxy") or next((p for p in ("/usr/sbin/haproxy",) if Path(p).exists()), None)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def config_for(backends: Sequence[str], port: int, stats_socket: Path, check_interval: str) -> str:
    """The documented configuration with only its addresses, check interval and global maxconn
    changed (haproxy needs two descriptors per connection, more than a test process may open)."""
    text = DOCUMENTED_CONFIG.read_text()
    text = re.sub(r"(?m)^(\s*)maxconn \d+$", r"\1maxconn 1000", text, count=1)
    text = re.sub(r"(?m)^(\s*)bind \S+$", rf"\1bind 127.0.0.1:{port}", text)
    text = re.sub(r"(?m)^(\s*)stats socket \S+", rf"\1stats socket {stats_socket}", text)
    text = re.sub(r"(?m)( inter )\S+", rf"\g<1>{check_interval}", text)
    text = re.sub(r"(?m)^\s*server .*\n", "", text)
    servers = "".join(f"    server c{i + 1} {url.removeprefix('http://')}\n" for i, url in enumerate(backends))
    return text.rstrip("\n") + "\n" + servers


@dataclass
class HAProxy:
    url: str
    stats_socket: Path
    process: subprocess.Popen[bytes]
    log_path: Path

    def stats(self) -> dict[str, dict[str, str]]:
        """``show stat`` of the backend's servers: name -> column -> value (status, stot, ...)."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(10)
            sock.connect(str(self.stats_socket))
            sock.sendall(b"show stat\n")
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        lines = b"".join(chunks).decode().splitlines()
        header = lines[0].lstrip("# ").split(",")
        rows = [dict(zip(header, line.split(","), strict=False)) for line in lines[1:] if line]
        return {row["svname"]: row for row in rows if row["pxname"] == "coordinators"
                and row["svname"] not in ("BACKEND", "FRONTEND")}

    def status(self, server: str) -> str:
        return self.stats()[server]["status"]

    def sessions(self, server: str) -> int:
        return int(self.stats()[server]["stot"])

    def log(self) -> str:
        return self.log_path.read_text()[-4000:] if self.log_path.exists() else ""


@contextlib.contextmanager
def running_haproxy(backends: Sequence[str], workdir: Path, *, check_interval: str = "200ms") -> Iterator[HAProxy]:
    binary = haproxy_binary()
    if binary is None:
        raise LookupError(MISSING)
    workdir.mkdir(parents=True, exist_ok=True)
    port, stats_socket = free_port(), workdir / "haproxy.sock"
    config = workdir / "haproxy.cfg"
    config.write_text(config_for(backends, port, stats_socket, check_interval))
    subprocess.run([binary, "-c", "-q", "-f", str(config)], check=True, capture_output=True)
    log_path = workdir / "haproxy.log"
    with log_path.open("wb") as log:
        # -db: stay in the foreground, so the process is ours to stop.
        process = subprocess.Popen([binary, "-db", "-f", str(config)], stdout=log, stderr=log)
    proxy = HAProxy(f"http://127.0.0.1:{port}", stats_socket, process, log_path)
    try:
        wait_for(lambda: _answers(proxy), message=f"haproxy to answer: {proxy.log()}")
        yield proxy
    finally:
        stop_process(process, signal.SIGTERM, 10)
        stats_socket.unlink(missing_ok=True)


def _answers(proxy: HAProxy) -> bool:
    if proxy.process.poll() is not None:
        raise AssertionError(f"haproxy exited with {proxy.process.returncode}: {proxy.log()}")
    try:
        return proxy.stats_socket.exists() and httpx.get(f"{proxy.url}/healthz", timeout=2).status_code == 200
    except httpx.TransportError:
        return False
