"""Tables for people, the API's own JSON for scripts: every command prints through here.

A command describes its columns once (``Column("STATE", "state", state)``) and calls
``show_page``, ``show_item`` or ``show_done``; with ``--json`` those print the API's answer
unchanged instead.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import click

from common.clock import parse_rfc3339

if TYPE_CHECKING:
    from cli.context import CliContext

_STATE_COLOURS = {
    "QUEUED": "yellow", "ASSIGNED": "yellow", "RUNNING": "blue", "SUCCEEDED": "green", "FAILED": "red",
    "CANCELLED": "magenta", "TIMED_OUT": "red", "LOST": "red", "READY": "green", "DRAINING": "yellow",
    "DRAINED": "magenta", "DOWN": "red",
}


def colour_enabled(stream: Any = None) -> bool:
    """Colour only on a terminal, and never when ``NO_COLOR`` is set (no-color.org)."""
    stream = stream or sys.stdout
    return not os.environ.get("NO_COLOR") and hasattr(stream, "isatty") and stream.isatty()


def print_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2))


def relative_time(text: str | None, now: datetime | None = None) -> str:
    """``"3m ago"``, ``"in 2h"``; ``"-"`` for no time. Unparseable text is shown as it is."""
    if not text:
        return "-"
    try:
        moment = parse_rfc3339(text)
    except ValueError:
        return text
    seconds = int(((now or datetime.now(UTC)) - moment).total_seconds())
    future, seconds = seconds < 0, abs(seconds)
    if seconds < 2:
        return "just now"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size:
            amount = f"{seconds // size}{unit}"
            return f"in {amount}" if future else f"{amount} ago"
    return "just now"  # unreachable: seconds >= 2 matches "s"


def state(value: Any) -> str:
    text = "-" if value is None else str(value)
    if colour_enabled():
        return click.style(text, fg=_STATE_COLOURS.get(text))
    return text


def plain(value: Any) -> str:
    """A cell: ``-`` for nothing, ``k=v, ...`` for maps, ``a, b`` for lists."""
    if value is None or value == "" or value == [] or value == {}:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, dict):
        return ", ".join(f"{k}={plain(v)}" for k, v in value.items())
    if isinstance(value, list):
        return ", ".join(plain(v) for v in value)
    return str(value)


def ago(value: Any) -> str:
    return relative_time(value if isinstance(value, str) else None)


def usd(value: Any) -> str:
    return "-" if value is None else f"${float(value):,.2f}"


def truncated(limit: int) -> Callable[[Any], str]:
    def cut(value: Any) -> str:
        text = plain(value).replace("\n", " ")
        return text if len(text) <= limit else text[: limit - 1] + "…"
    return cut


@dataclass(frozen=True)
class Column:
    header: str
    key: str  # a dotted path into the item: "capacity.cpus"
    fmt: Callable[[Any], str] = plain

    def cell(self, item: dict[str, Any]) -> str:
        value: Any = item
        for part in self.key.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        return self.fmt(value)


def print_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """Aligned columns; widths ignore colour codes so coloured cells line up too."""
    plain_rows = [[click.unstyle(cell) for cell in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in plain_rows]) for i, h in enumerate(headers)]
    click.echo("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip())
    for row, raw in zip(rows, plain_rows, strict=True):
        cells = [cell + " " * (w - len(r)) for cell, r, w in zip(row, raw, widths, strict=True)]
        click.echo("  ".join(cells).rstrip())


def show_page(ctx: CliContext, page: dict[str, Any], columns: Sequence[Column], *, empty: str = "nothing here") -> None:
    """A list answer ``{"items", "nextCursor"}``: a table, or the JSON as it came."""
    if ctx.as_json:
        print_json(page)
        return
    items = page.get("items", [])
    if not items:
        click.echo(empty, err=True)
    else:
        print_table([c.header for c in columns], [[c.cell(item) for c in columns] for item in items])
    if page.get("nextCursor"):
        click.echo(f"(more: add --cursor {page['nextCursor']})", err=True)


def show_item(ctx: CliContext, item: dict[str, Any], fields: Sequence[Column] | None = None) -> None:
    """One object: ``key: value`` lines (all its keys unless ``fields`` chooses), or its JSON."""
    if ctx.as_json:
        print_json(item)
        return
    columns = list(fields) if fields else [Column(key, key, state if key == "state" else plain) for key in item]
    width = max(len(c.header) for c in columns) + 1
    for column in columns:
        click.echo(f"{column.header + ':':<{width}} {column.cell(item)}")


def show_done(ctx: CliContext, item: Any, message: str) -> None:
    """The answer to a change: a one-line sentence, or the JSON as it came."""
    if ctx.as_json:
        print_json(item)
    else:
        click.echo(message)


def secret_notice(what: str) -> None:
    click.echo(f"Store the {what} now: it is shown only once.", err=True)
