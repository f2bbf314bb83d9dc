"""Interop with Orthanc 1.10.1 (Debian package ``orthanc``), a real PACS, on 127.0.0.1.

Orthanc runs as a private subprocess (:mod:`harness.orthanc`, one per module) and is
checked through its REST API, independent of asyncdicom:

* asyncdicom as SCU: C-ECHO and C-STORE to Orthanc's DICOM port; Orthanc's REST API then lists
  the instances and hands back files with the same SOP Instance UIDs and Pixel Data.
* asyncdicom as SCP (in this event loop): Orthanc, asked over REST, C-ECHOes us and C-STOREs
  instances it holds to us; the files we wrote match the originals.
* asyncdicom refusing Orthanc's called AE title: Orthanc's REST echo fails, our server goes on.

Blocking REST calls run in a worker thread (``anyio.to_thread.run_sync``) so that our SCP, in
the test's event loop, can answer Orthanc meanwhile.
"""

from __future__ import annotations

import functools
import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import anyio
import pytest
from harness.orthanc import (
    OrthancModality,
    OrthancNotFoundError,
    OrthancPeer,
    OrthancRestError,
)
from harness.peers import PeerStartError, instance_differences
from pydicom import Dataset, dcmread
from pydicom.filewriter import dcmwrite

from asyncdicom import AE, Association, HookEvent, ServiceRequest
from asyncdicom.errors import AssociationRejected
from asyncdicom.protocol import uids
from asyncdicom.protocol.errors import RejectReason, RejectResult, RejectSource
from asyncdicom.protocol.pdu import AssociateRJ
from asyncdicom.storage.synthetic import CT_IMAGE_STORAGE, make_ct_instance

pytestmark = [pytest.mark.interop, pytest.mark.anyio, pytest.mark.requires_peer("orthanc")]

T = TypeVar("T")

SYNTHETIC_SIZE = 300_000  # bytes of Pixel Data: many PDUs at Orthanc's 16 kB maximum PDU
SYNTHETIC_COUNT = 2


