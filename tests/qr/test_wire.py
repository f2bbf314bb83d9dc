"""C-FIND responses encoded straight from the records (asyncdicom.qr.wire): the same bytes as
pydicom's encoding of ``Query.response`` (pydicom is the independent reference) for every
record the index makes of pydicom's sample files, in both little endian transfer syntaxes, and
hand-written encodings (PS3.5 7.1) for the edge cases."""

from __future__ import annotations

import io
import struct
from collections.abc import Callable

import pydicom
import pytest
from pydicom.datadict import dictionary_VR
from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset
from pydicom.sequence import Sequence
from samples import all_samples

from asyncdicom.qr import Index, SQLiteIndex, parse_query, parse_worklist_query
from asyncdicom.qr.wire import (
    EXPLICIT_VR_LITTLE_ENDIAN,
    IMPLICIT_VR_LITTLE_ENDIAN,
    Element,
    ResponseEncoder,
    SlowPath,
    parse_explicit_le,
)
from asyncdicom.storage.codec import encode_dataset

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

SYNTAXES = (IMPLICIT_VR_LITTLE_ENDIAN, EXPLICIT_VR_LITTLE_ENDIAN)
NO_META = {"ExplVR_BigEndNoMeta.dcm", "ExplVR_LitEndNoMeta.dcm", "no_meta.dcm", "rtstruct.dcm"}


def identifier(level: str, **keys: object) -> Dataset:
    ds = Dataset()
    if level:
        ds.QueryRetrieveLevel = level
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    return ds


def samples_index(index: Index) -> Index:
    """``index`` with the headers of pydicom's samples."""
    for path in all_samples():
        try:
            header = pydicom.dcmread(path, stop_before_pixels=True, force=path.name in NO_META)
            index.add(header, str(path))
        except Exception:
            continue  # a sample without the UIDs an index needs
    assert index.count() >= 20
    return index


def _record_tags(index: Index, table: str) -> set[int]:
    tags: set[int] = set()
    with index._reading() as con:
        blobs = con.execute(f"SELECT record FROM {table}").fetchall()
    for (blob,) in blobs:
        tags |= {int(t) for t in read_dataset(io.BytesIO(blob), False, True).keys()}  # noqa: SIM118
    return tags


def _every_key(index: Index, level: str, tables: tuple[str, ...], **keys: str) -> Dataset:
    """An identifier asking for every attribute the records of ``tables`` hold (universal
    keys, sequences included)."""
    ds = identifier(level, **keys)
    for tag in sorted(set().union(*(_record_tags(index, t) for t in tables))):
        if tag in ds or tag == 0x00080005:
            continue
        try:
            vr = dictionary_VR(tag)
        except KeyError:
            continue
        if " or " not in vr:
            ds.add_new(tag, vr, [] if vr == "SQ" else None)
    return ds


def _same_as_pydicom(index: Index, ds: Dataset, model: str) -> int:
    query = parse_query(ds, model)
    for syntax in SYNTAXES:
        expected = [encode_dataset(r, syntax) for r in index.find(query)]
        got = list(index.find_encoded(query, syntax))
        assert len(got) == len(expected)
        for n, (a, b) in enumerate(zip(got, expected, strict=True)):
            assert a == b, f"response {n} in {syntax}"
    return len(expected)


def test_every_sample_record_at_every_level_as_pydicom_encodes_it(
    make_index: Callable[[], Index],
) -> None:
    index = samples_index(make_index())
    assert _same_as_pydicom(index, _every_key(index, "PATIENT", ("patient",)), "patient") >= 10
    study = _every_key(index, "STUDY", ("patient", "study"), PatientID="")
    study.ModalitiesInStudy = ""
    study.SOPClassesInStudy = ""
    study.NumberOfStudyRelatedInstances = ""
    study.NumberOfStudyRelatedSeries = ""
    assert _same_as_pydicom(index, study, "study") >= 10
    with index._reading() as con:
        rows = con.execute(
            "SELECT study.study_instance_uid, series.series_instance_uid FROM series "
            "JOIN study ON study.pk = series.study_pk"
        ).fetchall()
    every = _every_key(index, "IMAGE", ("patient", "study", "series", "instance"))
    images = 0
    for study_uid, series_uid in rows:
        ds = every.copy()
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        images += _same_as_pydicom(index, ds, "study")
    assert images == index.count()


