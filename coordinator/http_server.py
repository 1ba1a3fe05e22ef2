"""HTTP serving on Hypercorn's parts, with every connection bounded in time and in number.

Why not ``hypercorn.trio.serve`` as it is (Hypercorn 0.18, h11 0.16, quart-trio 0.12):

* Hypercorn finishes a response (restarts the keep-alive timer, or closes a connection whose
  request body is still unread) inside the application's last ``send`` call. That call delivers
  ``http.disconnect`` to the app, and quart-trio cancels the request's nursery as soon as it
  reads that message, so the bookkeeping is cancelled half way: an idle keep-alive connection
  was never timed out, and a GET whose ``Content-Length`` body had not arrived was never closed;
  once that body did arrive, h11 paused the connection and Hypercorn waited forever for a
  resume that would never come (the socket sat in CLOSE-WAIT). ``_shield_send`` lets every
  ``send`` run to its end; Hypercorn's socket writes are already shielded, and
  ``_BoundedStream`` puts a deadline on them.
* ``serve`` has no connection cap and no hook on accepted streams: ``serve_http`` accepts
  through a listener that holds a slot per open connection.

The keep-alive timer Hypercorn runs from accept (and from each response) until a complete
request head has arrived is both the idle timeout and the header deadline (slowloris). The
body deadline is the app's (``coordinator.api.http.raw_body``).
"""

from __future__ import annotations

import logging
import resource
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import trio
from hypercorn.config import Config
from hypercorn.trio.lifespan import Lifespan
from hypercorn.trio.tcp_server import TCPServer
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.typing import ConnectionState
from hypercorn.utils import repr_socket_addr, wrap_app

log = logging.getLogger("tanvrit.coordinator")

# File descriptors the process needs besides its connections (store, logs, wake-up pipes).
_RESERVED_FDS = 64


@dataclass(frozen=True)
class ConnectionLimits:
    """Bounds on client connections. Times in seconds."""

    idle_timeout_seconds: float = 5.0
    """A connection with no request in progress (after accept or after a response) is closed
    unless a complete request head arrives within this time: keep-alive idle and slowloris."""
    send_timeout_seconds: float = 30.0
    """One write to a client that stops reading may block this long; then the connection closes."""
    max_connections: int = 1000
    """Connections open at once; past this, new ones wait in the listen backlog."""
    graceful_timeout_seconds: float = 3.0


class _ShieldedSend:
    """An ASGI wrapper whose ``send`` cannot be cancelled half way (see the module docstring)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Callable[[Any], Awaitable[None]]) -> None:
        async def shielded_send(message: Any) -> None:
            with trio.CancelScope(shield=True):
                await send(message)

        await self.app(scope, receive, shielded_send)


class _BoundedStream(trio.abc.HalfCloseableStream):
    """A socket stream whose every write has a deadline. Hypercorn shields its writes from
    cancellation, so without one, a client that stops reading holds its task forever; the
    deadline's scope sits inside that shield and still fires."""

    def __init__(self, inner: trio.SocketStream, send_timeout: float) -> None:
        self._inner = inner
        self._send_timeout = send_timeout
        self.socket = inner.socket  # Hypercorn reads the peer and local addresses from it

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        with trio.move_on_after(self._send_timeout) as scope:
            await self._inner.send_all(data)
        if scope.cancelled_caught:
            # Closing also wakes the task blocked reading this connection.
            await self._inner.aclose()
            raise trio.BrokenResourceError("the client did not read the response in time")

    async def wait_send_all_might_not_block(self) -> None:
        await self._inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        return await self._inner.receive_some(max_bytes)

    async def send_eof(self) -> None:
        await self._inner.send_eof()

    async def aclose(self) -> None:
        await self._inner.aclose()


class _TCPServer(TCPServer):
    """Hypercorn's connection, torn down as soon as the client has gone: Hypercorn's own waits
    for its keep-alive timer even after end of file, holding the socket (CLOSE-WAIT) and a
    connection slot for up to ``idle_timeout_seconds``."""

    async def _read_data(self) -> None:
        await super()._read_data()
        await self.idle_task.stop()


