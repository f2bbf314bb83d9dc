"""Transport seam: anyio byte streams for TCP and TLS, with OS errors mapped to ours.

Nothing DICOM-specific lives here.  Every socket gets TCP_NODELAY: DIMSE is request/response
with small messages, and Nagle's algorithm would add tens of milliseconds to each exchange.

TLS (PS3.15 Annex B) wraps the TCP stream of either backend in anyio's
:class:`~anyio.streams.tls.TLSStream` (:func:`start_tls`).  The handshake has its own timeout
and runs in the connection's own task: an acceptor wraps each accepted stream in the task that
serves it, never in the accept loop, so a peer that connects and never says a word delays
nobody else.  :func:`client_context` and :func:`server_context` build contexts with modern
defaults (TLS 1.2 or later, Python's default cipher suites, certificate verification).
"""

from __future__ import annotations

import contextlib
import os
import socket
import ssl
from collections.abc import Callable, Coroutine
from typing import Any, Protocol

import anyio
import sniffio
from anyio.abc import ByteStream, SocketAttribute, TaskGroup
from anyio.streams.stapled import MultiListener
from anyio.streams.tls import TLSStream

from . import _asyncio_stream
from ._accept import AcceptErrors, os_error_behind
from .errors import ConnectTimeout, TLSError, TransportError

__all__ = [
    "TLS12_CIPHERS",
    "Listener",
    "TLSError",
    "WriteWatchdog",
    "client_context",
    "close_forcefully",
    "close_quietly",
    "connect",
    "describe_loss",
    "listen",
    "peer_address",
    "quickack",
    "server_context",
    "set_nodelay",
    "start_tls",
]


def set_nodelay(stream: ByteStream) -> None:
    """Disable Nagle's algorithm on a TCP stream (no-op for non-socket streams)."""
    sock: Any = stream.extra(SocketAttribute.raw_socket, None)
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


#: Linux's TCP_QUICKACK (absent elsewhere: there, :func:`quickack` returns None)
_TCP_QUICKACK: int | None = getattr(socket, "TCP_QUICKACK", None)


def quickack(stream: ByteStream) -> Callable[[], None] | None:
    """A function that makes the TCP connection under ``stream`` acknowledge what it has
    received at once, or None where that cannot be done (not a TCP socket, not Linux).

    A sender that leaves Nagle's algorithm on (DCMTK's tools without ``TCP_NODELAY=1`` in
    their environment, many modalities) holds back the small last segment of each PDU or
    data set until everything it sent before is acknowledged.  Once a connection has
    answered a request, Linux delays its acknowledgements (up to 40 ms), expecting to
    piggyback them on the next answer, which cannot come before the held-back segment: a
    stall of one delayed-ACK timeout per message.  ``TCP_QUICKACK`` sends the pending
    acknowledgement now and leaves delayed-ACK mode until the connection sends again (the
    option is not sticky), so the reader calls the returned function after each read that
    leaves a PDU or a message incomplete (one ``setsockopt`` per such read).  TLS streams
    are served through the TCP socket beneath them.  Errors (a connection already closed)
    are ignored.
    """
    option = _TCP_QUICKACK
    if option is None:
        return None
    try:
        sock: Any = stream.extra(SocketAttribute.raw_socket, None)
    except OSError:
        return None
    if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return None
    setsockopt = sock.setsockopt
    level = socket.IPPROTO_TCP

    def rearm() -> None:
        try:  # noqa: SIM105 (on the read path: no context manager per call)
            setsockopt(level, option, 1)
        except OSError:
            pass

    return rearm


def peer_address(stream: ByteStream) -> tuple[str, int]:
    """(host, port) of the remote end, or ("?", 0) when unknown."""
    try:
        addr: Any = stream.extra(SocketAttribute.remote_address, None)
    except OSError:  # the socket is already disconnected
        return "?", 0
    if isinstance(addr, tuple) and len(addr) >= 2:
        return str(addr[0]), int(addr[1])
    return "?", 0


