"""Modality Worklist (PS3.4 K.6.1): worklist query matching (``parse_worklist_query``), the
:class:`~asyncdicom.worklist.Worklist` SCP from a folder of files and from code (reloading a
changed folder), and ``assoc.find(model="mwl")`` against it in memory and over sockets, both
backends: matches with the requested keys only, the failure statuses, the SOP class not
accepted unless configured."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import anyio
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian

from asyncdicom import AE, QueryFailed, presets, uids
from asyncdicom.errors import NoAcceptedContext
from asyncdicom.qr.matching import (
    IdentifierMismatch,
    UnableToProcess,
    parse_query,
    parse_worklist_query,
)
from asyncdicom.services.query_retrieve import find_model_uid
from asyncdicom.storage.codec import encode_dataset
from asyncdicom.testing import associated
from asyncdicom.worklist import Worklist

MWL = uids.MODALITY_WORKLIST_FIND


def worklist_item(
    accession: str,
    patient: str,
    station: str,
    modality: str,
    date: str,
    time: str = "090000",
    *,
    patient_id: str | None = None,
) -> Dataset:
    """A worklist item with one Scheduled Procedure Step."""
    step = Dataset()
    step.ScheduledStationAETitle = station
    step.Modality = modality
    step.ScheduledProcedureStepStartDate = date
    step.ScheduledProcedureStepStartTime = time
    step.ScheduledProcedureStepID = f"SPS-{accession}"
    step.ScheduledProcedureStepDescription = f"{modality} exam"
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.AccessionNumber = accession
    ds.PatientName = patient
    ds.PatientID = patient_id or f"ID-{accession}"
    ds.PatientBirthDate = "19700101"
    ds.RequestedProcedureID = f"RP-{accession}"
    ds.StudyInstanceUID = f"1.2.826.0.1.3680043.10.9.{accession[1:]}"
    ds.ScheduledProcedureStepSequence = Sequence([step])
    return ds


ITEMS = [
    worklist_item("A1", "DOE^JOHN", "CT1", "CT", "20240301", "081500"),
    worklist_item("A2", "DOE^JANE", "MR1", "MR", "20240301", "141500"),
    worklist_item("A3", "ROE^RICHARD", "CT2", "CT", "20240302", "101500"),
]


def wl_query(**step_keys: str) -> Dataset:
    """Return keys for the usual columns, and ``step_keys`` matched in the step's item."""
    step = Dataset()
    step.ScheduledStationAETitle = ""
    step.Modality = ""
    step.ScheduledProcedureStepStartDate = ""
    for keyword, value in step_keys.items():
        setattr(step, keyword, value)
    ds = Dataset()
    ds.AccessionNumber = ""
    ds.PatientName = ""
    ds.ScheduledProcedureStepSequence = Sequence([step])
    return ds


def accessions(matches: list[Dataset]) -> list[str]:
    return [str(m.AccessionNumber) for m in matches]


def save(path: Path, ds: Dataset) -> None:
    """Write ``ds`` as a Part 10 file (as dump2dcm makes a .wl file)."""
    ds = Dataset(ds)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = MWL
    ds.file_meta.MediaStorageSOPInstanceUID = "1.2.826.0.1.3680043.10.9.1"
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


# --------------------------------------------------------------------------- matching


def test_worklist_matching_in_the_step_sequence() -> None:
    worklist = Worklist(items=ITEMS)
    assert accessions(list(worklist.find(wl_query(Modality="CT")))) == ["A1", "A3"]
    assert accessions(list(worklist.find(wl_query(ScheduledStationAETitle="MR*")))) == ["A2"]
    dated = wl_query(ScheduledProcedureStepStartDate="20240301", Modality="CT")
    assert accessions(list(worklist.find(dated))) == ["A1"]
    ranged = wl_query(ScheduledProcedureStepStartDate="20240302-")
    assert accessions(list(worklist.find(ranged))) == ["A3"]
    timed = wl_query(ScheduledProcedureStepStartTime="0800-1200")
    assert accessions(list(worklist.find(timed))) == ["A1", "A3"]
    by_patient = wl_query()
    by_patient.PatientName = "DOE^*"
    assert accessions(list(worklist.find(by_patient))) == ["A1", "A2"]
    by_accession = wl_query()
    by_accession.AccessionNumber = "A2"
    by_accession.RequestedProcedureID = "RP-A2"
    assert accessions(list(worklist.find(by_accession))) == ["A2"]
    everything = Dataset()
    everything.AccessionNumber = ""
    assert accessions(list(worklist.find(everything))) == ["A1", "A2", "A3"]


