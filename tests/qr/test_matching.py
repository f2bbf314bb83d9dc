"""C-FIND matching engine (asyncdicom.qr): identifier validation, PS3.4 C.2.2.2 matching rules,
response identifiers, and the SQL translation checked against sqlite3 and the Python matcher."""

from __future__ import annotations

import sqlite3
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset

from asyncdicom.protocol import uids
from asyncdicom.qr import (
    INDEX_COLUMNS,
    IdentifierMismatch,
    ModelNotSupported,
    QueryError,
    UnableToProcess,
    index_value,
    match_value,
    parse_query,
    sql_filter,
)

# the tests build identifiers with values pydicom's validation frowns upon ("*" in a UI, ...)
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def key(keyword: str, value: object) -> DataElement:
    ds = Dataset()
    setattr(ds, keyword, value)
    return ds[keyword]


def m(keyword: str, query: object, stored: object, **kw: bool) -> bool:
    return match_value(
        key(keyword, query), key(keyword, stored) if stored is not None else None, **kw
    )


def ident(level: str | None, **keys: object) -> Dataset:
    ds = Dataset()
    if level is not None:
        ds.QueryRetrieveLevel = level
    for k, v in keys.items():
        setattr(ds, k, v)
    return ds


# --------------------------------------------------------------------------------------------
# identifier validation
# --------------------------------------------------------------------------------------------


def test_missing_level_is_identifier_mismatch() -> None:
    with pytest.raises(IdentifierMismatch) as info:
        parse_query(ident(None, PatientID=""), "patient")
    assert info.value.status == 0xA900
    assert info.value.tag == 0x00080052


@pytest.mark.parametrize("level", ["FOO", "", "study", "PATIENT\\STUDY"])
def test_unknown_level_is_identifier_mismatch(level: str) -> None:
    with pytest.raises(IdentifierMismatch):
        parse_query(ident(level), "patient")


@pytest.mark.parametrize(
    ("model", "good", "bad"),
    [
        ("patient", ["PATIENT", "STUDY", "SERIES", "IMAGE"], []),
        ("study", ["STUDY", "SERIES", "IMAGE"], ["PATIENT"]),
        ("patient-study", ["PATIENT", "STUDY"], ["SERIES", "IMAGE"]),
    ],
)
def test_levels_of_each_model(model: str, good: list[str], bad: list[str]) -> None:
    full = {
        "PatientID": "P1",
        "StudyInstanceUID": "1.2",
        "SeriesInstanceUID": "1.2.3",
    }
    for level in good:
        assert parse_query(ident(level, **full), model).level == level
    for level in bad:
        with pytest.raises(IdentifierMismatch, match="not part"):
            parse_query(ident(level, **full), model)


def test_model_by_uid_and_unknown_model() -> None:
    assert parse_query(ident("STUDY"), uids.STUDY_ROOT_QR_MOVE).model == "study"
    assert parse_query(ident("PATIENT"), uids.PATIENT_ROOT_QR_FIND).model == "patient"
    with pytest.raises(ModelNotSupported) as info:
        parse_query(ident("STUDY"), "1.2.3.4")
    assert info.value.status == 0x0122


def test_unique_keys_above_the_level_are_required_and_single() -> None:
    with pytest.raises(IdentifierMismatch) as info:
        parse_query(ident("SERIES", PatientID="P1"), "patient")
    assert info.value.tag == 0x0020000D
    with pytest.raises(IdentifierMismatch):
        parse_query(ident("STUDY", PatientID="P*"), "patient")
    with pytest.raises(IdentifierMismatch):
        parse_query(ident("STUDY", PatientID=""), "patient")
    with pytest.raises(IdentifierMismatch):
        parse_query(ident("SERIES", StudyInstanceUID="1.2\\1.3"), "study")
    q = parse_query(ident("SERIES", StudyInstanceUID="1.2 "), "study")
    assert dict(q.above) == {0x0020000D: "1.2"}
    # at the query level itself, lists and universal matching are fine
    parse_query(ident("STUDY", StudyInstanceUID="1.2\\1.3"), "study")


def test_error_comment_fits_lo() -> None:
    err = UnableToProcess("x" * 200)
    assert len(err.error_comment) == 64 and isinstance(err, ValueError)


# --------------------------------------------------------------------------------------------
# single value, universal, wild card
# --------------------------------------------------------------------------------------------


