"""A C-CANCEL-RQ that arrives while the handler is blocked in an ``await`` (waiting for a
database, a remote system, a lock), not between two of its results: the handler is cancelled
where it waits, its clean-up runs, the final response is Cancel (0xFE00) and the association
stays usable.  C-FIND, C-GET and C-MOVE handlers, both backends."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

from asyncdicom import AE, Status, presets, uids
from asyncdicom.testing import associated

pytestmark = pytest.mark.anyio

GUARD = 10
STUDY_UID = "1.2.826.0.1.3680043.2.1125.22.1"


def query() -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.StudyInstanceUID = STUDY_UID
    return ds


class Blocking:
    """A handler that yields ``first`` and then waits for ever; records what happened."""

    def __init__(self, first: Any) -> None:
        self.first = first
        self.waiting = anyio.Event()
        self.cleaned_up = False
        self.resumed = False

    async def handler(self, request: Any) -> AsyncIterator[Any]:
        try:
            yield self.first
            self.waiting.set()
            await anyio.Event().wait()  # blocked here when the C-CANCEL-RQ comes
            self.resumed = True
            yield self.first
        finally:
            self.cleaned_up = True


def instance_file(folder: Path) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    ds = Dataset()
    ds.SOPClassUID = uids.CT_IMAGE_STORAGE
    ds.SOPInstanceUID = STUDY_UID + ".1.1"
    ds.PatientID = "C22"
    ds.StudyInstanceUID = STUDY_UID
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    path = folder / "one.dcm"
    ds.save_as(path, enforce_file_format=True)
    return str(path)


async def test_c_find_handler_blocked_in_an_await_is_cancelled() -> None:
    match = query()
    blocking = Blocking(match)
    scp = AE("QRSCP", supported_contexts=presets.qr_supported())
    scp.on("C-FIND")(blocking.handler)
    with anyio.fail_after(GUARD):
        async with associated(scp, contexts=[*presets.QR_FIND, uids.VERIFICATION]) as assoc:
            async with assoc.find(query()) as results:
                first = await results.__anext__()
                await blocking.waiting.wait()
                await results.operation.cancel()
                rest = [m async for m in results]
            final = results.operation.final
            echo = await assoc.echo()
    assert first.StudyInstanceUID == STUDY_UID and rest == []
    assert final is not None and final.status == Status.CANCEL
    assert blocking.cleaned_up and not blocking.resumed
    assert echo.status == 0x0000


@pytest.mark.parametrize("how", ["get", "move"])
async def test_retrieve_handler_blocked_in_an_await_is_cancelled(how: str, tmp_path: Path) -> None:
    blocking = Blocking(instance_file(tmp_path / "src"))
    scp = AE(
        "QRSCP",
        supported_contexts=presets.qr_supported() + presets.storage_supported(scu_role=True),
    )
    scp.on("C-GET")(blocking.handler)
    scp.on("C-MOVE")(blocking.handler)
    dest = AE("DEST", accept_any_storage=True)
    received: list[str] = []

    @dest.on_store
    async def on_store(request: Any) -> int:
        await request.read()
        received.append(request.message.affected_sop_instance_uid)
        return 0

    with anyio.fail_after(GUARD):
        async with dest.server(port=0) as server:
            scp.move_destinations["DEST"] = ("127.0.0.1", server.port)
            contexts = presets.retrieve_contexts(how, storage=[uids.CT_IMAGE_STORAGE])
            async with associated(scp, contexts=[*contexts, uids.VERIFICATION]) as assoc:
                operation = (
                    assoc.get(query(), store=on_store)
                    if how == "get"
                    else assoc.move(query(), destination="DEST")
                )
                async with operation as retrieval:
                    await blocking.waiting.wait()
                    await retrieval.operation.cancel()
                    pendings = [r async for r in retrieval]
                final = retrieval.operation.final
                echo = await assoc.echo()
    assert final is not None and final.status == Status.CANCEL
    # cancelled while still listing the instances: no sub-operation was started
    assert pendings == [] and received == []
    assert blocking.cleaned_up and not blocking.resumed
    assert echo.status == 0x0000
