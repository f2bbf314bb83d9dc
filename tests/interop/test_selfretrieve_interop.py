"""Retrieving to ourselves (``assoc.retrieve()``) from other implementations' Q/R SCPs: DCMTK
``dcmqrscp``, pynetdicom's ``qrscp`` and Orthanc, both backends.

Each peer is filled with one 200-instance study (our ``store()``), knows our AE (``ME``) as a
move destination at the port our server got, and is then asked, on one association: the whole
study (200 instances yielded, the iteration ending once the last arrived), the study again but
left after 50 (C-CANCEL-RQ), a C-ECHO, and the whole study once more.  With C-GET as well where
the peer serves it.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from harness.orthanc import OrthancModality, OrthancPeer
from harness.qr_peers import Dcmqrscp, PynetdicomQRSCP
from pydicom.dataset import Dataset

from asyncdicom import AE, presets
from asyncdicom.storage.synthetic import CT_IMAGE_STORAGE, make_ct_instance

pytestmark = [pytest.mark.interop, pytest.mark.anyio]

GUARD = 180.0
ME = "ME"
COUNT = 200
CANCEL_AFTER = 50
#: pynetdicom's qrscp sends some 20-40 instances/s (a Python thread per sub-operation): the
#: issue's 200-instance runs are against dcmqrscp, Orthanc and our qrscp; this one checks the
#: same behaviour with fewer, to keep the suite's time
PYNETDICOM_COUNT = 60
PYNETDICOM_CANCEL_AFTER = 20


def _study(tag: int, count: int = COUNT) -> list[Dataset]:
    study = f"1.2.826.0.1.3680043.10.1234.19.{tag}"
    series = f"{study}.1"
    return [
        make_ct_instance(
            256, patient_id="SELF", seed=n, study_instance_uid=study,
            series_instance_uid=series, instance_number=n + 1,
        )
        for n in range(count)
    ]  # fmt: skip


async def _load(port: int, called: str, datasets: list[Dataset]) -> None:
    async with AE("LOADER").associate(
        "127.0.0.1", port, called_aet=called, contexts=[CT_IMAGE_STORAGE]
    ) as assoc:
        for ds in datasets:
            assert (await assoc.store(ds)).status == 0x0000


def _query(datasets: list[Dataset]) -> Dataset:
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = datasets[0].StudyInstanceUID
    return query


async def _retrieve_cancel_retrieve(
    me: AE,
    port: int,
    called: str,
    datasets: list[Dataset],
    via: Any,
    cancelled_into: Path | None = None,
    cancel_after: int = CANCEL_AFTER,
) -> None:
    """The whole study, the study left after 50, C-ECHO, the whole study: on one association.
    ``cancelled_into``: the folder where the retrieve left early saves its instances (those
    still arriving after it was left are then answered Success, not refused)."""
    uids = {ds.SOPInstanceUID for ds in datasets}
    count = len(datasets)
    contexts = [*presets.retrieve_contexts(via, storage=[CT_IMAGE_STORAGE]), *presets.VERIFICATION]
    async with me.associate("127.0.0.1", port, called_aet=called, contexts=contexts) as assoc:
        async with assoc.retrieve(_query(datasets), via=via) as whole:
            got = [instance.sop_instance_uid async for instance in whole]
        assert whole.status == 0x0000, whole.final
        assert len(got) == count and set(got) == uids
        assert whole.arrived == whole.expected == count
        assert whole.completed == count and not whole.failed
        first = next(i for i in datasets if i.SOPInstanceUID == got[0])

        cut: list[str] = []
        async with assoc.retrieve(
            _query(datasets), via=via, buffer=4, store=cancelled_into
        ) as left:
            async for instance in left:
                cut.append(instance.sop_instance_uid)
                if len(cut) == cancel_after:
                    break
        assert left.cancel_sent and left.final is not None
        assert len(cut) == cancel_after and set(cut) <= uids

        assert (await assoc.echo()).status == 0x0000
        async with assoc.retrieve(_query(datasets), via=via) as again:
            instances = [instance async for instance in again]
        assert again.status == 0x0000, again.final
        assert {i.sop_instance_uid for i in instances} == uids and len(instances) == count
    received = {i.sop_instance_uid: i for i in instances}[first.SOPInstanceUID].dataset()
    assert received.PixelData == first.PixelData


@pytest.mark.requires_peer("dcmtk")
@pytest.mark.parametrize("via", ["move", "get"])
async def test_from_dcmqrscp(tmp_path: Path, via: str) -> None:
    datasets = _study(1)
    me = AE(ME, accept_any_storage=True)
    with anyio.fail_after(GUARD):
        async with me.server() as srv:
            peer = Dcmqrscp(tmp_path, aet="DCMQRSCP", destinations={ME: ("127.0.0.1", srv.port)})
            with peer:
                try:
                    await _load(peer.port, "DCMQRSCP", datasets)
                    await _retrieve_cancel_retrieve(me, peer.port, "DCMQRSCP", datasets, via)
                except BaseException:
                    sys.stderr.write(f"--- dcmqrscp log ---\n{peer.log_text()[-5000:]}\n")
                    raise


@pytest.mark.requires_peer("pynetdicom-qrscp")
@pytest.mark.parametrize("via", ["move", "get"])
async def test_from_pynetdicom_qrscp(tmp_path: Path, via: str) -> None:
    datasets = _study(2, PYNETDICOM_COUNT)
    me = AE(ME, accept_any_storage=True)
    with anyio.fail_after(GUARD):
        async with me.server() as srv:
            peer = PynetdicomQRSCP(
                tmp_path, aet="PYQRSCP", destinations={ME: ("127.0.0.1", srv.port)}
            )
            with peer:
                try:
                    await _load(peer.port, "PYQRSCP", datasets)
                    await _retrieve_cancel_retrieve(
                        me, peer.port, "PYQRSCP", datasets, via,
                        cancel_after=PYNETDICOM_CANCEL_AFTER,
                    )  # fmt: skip
                except BaseException:
                    sys.stderr.write(f"--- qrscp log ---\n{peer.log_text()[-5000:]}\n")
                    raise


@pytest.fixture(scope="module")
def orthanc(require_orthanc: None) -> Iterator[OrthancPeer]:
    """An Orthanc that knows ``ME`` (C-MOVE and C-GET allowed for it; its port is set by each
    test once our server listens)."""
    with OrthancPeer(aet="ORTHANC", modalities={"me": OrthancModality(ME, port=104)}) as peer:
        yield peer
        peer.stop()
        log = peer.log_text()
        if log:
            sys.stderr.write(f"--- {peer.name} log ---\n{log[-5000:]}\n")


@pytest.mark.requires_peer("orthanc")
@pytest.mark.parametrize("via", ["move", "get"])
async def test_from_orthanc(orthanc: OrthancPeer, tmp_path: Path, via: str) -> None:
    datasets = _study(3)
    await anyio.to_thread.run_sync(orthanc.reset)
    me = AE(ME, accept_any_storage=True)
    with anyio.fail_after(GUARD):
        async with me.server() as srv:
            await anyio.to_thread.run_sync(
                orthanc.add_modality, "me", OrthancModality(ME, port=srv.port)
            )
            await _load(orthanc.port, orthanc.aet, datasets)
            # Orthanc 1.10 encodes the Failed SOP Instance UID List of a C-GET-RSP inside its
            # command set (group 0008 after the group length's end): the C-STOREs refused
            # after the early exit make its final C-GET-RSP one, which must be decoded (the
            # trailing element ignored) and not abort the association
            await _retrieve_cancel_retrieve(me, orthanc.port, orthanc.aet, datasets, via)