def test_single_value_is_exact_and_case_sensitive() -> None:
    assert m("PatientID", "ABC", "ABC")
    assert not m("PatientID", "ABC", "abc")
    assert not m("PatientID", "ABC", "ABCD")
    assert not m("PatientID", "AB", "ABC")


def test_padding_is_not_significant() -> None:
    assert m("PatientID", " ABC ", "ABC")  # LO: leading and trailing
    assert m("Modality", "CT ", " CT")  # CS
    assert m("PatientName", "DOE^J ", "DOE^J")  # PN: trailing
    assert not m("PatientName", " DOE^J", "DOE^J")  # PN: leading spaces count
    assert m("StudyInstanceUID", "1.2.3\0", "1.2.3")  # UI: trailing NUL


def test_universal_matching_includes_missing_values() -> None:
    assert m("PatientID", "", "X")
    assert m("PatientID", "", None)
    assert m("PatientID", "*", None)
    assert m("StudyDate", "", None)
    assert m("StudyInstanceUID", "*", "1.2")
    assert not m("PatientID", "X", None)
    assert not m("PatientID", "X*", "")


def test_wildcards() -> None:
    assert m("PatientName", "DOE*", "DOE^JOHN")
    assert m("PatientName", "*JOHN", "DOE^JOHN")
    assert m("PatientName", "D?E*", "DOE^JOHN")
    assert not m("PatientName", "D?E", "DOOE")
    assert m("PatientID", "???", "ABC")
    assert not m("PatientID", "???", "AB")
    assert not m("PatientID", "???", "ABCD")
    assert m("PatientID", "A*B*C", "AxxBxxC")
    assert not m("PatientID", "A*B*C", "AxxBxxCx")
    assert m("PatientID", "**", "")  # only "*": universal, like "*"
    assert not m("PatientID", "*?", "")
    assert m("StudyDescription", "*brain*", "MR brain w/o")
    assert not m("StudyDescription", "*BRAIN*", "MR brain w/o")


def test_wildcards_are_literal_for_uids() -> None:
    assert not m("StudyInstanceUID", "1.2.*", "1.2.3")
    assert m("StudyInstanceUID", "1.2.?", "1.2.?")


def test_pn_case_insensitive_is_an_option() -> None:
    assert not m("PatientName", "doe^john", "DOE^JOHN")
    assert m("PatientName", "doe^john", "DOE^JOHN", pn_case_insensitive=True)
    assert m("PatientName", "m?ller*", "MÜLLER^HANS", pn_case_insensitive=True)
    # only PN
    assert not m("PatientID", "abc", "ABC", pn_case_insensitive=True)


def test_hostile_wildcard_pattern_is_fast() -> None:
    pattern = "*a" * 200 + "b"
    # CPU time, not wall time: what is guarded is the matcher's work (backtracking), and the
    # wall clock also counts whatever else runs on the machine (other test workers)
    start = time.process_time()
    assert not m("StudyDescription", pattern, "a" * 10_000)
    assert time.process_time() - start < 5


def test_very_long_values() -> None:
    long = "X" * 100_000
    assert m("PatientID", long, long)
    assert m("PatientID", "X*", long)
    assert not m("PatientID", long + "Y", long)


# --------------------------------------------------------------------------------------------
# lists, multi-valued stored values, numbers
# --------------------------------------------------------------------------------------------


def test_list_of_uids() -> None:
    assert m("StudyInstanceUID", "1.2\\1.3\\1.4", "1.3")
    assert not m("StudyInstanceUID", "1.2\\1.3", "1.30")


def test_multi_valued_stored_value() -> None:
    assert m("ModalitiesInStudy", "MR", ["CT", "MR"])
    assert m("ModalitiesInStudy", "M?", ["CT", "MR"])
    assert not m("ModalitiesInStudy", "US", ["CT", "MR"])
    assert m("ModalitiesInStudy", "US\\CT", ["CT", "MR"])


def test_integer_strings_compare_as_numbers() -> None:
    assert m("InstanceNumber", "5", "005")
    assert not m("InstanceNumber", "5", "50")
    assert m("InstanceNumber", "5\\7", "7")


# --------------------------------------------------------------------------------------------
# ranges
# --------------------------------------------------------------------------------------------


def test_date_ranges() -> None:
    assert m("StudyDate", "20200101-20201231", "20200615")
    assert m("StudyDate", "20200101-20201231", "20201231")
    assert not m("StudyDate", "20200101-20201231", "20210101")
    assert m("StudyDate", "20200101-", "29991231")
    assert not m("StudyDate", "20200101-", "20191231")
    assert m("StudyDate", "-20200101", "19000101")
    assert m("StudyDate", "20200615", "20200615")
    assert not m("StudyDate", "20200615", "20200616")
    assert not m("StudyDate", "20200101-", "garbage")


