"""A lean byte stream for the asyncio backend, with anyio's ``ByteStream`` interface.

anyio's own asyncio socket stream pauses the transport after every read and resumes it before
the next one (two ``epoll_ctl`` system calls per received message) and adds a trip through the
event loop to most calls.  For DIMSE's many small request/response exchanges that overhead is
a third of a C-ECHO's cost, so on asyncio the transport layer uses this protocol-based stream
instead (on trio, anyio's stream is already lean).

Semantics kept from anyio: ``receive`` raises ``EndOfStream`` after the peer's FIN,
``BrokenResourceError`` after a connection error, ``ClosedResourceError`` after our own
``aclose``; ``send`` waits while the transport's write buffer is above its high-water mark.
Reading is paused only while more than ``_HIGH_WATER`` bytes wait unread (back-pressure).
A receive that finds data already buffered yields to the event loop every ``_FAIRNESS``
consecutive calls, so one busy connection cannot starve the others.

Any asyncio event loop works: the transports of third-party loops implement asyncio's
``Transport`` interface without inheriting from ``asyncio.Transport`` (uvloop's are Cython
classes derived from ``object``), so the transport a loop hands us is used by its interface,
never checked with ``isinstance``.
"""

from __future__ import annotations

import asyncio
import socket
from collections import deque
from collections.abc import Callable, Coroutine, Mapping
from typing import Any, Protocol, cast

import anyio
from anyio.abc import ByteStream, SocketAttribute, TaskGroup
from anyio.streams.stapled import MultiListener

from ._accept import AcceptErrors
from ._readsize import ReadSizer

__all__ = ["AsyncioListener", "AsyncioStream", "connect", "listen"]

_HIGH_WATER = 4 * 1024 * 1024
_LOW_WATER = 1024 * 1024
_FAIRNESS = 16
#: connections accepted in a row before the accept loop lets the others run
_ACCEPT_BATCH = 32
#: seconds a closed connection may take to send what is left before it is dropped
_CLOSE_GRACE = 10.0


class _ReadSized(Protocol):
    """asyncio's selector transport: it reads ``max_size`` bytes at a time."""

    max_size: int


#: what a waiter of ``receive_before`` is given when its deadline passes
_EXPIRED: Any = object()


class _Protocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.chunks: deque[bytes] = deque()
        self.buffered = 0
        self.reading_paused = False
        self.eof = False
        self.error: BaseException | None = None
        self.lost = False
        self.waiter: asyncio.Future[Any] | None = None
        self.drain_waiter: asyncio.Future[None] | None = None
        self.writing_paused = False
        self.sizer = ReadSizer()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A cast, not an isinstance check: see the module docstring (uvloop).
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        # asyncio's selector transport reads ``max_size`` bytes at a time (see _readsize)
        sizer = self.sizer
        size = sizer.size
        if sizer.update(len(data)) != size and hasattr(self.transport, "max_size"):
            cast(_ReadSized, self.transport).max_size = sizer.size  # (not on uvloop)
        self.chunks.append(data)
        self.buffered += len(data)
        if self.buffered > _HIGH_WATER and not self.reading_paused and self.transport:
            self.transport.pause_reading()
            self.reading_paused = True
        self._wake()

    def eof_received(self) -> bool:
        self.eof = True
        self._wake()
        return True  # keep the transport open for writing; we close it ourselves

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if exc is not None:
            self.error = exc
        self.eof = True
        self._wake()
        waiter, self.drain_waiter = self.drain_waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def wake_writer(self) -> None:
        waiter, self.drain_waiter = self.drain_waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def pause_writing(self) -> None:
        self.writing_paused = True

    def resume_writing(self) -> None:
        self.writing_paused = False
        waiter, self.drain_waiter = self.drain_waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _wake(self) -> None:
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


