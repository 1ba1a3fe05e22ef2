"""A real webhook receiver for tests: an HTTP server on a loopback port, in a thread, that
verifies every request's signature with ``common.signing`` before anything else."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from common.signing import SignatureError, parse_signature_header, verify


@dataclass
class Received:
    path: str
    event_id: str
    event: dict[str, Any]
    signatures: int
    valid_for: list[str]
    status: int


@dataclass
class Receiver:
    url: str = ""
    secrets: list[str] = field(default_factory=list)
    fail_first: int = 0  # answer 500 to this many (correctly signed) requests first
    status: int = 204  # then this
    requests: list[Received] = field(default_factory=list)
    bad_signatures: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def handle(self, path: str, headers: Any, body: bytes) -> int:
        with self.lock:
            header = headers.get("X-Compute-Signature")
            valid_for = []
            for secret in self.secrets:
                try:
                    verify(header, body, secret, now=time.time())
                    valid_for.append(secret)
                except SignatureError:
                    pass
            if not valid_for:
                self.bad_signatures.append(header or "")
                return 401
            event = json.loads(body)
            if headers.get("X-Compute-Event-Id") != event["id"]:
                self.bad_signatures.append("event id header mismatch")
                return 400
            status = self.status
            if self.fail_first > 0:
                self.fail_first -= 1
                status = 500
            self.requests.append(Received(path, event["id"], event, len(parse_signature_header(header)[1]),
                                          valid_for, status))
            return status

    def delivered(self, path: str = "/hook") -> list[Received]:
        """Accepted requests to ``path``, first acceptance of each event id only, in arrival order."""
        with self.lock:
            seen: set[str] = set()
            found = []
            for item in self.requests:
                if item.path == path and item.status < 300 and item.event_id not in seen:
                    seen.add(item.event_id)
                    found.append(item)
            return found

    def count(self, path: str) -> int:
        with self.lock:
            return sum(1 for item in self.requests if item.path == path)


@contextmanager
def running_receiver() -> Iterator[Receiver]:
    receiver = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            status = receiver.handle(self.path, self.headers, body)
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    receiver.url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield receiver
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