@pytest.mark.parametrize(
    "bad", ["2020-", "20201301", "20200101-2020", "2020010a", "-", "20200102-20200101", "1-2-3"]
)
def test_malformed_date_keys_are_typed_errors(bad: str) -> None:
    with pytest.raises(UnableToProcess) as info:
        m("StudyDate", bad, "20200101")
    assert info.value.status == 0xC000 and info.value.tag == 0x00080020
    with pytest.raises(QueryError):
        parse_query(ident("STUDY", StudyDate=bad), "study")


def test_list_of_dates_is_rejected() -> None:
    with pytest.raises(UnableToProcess):
        m("StudyDate", "20200101\\20200102", "20200101")


def test_time_ranges_and_partial_times() -> None:
    assert m("StudyTime", "1000-1100", "103000")
    assert m("StudyTime", "10-11", "115959.999")  # "11" covers the whole hour
    assert not m("StudyTime", "10-11", "120000")
    assert m("StudyTime", "10", "105959")
    assert not m("StudyTime", "10", "110000")
    assert m("StudyTime", "1015", "101530.25")
    assert m("StudyTime", "101530.2", "101530.25")
    assert not m("StudyTime", "101530.2", "101530.3")
    assert m("StudyTime", "-0900", "08")
    assert m("StudyTime", "1015-", "1015")
    with pytest.raises(UnableToProcess):
        m("StudyTime", "2500", "1000")
    with pytest.raises(UnableToProcess):
        m("StudyTime", "11-10", "1000")


def test_datetime_ranges_with_offsets() -> None:
    dt = "AcquisitionDateTime"
    assert m(dt, "2020-2021", "20210704120000")
    assert m(dt, "20200101120000+0100", "20200101110000+0000")
    # a single value with an offset: all of 2020-01-01 in New York, compared in UTC
    assert m(dt, "20200101-0500", "20200102040000+0000")
    assert not m(dt, "20200101-0500", "20200101040000+0000")
    assert m(dt, "20200101-0500-20200102-0500", "20200101120000-0500")
    assert not m(dt, "202001011200-202001011300", "202001011400")
    assert m(dt, "202001011200-202001011300", "20200101124500.5")
    with pytest.raises(UnableToProcess):
        m(dt, "2020x-", "2020")


# --------------------------------------------------------------------------------------------
# sequences
# --------------------------------------------------------------------------------------------


def _code(value: str, scheme: str) -> Dataset:
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = scheme
    return item


def test_sequence_matching() -> None:
    stored = Dataset()
    stored.ProcedureCodeSequence = [_code("A1", "99X"), _code("B2", "DCM")]
    q = Dataset()
    q.ProcedureCodeSequence = [_code("B2", "DCM")]
    assert match_value(q["ProcedureCodeSequence"], stored["ProcedureCodeSequence"])
    q.ProcedureCodeSequence = [_code("A1", "DCM")]  # keys from two different items
    assert not match_value(q["ProcedureCodeSequence"], stored["ProcedureCodeSequence"])
    q.ProcedureCodeSequence = [_code("B*", "")]
    assert match_value(q["ProcedureCodeSequence"], stored["ProcedureCodeSequence"])
    q.ProcedureCodeSequence = []
    assert match_value(q["ProcedureCodeSequence"], None)
    q.ProcedureCodeSequence = [Dataset()]
    assert match_value(q["ProcedureCodeSequence"], None)
    q.ProcedureCodeSequence = [_code("B2", "DCM")]
    assert not match_value(q["ProcedureCodeSequence"], None)


# --------------------------------------------------------------------------------------------
# whole identifiers and responses
# --------------------------------------------------------------------------------------------


def _study(pid: str, name: str, date: str, uid: str, mods: list[str]) -> Dataset:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.PatientID = pid
    ds.PatientName = name
    ds.StudyDate = date
    ds.StudyInstanceUID = uid
    ds.ModalitiesInStudy = mods
    ds.StudyDescription = "Head"
    ds.ProcedureCodeSequence = [_code("A1", "99X"), _code("B2", "DCM")]
    return ds