def test_worklist_responses_carry_the_requested_keys_only() -> None:
    worklist = Worklist(items=ITEMS)
    query = wl_query(Modality="MR")
    query.PatientID = ""
    query.AdmissionID = ""  # not in the item: returned empty
    (match,) = worklist.find(query)
    assert sorted(e.keyword for e in match) == [
        "AccessionNumber",
        "AdmissionID",
        "PatientID",
        "PatientName",
        "ScheduledProcedureStepSequence",
        "SpecificCharacterSet",
    ]
    assert "QueryRetrieveLevel" not in match
    assert match.AdmissionID in ("", None) and match.PatientID == "ID-A2"
    assert match.SpecificCharacterSet == "ISO_IR 100"
    (step,) = match.ScheduledProcedureStepSequence
    assert sorted(e.keyword for e in step) == [
        "Modality",
        "ScheduledProcedureStepStartDate",
        "ScheduledStationAETitle",
    ]
    assert (step.Modality, step.ScheduledStationAETitle) == ("MR", "MR1")


def _responses(worklist: Worklist, query: Dataset, syntax: str) -> list[bytes | Dataset]:
    """What the worklist's C-FIND handler yields for ``query`` on a context of ``syntax``."""
    request = SimpleNamespace(
        decode=lambda: query,
        context=SimpleNamespace(transfer_syntax=syntax),
        association=SimpleNamespace(log=logging.getLogger("test")),
        message=None,
    )
    return list(worklist._on_find(request))


def _multi_step_item() -> Dataset:
    item = worklist_item("A4", "POE^EDGAR", "CT1", "CT", "20240303")
    second = Dataset()
    second.ScheduledStationAETitle = "MR2"
    second.Modality = "MR"
    second.ScheduledProcedureStepStartDate = "20240304"
    item.ScheduledProcedureStepSequence.append(second)
    del item.SpecificCharacterSet  # the request's is returned
    item.OtherPatientIDs = ["X1", "Y22"]  # multi-valued
    item.PatientWeight = None  # empty
    return item


@pytest.mark.parametrize("syntax", [uids.IMPLICIT_VR_LITTLE_ENDIAN, ExplicitVRLittleEndian])
def test_worklist_responses_are_the_bytes_pydicom_writes(syntax: str) -> None:
    """The identifiers are encoded from each item's elements encoded once (no data set per
    match): the same bytes as pydicom's encoding of ``Query.response``, sequence items
    filtered, with the request's Specific Character Set for an item without one; a name
    outside ASCII is answered the pydicom way."""
    umlaut = worklist_item("A5", "M\u00dcLLER^J\u00dcRGEN", "CT1", "CT", "20240305")
    worklist = Worklist(items=[*ITEMS, _multi_step_item(), umlaut])
    queries = [wl_query(), wl_query(Modality="CT"), wl_query(ScheduledStationAETitle="MR*")]
    for query in list(queries):
        with_charset = query.copy()
        with_charset.SpecificCharacterSet = "ISO_IR 192"
        with_charset.OtherPatientIDs = ""
        with_charset.PatientWeight = ""
        with_charset.PatientID = ""
        queries.append(with_charset)
    copied = 0
    for ds in queries:
        query = parse_worklist_query(ds)
        got = _responses(worklist, ds, syntax)
        expected = [
            encode_dataset(query.response(item), syntax)
            for item in worklist.items()
            if query.matches(item)
        ]
        assert [r if isinstance(r, bytes) else encode_dataset(r, syntax) for r in got] == expected
        copied += sum(isinstance(r, bytes) for r in got)
        # the item with the name outside ASCII went the pydicom way
        assert sum(isinstance(r, Dataset) for r in got) == sum(
            str(r.AccessionNumber) == "A5" for r in worklist.find(ds)
        )
    assert copied >= 12
    # another transfer syntax: data sets, encoded by the service layer
    got = _responses(worklist, wl_query(), uids.EXPLICIT_VR_BIG_ENDIAN)
    assert got and all(isinstance(r, Dataset) for r in got)


