"""Helpers for testing code that uses asyncdicom: an association without sockets.

Unit-test a handler in a few lines, on asyncio or trio::

    from asyncdicom import AE
    from asyncdicom.testing import associated

    scp = AE("SCP")

    @scp.on_echo
    async def on_echo(request):
        return 0x0110

    async def test_echo_handler():
        async with associated(scp, contexts=[uids.VERIFICATION]) as assoc:
            assert (await assoc.echo()).status == 0x0110

Both ends run the real protocol stack (PDUs, state machine, negotiation, DIMSE) over an
in-memory byte pipe (:func:`memory_stream_pair`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager

import anyio
from anyio.abc import ByteStream
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from ..ae import AE
from ..protocol import uids
from ..protocol.negotiation import ContextRequest
from ..services import Association

__all__ = ["MemoryByteStream", "associated", "memory_stream_pair"]


class MemoryByteStream(ByteStream):
    """One end of an in-memory, bounded, bidirectional byte pipe (see
    :func:`memory_stream_pair`); a full pipe makes the sender wait, like TCP."""

    def __init__(
        self, send: MemoryObjectSendStream[bytes], receive: MemoryObjectReceiveStream[bytes]
    ) -> None:
        self._send = send
        self._receive = receive
        self._buffer = b""
        self._closed = False
        #: the scope of a receive in progress, cancelled by aclose() (as a socket would)
        self._receiving: anyio.CancelScope | None = None

    async def send(self, item: bytes) -> None:
        try:
            await self._send.send(bytes(item))
        except anyio.ClosedResourceError:
            raise anyio.ClosedResourceError from None
        except anyio.BrokenResourceError:
            raise anyio.BrokenResourceError from None

    async def receive(self, max_bytes: int = 65536) -> bytes:
        if self._closed:
            raise anyio.ClosedResourceError
        if not self._buffer:
            with anyio.CancelScope() as self._receiving:
                try:
                    self._buffer = await self._receive.receive()
                except anyio.EndOfStream:
                    raise anyio.EndOfStream from None
            self._receiving = None
            if self._closed:
                raise anyio.ClosedResourceError
        data, self._buffer = self._buffer[:max_bytes], self._buffer[max_bytes:]
        return data

    async def send_eof(self) -> None:
        self._send.close()

    async def aclose(self) -> None:
        self._closed = True
        self._send.close()
        self._receive.close()
        if self._receiving is not None:
            self._receiving.cancel()


def memory_stream_pair(buffer: int = 64) -> tuple[MemoryByteStream, MemoryByteStream]:
    """Two connected :class:`MemoryByteStream` ends; ``buffer`` writes may be in flight each
    way before a sender waits."""
    a_send, b_receive = anyio.create_memory_object_stream[bytes](buffer)
    b_send, a_receive = anyio.create_memory_object_stream[bytes](buffer)
    return MemoryByteStream(a_send, a_receive), MemoryByteStream(b_send, b_receive)


@asynccontextmanager
async def associated(
    scp: AE,
    scu: AE | None = None,
    *,
    contexts: Iterable[str | ContextRequest | tuple[str, Sequence[str]]] = (uids.VERIFICATION,),
    called_aet: str | None = None,
    async_ops_window: tuple[int, int] | None = None,
) -> AsyncIterator[Association]:
    """An association from ``scu`` (default: a fresh ``AE("TEST-SCU")``) to ``scp`` over an
    in-memory pipe, released when the block ends (aborted if it raises).

    ``scp`` answers with its real handlers, negotiation and configuration; the association
    handed out is the requestor's, with the usual SCU helpers (``echo()``, ``store()``,
    ``invoke()``, ...).
    """
    requestor = scu if scu is not None else AE("TEST-SCU")
    client, server = memory_stream_pair()
    failure: BaseException | None = None
    async with anyio.create_task_group() as tg:
        tg.start_soon(scp.serve_stream, server)
        try:
            async with requestor.associate_over(
                client,
                called_aet=called_aet or scp.ae_title,
                contexts=contexts,
                async_ops_window=async_ops_window,
            ) as assoc:
                yield assoc
        except BaseException as exc:
            failure = exc
        tg.cancel_scope.cancel()
    if failure is not None:
        raise failure