def test_query_matches_and_builds_the_response() -> None:
    record = _study("P1", "DOE^JOHN", "20200615", "1.2.3", ["CT", "MR"])
    other = _study("P2", "ROE^JANE", "20190101", "1.2.4", ["US"])
    q = parse_query(
        ident(
            "STUDY",
            PatientName="DOE*",
            StudyDate="20200101-",
            StudyInstanceUID="",
            AccessionNumber="",
            ModalitiesInStudy="MR",
            SpecificCharacterSet="ISO_IR 192",
        ),
        "study",
    )
    assert q.matches(record) and not q.matches(other)
    assert q.matches(other, only=[0x00080050])  # AccessionNumber alone is universal
    out = q.response(record)
    assert out.QueryRetrieveLevel == "STUDY"
    assert out.PatientName == "DOE^JOHN"
    assert out.StudyInstanceUID == "1.2.3"
    assert out.AccessionNumber in ("", None) and "AccessionNumber" in out
    assert list(out.ModalitiesInStudy) == ["CT", "MR"]
    assert out.SpecificCharacterSet == "ISO_IR 100"  # the record's: the values are its own
    assert "StudyDescription" not in out  # not requested


def test_response_filters_sequence_items() -> None:
    record = _study("P1", "DOE^JOHN", "20200615", "1.2.3", ["CT"])
    request = ident("STUDY")
    item = Dataset()
    item.CodeValue = "B*"
    request.ProcedureCodeSequence = [item]
    out = parse_query(request, "study").response(record)
    assert [i.CodeValue for i in out.ProcedureCodeSequence] == ["B2"]
    assert "CodingSchemeDesignator" not in out.ProcedureCodeSequence[0]
    request.ProcedureCodeSequence = []
    out = parse_query(request, "study").response(record)
    assert len(out.ProcedureCodeSequence) == 2


# --------------------------------------------------------------------------------------------
# SQL
# --------------------------------------------------------------------------------------------

_SCHEMA_COLUMNS = sorted({c.name for c in INDEX_COLUMNS.values()} | {"patient_name_folded"})


def _db(records: list[Dataset]) -> sqlite3.Connection:
    con = sqlite3.connect(":memory:")
    con.execute("PRAGMA case_sensitive_like = ON")
    con.execute(f"CREATE TABLE t (rowid_ INTEGER PRIMARY KEY, {', '.join(_SCHEMA_COLUMNS)})")
    for n, rec in enumerate(records):
        row: dict[str, object] = {"rowid_": n}
        for tag, col in INDEX_COLUMNS.items():
            elem = rec.get(tag)
            value = elem.value if elem is not None else None
            row[col.name] = index_value(col.vr, value)
            if col.folded:
                row[col.folded] = index_value(col.vr, value, fold=True)
        names = ", ".join(row)
        con.execute(
            f"INSERT INTO t ({names}) VALUES ({', '.join('?' * len(row))})", tuple(row.values())
        )
    return con


def _sql_rows(
    con: sqlite3.Connection, records: list[Dataset], identifier: Dataset, **kw: bool
) -> set[int]:
    q = parse_query(identifier, "study", **kw)
    f = sql_filter(q)
    rows = con.execute(f"SELECT rowid_ FROM t WHERE {f.where}", f.params).fetchall()
    return {r for (r,) in rows if q.matches(records[r], only=f.residual)}


def _py_rows(records: list[Dataset], identifier: Dataset, **kw: bool) -> set[int]:
    q = parse_query(identifier, "study", **kw)
    return {n for n, rec in enumerate(records) if q.matches(rec)}


def _records() -> list[Dataset]:
    recs = [
        _study("P1", "DOE^JOHN", "20200615", "1.2.1", ["CT", "MR"]),
        _study("P_1", "doe^jane", "20200101", "1.2.2", ["MR"]),
        _study("P%1", "O'BRIEN^X", "20191231", "1.2.3", ["US"]),
        _study("P!1", "Robert'); DROP TABLE t;--", "", "1.2.4", []),
    ]
    recs[0].StudyTime = "101500"
    recs[1].StudyTime = "23"
    recs[0].AccessionNumber = "A1"
    return recs


