"""The options the apps share, added to their parsers, and the checks of them that run before
an app starts.

TLS
---
:func:`add_scu` gives every SCU the client TLS options (``--tls``, ``--tls-ca``,
``--tls-cert``, ``--tls-key``) and :func:`add_tls_server` gives a server app its own
(``--tls-cert``, ``--tls-key``, ``--tls-ca``).  :func:`check_bind`, which the ``asyncdicom``
command runs on every app's options before the app starts, builds the
:class:`ssl.SSLContext` (``args.ssl_context``), so a certificate and key that do not match
are a usage error too; :func:`asyncdicom.cli.scu.scu_ae` and
:func:`asyncdicom.cli.server.server_tls` put it in the AE's configuration.  Both sides take
``--tls-handshake-timeout`` (``Timeouts.tls_handshake``).

Passwords
---------
An SCU's passcode (``--username``) comes from ``--password`` (visible to other local users in
the process list), ``--password-file`` (the file's first line) or the environment variable
``ASYNCDICOM_PASSWORD`` (:data:`PASSWORD_ENV`), in that order; see
:func:`asyncdicom.cli.scu.scu_user_identity`.
"""

from __future__ import annotations

import argparse
import socket
import ssl
from typing import Any

from ..config import Timeouts
from ..transport import TLSError, client_context, server_context
from .argtypes import (
    MAX_MAX_PDU,
    MIN_MAX_PDU,
    ae_title,
    audit_log_file,
    int_range,
    listen_port,
    lockout_count,
    max_pdu,
    optional_timeout,
    password_file,
    port,
    positive_int,
    quoted,
    receive_rate,
    timeout,
    tls_file,
    users_file,
)

__all__ = [
    "PASSWORD_ENV",
    "SERVER_NETWORK_TIMEOUT",
    "HelpFormatter",
    "add_access_control",
    "add_client_timeouts",
    "add_common",
    "add_listen",
    "add_max_pdu",
    "add_scu",
    "add_server",
    "add_server_timeouts",
    "add_tls_client",
    "add_tls_out",
    "add_tls_server",
    "add_user_identity",
    "check_bind",
    "client_timeouts",
    "server_timeouts",
]

#: the server apps' default network (idle) timeout, seconds
SERVER_NETWORK_TIMEOUT = 300.0


#: the environment variable an SCU app reads its passcode from when ``--username`` is given
#: without ``--password`` or ``--password-file``
PASSWORD_ENV = "ASYNCDICOM_PASSWORD"

#: the defaults of the timeouts the options below leave to the library
_LIBRARY_TIMEOUTS = Timeouts()


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


def add_listen(p: argparse.ArgumentParser, ae_title_default: str) -> None:
    """``--port``, ``--host`` and ``--aet`` of a server app (storescp, qrscp)."""
    p.add_argument(
        "--port",
        type=listen_port,
        required=True,
        metavar="P",
        help="TCP port to listen on, 0..65535 (0: any free port, printed at start)",
    )
    p.add_argument(
        "--host",
        default="0.0.0.0",
        metavar="H",
        help="address to listen on ('::' for every IPv6 interface)",
    )
    p.add_argument(
        "--aet",
        type=ae_title,
        default=ae_title_default,
        metavar="A",
        help="our AE title (any Called AE Title is accepted unless --require-called-aet)",
    )


def add_server(p: argparse.ArgumentParser, ae_title_default: str) -> None:
    """The options every server app has (storescp, qrscp): :func:`add_listen`, the server
    timeouts, ``--max-pdu``, access control and TLS; the app adds its own after them."""
    add_listen(p, ae_title_default)
    add_server_timeouts(p)
    add_max_pdu(p)
    add_access_control(p)
    add_tls_server(p)
    add_workers(p)


