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

structlog itself is imported only when an event is logged at a level the stdlib logger lets
through: binding context and a call below the level cost a dictionary and one cached level
check, and a quiet program (every CLI app without ``-v``) never pays structlog's import.
"""

from __future__ import annotations

import logging
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import structlog.typing

__all__ = ["BoundLog", "configure_cli_logging", "get_logger", "json_logging"]

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


class BoundLog:
    """A logger bound to a context, in front of structlog: what :func:`get_logger` returns.

    It has the methods of :class:`structlog.stdlib.BoundLogger` that the library uses
    (``bind``, ``new``, ``debug``, ``info``, ``warning``, ``error``, ``exception``,
    ``critical``); an event goes through structlog's processors to the stdlib logger
    ``asyncdicom``.  Below that logger's level an event is dropped before structlog is
    imported or an event dictionary built.
    """

    __slots__ = ("_context", "_wrapped")

    def __init__(self, context: dict[str, Any]) -> None:
        self._context = context
        self._wrapped: Any = None

    def bind(self, **context: Any) -> BoundLog:
        """A new logger with ``context`` added to this one's."""
        return BoundLog({**self._context, **context})

    def new(self, **context: Any) -> BoundLog:
        """A new logger with only ``context``."""
        return BoundLog(dict(context))

    def _emit(self, level: int, method: str, event: str, kw: dict[str, Any]) -> Any:
        if not _stdlib_logger.isEnabledFor(level):
            return None
        wrapped = self._wrapped
        if wrapped is None:
            wrapped = self._wrapped = _structlog_logger(self._context)
        return getattr(wrapped, method)(event, **kw)

    def debug(self, event: str, **kw: Any) -> Any:
        """Log ``event`` at DEBUG."""
        return self._emit(logging.DEBUG, "debug", event, kw)

    def info(self, event: str, **kw: Any) -> Any:
        """Log ``event`` at INFO."""
        return self._emit(logging.INFO, "info", event, kw)

    def warning(self, event: str, **kw: Any) -> Any:
        """Log ``event`` at WARNING."""
        return self._emit(logging.WARNING, "warning", event, kw)

    def error(self, event: str, **kw: Any) -> Any:
        """Log ``event`` at ERROR."""
        return self._emit(logging.ERROR, "error", event, kw)

    def exception(self, event: str, **kw: Any) -> Any:
        """Log ``event`` at ERROR with the exception being handled."""
        kw.setdefault("exc_info", True)
        return self._emit(logging.ERROR, "error", event, kw)

    def critical(self, event: str, **kw: Any) -> Any:
        """Log ``event`` at CRITICAL."""
        return self._emit(logging.CRITICAL, "critical", event, kw)


def _structlog_logger(context: dict[str, Any]) -> Any:
    import structlog

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


def get_logger(**context: Any) -> BoundLog:
    """A logger bound to ``context``, filtered by the stdlib level of ``asyncdicom``.

    Events go through structlog (see :class:`BoundLog`).
    """
    return BoundLog(dict(context))


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
    handler = logging.StreamHandler()
    handler.setFormatter(_CLIFormatter(json=json))
    level = logging.WARNING if verbose <= 0 else logging.INFO if verbose == 1 else logging.DEBUG
    _stdlib_logger.handlers[:] = [handler]
    _stdlib_logger.setLevel(level)
    _stdlib_logger.propagate = False
    _json_mode = json


class _CLIFormatter(logging.Formatter):
    """structlog's :class:`~structlog.stdlib.ProcessorFormatter` for the CLI, built when the
    first record is formatted (a quiet run never imports structlog)."""

    def __init__(self, *, json: bool) -> None:
        super().__init__()
        self._json = json
        self._formatter: logging.Formatter | None = None

    def format(self, record: logging.LogRecord) -> str:
        if self._formatter is None:
            self._formatter = _processor_formatter(json=self._json)
        return self._formatter.format(record)


def _processor_formatter(*, json: bool) -> logging.Formatter:
    import structlog

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
    return structlog.stdlib.ProcessorFormatter(
        processors=processors,
        # records from other code (not through get_logger) get a level and a time too
        foreign_pre_chain=[
            structlog.stdlib.add_log_level,
            structlog.processors.TimeStamper(fmt="iso"),
        ],
    )