def test_worklist_query_errors() -> None:
    as_value = Dataset()
    as_value.add_new(0x00400100, "LO", "CT")  # the step sequence sent as a value
    with pytest.raises(IdentifierMismatch) as mismatch:
        parse_worklist_query(as_value)
    assert mismatch.value.status == 0xA900 and mismatch.value.tag == 0x00400100
    nested = wl_query()
    nested.ScheduledProcedureStepSequence[0].add_new(0x00400008, "LO", "x")  # a sequence
    with pytest.raises(IdentifierMismatch):
        parse_worklist_query(nested)
    with pytest.raises(UnableToProcess) as reversed_range:
        parse_worklist_query(wl_query(ScheduledProcedureStepStartDate="20240302-20240301"))
    assert reversed_range.value.status == 0xC000
    two_items = wl_query()
    two_items.ScheduledProcedureStepSequence.append(Dataset())
    with pytest.raises(UnableToProcess):
        parse_worklist_query(two_items)
    # a Query/Retrieve parser would refuse the same identifier: the worklist model has no levels
    with pytest.raises(IdentifierMismatch):
        parse_query(wl_query(), "study")
    assert parse_worklist_query(wl_query()).level == ""


def test_find_model_uid_knows_the_worklist() -> None:
    assert find_model_uid("mwl") == MWL
    assert find_model_uid(MWL) == MWL


# --------------------------------------------------------------------------- the folder


def test_worklist_from_a_folder_is_read_again_as_it_changes(tmp_path: Path) -> None:
    folder = tmp_path / "worklist"
    save(folder / "a1.wl", ITEMS[0])
    save(folder / "CT2" / "a3.dcm", ITEMS[2])  # a subfolder per AE title, as wlmscpfs
    (folder / "notes.txt").write_text("not a worklist file")
    save(folder / ".hidden.wl", ITEMS[1])
    (folder / "broken.wl").write_bytes(b"\x00" * 10)
    worklist = Worklist(folder)
    assert accessions(list(worklist.find(wl_query()))) == ["A1", "A3"]

    save(folder / "a2.WL", ITEMS[1])  # a new file
    assert accessions(list(worklist.find(wl_query()))) == ["A1", "A2", "A3"]

    changed = worklist_item("A1", "DOE^JOHN", "CT1", "CT", "20240305")
    save(folder / "tmp.part", changed)
    os.replace(folder / "tmp.part", folder / "a1.wl")  # rewritten, as a gateway would
    dated = wl_query(ScheduledProcedureStepStartDate="20240305")
    assert accessions(list(worklist.find(dated))) == ["A1"]

    (folder / "CT2" / "a3.dcm").unlink()
    assert accessions(list(worklist.find(wl_query()))) == ["A1", "A2"]


