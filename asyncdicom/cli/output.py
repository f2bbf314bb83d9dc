"""What the apps tell the user: error, warning and notice lines, addresses, UIDs, and the one
line describing an error that ended an app.

Errors are one line on standard error (``asyncdicom: error: TEXT``), warnings likewise
(``asyncdicom: warning: TEXT``); with ``--log-json`` each is a JSON object instead.  An app
ends with :class:`CLIError` (exit status 1) or :class:`UsageError` (exit status 2) to have
``asyncdicom`` print its message that way.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
from datetime import datetime, timezone
from typing import Any

from .._accept import os_error_behind
from ..errors import AssociationError, ConnectTimeout, DICOMError, TransportError
from ..log import get_logger, json_logging
from ..protocol.status import StatusCategory, category
from ..transport import TLSError

__all__ = [
    "CLIError",
    "UsageError",
    "describe_error",
    "err",
    "format_address",
    "notice",
    "ok",
    "plural",
    "uid_name",
    "warn",
]


class CLIError(Exception):
    """A failure to report as one line and exit status 1."""


def format_address(host: str, port: int) -> str:
    """``HOST:PORT`` for a message, with an IPv6 address in brackets: ``[::1]:11112``."""
    if ":" in host and not host.startswith("["):
        return f"[{host}]:{port}"
    return f"{host}:{port}"


def ok(status: int) -> bool:
    """Whether a DIMSE status is Success or Warning."""
    return category(status) in (StatusCategory.SUCCESS, StatusCategory.WARNING)


def err(text: str) -> None:
    """Report one error: the line ``asyncdicom: error: TEXT`` on stderr, or with
    ``--log-json`` a JSON object ``{"event": "cli_error", "message": TEXT, ...}``."""
    if json_logging():
        get_logger().error("cli_error", message=text)
    else:
        print(f"asyncdicom: error: {text}", file=sys.stderr, flush=True)


#: in a worker process of a server app run with ``--workers``: its number (its notices say it)
worker_id: int | None = None


def notice(text: str, event: str, **fields: Any) -> None:
    """Tell the user something on stderr that is not an error (e.g. storescp's "listening on"
    line): ``TEXT`` as is, or with ``--log-json`` a JSON object like a log event's (``event``,
    ``level`` "info", ``message``, ``fields``, ``timestamp``).  It is shown whatever the log
    level.  In a worker process (:data:`worker_id`) the line ends with ``[worker N]`` (the
    JSON object has ``worker``)."""
    if worker_id is not None:
        text = f"{text} [worker {worker_id}]"
        fields = {**fields, "worker": worker_id}
    if json_logging():
        when = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        record = {"event": event, "level": "info", "message": text, **fields, "timestamp": when}
        print(json.dumps(record, default=str), file=sys.stderr, flush=True)
    else:
        print(text, file=sys.stderr, flush=True)


def describe_error(exc: BaseException, args: argparse.Namespace | None = None) -> str:
    """One line for an error that ended an app, in the user's terms.

    ``args`` (the parsed options) lets the line name the peer (``HOST:PORT``) and the local
    ``--bind`` address.
    """
    host = getattr(args, "host", None)
    peer_port = getattr(args, "port", None)
    bind = getattr(args, "bind", None)
    where = format_address(host, peer_port) if host and peer_port else None
    if isinstance(exc, TLSError):
        return str(exc)
    if isinstance(exc, ConnectTimeout):
        limit = getattr(args, "connect_timeout", None)
        if where and limit is not None:
            return f"no TCP connection to {where} within {limit:g} s (--connect-timeout)"
        return str(exc)
    if isinstance(exc, TransportError) and not isinstance(exc, AssociationError):
        cause = os_error_behind(exc)
        if cause is not None:
            text = _describe_os_error(cause, host, where, bind)
            if text is not None:
                return text
    if isinstance(exc, OSError) and not isinstance(exc, DICOMError):
        text = _describe_os_error(exc, host, where, bind)
        if text is not None:
            return text
    return str(exc) or type(exc).__name__


def _describe_os_error(
    exc: OSError, host: str | None, where: str | None, bind: str | None
) -> str | None:
    reason = exc.strerror or str(exc)
    if isinstance(exc, ConnectionRefusedError):
        return f"connection refused by {where}" if where else f"connection refused ({reason})"
    if isinstance(exc, socket.gaierror):
        # --bind was resolved at start (see check_bind), so a name that fails now is the peer's
        return f"cannot resolve the peer host {host!r}: {reason}"
    if bind and where:
        return f"cannot connect to {where} from the local address {bind!r} (--bind): {reason}"
    if where:
        return f"cannot connect to {where}: {reason}"
    return None


class UsageError(CLIError):
    """A command-line error found once the app runs (options that do not fit together, an
    output folder that cannot be written): one line and exit status 2."""


def warn(text: str) -> None:
    """One warning: the line ``asyncdicom: warning: TEXT`` on stderr, or with ``--log-json``
    a JSON object ``{"event": "cli_warning", "message": TEXT, ...}``."""
    if json_logging():
        get_logger().warning("cli_warning", message=text)
    else:
        print(f"asyncdicom: warning: {text}", file=sys.stderr, flush=True)


def plural(n: int, word: str) -> str:
    """``1 file``, ``2 files``."""
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def uid_name(uid: str, *, show_uid: bool = True) -> str:
    """A UID as the apps name it in messages: ``CT Image Storage (1.2.840.10008.5.1.4.1.1.2)``
    for a UID of the standard (pydicom's name), the bare UID for any other; with
    ``show_uid=False`` the name alone (the UID when it has none)."""
    from pydicom.uid import UID

    name = str(UID(uid).name)
    if not name or name == uid:
        return uid
    return f"{name} ({uid})" if show_uid else name
