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
from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest
from pydicom.dataset import Dataset

from asyncdicom import AE, HookEvent, errors, presets
from asyncdicom.ae import Timeouts
from asyncdicom.protocol import messages, uids
from asyncdicom.protocol.codec import encode_pdata
from asyncdicom.storage.files import encode_dataset
from asyncdicom.storage.synthetic import make_ct_instance
from tests.test_hostile import GUARD, VERIFICATION_RQ, RawPeer, associate_rq

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


async def test_request_identifier_over_the_limit_is_aborted() -> None:
    """A C-FIND identifier larger than ``max_dataset_in_memory`` is not read into memory:
    the acceptor aborts (source 2) and its handler sees the association aborted."""
    scp = AE(
        "SCP",
        supported_contexts=presets.qr_find_supported(),
        max_dataset_in_memory=SMALL_LIMIT,
    )
    seen: list[BaseException] = []

    @scp.on("C-FIND", sop_class=STUDY)
    async def on_find(request: Any) -> AsyncIterator[Any]:
        try:
            await request.dataset()
        except errors.AssociationError as exc:
            seen.append(exc)
            raise
        yield 0x0000

    with anyio.fail_after(GUARD):
        async with scp.server() as server:
            scu = AE("SCU")
            with pytest.raises(errors.AssociationError):
                async with scu.associate(
                    "127.0.0.1", server.port, called_aet="SCP", contexts=[STUDY]
                ) as assoc:
                    async with assoc.find(_identifier(BIG_VALUE)) as results:
                        [m async for m in results]
    assert len(seen) == 1 and isinstance(seen[0], errors.AssociationAborted)
    assert str(SMALL_LIMIT) in str(seen[0])


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