def test_a_file_that_is_not_dicom_is_skipped_with_a_plain_reason(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = tmp_path / "worklist"
    save(folder / "a1.wl", ITEMS[0])
    (folder / "notes.wl").write_text("a text file, not a worklist item\n")
    with caplog.at_level(logging.WARNING, logger="asyncdicom"):
        assert accessions(list(Worklist(folder).find(wl_query()))) == ["A1"]
    (record,) = [r for r in caplog.records if "worklist_file_skipped" in r.getMessage()]
    text = record.getMessage()
    assert "notes.wl" in text and "not a DICOM file" in text
    assert "force" not in text  # pydicom's advice to its own callers


def test_worklist_items_added_in_code(tmp_path: Path) -> None:
    folder = tmp_path / "worklist"
    save(folder / "a1.wl", ITEMS[0])
    worklist = Worklist(folder)
    worklist.add(ITEMS[1])
    ITEMS[1].PatientName = "CHANGED^AFTER"  # the worklist holds a copy
    try:
        names = [str(m.PatientName) for m in worklist.find(wl_query())]
    finally:
        ITEMS[1].PatientName = "DOE^JANE"
    assert names == ["DOE^JANE", "DOE^JOHN"]
    worklist.clear()
    assert accessions(list(worklist.find(wl_query()))) == ["A1"]
    with pytest.raises(TypeError):
        worklist.add("not a data set")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- over DIMSE


def _scp(worklist: Worklist) -> AE:
    scp = AE("WLSCP")
    worklist.install(scp)
    return scp


async def _find(assoc: Any, query: Dataset) -> tuple[list[Dataset], Any]:
    async with assoc.find(query, model="mwl") as results:
        found = [m async for m in results]
    return found, results


@pytest.mark.anyio
async def test_find_mwl_in_memory(anyio_backend: str) -> None:
    scp = _scp(Worklist(items=ITEMS))
    with anyio.fail_after(20):
        async with associated(scp, contexts=[MWL]) as assoc:
            found, results = await _find(assoc, wl_query(Modality="CT"))
            assert results.status == 0x0000
            assert accessions(found) == ["A1", "A3"]
            assert all("QueryRetrieveLevel" not in m for m in found)
            bad = wl_query(ScheduledProcedureStepStartDate="20240302-20240301")
            with pytest.raises(QueryFailed) as failed:
                await _find(assoc, bad)
            assert failed.value.response.status == 0xC000
            assert failed.value.response.message.offending_element == (0x00400002,)
            mismatch = Dataset()
            mismatch.add_new(0x00400100, "LO", "CT")
            with pytest.raises(QueryFailed) as failed:
                await _find(assoc, mismatch)
            assert failed.value.response.status == 0xA900
            assert failed.value.response.message.error_comment


@pytest.mark.anyio
async def test_find_mwl_over_sockets_from_a_folder(tmp_path: Path, anyio_backend: str) -> None:
    folder = tmp_path / "worklist"
    for item in ITEMS:
        save(folder / f"{item.AccessionNumber}.wl", item)
    scp = _scp(Worklist(folder))
    with anyio.fail_after(20):
        async with (
            scp.server() as server,
            AE("MODALITY").associate("127.0.0.1", server.port, contexts=[MWL]) as assoc,
        ):
            found, _ = await _find(assoc, wl_query(ScheduledStationAETitle="CT1"))
            assert accessions(found) == ["A1"]
            save(folder / "A4.wl", worklist_item("A4", "NEW^ONE", "CT1", "CT", "20240303"))
            found, _ = await _find(assoc, wl_query(ScheduledStationAETitle="CT1"))
            assert accessions(found) == ["A1", "A4"]


@pytest.mark.anyio
async def test_mwl_is_not_accepted_unless_configured(anyio_backend: str) -> None:
    scp = AE("QRSCP", supported_contexts=presets.qr_find_supported())
    with anyio.fail_after(20):
        async with associated(scp, contexts=[MWL, uids.STUDY_ROOT_QR_FIND]) as assoc:
            with pytest.raises(NoAcceptedContext, match="Modality Worklist"):
                await _find(assoc, wl_query())
    # configured but without a handler: 0xC000 with an Error Comment
    configured = AE("WLSCP", supported_contexts=presets.worklist_supported())
    with anyio.fail_after(20):
        async with associated(configured, contexts=[MWL]) as assoc:
            with pytest.raises(QueryFailed) as failed:
                await _find(assoc, wl_query())
    assert failed.value.response.status == 0xC000
    assert failed.value.response.message.error_comment
