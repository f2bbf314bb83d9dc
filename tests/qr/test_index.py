"""The qrscp storage index (asyncdicom.qr.index): schema and versions, adding and updating
instances, hierarchical finds in both models, SQL agreeing with the Python matcher, paths."""

from __future__ import annotations

import functools
import sqlite3
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from harness.index_backends import BACKENDS
from harness.postgres import PostgresCluster
from pydicom.dataset import Dataset

from asyncdicom.qr import (
    SCHEMA_VERSION,
    Index,
    IndexDatabaseError,
    PostgreSQLIndex,
    Query,
    SchemaVersionError,
    SQLiteIndex,
    parse_query,
)
from asyncdicom.storage.synthetic import make_ct_instance

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def header(
    patient_id: str,
    study: str,
    series: str,
    *,
    modality: str = "CT",
    study_date: str = "20240101",
    name: str = "DOE^JOHN",
    number: int = 1,
) -> Dataset:
    ds = make_ct_instance(
        0,
        patient_id=patient_id,
        study_instance_uid=study,
        series_instance_uid=series,
        instance_number=number,
    )
    del ds.PixelData
    ds.Modality = modality
    ds.StudyDate = study_date
    ds.PatientName = name
    return ds


def q(level: str, model: str = "study", **keys: object) -> Query:
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for k, v in keys.items():
        setattr(ds, k, v)
    return parse_query(ds, model)


def values(index: Index, query: Query, keyword: str) -> list[str]:
    return [str(r[keyword].value) if keyword in r else "" for r in index.find(query)]


def integrity_error(index: Index) -> type[Exception]:
    """The exception of a violated constraint on the back end of ``index``."""
    if isinstance(index, SQLiteIndex):
        return sqlite3.IntegrityError
    import psycopg

    return psycopg.errors.IntegrityError


def at_once(*calls: Callable[[], object]) -> list[BaseException]:
    """Run ``calls`` in threads released together (a barrier); the exceptions they raised."""
    start = threading.Barrier(len(calls))
    errors: list[BaseException] = []

    def run(call: Callable[[], object]) -> None:
        start.wait()
        try:
            call()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(call,)) for call in calls]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return errors


def small(new: Callable[[], Index]) -> Index:
    """P1: study 1.1 (series 1.1.1 CT x2, 1.1.2 MR), study 1.2 (US); P2: study 2.1 (CT)."""
    index = new()
    index.add(header("P1", "1.1", "1.1.1", number=1), "p1/a")
    index.add(header("P1", "1.1", "1.1.1", number=2), "p1/b")
    index.add(header("P1", "1.1", "1.1.2", modality="MR"), "p1/c")
    index.add(header("P1", "1.2", "1.2.1", modality="US", study_date="20230505"), "p1/d")
    index.add(header("P2", "2.1", "2.1.1", name="ROE^JANE"), "p2/e")
    return index


# --------------------------------------------------------------------------------------------
# schema
# --------------------------------------------------------------------------------------------


def test_schema_is_created_versioned_and_reopened(tmp_path: Path) -> None:
    db = str(tmp_path / "index.sqlite")
    with SQLiteIndex(db) as index:
        assert index.add(header("P1", "1.1", "1.1.1"), "a.dcm")
    con = sqlite3.connect(db)
    assert con.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
    assert con.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    tables = {t for (t,) in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"patient", "study", "series", "instance"} <= tables
    indexes = {i for (i,) in con.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert {"study_study_date", "patient_patient_name", "series_modality"} <= indexes
    con.close()
    with SQLiteIndex(db) as index:
        assert index.count() == 1
        assert values(
            index, q("STUDY", PatientID="P1", StudyInstanceUID=""), "StudyInstanceUID"
        ) == ["1.1"]


def test_newer_schema_version_is_a_typed_error(tmp_path: Path) -> None:
    db = str(tmp_path / "index.sqlite")
    SQLiteIndex(db).close()
    con = sqlite3.connect(db)
    con.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    con.close()
    with pytest.raises(SchemaVersionError) as info:
        SQLiteIndex(db)
    assert info.value.found == SCHEMA_VERSION + 1


def test_foreign_database_and_non_database_are_typed_errors(tmp_path: Path) -> None:
    other = tmp_path / "other.sqlite"
    con = sqlite3.connect(other)
    con.execute("CREATE TABLE t (x)")
    con.close()
    with pytest.raises(IndexDatabaseError):
        SQLiteIndex(str(other))
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"not a database at all" * 100)
    with pytest.raises(IndexDatabaseError):
        SQLiteIndex(str(junk))


# --------------------------------------------------------------------------------------------
# add
# --------------------------------------------------------------------------------------------


def test_second_add_updates_instead_of_duplicating(make_index: Callable[[], Index]) -> None:
    index = make_index()
    ds = header("P1", "1.1", "1.1.1")
    assert index.add(ds, "old.dcm") is True
    ds.InstanceNumber = 7
    assert index.add(ds, "new.dcm") is False
    assert index.count() == 1
    assert index.instances(q("STUDY", StudyInstanceUID="1.1")) == ["new.dcm"]
    found = list(
        index.find(
            q(
                "IMAGE",
                StudyInstanceUID="1.1",
                SeriesInstanceUID="1.1.1",
                SOPInstanceUID="",
                InstanceNumber="",
            )
        )
    )
    assert [r.InstanceNumber for r in found] == [7]


