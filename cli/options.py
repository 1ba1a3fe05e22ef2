"""Options shared by many commands: paging, ``--json`` on any command, times such as ``2h``."""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import click

from cli.context import CliContext
from common.clock import parse_rfc3339, to_rfc3339


def _set_json(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    if value:
        ctx.ensure_object(CliContext).as_json = True


def json_param() -> click.Option:
    """``--json`` after the command name (``jobs list --json``), like the global one before it."""
    return click.Option(["--json"], is_flag=True, expose_value=False, callback=_set_json,
                        help="Print the API's JSON instead of tables.")


def list_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """Adds ``--limit`` and ``--cursor`` and passes them on as ``paging`` query parameters."""

    @functools.wraps(f)
    def wrapper(*args: Any, limit: int, cursor: str | None, **kwargs: Any) -> Any:
        paging: dict[str, Any] = {"limit": limit}
        if cursor:
            paging["cursor"] = cursor
        return f(*args, paging=paging, **kwargs)

    wrapper = click.option("--cursor", help="Continue after the page that printed this cursor.")(wrapper)
    return click.option("--limit", type=click.IntRange(1, 500), default=50, show_default=True,
                        help="How many to show (1-500).")(wrapper)


_DURATION = re.compile(r"^(\d+)\s*([smhdw])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_moment(text: str, now: datetime) -> str:
    """``"90m"``, ``"2h"``, ``"7d"`` (that long before ``now``) or an RFC 3339 time → RFC 3339.

    Raises ``ValueError`` with a message fit to print.
    """
    match = _DURATION.match(text.strip().lower())
    if match:
        return to_rfc3339(now - timedelta(seconds=int(match.group(1)) * _UNITS[match.group(2)]))
    try:
        return to_rfc3339(parse_rfc3339(text))
    except ValueError:
        raise ValueError(f"{text!r} is neither a duration like 30m, 2h, 7d nor an RFC 3339 time "
                         "like 2026-04-26T09:00:00Z") from None


class MomentType(click.ParamType):  # type: ignore[type-arg]
    """A click type for ``parse_moment``; ``now`` is read when the option is parsed."""

    name = "TIME"

    def __init__(self, clock: Callable[[], datetime] | None = None) -> None:
        self._clock = clock or (lambda: datetime.now(UTC))

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        try:
            return parse_moment(str(value), self._clock())
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


MOMENT = MomentType()


def query(**values: Any) -> dict[str, Any]:
    """Query parameters without the ones left unset."""
    return {k: v for k, v in values.items() if v is not None and v != ()}