def test_a_typical_record_is_copied_not_rebuilt() -> None:
    """The fast path really is taken for an ordinary record (the fallback would pass the
    comparisons above too)."""
    index = SQLiteIndex(":memory:")
    header = identifier("", PatientID="P1", PatientName="DOE^JOHN", StudyDate="20240101")
    header.SpecificCharacterSet = "ISO_IR 100"
    header.StudyInstanceUID = "1.2.3"
    header.SeriesInstanceUID = "1.2.3.4"
    header.SOPInstanceUID = "1.2.3.4.5"
    header.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    header.AccessionNumber = "A1"
    header.Modality = "CT"
    index.add(header, "x")
    query = parse_query(
        identifier("STUDY", PatientID="", PatientName="", StudyDate="", ModalitiesInStudy=""),
        "study",
    )
    encoder = ResponseEncoder(query, EXPLICIT_VR_LITTLE_ENDIAN)
    selection = index._select(query)
    (row,) = selection.rows
    encoded = encoder.encode(index._elements(row, selection))
    assert encoded == encode_dataset(next(index.find(query)), EXPLICIT_VR_LITTLE_ENDIAN)


# ---------------------------------------------------------------------------------------------
# hand-written encodings (PS3.5 7.1.2, 7.1.3, 7.5)
# ---------------------------------------------------------------------------------------------


def ex(tag: int, vr: bytes, value: bytes) -> bytes:
    """An Explicit VR Little Endian element, written out by hand."""
    if vr in (b"SQ", b"UT", b"UC", b"UR", b"OB", b"UN"):
        return struct.pack("<HH2sHI", tag >> 16, tag & 0xFFFF, vr, 0, len(value)) + value
    return struct.pack("<HH2sH", tag >> 16, tag & 0xFFFF, vr, len(value)) + value


def im(tag: int, value: bytes) -> bytes:
    """An Implicit VR Little Endian element, written out by hand."""
    return struct.pack("<HHI", tag >> 16, tag & 0xFFFF, len(value)) + value


def item(body: bytes) -> bytes:
    return struct.pack("<HHI", 0xFFFE, 0xE000, len(body)) + body


QR_LEVEL, CHARSET = 0x00080052, 0x00080005
PATIENT_ID, PATIENT_NAME, STUDY_UID = 0x00100020, 0x00100010, 0x0020000D
STUDY_DATE, MODALITIES, COUNT = 0x00080020, 0x00080061, 0x00201208


def test_empty_odd_multi_valued_and_the_level_by_hand() -> None:
    query = parse_query(
        identifier(
            "STUDY",
            StudyDate="",
            PatientName="",
            PatientID="",
            StudyInstanceUID="",
            ModalitiesInStudy="",
            NumberOfStudyRelatedInstances="",
        ),
        "study",
    )
    record = {
        PATIENT_ID: Element("LO", b"ABC"),  # odd: padded with a space
        STUDY_UID: Element("UI", b"1.2.3"),  # odd: padded with a NUL
        MODALITIES: Element("CS", b"CT\\MR"),  # multi-valued, odd
        COUNT: Element("IS", b"12"),
        PATIENT_NAME: Element("PN", b""),  # stored empty
    }  # no Study Date: returned empty
    explicit = ResponseEncoder(query, EXPLICIT_VR_LITTLE_ENDIAN).encode(record)
    assert explicit == b"".join(
        [
            ex(STUDY_DATE, b"DA", b""),
            ex(QR_LEVEL, b"CS", b"STUDY "),
            ex(MODALITIES, b"CS", b"CT\\MR "),
            ex(PATIENT_NAME, b"PN", b""),
            ex(PATIENT_ID, b"LO", b"ABC "),
            ex(STUDY_UID, b"UI", b"1.2.3\0"),
            ex(COUNT, b"IS", b"12"),
        ]
    )
    implicit = ResponseEncoder(query, IMPLICIT_VR_LITTLE_ENDIAN).encode(record)
    assert implicit == b"".join(
        [
            im(STUDY_DATE, b""),
            im(QR_LEVEL, b"STUDY "),
            im(MODALITIES, b"CT\\MR "),
            im(PATIENT_NAME, b""),
            im(PATIENT_ID, b"ABC "),
            im(STUDY_UID, b"1.2.3\0"),
            im(COUNT, b"12"),
        ]
    )


