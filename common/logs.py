"""Structured logging (structlog) for every process: key=value for people, JSON lines for
machines (``--log-json``). Standard-library loggers of dependencies go through the same
renderer so that one process writes one format."""

from __future__ import annotations

import logging
import sys
from typing import TextIO

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
        else structlog.dev.ConsoleRenderer(colors=False, exception_formatter=structlog.dev.plain_traceback)
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
