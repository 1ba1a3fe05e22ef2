"""Tables for people, JSON for scripts."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from typing import Any

import click

from common.clock import parse_rfc3339

_STATE_COLOURS = {
    "QUEUED": "yellow", "ASSIGNED": "yellow", "RUNNING": "blue", "SUCCEEDED": "green", "FAILED": "red",
    "CANCELLED": "magenta", "TIMED_OUT": "red", "LOST": "red", "READY": "green", "DRAINING": "yellow",
    "DRAINED": "magenta", "DOWN": "red",
}


def print_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2))


def relative_time(text: str | None, now: datetime | None = None) -> str:
    if not text:
        return "-"
    moment = parse_rfc3339(text)
    seconds = int(((now or datetime.now(UTC)) - moment).total_seconds())
    if seconds < 0:
        return "just now"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit} ago"
    return f"{seconds}s ago"


def state(text: str) -> str:
    if sys.stdout.isatty():
        return click.style(text, fg=_STATE_COLOURS.get(text))
    return text


def print_table(headers: list[str], rows: list[list[str]]) -> None:
    plain = [[click.unstyle(cell) for cell in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in plain]) for i, h in enumerate(headers)]
    click.echo("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip())
    for row, raw in zip(rows, plain, strict=True):
        cells = [cell + " " * (w - len(r)) for cell, r, w in zip(row, raw, widths, strict=True)]
        click.echo("  ".join(cells).rstrip())