def test_an_updated_instance_moving_series_leaves_no_empty_rows(
    make_index: Callable[[], Index],
) -> None:
    index = make_index()
    ds = header("P1", "1.1", "1.1.1")
    index.add(ds, "a.dcm")
    ds.StudyInstanceUID = "9.9"
    ds.SeriesInstanceUID = "9.9.9"
    ds.Modality = "MR"
    assert index.add(ds, "a.dcm") is False
    assert values(index, q("STUDY", StudyInstanceUID=""), "StudyInstanceUID") == ["9.9"]
    assert values(
        index, q("STUDY", StudyInstanceUID="", ModalitiesInStudy=""), "ModalitiesInStudy"
    ) == ["MR"]


def test_parent_rows_follow_changed_attributes_and_rollbacks(
    make_index: Callable[[], Index],
) -> None:
    index = make_index()
    index.add(header("P1", "1.1", "1.1.1", number=1), "a.dcm")
    index.add(header("P1", "1.1", "1.1.1", number=2), "b.dcm")  # same parents: skipped
    assert values(
        index, q("PATIENT", "patient", PatientID="P1", PatientName=""), "PatientName"
    ) == ["DOE^JOHN"]
    index.add(header("P1", "1.1", "1.1.1", number=3, name="DOE^JOHNNY"), "c.dcm")
    assert values(
        index, q("PATIENT", "patient", PatientID="P1", PatientName=""), "PatientName"
    ) == ["DOE^JOHNNY"]
    # a batch rolled back: the rows it wrote are gone, and are written again next time
    broken = header("P2", "2.1", "2.1.1")
    with pytest.raises(integrity_error(index)):
        index.add_many([(broken, "d.dcm"), (broken, None)])  # type: ignore[list-item]
    index.add(header("P2", "2.1", "2.1.1", modality="MR"), "e.dcm")
    assert values(index, q("STUDY", PatientID="P2", StudyInstanceUID=""), "StudyInstanceUID") == [
        "2.1"
    ]
    assert values(
        index, q("STUDY", StudyInstanceUID="2.1", ModalitiesInStudy=""), "ModalitiesInStudy"
    ) == ["MR"]


def test_header_without_uids_is_rejected(make_index: Callable[[], Index]) -> None:
    index = make_index()
    ds = header("P1", "1.1", "1.1.1")
    del ds.SeriesInstanceUID
    with pytest.raises(ValueError, match="series"):
        index.add(ds, "a.dcm")
    assert index.count() == 0


def test_modalities_in_study_follow_the_series(make_index: Callable[[], Index]) -> None:
    index = small(make_index)
    studies = list(index.find(q("STUDY", StudyInstanceUID="", ModalitiesInStudy="")))
    found = [s.ModalitiesInStudy for s in studies]
    assert [[m] if isinstance(m, str) else list(m) for m in found] == [["CT", "MR"], ["US"], ["CT"]]
    assert values(
        index, q("STUDY", StudyInstanceUID="", ModalitiesInStudy="MR"), "StudyInstanceUID"
    ) == ["1.1"]
    assert values(
        index, q("STUDY", StudyInstanceUID="", ModalitiesInStudy="CT"), "StudyInstanceUID"
    ) == ["1.1", "2.1"]


# --------------------------------------------------------------------------------------------
# hierarchical finds
# --------------------------------------------------------------------------------------------


def test_patient_root_levels(make_index: Callable[[], Index]) -> None:
    index = small(make_index)
    patients = list(index.find(q("PATIENT", "patient", PatientID="", PatientName="")))
    assert [(p.PatientID, str(p.PatientName)) for p in patients] == [
        ("P1", "DOE^JOHN"),
        ("P2", "ROE^JANE"),
    ]
    assert all(p.QueryRetrieveLevel == "PATIENT" for p in patients)
    assert "StudyInstanceUID" not in patients[0]
    studies = q("STUDY", "patient", PatientID="P1", StudyInstanceUID="", StudyDate="")
    assert values(index, studies, "StudyInstanceUID") == ["1.1", "1.2"]
    series = q(
        "SERIES",
        "patient",
        PatientID="P1",
        StudyInstanceUID="1.1",
        SeriesInstanceUID="",
        Modality="",
    )
    assert values(index, series, "Modality") == ["CT", "MR"]
    images = q(
        "IMAGE",
        "patient",
        PatientID="P1",
        StudyInstanceUID="1.1",
        SeriesInstanceUID="1.1.1",
        SOPInstanceUID="",
        InstanceNumber="",
    )
    assert values(index, images, "InstanceNumber") == ["1", "2"]
    # the patient ID of another patient finds nothing below it
    assert (
        values(
            index, q("STUDY", "patient", PatientID="P2", StudyInstanceUID="1.1"), "StudyInstanceUID"
        )
        == []
    )


