"""Logging: structlog on top of the standard library, quiet by default.

The library never configures logging itself.  Events go through structlog to the stdlib logger
``asyncdicom``; until an application (or the CLI's ``-v`` / ``--log-json``) configures logging,
Python's last-resort handler prints warnings and errors (e.g. a handler that raised, with its
traceback) on stderr and drops the rest.  Each association binds its own context (association
id, peer address, AE titles).

Whatever the application's logging set-up, an event is readable:

* with structlog's :class:`~structlog.stdlib.ProcessorFormatter` on a handler (what the CLI
  installs), that formatter's processors render the event dictionary (console or JSON lines);
* with a plain :mod:`logging` formatter (e.g. after ``logging.basicConfig()``), the message is
  one ``event key=value ...`` line, and an exception attached to the event is passed to the
  stdlib record, so the formatter prints its traceback.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog

__all__ = ["configure_cli_logging", "get_logger", "json_logging"]

#: no NullHandler on purpose: with no logging configured, warnings and errors still show
_stdlib_logger = logging.getLogger("asyncdicom")

#: keys a plain one-line rendering leaves out: the stdlib record carries them already
_NOT_IN_LINE = frozenset({"event", "level", "timestamp", "exc_info", "stack_info"})

#: whether :func:`configure_cli_logging` chose JSON lines (the CLI's own lines follow suit)
_json_mode = False


class _LineEvent(dict[str, Any]):
    """A structlog event dictionary that prints as one ``event key=value ...`` line.

    It is the stdlib record's ``msg``: a :class:`~structlog.stdlib.ProcessorFormatter` reads it
    as a dictionary, any other formatter calls ``str()`` on it.
    """

    def __str__(self) -> str:
        parts = [str(self.get("event", ""))]
        for key, value in self.items():
            if key in _NOT_IN_LINE or key.startswith("_"):
                continue
            parts.append(f"{key}={_plain(value)}")
        return " ".join(parts)


def _plain(value: Any) -> str:
    if isinstance(value, str):
        if value and not any(ch.isspace() or ch in "='\"" for ch in value):
            return value
        return repr(value)
    return repr(value)


def _exc_info_tuple(value: Any) -> Any:
    """Normalise an event's ``exc_info`` (True, an exception, a tuple) to a tuple or None."""
    if value is True:
        info = sys.exc_info()
        return info if info[0] is not None else None
    if isinstance(value, BaseException):
        return (type(value), value, value.__traceback__)
    if isinstance(value, tuple) and len(value) == 3 and value[0] is not None:
        return value
    return None


def _to_stdlib(
    logger: logging.Logger, name: str, event_dict: structlog.typing.EventDict
) -> tuple[tuple[_LineEvent], dict[str, Any]]:
    """Last processor: hand the event to the stdlib logger.

    Like :meth:`structlog.stdlib.ProcessorFormatter.wrap_for_formatter`, plus an
    :class:`_LineEvent` message (readable under any formatter) and the event's exception as the
    record's ``exc_info`` (so that a plain formatter prints the traceback).
    """
    event = _LineEvent(event_dict)
    kwargs: dict[str, Any] = {"extra": {"_logger": logger, "_name": name}}
    if "exc_info" in event:
        info = _exc_info_tuple(event["exc_info"])
        if info is None:
            del event["exc_info"]
        else:
            event["exc_info"] = info
            kwargs["exc_info"] = info
    return (event,), kwargs


def get_logger(**context: Any) -> Any:
    """A structlog logger bound to ``context``, filtered by the stdlib level of ``asyncdicom``."""
    return structlog.wrap_logger(
        _stdlib_logger,
        processors=[
            structlog.stdlib.filter_by_level,
            structlog.stdlib.add_log_level,
            structlog.processors.TimeStamper(fmt="iso"),
            _to_stdlib,
        ],
        wrapper_class=structlog.stdlib.BoundLogger,
    ).bind(**context)


def json_logging() -> bool:
    """Whether :func:`configure_cli_logging` set up JSON lines."""
    return _json_mode


def configure_cli_logging(*, verbose: int = 0, json: bool = False) -> None:
    """Route asyncdicom's events to stderr: WARNING by default, INFO with -v, DEBUG with -vv.

    With ``json`` every line is one JSON object, and an exception is rendered as its
    traceback text in the ``exception`` key; otherwise lines are human-readable, with a plain
    traceback (no local variables) after an event that carries an exception.
    """
    global _json_mode
    processors: list[Any] = [structlog.stdlib.ProcessorFormatter.remove_processors_meta]
    if json:
        processors += [
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(default=str),
        ]
    else:
        processors.append(
            structlog.dev.ConsoleRenderer(
                colors=False, exception_formatter=structlog.dev.plain_traceback
            )
        )
    handler = logging.StreamHandler()
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=processors,
            # records from other code (not through get_logger) get a level and a time too
            foreign_pre_chain=[
                structlog.stdlib.add_log_level,
                structlog.processors.TimeStamper(fmt="iso"),
            ],
        )
    )
    level = logging.WARNING if verbose <= 0 else logging.INFO if verbose == 1 else logging.DEBUG
    _stdlib_logger.handlers[:] = [handler]
    _stdlib_logger.setLevel(level)
    _stdlib_logger.propagate = False
    _json_mode = json