async def connect(
    host: str,
    port: int,
    *,
    bind: str | None = None,
    timeout: float | None = None,
    ssl_context: ssl.SSLContext | None = None,
    handshake_timeout: float | None = 10.0,
) -> ByteStream:
    """Open a TCP connection (IPv4 or IPv6) with TCP_NODELAY set, and with ``ssl_context`` a
    TLS session over it (the server's certificate is checked against ``host`` when the
    context's ``check_hostname`` is set).

    On asyncio the stream is :class:`asyncdicom._asyncio_stream.AsyncioStream` (leaner than
    anyio's for small request/response exchanges); on trio it is anyio's.
    Raises :class:`ConnectTimeout`, :class:`TLSError` or :class:`TransportError`.
    """
    try:
        with anyio.fail_after(timeout):
            stream: ByteStream
            if sniffio.current_async_library() == "asyncio":
                stream = await _asyncio_stream.connect(host, port, bind=bind)
            else:
                stream = await anyio.connect_tcp(host, port, local_host=bind)
    except TimeoutError as exc:
        raise ConnectTimeout(f"connecting to {host}:{port} timed out after {timeout} s") from exc
    except OSError as exc:
        # trio reports "All connection attempts failed" around the real errors: name the real one
        cause = os_error_behind(exc) or exc
        if isinstance(cause, ConnectionRefusedError):
            text = "connection refused"
        else:
            text = cause.strerror or str(cause)
        raise TransportError(f"cannot connect to {host}:{port}: {text}") from exc
    set_nodelay(stream)
    if ssl_context is not None:
        where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        stream = await start_tls(
            stream,
            ssl_context,
            server_side=False,
            hostname=host,
            timeout=handshake_timeout,
            peer=where,
        )
    return stream


async def start_tls(
    stream: ByteStream,
    ssl_context: ssl.SSLContext,
    *,
    server_side: bool,
    hostname: str | None = None,
    timeout: float | None = 10.0,
    peer: str | None = None,
) -> ByteStream:
    """Run a TLS handshake over ``stream`` within ``timeout`` seconds; the TLS stream.

    On failure the underlying stream is closed and :class:`TLSError` raised, naming ``peer``
    (default: the remote address) and the reason (certificate not trusted, no client
    certificate, not TLS at all, timeout...).  Closing the TLS stream does not wait for the
    peer's close_notify: DICOM ends an association with A-RELEASE or A-ABORT first.
    """
    if peer is None:
        host, port = peer_address(stream)
        peer = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ssl_context.wrap_bio(
        incoming,
        outgoing,
        server_side=server_side,
        server_hostname=None if server_side else hostname,
    )
    try:
        with anyio.fail_after(timeout):
            await _handshake(stream, tls, incoming, outgoing)
    except TimeoutError as exc:
        await close_quietly(stream)
        raise TLSError(f"TLS handshake with {peer} timed out after {timeout} s") from exc
    except (ssl.SSLError, OSError, anyio.BrokenResourceError, anyio.EndOfStream) as exc:
        await _refuse(stream, outgoing.read(), drain=server_side)
        raise TLSError(f"TLS handshake with {peer} failed: {tls_reason(exc)}") from exc
    return TLSStream(
        transport_stream=stream,
        standard_compatible=False,
        _ssl_object=tls,
        _read_bio=incoming,
        _write_bio=outgoing,
    )


async def _handshake(
    stream: ByteStream, tls: ssl.SSLObject, incoming: ssl.MemoryBIO, outgoing: ssl.MemoryBIO
) -> None:
    """Drive ``tls``'s handshake over ``stream`` (raises ssl.SSLError, EndOfStream...)."""
    while True:
        try:
            tls.do_handshake()
        except ssl.SSLWantReadError:
            pending = outgoing.read()
            if pending:
                await stream.send(pending)
            try:
                incoming.write(await stream.receive())
            except anyio.EndOfStream:
                incoming.write_eof()
        else:
            pending = outgoing.read()
            if pending:
                await stream.send(pending)
            return


