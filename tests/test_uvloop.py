"""Our SCU against our SCP over loopback on uvloop (uvicorn's default loop), and the transport
stream's contract on every event loop: asyncio's own, uvloop and trio.

On asyncio loops the transport layer uses asyncdicom's protocol-based stream
(``asyncdicom/_asyncio_stream.py``). uvloop's transports implement asyncio's ``Transport``
interface without inheriting from ``asyncio.Transport``; an ``isinstance`` check there once made
every connection under uvloop fail with an AssertionError. These tests run the C-ECHO and C-STORE
round trips, and the stream's own contract, on uvloop next to the two standard backends.

Without uvloop the uvloop cases skip with a reason (and count in the end-of-run summary line);
under ``ASYNCDICOM_REQUIRE_PEERS=1`` they fail instead (see ``tests/harness/requirements.py``).
"""

from __future__ import annotations

import asyncio
import hashlib
import socket
from pathlib import Path
from typing import Any

import anyio
import pydicom
import pytest
import sniffio
from anyio.abc import ByteStream, SocketAttribute

from asyncdicom import AE, transport
from asyncdicom._asyncio_stream import _HIGH_WATER, AsyncioStream
from asyncdicom.protocol import uids
from asyncdicom.storage.synthetic import make_ct_instance

pytestmark = pytest.mark.anyio

SAMPLES = Path(pydicom.data.__file__).parent / "test_files"
CT = uids.CT_IMAGE_STORAGE
TIMEOUT = 60.0  # an upper bound that fails a hung test, never a wait

UVLOOP = pytest.param(
    ("asyncio", {"use_uvloop": True}),
    id="asyncio+uvloop",
    marks=pytest.mark.requires_peer("uvloop"),
)


@pytest.fixture(params=["asyncio", UVLOOP, "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> Any:
    """Overrides tests/conftest.py's fixture: both backends, plus asyncio on uvloop."""
    return request.param


def _check_loop(anyio_backend: Any) -> None:
    """The test really runs on the loop its id names (a fallback to asyncio's own loop would
    make the uvloop cases pass without testing anything)."""
    if isinstance(anyio_backend, tuple):
        loop = asyncio.get_running_loop()
        assert type(loop).__module__.startswith("uvloop"), type(loop)
    elif anyio_backend == "asyncio":
        assert not type(asyncio.get_running_loop()).__module__.startswith("uvloop")
    else:
        assert sniffio.current_async_library() == "trio"


# The round trips on asyncio's own loop and on trio are tests/test_association.py's; here they
# run on uvloop.
@pytest.mark.parametrize("anyio_backend", [UVLOOP])
async def test_echo_round_trip(anyio_backend: Any) -> None:
    _check_loop(anyio_backend)
    with anyio.fail_after(TIMEOUT):
        async with AE("SCP").server() as server:
            async with AE("SCU").associate("127.0.0.1", server.port, called_aet="SCP") as assoc:
                assert assoc.is_established
                assert (await assoc.echo()).status == 0
                assert (await assoc.echo()).status == 0
            assert assoc.released


@pytest.mark.parametrize("anyio_backend", [UVLOOP])
async def test_store_round_trip(anyio_backend: Any, tmp_path: Path) -> None:
    """A data set (about 1 MB: many PDUs at a 16 kB maximum PDU) and a file, saved by the SCP
    with ``save_to``; what arrives is what was sent."""
    _check_loop(anyio_backend)
    out = tmp_path / "out"
    scp = AE("SCP", accept_any_storage=True, max_pdu_length=16384)

    @scp.on_store
    async def on_store(request: Any) -> int:
        await request.save_to(out)
        return 0x0000

    ds = make_ct_instance(1_000_000, seed=11)
    src = SAMPLES / "CT_small.dcm"
    contexts = [(CT, [uids.EXPLICIT_VR_LITTLE_ENDIAN, uids.IMPLICIT_VR_LITTLE_ENDIAN])]
    with anyio.fail_after(TIMEOUT):
        async with scp.server() as server:
            async with AE("SCU").associate(
                "127.0.0.1", server.port, called_aet="SCP", contexts=contexts
            ) as assoc:
                assert (await assoc.store(ds)).status == 0
                assert (await assoc.store(src)).status == 0
            assert assoc.released
    got = pydicom.dcmread(out / f"{ds.SOPInstanceUID}.dcm")
    assert got.PixelData == ds.PixelData
    assert got.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    orig = pydicom.dcmread(src)
    got2 = pydicom.dcmread(out / f"{orig.SOPInstanceUID}.dcm")
    assert got2.PixelData == orig.PixelData
    assert not list(out.glob(".*")), "temporary files left behind"


async def test_transport_stream_contract(anyio_backend: Any) -> None:
    """The stream under the association layer: asyncdicom's own on every asyncio loop (no
    fallback), TCP_NODELAY set, bytes intact in order across more than the read buffer's limit
    while the reader lags, then EOF as ``EndOfStream`` and our close as ``ClosedResourceError``.
    """
    _check_loop(anyio_backend)
    asyncio_loop = anyio_backend != "trio"
    payload = bytes(range(256)) * (3 * _HIGH_WATER // 256 + 1000)  # > 3 x the read limit
    chunk = 64 * 1024
    # On asyncio the receiver starts only once the sender got this far: the read buffer's
    # limit, which the receiving side always absorbs (it reads eagerly up to there), so the
    # wait cannot deadlock. Anything sent after that may pause reading on the receiving side.
    lag = _HIGH_WATER if asyncio_loop else 0
    sender_ahead = anyio.Event()
    served: list[ByteStream] = []

    async def handler(stream: ByteStream) -> None:
        served.append(stream)
        await sender_ahead.wait()
        digest = hashlib.sha256()
        received = 0
        while True:
            try:
                data = await stream.receive()
            except anyio.EndOfStream:
                break
            digest.update(data)
            received += len(data)
        await stream.send(received.to_bytes(8, "big") + digest.digest())
        await stream.aclose()

    with anyio.fail_after(TIMEOUT):
        listener = await transport.listen("127.0.0.1", 0)
        async with anyio.create_task_group() as tg:
            tg.start_soon(listener.serve, handler, tg)
            client = await transport.connect("127.0.0.1", listener.port)
            assert isinstance(client, AsyncioStream) == asyncio_loop
            sock: Any = client.extra(SocketAttribute.raw_socket)
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
            for offset in range(0, len(payload), chunk):
                await client.send(payload[offset : offset + chunk])
                if offset + chunk >= lag:
                    sender_ahead.set()
            await client.send_eof()
            answer = b""
            while len(answer) < 40:
                answer += await client.receive()
            assert int.from_bytes(answer[:8], "big") == len(payload)
            assert answer[8:] == hashlib.sha256(payload).digest()
            with pytest.raises(anyio.EndOfStream):
                await client.receive()
            await client.aclose()
            with pytest.raises(anyio.ClosedResourceError):
                await client.receive()
            assert len(served) == 1
            assert isinstance(served[0], AsyncioStream) == asyncio_loop
            tg.cancel_scope.cancel()
        await listener.aclose()