def add_workers(p: argparse.ArgumentParser) -> None:
    """``--workers N``: serve with N processes sharing the port (:mod:`asyncdicom.workers`)."""
    p.add_argument(
        "--workers",
        type=int_range(0, 256),
        default=1,
        metavar="N",
        help="serve with N processes, each with its own event loop, sharing the port (0: one "
        "per core); limits, lock-out, audit log and index stay per server; SIGINT/SIGTERM "
        "lets the associations in progress end (10 s at most); a worker that dies stops the "
        "server (exit status 1)",
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
    _add_tls_key(g)
    g.add_argument(
        "--tls-no-hostname-check",
        action="store_true",
        help="accept a peer certificate whatever host name it gives (its chain is still "
        "verified): for certificates that name another host than the address used",
    )
    _add_tls_handshake_timeout(g)
    p.set_defaults(tls_role="client")


def _add_tls_key(group: Any) -> None:
    group.add_argument(
        "--tls-key",
        type=tls_file,
        default=None,
        metavar="F",
        help="the private key of --tls-cert (PEM; default: in the --tls-cert file)",
    )


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
    _add_tls_key(g)
    g.add_argument(
        "--tls-ca",
        type=tls_file,
        default=None,
        metavar="F",
        help="require a client certificate signed by a CA in this PEM file",
    )
    _add_tls_handshake_timeout(g)
    p.set_defaults(tls_role="server")


def add_tls_out(p: argparse.ArgumentParser, opened: str, targets: str) -> None:
    """``--tls-out``, ``--tls-out-to AET`` and ``--tls-no-hostname-check``: TLS on the
    associations a server app opens itself (``opened``: what they are, ``targets``: the
    options that name the AE titles ``--tls-out-to`` may give); use
    :func:`~asyncdicom.cli.server.outgoing_tls` for the AE."""
    out = p.add_mutually_exclusive_group()
    out.add_argument(
        "--tls-out",
        action="store_true",
        help=f"open the associations to {opened} over TLS: their certificates verified "
        "against --tls-ca (default: the system's CAs), --tls-cert/--tls-key as ours",
    )
    out.add_argument(
        "--tls-out-to",
        type=ae_title,
        action="append",
        default=None,
        metavar="AET",
        help=f"as --tls-out, but only for the associations to this AE title, one of {targets} "
        "(repeatable); the others stay plain TCP",
    )
    p.add_argument(
        "--tls-no-hostname-check",
        action="store_true",
        help="with --tls-out/--tls-out-to: accept a destination's certificate whatever host "
        "name it gives (its chain is still verified)",
    )


def _check_tls(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Build ``args.ssl_context`` from the TLS options (a usage error if they do not fit)."""
    role = getattr(args, "tls_role", None)
    args.ssl_context = None
    if role is None:
        return
    cert, key, ca = args.tls_cert, args.tls_key, args.tls_ca
    if key is not None and cert is None:
        parser.error("argument --tls-key: needs --tls-cert")
    if cert is not None:
        problem = _no_private_key(cert, key)
        if problem is not None:
            parser.error(problem)
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


def _no_private_key(cert: str, key: str | None) -> str | None:
    """The usage error for a ``--tls-cert`` (without ``--tls-key``) or a ``--tls-key`` whose
    PEM file holds no private key, or None (the files were read once already, by
    :func:`~.argtypes.tls_file`)."""
    source = cert if key is None else key
    try:
        with open(source, "rb") as f:
            text = f.read()
    except OSError:
        return None  # gone since: the TLS library says why
    if b"PRIVATE KEY-----" in text:
        return None
    if key is None:
        return f"argument --tls-cert: no private key in {source}; give --tls-key"
    return f"argument --tls-key: no private key in {source}"


def _check_access_control(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """A usage error for an option of :func:`add_access_control` that needs ``--users``
    given without it (it would be ignored)."""
    if not hasattr(args, "require_passcode") or args.users is not None:
        return
    if args.require_passcode:
        parser.error("argument --require-passcode: needs --users")
    given: set[str] = getattr(args, "given", set())
    for dest in ("lockout_after", "lockout_time"):
        if dest in given:
            parser.error(f"argument --{dest.replace('_', '-')}: needs --users")


def _check_identity(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """A usage error for a passcode option without ``--username`` (in the apps that send a
    User Identity; ``asyncdicom users`` has a --password of its own)."""
    if not hasattr(args, "username") or args.username is not None:
        return
    if getattr(args, "password", None) is not None:
        parser.error("argument --password: needs --username")
    if getattr(args, "password_from_file", None) is not None:
        parser.error("argument --password-file: needs --username")


class _Given(argparse._StoreAction):
    """Store the value and note in ``args.given`` that the option was on the command line
    (for options that mean something only together with another)."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        super().__call__(parser, namespace, values, option_string)
        given: set[str] = getattr(namespace, "given", set())
        given.add(self.dest)
        namespace.given = given


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
        action=_Given,
        default=5,
        metavar="N",
        help="with --users: after N failed identity checks within 60 s for one user name or "
        "from one address, refuse that user or address for --lockout-time seconds without "
        "checking (same rejection as a wrong passcode; 0: no lock-out)",
    )
    g.add_argument(
        "--lockout-time",
        type=timeout,
        action=_Given,
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


def check_bind(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """A usage error (exit 2) unless ``--bind`` names an address of this machine.

    Checked before anything is sent, so that a bad local address is never reported as if the
    peer were unreachable.  The TLS options are checked here too, and their
    :class:`ssl.SSLContext` built (``args.ssl_context``, None without TLS), and a passcode
    option given without ``--username``, or an option of :func:`add_access_control` that needs
    ``--users`` without it, is refused.
    """
    _check_tls(parser, args)
    _check_identity(parser, args)
    _check_access_control(parser, args)
    bind = getattr(args, "bind", None)
    if not bind:
        return
    try:
        infos = socket.getaddrinfo(bind, 0, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        parser.error(f"argument --bind: cannot resolve the local address {quoted(bind)}: {reason}")
    problem = "no address"
    for family, kind, proto, _name, address in infos:
        try:
            with socket.socket(family, kind, proto) as sock:
                sock.bind(address)
        except OSError as exc:
            problem = exc.strerror or str(exc)
            continue
        return
    parser.error(f"argument --bind: cannot use the local address {quoted(bind)}: {problem}")
