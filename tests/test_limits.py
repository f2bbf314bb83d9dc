"""Resource limits (issue 11 item 3): what a peer can make an association hold or wait for.

* a command set is bounded (64 KiB) however many PDVs carry it;
* a data set held in memory (a request's identifier read whole, a response's identifier) is
  bounded by ``AEConfig.max_dataset_in_memory``;
* a peer that stops reading cannot block our writes past the write timeout (slow reader).

Every test runs on both backends, over real TCP on 127.0.0.1, under an ``anyio.fail_after``
guard; nothing waits on a sleep.
"""

from __future__ import annotations

import contextlib
import struct
import tempfile
import tracemalloc
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from pydicom.dataset import Dataset

from asyncdicom import AE, HookEvent, errors, presets
from asyncdicom.ae import Timeouts
from asyncdicom.errors import InvalidDicomFile
from asyncdicom.protocol import messages, uids
from asyncdicom.protocol.codec import encode_pdata
from asyncdicom.storage.codec import decode_spooled_dataset, encode_dataset
from asyncdicom.storage.synthetic import make_ct_instance
from tests.test_hostile import (
    BIG_PIXELS,
    BIG_ROWS,
    CHUNK,
    EXPLICIT,
    GUARD,
    VERIFICATION_RQ,
    RawPeer,
    _big_chunks,
    _big_instance_header,
    _big_store,
    _store_command,
    associate_rq,
)

pytestmark = pytest.mark.anyio

STUDY = uids.STUDY_ROOT_QR_FIND
CT = uids.CT_IMAGE_STORAGE
#: the limit used by the data-set tests, and a value well over it
SMALL_LIMIT = 4096
BIG_VALUE = "X" * (4 * SMALL_LIMIT)


def _identifier(comment: str = "") -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.StudyInstanceUID = ""
    ds.PatientName = ""
    if comment:
        ds.TextValue = comment  # UT: no length limit
    return ds


def _find_scp() -> AE:
    """A C-FIND SCP (study root) holding at most SMALL_LIMIT bytes of a data set in memory."""
    return AE(
        "SCP", supported_contexts=presets.qr_find_supported(), max_dataset_in_memory=SMALL_LIMIT
    )


async def _find_big_identifier(scp: AE) -> tuple[list[Any], int | None]:
    """Serve ``scp`` and send it a C-FIND whose identifier carries BIG_VALUE: the matches and
    the final status."""
    with anyio.fail_after(GUARD):
        async with (
            scp.server() as server,
            AE("SCU").associate(
                "127.0.0.1", server.port, called_aet="SCP", contexts=[STUDY]
            ) as assoc,
        ):
            async with assoc.find(_identifier(BIG_VALUE)) as results:
                matches = [m async for m in results]
            return matches, results.status


async def test_command_set_over_64_kib_across_many_pdvs_is_aborted() -> None:
    """A command set trickled in 17 command PDVs of 4 KiB (68 KiB, never a "last" bit) is
    refused with an A-ABORT (source 2) once it passes 64 KiB, not buffered without end."""
    scp = AE("SCP", timeouts=Timeouts(artim=1.0))
    with anyio.fail_after(GUARD):
        async with scp.server() as server, RawPeer.connect(server.port) as peer:
            await peer.associate(associate_rq(VERIFICATION_RQ))
            fragment = encode_pdata(1, 0x01, b"\x00" * 4096)  # command, not last
            # the server may close while the rest is still on its way
            with contextlib.suppress(anyio.BrokenResourceError, OSError):
                await peer.send(fragment * 17)
            await peer.expect_abort(2)


async def test_command_set_limit_is_configurable() -> None:
    """``AEConfig.max_command_set_length``: with 2 KiB, three 1 KiB command PDVs (never a
    "last" bit) are refused with an A-ABORT (source 2); a limit under 1 KiB is refused."""
    scp = AE("SCP", timeouts=Timeouts(artim=1.0), max_command_set_length=2048)
    with anyio.fail_after(GUARD):
        async with scp.server() as server, RawPeer.connect(server.port) as peer:
            await peer.associate(associate_rq(VERIFICATION_RQ))
            fragment = encode_pdata(1, 0x01, b"\x00" * 1024)  # command, not last
            with contextlib.suppress(anyio.BrokenResourceError, OSError):
                await peer.send(fragment * 3)
            await peer.expect_abort(2)
    with pytest.raises(ValueError, match="max_command_set_length"):
        AE("SCP", max_command_set_length=512)