class AsyncioStream(ByteStream):
    """A TCP connection on asyncio (see the module docstring)."""

    def __init__(self, transport: asyncio.Transport, protocol: _Protocol) -> None:
        self._transport = transport
        self._protocol = protocol
        self._closed = False
        self._immediate = 0
        #: the loop, looked up once (``get_running_loop`` costs a ``getpid`` system call on
        #: Python 3.11)
        self._loop = asyncio.get_running_loop()
        #: the timer of ``receive_before`` and when it fires; it stays armed from one wait to
        #: the next while their deadlines are no earlier (see receive_before)
        self._timer: asyncio.TimerHandle | None = None
        self._timer_when = 0.0

    async def receive(self, max_bytes: int = 65536) -> bytes:
        p = self._protocol
        if self._closed:
            raise anyio.ClosedResourceError
        if p.chunks:
            self._immediate += 1
            if self._immediate >= _FAIRNESS:
                self._immediate = 0
                await asyncio.sleep(0)
        else:
            self._immediate = 0
            while not p.chunks:
                if self._closed:
                    raise anyio.ClosedResourceError
                if p.error is not None:
                    raise anyio.BrokenResourceError from p.error
                if p.eof:
                    raise anyio.EndOfStream
                p.waiter = self._loop.create_future()
                try:
                    await p.waiter
                finally:
                    p.waiter = None
        return self._take(max_bytes)

    async def receive_before(self, deadline: float, max_bytes: int = 65536) -> bytes | None:
        """:meth:`receive`, or ``None`` if nothing has come when the loop's clock reaches
        ``deadline`` (or :meth:`expire` is called first).  What a cancel scope with that
        deadline around :meth:`receive` does, at a lower cost: no timer at all when data is
        here already, and one timer kept across waits while their deadlines move later (the
        usual case: a network timeout that restarts with every read, a receive deadline that
        progress extends).  Such a timer fires early, before the deadline of the wait it
        ends: ``None`` then means "look at the clock", which the caller does anyway."""
        p = self._protocol
        if self._closed:
            raise anyio.ClosedResourceError
        if p.chunks:
            self._immediate += 1
            if self._immediate >= _FAIRNESS:
                self._immediate = 0
                await asyncio.sleep(0)
        else:
            self._immediate = 0
            loop = self._loop
            while not p.chunks:
                if self._closed:
                    raise anyio.ClosedResourceError
                if p.error is not None:
                    raise anyio.BrokenResourceError from p.error
                if p.eof:
                    raise anyio.EndOfStream
                if self._timer is None or deadline < self._timer_when:
                    if self._timer is not None:
                        self._timer.cancel()
                    self._timer = loop.call_at(deadline, self._fire)
                    self._timer_when = deadline
                waiter = p.waiter = loop.create_future()
                try:
                    await waiter
                finally:
                    p.waiter = None
                if not p.chunks and waiter.result() is _EXPIRED:
                    return None
        return self._take(max_bytes)

    def expire(self) -> None:
        """Make a :meth:`receive_before` that is waiting return ``None`` now."""
        waiter = self._protocol.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(_EXPIRED)

    def _fire(self) -> None:
        self._timer = None
        self.expire()

    def _drop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _take(self, max_bytes: int) -> bytes:
        p = self._protocol
        chunk = p.chunks.popleft()
        if len(chunk) > max_bytes:
            p.chunks.appendleft(chunk[max_bytes:])
            chunk = chunk[:max_bytes]
        p.buffered -= len(chunk)
        if p.reading_paused and p.buffered < _LOW_WATER:
            p.reading_paused = False
            self._transport.resume_reading()
        return chunk

    async def send(self, item: bytes) -> None:
        p = self._protocol
        if self._closed:
            raise anyio.ClosedResourceError
        if p.lost or self._transport.is_closing():
            # a failed write closes the transport at once but reports its error a moment
            # later (connection_lost is scheduled): say what is known meanwhile
            cause = p.error or ConnectionResetError("the connection was closed")
            raise anyio.BrokenResourceError from cause
        self._transport.write(item)
        while p.writing_paused and not p.lost and not self._closed:
            p.drain_waiter = self._loop.create_future()
            await p.drain_waiter
        if self._closed:
            # closed by another task while this write waited (as trio reports it)
            raise anyio.ClosedResourceError
        if p.lost and p.error is not None:
            raise anyio.BrokenResourceError from p.error

    async def send_eof(self) -> None:
        if not self._transport.is_closing():
            self._transport.write_eof()

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._drop_timer()
        p = self._protocol
        p._wake()
        p.wake_writer()
        transport = self._transport
        transport.close()
        if transport.get_write_buffer_size():
            # close() sends what is buffered first; a peer that never reads would keep the
            # socket open for ever (zero-window probes do not time out): drop it after a grace
            asyncio.get_running_loop().call_later(_CLOSE_GRACE, transport.abort)

    def abort(self) -> None:
        """Close at once, dropping unsent bytes (for a peer that stopped reading); a task
        waiting in :meth:`send` or :meth:`receive` gets ``ClosedResourceError``."""
        self._closed = True
        self._drop_timer()
        p = self._protocol
        p._wake()
        p.wake_writer()
        self._transport.abort()

    @property
    def extra_attributes(self) -> Mapping[Any, Callable[[], Any]]:
        sock: socket.socket = self._transport.get_extra_info("socket")
        return {
            SocketAttribute.raw_socket: lambda: sock,
            SocketAttribute.family: lambda: sock.family,
            SocketAttribute.local_address: lambda: sock.getsockname(),
            SocketAttribute.remote_address: lambda: sock.getpeername(),
            SocketAttribute.local_port: lambda: sock.getsockname()[1],
            SocketAttribute.remote_port: lambda: sock.getpeername()[1],
        }


