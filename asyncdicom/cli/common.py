"""Shared pieces of the command-line apps: option types, options, AE construction, error lines.

Option types
------------
Every app validates its option values with the argparse ``type=`` callables of this module, so
a bad value is a usage error (exit status 2) that names the option, e.g.
``asyncdicom echoscu: error: argument --repeat: must be at least 1, not -3``:

* :func:`port` -- a peer's TCP port, 1..65535; :func:`listen_port` also accepts 0 (any free
  port) for a listening app;
* :func:`positive_int` -- a count of at least 1 (``--repeat``, ``--concurrency``,
  ``--max-associations``); :func:`int_range` builds other bounds;
* :func:`timeout` -- seconds, a finite number greater than 0;
* :func:`max_pdu` -- the largest PDU we accept, :data:`MIN_MAX_PDU`..:data:`MAX_MAX_PDU` bytes;
* :func:`ae_title` -- an AE title (1 to 16 characters of ISO 646 without backslash or control
  characters, not all spaces; leading and trailing spaces are dropped);
* :func:`tls_file` -- a certificate, key or CA file that exists and can be read;
* :func:`receive_rate` -- bytes per second, a number above 0, or ``0`` / ``none`` for off;
* :func:`password_file` -- a file whose first line is a password (the value is the password).

TLS
---
:func:`add_scu` gives every SCU the client TLS options (``--tls``, ``--tls-ca``,
``--tls-cert``, ``--tls-key``) and :func:`add_tls_server` gives a server app its own
(``--tls-cert``, ``--tls-key``, ``--tls-ca``).  :func:`check_bind`, which the ``asyncdicom``
command runs on every app's options before the app starts, builds the
:class:`ssl.SSLContext` (``args.ssl_context``), so a certificate and key that do not match
are a usage error too; :func:`scu_ae` and :func:`server_tls` put it in the AE's configuration.
Both sides take ``--tls-handshake-timeout`` (``Timeouts.tls_handshake``).

Passwords
---------
An SCU's passcode (``--username``) comes from ``--password`` (visible to other local users in
the process list), ``--password-file`` (the file's first line) or the environment variable
``ASYNCDICOM_PASSWORD`` (:data:`PASSWORD_ENV`), in that order; see :func:`scu_user_identity`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import socket
import ssl
import sys
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, BinaryIO

from .._accept import os_error_behind
from ..ae import AE, Timeouts
from ..audit import AuditLog, AuditLogError
from ..config import MAX_MAX_PDU_LENGTH, MIN_MAX_PDU_LENGTH
from ..errors import AssociationError, ConnectTimeout, DICOMError, TransportError
from ..log import get_logger, json_logging
from ..protocol.pdu import UserIdentityRQSubItem
from ..protocol.status import StatusCategory, category
from ..transport import TLSError, client_context, server_context
from ..users import Lockout, UsersFileError, UserStore

__all__ = [
    "MAX_MAX_PDU",
    "MIN_MAX_PDU",
    "PASSWORD_ENV",
    "CLIError",
    "HelpFormatter",
    "access_control",
    "add_access_control",
    "add_common",
    "add_max_pdu",
    "add_scu",
    "add_tls_client",
    "add_tls_server",
    "add_user_identity",
    "ae_title",
    "check_bind",
    "describe_error",
    "err",
    "format_address",
    "install_access_control",
    "int_range",
    "listen_port",
    "max_pdu",
    "notice",
    "ok",
    "password_file",
    "port",
    "positive_int",
    "receive_rate",
    "scu_ae",
    "scu_password",
    "scu_user_identity",
    "server_tls",
    "timeout",
    "tls_file",
    "users_file",
]

#: the range of ``--max-pdu`` (the library buffers one whole PDU, so it offers no "unlimited")
MIN_MAX_PDU = MIN_MAX_PDU_LENGTH
MAX_MAX_PDU = MAX_MAX_PDU_LENGTH


#: the environment variable an SCU app reads its passcode from when ``--username`` is given
#: without ``--password`` or ``--password-file``
PASSWORD_ENV = "ASYNCDICOM_PASSWORD"

#: the defaults of the timeouts the options below leave to the library
_LIBRARY_TIMEOUTS = Timeouts()


class CLIError(Exception):
    """A failure to report as one line and exit status 1."""


# --------------------------------------------------------------------------- option types


def _int(text: str) -> int:
    try:
        return int(text, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None


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
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a number of seconds above 0, not {text}")
    return value


#: the server apps' default network (idle) timeout, seconds
SERVER_NETWORK_TIMEOUT = 300.0


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
        raise argparse.ArgumentTypeError(f"not a number of bytes per second: {text!r}") from None
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
        raise argparse.ArgumentTypeError(f"the first line of {text!r} is empty")
    if len(line) > _MAX_PASSWORD_BYTES:
        raise argparse.ArgumentTypeError(
            f"the first line of {text!r} is longer than {_MAX_PASSWORD_BYTES} bytes"
        )
    try:
        return line.decode("utf-8")
    except UnicodeDecodeError:
        raise argparse.ArgumentTypeError(f"the first line of {text!r} is not UTF-8") from None


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
        raise argparse.ArgumentTypeError(f"{text!r} does not exist") from None
    except IsADirectoryError:
        raise argparse.ArgumentTypeError(f"{text!r} is a folder, not a file") from None
    except OSError as exc:
        raise argparse.ArgumentTypeError(f"cannot read {text!r}: {exc.strerror or exc}") from None


def ae_title(text: str) -> str:
    """An argparse type: an AE title, returned without leading and trailing spaces."""
    if any(not (0x20 <= ord(ch) < 0x7F) or ch == "\\" for ch in text):
        raise argparse.ArgumentTypeError(
            f"{text!r}: an AE title has only ISO 646 (ASCII) characters, "
            "no backslash and no control characters"
        )
    title = text.strip(" ")
    if not title:
        raise argparse.ArgumentTypeError("an AE title must not be empty or all spaces")
    if len(title) > 16:
        raise argparse.ArgumentTypeError(f"{title!r}: an AE title has at most 16 characters")
    return title


# --------------------------------------------------------------------------- help


class HelpFormatter(argparse.HelpFormatter):
    """``--help`` with each option's default appended, e.g. ``(default: 30)``.

    Options whose default says nothing (flags, counters, ``None``) get no suffix; a help text
    that already mentions ``%(default)s`` is left as is.
    """

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help
        if text is None or "%(default)" in text or not action.option_strings:
            return text
        if action.default in (None, False, argparse.SUPPRESS) or action.nargs == 0:
            return text
        return f"{text} (default: %(default)s)"


def format_address(host: str, port: int) -> str:
    """``HOST:PORT`` for a message, with an IPv6 address in brackets: ``[::1]:11112``."""
    if ":" in host and not host.startswith("["):
        return f"[{host}]:{port}"
    return f"{host}:{port}"


# --------------------------------------------------------------------------- options


def add_common(p: argparse.ArgumentParser) -> None:
    """Options every app has: ``-v``, ``--log-json``, ``--backend``."""
    p.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0,
        help="more log output: -v information, -vv debug (every DIMSE message)",
    )
    p.add_argument("--log-json", action="store_true", help="log as JSON lines on stderr")
    p.add_argument(
        "--backend",
        choices=("asyncio", "trio"),
        default="asyncio",
        help="async library to run on",
    )


def add_max_pdu(p: argparse.ArgumentParser) -> None:
    """The ``--max-pdu`` option (largest P-DATA-TF PDU we accept)."""
    p.add_argument(
        "--max-pdu",
        type=max_pdu,
        default=262144,
        metavar="BYTES",
        help=f"largest P-DATA-TF PDU we accept, {MIN_MAX_PDU}..{MAX_MAX_PDU} bytes",
    )


def client_timeouts(args: argparse.Namespace) -> Timeouts:
    """The :class:`~asyncdicom.Timeouts` of :func:`add_client_timeouts`'s options (and the
    TLS handshake timeout of :func:`add_tls_client`)."""
    return Timeouts(
        connect=args.connect_timeout,
        acse=args.acse_timeout,
        dimse=args.dimse_timeout,
        tls_handshake=args.tls_handshake_timeout,
    )


def add_client_timeouts(
    p: argparse.ArgumentParser, connect_help: str = "seconds allowed for the TCP connection"
) -> None:
    """--connect-timeout, --acse-timeout, --dimse-timeout of the apps that connect out."""
    p.add_argument(
        "--connect-timeout",
        type=timeout,
        default=30.0,
        metavar="S",
        help=connect_help,
    )
    p.add_argument(
        "--acse-timeout",
        type=timeout,
        default=30.0,
        metavar="S",
        help="seconds to wait for A-ASSOCIATE-AC/RJ and A-RELEASE-RP",
    )
    p.add_argument(
        "--dimse-timeout",
        type=timeout,
        default=60.0,
        metavar="S",
        help="seconds to wait for each DIMSE response",
    )


def add_server_timeouts(p: argparse.ArgumentParser) -> None:
    """--acse-timeout, --dimse-timeout, --network-timeout of the server apps (storescp, qrscp);
    :func:`server_timeouts` turns them into :class:`~asyncdicom.Timeouts`."""
    p.add_argument(
        "--acse-timeout",
        type=timeout,
        default=30.0,
        metavar="S",
        help="seconds for association set-up and release, also the ARTIM timer",
    )
    p.add_argument(
        "--dimse-timeout",
        type=timeout,
        default=60.0,
        metavar="S",
        help="abort when a message in progress stops arriving for this long (seconds)",
    )
    p.add_argument(
        "--network-timeout",
        type=optional_timeout,
        default=SERVER_NETWORK_TIMEOUT,
        metavar="S",
        help="abort an association silent for this long, so that an idle or stalled peer "
        "cannot hold a slot forever (seconds; 0 or none: no limit)",
    )
    p.add_argument(
        "--write-timeout",
        type=optional_timeout,
        default=_LIBRARY_TIMEOUTS.write,
        metavar="S",
        help="close the connection when sending one PDU takes longer than this, so that a peer "
        "that stops reading, or reads too slowly, cannot hold a slot forever "
        "(seconds; 0 or none: no limit)",
    )
    p.add_argument(
        "--min-receive-rate",
        type=receive_rate,
        default=_LIBRARY_TIMEOUTS.min_receive_rate,
        metavar="BYTES_PER_S",
        help="once a PDU or a message has started arriving it must keep coming at this "
        "average rate or the association is aborted, so that a peer trickling its bytes "
        "cannot hold a slot forever (0: off, only --dimse-timeout bounds each pause)",
    )


def server_timeouts(args: argparse.Namespace) -> Timeouts:
    """The :class:`~asyncdicom.Timeouts` of :func:`add_server_timeouts`'s options (and of
    ``--tls-handshake-timeout``, :func:`add_tls_server`)."""
    return Timeouts(
        acse=args.acse_timeout,
        dimse=args.dimse_timeout,
        network=args.network_timeout,
        artim=args.acse_timeout,
        write=args.write_timeout,
        min_receive_rate=args.min_receive_rate,
        tls_handshake=getattr(args, "tls_handshake_timeout", _LIBRARY_TIMEOUTS.tls_handshake),
    )


def add_user_identity(p: argparse.ArgumentParser) -> None:
    """``--username``, ``--password``/``--password-file`` and ``--identity-response``: the
    User Identity an SCU app (or bench) sends (:func:`scu_user_identity`)."""
    p.add_argument(
        "--username",
        default=None,
        metavar="U",
        help="send a User Identity: this user name, with a passcode from --password, "
        f"--password-file or the environment variable {PASSWORD_ENV} (user name alone "
        "without any of them)",
    )
    secret = p.add_mutually_exclusive_group()
    secret.add_argument(
        "--password",
        default=None,
        metavar="PW",
        help="the passcode of --username; visible to other local users in the process list: "
        f"prefer --password-file or {PASSWORD_ENV}",
    )
    secret.add_argument(
        "--password-file",
        type=password_file,
        dest="password_from_file",
        default=None,
        metavar="FILE",
        help="read the passcode of --username from the first line of FILE",
    )
    p.add_argument(
        "--identity-response",
        action="store_true",
        help="ask the peer for a positive User Identity response",
    )


def add_scu(p: argparse.ArgumentParser) -> None:
    """Peer address and the options shared by the SCUs (echoscu, storescu)."""
    p.add_argument("host", metavar="HOST", help="peer host name or address (IPv4 or IPv6)")
    p.add_argument("port", metavar="PORT", type=port, help="peer TCP port (1..65535)")
    p.add_argument(
        "--aet", type=ae_title, default="ASYNCDICOM", metavar="A", help="our (calling) AE title"
    )
    p.add_argument(
        "--called-aet",
        type=ae_title,
        default="ANY-SCP",
        metavar="C",
        help="the peer's (called) AE title",
    )
    p.add_argument(
        "--bind", default=None, metavar="ADDR", help="local address to connect from (default: any)"
    )
    add_max_pdu(p)
    add_client_timeouts(p)
    add_tls_client(p)
    add_user_identity(p)


def add_tls_client(p: argparse.ArgumentParser) -> None:
    """The TLS options of a requestor (DICOM over TLS, PS3.15 Annex B); part of :func:`add_scu`."""
    g = p.add_argument_group("TLS (DICOM over TLS, PS3.15)")
    g.add_argument(
        "--tls",
        action="store_true",
        help="connect over TLS 1.2 or later, verifying the peer's certificate and name",
    )
    g.add_argument(
        "--tls-ca",
        type=tls_file,
        default=None,
        metavar="F",
        help="PEM file of the CA certificates to trust (default: the system's); implies --tls",
    )
    g.add_argument(
        "--tls-cert",
        type=tls_file,
        default=None,
        metavar="F",
        help="our certificate (PEM), for a peer that requires one; implies --tls",
    )
    g.add_argument(
        "--tls-key",
        type=tls_file,
        default=None,
        metavar="F",
        help="the private key of --tls-cert (PEM; default: in the --tls-cert file)",
    )
    g.add_argument(
        "--tls-no-hostname-check",
        action="store_true",
        help="accept a peer certificate whatever host name it gives (its chain is still "
        "verified): for certificates that name another host than the address used",
    )
    _add_tls_handshake_timeout(g)
    p.set_defaults(tls_role="client")


def _add_tls_handshake_timeout(group: Any) -> None:
    group.add_argument(
        "--tls-handshake-timeout",
        type=timeout,
        default=_LIBRARY_TIMEOUTS.tls_handshake,
        metavar="S",
        help="seconds allowed for each TLS handshake (Timeouts.tls_handshake)",
    )


def add_tls_server(p: argparse.ArgumentParser) -> None:
    """The TLS options of a server app (storescp, qrscp): with ``--tls-cert`` every
    connection must open with a TLS handshake; use :func:`server_tls` for the AE."""
    g = p.add_argument_group("TLS (DICOM over TLS, PS3.15)")
    g.add_argument(
        "--tls-cert",
        type=tls_file,
        default=None,
        metavar="F",
        help="accept only TLS 1.2 or later, with this certificate (PEM)",
    )
    g.add_argument(
        "--tls-key",
        type=tls_file,
        default=None,
        metavar="F",
        help="the private key of --tls-cert (PEM; default: in the --tls-cert file)",
    )
    g.add_argument(
        "--tls-ca",
        type=tls_file,
        default=None,
        metavar="F",
        help="require a client certificate signed by a CA in this PEM file",
    )
    _add_tls_handshake_timeout(g)
    p.set_defaults(tls_role="server")


def server_tls(args: argparse.Namespace) -> dict[str, Any]:
    """The :class:`~asyncdicom.AEConfig` fields of the options of :func:`add_tls_server`
    (the context :func:`check_bind` built)."""
    return {"server_ssl_context": getattr(args, "ssl_context", None)}


def _check_tls(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Build ``args.ssl_context`` from the TLS options (a usage error if they do not fit)."""
    role = getattr(args, "tls_role", None)
    args.ssl_context = None
    if role is None:
        return
    cert, key, ca = args.tls_cert, args.tls_key, args.tls_ca
    if key is not None and cert is None:
        parser.error("argument --tls-key: needs --tls-cert")
    context: ssl.SSLContext | None = None
    try:
        if role == "server":
            if ca is not None and cert is None:
                parser.error("argument --tls-ca: needs --tls-cert (our own certificate)")
            if cert is not None:
                context = server_context(cert, key, ca=ca)
        elif args.tls or cert is not None or ca is not None or args.tls_no_hostname_check:
            args.tls = True
            context = client_context(
                ca=ca, cert=cert, key=key, check_hostname=not args.tls_no_hostname_check
            )
    except TLSError as exc:
        parser.error(f"TLS options: {exc}")
    args.ssl_context = context