async def test_request_identifier_over_the_limit_is_aborted() -> None:
    """A C-FIND identifier larger than ``max_dataset_in_memory`` is not read into memory by
    ``read()``: the acceptor aborts (source 2) and its handler sees the association aborted."""
    scp = _find_scp()
    seen: list[BaseException] = []

    @scp.on("C-FIND", sop_class=STUDY)
    async def on_find(request: Any) -> AsyncIterator[Any]:
        try:
            await request.read()  # bytes in memory: bounded (dataset() would spool instead)
        except errors.AssociationError as exc:
            seen.append(exc)
            raise
        yield 0x0000

    with pytest.raises(errors.AssociationError):
        await _find_big_identifier(scp)
    assert len(seen) == 1 and isinstance(seen[0], errors.AssociationAborted)
    assert str(SMALL_LIMIT) in str(seen[0])


async def test_big_request_data_set_is_spooled_to_disk_not_memory(tmp_path: Path) -> None:
    """``request.dataset()`` on a 64 MiB C-STORE with ``max_dataset_in_memory`` 1 MiB: the
    data set streams to an anonymous file in ``spool_directory`` (nothing named there) and
    is decoded from it, pixel data read when accessed; traced memory stays far below the
    data set's size until the pixels are asked for, and every byte is right."""
    spool = tmp_path / "spool"
    spool.mkdir()
    scp = AE(
        "SCP",
        accept_any_storage=True,
        max_dataset_in_memory=1024 * 1024,
        spool_directory=str(spool),
    )
    checks: dict[str, Any] = {}

    @scp.on_store
    async def on_store(request: Any) -> int:
        tracemalloc.reset_peak()
        ds = await request.dataset()
        checks["peak"] = tracemalloc.get_traced_memory()[1]
        checks["named"] = list(spool.iterdir())
        checks["uid"] = ds.SOPInstanceUID
        checks["rows"] = ds.Rows
        pixels = ds.PixelData  # read from the spool file now
        checks["pixels"] = (len(pixels), pixels[: len(CHUNK)] == CHUNK, pixels[-16:])
        return 0x0000

    uid, head = _big_instance_header()
    with anyio.fail_after(60):
        async with scp.server() as server:
            async with AE("SCU").associate(
                "127.0.0.1", server.port, called_aet="SCP", contexts=[(CT, [EXPLICIT])]
            ) as assoc:
                tracemalloc.start()
                try:
                    status = await _big_store(assoc, uid, _big_chunks(head))
                finally:
                    tracemalloc.stop()
    assert status == 0x0000
    assert checks["peak"] < 16 * 1024 * 1024, f"peak {checks['peak'] / 2**20:.1f} MiB"
    assert checks["named"] == []
    assert (checks["uid"], checks["rows"]) == (uid, BIG_ROWS)
    assert checks["pixels"] == (BIG_PIXELS, True, CHUNK[-16:])
    assert list(spool.iterdir()) == []


async def test_big_identifier_is_spooled_and_decoded() -> None:
    """A C-FIND identifier over ``max_dataset_in_memory`` reaches ``dataset()`` whole."""
    scp = _find_scp()
    seen: list[str] = []

    @scp.on("C-FIND", sop_class=STUDY)
    async def on_find(request: Any) -> AsyncIterator[Any]:
        seen.append((await request.dataset()).TextValue)
        yield 0x0000

    assert await _find_big_identifier(scp) == ([], 0x0000)
    assert seen == [BIG_VALUE]


def test_spooled_deflated_data_set_is_inflated(tmp_path: Path) -> None:
    ds = _identifier("Z" * 200_000)
    encoded = encode_dataset(ds, uids.DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN)
    with tempfile.TemporaryFile() as spool:
        spool.write(encoded + b"\x00")  # a pad byte after the deflate stream is ignored
        decoded = decode_spooled_dataset(
            spool, uids.DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN, str(tmp_path)
        )
        assert decoded.TextValue == "Z" * 200_000  # over the defer size: read from the file
        assert decoded.QueryRetrieveLevel == "STUDY"
    with tempfile.TemporaryFile() as spool:
        spool.write(b"\x01\x02garbage")
        with pytest.raises(InvalidDicomFile):
            decode_spooled_dataset(spool, uids.DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN)
        assert spool.closed


