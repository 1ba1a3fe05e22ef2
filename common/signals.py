"""Graceful stop on SIGTERM or SIGINT, the same way in every daemon."""

from __future__ import annotations

import signal
from collections.abc import Awaitable, Callable

import trio


async def run_until_signalled(main: Callable[[trio.Event], Awaitable[None]]) -> None:
    """Run ``main(stop)``; the first SIGTERM or SIGINT sets ``stop`` so that ``main`` can shut
    down gracefully. Returns when ``main`` does."""
    stop = trio.Event()

    async def watch_signals() -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for _ in signals:
                stop.set()
                return

    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch_signals)
        await main(stop)
        nursery.cancel_scope.cancel()