def test_study_root_records_carry_the_levels_above(make_index: Callable[[], Index]) -> None:
    index = small(make_index)
    found = list(
        index.find(q("STUDY", StudyInstanceUID="", PatientName="ROE*", PatientID="", StudyDate=""))
    )
    assert len(found) == 1
    assert (found[0].PatientID, found[0].StudyInstanceUID, found[0].StudyDate) == (
        "P2",
        "2.1",
        "20240101",
    )
    series = list(
        index.find(
            q(
                "SERIES",
                StudyInstanceUID="1.1",
                SeriesInstanceUID="",
                PatientID="",
                StudyDescription="",
            )
        )
    )
    assert [(s.PatientID, s.StudyDescription) for s in series] == [("P1", "Synthetic CT")] * 2
    # the unique key of a lower level is not matched (the query says it ignored it) ...
    below = q("STUDY", StudyInstanceUID="", SOPInstanceUID="x")
    assert below.ignored == (0x00080018,)
    assert values(index, below, "StudyInstanceUID") == ["1.1", "1.2", "2.1"]
    # ... another key of a lower level than the query's matches only universally
    assert (
        values(index, q("STUDY", StudyInstanceUID="", InstanceNumber="7"), "StudyInstanceUID") == []
    )
    # patient/study only model
    assert values(index, q("PATIENT", "patient-study", PatientID="P*"), "PatientID") == ["P1", "P2"]


def test_residual_keys_are_matched_in_python(make_index: Callable[[], Index]) -> None:
    index = small(make_index)
    # Series Description has no column: the record's value decides
    assert (
        len(list(index.find(q("SERIES", StudyInstanceUID="1.1", SeriesDescription="Synthetic*"))))
        == 2
    )
    assert list(index.find(q("SERIES", StudyInstanceUID="1.1", SeriesDescription="nope"))) == []
    assert values(index, q("PATIENT", "patient", PatientID="", PatientSex="O"), "PatientID") == [
        "P1",
        "P2",
    ]


# --------------------------------------------------------------------------------------------
# SQL + Python agree with the Python matcher alone
# --------------------------------------------------------------------------------------------


def _synthetic(n: int = 50) -> list[Dataset]:
    """~17 studies of 7 patients, 2 series each, varied names, dates, modalities."""
    names = ["DOE^JOHN", "DOE^JANE", "ROE^RICHARD", "O'NEIL^A", "doe^john", "MÜLLER^K"]
    modalities = ["CT", "MR", "US", "CR"]
    out = []
    for i in range(n):
        s = i // 3
        p = s % 7
        ds = header(
            f"PID{p}" if p != 3 else "P_3%",
            f"1.2.{s}",
            f"1.2.{s}.{i % 2}",
            modality=modalities[(s + i % 2) % 4],
            study_date=f"20{10 + s % 12:02d}0{1 + s % 9}15",
            name=names[p % len(names)],
            number=i,
        )
        ds.AccessionNumber = f"ACC{s}"
        out.append(ds)
    return out


@pytest.fixture(scope="module", params=BACKENDS)
def synthetic_index(request: pytest.FixtureRequest) -> Iterator[tuple[Index, list[Dataset]]]:
    """One index of each back end holding ``_synthetic()``, shared by the read-only query
    tests of this module (each only queries it), and its headers."""
    headers = _synthetic()
    cluster: PostgresCluster | None = None
    url = ""
    index: Index
    if request.param == "sqlite":
        index = SQLiteIndex(":memory:")
    else:
        cluster = request.getfixturevalue("postgres_cluster")
        url = cluster.database()
        index = PostgreSQLIndex(url, pool_size=4)
    for n, h in enumerate(headers):
        index.add(h, f"f{n}")
    yield index, headers
    index.close()
    if cluster is not None:
        cluster.drop(url)


QUERIES = [
    {"PatientID": "PID1"},
    {"PatientID": "PID*"},
    {"PatientID": "P?D2"},
    {"PatientID": "P_3%"},
    {"PatientID": "P_*"},
    {"PatientName": "DOE*"},
    {"PatientName": "*'*"},
    {"PatientName": "M?LLER^K"},
    {"StudyDate": "20150101-20181231"},
    {"StudyDate": "-20120101"},
    {"StudyDate": "20200101-"},
    {"StudyInstanceUID": "1.2.1\\1.2.5\\1.2.99"},
    {"AccessionNumber": "ACC1*"},
    {"ModalitiesInStudy": "MR"},
    {"ModalitiesInStudy": "U?"},
    {"ModalitiesInStudy": "CR\\US"},
    {"PatientID": "PID2", "StudyDate": "20100101-20301231"},
    {"PatientID": ""},
]


def _records(headers: list[Dataset], level: str) -> dict[str, Dataset]:
    """The entities of ``headers`` at ``level`` as the Python matcher sees them: unique key ->
    the attributes of the entity's last header, Modalities in Study computed."""
    key = {
        "PATIENT": "PatientID",
        "STUDY": "StudyInstanceUID",
        "SERIES": "SeriesInstanceUID",
        "IMAGE": "SOPInstanceUID",
    }[level]
    last: dict[str, Dataset] = {}
    mods: dict[str, set[str]] = {}
    for h in headers:
        last[str(h.data_element(key).value)] = h
        mods.setdefault(h.StudyInstanceUID, set()).add(h.Modality)
    result = {}
    for k, h in last.items():
        rec = Dataset()
        rec.update(h)
        if level != "PATIENT":
            rec.ModalitiesInStudy = sorted(mods[h.StudyInstanceUID])
        result[k] = rec
    return result