async def _refuse(stream: ByteStream, alert: bytes, *, drain: bool) -> None:
    """End a connection whose handshake failed: send the TLS alert that says why, and (an
    acceptor) read what the peer still sends for up to a second before closing, so that
    the peer reads the alert instead of a connection reset."""
    with anyio.move_on_after(1.0), contextlib.suppress(Exception):
        if alert:
            await stream.send(alert)
        if drain:
            await stream.send_eof()
            while True:
                await stream.receive()
    await close_quietly(stream)


def tls_reason(exc: BaseException) -> str:
    """A short reason for a failed TLS handshake, from the error or its causes."""
    current: BaseException | None = exc
    while current is not None:
        if isinstance(current, ssl.SSLCertVerificationError):
            return f"certificate verify failed: {current.verify_message}"
        if isinstance(current, ssl.SSLError) and current.reason:
            return str(current.reason).lower().replace("_", " ")
        if isinstance(current, anyio.EndOfStream):
            return "the peer closed the connection"
        current = current.__cause__ or current.__context__
    return str(exc) or "the connection broke"


def tls_alert(exc: BaseException) -> str | None:
    """The reason of the TLS error (an alert from the peer, say) behind a broken connection,
    or None if TLS had no part in it."""
    current: BaseException | None = exc
    while current is not None:
        if isinstance(current, ssl.SSLError):
            return tls_reason(current)
        current = current.__cause__ or current.__context__
    return None


def _load(
    what: str, paths: dict[str, str | os.PathLike[str] | None], load: Callable[[], None]
) -> None:
    """Run ``load`` (of ``paths``, e.g. {"certificate": ..., "private key": ...}), turning
    a missing, unreadable or invalid file into one clear :class:`TLSError`."""
    for name, path in paths.items():
        if path is None:
            continue
        try:
            with open(path, "rb"):
                pass
        except OSError as exc:
            reason = "does not exist" if isinstance(exc, FileNotFoundError) else "cannot be read"
            detail = "" if isinstance(exc, FileNotFoundError) else f": {exc.strerror or exc}"
            raise TLSError(f"the {name} file {os.fspath(path)!r} {reason}{detail}") from exc
    try:
        load()
    except (ssl.SSLError, OSError, ValueError) as exc:
        reason = tls_reason(exc) if isinstance(exc, ssl.SSLError) else str(exc)
        files = " / ".join(repr(os.fspath(p)) for p in paths.values() if p is not None)
        raise TLSError(f"cannot use the {what} ({files}): {reason}") from exc


#: The TLS 1.2 cipher suites offered and accepted: forward-secret key exchange (ECDHE, DHE)
#: with an AEAD cipher (AES-GCM, ChaCha20-Poly1305), as BCP 195 recommends (PS3.15 B.9);
#: no CBC, RSA key transport, anonymous or null suite.  TLS 1.3's suites are all forward-secret
#: AEAD and are not affected by this list.
TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM:DHE+CHACHA20:!aNULL:!eNULL"


def client_context(
    *,
    ca: str | os.PathLike[str] | None = None,
    cert: str | os.PathLike[str] | None = None,
    key: str | os.PathLike[str] | None = None,
    check_hostname: bool = True,
) -> ssl.SSLContext:
    """A TLS context for a requestor: TLS 1.2 or later (with TLS 1.2, forward-secret AEAD
    suites only, :data:`TLS12_CIPHERS`), the server's certificate verified
    (against ``ca``, a PEM file of trusted certificates, else the system's trust store) and
    its name checked against the host we connect to; ``cert`` (and ``key``, unless the key is
    in ``cert``) is our own certificate for a server that asks for one.

    ``check_hostname=False`` still verifies the certificate chain but accepts any name in it:
    for nodes whose certificates name a host other than the address used to reach them (as
    DCMTK, which checks no name); with a private CA that signs only DICOM nodes it still
    keeps strangers out.  Raises :class:`TLSError` for a file that is missing or unusable."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(TLS12_CIPHERS)
    context.check_hostname = check_hostname
    if ca is not None:
        _load("CA certificates", {"CA": ca}, lambda: context.load_verify_locations(cafile=ca))
    if cert is not None:
        _load(
            "certificate and key",
            {"certificate": cert, "private key": key},
            lambda: context.load_cert_chain(cert, key),
        )
    elif key is not None:
        raise TLSError("a private key needs its certificate")
    return context


def server_context(
    cert: str | os.PathLike[str],
    key: str | os.PathLike[str] | None = None,
    *,
    ca: str | os.PathLike[str] | None = None,
) -> ssl.SSLContext:
    """A TLS context for an acceptor: TLS 1.2 or later (with TLS 1.2, forward-secret AEAD
    suites only, :data:`TLS12_CIPHERS`), our certificate ``cert`` (and its
    private ``key``, unless the key is in ``cert``); with ``ca`` (a PEM file of trusted
    certificates) every client must present a certificate that it signed, else the handshake
    fails.  Raises :class:`TLSError` for a file that is missing or unusable."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(TLS12_CIPHERS)
    _load(
        "certificate and key",
        {"certificate": cert, "private key": key},
        lambda: context.load_cert_chain(cert, key),
    )
    if ca is not None:
        _load("CA certificates", {"CA": ca}, lambda: context.load_verify_locations(cafile=ca))
        context.verify_mode = ssl.CERT_REQUIRED
    return context