async def connect(host: str, port: int, *, bind: str | None = None) -> AsyncioStream:
    """Open a TCP connection on the running asyncio loop."""
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_connection(
        _Protocol, host, port, local_addr=(bind, 0) if bind else None
    )
    return AsyncioStream(transport, protocol)


class AsyncioListener:
    """Listening TCP sockets whose connections become :class:`AsyncioStream` handler tasks.

    The sockets come from anyio (one per address family for an empty host); the accept loop
    is ours rather than ``loop.create_server``'s, which, out of file descriptors, logs a
    traceback for every failed attempt and schedules a retry for each: it follows
    :class:`~asyncdicom._accept.AcceptErrors`.
    """

    def __init__(self, listener: MultiListener[Any]) -> None:
        self._listener = listener
        self._sockets: list[socket.socket] = [
            sub.extra(SocketAttribute.raw_socket) for sub in listener.listeners
        ]
        self._scope: anyio.CancelScope | None = None
        self._closed = False

    @property
    def port(self) -> int:
        """The bound TCP port."""
        return int(self._sockets[0].getsockname()[1])

    async def serve(
        self, handler: Callable[[AsyncioStream], Coroutine[Any, Any, None]], task_group: TaskGroup
    ) -> None:
        """Run ``handler(stream)`` in ``task_group`` for every accepted connection, until
        :meth:`aclose` (or cancellation)."""
        with anyio.CancelScope() as scope:
            self._scope = scope
            if self._closed:
                return
            async with anyio.create_task_group() as loops:
                for sock in self._sockets:
                    loops.start_soon(self._accept_loop, sock, handler, task_group)

    async def _accept_loop(
        self,
        sock: socket.socket,
        handler: Callable[[AsyncioStream], Coroutine[Any, Any, None]],
        task_group: TaskGroup,
    ) -> None:
        loop = asyncio.get_running_loop()
        host, port = sock.getsockname()[:2]
        errors = AcceptErrors(f"{host}:{port}")
        taken = 0
        while True:
            try:
                try:
                    # the listening socket is non-blocking: take what waits without a trip
                    # through the selector, wait for readiness only when nothing does
                    conn, _ = sock.accept()
                except (BlockingIOError, InterruptedError):
                    conn, _ = await loop.sock_accept(sock)
                    taken = 0
            except OSError as exc:
                if await errors.failed(exc):
                    continue
                raise
            errors.accepted()
            conn.setblocking(False)
            # the transport is made in the connection's own task: the loop goes on accepting
            task_group.start_soon(_serve_accepted, loop, conn, handler)
            taken += 1
            if taken >= _ACCEPT_BATCH:  # a flood must not starve the connections already in
                taken = 0
                await asyncio.sleep(0)

    async def aclose(self) -> None:
        """Stop listening (open connections are not affected)."""
        self._closed = True
        if self._scope is not None:
            self._scope.cancel()
        await self._listener.aclose()


async def _serve_accepted(
    loop: asyncio.AbstractEventLoop,
    conn: socket.socket,
    handler: Callable[[AsyncioStream], Coroutine[Any, Any, None]],
) -> None:
    try:
        transport, protocol = await loop.connect_accepted_socket(_Protocol, conn)
    except BaseException:
        conn.close()
        raise
    await handler(AsyncioStream(transport, protocol))


async def listen(host: str | None, port: int, *, backlog: int = 1024) -> AsyncioListener:
    """Listen for TCP connections on the running asyncio loop (host ``None``/"": every
    address family)."""
    listener = await anyio.create_tcp_listener(
        local_host=host or None, local_port=port, backlog=backlog
    )
    return AsyncioListener(listener)