class _CappedListener(trio.abc.Listener[trio.abc.Stream]):
    """Accepts only while a connection slot is free; the slot is given back by the handler."""

    def __init__(self, inner: trio.SocketListener, slots: trio.Semaphore, send_timeout: float) -> None:
        self._inner = inner
        self._slots = slots
        self._send_timeout = send_timeout

    async def accept(self) -> trio.abc.Stream:
        await self._slots.acquire()
        try:
            stream = await self._inner.accept()
        except BaseException:
            self._slots.release()
            raise
        return _BoundedStream(stream, self._send_timeout)

    async def aclose(self) -> None:
        await self._inner.aclose()


def connection_cap(wanted: int) -> int:
    """``wanted`` connections, raising the soft open-files limit toward the hard one if they
    would not fit; fewer (with a warning) if even the hard limit is too low."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = wanted + _RESERVED_FDS
    if soft != resource.RLIM_INFINITY and soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    if soft != resource.RLIM_INFINITY and soft < needed:
        allowed = max(1, soft - _RESERVED_FDS)
        log.warning("max_connections %d lowered to %d: the open-files limit is %d", wanted, allowed, soft)
        return allowed
    return wanted


async def serve_http(
    app: Any,
    bind: str,
    limits: ConnectionLimits,
    *,
    shutdown_trigger: Callable[[], Awaitable[None]] | None = None,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``app`` (ASGI) on ``bind`` (HOST:PORT) until ``shutdown_trigger`` returns (then
    open connections get ``graceful_timeout_seconds`` to finish) or the caller cancels.

    Reports the base URLs it listens on (``http://HOST:PORT``) through ``task_status``.
    Raises ``OSError`` if it cannot bind.
    """
    config = Config()
    config.bind = [bind]
    config.keep_alive_timeout = limits.idle_timeout_seconds
    config.graceful_timeout = limits.graceful_timeout_seconds
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")
    wrapped = wrap_app(_ShieldedSend(app), config.wsgi_max_body_size, "asgi")
    context = WorkerContext(None)
    lifespan_state: dict[str, Any] = {}
    lifespan = Lifespan(wrapped, config, lifespan_state)
    slots = trio.Semaphore(connection_cap(limits.max_connections))

    async def handle(stream: trio.abc.Stream) -> None:
        try:
            await _TCPServer(wrapped, config, context, ConnectionState(lifespan_state.copy()), stream)  # type: ignore[arg-type]
        finally:
            slots.release()

    async with trio.open_nursery() as lifespan_nursery:
        await lifespan_nursery.start(lifespan.handle_lifespan)
        await lifespan.wait_for_startup()
        sockets = config.create_sockets()
        listeners = []
        binds = []
        for sock in sockets.insecure_sockets:
            sock.listen(config.backlog)
            listeners.append(_CappedListener(trio.SocketListener(trio.socket.from_stdlib_socket(sock)), slots,
                                             limits.send_timeout_seconds))
            binds.append(f"http://{repr_socket_addr(sock.family, sock.getsockname())}")
        async with trio.open_nursery() as connections:
            try:
                async with trio.open_nursery() as accepting:
                    accepting.start_soon(partial(trio.serve_listeners, handle, listeners,
                                                 handler_nursery=connections))
                    task_status.started(binds)
                    if shutdown_trigger is None:
                        await trio.sleep_forever()
                    await shutdown_trigger()
                    accepting.cancel_scope.cancel()
            finally:
                with trio.CancelScope(shield=True):
                    for listener in listeners:
                        await listener.aclose()
                    # Idle connections close at once; busy ones get the graceful timeout.
                    await context.terminated.set()
                connections.cancel_scope.deadline = trio.current_time() + config.graceful_timeout
        await lifespan.wait_for_shutdown()
        lifespan_nursery.cancel_scope.cancel()