def _studies(*numbers: int) -> list[str]:
    return sorted(f"1.2.{s}" for s in numbers)


_ALL_STUDIES = range(17)
#: what each query of QUERIES selects from _synthetic(), worked out by hand from how it is
#: built (study s: patient p = s % 7, "P_3%" for p = 3, names[p % 6]; date 20YY0M15 with
#: YY = 10 + s % 12, M = 1 + s % 9; modalities CT/MR, MR/US, US/CR, CR/CT for s % 4 = 0..3;
#: accession ACC<s>), not by the matcher: STUDY level (the study numbers), PATIENT level for
#: the patient keys (the Patient IDs)
HAND_WRITTEN: dict[str, tuple[list[str], list[str] | None]] = {
    "PatientID=PID1": (_studies(1, 8, 15), ["PID1"]),
    "PatientID=PID*": (
        _studies(*(s for s in _ALL_STUDIES if s not in (3, 10))),
        ["PID0", "PID1", "PID2", "PID4", "PID5", "PID6"],
    ),
    "PatientID=P?D2": (_studies(2, 9, 16), ["PID2"]),
    "PatientID=P_3%": (_studies(3, 10), ["P_3%"]),  # _ and % are no wild cards
    "PatientID=P_*": (_studies(3, 10), ["P_3%"]),
    # case-sensitive: doe^john (patient 4) is not DOE*
    "PatientName=DOE*": (_studies(0, 1, 6, 7, 8, 13, 14, 15), ["PID0", "PID1", "PID6"]),
    "PatientName=*'*": (_studies(3, 10), ["P_3%"]),
    "PatientName=M?LLER^K": (_studies(5, 12), ["PID5"]),  # ? is one character: Ü
    "StudyDate=20150101-20181231": (_studies(5, 6, 7, 8), None),
    "StudyDate=-20120101": (_studies(0, 1, 12, 13), None),
    "StudyDate=20200101-": (_studies(10, 11), None),
    "StudyInstanceUID=1.2.1\\1.2.5\\1.2.99": (_studies(1, 5), None),
    "AccessionNumber=ACC1*": (_studies(1, 10, 11, 12, 13, 14, 15, 16), None),
    "ModalitiesInStudy=MR": (_studies(0, 1, 4, 5, 8, 9, 12, 13, 16), None),
    "ModalitiesInStudy=U?": (_studies(1, 2, 5, 6, 9, 10, 13, 14), None),
    "ModalitiesInStudy=CR\\US": (_studies(*(s for s in _ALL_STUDIES if s % 4)), None),
    "PatientID=PID2,StudyDate=20100101-20301231": (_studies(2, 9, 16), ["PID2"]),
    "PatientID=": (
        _studies(*_ALL_STUDIES),
        ["PID0", "PID1", "PID2", "PID4", "PID5", "PID6", "P_3%"],
    ),
}


