"""``AsyncioStream.receive_before``: a receive bounded by a deadline without a cancel scope.

The association's reader waits with the core's deadline this way on asyncio (the stream exists
only there: on trio the reader keeps a cancel scope, so these tests run on asyncio alone).
Real TCP over 127.0.0.1; the peer is a plain socket.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

import anyio
import anyio.lowlevel
import pytest

from asyncdicom._asyncio_stream import AsyncioStream, connect

pytestmark = pytest.mark.anyio

GUARD = 10.0


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # the stream under test is asyncio's


@pytest.fixture
async def pair() -> AsyncIterator[tuple[AsyncioStream, socket.socket]]:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        stream = await connect("127.0.0.1", listener.getsockname()[1])
        peer, _ = listener.accept()  # already connected: returns at once
        with peer:
            try:
                yield stream, peer
            finally:
                await stream.aclose()


async def _until_waiting(stream: AsyncioStream) -> None:
    """Return once the stream's reader waits for data (checked on the loop's own turns)."""
    while stream._protocol.waiter is None:
        await anyio.lowlevel.checkpoint()


async def _until_buffered(stream: AsyncioStream) -> None:
    while not stream._protocol.chunks:
        await anyio.lowlevel.checkpoint()


async def test_buffered_data_is_returned_even_past_the_deadline(
    pair: tuple[AsyncioStream, socket.socket],
) -> None:
    stream, peer = pair
    peer.sendall(b"abc")
    with anyio.fail_after(GUARD):
        await _until_buffered(stream)
        past = asyncio.get_running_loop().time() - 1.0
        assert await stream.receive_before(past, 65536) == b"abc"


async def test_nothing_received_returns_none_at_the_deadline(
    pair: tuple[AsyncioStream, socket.socket],
) -> None:
    stream, _peer = pair
    loop = asyncio.get_running_loop()
    with anyio.fail_after(GUARD):
        deadline = loop.time() + 0.05
        assert await stream.receive_before(deadline, 65536) is None
        assert loop.time() >= deadline
        assert stream._protocol.waiter is None


async def test_data_arriving_before_the_deadline_is_returned(
    pair: tuple[AsyncioStream, socket.socket],
) -> None:
    stream, peer = pair
    got: list[bytes | None] = []

    async def read() -> None:
        got.append(await stream.receive_before(asyncio.get_running_loop().time() + GUARD, 4))

    with anyio.fail_after(GUARD):
        async with anyio.create_task_group() as tg:
            tg.start_soon(read)
            await _until_waiting(stream)
            peer.sendall(b"abcdef")
    assert got == [b"abcd"]  # at most max_bytes; the rest stays for the next receive
    with anyio.fail_after(GUARD):
        assert await stream.receive() == b"ef"


async def test_expire_wakes_a_waiting_receive(pair: tuple[AsyncioStream, socket.socket]) -> None:
    stream, peer = pair
    got: list[bytes | None] = [b"not yet"]

    async def read() -> None:
        got[0] = await stream.receive_before(asyncio.get_running_loop().time() + 3600, 65536)

    with anyio.fail_after(GUARD):
        async with anyio.create_task_group() as tg:
            tg.start_soon(read)
            await _until_waiting(stream)
            stream.expire()
    assert got == [None]
    stream.expire()  # nobody waits: nothing happens
    peer.sendall(b"x")
    with anyio.fail_after(GUARD):
        assert await stream.receive_before(asyncio.get_running_loop().time() + GUARD) == b"x"


async def test_end_of_stream_and_close(pair: tuple[AsyncioStream, socket.socket]) -> None:
    stream, peer = pair
    peer.shutdown(socket.SHUT_WR)
    with anyio.fail_after(GUARD):
        with pytest.raises(anyio.EndOfStream):
            await stream.receive_before(asyncio.get_running_loop().time() + GUARD)
        await stream.aclose()
        with pytest.raises(anyio.ClosedResourceError):
            await stream.receive_before(asyncio.get_running_loop().time() + GUARD)


async def test_close_wakes_a_waiting_receive(pair: tuple[AsyncioStream, socket.socket]) -> None:
    stream, _peer = pair
    raised: list[type[BaseException]] = []

    async def read() -> None:
        try:
            await stream.receive_before(asyncio.get_running_loop().time() + 3600)
        except anyio.ClosedResourceError as exc:
            raised.append(type(exc))

    with anyio.fail_after(GUARD):
        async with anyio.create_task_group() as tg:
            tg.start_soon(read)
            await _until_waiting(stream)
            await stream.aclose()
    assert raised == [anyio.ClosedResourceError]


async def test_the_timer_is_kept_across_waits_and_moved_only_earlier(
    pair: tuple[AsyncioStream, socket.socket],
) -> None:
    # one timer serves successive waits whose deadlines move later (a network timeout that
    # restarts with every read): it then ends a later wait early, with None ("look at the
    # clock"); a wait with an earlier deadline moves it
    stream, peer = pair
    loop = asyncio.get_running_loop()

    async def wait_then_feed(deadline: float, data: bytes) -> bytes | None:
        got: list[bytes | None] = []

        async def read() -> None:
            got.append(await stream.receive_before(deadline, 65536))

        async with anyio.create_task_group() as tg:
            tg.start_soon(read)
            await _until_waiting(stream)
            peer.sendall(data)
        return got[0]

    with anyio.fail_after(GUARD):
        first = loop.time() + 0.2
        assert await wait_then_feed(first, b"a") == b"a"
        timer = stream._timer
        assert timer is not None
        assert await wait_then_feed(first + 3600, b"b") == b"b"
        assert stream._timer is timer  # a later deadline: the same timer
        assert await stream.receive_before(first + 3600) is None  # ended early, by design
        assert loop.time() >= first
        late = loop.time() + 3600
        assert await wait_then_feed(late, b"c") == b"c"
        soon = loop.time() + 0.05
        assert await stream.receive_before(soon) is None  # the earlier deadline moved it
        assert loop.time() >= soon