@pytest.mark.parametrize(
    ("keys", "expected"),
    [
        ({"PatientID": "P1"}, {0}),
        ({"PatientID": "P_1"}, {1}),  # "_" is not a LIKE wildcard here
        ({"PatientID": "P_*"}, {1}),
        ({"PatientID": "P%*"}, {2}),
        ({"PatientID": "P!*"}, {3}),
        ({"PatientID": "P?1"}, {1, 2, 3}),
        ({"PatientName": "DOE*"}, {0}),
        ({"PatientName": "*'*"}, {2, 3}),
        ({"PatientName": "Robert'); DROP TABLE t;--"}, {3}),
        ({"StudyDate": "20200101-20201231"}, {0, 1}),
        ({"StudyDate": "-20200101"}, {1, 2}),
        ({"StudyTime": "10-22"}, {0}),
        ({"StudyTime": "23"}, {1}),
        ({"StudyInstanceUID": "1.2.1\\1.2.3\\9"}, {0, 2}),
        ({"ModalitiesInStudy": "MR"}, {0, 1}),
        ({"ModalitiesInStudy": "C?"}, {0}),
        ({"ModalitiesInStudy": "US\\CT"}, {0, 2}),
        ({"AccessionNumber": "A1", "PatientID": "P*"}, {0}),
        ({"PatientID": ""}, {0, 1, 2, 3}),
    ],
)
def test_sql_agrees_with_python(keys: dict[str, str], expected: set[int]) -> None:
    records = _records()
    con = _db(records)
    identifier = ident("STUDY", **keys)
    assert _py_rows(records, identifier) == expected
    assert _sql_rows(con, records, identifier) == expected
    assert con.execute("SELECT count(*) FROM t").fetchone() == (4,)


def test_sql_case_insensitive_names_use_the_folded_column() -> None:
    records = _records()
    con = _db(records)
    identifier = ident("STUDY", PatientName="doe^j*")
    assert _sql_rows(con, records, identifier) == {1}
    assert _sql_rows(con, records, identifier, pn_case_insensitive=True) == {0, 1}
    f = sql_filter(parse_query(identifier, "study", pn_case_insensitive=True))
    assert "patient_name_folded" in f.where


def test_sql_shape_and_residual_keys() -> None:
    q = parse_query(
        ident(
            "STUDY",
            StudyDate="20200101-",
            StudyInstanceUID="1\\2",
            PatientID="A*",
            ReferringPhysicianName="X",
            ModalitiesInStudy="C*",
        ),
        "study",
    )
    f = sql_filter(q)
    assert "study_date >= ?" in f.where and "study_date <=" not in f.where
    assert "study_instance_uid IN (?, ?)" in f.where
    assert "patient_id LIKE ? ESCAPE '!'" in f.where
    assert set(f.residual) == {0x00080090, 0x00080061}
    assert "A%" in f.params and "20200101" in f.params
    assert sql_filter(parse_query(ident("STUDY"), "study")).where == "1 = 1"


def test_long_uid_lists_are_left_to_python() -> None:
    uids_ = "\\".join(f"1.2.{n}" for n in range(600))
    q = parse_query(ident("STUDY", StudyInstanceUID=uids_), "study")
    assert sql_filter(q).residual == (0x0020000D,)
    assert sql_filter(q, max_list=1000).residual == ()


_alphabet = st.sampled_from(list("AB_%!*?'\\ ab"))
_word = st.text(alphabet=st.sampled_from(list("AB_%!' ab")), max_size=5)
_pattern = st.text(alphabet=_alphabet, max_size=6).filter(lambda s: "\\" not in s.strip())
_date = st.dates().map(lambda d: f"{d.year:04d}{d.month:02d}{d.day:02d}")


@given(
    ids=st.lists(_word, min_size=1, max_size=6),
    dates=st.lists(_date, min_size=6, max_size=6),
    pattern=_pattern,
    low=_date,
    high=_date,
    fold=st.booleans(),
)
def test_sql_and_python_agree_on_random_values(
    ids: list[str], dates: list[str], pattern: str, low: str, high: str, fold: bool
) -> None:
    records = []
    for n, pid in enumerate(ids):
        rec = Dataset()
        rec.PatientID = pid
        rec.PatientName = pid
        rec.StudyDescription = pid
        rec.StudyDate = dates[n]
        records.append(rec)
    con = _db(records)
    low, high = min(low, high), max(low, high)
    for keys in (
        {"PatientID": pattern},
        {"PatientName": pattern},
        {"StudyDescription": pattern},
        {"StudyDate": f"{low}-{high}"},
        {"StudyDate": f"-{high}"},
        {"StudyDate": low},
    ):
        identifier = ident("STUDY", **keys)
        py = _py_rows(records, identifier, pn_case_insensitive=fold)
        assert _sql_rows(con, records, identifier, pn_case_insensitive=fold) == py, keys
