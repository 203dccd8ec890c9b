"""structlog set-up (JSON in workers, readable in the CLI) and masking of addresses for log lines."""
from __future__ import annotations

import logging
import sys

import structlog


def configure(json_lines: bool, level: int = logging.INFO) -> None:
    """Route structlog (and stdlib logging) to stderr, as JSON lines or readable text."""
    renderer = structlog.processors.JSONRenderer() if json_lines else structlog.dev.ConsoleRenderer(colors=False)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )


def mask(address: str) -> str:
    """An address fit for a log line: `+44791*****56`, `a***@example.com`."""
    if not address:
        return ""
    if "@" in address:
        local, _, domain = address.rpartition("@")
        return f"{local[:1]}***@{domain}"
    if len(address) <= 6:
        return "*" * len(address)
    return address[:6] + "*" * (len(address) - 8) + address[-2:]