@pytest.mark.parametrize(("level", "text"), [("PATIENT", b"PATIENT "), ("SERIES", b"SERIES")])
def test_level_and_universal_keys_of_other_levels(level: str, text: bytes) -> None:
    ds = identifier(level, PatientName="")
    if level == "SERIES":
        ds.PatientID = "P1"
        ds.StudyInstanceUID = "1.2"
        ds.SeriesInstanceUID = ""
    query = parse_query(ds, "patient")
    record = {PATIENT_NAME: Element("PN", b"A^B ")}
    got = ResponseEncoder(query, EXPLICIT_VR_LITTLE_ENDIAN).encode(record)
    expected = [ex(QR_LEVEL, b"CS", text), ex(PATIENT_NAME, b"PN", b"A^B ")]
    if level == "SERIES":  # the unique keys above are returned with the record's values
        expected += [ex(PATIENT_ID, b"LO", b""), ex(STUDY_UID, b"UI", b"")]
        expected += [ex(0x0020000E, b"UI", b"")]
    assert got == b"".join(expected)


def test_specific_character_set_from_the_record_else_from_the_request() -> None:
    ds = identifier("STUDY", PatientName="")
    ds.SpecificCharacterSet = "ISO_IR 192"
    encoder = ResponseEncoder(parse_query(ds, "study"), EXPLICIT_VR_LITTLE_ENDIAN)
    name = ex(PATIENT_NAME, b"PN", b"A^B ")
    level = ex(QR_LEVEL, b"CS", b"STUDY ")
    own = {CHARSET: Element("CS", b"ISO_IR 100"), PATIENT_NAME: Element("PN", b"A^B ")}
    assert encoder.encode(own) == ex(CHARSET, b"CS", b"ISO_IR 100") + level + name
    without = {PATIENT_NAME: Element("PN", b"A^B ")}
    assert encoder.encode(without) == ex(CHARSET, b"CS", b"ISO_IR 192") + level + name
    empty = {CHARSET: Element("CS", b""), PATIENT_NAME: Element("PN", b"A^B ")}
    assert encoder.encode(empty) == level + name  # the record's, empty: none returned
    plain = ResponseEncoder(
        parse_query(identifier("STUDY", PatientName=""), "study"), EXPLICIT_VR_LITTLE_ENDIAN
    )
    assert plain.encode(without) == level + name


def test_universal_sequence_key_copies_the_items_with_their_lengths() -> None:
    query = parse_query(identifier("STUDY", ProcedureCodeSequence=[]), "study")
    code = ex(0x00080100, b"SH", b"X1") + ex(0x00080102, b"SH", b"LN")
    stored = ex(0x00081032, b"SQ", item(code))
    record = parse_explicit_le(stored)
    got = ResponseEncoder(query, EXPLICIT_VR_LITTLE_ENDIAN).encode(record)
    assert got == ex(QR_LEVEL, b"CS", b"STUDY ") + stored
    implicit_items = item(im(0x00080100, b"X1") + im(0x00080102, b"LN"))
    got = ResponseEncoder(query, IMPLICIT_VR_LITTLE_ENDIAN).encode(record)
    assert got == im(QR_LEVEL, b"STUDY ") + im(0x00081032, implicit_items)
    # a missing sequence is returned empty (zero length)
    got = ResponseEncoder(query, EXPLICIT_VR_LITTLE_ENDIAN).encode({})
    assert got == ex(QR_LEVEL, b"CS", b"STUDY ") + ex(0x00081032, b"SQ", b"")