def _check_identity(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """A usage error for a passcode option without ``--username`` (in the apps that send a
    User Identity; ``asyncdicom users`` has a --password of its own)."""
    if not hasattr(args, "username") or args.username is not None:
        return
    if getattr(args, "password", None) is not None:
        parser.error("argument --password: needs --username")
    if getattr(args, "password_from_file", None) is not None:
        parser.error("argument --password-file: needs --username")


def scu_password(args: argparse.Namespace) -> str | None:
    """The passcode of ``--username``: ``--password``, else the first line of
    ``--password-file``, else the environment variable :data:`PASSWORD_ENV` (an empty value
    counts as unset); None when there is none."""
    password: str | None = getattr(args, "password", None)
    if password is None:
        password = getattr(args, "password_from_file", None)
    if password is None:
        password = os.environ.get(PASSWORD_ENV) or None
    return password


def scu_user_identity(args: argparse.Namespace) -> UserIdentityRQSubItem | None:
    """The User Identity sub-item of the options of :func:`add_scu` (None without
    ``--username``): type 2 (user name and passcode) when :func:`scu_password` finds a
    passcode, else type 1 (user name only)."""
    username = getattr(args, "username", None)
    if username is None:
        return None
    password = scu_password(args)
    return UserIdentityRQSubItem(
        identity_type=1 if password is None else 2,
        positive_response_requested=bool(getattr(args, "identity_response", False)),
        primary_field=username.encode("utf-8"),
        secondary_field=b"" if password is None else password.encode("utf-8"),
    )


def scu_ae(args: argparse.Namespace) -> AE:
    """The AE of an SCU app, from the options of :func:`add_scu`."""
    return AE(
        args.aet,
        max_pdu_length=args.max_pdu,
        timeouts=client_timeouts(args),
        user_identity=scu_user_identity(args),
        client_ssl_context=getattr(args, "ssl_context", None),
    )


# --------------------------------------------------------------------------- server access


def users_file(text: str) -> UserStore:
    """An argparse type: a users file (``asyncdicom users add``), read and checked at once."""
    if not text.strip():
        raise argparse.ArgumentTypeError("the file name is empty")
    try:
        return UserStore.load(text)
    except UsersFileError as exc:
        raise argparse.ArgumentTypeError(f"{text}: {exc}") from None


def add_access_control(p: argparse.ArgumentParser) -> None:
    """Who may associate with a server app, and how many at once (storescp, qrscp)."""
    g = p.add_argument_group("access control")
    g.add_argument(
        "--require-called-aet",
        action="store_true",
        help="reject an A-ASSOCIATE-RQ whose Called AE Title is not --aet "
        "(permanent, called AE title not recognized)",
    )
    g.add_argument(
        "--allow-calling-aet",
        type=ae_title,
        action="append",
        default=None,
        metavar="AET",
        help="accept only this calling AE title (repeatable); others are rejected "
        "(permanent, calling AE title not recognized)",
    )
    g.add_argument(
        "--users",
        type=users_file,
        default=None,
        metavar="FILE",
        help="require a User Identity checked against FILE (written by 'asyncdicom users add')",
    )
    g.add_argument(
        "--require-passcode",
        action="store_true",
        help="with --users: refuse a user name without passcode (identity type 1)",
    )
    g.add_argument(
        "--lockout-after",
        type=lockout_count,
        default=5,
        metavar="N",
        help="with --users: after N failed identity checks within 60 s for one user name or "
        "from one address, refuse that user or address for --lockout-time seconds without "
        "checking (same rejection as a wrong passcode; 0: no lock-out)",
    )
    g.add_argument(
        "--lockout-time",
        type=timeout,
        default=60.0,
        metavar="S",
        help="seconds a lock-out lasts (--lockout-after)",
    )
    g.add_argument(
        "--audit-log",
        type=audit_log_file,
        default=None,
        metavar="FILE",
        help="append one JSON line per association accepted, rejected (with the rule that "
        "refused it), released or aborted, and per failed TLS handshake, to FILE (created "
        "owner-only; passcodes are never written)",
    )
    g.add_argument(
        "--max-associations",
        type=positive_int,
        default=1000,
        metavar="N",
        help="concurrent associations; more are rejected (transient, local limit exceeded)",
    )
    g.add_argument(
        "--max-associations-per-ae",
        type=positive_int,
        default=None,
        metavar="N",
        help="concurrent associations from one calling AE title; more are rejected "
        "(transient, local limit exceeded; default: only --max-associations)",
    )


def access_control(args: argparse.Namespace) -> dict[str, Any]:
    """The :class:`~asyncdicom.AEConfig` fields of the options of :func:`add_access_control`
    (install the users check with :func:`install_access_control`)."""
    allowed = args.allow_calling_aet
    return {
        "require_called_ae_title": args.require_called_aet,
        "allowed_calling_ae_titles": None if allowed is None else frozenset(allowed),
        "require_user_identity": args.users is not None,
        "max_associations": args.max_associations,
        "max_associations_per_calling_ae": args.max_associations_per_ae,
    }


def install_access_control(ae: AE, args: argparse.Namespace) -> None:
    """With ``--users``: check every User Identity against the users file, with the
    lock-out of ``--lockout-after``/``--lockout-time``."""
    store: UserStore | None = args.users
    if store is not None:
        store.allow_username_only = not args.require_passcode
        lockout = None
        if args.lockout_after:
            lockout = Lockout(max_failures=args.lockout_after, duration=args.lockout_time)
        ae.on_user_identity(store.identity_handler(), lockout=lockout)


def lockout_count(text: str) -> int:
    """argparse type of ``--lockout-after``: 0 (off) .. 1000."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if not 0 <= value <= 1000:
        raise argparse.ArgumentTypeError(f"must be 0..1000, not {value}")
    return value


def audit_log_file(text: str) -> Path:
    """argparse type of ``--audit-log``: a file we can append to (created if missing)."""
    path = Path(text)
    try:
        AuditLog.open(path).close()
    except AuditLogError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return path


@contextlib.contextmanager
def audit_trail(ae: AE, args: argparse.Namespace) -> Iterator[None]:
    """With ``--audit-log``: the audit trail of ``ae``'s associations, written while the
    block runs (the file is closed after it)."""
    path: Path | None = getattr(args, "audit_log", None)
    if path is None:
        yield
        return
    with AuditLog.open(path) as audit:
        audit.attach(ae)
        try:
            yield
        finally:
            audit.detach(ae)


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


def notice(text: str, event: str, **fields: Any) -> None:
    """Tell the user something on stderr that is not an error (e.g. storescp's "listening on"
    line): ``TEXT`` as is, or with ``--log-json`` a JSON object like a log event's (``event``,
    ``level`` "info", ``message``, ``fields``, ``timestamp``).  It is shown whatever the log
    level."""
    if json_logging():
        when = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        record = {"event": event, "level": "info", "message": text, **fields, "timestamp": when}
        print(json.dumps(record, default=str), file=sys.stderr, flush=True)
    else:
        print(text, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- error lines


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


def check_bind(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """A usage error (exit 2) unless ``--bind`` names an address of this machine.

    Checked before anything is sent, so that a bad local address is never reported as if the
    peer were unreachable.  The TLS options are checked here too, and their
    :class:`ssl.SSLContext` built (``args.ssl_context``, None without TLS), and a passcode
    option given without ``--username`` is refused.
    """
    _check_tls(parser, args)
    _check_identity(parser, args)
    bind = getattr(args, "bind", None)
    if not bind:
        return
    try:
        infos = socket.getaddrinfo(bind, 0, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        parser.error(f"argument --bind: cannot resolve the local address {bind!r}: {reason}")
    problem = "no address"
    for family, kind, proto, _name, address in infos:
        try:
            with socket.socket(family, kind, proto) as sock:
                sock.bind(address)
        except OSError as exc:
            problem = exc.strerror or str(exc)
            continue
        return
    parser.error(f"argument --bind: cannot use the local address {bind!r}: {problem}")
