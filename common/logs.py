"""Structured logging (structlog) for every process: key=value for people, JSON lines for
machines (``--log-json``). Standard-library loggers of dependencies go through the same
renderer so that one process writes one format."""

from __future__ import annotations

import logging
import re
import sys
from typing import Any, TextIO

import structlog


class _HandlerWriter:
    """structlog's own output: each rendered line written to the standard-library handler's
    stream, under that handler's lock, so both kinds of line interleave whole.

    structlog's lines are rendered in structlog's chain and never become ``LogRecord``s: the
    standard-library route (caller lookup by frame walking, two records per line, the
    formatter's second pass) cost several times the rendering itself, on every request's log
    line (docs/performance.md, "Known costs")."""

    def __init__(self, handler: logging.StreamHandler[TextIO], name: str) -> None:
        self._handler = handler
        self.name = name  # for ``add_logger_name``

    def msg(self, message: str) -> None:
        handler = self._handler
        handler.acquire()
        try:
            handler.stream.write(message + "\n")
            handler.flush()
        finally:
            handler.release()

    log = debug = info = warn = warning = msg
    fatal = failure = err = error = critical = exception = msg


_ABSENT = object()
# What structlog's console renderer quotes (``repr``) a string value for, and control characters:
# structlog writes those as they are, so a value a client chose (a request path) could carry
# terminal escape sequences into an operator's terminal; ``repr`` writes them as ``\x1b``.
_QUOTED = re.compile("[\x00-\x20\x7f-\x9f=\"']")
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
_ESCAPED_CONTROLS = {code: f"\\x{code:02x}" for code in (*range(0x00, 0x20), *range(0x7f, 0xa0))
                     if chr(code) not in "\t\n\r"}


def _without_controls(value: Any) -> Any:
    """A string's control characters (not tab, newline or return, which structlog quotes) written
    as ``\\xNN``; anything else as it is."""
    if type(value) is str and _CONTROL.search(value):
        return value.translate(_ESCAPED_CONTROLS)
    return value


_LEVEL_WIDTH = len("exception")  # the longest level name: structlog pads levels to it
_EVENT_WIDTH = 30


class PlainConsoleRenderer(structlog.dev.ConsoleRenderer):
    """structlog's console renderer without colours, the same line in a fraction of the time.

    Its general column machinery (a formatter object and a ``StringIO`` per column, padding
    and styles that are empty without colours) was about 60 µs of every request's log line
    (docs/performance.md). A line without a traceback or stack is written here with plain
    string operations; one with either goes to structlog's own renderer. The output is the
    same, character for character (``tests/test_logs.py`` compares the two)."""

    def __init__(self) -> None:
        super().__init__(colors=False, exception_formatter=structlog.dev.plain_traceback)

    def __call__(self, logger: Any, name: str, event_dict: Any) -> str:
        if "stack" in event_dict or "exception" in event_dict or "exc_info" in event_dict:
            for key, value in event_dict.items():
                if key not in ("stack", "exception", "exc_info"):
                    event_dict[key] = _without_controls(value)
            return super().__call__(logger, name, event_dict)
        parts = []
        timestamp = event_dict.pop("timestamp", _ABSENT)
        if timestamp is not _ABSENT:
            parts.append(str(timestamp))
        level = event_dict.pop("level", _ABSENT)
        if level is not _ABSENT:
            parts.append(f"[{str(level).ljust(_LEVEL_WIDTH)}]")
        event = event_dict.pop("event", _ABSENT)
        if event is not _ABSENT:
            parts.append(_without_controls(str(event)).ljust(_EVENT_WIDTH))
        for key in ("logger", "logger_name"):
            value = event_dict.pop(key, _ABSENT)
            if value is not _ABSENT:
                parts.append(f"[{value}]")
        for key in sorted(event_dict):
            value = event_dict[key]
            if type(value) is not str or _QUOTED.search(value):
                value = repr(value)
            parts.append(f"{key}={value}")
        return " ".join([part for part in parts if part]).rstrip(" ")


def configure_logging(*, json_lines: bool = False, level: str = "INFO") -> None:
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    # Tracebacks are rendered plain: never with local variables (structlog's rich and
    # dict tracebacks show them by default, and a handler's locals hold request bodies and
    # secrets), and never with the exception's arguments beyond its message.
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer() if json_lines
        else PlainConsoleRenderer()
    )
    last: list[structlog.types.Processor] = [structlog.processors.format_exc_info] if json_lines else []
    handler = logging.StreamHandler(sys.stderr)
    # Standard-library loggers (ours and dependencies') are rendered by the same processors.
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *last, renderer],
        )
    )
    threshold = logging.getLevelNamesMapping()[level.upper()]
    structlog.configure(
        processors=[*shared, *last, renderer],
        logger_factory=lambda name="", *_: _HandlerWriter(handler, name),
        wrapper_class=structlog.make_filtering_bound_logger(threshold),
        cache_logger_on_first_use=True,
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Hypercorn's per-request access log would drown everything else at INFO.
    logging.getLogger("hypercorn.access").setLevel(logging.WARNING)
    # One line per agent request (long-polls, heartbeats) is noise, not information.
    logging.getLogger("httpx").setLevel(logging.WARNING)
