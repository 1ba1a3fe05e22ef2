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
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer() if json_lines else structlog.dev.ConsoleRenderer(colors=False)
    )
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
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Hypercorn's per-request access log would drown everything else at INFO.
    logging.getLogger("hypercorn.access").setLevel(logging.WARNING)
    # One line per agent request (long-polls, heartbeats) is noise, not information.
    logging.getLogger("httpx").setLevel(logging.WARNING)
