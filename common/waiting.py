"""Small trio combinators that both daemons use while they wait on several things at once."""

from __future__ import annotations

import trio


async def first_of(*events: trio.Event) -> None:
    """Return as soon as any of ``events`` is set (at once if one already is)."""
    async with trio.open_nursery() as nursery:
        for event in events:

            async def wait(event: trio.Event = event) -> None:
                await event.wait()
                nursery.cancel_scope.cancel()

            nursery.start_soon(wait)
