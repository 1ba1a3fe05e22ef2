"""Graceful stop on SIGTERM or SIGINT, the same way in every daemon."""

from __future__ import annotations

import signal
from collections.abc import Awaitable, Callable

import trio


async def run_until_signalled(main: Callable[[trio.Event], Awaitable[None]], *,
                              on_second_signal: Callable[[int], None] | None = None) -> None:
    """Run ``main(stop)``; the first SIGTERM or SIGINT sets ``stop`` so that ``main`` can shut
    down gracefully. Returns when ``main`` does.

    With ``on_second_signal``, a second SIGTERM or SIGINT calls it with the signal number (it
    is expected to end the process at once); without it, the signals' previous dispositions are
    back after the first one."""
    stop = trio.Event()

    async def watch_signals() -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for signum in signals:
                if not stop.is_set():
                    stop.set()
                    if on_second_signal is None:
                        return
                elif on_second_signal is not None:
                    on_second_signal(signum)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch_signals)
        await main(stop)
        nursery.cancel_scope.cancel()