def _query_id(keys: dict[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in keys.items())


def test_every_comparison_query_has_a_hand_written_answer() -> None:
    assert sorted(HAND_WRITTEN) == sorted(_query_id(k) for k in QUERIES)


@pytest.mark.parametrize("keys", QUERIES, ids=[str(k) for k in QUERIES])
def test_index_gives_the_hand_written_answers(
    keys: dict[str, str], synthetic_index: tuple[Index, list[Dataset]]
) -> None:
    index, headers = synthetic_index
    studies, patients = HAND_WRITTEN[_query_id(keys)]
    query = q("STUDY", **{"StudyInstanceUID": "", **keys})
    assert sorted(values(index, query, "StudyInstanceUID")) == studies
    assert sorted(k for k, rec in _records(headers, "STUDY").items() if query.matches(rec)) == (
        studies
    )
    patient_keys = {k: v for k, v in keys.items() if k in ("PatientID", "PatientName")}
    assert (patients is None) == (not patient_keys)
    if patient_keys:
        pq = q("PATIENT", "patient", **{"PatientID": "", **patient_keys})
        assert sorted(values(index, pq, "PatientID")) == patients


@pytest.mark.parametrize("keys", QUERIES, ids=[str(k) for k in QUERIES])
def test_index_agrees_with_the_python_matcher(
    keys: dict[str, str], synthetic_index: tuple[Index, list[Dataset]]
) -> None:
    index, headers = synthetic_index
    query = q("STUDY", **{"StudyInstanceUID": "", **keys})
    expected = sorted(k for k, rec in _records(headers, "STUDY").items() if query.matches(rec))
    assert expected  # every query selects something
    assert sorted(values(index, query, "StudyInstanceUID")) == expected
    # and the same at PATIENT level for the patient keys
    patient_keys = {k: v for k, v in keys.items() if k in ("PatientID", "PatientName")}
    if patient_keys:
        pq = q("PATIENT", "patient", **{"PatientID": "", **patient_keys})
        expected_p = sorted(k for k, rec in _records(headers, "PATIENT").items() if pq.matches(rec))
        assert sorted(values(index, pq, "PatientID")) == expected_p


#: the series each query selects in studies 1.2.0 and 1.2.5, by hand: study 0 has series .0 (CT)
#: and .1 (MR), study 5 series .0 (MR) and .1 (US); every series is number 1
SERIES_QUERIES: list[tuple[dict[str, str], dict[str, list[str]]]] = [
    ({"Modality": "MR"}, {"1.2.0": ["1.2.0.1"], "1.2.5": ["1.2.5.0"]}),
    ({"Modality": "?R"}, {"1.2.0": ["1.2.0.1"], "1.2.5": ["1.2.5.0"]}),
    ({"Modality": "CT\\US"}, {"1.2.0": ["1.2.0.0"], "1.2.5": ["1.2.5.1"]}),
    ({"SeriesNumber": "1"}, {"1.2.0": ["1.2.0.0", "1.2.0.1"], "1.2.5": ["1.2.5.0", "1.2.5.1"]}),
]


@pytest.mark.parametrize(
    ("keys", "answers"), SERIES_QUERIES, ids=[str(k) for k, _ in SERIES_QUERIES]
)
def test_series_level_agrees_with_the_python_matcher(
    keys: dict[str, str],
    answers: dict[str, list[str]],
    synthetic_index: tuple[Index, list[Dataset]],
) -> None:
    index, headers = synthetic_index
    for study in ("1.2.0", "1.2.5"):
        query = q("SERIES", StudyInstanceUID=study, SeriesInstanceUID="", **keys)
        expected = sorted(k for k, rec in _records(headers, "SERIES").items() if query.matches(rec))
        assert sorted(values(index, query, "SeriesInstanceUID")) == expected
        assert expected == answers[study]  # and both give the hand-written answer


# --------------------------------------------------------------------------------------------
# computed return keys: Number of ... Related ..., SOP Classes in Study
# --------------------------------------------------------------------------------------------

MR_IMAGE = "1.2.840.10008.5.1.4.1.1.4"
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
COUNT_KEYWORDS = (
    "NumberOfPatientRelatedStudies",
    "NumberOfPatientRelatedSeries",
    "NumberOfPatientRelatedInstances",
    "NumberOfStudyRelatedSeries",
    "NumberOfStudyRelatedInstances",
    "NumberOfSeriesRelatedInstances",
    "SOPClassesInStudy",
)


def counted(new: Callable[[], Index]) -> Index:
    """small(), with the MR instance of series 1.1.2 an MR Image."""
    index = new()
    index.add(header("P1", "1.1", "1.1.1", number=1), "p1/a")
    index.add(header("P1", "1.1", "1.1.1", number=2), "p1/b")
    mr = header("P1", "1.1", "1.1.2", modality="MR")
    mr.SOPClassUID = MR_IMAGE
    index.add(mr, "p1/c")
    index.add(header("P1", "1.2", "1.2.1", modality="US", study_date="20230505"), "p1/d")
    index.add(header("P2", "2.1", "2.1.1", name="ROE^JANE"), "p2/e")
    return index


def table(index: Index, query: Query, *keywords: str) -> list[tuple[object, ...]]:
    """One tuple per response: each keyword's value (int for IS, list for several values, None
    for zero length)."""
    rows = []
    for r in index.find(query):
        row: list[object] = []
        for k in keywords:
            value = r[k].value if k in r else "absent"
            if r[k].VR == "IS" and value is not None:
                value = int(value)
            elif r[k].VR == "UI" and value is not None and not isinstance(value, str):
                value = list(value)
            row.append(value)
        rows.append(tuple(row))
    return rows


def test_count_keys_are_computed_at_each_level(make_index: Callable[[], Index]) -> None:
    index = counted(make_index)
    patient_counts = (
        "NumberOfPatientRelatedStudies",
        "NumberOfPatientRelatedSeries",
        "NumberOfPatientRelatedInstances",
    )
    patients = q("PATIENT", "patient", PatientID="", **dict.fromkeys(patient_counts, ""))
    assert table(index, patients, "PatientID", *patient_counts) == [
        ("P1", 2, 3, 4),
        ("P2", 1, 1, 1),
    ]
    study_keys = (
        "NumberOfStudyRelatedSeries",
        "NumberOfStudyRelatedInstances",
        "SOPClassesInStudy",
    )
    studies = q("STUDY", StudyInstanceUID="", **dict.fromkeys(study_keys, ""))
    assert table(index, studies, "StudyInstanceUID", *study_keys) == [
        ("1.1", 2, 3, [CT_IMAGE, MR_IMAGE]),
        ("1.2", 1, 1, CT_IMAGE),
        ("2.1", 1, 1, CT_IMAGE),
    ]
    # a Study Root STUDY record carries the patient's attributes, counts included
    studies = q("STUDY", PatientID="P1", StudyInstanceUID="", NumberOfPatientRelatedStudies="")
    assert table(index, studies, "StudyInstanceUID", "NumberOfPatientRelatedStudies") == [
        ("1.1", 2),
        ("1.2", 2),
    ]
    series = q(
        "SERIES",
        "patient",
        PatientID="P1",
        StudyInstanceUID="1.1",
        SeriesInstanceUID="",
        NumberOfSeriesRelatedInstances="",
        NumberOfStudyRelatedInstances="",
    )
    assert table(
        index,
        series,
        "SeriesInstanceUID",
        "NumberOfSeriesRelatedInstances",
        "NumberOfStudyRelatedInstances",
    ) == [("1.1.1", 2, 3), ("1.1.2", 1, 3)]
    # a key of a level below the query's is returned empty, as any other
    below = q("STUDY", StudyInstanceUID="1.2", NumberOfSeriesRelatedInstances="")
    assert table(index, below, "NumberOfSeriesRelatedInstances") == [(None,)]


def test_count_keys_are_returned_only_when_requested(make_index: Callable[[], Index]) -> None:
    index = counted(make_index)
    for query in (
        q("PATIENT", "patient", PatientID="", NumberOfPatientRelatedStudies=""),
        q("STUDY", StudyInstanceUID="", NumberOfStudyRelatedSeries="", PatientName=""),
        q("SERIES", StudyInstanceUID="1.1", SeriesInstanceUID=""),
    ):
        requested = {e.keyword for e in query.identifier}
        for response in index.find(query):
            returned = {e.keyword for e in response if e.keyword in COUNT_KEYWORDS}
            assert returned == requested & set(COUNT_KEYWORDS)
            # and the records used for matching carry only the requested ones too
        for record in index.records(query):
            assert {e.keyword for e in record if e.keyword in COUNT_KEYWORDS} <= requested
    assert table(
        index, q("STUDY", StudyInstanceUID="1.1", NumberOfStudyRelatedSeries=""),
        "NumberOfStudyRelatedSeries",
    ) == [(2,)]  # fmt: skip


def test_count_keys_with_a_value_match_exactly(make_index: Callable[[], Index]) -> None:
    index = counted(make_index)
    assert values(
        index,
        q("STUDY", StudyInstanceUID="", NumberOfStudyRelatedInstances="3"),
        "StudyInstanceUID",
    ) == ["1.1"]
    assert values(
        index, q("STUDY", StudyInstanceUID="", NumberOfStudyRelatedSeries="1"), "StudyInstanceUID"
    ) == ["1.2", "2.1"]
    assert values(
        index, q("STUDY", StudyInstanceUID="", SOPClassesInStudy=MR_IMAGE), "StudyInstanceUID"
    ) == ["1.1"]
    assert values(
        index,
        q("PATIENT", "patient", PatientID="", NumberOfPatientRelatedInstances=["1", "4"]),
        "PatientID",
    ) == ["P1", "P2"]
    assert (
        values(
            index,
            q("SERIES", StudyInstanceUID="1.1", NumberOfSeriesRelatedInstances="7"),
            "SeriesInstanceUID",
        )
        == []
    )


def test_count_keys_follow_updates_and_ignore_the_headers_values(
    make_index: Callable[[], Index],
) -> None:
    index = counted(make_index)
    ds = header("P2", "2.1", "2.1.1", name="ROE^JANE", number=2)
    ds.NumberOfSeriesRelatedInstances = 99  # a stale value in a header is not answered
    ds.SOPClassesInStudy = ["9.9"]
    index.add(ds, "p2/f")
    image = q(
        "IMAGE",
        StudyInstanceUID="2.1",
        SeriesInstanceUID="2.1.1",
        SOPInstanceUID=ds.SOPInstanceUID,
        NumberOfSeriesRelatedInstances="",
        SOPClassesInStudy="",
    )
    assert table(index, image, "NumberOfSeriesRelatedInstances", "SOPClassesInStudy") == [
        (2, CT_IMAGE)
    ]
    patients = q(
        "PATIENT",
        "patient",
        PatientID="",
        NumberOfPatientRelatedStudies="",
        NumberOfPatientRelatedInstances="",
    )
    assert table(
        index,
        patients,
        "PatientID",
        "NumberOfPatientRelatedStudies",
        "NumberOfPatientRelatedInstances",
    ) == [
        ("P1", 2, 4),
        ("P2", 1, 2),
    ]
    # the instance moves to a new study of P1: both patients' counts follow
    ds.PatientID = "P1"
    ds.StudyInstanceUID = "1.3"
    ds.SeriesInstanceUID = "1.3.1"
    assert index.add(ds, "p1/f") is False
    assert table(
        index,
        patients,
        "PatientID",
        "NumberOfPatientRelatedStudies",
        "NumberOfPatientRelatedInstances",
    ) == [
        ("P1", 3, 5),
        ("P2", 1, 1),
    ]


# --------------------------------------------------------------------------------------------
# instances, hostile values, threads
# --------------------------------------------------------------------------------------------


def test_instances_under_the_matching_entities(make_index: Callable[[], Index]) -> None:
    index = small(make_index)
    assert index.instances(q("PATIENT", "patient", PatientID="P1")) == [
        "p1/a",
        "p1/b",
        "p1/c",
        "p1/d",
    ]
    assert index.instances(q("STUDY", StudyInstanceUID="1.1\\2.1")) == [
        "p1/a",
        "p1/b",
        "p1/c",
        "p2/e",
    ]
    assert index.instances(q("STUDY", StudyDate="20230101-20231231")) == ["p1/d"]
    assert index.instances(q("SERIES", StudyInstanceUID="1.1", Modality="CT")) == ["p1/a", "p1/b"]
    image = q("IMAGE", StudyInstanceUID="1.1", SeriesInstanceUID="1.1.1", InstanceNumber="2")
    assert index.instances(image) == ["p1/b"]
    assert index.instances(q("STUDY", StudyInstanceUID="9.9")) == []


def test_hostile_values_are_stored_and_queried_exactly(make_index: Callable[[], Index]) -> None:
    index = make_index()
    hostile = "x'); DROP TABLE study;--"
    index.add(header("P%_!'1", "1.1", "1.1.1", name="O'BRIEN^%_"), "a")
    ds = header("P%_!'1", "1.2", "1.2.1", name="O'BRIEN^%_")
    ds.StudyDescription = hostile
    index.add(ds, "b")
    index.add(header("PX__1", "1.3", "1.3.1", name="OXBRIEN^ab"), "c")
    assert values(index, q("PATIENT", "patient", PatientID="P%_!'1"), "PatientID") == ["P%_!'1"]
    assert values(index, q("PATIENT", "patient", PatientID="P%*"), "PatientID") == ["P%_!'1"]
    assert values(index, q("PATIENT", "patient", PatientID="P_*"), "PatientID") == []
    assert values(
        index, q("PATIENT", "patient", PatientID="", PatientName="O'BRIEN^%_"), "PatientID"
    ) == ["P%_!'1"]
    assert values(
        index, q("PATIENT", "patient", PatientID="", PatientName="O?BRIEN^*"), "PatientID"
    ) == ["P%_!'1", "PX__1"]
    assert values(
        index, q("STUDY", StudyInstanceUID="", StudyDescription=hostile), "StudyInstanceUID"
    ) == ["1.2"]
    assert index.count() == 3


def test_concurrent_adds_and_finds_from_threads(make_index: Callable[[], Index]) -> None:
    index = make_index()
    errors: list[BaseException] = []

    def work(t: int) -> None:
        try:
            for i in range(20):
                index.add(header(f"T{t}", f"{t}.{i}", f"{t}.{i}.1"), f"{t}/{i}")
                list(index.find(q("STUDY", StudyInstanceUID="", PatientID=f"T{t}")))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert index.count() == 80


def test_lookup_instances(make_index: Callable[[], Index]) -> None:
    index = small(make_index)
    sop = [
        r.SOPInstanceUID
        for r in index.records(
            q("IMAGE", StudyInstanceUID="1.1", SeriesInstanceUID="1.1.1", SOPInstanceUID="")
        )
    ]
    found = index.lookup_instances([*sop, "9.9.9"])
    assert set(found) == set(sop)
    assert {path for _cls, path in found.values()} == {"p1/a", "p1/b"}
    assert {cls for cls, _path in found.values()} == {"1.2.840.10008.5.1.4.1.1.2"}
    assert index.lookup_instances([]) == {}


def test_processes_opening_one_new_file_at_once_get_one_schema(tmp_path: Path) -> None:
    """The workers of one server open the same new index at the same moment: one creates the
    schema, the others find it (each here is its own connection, as each process has)."""
    for attempt in range(30):  # the races below show in about 1 of 75 tries
        path = str(tmp_path / f"index-{attempt}.sqlite")

        def open_it(path: str = path) -> None:
            SQLiteIndex(path).close()

        assert at_once(*[open_it] * 4) == []
        with SQLiteIndex(path) as index:
            assert index.count() == 0


# --------------------------------------------------------------------------------------------
# PostgreSQL: schema, versions, several nodes on one database
# --------------------------------------------------------------------------------------------


def _pg_tables(url: str) -> set[str]:
    import psycopg

    with psycopg.connect(url) as con:
        rows = con.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
        ).fetchall()
    return {name for (name,) in rows}


