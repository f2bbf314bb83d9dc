"""The argparse ``type=`` callables of the apps' options.

Every app validates its option values with these, so a bad value is a usage error (exit status
2) that names the option, e.g. ``asyncdicom echoscu: error: argument --repeat: must be at least
1, not -3``:

* :func:`port` -- a peer's TCP port, 1..65535; :func:`listen_port` also accepts 0 (any free
  port) for a listening app;
* :func:`positive_int` -- a count of at least 1 (``--repeat``, ``--concurrency``,
  ``--max-associations``); :func:`int_range` builds other bounds;
* :func:`timeout` -- seconds, a finite number greater than 0 (:func:`optional_timeout` also
  takes ``0`` / ``none`` for no limit);
* :func:`max_pdu` -- the largest PDU we accept, :data:`MIN_MAX_PDU`..:data:`MAX_MAX_PDU` bytes;
* :func:`ae_title` -- an AE title (1 to 16 characters of ISO 646 without backslash or control
  characters, not all spaces; leading and trailing spaces are dropped);
* :func:`tls_file` -- a certificate, key or CA file that exists and can be read;
* :func:`receive_rate` -- bytes per second, a number above 0, or ``0`` / ``none`` for off;
* :func:`password_file` -- a file whose first line is a password (the value is the password);
* :func:`users_file`, :func:`lockout_count`, :func:`audit_log_file`, :func:`folder` -- the
  server apps' files and folders.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from ..config import MAX_MAX_PDU_LENGTH, MIN_MAX_PDU_LENGTH

if TYPE_CHECKING:
    from ..users import UserStore

__all__ = [
    "MAX_MAX_PDU",
    "MIN_MAX_PDU",
    "ae_title",
    "audit_log_file",
    "folder",
    "int_range",
    "listen_port",
    "lockout_count",
    "max_pdu",
    "optional_timeout",
    "password_file",
    "port",
    "positive_int",
    "quoted",
    "receive_rate",
    "timeout",
    "tls_file",
    "users_file",
]

#: the range of ``--max-pdu`` (the library buffers one whole PDU, so it offers no "unlimited")
MIN_MAX_PDU = MIN_MAX_PDU_LENGTH
MAX_MAX_PDU = MAX_MAX_PDU_LENGTH


def quoted(text: str) -> str:
    """``text`` in single quotes for a message, as the user typed it (a backslash stays one
    backslash); in Python's escaped form only when it holds a quote or a character that does
    not print."""
    if "'" in text or not text.isprintable():
        return repr(text)
    return f"'{text}'"


def _int(text: str) -> int:
    try:
        return int(text, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {quoted(text)}") from None


def int_range(minimum: int, maximum: int | None = None) -> Callable[[str], int]:
    """An argparse type: a whole number from ``minimum`` to ``maximum`` (no upper bound if None)."""

    def check(text: str) -> int:
        value = _int(text)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, not {value}")
        if maximum is not None and value > maximum:
            raise argparse.ArgumentTypeError(f"must be at most {maximum}, not {value}")
        return value

    check.__name__ = f"int_range({minimum}, {maximum})"
    return check


def port(text: str) -> int:
    """An argparse type: a TCP port to connect to, 1..65535."""
    value = _int(text)
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"a TCP port is 1..65535, not {value}")
    return value


def listen_port(text: str) -> int:
    """An argparse type: a TCP port to listen on, 0..65535 (0: any free port)."""
    value = _int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(
            f"a TCP port is 1..65535 (or 0 for any free port), not {value}"
        )
    return value


def positive_int(text: str) -> int:
    """An argparse type: a whole number of at least 1."""
    return int_range(1)(text)


def timeout(text: str) -> float:
    """An argparse type: a number of seconds greater than 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {quoted(text)}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a number of seconds above 0, not {text}")
    return value


def optional_timeout(text: str) -> float | None:
    """An argparse type: a number of seconds greater than 0, or ``0`` / ``none`` for no
    limit."""
    if text.strip().lower() in ("0", "none"):
        return None
    return timeout(text)


def receive_rate(text: str) -> float | None:
    """An argparse type: a rate in bytes per second above 0, or ``0`` / ``none`` for off."""
    if text.strip().lower() in ("0", "none"):
        return None
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a number of bytes per second: {quoted(text)}"
        ) from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(
            f"must be a number of bytes per second above 0 (or 0 for off), not {text}"
        )
    return value


