"""The archive (asyncdicom.archive.Archive) on an AE, in process, both backends: C-STORE into the
folder and the index, C-FIND at every level of every model with the matching rules, bad
queries answered with the standard's statuses, the index kept across reopening and rebuilt
when lost, C-GET and C-MOVE through the retrieve engine, an unknown move destination."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pydicom
import pytest
from pydicom.dataset import Dataset

from asyncdicom import AE, HookEvent, presets, uids
from asyncdicom.archive import Archive, qrscp_config
from asyncdicom.protocol.messages import CFindRQ, CStoreRQ
from asyncdicom.protocol.negotiation import SupportedContext
from asyncdicom.services.query_retrieve import QueryFailed
from asyncdicom.services.retrieve import RetrieveFailed
from asyncdicom.storage.codec import encode_dataset
from asyncdicom.storage.synthetic import make_ct_instance

pytestmark = [pytest.mark.anyio, pytest.mark.filterwarnings("ignore::UserWarning")]

GUARD = 30.0
CT = (uids.CT_IMAGE_STORAGE, [uids.EXPLICIT_VR_LITTLE_ENDIAN])


def instance(
    patient: str, study: str, series: str, number: int, *, modality: str = "CT", **keys: Any
) -> Dataset:
    ds = make_ct_instance(
        64,
        patient_id=patient,
        study_instance_uid=study,
        series_instance_uid=series,
        instance_number=number,
    )
    ds.Modality = modality
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    return ds


def collection() -> list[Dataset]:
    """P1 DOE^JOHN: study 1.1 (2024-01-01; series 1.1.1 CT x2, 1.1.2 MR), study 1.2
    (2023-05-05, US); P2 ROE^JANE: study 2.1 (2024-06-01, CT)."""
    john = {"PatientName": "DOE^JOHN"}
    return [
        instance("P1", "1.1", "1.1.1", 1, StudyDate="20240101", **john),
        instance("P1", "1.1", "1.1.1", 2, StudyDate="20240101", **john),
        instance("P1", "1.1", "1.1.2", 1, modality="MR", StudyDate="20240101", **john),
        instance("P1", "1.2", "1.2.1", 1, modality="US", StudyDate="20230505", **john),
        instance("P2", "2.1", "2.1.1", 1, StudyDate="20240601", PatientName="ROE^JANE"),
    ]


def query(level: str, **keys: Any) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    return ds


@asynccontextmanager
async def running(
    folder: Path,
    *,
    destinations: dict[str, tuple[str, int]] | None = None,
    db: str | None = None,
) -> AsyncIterator[tuple[Archive, int]]:
    """An open archive on a served AE: (archive, port); ``db`` the index (the archive_db
    fixture: the default SQLite file, or a PostgreSQL database)."""
    ae = AE(config=qrscp_config("QRSCP"))
    async with Archive(folder, move_destinations=destinations, db=db) as archive:
        archive.install(ae)
        async with ae.server() as server:
            yield archive, server.port


async def store_all(port: int, datasets: list[Dataset]) -> list[int]:
    async with AE("SCU").associate("127.0.0.1", port, called_aet="QRSCP", contexts=[CT]) as assoc:
        return [(await assoc.store(ds)).status for ds in datasets]


async def find(port: int, identifier: Dataset, model: str = "study") -> list[Dataset]:
    async with AE("SCU").associate(
        "127.0.0.1", port, called_aet="QRSCP", contexts=presets.QR_FIND
    ) as assoc:
        async with assoc.find(identifier, model=model) as results:
            return [match async for match in results]


def uids_of(matches: list[Dataset], keyword: str) -> list[str]:
    return sorted(str(m.get(keyword, "")) for m in matches)


# --------------------------------------------------------------------------- store and find


async def test_store_then_find_at_every_level_and_model(
    tmp_path: Path, archive_db: str | None
) -> None:
    datasets = collection()
    with anyio.fail_after(GUARD):
        async with running(tmp_path / "archive", db=archive_db) as (archive, port):
            assert await store_all(port, datasets) == [0] * len(datasets)
            # study root
            studies = await find(port, query("STUDY", StudyInstanceUID="", PatientName=""))
            series = await find(
                port, query("SERIES", StudyInstanceUID="1.1", SeriesInstanceUID="", Modality="")
            )
            images = await find(
                port, query("IMAGE", StudyInstanceUID="1.1", SeriesInstanceUID="1.1.1",
                            SOPInstanceUID="", InstanceNumber="")
            )  # fmt: skip
            # patient root
            patients = await find(port, query("PATIENT", PatientID="", PatientName=""), "patient")
            p_studies = await find(
                port, query("STUDY", PatientID="P1", StudyInstanceUID=""), "patient"
            )
            p_series = await find(
                port,
                query("SERIES", PatientID="P1", StudyInstanceUID="1.1", SeriesInstanceUID=""),
                "patient",
            )
            # patient/study only
            ps_studies = await find(
                port, query("STUDY", PatientID="P2", StudyInstanceUID=""), "patient-study"
            )
            count = await anyio.to_thread.run_sync(archive.index.count)
    assert count == 5
    assert uids_of(studies, "StudyInstanceUID") == ["1.1", "1.2", "2.1"]
    assert {str(m.PatientName) for m in studies} == {"DOE^JOHN", "ROE^JANE"}
    assert [(m.SeriesInstanceUID, m.Modality) for m in series] == [
        ("1.1.1", "CT"),
        ("1.1.2", "MR"),
    ]
    assert sorted(int(m.InstanceNumber) for m in images) == [1, 2]
    assert {m.SOPInstanceUID for m in images} == {str(d.SOPInstanceUID) for d in datasets[:2]}
    assert [(m.PatientID, str(m.PatientName)) for m in patients] == [
        ("P1", "DOE^JOHN"),
        ("P2", "ROE^JANE"),
    ]
    assert uids_of(p_studies, "StudyInstanceUID") == ["1.1", "1.2"]
    assert uids_of(p_series, "SeriesInstanceUID") == ["1.1.1", "1.1.2"]
    assert uids_of(ps_studies, "StudyInstanceUID") == ["2.1"]
    for match in studies:
        assert match.QueryRetrieveLevel == "STUDY"
    # the files are in the sorted layout, in the storage folder
    for ds in datasets:
        path = tmp_path / "archive" / ds.PatientID / ds.StudyInstanceUID / ds.SeriesInstanceUID
        assert pydicom.dcmread(path / f"{ds.SOPInstanceUID}.dcm").SOPInstanceUID == (
            ds.SOPInstanceUID
        )


async def test_find_matching_rules(tmp_path: Path, archive_db: str | None) -> None:
    with anyio.fail_after(GUARD):
        async with running(tmp_path, db=archive_db) as (_archive, port):
            await store_all(port, collection())
            wildcard = await find(port, query("STUDY", StudyInstanceUID="", PatientName="DOE*"))
            one_char = await find(port, query("STUDY", StudyInstanceUID="", PatientName="?OE^JANE"))
            date_range = await find(
                port, query("STUDY", StudyInstanceUID="", StudyDate="20240101-20241231")
            )
            open_range = await find(
                port, query("STUDY", StudyInstanceUID="", StudyDate="-20231231")
            )
            uid_list = await find(port, query("STUDY", StudyInstanceUID=["1.2", "2.1"]))
            modalities = await find(
                port, query("STUDY", StudyInstanceUID="", ModalitiesInStudy="MR")
            )
            none = await find(port, query("STUDY", StudyInstanceUID="", PatientName="NOBODY"))
            case = await find(port, query("STUDY", StudyInstanceUID="", PatientName="doe*"))
    assert uids_of(wildcard, "StudyInstanceUID") == ["1.1", "1.2"]
    assert uids_of(one_char, "StudyInstanceUID") == ["2.1"]
    assert uids_of(date_range, "StudyInstanceUID") == ["1.1", "2.1"]
    assert uids_of(open_range, "StudyInstanceUID") == ["1.2"]
    assert uids_of(uid_list, "StudyInstanceUID") == ["1.2", "2.1"]
    assert uids_of(modalities, "StudyInstanceUID") == ["1.1"]
    assert list(modalities[0].ModalitiesInStudy) == ["CT", "MR"]
    assert none == [] and case == []  # Person Name matching is case-sensitive by default


async def test_find_returns_the_counts_asked_for(tmp_path: Path, archive_db: str | None) -> None:
    counts = ("NumberOfPatientRelatedStudies", "NumberOfPatientRelatedSeries",
              "NumberOfPatientRelatedInstances")  # fmt: skip
    study_keys = ("NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances")
    with anyio.fail_after(GUARD):
        async with running(tmp_path, db=archive_db) as (_archive, port):
            await store_all(port, collection())
            patients = await find(
                port, query("PATIENT", PatientID="", **dict.fromkeys(counts, "")), "patient"
            )
            studies = await find(
                port,
                query("STUDY", StudyInstanceUID="", SOPClassesInStudy="",
                      **dict.fromkeys(study_keys, "")),
            )  # fmt: skip
            series = await find(
                port,
                query("SERIES", StudyInstanceUID="1.1", SeriesInstanceUID="",
                      NumberOfSeriesRelatedInstances=""),
            )  # fmt: skip
            plain = await find(port, query("STUDY", StudyInstanceUID="", PatientID=""))
            matched = await find(
                port, query("STUDY", StudyInstanceUID="", NumberOfStudyRelatedInstances="3")
            )
    assert sorted((m.PatientID, *(int(m[k].value) for k in counts)) for m in patients) == [
        ("P1", 2, 3, 4),
        ("P2", 1, 1, 1),
    ]
    assert sorted(
        (m.StudyInstanceUID, *(int(m[k].value) for k in study_keys), m.SOPClassesInStudy)
        for m in studies
    ) == [
        ("1.1", 2, 3, uids.CT_IMAGE_STORAGE),
        ("1.2", 1, 1, uids.CT_IMAGE_STORAGE),
        ("2.1", 1, 1, uids.CT_IMAGE_STORAGE),
    ]
    assert sorted((m.SeriesInstanceUID, int(m.NumberOfSeriesRelatedInstances)) for m in series) == [
        ("1.1.1", 2),
        ("1.1.2", 1),
    ]
    # returned only when asked for; a value given is matched
    assert len(plain) == 3
    assert not any(k in m for m in plain for k in (*counts, *study_keys, "SOPClassesInStudy"))
    assert uids_of(matched, "StudyInstanceUID") == ["1.1"]


@pytest.mark.parametrize(
    ("model", "identifier", "status", "comment"),
    [
        ("study", query("FRAME", StudyInstanceUID=""), 0xA900, "unknown Query/Retrieve Level"),
        ("study", query("", StudyInstanceUID=""), 0xA900, "Query/Retrieve Level"),
        ("study", Dataset(), 0xA900, "Query/Retrieve Level is missing"),
        (
            "study",
            query("SERIES", SeriesInstanceUID=""),
            0xA900,
            "the SERIES level needs one Study Instance UID (no wild card)",
        ),
        (
            "patient",
            query("STUDY", StudyInstanceUID=""),
            0xA900,
            "the STUDY level needs one Patient ID (no wild card)",
        ),
        ("patient-study", query("SERIES", StudyInstanceUID="1.1"), 0xA900, "not part of"),
        ("study", query("STUDY", StudyDate="20241231-20240101"), 0xC000, "reversed DA range"),
        ("study", query("STUDY", StudyTime="2561"), 0xC000, "malformed TM value"),
    ],
)
async def test_bad_queries_get_the_standard_failure_status(
    tmp_path: Path, model: str, identifier: Dataset, status: int, comment: str
) -> None:
    with anyio.fail_after(GUARD):
        async with running(tmp_path) as (_archive, port):
            await store_all(port, collection()[:1])
            with pytest.raises(QueryFailed) as failed:
                await find(port, identifier, model)
            # the association and the archive go on
            assert len(await find(port, query("STUDY", StudyInstanceUID=""))) == 1
    response = failed.value.response
    assert response.status == status
    assert response.error_comment is not None and comment in response.error_comment


@pytest.mark.parametrize("value", ["", "*", "1.1.*"])
async def test_upper_unique_key_empty_or_wild_is_refused_with_the_element(
    tmp_path: Path, value: str
) -> None:
    """PS3.4 C.4.1.2.1: one value for the unique key of each level above; an empty value and
    "*" (no wild card for a UID, and no UID) are refused alike, naming the element."""
    identifier = query("IMAGE", StudyInstanceUID="1.1", SeriesInstanceUID=value)
    with anyio.fail_after(GUARD):
        async with running(tmp_path) as (_archive, port):
            await store_all(port, collection()[:1])
            with pytest.raises(QueryFailed) as failed:
                await find(port, identifier)
    response = failed.value.response
    assert response.status == 0xA900
    assert response.error_comment == "the IMAGE level needs one Series Instance UID (no wild card)"
    assert response.message.offending_element == (0x0020000E,)


async def test_a_unique_key_below_the_level_is_ignored_with_a_warning(
    tmp_path: Path, archive_db: str | None
) -> None:
    """A STUDY-level C-FIND with a Series Instance UID (odil's pre-query of a C-GET): the
    key is not matched (PS3.4 C.4.1.1.3.1: the keys are those of the level and above), the
    study is found, each Pending is 0xFF01 and returns the key empty."""
    identifier = query("STUDY", StudyInstanceUID="1.1", SeriesInstanceUID="1.1.2")
    with anyio.fail_after(GUARD):
        async with running(tmp_path, db=archive_db) as (_archive, port):
            await store_all(port, collection())
            async with AE("SCU").associate(
                "127.0.0.1", port, called_aet="QRSCP", contexts=presets.QR_FIND
            ) as assoc:
                async with assoc.find(identifier, model="study") as results:
                    matches = [m async for m in results]
                    last = results.last_pending
                # a query without the lower key still gets plain Pendings
                async with assoc.find(query("STUDY", StudyInstanceUID="1.1")) as results:
                    plain = [m async for m in results]
                    plain_status = results.last_pending
    assert [str(m.StudyInstanceUID) for m in matches] == ["1.1"]
    assert "SeriesInstanceUID" in matches[0] and not matches[0].SeriesInstanceUID
    assert last is not None and last.status == 0xFF01
    assert len(plain) == 1 and plain_status is not None and plain_status.status == 0xFF00


async def test_a_retrieve_with_a_key_below_its_level_is_refused(tmp_path: Path) -> None:
    """A C-GET cannot ignore a key as a C-FIND can (it would send the whole study): 0xA900
    naming the element."""
    identifier = query("STUDY", StudyInstanceUID="1.1", SeriesInstanceUID="1.1.2")
    with anyio.fail_after(GUARD):
        async with running(tmp_path / "archive") as (_archive, port):
            await store_all(port, collection())
            contexts = presets.retrieve_contexts("get", storage=[uids.CT_IMAGE_STORAGE])
            async with AE("SCU").associate(
                "127.0.0.1", port, called_aet="QRSCP", contexts=contexts
            ) as assoc:
                with pytest.raises(RetrieveFailed) as failed:
                    async with assoc.get(identifier, store=tmp_path / "got") as retrieval:
                        await retrieval.wait()
    response = failed.value.response
    assert response.status == 0xA900
    assert response.message.offending_element == (0x0020000E,)
    assert response.error_comment == "(0020,000E) is a key below the STUDY level"
    assert not (tmp_path / "got").exists()


async def test_undecodable_identifier_is_unable_to_process(tmp_path: Path) -> None:
    # Query/Retrieve Level with a VR that does not exist
    garbage = b"\x08\x00\x52\x00ZZ\x06\x00STUDY "
    with anyio.fail_after(GUARD):
        async with running(tmp_path) as (_archive, port):
            with pytest.raises(QueryFailed) as failed:
                await find(port, garbage)  # type: ignore[arg-type]
    assert failed.value.response.status == 0xC000
    assert failed.value.response.error_comment == "the identifier cannot be decoded"


async def test_unsupported_model_is_0122(tmp_path: Path) -> None:
    """The archive's C-FIND handler, reached on a SOP class that is not a Query/Retrieve
    model (here registered for Modality Worklist on purpose), answers 0x0122."""
    worklist = uids.MODALITY_WORKLIST_FIND
    config = qrscp_config("QRSCP")
    ae = AE(
        config=qrscp_config(
            "QRSCP",
            supported_contexts=(
                *config.supported_contexts,
                SupportedContext(worklist, (uids.EXPLICIT_VR_LITTLE_ENDIAN,)),
            ),
        )
    )
    with anyio.fail_after(GUARD):
        async with Archive(tmp_path) as archive:
            archive.install(ae)
            ae.on("C-FIND", sop_class=worklist)(ae.handler_for("C-FIND", uids.STUDY_ROOT_QR_FIND))
            async with ae.server() as server:
                async with AE("SCU").associate(
                    "127.0.0.1", server.port, contexts=[worklist]
                ) as assoc:
                    async with assoc.invoke(
                        assoc.find_context(worklist),
                        CFindRQ(
                            message_id=assoc.next_message_id(), affected_sop_class_uid=worklist
                        ),
                        encode_dataset(query("STUDY"), uids.EXPLICIT_VR_LITTLE_ENDIAN),
                    ) as operation:
                        responses = [r async for r in operation]
    assert [r.status for r in responses] == [0x0122]
    assert "not a Query/Retrieve information model" in (responses[0].error_comment or "")


async def test_resent_instance_replaces_the_old_one(tmp_path: Path, archive_db: str | None) -> None:
    first = instance("P1", "1.1", "1.1.1", 1, PatientName="DOE^JOHN")
    again = instance("P9", "9.1", "9.1.1", 1, PatientName="MOVED^TO")
    again.SOPInstanceUID = first.SOPInstanceUID
    again.file_meta.MediaStorageSOPInstanceUID = first.SOPInstanceUID
    with anyio.fail_after(GUARD):
        async with running(tmp_path, db=archive_db) as (archive, port):
            assert await store_all(port, [first, first, again]) == [0, 0, 0]
            images = await find(
                port,
                query("IMAGE", StudyInstanceUID="9.1", SeriesInstanceUID="9.1.1",
                      SOPInstanceUID=""),
            )  # fmt: skip
            studies = await find(port, query("STUDY", StudyInstanceUID=""))
            count = await anyio.to_thread.run_sync(archive.index.count)
    assert count == 1
    assert [m.SOPInstanceUID for m in images] == [first.SOPInstanceUID]
    assert uids_of(studies, "StudyInstanceUID") == ["9.1"]
    # one file: the old copy, under the old patient and study, is gone
    assert [p.relative_to(tmp_path).parts[:3] for p in tmp_path.rglob("*.dcm")] == [
        ("P9", "9.1", "9.1.1")
    ]
    # and so are its folders
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == ["P9"]


async def test_instance_without_study_uid_is_refused_and_not_kept(
    tmp_path: Path, archive_db: str | None
) -> None:
    bad = instance("P1", "1.1", "1.1.1", 1)
    del bad.StudyInstanceUID
    with anyio.fail_after(GUARD):
        async with running(tmp_path, db=archive_db) as (archive, port):
            statuses = await store_all(port, [bad, *collection()[:1]])
            count = await anyio.to_thread.run_sync(archive.index.count)
    assert statuses == [0xC000, 0x0000]
    assert count == 1
    assert len(list(tmp_path.rglob("*.dcm"))) == 1
    # the folders made for the refused instance are gone too: every folder holds a file
    folders = [p for p in tmp_path.rglob("*") if p.is_dir()]
    assert folders and all(any(p.rglob("*.dcm")) for p in folders), folders


async def test_truncated_resend_is_refused_and_the_good_copy_kept(
    tmp_path: Path, archive_db: str | None
) -> None:
    good = instance("P1", "1.1", "1.1.1", 1, PatientName="DOE^JOHN")
    raw = encode_dataset(good, uids.EXPLICIT_VR_LITTLE_ENDIAN)
    with anyio.fail_after(GUARD):
        async with running(tmp_path, db=archive_db) as (archive, port):
            assert await store_all(port, [good]) == [0]
            (stored,) = tmp_path.rglob("*.dcm")
            before = stored.read_bytes()
            async with AE("SCU").associate(
                "127.0.0.1", port, called_aet="QRSCP", contexts=[CT]
            ) as assoc:
                context = assoc.find_context(uids.CT_IMAGE_STORAGE)
                assert context is not None
                rsp = await assoc.request(
                    context,
                    CStoreRQ(
                        message_id=assoc.next_message_id(),
                        affected_sop_class_uid=uids.CT_IMAGE_STORAGE,
                        affected_sop_instance_uid=good.SOPInstanceUID,
                    ),
                    raw[:-10],  # cut inside the pixel data
                )
            count = await anyio.to_thread.run_sync(archive.index.count)
    assert rsp.status == 0xC000
    assert count == 1
    assert [p.read_bytes() for p in tmp_path.rglob("*.dcm")] == [before]


async def test_refused_stores_say_why_in_the_error_comment(
    tmp_path: Path, archive_db: str | None
) -> None:
    """A C-STORE refused by qrscp carries the reason as Error Comment (as its C-FIND and
    C-MOVE failures do), within the 64 characters of an LO and never cut in a word."""
    good = instance("P1", "1.1", "1.1.1", 1)
    raw = encode_dataset(good, uids.EXPLICIT_VR_LITTLE_ENDIAN)
    no_study = instance("P1", "1.1", "1.1.1", 2)
    del no_study.StudyInstanceUID
    with anyio.fail_after(GUARD):
        async with running(tmp_path, db=archive_db) as (_archive, port):
            async with AE("SCU").associate(
                "127.0.0.1", port, called_aet="QRSCP", contexts=[CT]
            ) as assoc:
                context = assoc.find_context(uids.CT_IMAGE_STORAGE)
                assert context is not None

                async def send(data: bytes, sop_instance: str) -> Any:
                    return await assoc.request(
                        context,
                        CStoreRQ(
                            message_id=assoc.next_message_id(),
                            affected_sop_class_uid=uids.CT_IMAGE_STORAGE,
                            affected_sop_instance_uid=sop_instance,
                        ),
                        data,
                    )

                cut = await send(raw[:-10], good.SOPInstanceUID)
                other = await send(raw, "1.2.826.0.1.3680043.18.10.99")
                unindexable = await assoc.store(no_study)
    assert cut.status == 0xC000
    assert cut.error_comment is not None
    assert other.status == 0xA900
    assert other.error_comment == "data set's SOP Instance UID (0008,0018) is not the command's"
    assert unindexable.status == 0xC000
    assert unindexable.message.error_comment == (
        "cannot index the instance: the header has no study instance uid"
    )
    for comment in (cut.error_comment, other.error_comment, unindexable.message.error_comment):
        assert comment is not None and len(comment) <= 64


async def test_unindexable_resend_never_replaces_the_stored_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, archive_db: str | None
) -> None:
    """A re-sent instance that the index refuses (here: a header the index cannot prepare)
    lands on the stored copy's path: it is written beside it and dropped, the stored copy
    kept; sent again whole, it takes the stored copy's place."""
    from asyncdicom.qr.index import Index

    prepare = Index._prepare

    def refuse_one(header: Dataset) -> Any:
        if str(header.get("PatientName", "")) == "BAD^INDEX":
            raise ValueError("the header cannot be read: refused for the test")
        return prepare(header)

    monkeypatch.setattr(Index, "_prepare", staticmethod(refuse_one))
    good = instance("P1", "1.1", "1.1.1", 1, PatientName="DOE^JOHN")
    bad = instance("P1", "1.1", "1.1.1", 1, PatientName="BAD^INDEX")
    changed = instance("P1", "1.1", "1.1.1", 1, PatientName="DOE^JANE")
    bad.SOPInstanceUID = changed.SOPInstanceUID = good.SOPInstanceUID
    with anyio.fail_after(GUARD):
        async with running(tmp_path, db=archive_db) as (archive, port):
            assert await store_all(port, [good]) == [0]
            (stored,) = tmp_path.rglob("*.dcm")
            before = stored.read_bytes()
            assert await store_all(port, [bad]) == [0xC000]
            assert [p.read_bytes() for p in tmp_path.rglob("*.dcm")] == [before]
            assert await store_all(port, [changed]) == [0]
            count = await anyio.to_thread.run_sync(archive.index.count)
            matches = await find(
                port,
                query("IMAGE", StudyInstanceUID="1.1", SeriesInstanceUID="1.1.1",
                      SOPInstanceUID="", PatientName=""),
            )  # fmt: skip
    assert count == 1
    (kept,) = tmp_path.rglob("*.dcm")
    assert kept == stored
    assert pydicom.dcmread(kept).PatientName == "DOE^JANE"
    assert [str(m.PatientName) for m in matches] == ["DOE^JANE"]


async def test_unwritable_storage_is_out_of_resources(tmp_path: Path) -> None:
    folder = tmp_path / "archive"
    db = tmp_path / "index.sqlite"
    ae = AE(config=qrscp_config("QRSCP"))
    async with Archive(folder, db=db) as archive:
        archive.install(ae)
        async with ae.server() as server:
            folder.rmdir()
            folder.write_text("a file where the folder was")
            with anyio.fail_after(GUARD):
                statuses = await store_all(server.port, collection()[:2])
    assert statuses == [0xA700, 0xA700]


# --------------------------------------------------------------------------- restarts


async def test_index_survives_closing_and_reopening(tmp_path: Path, archive_db: str | None) -> None:
    datasets = collection()
    with anyio.fail_after(GUARD):
        async with running(tmp_path, db=archive_db) as (_archive, port):
            await store_all(port, datasets)
        # (an SQLite file in the folder; none beside a PostgreSQL index)
        assert (tmp_path / "index.sqlite").is_file() == (archive_db is None)
        async with running(tmp_path, db=archive_db) as (archive, port):
            assert archive.rebuilt == 0  # the index was kept, not rebuilt
            studies = await find(port, query("STUDY", StudyInstanceUID=""))
            count = await anyio.to_thread.run_sync(archive.index.count)
    assert count == len(datasets)
    assert uids_of(studies, "StudyInstanceUID") == ["1.1", "1.2", "2.1"]


async def test_lost_index_is_rebuilt_from_the_folder(tmp_path: Path) -> None:
    datasets = collection()
    with anyio.fail_after(GUARD):
        async with running(tmp_path) as (_archive, port):
            await store_all(port, datasets)
        for name in ("index.sqlite", "index.sqlite-wal", "index.sqlite-shm"):
            (tmp_path / name).unlink(missing_ok=True)
        (tmp_path / "P1" / "junk.dcm").write_bytes(b"not DICOM")
        async with running(tmp_path) as (archive, port):
            series = await find(port, query("SERIES", StudyInstanceUID="1.1"))
            count = await anyio.to_thread.run_sync(archive.index.count)
    assert archive.rebuilt == len(datasets) and archive.rebuild_skipped == 1
    assert count == len(datasets)
    assert len(series) == 2


async def test_not_an_index_file_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "other.sqlite"
    with sqlite3.connect(db) as con:
        con.execute("CREATE TABLE something (x)")
    from asyncdicom.qr import IndexDatabaseError

    with pytest.raises(IndexDatabaseError):
        await Archive(tmp_path / "archive", db=db).open()


# --------------------------------------------------------------------------- retrieve


async def test_get_sends_the_selected_instances_back(
    tmp_path: Path, archive_db: str | None
) -> None:
    datasets = collection()
    received = tmp_path / "received"
    with anyio.fail_after(GUARD):
        async with running(tmp_path / "archive", db=archive_db) as (_archive, port):
            await store_all(port, datasets)
            contexts = presets.retrieve_contexts(
                "get", model="study", storage=[uids.CT_IMAGE_STORAGE]
            )
            async with AE("SCU").associate(
                "127.0.0.1", port, called_aet="QRSCP", contexts=contexts
            ) as assoc:
                async with assoc.get(
                    query("SERIES", StudyInstanceUID="1.1", SeriesInstanceUID="1.1.1"),
                    model="study",
                    store=received,
                ) as retrieval:
                    await retrieval.wait()
    assert retrieval.status == 0x0000 and retrieval.completed == 2
    assert sorted(p.stem for p in received.iterdir()) == sorted(
        str(d.SOPInstanceUID) for d in datasets[:2]
    )


async def test_move_to_a_known_destination_and_to_an_unknown_one(
    tmp_path: Path, archive_db: str | None
) -> None:
    datasets = collection()
    got: list[str] = []
    destination = AE("DEST", accept_any_storage=True)

    @destination.on_store
    async def on_store(request: Any) -> int:
        got.append(request.message.affected_sop_instance_uid)
        await request.discard()
        return 0x0000

    with anyio.fail_after(GUARD):
        async with destination.server() as dest:
            async with running(
                tmp_path, destinations={"DEST": ("127.0.0.1", dest.port)}, db=archive_db
            ) as (
                _archive,
                port,
            ):
                await store_all(port, datasets)
                contexts = presets.retrieve_contexts("move", model="patient")
                async with AE("SCU").associate(
                    "127.0.0.1", port, called_aet="QRSCP", contexts=contexts
                ) as assoc:
                    async with assoc.move(
                        query("PATIENT", PatientID="P1"), destination="DEST", model="patient"
                    ) as retrieval:
                        await retrieval.wait()
                    with pytest.raises(RetrieveFailed) as unknown:
                        async with assoc.move(
                            query("PATIENT", PatientID="P1"), destination="NOWHERE",
                            model="patient",
                        ) as other:  # fmt: skip
                            await other.wait()
                    with pytest.raises(RetrieveFailed) as bad:
                        async with assoc.move(
                            query("STUDY", StudyInstanceUID="1.1"), destination="DEST",
                            model="patient",
                        ) as third:  # fmt: skip
                            await third.wait()
    assert retrieval.status == 0x0000 and retrieval.completed == 4
    assert sorted(got) == sorted(str(d.SOPInstanceUID) for d in datasets[:4])
    assert unknown.value.response.status == 0xA801
    assert bad.value.response.status == 0xA900


# --------------------------------------------------------------------------- storage commitment


async def test_commitment_checks_the_index_and_the_files(
    tmp_path: Path, archive_db: str | None
) -> None:
    """3 stored instances are committed; an unknown one fails with 0x0112, one asked for with
    another SOP class with 0x0119, one whose file is gone with 0x0112."""
    from asyncdicom.services.commitment import STORAGE_COMMITMENT

    datasets = collection()
    stored = [(str(d.SOPClassUID), str(d.SOPInstanceUID)) for d in datasets]
    unknown = (uids.CT_IMAGE_STORAGE, "1.2.826.0.1.3680043.10.404")
    conflict = (uids.MR_IMAGE_STORAGE, stored[3][1])
    gone = stored[4]
    with anyio.fail_after(GUARD):
        async with running(tmp_path / "archive", db=archive_db) as (archive, port):
            assert await store_all(port, datasets) == [0] * len(datasets)
            (path,) = [p for p in (tmp_path / "archive").rglob(f"{gone[1]}.dcm")]
            path.unlink()
            async with AE("SCU").associate(
                "127.0.0.1", port, called_aet="QRSCP", contexts=[STORAGE_COMMITMENT]
            ) as assoc:
                result = await assoc.commit([*stored[:3], unknown, conflict, gone], timeout=10)
            assert archive.commitment is not None
            assert archive.commitment.reports == [(result.transaction_uid, 2, "same")]
    assert sorted(result.committed) == sorted(stored[:3])
    assert sorted(result.failed) == sorted(
        [(*unknown, 0x0112), (*conflict, 0x0119), (*gone, 0x0112)]
    )
    assert result.reported_by == "QRSCP"


async def test_commitment_report_goes_to_the_peer_after_release(tmp_path: Path) -> None:
    """The requestor releases before the report is ready: it comes on a new association to the
    address in ``commitment_peers``."""
    from pydicom.uid import generate_uid

    from asyncdicom.services.commitment import (
        STORAGE_COMMITMENT,
        STORAGE_COMMITMENT_INSTANCE,
        awaiting_report,
        commitment_request,
    )

    datasets = collection()[:2]
    refs = [(str(d.SOPClassUID), str(d.SOPInstanceUID)) for d in datasets]
    released = anyio.Event()
    scu = AE("MODALITY", supported_contexts=presets.storage_commitment_scu_supported())
    reported = anyio.Event()  # the report's association was released
    scu.hooks.add(
        HookEvent.ASSOCIATION_RELEASED,
        lambda _e, assoc: assoc.role.name == "ACCEPTOR" and reported.set(),
    )
    transaction = generate_uid()
    ae = AE(config=qrscp_config("QRSCP"))
    with anyio.fail_after(GUARD):
        async with scu.server() as listening:
            peers = {"MODALITY": ("127.0.0.1", listening.port)}
            async with Archive(tmp_path / "archive", commitment_peers=peers) as archive:
                archive.install(ae)
                assert archive.commitment is not None
                check = archive.commitment.check

                async def after_release(references: list[tuple[str, str]]) -> Any:
                    await released.wait()
                    return await anyio.to_thread.run_sync(check, references)

                archive.commitment.check = after_release
                async with ae.server() as server:
                    await store_all(server.port, datasets)
                    with awaiting_report(scu, transaction) as pending:
                        async with scu.associate(
                            "127.0.0.1", server.port, called_aet="QRSCP",
                            contexts=[STORAGE_COMMITMENT],
                        ) as assoc:  # fmt: skip
                            info = commitment_request(transaction, [*refs, (CT[0], "1.2.3.4")])
                            rsp = await assoc.n_action(
                                STORAGE_COMMITMENT, STORAGE_COMMITMENT_INSTANCE, 1, info
                            )
                        released.set()
                        result = await pending.wait(10)
                    await reported.wait()
                assert archive.commitment.reports == [(transaction, 2, "new")]
    assert rsp.status == 0x0000
    assert sorted(result.committed) == sorted(refs)
    assert result.failed == ((CT[0], "1.2.3.4", 0x0112),)


async def test_qrscp_config_accepts_storage_commitment(tmp_path: Path) -> None:
    supported = qrscp_config("QRSCP").supported_contexts
    assert "1.2.840.10008.1.20.1" in {c.abstract_syntax for c in supported}