async def test_response_identifier_over_the_limit_is_aborted() -> None:
    """A C-FIND response identifier larger than the requestor's ``max_dataset_in_memory``
    aborts the association; one under it is delivered."""
    scp = AE("SCP", supported_contexts=presets.qr_find_supported())

    @scp.on("C-FIND", sop_class=STUDY)
    async def on_find(request: Any) -> AsyncIterator[Any]:
        query = await request.dataset()
        yield _identifier(str(query.TextValue))

    scu = AE("SCU", max_dataset_in_memory=SMALL_LIMIT)
    with anyio.fail_after(GUARD):
        async with scp.server() as server:
            async with scu.associate(
                "127.0.0.1", server.port, called_aet="SCP", contexts=[STUDY]
            ) as assoc:
                async with assoc.find(_identifier("small")) as results:
                    found = [str(m.TextValue) async for m in results]
                assert found == ["small"]
            with pytest.raises(errors.AssociationError) as failed:
                async with scu.associate(
                    "127.0.0.1", server.port, called_aet="SCP", contexts=[STUDY]
                ) as assoc:
                    async with assoc.find(_identifier(BIG_VALUE)) as results:
                        [m async for m in results]
    assert "max_dataset_in_memory" in str(failed.value)


async def test_peer_that_stops_reading_is_cut_off_after_the_write_timeout() -> None:
    """Slow reader: the acceptor's handler never reads the C-STORE data set, so the acceptor
    stops reading the socket and our writes block.  The requestor gives up after its DIMSE
    timeout (DIMSETimeout) instead of waiting forever; the acceptor's DIMSE timeout is off,
    so only the write timeout can end it."""
    scp = AE("SCP", accept_any_storage=True, timeouts=Timeouts(dimse=None))
    handler_started = anyio.Event()

    @scp.on_store
    async def on_store(request: Any) -> int:
        handler_started.set()
        await anyio.Event().wait()  # never reads: cancelled when the association ends
        return 0

    ds = make_ct_instance(32 * 1024 * 1024, seed=7)
    scu = AE("SCU", timeouts=Timeouts(dimse=0.5, write=0.5))
    with anyio.fail_after(GUARD):
        async with scp.server() as server:
            with pytest.raises(errors.DIMSETimeout, match="stopped reading"):
                async with scu.associate(
                    "127.0.0.1", server.port, called_aet="SCP", contexts=[CT]
                ) as assoc:
                    await assoc.store(ds)
            assert handler_started.is_set()


async def test_acceptor_cuts_off_a_requestor_that_stops_reading() -> None:
    """The acceptor side of the slow reader: a raw peer asks for C-FIND responses of 1 MiB
    each and never reads them; the acceptor's writes stall and it drops the association
    after its DIMSE timeout (ASSOCIATION_ABORTED), its handler cancelled."""
    scp = AE(
        "SCP",
        supported_contexts=presets.qr_find_supported(),
        timeouts=Timeouts(dimse=0.5, write=0.5),
    )
    aborted = anyio.Event()
    scp.hooks.add(HookEvent.ASSOCIATION_ABORTED, lambda *a, **k: aborted.set())
    big = "Y" * (1024 * 1024 - 2)

    @scp.on("C-FIND", sop_class=STUDY)
    async def on_find(request: Any) -> AsyncIterator[Any]:
        await request.read()
        for _ in range(256):
            yield _identifier(big)

    identifier = encode_dataset(_identifier(), uids.IMPLICIT_VR_LITTLE_ENDIAN)
    with anyio.fail_after(GUARD):
        async with scp.server() as server, RawPeer.connect(server.port) as peer:
            await peer.associate(associate_rq([(STUDY, (uids.IMPLICIT_VR_LITTLE_ENDIAN,))]))
            await peer.send_message(
                1,
                messages.CFindRQ(message_id=1, affected_sop_class_uid=STUDY),
                identifier,
            )
            await aborted.wait()


# --------------------------------------------------------------------------- slowloris
#
# A peer that trickles a PDU or a message keeps coming "within the DIMSE timeout" at every
# pause, yet would hold its association slot for ever: once a PDU or message has started it
# must also average Timeouts.min_receive_rate.  The pacing below uses sleeps to space the
# peer's sends in time (what is being tested), never to wait for the server.

DIMSE = 0.6
TRICKLE_GAP = 0.1  # well within the DIMSE timeout: only the rate can end these sessions


def _ui(element: int, uid: str) -> bytes:
    value = uid.encode() + b"\0" * (len(uid) % 2)
    return struct.pack("<HH2sH", 0x0008, element, b"UI", len(value)) + value


def _pixel_data_header(length: int) -> bytes:
    """The SOP Class and Instance UIDs of _store_command's instance, then (7FE0,0010) OB of
    ``length`` bytes, Explicit VR Little Endian: any bytes may follow."""
    uids_ = _ui(0x0016, CT) + _ui(0x0018, "1.2.826.0.1.3")
    return uids_ + struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OB", 0, length)