@pytest.mark.requires_peer("postgresql")
def test_postgresql_schema_is_created_versioned_and_reopened(postgres_url: str) -> None:
    import psycopg

    with PostgreSQLIndex(postgres_url) as index:
        assert index.created
        assert index.add(header("P1", "1.1", "1.1.1"), "a.dcm")
    assert {"patient", "study", "series", "instance", "asyncdicom_schema"} <= _pg_tables(
        postgres_url
    )
    with psycopg.connect(postgres_url) as con:
        assert con.execute("SELECT version FROM asyncdicom_schema").fetchall() == [
            (SCHEMA_VERSION,)
        ]
        indexes = {n for (n,) in con.execute("SELECT indexname FROM pg_indexes").fetchall()}
        # text compared byte by byte (as SQLite does), whatever the database's locale
        collations = con.execute(
            "SELECT DISTINCT collation_name FROM information_schema.columns "
            "WHERE table_name IN ('patient', 'study', 'series', 'instance') "
            "AND data_type = 'text'"
        ).fetchall()
    assert collations == [("C",)]
    assert {"study_study_date", "patient_patient_name", "series_modality"} <= indexes
    with PostgreSQLIndex(postgres_url) as index:
        assert not index.created
        assert index.count() == 1
        assert values(
            index, q("STUDY", PatientID="P1", StudyInstanceUID=""), "StudyInstanceUID"
        ) == ["1.1"]


