"""``transport.quickack``: immediate acknowledgements on a real TCP connection (both backends).

After a connection has answered a request, Linux delays its acknowledgements ("pingpong"
mode); ``TCP_QUICKACK`` leaves that mode, and reading the option back says whether the
connection is out of it.  A stream without a TCP socket has nothing to set.
"""

from __future__ import annotations

import socket

import anyio
import pytest
from anyio.abc import SocketAttribute

from asyncdicom.transport import connect, listen, quickack

pytestmark = pytest.mark.anyio

GUARD = 10.0


async def test_memory_stream_has_no_quickack() -> None:
    send, receive = anyio.create_memory_object_stream[bytes](1)
    stream = anyio.streams.stapled.StapledObjectStream(send, receive)
    assert quickack(stream) is None  # type: ignore[arg-type]
    send.close()
    receive.close()


@pytest.mark.requires_peer("tcp-quickack")
async def test_quickack_leaves_delayed_ack_mode(anyio_backend: str) -> None:
    accepted: list[anyio.abc.ByteStream] = []
    ready = anyio.Event()
    done = anyio.Event()

    async def serve(stream: anyio.abc.ByteStream) -> None:
        accepted.append(stream)
        ready.set()
        await done.wait()
        await stream.aclose()

    with anyio.fail_after(GUARD):
        listener = await listen("127.0.0.1", 0)
        async with anyio.create_task_group() as tg:
            tg.start_soon(listener.serve, serve, tg)
            client = await connect("127.0.0.1", listener.port)
            await ready.wait()
            (server,) = accepted
            sock = server.extra(SocketAttribute.raw_socket)
            ack_now = quickack(server)
            assert ack_now is not None
            # request and answer until the server's side is in delayed-ACK mode (an answer
            # sent soon after a request puts it there; a loaded machine may need a few)
            for _ in range(50):
                await client.send(b"request")
                assert await server.receive() == b"request"
                await server.send(b"answer")
                assert await client.receive() == b"answer"
                if sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK) == 0:
                    break
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK) == 0
            ack_now()
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK) == 1
            await client.aclose()
            done.set()
            await listener.aclose()
            tg.cancel_scope.cancel()
    ack_now()  # on a closed connection: ignored