def _store_scp(timeouts: Timeouts, folder: Path) -> tuple[AE, anyio.Event, list[int]]:
    scp = AE("SCP", accept_any_storage=True, timeouts=timeouts)
    ended = anyio.Event()
    statuses: list[int] = []

    @scp.on_store
    async def on_store(request: Any) -> int:
        try:
            await request.save_to(folder)
            statuses.append(0)
        finally:
            ended.set()
        return 0x0000

    return scp, ended, statuses


async def _trickle(peer: RawPeer, pieces: list[bytes], gap: float) -> float:
    """Send ``pieces`` ``gap`` seconds apart until the server cuts the connection; the time
    at which the last piece was sent."""
    last = anyio.current_time()
    for piece in pieces:
        await anyio.sleep(gap)
        try:
            await peer.send(piece)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            break
        last = anyio.current_time()
    return last


async def test_message_trickled_below_the_minimum_rate_is_aborted(tmp_path: Path) -> None:
    """A C-STORE whose data set comes 16 bytes every 0.1 s (160 bytes/s, each pause well
    within the 0.6 s DIMSE timeout) is aborted once its 0.6 s bank is spent, about 0.7 s
    in, and leaves no file; with the old per-pause rule it would run for 100 s."""
    folder = tmp_path / "out"
    timeouts = Timeouts(dimse=DIMSE, min_receive_rate=1024, artim=GUARD)
    scp, ended, statuses = _store_scp(timeouts, folder)
    pieces = [encode_pdata(1, 0x00, _pixel_data_header(16_000))]
    pieces += [encode_pdata(1, 0x00, bytes(16)) for _ in range(1000)]
    with anyio.fail_after(GUARD):
        async with scp.server() as server, RawPeer.connect(server.port) as peer:
            await peer.associate(associate_rq([(CT, (EXPLICIT,))]))
            started = anyio.current_time()
            await peer.send(encode_pdata(1, 0x03, _store_command(1, "1.2.826.0.1.3")))
            async with anyio.create_task_group() as tg:
                tg.start_soon(_trickle, peer, pieces, TRICKLE_GAP)
                await peer.expect_abort(source=0, reason=0)
                tg.cancel_scope.cancel()
            took = anyio.current_time() - started
            await ended.wait()
    assert DIMSE * 0.9 <= took <= DIMSE * 3, f"aborted after {took:.2f} s"
    assert statuses == []
    assert not folder.exists() or not any(folder.iterdir())


async def test_pdu_trickled_between_messages_is_aborted() -> None:
    """Between messages too: the header of a P-DATA-TF PDU and then its body, one byte every
    0.1 s, is aborted about 0.6 s in (before, nothing bounded a PDU started while no message
    was in progress)."""
    scp = AE("SCP", timeouts=Timeouts(dimse=DIMSE, min_receive_rate=1024, artim=GUARD))
    aborted = anyio.Event()
    scp.hooks.add(HookEvent.ASSOCIATION_ABORTED, lambda *a, **k: aborted.set())
    pdu = encode_pdata(1, 0x03, bytes(200))
    with anyio.fail_after(GUARD):
        async with scp.server() as server, RawPeer.connect(server.port) as peer:
            await peer.associate(associate_rq(VERIFICATION_RQ))
            started = anyio.current_time()
            async with anyio.create_task_group() as tg:
                tg.start_soon(_trickle, peer, [pdu[i : i + 1] for i in range(len(pdu))], 0.1)
                await peer.expect_abort(source=0, reason=0)
                tg.cancel_scope.cancel()
            took = anyio.current_time() - started
            await aborted.wait()
    assert DIMSE * 0.9 <= took <= DIMSE * 3, f"aborted after {took:.2f} s"


async def test_slow_but_steady_transfer_above_the_minimum_rate_completes(
    tmp_path: Path,
) -> None:
    """The other side of the rule: 2 KiB every 0.1 s (20 KiB/s) for 2 s, three times the
    DIMSE timeout in all, is a slow link, not an attack: stored, Success."""
    folder = tmp_path / "out"
    timeouts = Timeouts(dimse=DIMSE, min_receive_rate=1024, artim=GUARD)
    scp, ended, statuses = _store_scp(timeouts, folder)
    count, size = 20, 2048
    body = _pixel_data_header(count * size - 12) + bytes(count * size - 12)
    chunks = [body[i : i + size] for i in range(0, len(body), size)]
    pieces = [
        encode_pdata(1, 0x02 if i == len(chunks) - 1 else 0x00, chunk)
        for i, chunk in enumerate(chunks)
    ]
    with anyio.fail_after(GUARD):
        async with scp.server() as server, RawPeer.connect(server.port) as peer:
            await peer.associate(associate_rq([(CT, (EXPLICIT,))]))
            started = anyio.current_time()
            await peer.send(encode_pdata(1, 0x03, _store_command(1, "1.2.826.0.1.3")))
            await _trickle(peer, pieces, TRICKLE_GAP)
            rsp = await peer.receive_command()
            took = anyio.current_time() - started
            await ended.wait()
            await peer.release()
    assert took >= 3 * DIMSE
    assert isinstance(rsp, messages.CStoreRSP) and rsp.status == 0x0000
    assert statuses == [0]
    assert len(list(folder.iterdir())) == 1


