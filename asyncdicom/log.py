"""Logging: structlog on top of the standard library, quiet by default.

The library never configures logging itself.  Events go through structlog to the stdlib logger
``asyncdicom``, which is silent until an application (or the CLI's ``-v`` / ``--log-json``)
configures it.  Each association binds its own context (association id, peer address, AE titles).
"""

from __future__ import annotations

import logging
from typing import Any

import structlog

__all__ = ["configure_cli_logging", "get_logger"]

_stdlib_logger = logging.getLogger("asyncdicom")
_stdlib_logger.addHandler(logging.NullHandler())


def get_logger(**context: Any) -> Any:
    """A structlog logger bound to ``context``, filtered by the stdlib level of ``asyncdicom``."""
    return structlog.wrap_logger(
        _stdlib_logger,
        processors=[
            structlog.stdlib.filter_by_level,
            structlog.stdlib.add_log_level,
            structlog.processors.TimeStamper(fmt="iso"),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        wrapper_class=structlog.stdlib.BoundLogger,
    ).bind(**context)


def configure_cli_logging(*, verbose: int = 0, json: bool = False) -> None:
    """Route asyncdicom's events to stderr: WARNING by default, INFO with -v, DEBUG with -vv."""
    renderer: Any = (
        structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(colors=False)
    )
    handler = logging.StreamHandler()
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    level = logging.WARNING if verbose <= 0 else logging.INFO if verbose == 1 else logging.DEBUG
    _stdlib_logger.handlers[:] = [handler]
    _stdlib_logger.setLevel(level)
    _stdlib_logger.propagate = False