@pytest.mark.requires_peer("postgresql")
def test_postgresql_newer_schema_and_foreign_database_are_typed_errors(
    postgres_cluster: PostgresCluster,
) -> None:
    import psycopg

    url = postgres_cluster.database()
    PostgreSQLIndex(url).close()
    with psycopg.connect(url) as con:
        con.execute("UPDATE asyncdicom_schema SET version = %s", (SCHEMA_VERSION + 1,))
    with pytest.raises(SchemaVersionError) as info:
        PostgreSQLIndex(url)
    assert info.value.found == SCHEMA_VERSION + 1
    other = postgres_cluster.database()
    with psycopg.connect(other) as con:
        con.execute("CREATE TABLE t (x integer)")
    with pytest.raises(IndexDatabaseError, match="other tables"):
        PostgreSQLIndex(other)
    assert _pg_tables(other) == {"t"}  # left as it was
    unreachable = postgres_cluster.url("no_such_database")
    with pytest.raises(IndexDatabaseError, match="cannot open"):
        PostgreSQLIndex(unreachable, timeout=5)


@pytest.mark.requires_peer("postgresql")
def test_postgresql_nodes_opening_one_empty_database_at_once_get_one_schema(
    postgres_url: str,
) -> None:
    created: list[bool] = []

    def open_it() -> None:
        with PostgreSQLIndex(postgres_url, pool_size=1) as index:
            created.append(index.created)

    assert at_once(*[open_it] * 4) == []
    assert sorted(created) == [False, False, False, True]