async def test_time_spent_processing_is_not_held_against_the_peer(tmp_path: Path) -> None:
    """The bank counts only the reader's waits: a handler that leaves the data set unread
    for 2 s (three DIMSE timeouts: the reader is held by back-pressure meanwhile) and then
    reads it does not get the sender aborted."""
    folder = tmp_path / "out"
    timeouts = Timeouts(dimse=DIMSE, min_receive_rate=1024, artim=GUARD)
    scp = AE("SCP", accept_any_storage=True, timeouts=timeouts)

    @scp.on_store
    async def on_store(request: Any) -> int:
        await anyio.sleep(2 * DIMSE + 0.8)  # a slow disk, on a clock on purpose
        await request.save_to(folder)
        return 0x0000

    size = 16 * 1024 * 1024
    body = _pixel_data_header(size - 12) + bytes(size - 12)
    with anyio.fail_after(GUARD):
        async with scp.server() as server, RawPeer.connect(server.port) as peer:
            await peer.associate(associate_rq([(CT, (EXPLICIT,))]))
            await peer.send(encode_pdata(1, 0x03, _store_command(1, "1.2.826.0.1.3")))
            step = 64 * 1024
            for offset in range(0, len(body), step):
                last = offset + step >= len(body)
                await peer.send(
                    encode_pdata(1, 0x02 if last else 0x00, body[offset : offset + step])
                )
            rsp = await peer.receive_command()
            await peer.release()
    assert isinstance(rsp, messages.CStoreRSP) and rsp.status == 0x0000


async def test_requestor_reading_too_slowly_is_cut_off_after_the_write_timeout() -> None:
    """A slow reader that does read (4 KiB every 50 ms, 80 KiB/s) cannot take one 256 KiB
    PDU of a 1 MiB C-FIND response in the 0.5 s write timeout: the acceptor drops it."""
    scp = AE(
        "SCP",
        supported_contexts=presets.qr_find_supported(),
        timeouts=Timeouts(dimse=None, write=0.5),
    )
    aborted = anyio.Event()
    scp.hooks.add(HookEvent.ASSOCIATION_ABORTED, lambda *a, **k: aborted.set())
    closed = anyio.Event()
    scp.hooks.add(HookEvent.CONNECTION_CLOSED, lambda *a, **k: closed.set())
    big = "Y" * (1024 * 1024 - 2)

    @scp.on("C-FIND", sop_class=STUDY)
    async def on_find(request: Any) -> AsyncIterator[Any]:
        await request.read()
        for _ in range(256):
            yield _identifier(big)

    async def read_slowly(peer: RawPeer) -> None:
        with contextlib.suppress(anyio.EndOfStream, anyio.BrokenResourceError, OSError):
            while True:
                await anyio.sleep(0.05)
                await peer.stream.receive(4096)

    identifier = encode_dataset(_identifier(), uids.IMPLICIT_VR_LITTLE_ENDIAN)
    # (the raw peer announces 256 KiB PDUs: each takes it over 3 s to read)
    rq = associate_rq([(STUDY, (uids.IMPLICIT_VR_LITTLE_ENDIAN,))])
    with anyio.fail_after(GUARD):
        async with scp.server() as server, RawPeer.connect(server.port) as peer:
            await peer.associate(rq)
            await peer.send_message(
                1,
                messages.CFindRQ(message_id=1, affected_sop_class_uid=STUDY),
                identifier,
            )
            async with anyio.create_task_group() as tg:
                tg.start_soon(read_slowly, peer)
                await closed.wait()
                tg.cancel_scope.cancel()
    assert aborted.is_set() or closed.is_set()


def test_defaults_bound_slow_peers() -> None:
    """Out of the box a slow reader or a trickling sender cannot hold a slot for ever."""
    timeouts = Timeouts()
    assert timeouts.write == 60.0
    assert timeouts.min_receive_rate == 1024.0
    with pytest.raises(ValueError, match="min_receive_rate"):
        Timeouts(min_receive_rate=0)
    with pytest.raises(ValueError, match="write"):
        Timeouts(write=-1)
