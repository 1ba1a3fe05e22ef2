"""Structured logging (structlog) for every process: key=value for people, JSON lines for
machines (``--log-json``). Standard-library loggers of dependencies go through the same
renderer so that one process writes one format."""

from __future__ import annotations

import logging
import sys

import structlog


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
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *last, renderer],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Hypercorn's per-request access log would drown everything else at INFO.
    logging.getLogger("hypercorn.access").setLevel(logging.WARNING)
    # One line per agent request (long-polls, heartbeats) is noise, not information.
    logging.getLogger("httpx").setLevel(logging.WARNING)