class Listener(Protocol):
    """What :func:`listen` returns, whatever the backend."""

    @property
    def port(self) -> int:
        """The bound TCP port (useful after binding port 0)."""

    async def serve(
        self, handler: Callable[[Any], Coroutine[Any, Any, None]], task_group: TaskGroup
    ) -> None:
        """Run ``handler(stream)`` in ``task_group`` for each accepted connection, forever."""

    async def aclose(self) -> None:
        """Stop listening."""


class _AnyioListener:
    def __init__(self, listener: MultiListener[Any]) -> None:
        self._listener = listener

    @property
    def port(self) -> int:
        for sub in self._listener.listeners:
            port: Any = sub.extra(SocketAttribute.local_port, None)
            if port:
                return int(port)
        raise TransportError("listener has no bound port")

    async def serve(
        self, handler: Callable[[Any], Coroutine[Any, Any, None]], task_group: TaskGroup
    ) -> None:
        # anyio's own serve() ends at the first failed accept(): out of file descriptors,
        # the server would be gone. One loop per socket (IPv4 and IPv6), errors per AcceptErrors.
        async with anyio.create_task_group() as loops:
            for sub in self._listener.listeners:
                loops.start_soon(self._accept_loop, sub, handler, task_group)

    @staticmethod
    async def _accept_loop(
        listener: Any, handler: Callable[[Any], Coroutine[Any, Any, None]], task_group: TaskGroup
    ) -> None:
        where = "{}:{}".format(*_local_address(listener))
        errors = AcceptErrors(where)
        while True:
            try:
                stream = await listener.accept()
            except anyio.ClosedResourceError:
                return  # aclose()
            except (OSError, anyio.BrokenResourceError) as exc:
                if await errors.failed(exc):
                    continue
                raise
            errors.accepted()
            task_group.start_soon(handler, stream)

    async def aclose(self) -> None:
        await self._listener.aclose()


def _local_address(listener: Any) -> tuple[str, int]:
    address: Any = listener.extra(SocketAttribute.local_address, ("?", 0))
    return str(address[0]), int(address[1])


async def listen(host: str | None, port: int, *, backlog: int = 1024) -> Listener:
    """Listen on host:port ("0.0.0.0" all IPv4, "::" IPv6, None every family)."""
    try:
        if sniffio.current_async_library() == "asyncio":
            return await _asyncio_stream.listen(host, port, backlog=backlog)
        return _AnyioListener(
            await anyio.create_tcp_listener(
                local_host=host or None, local_port=port, backlog=backlog
            )
        )
    except OSError as exc:
        raise TransportError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc


async def listen_socket(sock: socket.socket) -> Listener:
    """Accept on ``sock``, a TCP socket already bound and listening (one inherited from another
    process, or bound with ``SO_REUSEPORT`` beside others); the listener owns it from now on."""
    from anyio.abc import SocketListener

    try:
        sub = await SocketListener.from_socket(sock)
    except (OSError, ValueError) as exc:
        raise TransportError(f"cannot accept on the socket given: {exc}") from exc
    listener: MultiListener[Any] = MultiListener([sub])
    if sniffio.current_async_library() == "asyncio":
        return _asyncio_stream.AsyncioListener(listener)
    return _AnyioListener(listener)


