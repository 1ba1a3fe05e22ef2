"""HTTP serving on Hypercorn's parts, with every connection bounded in time and in number.

Why not ``hypercorn.trio.serve`` as it is (Hypercorn 0.18, h11 0.16, quart-trio 0.12):

* Hypercorn finishes a response (restarts the keep-alive timer, or closes a connection whose
  request body is still unread) inside the application's last ``send`` call. That call delivers
  ``http.disconnect`` to the app, and quart-trio cancels the request's nursery as soon as it
  reads that message, so the bookkeeping is cancelled half way: an idle keep-alive connection
  was never timed out, and a GET whose ``Content-Length`` body had not arrived was never closed;
  once that body did arrive, h11 paused the connection and Hypercorn waited forever for a
  resume that would never come (the socket sat in CLOSE-WAIT). ``_ShieldedSend`` lets every
  ``send`` run to its end; Hypercorn's socket writes are already shielded, and
  ``_BoundedStream`` with ``_SendWatch`` puts a deadline on them.
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

LISTEN_BACKLOG = 65535
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
    max_connections: int = 12_000
    """Connections open at once; past this, new ones wait in the listen backlog."""
    graceful_timeout_seconds: float = 3.0


Send = Callable[[Any], Awaitable[None]]


def shielded(send: Send) -> Send:
    """``send`` that cannot be cancelled half way (see the module docstring)."""

    async def shielded_send(message: Any) -> None:
        with trio.CancelScope(shield=True):
            await send(message)

    return shielded_send


class _ShieldedSend:
    """An ASGI wrapper whose ``send`` cannot be cancelled half way (see the module docstring).

    An app whose ``shields_own_sends`` is true is handed the plain ``send`` and shields the
    sends that may be cancelled itself: the fast lane (``coordinator/fast_lane.py``) serves
    most requests in a task nothing cancels, where the shield's cancel scope on every send
    was a cost without a purpose."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self._shields_own = bool(getattr(app, "shields_own_sends", False))

    async def __call__(self, scope: Any, receive: Any, send: Send) -> None:
        await self.app(scope, receive, send if self._shields_own else shielded(send))


class _SendWatch:
    """The deadline on every write to a client, kept by one task for all connections.

    Hypercorn shields its writes from cancellation, so without a deadline a client that stops
    reading holds its task forever. A cancel scope with a deadline around each write cost
    about as much as a tenth of a small request's whole handling; instead each stream notes
    when its write began, and this task closes the connections whose write has waited longer
    than ``timeout`` (checked every ``timeout / 4``, at most every second: a write is cut
    after ``timeout`` to ``1.25 * timeout``)."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.streams: set[_BoundedStream] = set()

    async def serve(self) -> None:
        period = min(1.0, self.timeout / 4)
        while True:
            await trio.sleep(period)
            now = trio.current_time()
            for stream in list(self.streams):
                if stream.sending_since is not None and now - stream.sending_since >= self.timeout:
                    stream.expire()


class _BoundedStream(trio.abc.HalfCloseableStream):
    """A socket stream whose every write has a deadline (``_SendWatch``)."""

    def __init__(self, inner: trio.SocketStream, watch: _SendWatch) -> None:
        self._inner = inner
        self.socket = inner.socket  # Hypercorn reads the peer and local addresses from it
        self.sending_since: float | None = None
        self._expired = False
        self._watch = watch
        watch.streams.add(self)

    def expire(self) -> None:
        """Close the connection under a write that has waited too long; the write ends at once."""
        self._expired = True
        self._watch.streams.discard(self)
        self._inner.socket.close()  # trio wakes the blocked write (ClosedResourceError)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        self.sending_since = trio.current_time()
        try:
            await self._inner.send_all(data)
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            if self._expired:
                raise trio.BrokenResourceError("the client did not read the response in time") from None
            raise
        finally:
            self.sending_since = None

    async def wait_send_all_might_not_block(self) -> None:
        await self._inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        return await self._inner.receive_some(max_bytes)

    async def send_eof(self) -> None:
        await self._inner.send_eof()

    async def aclose(self) -> None:
        self._watch.streams.discard(self)
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

    def __init__(self, inner: trio.SocketListener, slots: trio.Semaphore, watch: _SendWatch) -> None:
        self._inner = inner
        self._slots = slots
        self._watch = watch

    async def accept(self) -> trio.abc.Stream:
        await self._slots.acquire()
        try:
            stream = await self._inner.accept()
        except BaseException:
            self._slots.release()
            raise
        return _BoundedStream(stream, self._watch)

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
    # Hypercorn's 100 overflowed when a fleet reconnected at once (5,000 agents' claims and held
    # heartbeats after a restart): the kernel reset the rest, and each agent backed off. The
    # kernel clamps this to net.core.somaxconn (4096 on current kernels), as Go's servers do.
    config.backlog = LISTEN_BACKLOG
    wrapped = wrap_app(_ShieldedSend(app), config.wsgi_max_body_size, "asgi")
    context = WorkerContext(None)
    lifespan_state: dict[str, Any] = {}
    lifespan = Lifespan(wrapped, config, lifespan_state)
    slots = trio.Semaphore(connection_cap(limits.max_connections))
    watch = _SendWatch(limits.send_timeout_seconds)

    async def handle(stream: trio.abc.Stream) -> None:
        try:
            await _TCPServer(wrapped, config, context, ConnectionState(lifespan_state.copy()), stream)  # type: ignore[arg-type]
        finally:
            watch.streams.discard(stream)
            slots.release()

    # The watch outlives the connections even when the caller cancels (the abrupt stop): their
    # writes are shielded, so only the watch ends one to a client that never reads. Its scope
    # is shielded from outside; it is cancelled once the last connection has ended.
    watching = trio.CancelScope(shield=True)

    async def watch_writes() -> None:
        with watching:
            await watch.serve()

    async with trio.open_nursery() as lifespan_nursery:
        await lifespan_nursery.start(lifespan.handle_lifespan)
        # Beside the lifespan, not the connections: it watches writes until the last connection ends.
        lifespan_nursery.start_soon(watch_writes)
        try:
            await lifespan.wait_for_startup()
            sockets = config.create_sockets()
            listeners = []
            binds = []
            for sock in sockets.insecure_sockets:
                sock.listen(config.backlog)
                listeners.append(_CappedListener(trio.SocketListener(trio.socket.from_stdlib_socket(sock)), slots,
                                                 watch))
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
        finally:
            watching.cancel()
        await lifespan.wait_for_shutdown()
        lifespan_nursery.cancel_scope.cancel()