#: the longest first line read from a --password-file (a User Identity field holds 65535 bytes)
_MAX_PASSWORD_BYTES = 65535


def password_file(text: str) -> str:
    """An argparse type: a file whose first line is a password; returns the password (the line
    without its line ending).  A file that cannot be read, or whose first line is empty or
    not UTF-8, is a usage error."""
    with _readable(text) as f:
        line = f.readline(_MAX_PASSWORD_BYTES + 2)
    line = line.rstrip(b"\r\n")
    if not line:
        raise argparse.ArgumentTypeError(f"the first line of {quoted(text)} is empty")
    if len(line) > _MAX_PASSWORD_BYTES:
        raise argparse.ArgumentTypeError(
            f"the first line of {quoted(text)} is longer than {_MAX_PASSWORD_BYTES} bytes"
        )
    try:
        return line.decode("utf-8")
    except UnicodeDecodeError:
        raise argparse.ArgumentTypeError(f"the first line of {quoted(text)} is not UTF-8") from None


def max_pdu(text: str) -> int:
    """An argparse type: the largest PDU we accept, :data:`MIN_MAX_PDU`..:data:`MAX_MAX_PDU`."""
    value = _int(text)
    if value == 0:
        raise argparse.ArgumentTypeError(
            f"0 (no limit) is not supported: a whole PDU is held in memory, so the limit is "
            f"{MIN_MAX_PDU}..{MAX_MAX_PDU} bytes"
        )
    if not MIN_MAX_PDU <= value <= MAX_MAX_PDU:
        raise argparse.ArgumentTypeError(f"must be {MIN_MAX_PDU}..{MAX_MAX_PDU} bytes, not {value}")
    return value


def tls_file(text: str) -> str:
    """An argparse type: a TLS certificate, key or CA file (PEM) that exists and can be read."""
    _readable(text).close()
    return text


def _readable(text: str) -> BinaryIO:
    """Open a file named on the command line for reading, or raise the usage error saying why
    it cannot be."""
    if not text.strip():
        raise argparse.ArgumentTypeError("the file name is empty")
    try:
        return open(text, "rb")
    except FileNotFoundError:
        raise argparse.ArgumentTypeError(f"{quoted(text)} does not exist") from None
    except IsADirectoryError:
        raise argparse.ArgumentTypeError(f"{quoted(text)} is a folder, not a file") from None
    except OSError as exc:
        raise argparse.ArgumentTypeError(
            f"cannot read {quoted(text)}: {exc.strerror or exc}"
        ) from None


def ae_title(text: str) -> str:
    """An argparse type: an AE title, returned without leading and trailing spaces."""
    if any(not (0x20 <= ord(ch) < 0x7F) or ch == "\\" for ch in text):
        raise argparse.ArgumentTypeError(
            f"{quoted(text)}: an AE title has only ISO 646 (ASCII) characters, "
            "no backslash and no control characters"
        )
    title = text.strip(" ")
    if not title:
        raise argparse.ArgumentTypeError("an AE title must not be empty or all spaces")
    if len(title) > 16:
        raise argparse.ArgumentTypeError(f"{quoted(title)}: an AE title has at most 16 characters")
    return title


def users_file(text: str) -> UserStore:
    """An argparse type: a users file (``asyncdicom users add``), read and checked at once."""
    if not text.strip():
        raise argparse.ArgumentTypeError("the file name is empty")
    from ..users import UsersFileError, UserStore

    try:
        return UserStore.load(text)
    except UsersFileError as exc:
        raise argparse.ArgumentTypeError(f"{text}: {exc}") from None


def lockout_count(text: str) -> int:
    """argparse type of ``--lockout-after``: 0 (off) .. 1000."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {quoted(text)}") from None
    if not 0 <= value <= 1000:
        raise argparse.ArgumentTypeError(f"must be 0..1000, not {value}")
    return value


def audit_log_file(text: str) -> Path:
    """argparse type of ``--audit-log``: a file we can append to (created if missing)."""
    from ..audit import AuditLog, AuditLogError

    path = Path(text)
    try:
        AuditLog.open(path).close()
    except AuditLogError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return path


def folder(text: str) -> Path:
    """An argparse type: a folder path (``--output-dir``, ``--storage``; created and checked at
    start, see :func:`asyncdicom.cli.server.prepare_folder`)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("the folder name is empty")
    return Path(text)
