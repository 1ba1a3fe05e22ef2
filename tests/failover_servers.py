"""Loopback endpoints that fail the way a dead or dying coordinator replica does, for the
fail-over tests of the agent and the CLI. Each is a context manager that frees its port."""

from __future__ import annotations

import contextlib
import socket
import socketserver
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import httpx


@contextlib.contextmanager
def refused_url() -> Iterator[str]:
    """A URL whose port is bound but not listening: connecting is refused at once (as to a
    replica whose process is gone), and no other process can take the port meanwhile."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"


@dataclass
class DroppingProxy:
    """Forwards each request to ``target`` and then closes the connection without answering:
    a replica that applied the request and died before its answer left (or a proxy whose
    answer was lost). ``seen`` holds (method, path, Idempotency-Key) of each forwarded request."""

    target: str
    url: str = ""
    seen: list[tuple[str, str, str | None]] = field(default_factory=list)


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    proxy: DroppingProxy


class _Handler(socketserver.StreamRequestHandler):
    server: _Server

    def handle(self) -> None:
        request_line = self.rfile.readline().decode("latin-1").strip()
        if not request_line:
            return
        method, path, _ = request_line.split(" ", 2)
        headers: dict[str, str] = {}
        while (line := self.rfile.readline().decode("latin-1").strip()):
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        body = self.rfile.read(int(headers.get("content-length", "0")))
        forwarded = {k: v for k, v in headers.items() if k not in ("host", "content-length", "connection")}
        proxy = self.server.proxy
        proxy.seen.append((method, path, headers.get("idempotency-key")))
        httpx.request(method, proxy.target + path, headers=forwarded, content=body, timeout=30)
        # No answer: the client sees the connection close after its request was applied.


@contextlib.contextmanager
def dropping_proxy(target: str) -> Iterator[DroppingProxy]:
    proxy = DroppingProxy(target)
    server = _Server(("127.0.0.1", 0), _Handler)
    server.proxy = proxy
    proxy.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, name="dropping-proxy", daemon=True)
    thread.start()
    try:
        yield proxy
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@contextlib.contextmanager
def answering_url(status: int) -> Iterator[str]:
    """A URL whose server answers every request with ``status`` and an empty body (a proxy with
    no healthy backend: 503; a gateway whose backend died: 502/504)."""

    class Handler(socketserver.StreamRequestHandler):
        def handle(self) -> None:
            headers: dict[str, str] = {}
            self.rfile.readline()
            while (line := self.rfile.readline().decode("latin-1").strip()):
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            self.rfile.read(int(headers.get("content-length", "0")))
            self.wfile.write(f"HTTP/1.1 {status} Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                             .encode())

    server = _Server(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, name=f"answering-{status}", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
