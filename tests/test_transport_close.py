"""Closing a connection whose peer has stopped reading (both backends, real TCP).

A slow reader fills our socket's send buffer; a task writing to it then blocks.  Closing the
stream must wake that writer (``ClosedResourceError`` or ``BrokenResourceError``) and must
not keep the socket open for ever: ``close_forcefully`` drops it at once, and even a plain
``aclose`` gives up the unsent bytes after a grace period (asyncio would otherwise keep
flushing to a zero window without end).
"""

from __future__ import annotations

import socket
import struct

import anyio
import anyio.lowlevel
import anyio.to_thread
import pytest

from asyncdicom import _asyncio_stream
from asyncdicom.transport import close_forcefully, connect, describe_loss

pytestmark = pytest.mark.anyio

GUARD = 10.0
CHUNK = b"x" * (1 << 20)


async def _fill_until_blocked(stream: anyio.abc.ByteStream, sent: list[int]) -> None:
    """Write 1 MiB chunks until a write blocks (the peer does not read)."""
    try:
        while True:
            await stream.send(CHUNK)
            sent[0] += len(CHUNK)
    except (anyio.ClosedResourceError, anyio.BrokenResourceError, OSError) as exc:
        sent.append(id(exc))  # woken by the close: recorded for the assertion


def _drain(peer: socket.socket) -> int:
    """Read until the connection ends (in a worker thread: the peer is a plain socket)."""
    peer.settimeout(GUARD)
    received = 0
    try:
        while chunk := peer.recv(1 << 20):
            received += len(chunk)
    except ConnectionResetError:
        pass
    return received


@pytest.mark.parametrize("how", ["forcefully", "aclose"])
async def test_close_wakes_a_blocked_writer_and_drops_unsent_bytes(
    how: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_asyncio_stream, "_CLOSE_GRACE", 0.2)
    # the peer is a plain socket that reads nothing until told to: nothing drains our writes
    with socket.create_server(("127.0.0.1", 0)) as listener, anyio.fail_after(GUARD):
        stream = await connect("127.0.0.1", listener.getsockname()[1])
        peer, _ = listener.accept()  # already connected: returns at once
        with peer:
            sent = [0]
            async with anyio.create_task_group() as writers:
                writers.start_soon(_fill_until_blocked, stream, sent)
                # wait until the writer is blocked: its progress stops (checked on the event
                # loop's own turns, no clock)
                last = -1
                while sent[0] != last:
                    last = sent[0]
                    for _ in range(200):
                        await anyio.lowlevel.checkpoint()
                if how == "forcefully":
                    await close_forcefully(stream)
                else:
                    await stream.aclose()
            assert len(sent) == 2, "the blocked writer was not woken by the close"
            # the peer has read nothing so far; past the grace the connection must be gone
            # with bytes still unsent (a flush would have delivered every one)
            await anyio.sleep(0.5)  # pacing: let the grace period pass
            received = await anyio.to_thread.run_sync(_drain, peer)
            total = sent[0] + len(CHUNK)  # the blocked chunk was handed over too
            assert received < total, f"all {total} bytes were delivered: nothing was dropped"


async def test_writing_after_the_peer_closed_says_why(anyio_backend: str) -> None:
    """The peer closed the connection; a write then fails with ``BrokenResourceError`` whose
    cause has words for the user: the asyncio stream raised it with no cause, and the
    association's message read "the connection to the peer broke (BrokenResourceError)"."""
    with socket.create_server(("127.0.0.1", 0)) as listener, anyio.fail_after(GUARD):
        stream = await connect("127.0.0.1", listener.getsockname()[1])
        peer, _ = listener.accept()
        peer.close()
        with pytest.raises(anyio.EndOfStream):
            await stream.receive()
        with pytest.raises(anyio.BrokenResourceError) as broken:
            for _ in range(1000):  # the first writes may still be taken by the kernel
                await stream.send(b"x" * 1024)
        await stream.aclose()
    cause = broken.value.__cause__
    assert cause is not None and str(cause), repr(broken.value)


async def test_a_reset_from_the_peer_reads_as_the_peer_closing(anyio_backend: str) -> None:
    """A peer that closes while our data is in flight makes its kernel answer with a reset, so
    whether the user saw "closed" or "broke (Connection reset by peer)" was a matter of timing
    (echoscu against a peer that closes after accepting). Both now read as the peer closing."""
    with socket.create_server(("127.0.0.1", 0)) as listener, anyio.fail_after(GUARD):
        stream = await connect("127.0.0.1", listener.getsockname()[1])
        peer, _ = listener.accept()
        # linger 0: close with a reset at once, as the kernel does for data after a close
        peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        peer.close()
        with pytest.raises((anyio.BrokenResourceError, OSError)) as broken:
            await stream.receive()
        await stream.aclose()
    assert describe_loss(broken.value) == "the peer closed the connection (reset)"
    assert describe_loss(None) == "the peer closed the connection"
    assert describe_loss(anyio.BrokenResourceError()) == (
        "the connection to the peer broke (BrokenResourceError)"
    )
