"""Transport seam: anyio byte streams for TCP (TLS later), with OS errors mapped to ours.

Nothing DICOM-specific lives here.  Every socket gets TCP_NODELAY: DIMSE is request/response
with small messages, and Nagle's algorithm would add tens of milliseconds to each exchange.
"""

from __future__ import annotations

import contextlib
import socket
import sys
from collections.abc import Callable, Coroutine
from typing import Any, Protocol

import anyio
import sniffio
from anyio.abc import ByteStream, SocketAttribute, TaskGroup
from anyio.streams.stapled import MultiListener

if sys.version_info < (3, 11):  # pragma: no cover
    from exceptiongroup import BaseExceptionGroup

from . import _asyncio_stream
from .errors import ConnectTimeout, DICOMError, TransportError

__all__ = ["Listener", "close_quietly", "connect", "listen", "peer_address", "set_nodelay"]


def set_nodelay(stream: ByteStream) -> None:
    """Disable Nagle's algorithm on a TCP stream (no-op for non-socket streams)."""
    sock: Any = stream.extra(SocketAttribute.raw_socket, None)
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def peer_address(stream: ByteStream) -> tuple[str, int]:
    """(host, port) of the remote end, or ("?", 0) when unknown."""
    addr: Any = stream.extra(SocketAttribute.remote_address, None)
    if isinstance(addr, tuple) and len(addr) >= 2:
        return str(addr[0]), int(addr[1])
    return "?", 0


async def connect(
    host: str, port: int, *, bind: str | None = None, timeout: float | None = None
) -> ByteStream:
    """Open a TCP connection (IPv4 or IPv6) with TCP_NODELAY set.

    On asyncio the stream is :class:`asyncdicom._asyncio_stream.AsyncioStream` (leaner than
    anyio's for small request/response exchanges); on trio it is anyio's.
    Raises :class:`ConnectTimeout` or :class:`TransportError`.
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
    return stream


def os_error_behind(exc: BaseException) -> OSError | None:
    """The OSError behind ``exc`` that carries an error number (searched breadth-first through
    causes, contexts and exception groups), else the first OSError found, else None."""
    fallback: OSError | None = None
    seen: set[int] = set()
    todo: list[BaseException] = [exc]
    while todo:
        current = todo.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, OSError) and not isinstance(current, DICOMError):
            if current.errno is not None:
                return current
            fallback = fallback or current
        if isinstance(current, BaseExceptionGroup):
            todo.extend(current.exceptions)
        todo.extend(e for e in (current.__cause__, current.__context__) if e is not None)
    return fallback


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
        await self._listener.serve(handler, task_group=task_group)

    async def aclose(self) -> None:
        await self._listener.aclose()


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


async def close_quietly(stream: ByteStream) -> None:
    """Close a stream, ignoring errors of an already broken connection."""
    with anyio.CancelScope(shield=True):
        with contextlib.suppress(OSError, anyio.BrokenResourceError, anyio.ClosedResourceError):
            await stream.aclose()
