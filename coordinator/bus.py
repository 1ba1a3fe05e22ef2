"""Wake-ups between replicas: PostgreSQL ``LISTEN/NOTIFY`` carrying the notifier's messages.

A replica's ``Notifier`` publishes each firing (coordinator/notify.py) to ``PostgresBus``,
which sends it as ``NOTIFY tanvrit_wake`` right after the write it announces has committed
(the notifier is called once the store call returned), on a connection of its own; writes
that fire together go as one round trip. Every replica LISTENs on a dedicated connection in
a worker thread and applies the messages of the others to its own signals, so a claim
long-poll, a log follower or a held heartbeat on replica A wakes within milliseconds of a
change committed through replica B::

    replica B: store write ─ commit ─▶ notifier.job_changed(j) ─▶ bus.publish("j <id>")
                                                                   │ sender task (thread hop)
                                            NOTIFY tanvrit_wake, '<B> j <id>'
    replica A: listener thread ◀── PostgreSQL delivers it to every LISTENer
               └─▶ trio.from_thread ─▶ notifier.apply("j <id>") ─▶ the SSE follower wakes

Each message starts with the sender's replica id, and a replica ignores its own (it already
fired them in process). Messages are hints, never the truth: a waiter woken re-reads the
store. A lost connection is reopened (with back-off) and, once listening again, every local
waiter is woken, since messages sent meanwhile were missed; while it is down, waiters still
end at their own timeouts (claim ``waitSeconds``, heartbeat holds, SSE keep-alives).

On SQLite there is one process and no bus: the notifier fires in process only.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import psycopg
import structlog
import trio

from coordinator.notify import Notifier

log = structlog.get_logger("tanvrit.coordinator.bus")

CHANNEL = "tanvrit_wake"
# PostgreSQL refuses payloads of 8000 bytes or more; ours are an id or two.
MAX_PAYLOAD = 7900
# How long the listener waits for notifications before looking at its stop flag.
LISTEN_SLICE_SECONDS = 0.25
RECONNECT_MIN_SECONDS = 0.1
RECONNECT_MAX_SECONDS = 5.0


class PostgresBus:
    """Publish messages to, and apply the other replicas' messages from, one PostgreSQL channel.

    ``publish`` never blocks; ``serve`` runs the sender and the listener until cancelled."""

    def __init__(self, url: str, replica_id: str, *,
                 connect: Callable[[str], psycopg.Connection[tuple[object, ...]]] | None = None) -> None:
        self.url = url
        self.replica_id = replica_id
        self._connect = connect or _autocommit
        self._pending: list[str] = []
        self._has_pending = trio.Event()
        self.sent = 0  # NOTIFY payloads sent, for tests and benchmarks
        self.received = 0  # other replicas' messages applied

    def publish(self, message: str) -> None:
        payload = f"{self.replica_id} {message}"
        if len(payload.encode()) > MAX_PAYLOAD:
            log.warning("bus message too long: not sent", size=len(payload))
            return
        self._pending.append(payload)
        self._has_pending.set()

    async def serve(self, notifier: Notifier, *,
                    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Listen and send until cancelled; started once the listener is LISTENing (a message
        published after that reaches the other replicas that are listening too)."""
        async with trio.open_nursery() as nursery:
            await nursery.start(self._serve_listener, notifier)
            nursery.start_soon(self._serve_sender)
            task_status.started()

    # --- sending ---------------------------------------------------------------------------
    async def _serve_sender(self) -> None:
        conn: psycopg.Connection[tuple[object, ...]] | None = None
        delay = RECONNECT_MIN_SECONDS
        try:
            while True:
                await self._has_pending.wait()
                self._has_pending = trio.Event()
                batch, self._pending = list(dict.fromkeys(self._pending)), []
                try:
                    if conn is None or conn.closed:
                        conn = await trio.to_thread.run_sync(self._connect, self.url)
                    await trio.to_thread.run_sync(_notify, conn, batch)
                    self.sent += len(batch)
                    delay = RECONNECT_MIN_SECONDS
                except psycopg.Error as exc:
                    # Wake-ups are hints: the batch is dropped (waiters end at their timeouts),
                    # and the next one is sent on a new connection. (No traceback: rendering one
                    # costs more than the reconnect, and the message says it all.)
                    log.warning("bus: could not send wake-ups; reconnecting", dropped=len(batch), error=str(exc))
                    await _close(conn)
                    conn = None
                    await trio.sleep(delay)
                    delay = min(delay * 2, RECONNECT_MAX_SECONDS)
        finally:
            with trio.CancelScope(shield=True):
                await _close(conn)

    # --- listening -------------------------------------------------------------------------
    async def _serve_listener(self, notifier: Notifier, *,
                              task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        stop = threading.Event()
        token = trio.lowlevel.current_trio_token()
        state = {"started": False, "listening": False}
        delay = RECONNECT_MIN_SECONDS

        def report_started() -> None:
            if not state["started"]:
                state["started"] = True
                task_status.started()

        def deliver(message: str) -> None:
            # Run by the event loop itself (``run_sync_soon``), where an exception would end the
            # loop: a message this replica cannot apply is logged and dropped.
            self.received += 1
            try:
                notifier.apply(message)
            except Exception:
                log.exception("bus: could not apply a wake-up", message=message[:200])

        def on_listening() -> None:
            # Anything sent while we were not listening is lost: every waiter looks again.
            state["listening"] = True
            notifier.wake_all()
            report_started()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(_set_on_cancel, stop)
            while not stop.is_set():
                state["listening"] = False
                try:
                    await trio.to_thread.run_sync(self._listen, stop, token, deliver, on_listening)
                except psycopg.Error as exc:
                    log.warning("bus: listener connection lost; reconnecting", error=str(exc))
                # Started after the first try even when it failed: the replica serves anyway
                # (its waiters end at their own timeouts until the listener is back).
                report_started()
                if stop.is_set():
                    break
                delay = RECONNECT_MIN_SECONDS if state["listening"] else min(delay * 2, RECONNECT_MAX_SECONDS)
                await trio.sleep(delay)
            nursery.cancel_scope.cancel()

    def _listen(self, stop: threading.Event, token: trio.lowlevel.TrioToken,
                deliver: Callable[[str], None], on_listening: Callable[[], None]) -> None:
        """In a worker thread: LISTEN, then hand each notification to the trio loop until ``stop``."""
        with self._connect(self.url) as conn:
            conn.execute(f"LISTEN {CHANNEL}")
            trio.from_thread.run_sync(on_listening, trio_token=token)
            own = f"{self.replica_id} "
            while not stop.is_set():
                for notify in conn.notifies(timeout=LISTEN_SLICE_SECONDS):
                    # Our own messages (every one we send comes back) are dropped here, in the
                    # thread: handing each to the event loop and waiting for it cost a thread
                    # round trip per write on a lone replica. The others' are queued to the loop
                    # without waiting (applied in order; a wake-up is only a hint).
                    if notify.payload.startswith(own):
                        continue
                    try:
                        token.run_sync_soon(deliver, notify.payload.partition(" ")[2])
                    except trio.RunFinishedError:
                        return


def _autocommit(url: str) -> psycopg.Connection[tuple[object, ...]]:
    return psycopg.connect(url, autocommit=True, application_name="tanvrit-coordinator bus")


def _notify(conn: psycopg.Connection[tuple[object, ...]], batch: list[str]) -> None:
    # One statement (one round trip, one transaction) for the whole batch.
    conn.execute("SELECT pg_notify(%s, payload) FROM unnest(%s::text[]) AS payload", (CHANNEL, batch))


async def _close(conn: psycopg.Connection[tuple[object, ...]] | None) -> None:
    if conn is not None:
        await trio.to_thread.run_sync(conn.close)


async def _set_on_cancel(stop: threading.Event) -> None:
    try:
        await trio.sleep_forever()
    finally:
        stop.set()