async def _blocking(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run a blocking harness call in a worker thread."""
    return await anyio.to_thread.run_sync(functools.partial(fn, *args, **kwargs))


def _synthetic_instances() -> list[Dataset]:
    return [make_ct_instance(SYNTHETIC_SIZE, seed=i) for i in range(SYNTHETIC_COUNT)]


def _part10_bytes(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


def _assert_same_instance(received: Dataset, source: Dataset, label: str) -> None:
    """Same SOP Class/Instance UID, and byte-identical Pixel Data (or none in both)."""
    assert received.SOPInstanceUID == source.SOPInstanceUID, label
    assert received.SOPClassUID == source.SOPClassUID, label
    assert ("PixelData" in received) == ("PixelData" in source), label
    if "PixelData" in source:
        assert received.PixelData == source.PixelData, label


@dataclass(frozen=True, slots=True)
class _Source:
    """One instance we sent: a label for messages, its data set, its file (samples only)."""

    label: str
    dataset: Dataset
    path: Path | None


def _sources(sample_files: list[Path], synthetic: list[Dataset]) -> dict[str, _Source]:
    """SOP Instance UID -> what was sent."""
    out: dict[str, _Source] = {}
    for sample in sample_files:
        read = dcmread(sample)
        out[str(read.SOPInstanceUID)] = _Source(sample.name, read, sample)
    for i, ds in enumerate(synthetic):
        out[str(ds.SOPInstanceUID)] = _Source(f"synthetic-{i}", ds, None)
    return out


def _assert_matches(received: Path, source: _Source) -> None:
    _assert_same_instance(dcmread(received), source.dataset, source.label)
    if source.path is not None:
        # Stronger for the samples: every element, not just UIDs and pixels.
        assert instance_differences(received, source.path) == [], source.label


def _contexts(sample_files: list[Path], *extra: str) -> list[str]:
    classes = {str(dcmread(p, stop_before_pixels=True).SOPClassUID) for p in sample_files}
    return [uids.VERIFICATION, *sorted(classes | set(extra))]


# ---------------------------------------------------------------------------------------------
# asyncdicom SCU -> Orthanc SCP
# ---------------------------------------------------------------------------------------------


async def test_echo_to_orthanc(orthanc: OrthancPeer) -> None:
    ae = AE("ASYNCSCU")
    async with ae.associate(orthanc.host, orthanc.port, called_aet=orthanc.aet) as assoc:
        assert assoc.called_ae_title == orthanc.aet
        assert (await assoc.echo()).status == 0x0000
        assert (await assoc.echo()).status == 0x0000


async def test_orthanc_rejects_unknown_called_aet(orthanc: OrthancPeer) -> None:
    # The harness turns on DicomCheckCalledAet: Orthanc answers A-ASSOCIATE-RJ.
    ae = AE("ASYNCSCU")
    with pytest.raises(AssociationRejected) as caught:
        async with ae.associate(orthanc.host, orthanc.port, called_aet="NOT-ORTHANC"):
            pytest.fail("Orthanc accepted an association for another called AE title")
    assert caught.value.result == RejectResult.REJECTED_PERMANENT
    assert caught.value.source == RejectSource.SERVICE_USER
    assert caught.value.reason == RejectReason.USER_CALLED_AE_NOT_RECOGNIZED


async def test_store_to_orthanc(
    orthanc: OrthancPeer, sample_files: list[Path], tmp_path: Path
) -> None:
    synthetic = _synthetic_instances()
    ae = AE("ASYNCSCU")
    contexts = _contexts(sample_files, CT_IMAGE_STORAGE)
    async with ae.associate(
        orthanc.host, orthanc.port, called_aet=orthanc.aet, contexts=contexts
    ) as assoc:
        for path in sample_files:
            assert (await assoc.store(path)).status == 0x0000, path.name
        for ds in synthetic:
            assert (await assoc.store(ds)).status == 0x0000

    # Orthanc's own account of what it stored, over REST.
    stored = await _blocking(orthanc.instance_uids)
    sources = _sources(sample_files, synthetic)
    assert sorted(stored) == sorted(sources)
    for uid, source in sources.items():
        data = await _blocking(orthanc.instance_file, stored[uid])
        assert data[128:132] == b"DICM", source.label  # a Part 10 file
        copy = tmp_path / f"from-orthanc-{source.label}"
        copy.write_bytes(data)
        _assert_matches(copy, source)


# ---------------------------------------------------------------------------------------------
# Orthanc SCU -> asyncdicom SCP
# ---------------------------------------------------------------------------------------------


class _Seen:
    """What our SCP's handlers and hooks observed."""

    def __init__(self) -> None:
        self.echo_callers: list[str] = []
        self.store_callers: list[str] = []
        self.saved: list[Path] = []
        self.rejected: list[AssociateRJ] = []
        self.accepted: list[Association] = []


def _our_scp(output: Path, **config: Any) -> tuple[AE, _Seen]:
    ae = AE("OURSCP", accept_any_storage=True, **config)
    seen = _Seen()

    @ae.on_echo
    async def on_echo(request: ServiceRequest) -> int:
        seen.echo_callers.append(request.association.calling_ae_title)
        return 0x0000

    @ae.on_store
    async def on_store(request: ServiceRequest) -> int:
        seen.store_callers.append(request.association.calling_ae_title)
        seen.saved.append(await request.save_to(output))
        return 0x0000

    def on_rejected(event: HookEvent, assoc: Association, **data: Any) -> None:
        seen.rejected.append(data["reject"])

    def on_accepted(event: HookEvent, assoc: Association, **data: Any) -> None:
        seen.accepted.append(assoc)

    ae.hooks.add(HookEvent.ASSOCIATION_REJECTED, on_rejected)
    ae.hooks.add(HookEvent.ASSOCIATION_ACCEPTED, on_accepted)
    return ae, seen


async def test_orthanc_echoes_and_stores_to_our_scp(
    orthanc: OrthancPeer, sample_files: list[Path], tmp_path: Path
) -> None:
    # Orthanc gets the instances over REST first (no asyncdicom involved).
    synthetic = _synthetic_instances()
    sources = _sources(sample_files, synthetic)
    ids: list[str] = []
    for source in sources.values():
        data = source.path if source.path is not None else _part10_bytes(source.dataset)
        upload = await _blocking(orthanc.upload, data)
        assert upload.status == "Success", source.label
        ids.append(upload.id)

    output = tmp_path / "received"
    ae, seen = _our_scp(output)
    async with ae.server("127.0.0.1", 0) as server:
        await _blocking(
            orthanc.add_modality, "ourscp", OrthancModality(aet=ae.ae_title, port=server.port)
        )
        await _blocking(orthanc.echo, "ourscp")
        assert seen.echo_callers == [orthanc.aet]

        result = await _blocking(orthanc.store, "ourscp", ids)
        assert result.instances_count == len(ids)
        assert result.failed_instances_count == 0
        assert result.remote_aet == ae.ae_title
        assert result.local_aet == orthanc.aet

    # The C-STORE-RSP goes out only after save_to() finished, so every file is complete.
    assert seen.store_callers == [orthanc.aet] * len(ids)
    assert sorted(output.iterdir()) == sorted(seen.saved)
    received = {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID): p for p in seen.saved}
    assert sorted(received) == sorted(sources)
    for uid, source in sources.items():
        _assert_matches(received[uid], source)