def _row_counts(url: str) -> dict[str, int]:
    import psycopg

    with psycopg.connect(url) as con:
        return {
            table: con.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
            for table in ("patient", "study", "series", "instance")
        }


@pytest.mark.requires_peer("postgresql")
def test_postgresql_two_nodes_writing_at_once_give_one_row_each(postgres_url: str) -> None:
    """Two index objects on one database, as two archive nodes: the same instance stored
    through both at once, and two instances of one new study arriving at both at once, give
    one patient, study and series row each (and Modalities in Study has both series)."""
    nodes = [PostgreSQLIndex(postgres_url, pool_size=2) for _ in range(2)]

    def store(node: PostgreSQLIndex, batch: list[tuple[Dataset, str]]) -> None:
        for item in batch:  # one transaction each, as instances arriving one by one
            node.add_many([item])

    try:
        for round_ in range(10):
            study = f"7.{round_}"
            same = header(f"P{round_}", study, f"{study}.1", number=1)
            other = header(f"P{round_}", study, f"{study}.2", number=2, modality="MR")
            # node 0 gets the instance and the MR one; node 1 the same instance again
            batches = [[(same, f"n0/{round_}"), (other, f"n0/{round_}b")], [(same, f"n1/{round_}")]]
            calls = [functools.partial(store, n, b) for n, b in zip(nodes, batches, strict=True)]
            assert at_once(*calls) == []
            query = q("STUDY", StudyInstanceUID=study, ModalitiesInStudy="")
            for node in nodes:
                (found,) = node.find(query)
                assert list(found.ModalitiesInStudy) == ["CT", "MR"]
                assert len(node.instances(q("STUDY", StudyInstanceUID=study))) == 2
        assert _row_counts(postgres_url) == {
            "patient": 10,
            "study": 10,
            "series": 20,
            "instance": 20,
        }
    finally:
        for node in nodes:
            node.close()


@pytest.mark.requires_peer("postgresql")
def test_postgresql_concurrent_batches_of_one_new_study(postgres_url: str) -> None:
    """Batches of instances of the same new studies committed by several nodes at once, in
    opposite orders (the row locks would deadlock if taken in the batches' order): every
    instance indexed once, one row per patient, study and series."""
    nodes = [PostgreSQLIndex(postgres_url, pool_size=2) for _ in range(3)]
    headers = [
        header(f"Q{s % 2}", f"8.{s}", f"8.{s}.{r % 2}", number=r, modality="CT" if r % 2 else "MR")
        for s in range(4)
        for r in range(6)
    ]

    def store(n: int, node: PostgreSQLIndex) -> None:
        mine = [(h, f"node{n}/{i}") for i, h in enumerate(headers) if i % 3 == n]
        if n % 2:
            mine.reverse()
        for _ in range(3):  # and again: the same instances, stored again
            node.add_many(mine)

    try:
        assert at_once(*(functools.partial(store, n, node) for n, node in enumerate(nodes))) == []
        assert _row_counts(postgres_url) == {
            "patient": 2,
            "study": 4,
            "series": 8,
            "instance": 24,
        }
        studies = list(nodes[0].find(q("STUDY", StudyInstanceUID="", ModalitiesInStudy="")))
        assert [list(s.ModalitiesInStudy) for s in studies] == [["CT", "MR"]] * 4
    finally:
        for node in nodes:
            node.close()
