"""Modality Performed Procedure Step (PS3.4 F.7): :class:`~asyncdicom.services.mpps.MPPSSCP`
driven with ``assoc.n_create`` / ``assoc.n_set``, in memory and over sockets, both backends:
the state of each step, the statuses of illegal requests (0x0106, 0x0111, 0x0112, 0x0110 with
Error ID 0xA710, 0x0120), the SCP-chosen UID, the steps kept in a folder across restarts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from asyncdicom import AE, presets
from asyncdicom.errors import NoAcceptedContext
from asyncdicom.services.mpps import MPPS, MPPSSCP
from asyncdicom.testing import associated

pytestmark = pytest.mark.anyio

UID = "1.2.826.0.1.3680043.10.9.77.1"


def created(status: str = "IN PROGRESS") -> Dataset:
    """An N-CREATE Attribute List."""
    ds = Dataset()
    ds.PerformedProcedureStepStatus = status
    ds.PerformedProcedureStepID = "PPS-1"
    ds.PerformedStationAETitle = "CT1"
    ds.PerformedProcedureStepStartDate = "20240301"
    ds.PerformedProcedureStepStartTime = "081500"
    ds.Modality = "CT"
    ds.PatientName = "DOE^JOHN"
    ds.PatientID = "ID-A1"
    ds.PerformedSeriesSequence = Sequence([])
    return ds


def finished(status: str = "COMPLETED") -> Dataset:
    """An N-SET Modification List ending the step."""
    series = Dataset()
    series.SeriesInstanceUID = "1.2.826.0.1.3680043.10.9.77.2"
    series.ReferencedImageSequence = Sequence([])
    ds = Dataset()
    ds.PerformedProcedureStepStatus = status
    ds.PerformedProcedureStepEndDate = "20240301"
    ds.PerformedProcedureStepEndTime = "084500"
    ds.PerformedSeriesSequence = Sequence([series])
    return ds


def _scp(mpps: MPPSSCP) -> AE:
    scp = AE("MPPSSCP")
    mpps.install(scp)
    return scp


async def _life_cycle(assoc: Any, mpps: MPPSSCP) -> None:
    """Create, complete, then the refused and failing requests."""
    rsp = await assoc.n_create(MPPS, created(), sop_instance=UID)
    assert rsp.status == 0x0000, rsp
    assert rsp.message.affected_sop_instance_uid == UID
    assert mpps.status(UID) == "IN PROGRESS"

    rsp = await assoc.n_create(MPPS, created(), sop_instance=UID)
    assert rsp.status == 0x0111 and rsp.message.error_comment

    rsp = await assoc.n_set(MPPS, UID, finished())
    assert rsp.status == 0x0000, rsp
    step = mpps.get(UID)
    assert step is not None and step.PerformedProcedureStepStatus == "COMPLETED"
    assert step.PerformedSeriesSequence[0].SeriesInstanceUID == "1.2.826.0.1.3680043.10.9.77.2"
    assert step.PerformedStationAETitle == "CT1"  # kept from N-CREATE

    rsp = await assoc.n_set(MPPS, UID, finished("DISCONTINUED"))
    assert rsp.status == 0x0110
    assert rsp.message.error_id == 0xA710
    assert rsp.message.error_comment == "Performed Procedure Step Object may no longer be updated"
    assert mpps.status(UID) == "COMPLETED"

    rsp = await assoc.n_set(MPPS, "1.2.826.0.1.3680043.10.9.77.99", finished())
    assert rsp.status == 0x0112


async def test_life_cycle_in_memory(anyio_backend: str) -> None:
    mpps = MPPSSCP()
    with anyio.fail_after(20):
        async with associated(_scp(mpps), contexts=[MPPS]) as assoc:
            await _life_cycle(assoc, mpps)
    assert list(mpps) == [UID]


async def test_life_cycle_over_sockets(anyio_backend: str) -> None:
    mpps = MPPSSCP()
    with anyio.fail_after(20):
        async with (
            _scp(mpps).server() as server,
            AE("MODALITY").associate("127.0.0.1", server.port, contexts=[MPPS]) as assoc,
        ):
            await _life_cycle(assoc, mpps)


async def test_create_without_a_uid_gets_one_from_the_scp(anyio_backend: str) -> None:
    mpps = MPPSSCP()
    with anyio.fail_after(20):
        async with associated(_scp(mpps), contexts=[MPPS]) as assoc:
            first = await assoc.n_create(MPPS, created())
            second = await assoc.n_create(MPPS, created())
    uids = [first.message.affected_sop_instance_uid, second.message.affected_sop_instance_uid]
    assert first.status == second.status == 0x0000
    assert all(uids) and uids[0] != uids[1]
    assert sorted(mpps) == sorted(uids)


async def test_illegal_values_are_refused(anyio_backend: str) -> None:
    mpps = MPPSSCP()
    with anyio.fail_after(20):
        async with associated(_scp(mpps), contexts=[MPPS]) as assoc:
            rsp = await assoc.n_create(MPPS, created("COMPLETED"), sop_instance=UID)
            assert rsp.status == 0x0106
            assert rsp.decode().PerformedProcedureStepStatus == "COMPLETED"  # Attribute List
            assert rsp.error_comment == "status 'COMPLETED' is not IN PROGRESS"
            assert UID not in mpps

            missing = created()
            del missing.PerformedProcedureStepStatus
            rsp = await assoc.n_create(MPPS, missing, sop_instance=UID)
            assert rsp.status == 0x0120

            rsp = await assoc.n_create(MPPS, created(), sop_instance="1.2.x")
            assert rsp.status == 0x0117

            assert (await assoc.n_create(MPPS, created(), sop_instance=UID)).status == 0
            rsp = await assoc.n_set(MPPS, UID, finished("SCHEDULED"))
            assert rsp.status == 0x0106
            assert rsp.decode().PerformedProcedureStepStatus == "SCHEDULED"
            assert (
                rsp.error_comment == "status 'SCHEDULED' is not IN PROGRESS/COMPLETED/DISCONTINUED"
            )
            assert mpps.status(UID) == "IN PROGRESS"
            # a change that keeps the step in progress is allowed, and so is ending it then
            progress = Dataset()
            progress.PerformedProcedureStepDescription = "half way"
            assert (await assoc.n_set(MPPS, UID, progress)).status == 0
            assert (await assoc.n_set(MPPS, UID, finished("DISCONTINUED"))).status == 0
            assert mpps.status(UID) == "DISCONTINUED"
            rsp = await assoc.n_set(MPPS, UID, progress)
            assert rsp.status == 0x0110 and rsp.message.error_id == 0xA710


async def test_steps_are_kept_in_a_folder_across_restarts(
    tmp_path: Path, anyio_backend: str
) -> None:
    folder = tmp_path / "mpps"
    changes: list[tuple[str, str]] = []

    def on_change(uid: str, step: Dataset) -> None:
        changes.append((uid, str(step.PerformedProcedureStepStatus)))

    mpps = MPPSSCP(folder, on_change=on_change)
    with anyio.fail_after(20):
        async with associated(_scp(mpps), contexts=[MPPS]) as assoc:
            assert (await assoc.n_create(MPPS, created(), sop_instance=UID)).status == 0
    assert changes == [(UID, "IN PROGRESS")]
    stored = dcmread(folder / f"{UID}.mpps")
    assert stored.file_meta.MediaStorageSOPClassUID == MPPS
    assert stored.PerformedProcedureStepStatus == "IN PROGRESS"

    again = MPPSSCP(folder)  # a restart
    assert again.status(UID) == "IN PROGRESS"
    with anyio.fail_after(20):
        async with associated(_scp(again), contexts=[MPPS]) as assoc:
            assert (await assoc.n_set(MPPS, UID, finished())).status == 0
            assert (await assoc.n_create(MPPS, created(), sop_instance=UID)).status == 0x0111
    assert MPPSSCP(folder).status(UID) == "COMPLETED"
    with anyio.fail_after(20):
        async with associated(_scp(MPPSSCP(folder)), contexts=[MPPS]) as assoc:
            rsp = await assoc.n_set(MPPS, UID, finished())
    assert rsp.status == 0x0110 and rsp.message.error_id == 0xA710


async def test_an_n_set_cannot_change_the_steps_sop_uids(
    tmp_path: Path, anyio_backend: str
) -> None:
    """SOP Class and SOP Instance UID identify the step (PS3.4 F.7.2.2: not in the N-SET
    attributes): a Modification List that carries others leaves them as they were, in
    memory, in the file kept and under its file name, while its other changes apply."""
    folder = tmp_path / "mpps"
    mpps = MPPSSCP(folder)
    other = "1.2.826.0.1.3680043.10.9.77.66"
    with anyio.fail_after(20):
        async with associated(_scp(mpps), contexts=[MPPS]) as assoc:
            assert (await assoc.n_create(MPPS, created(), sop_instance=UID)).status == 0
            change = finished()
            change.SOPInstanceUID = other
            change.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"  # CT Image Storage
            rsp = await assoc.n_set(MPPS, UID, change)
    assert rsp.status == 0x0000
    step = mpps.get(UID)
    assert step is not None
    assert (step.SOPClassUID, step.SOPInstanceUID) == (MPPS, UID)
    assert step.PerformedProcedureStepStatus == "COMPLETED"  # the rest of it applied
    assert mpps.get(other) is None
    assert sorted(p.name for p in folder.iterdir()) == [f"{UID}.mpps"]
    kept = dcmread(folder / f"{UID}.mpps")
    assert (kept.SOPClassUID, kept.SOPInstanceUID) == (MPPS, UID)
    assert MPPSSCP(folder).status(UID) == "COMPLETED"  # and so after a restart


async def test_a_step_that_cannot_be_written_is_not_kept(
    tmp_path: Path, anyio_backend: str
) -> None:
    blocker = tmp_path / "not-a-folder"
    mpps = MPPSSCP(blocker / "mpps")  # missing: no steps yet
    blocker.write_text("a file where the folder should be")
    with anyio.fail_after(20):
        async with associated(_scp(mpps), contexts=[MPPS]) as assoc:
            rsp = await assoc.n_create(MPPS, created(), sop_instance=UID)
    assert rsp.status == 0x0110 and rsp.message.error_comment
    assert UID not in mpps


def test_a_folder_that_cannot_be_read_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(NotADirectoryError):
        MPPSSCP(tmp_path / "file")


def test_an_unreadable_file_is_skipped(tmp_path: Path) -> None:
    (tmp_path / "bad.mpps").write_bytes(b"not DICOM")
    (tmp_path / "other.txt").write_bytes(b"ignored")
    mpps = MPPSSCP(tmp_path)
    assert len(mpps) == 0
    assert [path.name for path, _ in mpps.skipped] == ["bad.mpps"]


async def test_mpps_is_not_accepted_unless_configured(anyio_backend: str) -> None:
    with anyio.fail_after(20):
        async with associated(AE("SCP"), contexts=[MPPS]) as assoc:
            with pytest.raises(NoAcceptedContext):
                await assoc.n_create(MPPS, created())
        # configured but no SCP installed: 0x0110 with an Error Comment
        scp = AE("SCP", supported_contexts=presets.mpps_supported())
        async with associated(scp, contexts=[MPPS]) as assoc:
            rsp = await assoc.n_create(MPPS, created())
    assert rsp.status == 0x0110 and rsp.message.error_comment


@pytest.mark.parametrize("shared", [True, False])
async def test_steps_in_a_shared_folder(tmp_path: Path, anyio_backend: str, shared: bool) -> None:
    """Two SCPs on one folder (the workers of one qrscp): with ``shared_folder`` a step created
    through one is completed through the other, and a duplicate N-CREATE is refused by
    either; without it the second SCP does not know the step."""
    first, second = MPPSSCP(tmp_path), MPPSSCP(tmp_path)
    first.shared_folder = second.shared_folder = shared
    with anyio.fail_after(20):
        async with associated(_scp(first), contexts=[MPPS]) as assoc:
            assert (await assoc.n_create(MPPS, created(), sop_instance=UID)).status == 0x0000
        async with associated(_scp(second), contexts=[MPPS]) as assoc:
            completed = await assoc.n_set(MPPS, UID, finished())
            duplicate = await assoc.n_create(MPPS, created(), sop_instance=UID)
    if shared:
        assert completed.status == 0x0000
        assert duplicate.status == 0x0111
        step = second.get(UID)
        assert step is not None and step.PerformedStationAETitle == "CT1"
        assert dcmread(tmp_path / f"{UID}.mpps").PerformedProcedureStepStatus == "COMPLETED"
    else:  # it cannot know the step another process created: why shared_folder exists
        assert completed.status == 0x0112