def test_sequence_of_undefined_length_keeps_its_delimiters() -> None:
    query = parse_query(identifier("STUDY", ProcedureCodeSequence=[]), "study")
    code = ex(0x00080100, b"SH", b"X1")
    undefined = struct.pack("<HH2sHI", 0x0008, 0x1032, b"SQ", 0, 0xFFFFFFFF)
    item_start = struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF)
    item_end = struct.pack("<HHI", 0xFFFE, 0xE00D, 0)
    seq_end = struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
    stored = undefined + item_start + code + item_end + seq_end
    record = parse_explicit_le(stored)
    got = ResponseEncoder(query, EXPLICIT_VR_LITTLE_ENDIAN).encode(record)
    assert got == ex(QR_LEVEL, b"CS", b"STUDY ") + stored
    # and pydicom, reading the same record, writes the same bytes
    ds = read_dataset(io.BytesIO(stored), False, True)
    expected = parse_query(identifier("STUDY", ProcedureCodeSequence=[]), "study").response(ds)
    assert got == encode_dataset(expected, EXPLICIT_VR_LITTLE_ENDIAN)


def test_sequence_key_with_item_keys_returns_the_matching_items_only() -> None:
    sps = Dataset()
    sps.Modality = "MR"
    sps.ScheduledStationAETitle = ""
    query = parse_worklist_query(identifier("", ScheduledProcedureStepSequence=[sps]))
    items = []
    for modality, aet in (("CT", "CT1"), ("MR", "MR1")):
        one = Dataset()
        one.Modality = modality
        one.ScheduledStationAETitle = aet
        one.ScheduledProcedureStepID = "S1"  # not asked for: not returned
        items.append(one)
    stored = Dataset()
    stored.ScheduledProcedureStepSequence = Sequence(items)
    record = parse_explicit_le(encode_dataset(stored, EXPLICIT_VR_LITTLE_ENDIAN))
    encoder = ResponseEncoder(query, EXPLICIT_VR_LITTLE_ENDIAN)
    got = encoder.encode(record, stored)
    body = ex(0x00080060, b"CS", b"MR") + ex(0x00400001, b"AE", b"MR1 ")
    assert got == ex(0x00400100, b"SQ", item(body))
    assert got == encode_dataset(query.response(stored), EXPLICIT_VR_LITTLE_ENDIAN)
    with pytest.raises(SlowPath):
        encoder.encode(record)  # no data set to match the items against


@pytest.mark.parametrize(
    ("vr", "value"),
    [
        ("LO", b"AB  "),  # more padding than the one byte
        ("LO", b" AB "),  # a leading space
        ("CS", b"CT \\MR"),  # a space before a backslash
        ("UI", b"1.2\0\0"),  # more than one NUL
        ("PN", "M\u00fcller^A".encode("latin-1")),  # outside ASCII
        ("IS", b" 7 "),
    ],
)
def test_values_pydicom_would_change_are_left_to_pydicom(vr: str, value: bytes) -> None:
    query = parse_query(identifier("STUDY", StudyDescription=""), "study")
    encoder = ResponseEncoder(query, EXPLICIT_VR_LITTLE_ENDIAN)
    with pytest.raises(SlowPath):
        encoder.encode({0x00081030: Element(vr, value)})


def test_values_pydicom_writes_back_unchanged_are_copied() -> None:
    """Cross-check of the rule above: values the encoder copies are those pydicom, reading
    them and writing them again, leaves as they are (apart from the padding byte)."""
    query = parse_query(identifier("STUDY", StudyDescription=""), "study")
    encoder = ResponseEncoder(query, EXPLICIT_VR_LITTLE_ENDIAN)
    for value in (b"A", b"AB", b"A B", b"A\\B", b"ABC ", b"\\B", b"1.50"):
        stored = ex(0x00081030, b"LO", value)
        got = encoder.encode(parse_explicit_le(stored))
        ds = read_dataset(io.BytesIO(stored), False, True)
        assert got == encode_dataset(query.response(ds), EXPLICIT_VR_LITTLE_ENDIAN), value


def test_other_transfer_syntaxes_are_refused() -> None:
    query = parse_query(identifier("STUDY", PatientID=""), "study")
    for syntax in ("1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99"):
        with pytest.raises(ValueError):
            ResponseEncoder(query, syntax)


def test_malformed_records_are_left_to_pydicom() -> None:
    for blob in (b"\x08\x00\x20\x00DA\x08\x00123", b"\x08\x00", b"\x08\x00\x20\x00da\x00\x00"):
        with pytest.raises(SlowPath):
            parse_explicit_le(blob)