async def close_forcefully(stream: ByteStream) -> None:
    """Close a connection at once, dropping unsent bytes (the peer stopped reading, so
    nothing more, not even a TLS close_notify, can get through); a task blocked writing to
    it gets ``ClosedResourceError`` or ``BrokenResourceError``."""
    inner: Any = stream
    if isinstance(stream, TLSStream):
        inner = stream.transport_stream
    if isinstance(inner, _asyncio_stream.AsyncioStream):
        inner.abort()
    else:
        with anyio.CancelScope(shield=True):
            with contextlib.suppress(OSError, anyio.BrokenResourceError, anyio.ClosedResourceError):
                await anyio.aclose_forcefully(inner)


async def close_quietly(stream: ByteStream) -> None:
    """Close a stream, ignoring errors of an already broken connection."""
    with anyio.CancelScope(shield=True):
        with contextlib.suppress(OSError, anyio.BrokenResourceError, anyio.ClosedResourceError):
            await stream.aclose()


def describe_loss(exc: BaseException | None) -> str:
    """Why a connection went away, in words: the peer closed it (``None``, end of stream, or a
    reset by the peer), or it broke (the OS error or TLS alert behind ``exc``)."""
    if exc is None or isinstance(exc, anyio.EndOfStream):
        return "the peer closed the connection"
    cause = exc.__cause__ if exc.__cause__ is not None else exc
    if isinstance(cause, ConnectionResetError):
        # A peer that closes while our data is in flight makes its kernel answer with a reset
        # instead of an orderly end: whether we see the end or the reset first is timing.
        # Both mean the peer closed the connection, so both read the same.
        return "the peer closed the connection (reset)"
    text = str(cause) or type(cause).__name__
    return f"the connection to the peer broke ({text})"


class WriteWatchdog:
    """The write timeout of one connection, without a timer per write.

    The writer counts each write in :attr:`serial` and flags it in :attr:`writing`.  While
    writes happen, a task looks every quarter of ``timeout`` at the write in progress; the same
    one seen in progress five times in a row has taken at least ``timeout`` (and less than 1.25
    times it):
    the peer stopped reading, or reads too slowly to take one write in that time.  No A-ABORT
    can get through a full window, so ``on_stall(timeout)`` is called (it records why) and the
    connection is closed at once, which wakes the writer.

    The task ends at the first look that finds no write in progress (the next write starts it
    again), so an idle connection has none: no task, no timer.
    """

    __slots__ = ("_closed", "_on_stall", "_stream", "_timeout", "running", "serial", "writing")

    def __init__(
        self,
        stream: ByteStream,
        timeout: float | None,
        on_stall: Callable[[float], None],
        closed: anyio.Event,
    ) -> None:
        self._stream = stream
        self._timeout = timeout
        self._on_stall = on_stall
        self._closed = closed
        #: writes started so far, and whether one is in progress: the writer sets them (two
        #: attribute stores per write, no call), calling :meth:`start` when not ``running``
        self.serial = 0
        self.writing = False
        self.running = False

    def start(self, task_group: TaskGroup | None) -> None:
        """Start the watching task in ``task_group`` (``None``: do not watch)."""
        timeout = self._timeout
        if self.running or timeout is None or task_group is None or self._closed.is_set():
            return
        self.running = True
        try:
            task_group.start_soon(self._watch, timeout)
        except RuntimeError:  # the task group has ended
            self.running = False

    async def _watch(self, timeout: float) -> None:
        interval = timeout / 4
        seen = -1
        count = 0
        closed = self._closed
        try:
            while True:
                with anyio.move_on_after(interval):
                    await closed.wait()
                if closed.is_set() or not self.writing:
                    return
                if self.serial == seen:
                    count += 1
                    if count >= 4:
                        self._on_stall(timeout)
                        await close_forcefully(self._stream)
                        return
                else:
                    seen = self.serial
                    count = 0
        finally:
            self.running = False
