"""Logging set-up (structlog), done only by runners."""

from __future__ import annotations

import logging
import sys

import structlog


def configure_logging(level: str | None = None, json: bool = False) -> None:
    """structlog at `level` (callers pass the settings' LOG_LEVEL; unset: WARNING)."""
    name = (level or "WARNING").upper()
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer() if json
        else structlog.dev.ConsoleRenderer(colors=False))
    structlog.configure(
        processors=[structlog.processors.add_log_level,
                    structlog.processors.TimeStamper(fmt="iso", utc=True), renderer],
        wrapper_class=structlog.make_filtering_bound_logger(
            getattr(logging, name, logging.WARNING)),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
    )
