"""What the server apps (storescp, qrscp) and a listening SCU (stgcmtscu) share: the AE's
configuration from the options, the start-up checks, and serving until a signal.

A server app starts with :func:`start_server`, which does, in this order, so that a failure
leaves nothing behind:
:func:`check_listen` (a port that is taken, or an address that is not this machine's, is the
one line ``cannot listen on HOST:PORT: REASON`` before any folder or index is created), then
:func:`prepare_folder` (an output folder that cannot be written is a usage error) and
:func:`remove_stale_files` (temporary files an interrupted run left, removed in a worker
thread), then the app builds its AE and calls :func:`serve_until_signal`.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import signal
import socket
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio

from ..ae import AE, Server
from ..audit import AuditLog
from ..errors import TransportError
from ..storage.writer import remove_stale_temp_files
from ..users import Lockout, UserStore
from . import output
from .argtypes import quoted
from .options import server_timeouts
from .output import CLIError, UsageError, format_address, notice, plural

if TYPE_CHECKING:
    from ..workers import WorkerInfo

__all__ = [
    "access_control",
    "audit_trail",
    "check_listen",
    "install_access_control",
    "listening",
    "outgoing_tls",
    "prepare_folder",
    "remove_stale_files",
    "say_listening",
    "serve_until_signal",
    "serve_workers_until_signal",
    "server_config",
    "server_tls",
    "start_server",
    "worker_args",
    "worker_process_args",
]


def server_config(args: argparse.Namespace) -> dict[str, Any]:
    """The :class:`~asyncdicom.AEConfig` fields of a server app's shared options: ``--max-pdu``,
    the timeouts, access control and TLS."""
    return {
        "max_pdu_length": args.max_pdu,
        "timeouts": server_timeouts(args),
        **access_control(args),
        **server_tls(args),
    }


def server_tls(args: argparse.Namespace) -> dict[str, Any]:
    """The :class:`~asyncdicom.AEConfig` fields of the options of :func:`add_tls_server`
    (the context :func:`check_bind` built)."""
    return {"server_ssl_context": getattr(args, "ssl_context", None)}


def outgoing_tls(args: argparse.Namespace) -> dict[str, Any]:
    """The :class:`~asyncdicom.AEConfig` fields of the options of
    :func:`~asyncdicom.cli.options.add_tls_out`: with ``--tls-out`` one client context for
    every association the app opens, with ``--tls-out-to`` one per AE title named (the
    server's ``--tls-ca`` trusts their certificates, the system's CAs without it;
    ``--tls-cert``/``--tls-key`` are ours), else none."""
    selected = getattr(args, "tls_out_to", None)
    if not (getattr(args, "tls_out", False) or selected):
        return {"client_ssl_context": None, "client_ssl_contexts": {}}
    from ..transport import client_context

    context = client_context(
        ca=args.tls_ca,
        cert=args.tls_cert,
        key=args.tls_key,
        check_hostname=not getattr(args, "tls_no_hostname_check", False),
    )
    if selected:
        return {"client_ssl_context": None, "client_ssl_contexts": dict.fromkeys(selected, context)}
    return {"client_ssl_context": context, "client_ssl_contexts": {}}


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


# --------------------------------------------------------------------------- start-up


def _cannot_listen(host: str, port: int, exc: BaseException) -> CLIError:
    cause = exc.__cause__ if isinstance(exc, TransportError) and exc.__cause__ else exc
    reason = getattr(cause, "strerror", None) or str(cause) or type(cause).__name__
    return CLIError(f"cannot listen on {format_address(host, port)}: {reason}")


def _probe(host: str, port: int) -> None:
    try:
        infos = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except (socket.gaierror, UnicodeError) as exc:
        raise _cannot_listen(host, port, exc) from None
    for family, kind, proto, _name, address in infos:
        try:
            with socket.socket(family, kind, proto) as sock:
                if os.name == "posix":  # as the listener will (a port in TIME_WAIT is free)
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.bind(address)
                sock.listen(1)
        except OSError as exc:
            raise _cannot_listen(host, port, exc) from None


async def check_listen(host: str, port: int) -> None:
    """Raise :class:`CLIError` (``cannot listen on HOST:PORT: REASON``) unless this process can
    listen on ``host:port`` now: a server app checks it before it creates anything."""
    await anyio.to_thread.run_sync(_probe, host, port)


def _prepare(path: Path) -> str | None:
    shown = quoted(str(path))
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        return f"{shown} is not a folder"
    except OSError as exc:
        return f"cannot create the folder {shown}: {exc.strerror or exc}"
    probe = path / f".{uuid.uuid4().hex}.part"  # named like a stale temporary file
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as exc:
        return f"cannot write in the folder {shown}: {exc.strerror or exc}"
    os.close(fd)
    os.unlink(probe)
    return None


async def prepare_folder(path: Path, option: str) -> None:
    """Create the folder ``path`` (the value of ``option``) if needed and check that a file can
    be created in it, or raise the :class:`UsageError` saying what is wrong.  The check writes
    and removes a temporary file, so it finds whatever would refuse the instances
    (permissions, a read-only file system, a file in the way)."""
    problem = await anyio.to_thread.run_sync(_prepare, path)
    if problem is not None:
        raise UsageError(f"argument {option}: {problem}")


async def start_server(
    args: argparse.Namespace, app: str, folder: Path | None, option: str
) -> None:
    """What a server app does before it builds its AE, in this order: :func:`check_listen`
    on ``--host``/``--port``, then with ``folder`` (the value of ``option``)
    :func:`prepare_folder` and :func:`remove_stale_files`."""
    await check_listen(args.host, args.port)
    if folder is not None:
        await prepare_folder(folder, option)
        await remove_stale_files(folder, app)


async def remove_stale_files(folder: Path, app: str) -> None:
    """Remove the temporary files an interrupted run left in ``folder`` (in a worker thread:
    a large folder takes a while) and say how many, if any."""
    removed = await anyio.to_thread.run_sync(remove_stale_temp_files, folder)
    if removed:
        notice(
            f"{app}: removed {plural(removed, 'temporary file')} left in {folder} "
            "by an interrupted run",
            "stale_temp_files_removed",
            count=removed,
            folder=str(folder),
        )


# --------------------------------------------------------------------------- serving


@contextlib.asynccontextmanager
async def listening(
    ae: AE, host: str, port: int, *, ssl_context: Any = None
) -> AsyncIterator[Server]:
    """``ae.server(host, port)``, with a failure to listen raised as :class:`CLIError`
    (``cannot listen on HOST:PORT: REASON``)."""
    entered = False
    try:
        async with ae.server(host, port, ssl_context=ssl_context) as server:
            entered = True
            yield server
    except (TransportError, OSError) as exc:
        if entered:
            raise
        raise _cannot_listen(host, port, exc) from None


def say_listening(app: str, ae: AE, host: str, port: int, detail: str = "", **fields: Any) -> None:
    """``APP: AET listening on HOST:PORT DETAIL`` (event ``listening`` with ``fields``): the
    line a script waits for before it connects."""
    notice(
        f"{app}: {ae.ae_title} listening on {format_address(host, port)}{detail}",
        "listening",
        ae_title=ae.ae_title,
        host=host,
        port=port,
        **fields,
    )


async def serve_until_signal(
    ae: AE, args: argparse.Namespace, app: str, *, detail: str = "", **fields: Any
) -> int:
    """Serve ``ae`` on ``--host``/``--port`` until SIGINT or SIGTERM (with ``--audit-log``,
    writing the audit trail meanwhile); exit status 0.  Once listening it says
    ``APP: AET listening on HOST:PORT DETAIL`` (event ``listening`` with ``fields``)."""
    # the signals are caught before the "listening" line: a SIGTERM sent as soon as it is
    # read stops the app cleanly (exit status 0)
    with (
        audit_trail(ae, args),
        anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals,
    ):
        async with listening(ae, args.host, args.port) as server:
            say_listening(app, ae, args.host, server.port, detail, **fields)
            async for _ in signals:
                break
    return 0


# --------------------------------------------------------------------------- --workers


def worker_args(args: argparse.Namespace) -> argparse.Namespace:
    """A copy of the parsed options that can be sent to a worker process (the TLS context is
    built again there, by :func:`worker_process_args`)."""
    copy = argparse.Namespace(**vars(args))
    copy.ssl_context = None
    return copy


def worker_process_args(args: argparse.Namespace, info: WorkerInfo) -> argparse.Namespace:
    """In a worker process: the options of :func:`worker_args` made whole again (the server's
    TLS context), and the app's notices marked with the worker's number."""
    output.worker_id = info.id
    if getattr(args, "tls_role", None) == "server" and args.tls_cert is not None:
        from ..transport import server_context

        args.ssl_context = server_context(args.tls_cert, args.tls_key, ca=args.tls_ca)
    return args


def _worker_setup(verbose: int, json: bool) -> None:
    """First thing in a worker process: the logging the command line asked for."""
    import warnings

    from ..log import configure_cli_logging

    configure_cli_logging(verbose=verbose, json=json)
    if verbose < 2:
        warnings.filterwarnings("ignore", category=UserWarning, module=r"pydicom\b")


async def serve_workers_until_signal(
    factory: Callable[[WorkerInfo], Any],
    args: argparse.Namespace,
    app: str,
    *,
    detail: str = "",
    **fields: Any,
) -> int:
    """``--workers``: serve ``--host``/``--port`` with worker processes, each running the AE
    ``factory`` builds (:func:`asyncdicom.workers.serve_workers`), until SIGINT or SIGTERM,
    then let them drain; exit status 0.  Once every worker listens it says ``APP: AET
    listening on HOST:PORT DETAIL (N workers)``.  A worker that dies stops the server
    (:class:`~asyncdicom.errors.WorkerDied`: one error line, exit status 1)."""
    from ..workers import default_workers, serve_workers

    count = args.workers or default_workers()
    setup = functools.partial(_worker_setup, args.verbose, args.log_json)
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with anyio.create_task_group() as tg:

            async def serve(*, task_status: Any) -> None:
                await serve_workers(
                    factory,
                    args.host or None,
                    args.port,
                    workers=count,
                    setup=setup,
                    backend=args.backend,
                    task_status=task_status,
                )
                # stopped from a worker (a signal reaches every process of the group)
                tg.cancel_scope.cancel()

            try:
                group = await tg.start(serve)
            except OSError as exc:
                raise _cannot_listen(args.host, args.port, exc) from None
            notice(
                f"{app}: {args.aet} listening on {format_address(args.host, group.port)}{detail} "
                f"({plural(count, 'worker')})",
                "listening",
                ae_title=args.aet,
                host=args.host,
                port=group.port,
                workers=count,
                pids=group.pids,
                **fields,
            )
            async for _ in signals:
                break
            group.close()
    return 0
