"""common/logs.py renders key=value lines itself (every request writes one): the same line,
character for character, as structlog's console renderer without colours, except that no
control character a client chose reaches the terminal as it is."""

from __future__ import annotations

import copy
import sys
from typing import Any

import structlog

from common.logs import PlainConsoleRenderer

EVENTS: list[dict[str, Any]] = [
    {"timestamp": "2026-12-02T12:00:00.123456Z", "level": "info", "logger": "tanvrit.coordinator.requests",
     "event": "request", "method": "GET", "path": "/v0/jobs/job_1", "status": 200, "ms": 0.61,
     "workspace": "ws_1", "client": "127.0.0.1", "request_id": "req_1"},
    {"timestamp": "t", "level": "warning", "event": "a very long event name that is longer than thirty", "x": None},
    {"level": "debug", "event": "", "empty": "", "quote": "it's", "space": "a b", "eq": "a=b", "tab": "a\tb",
     "newline": "a\nb", "cr": "a\rb", "dq": 'say "hi"', "list": [1, "two"], "dict": {"k": "v"}, "flag": True},
    {"event": "no level or time", "logger_name": "stdlib.name", "n": 3},
    {"timestamp": "", "level": "exception", "event": 42, "logger": None, "b": 1, "a": 2, "_private": "x"},
    {"event": "unicode é ü", "value": "naïve", "bytes": b"raw"},
    {"level": "critical", "event": "padded", "number": 1.5e300, "neg": -1},
]


def _reference() -> structlog.dev.ConsoleRenderer:
    return structlog.dev.ConsoleRenderer(colors=False, exception_formatter=structlog.dev.plain_traceback)


def test_lines_match_structlogs_console_renderer() -> None:
    ours, theirs = PlainConsoleRenderer(), _reference()
    for event in EVENTS:
        assert ours(None, "info", copy.deepcopy(event)) == theirs(None, "info", copy.deepcopy(event)), event


def test_tracebacks_and_stacks_are_structlogs_own() -> None:
    ours, theirs = PlainConsoleRenderer(), _reference()
    try:
        raise ValueError("boom")
    except ValueError:
        info = sys.exc_info()
    for extra in ({"exc_info": info}, {"stack": "Stack (most recent call last):\n  here"},
                  {"exception": "Traceback ...\nValueError: boom"}):
        event = {"timestamp": "t", "level": "error", "event": "failed", "key": "value", **extra}
        assert ours(None, "error", dict(event)) == theirs(None, "error", dict(event))


def test_control_characters_are_escaped_never_written_as_they_are() -> None:
    # A request path is the client's: ESC [ 2 J clears an operator's terminal, BEL rings, C1 CSI.
    hostile = "/v0/jobs/\x1b[2J\x07\x9b31m\x00"
    ours = PlainConsoleRenderer()
    lines = [ours(None, "info", {"event": "request", "path": hostile, "level": "info"}),
             ours(None, "info", {"event": f"event {hostile}", "level": "info"})]
    try:
        raise ValueError("boom")
    except ValueError:
        lines.append(ours(None, "error", {"event": "failed", "path": hostile, "exc_info": sys.exc_info()}))
    for line in lines:
        assert not any((ord(char) < 0x20 and char not in "\n") or 0x7f <= ord(char) <= 0x9f for char in line), line
        assert "\\x1b[2J" in line