async def test_orthanc_reports_our_failure_status(orthanc: OrthancPeer, tmp_path: Path) -> None:
    # Our handler's failure status travels back to Orthanc, which fails the REST C-STORE.
    upload = await _blocking(orthanc.upload, _part10_bytes(make_ct_instance(1024)))
    ae = AE("OURSCP", accept_any_storage=True)
    statuses: list[int] = []

    @ae.on_store
    async def on_store(request: ServiceRequest) -> int:
        await request.discard()
        statuses.append(0xA700)  # Refused: Out of Resources (PS3.4 Table B.2-1)
        return 0xA700

    async with ae.server("127.0.0.1", 0) as server:
        modality = OrthancModality(aet=ae.ae_title, port=server.port)
        await _blocking(orthanc.add_modality, "ourscp-full", modality)
        with pytest.raises(OrthancRestError) as caught:
            await _blocking(orthanc.store, "ourscp-full", [upload.id])
    assert statuses == [0xA700]
    assert caught.value.status == 500
    assert "0xA700" in caught.value.details.get("Details", ""), caught.value.text


async def test_orthanc_local_aet_reaches_our_scp(orthanc: OrthancPeer, tmp_path: Path) -> None:
    # A modality entry's LocalAet replaces Orthanc's DicomAet as calling AE title.
    ae, seen = _our_scp(tmp_path / "unused")
    async with ae.server("127.0.0.1", 0) as server:
        modality = OrthancModality(aet=ae.ae_title, port=server.port, local_aet="ORTHLOCAL")
        await _blocking(orthanc.add_modality, "ourscp-local", modality)
        await _blocking(orthanc.echo, "ourscp-local")
    assert seen.echo_callers == ["ORTHLOCAL"]


async def test_our_scp_rejects_orthanc_called_aet(orthanc: OrthancPeer, tmp_path: Path) -> None:
    ae, seen = _our_scp(tmp_path / "unused", require_called_ae_title=True)
    async with ae.server("127.0.0.1", 0) as server:
        # Orthanc calls "WRONGAET" on our port: we must refuse the association.
        await _blocking(
            orthanc.add_modality, "wrong", OrthancModality(aet="WRONGAET", port=server.port)
        )
        with pytest.raises(OrthancRestError) as caught:
            await _blocking(orthanc.echo, "wrong")
        assert caught.value.status == 500
        assert "WRONGAET" in caught.value.details.get("Details", ""), caught.value.text
        assert seen.echo_callers == []
        assert [(rj.result, rj.source, rj.reason) for rj in seen.rejected] == [
            (
                RejectResult.REJECTED_PERMANENT,
                RejectSource.SERVICE_USER,
                RejectReason.USER_CALLED_AE_NOT_RECOGNIZED,
            )
        ]

        # The server is still serving: Orthanc with the right title, and an asyncdicom SCU.
        await _blocking(
            orthanc.add_modality, "right", OrthancModality(aet=ae.ae_title, port=server.port)
        )
        await _blocking(orthanc.echo, "right")
        assert seen.echo_callers == [orthanc.aet]
        async with AE("ASYNCSCU").associate(
            "127.0.0.1", server.port, called_aet=ae.ae_title
        ) as assoc:
            assert (await assoc.echo()).status == 0x0000
        assert seen.echo_callers == [orthanc.aet, "ASYNCSCU"]


# ---------------------------------------------------------------------------------------------
# The harness itself
# ---------------------------------------------------------------------------------------------


@pytest.mark.requires_peer()  # the harness alone
async def test_missing_orthanc_binary_is_an_error(tmp_path: Path) -> None:
    peer = OrthancPeer(binary=tmp_path / "no-such-Orthanc")
    with pytest.raises(OrthancNotFoundError, match="apt-get install"):
        await _blocking(peer.start)
    assert not peer.is_running()


async def test_orthanc_start_failure_carries_its_log() -> None:
    # Orthanc refuses a configuration option of the wrong type and exits at once.
    peer = OrthancPeer(extra_config={"DicomScuTimeout": "soon"})
    with pytest.raises(PeerStartError, match="DicomScuTimeout") as caught:
        await _blocking(peer.start)
    assert "exited with status" in str(caught.value)
    assert not peer.is_running()
