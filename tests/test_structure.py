"""The structure check of received data sets (asyncdicom.storage.structure), sans-IO."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import pydicom
import pydicom.data
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydicom.dataset import Dataset
from pydicom.filereader import data_element_generator, read_file_meta_info
from pydicom.sequence import Sequence

from asyncdicom.errors import InvalidDataset
from asyncdicom.protocol.uids import (
    DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN,
    EXPLICIT_VR_BIG_ENDIAN,
    EXPLICIT_VR_LITTLE_ENDIAN,
    IMPLICIT_VR_LITTLE_ENDIAN,
)
from asyncdicom.storage.codec import encode_dataset
from asyncdicom.storage.structure import StructureCheck

SAMPLES = Path(pydicom.data.__file__).parent / "test_files"

#: whole, valid data sets of every kind the check must follow: implicit and explicit little
#: endian, big endian, deflated, encapsulated (JPEG 2000, RLE, JPEG), nested and private
#: sequences of undefined length, UN of undefined length, odd lengths, trailing padding
GOOD = [
    "CT_small.dcm",
    "MR_small_implicit.dcm",
    "MR_small_bigendian.dcm",
    "MR_small_padded.dcm",
    "image_dfl.dcm",
    "JPEG2000.dcm",
    "JPEG2000-embedded-sequence-delimiter.dcm",
    "MR_small_RLE.dcm",
    "SC_rgb_jpeg_dcmtk.dcm",
    "rtplan.dcm",
    "nested_priv_SQ.dcm",
    "priv_SQ.dcm",
    "UN_sequence.dcm",
    "test-SR.dcm",
    "waveform_ecg.dcm",
    "SC_rgb_small_odd.dcm",
    "reportsi.dcm",
    "SC_rgb_jpeg.dcm",  # implicit VR although its transfer syntax is explicit
]


def _dataset_of(name: str) -> tuple[bytes, str]:
    syntax = str(read_file_meta_info(SAMPLES / name).TransferSyntaxUID)
    return _raw_dataset((SAMPLES / name).read_bytes()), syntax


def _check(data: bytes, syntax: str, sizes: list[int] | None = None) -> StructureCheck:
    check = StructureCheck(syntax)
    view = memoryview(data)
    pos = 0
    for size in sizes or []:
        check.feed(view[pos : pos + size])
        pos += size
    check.feed(view[pos:])
    check.finish()
    return check


def _top_level_ends(data: bytes, syntax: str) -> set[int]:
    """Where the elements of the top level end, as pydicom's reader finds them."""
    fp = io.BytesIO(data)
    ends = {0}
    implicit = syntax == IMPLICIT_VR_LITTLE_ENDIAN
    little = syntax != EXPLICIT_VR_BIG_ENDIAN
    for _ in data_element_generator(fp, implicit, little):
        ends.add(fp.tell())
    return ends


@pytest.mark.parametrize("name", GOOD)
def test_whole_data_sets_pass(name: str) -> None:
    data, syntax = _dataset_of(name)
    check = _check(data, syntax)
    assert check.elements >= 1


@pytest.mark.parametrize("name", GOOD)
def test_any_split_of_a_whole_data_set_passes(name: str) -> None:
    data, syntax = _dataset_of(name)
    for step in (1, 2, 3, 7, 11, 13, 100):
        sizes = [step] * (len(data) // step)
        assert _check(data, syntax, sizes).elements >= 1


@pytest.mark.parametrize(
    "name", [n for n in GOOD if n not in ("image_dfl.dcm",)]
)  # a deflated stream cut anywhere is checked by test_deflated_cut_short
def test_a_data_set_cut_inside_an_element_is_refused(name: str) -> None:
    data, syntax = _dataset_of(name)
    ends = _top_level_ends(data, syntax)
    assert max(ends) == len(data)
    # every cut inside the last 64 bytes, inside the first 64, and a spread of others
    cuts = set(range(max(1, len(data) - 64), len(data))) | set(range(1, 64))
    cuts |= set(range(1, len(data), max(1, len(data) // 300)))
    for cut in sorted(cuts):
        tail = data[max(e for e in ends if e <= cut) : cut]
        if cut in ends or (cut > min(ends - {0}) and len(tail) < 8 and not tail.strip(b"\0")):
            # a shorter, complete data set (maybe with NUL bytes after it, let through)
            assert _check(data[:cut], syntax).elements >= 1
            continue
        with pytest.raises(InvalidDataset, match="stops inside"):
            _check(data[:cut], syntax)


def test_pydicoms_truncated_samples_are_refused() -> None:
    for name in ("MR_truncated.dcm", "rtplan_truncated.dcm"):
        syntax = str(read_file_meta_info(SAMPLES / name).TransferSyntaxUID)
        with pytest.raises(InvalidDataset, match="stops inside"):
            _check(_raw_dataset((SAMPLES / name).read_bytes()), syntax)


def _raw_dataset(part10: bytes) -> bytes:
    """The data set bytes of a Part 10 file: after the meta group (its group length known)."""
    assert part10[128:132] == b"DICM"
    (meta_length,) = struct.unpack_from("<L", part10, 132 + 8)
    return part10[132 + 12 + meta_length :]


def _element(tag: int, vr: bytes, value: bytes, *, undefined: bool = False) -> bytes:
    head = struct.pack("<HH", tag >> 16, tag & 0xFFFF) + vr
    length = 0xFFFFFFFF if undefined else len(value)
    if vr in (b"OB", b"OW", b"SQ", b"UN", b"UT"):
        return head + b"\0\0" + struct.pack("<L", length) + value
    return head + struct.pack("<H", length) + value


def _delim(element: int, length: int = 0) -> bytes:
    return struct.pack("<HHL", 0xFFFE, element, length)


PATIENT = _element(0x00100010, b"PN", b"DOE^JOHN")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (PATIENT + b"\x10\x00\x20\x00\x00\x00\x02\x00AB", "no valid VR"),
        (_delim(0xE000, 4) + b"abcd", "item .* outside a sequence"),
        (_delim(0xE00D), "item delimiter .* outside an item"),
        (_delim(0xE0DD), "sequence delimiter .* outside a sequence"),
        (_delim(0xE00F), "unknown delimiter"),
        (_element(0x00081115, b"SQ", b"", undefined=True) + PATIENT, "where only items can be"),
        (_element(0x00104000, b"UT", b"", undefined=True), "with VR UT has undefined length"),
        (
            _element(0x00081115, b"SQ", b"", undefined=True)
            + _delim(0xE000, 0xFFFFFFFF)
            + _delim(0xE0DD),
            "its item delimiter missing",
        ),
        (
            _element(0x00081115, b"SQ", b"", undefined=True) + _delim(0xE000, 0xFFFFFFFF),
            "stops inside an item of undefined length",
        ),
        (
            _element(0x00081115, b"SQ", b"", undefined=True) + _delim(0xE0DD, 4),
            "with a length of 4",
        ),
        (
            _element(0x7FE00010, b"OB", b"", undefined=True) + _delim(0xE000, 0xFFFFFFFF),
            "fragment of undefined length",
        ),
        (_element(0x00081115, b"SQ", b"", undefined=True), "inside a sequence"),
        (_element(0x7FE00010, b"OB", b"", undefined=True) + _delim(0xE000), "inside pixel data"),
        (PATIENT + PATIENT[:5], "inside an element header"),
        (PATIENT + PATIENT[:-1], "inside the value of \\(0010,0010\\), 1 byte"),
    ],
)
def test_broken_structures_are_refused(data: bytes, message: str) -> None:
    for sizes in ([], [1] * len(data), [3] * (len(data) // 3)):
        with pytest.raises(InvalidDataset, match=message):
            _check(data, EXPLICIT_VR_LITTLE_ENDIAN, sizes)


def test_unknown_upper_case_vr_passes_with_a_short_length() -> None:
    _check(_element(0x00091001, b"XX", b"ab") + PATIENT, EXPLICIT_VR_LITTLE_ENDIAN)


def _deflated() -> bytes:
    ds = Dataset()
    ds.PatientName = "DOE^JOHN"
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.SOPInstanceUID = "1.2.3.4"
    raw = encode_dataset(ds, EXPLICIT_VR_LITTLE_ENDIAN)
    deflater = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    return deflater.compress(raw) + deflater.flush()


def test_deflated_whole_passes_and_cut_short_is_refused() -> None:
    data = _deflated()
    assert _check(data, DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN, [1] * len(data)).elements == 3
    for cut in range(1, len(data)):
        with pytest.raises(InvalidDataset):
            _check(data[:cut], DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN)
    with pytest.raises(InvalidDataset, match="does not inflate"):
        _check(b"\xff" * 64, DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN)


def test_a_deflate_bomb_is_walked_in_bounded_steps() -> None:
    # 64 MiB of one OB value, deflated to about 64 KiB: inflated a megabyte at a time
    value = bytes(64 << 20)
    raw = _element(0x00091010, b"OB", b"")[:-4] + struct.pack("<L", len(value)) + value
    deflater = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    data = deflater.compress(raw) + deflater.flush()
    assert len(data) < 1 << 20
    assert _check(data, DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN).elements == 1


def _nested(depth: int, syntax: str) -> bytes:
    ds = Dataset()
    ds.PatientName = "DOE^JOHN"
    inner = ds
    for _ in range(depth):
        item = Dataset()
        item.CodeValue = "1"
        inner.ContentSequence = Sequence([item])
        inner = item
    ds.is_undefined_length_sequence_item = True
    return encode_dataset(ds, syntax)


@pytest.mark.parametrize(
    "syntax", [IMPLICIT_VR_LITTLE_ENDIAN, EXPLICIT_VR_LITTLE_ENDIAN, EXPLICIT_VR_BIG_ENDIAN]
)
def test_nested_sequences_in_every_uncompressed_syntax(syntax: str) -> None:
    data = _nested(5, syntax)
    # the items of defined length are walked: the name, then a sequence and a code each level
    assert _check(data, syntax).elements == 11
    assert _check(data, syntax, [1] * len(data)).elements == 11


@given(
    name=st.sampled_from(GOOD),
    sizes=st.lists(st.integers(min_value=0, max_value=40), max_size=30),
)
def test_whole_data_sets_pass_whatever_the_split(name: str, sizes: list[int]) -> None:
    data, syntax = _dataset_of(name)
    _check(data, syntax, sizes)


@given(
    data=st.binary(max_size=400),
    sizes=st.lists(st.integers(min_value=0, max_value=16), max_size=20),
    syntax=st.sampled_from(
        [
            IMPLICIT_VR_LITTLE_ENDIAN,
            EXPLICIT_VR_LITTLE_ENDIAN,
            EXPLICIT_VR_BIG_ENDIAN,
            DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN,
        ]
    ),
)
def test_any_bytes_give_a_verdict_or_invalid_dataset(
    data: bytes, syntax: str, sizes: list[int]
) -> None:
    """Only InvalidDataset comes out, and the verdict does not depend on the fragments."""

    def verdict(cuts: list[int]) -> int:
        try:
            return _check(data, syntax, cuts).elements
        except InvalidDataset:
            return -1

    assert verdict([]) == verdict(sizes)


def test_the_vr_encoding_of_the_first_element_wins() -> None:
    ds = Dataset()
    ds.PatientName = "DOE^JOHN"
    ds.ContentSequence = Sequence([Dataset()])
    ds.ContentSequence[0].CodeValue = "1"
    implicit = encode_dataset(ds, IMPLICIT_VR_LITTLE_ENDIAN)
    explicit = encode_dataset(ds, EXPLICIT_VR_LITTLE_ENDIAN)
    for data in (implicit, explicit):
        for syntax in (IMPLICIT_VR_LITTLE_ENDIAN, EXPLICIT_VR_LITTLE_ENDIAN):
            for sizes in ([], [1] * len(data), [5, 3]):
                assert _check(data, syntax, sizes).elements == 3
    # and the encoding found holds for the rest: an explicit element after implicit ones is
    # read as implicit (its length then runs past the end)
    with pytest.raises(InvalidDataset):
        _check(implicit + PATIENT, EXPLICIT_VR_LITTLE_ENDIAN)


@pytest.mark.parametrize("padding", [1, 2, 7])
def test_nul_padding_shorter_than_a_header_passes(padding: int) -> None:
    _check(PATIENT + bytes(padding), EXPLICIT_VR_LITTLE_ENDIAN, [1] * 12)
    with pytest.raises(InvalidDataset, match="inside an element header"):
        _check(PATIENT + b"\x01" + bytes(padding - 1), EXPLICIT_VR_LITTLE_ENDIAN)


def test_encapsulated_pixel_data_sent_as_un() -> None:
    fragments = _delim(0xE000, 0) + _delim(0xE000, 4) + b"\xff\xd8\xff\xd9" + _delim(0xE0DD)
    data = PATIENT + _element(0x7FE00010, b"UN", b"", undefined=True) + fragments
    assert _check(data, EXPLICIT_VR_LITTLE_ENDIAN, [1] * len(data)).elements == 2


def _item(content: bytes) -> bytes:
    return _delim(0xE000, len(content)) + content


def _sequence(tag: int, content: bytes) -> bytes:
    return _element(tag, b"SQ", content)


CODE = _element(0x00080100, b"SH", b"1 ")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        # garbage in a sequence of defined length: an element where only items can be
        (_sequence(0x00400275, CODE), "where only items can be"),
        # an element longer than the item that holds it
        (
            _sequence(0x00400275, _delim(0xE000, 6) + CODE),
            "runs past the end of its item of defined length",
        ),
        # an item longer than its sequence
        (
            _element(0x00400275, b"SQ", b"")[:-4] + struct.pack("<L", 8) + _item(CODE) + PATIENT,
            "runs past the end of its sequence of defined length",
        ),
        # the data set ends inside a sequence of defined length, between two items
        (
            _element(0x00400275, b"SQ", b"")[:-4] + struct.pack("<L", 40) + _item(CODE),
            "stops inside a sequence of defined length, 22 byte\\(s\\) short",
        ),
    ],
)
def test_broken_defined_length_containers_are_refused(data: bytes, message: str) -> None:
    for sizes in ([], [1] * len(data), [7] * (len(data) // 7)):
        with pytest.raises(InvalidDataset, match=message):
            _check(PATIENT + data, EXPLICIT_VR_LITTLE_ENDIAN, sizes)


def test_defined_length_containers_pass_whole() -> None:
    nested = _sequence(0x00400275, _item(CODE + _sequence(0x00400260, _item(CODE) + _item(b""))))
    data = PATIENT + nested + _element(0x00100020, b"LO", b"ID")
    assert _check(data, EXPLICIT_VR_LITTLE_ENDIAN, [1] * len(data)).elements == 6
    # redundant delimiters inside containers of defined length are let through
    redundant = _sequence(0x00400275, _item(CODE + _delim(0xE00D)) + _delim(0xE0DD))
    assert _check(PATIENT + redundant, EXPLICIT_VR_LITTLE_ENDIAN).elements == 3


def test_implicit_vr_sequences_known_to_the_dictionary_are_walked() -> None:
    def implicit(tag: int, value: bytes) -> bytes:
        return struct.pack("<HHL", tag >> 16, tag & 0xFFFF, len(value)) + value

    code = implicit(0x00080100, b"1 ")
    good = implicit(0x00400275, _item(code))
    assert _check(good, IMPLICIT_VR_LITTLE_ENDIAN).elements == 2
    with pytest.raises(InvalidDataset, match="where only items can be"):
        _check(implicit(0x00400275, code), IMPLICIT_VR_LITTLE_ENDIAN)
    # a private tag: its VR unknown, its value is skipped whatever it holds
    assert _check(implicit(0x00091010, code), IMPLICIT_VR_LITTLE_ENDIAN).elements == 1


@pytest.mark.parametrize(
    "syntax",
    [
        IMPLICIT_VR_LITTLE_ENDIAN,
        EXPLICIT_VR_LITTLE_ENDIAN,
        EXPLICIT_VR_BIG_ENDIAN,
        DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN,
    ],
)
def test_sop_uids_of_the_top_level_are_found_however_cut(syntax: str) -> None:
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.SOPInstanceUID = "1.2.826.0.1.3680043.10.999.12345"  # odd length: padded with NUL
    item = Dataset()
    item.SOPInstanceUID = "9.9.9"  # nested: not the data set's own
    ds.ReferencedImageSequence = Sequence([item])
    raw = encode_dataset(ds, EXPLICIT_VR_LITTLE_ENDIAN if syntax.endswith(".99") else syntax)
    if syntax.endswith(".99"):
        deflater = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
        raw = deflater.compress(raw) + deflater.flush()
    for sizes in ([], [1] * len(raw), [3, 5, 7, 11, 13]):
        check = _check(raw, syntax, sizes)
        assert check.sop_uids() == (ds.SOPClassUID, ds.SOPInstanceUID)
    del ds.SOPClassUID
    raw = encode_dataset(ds, EXPLICIT_VR_LITTLE_ENDIAN)
    assert _check(raw, EXPLICIT_VR_LITTLE_ENDIAN).sop_uids() == (None, ds.SOPInstanceUID)


@pytest.mark.parametrize(
    "syntax",
    [
        IMPLICIT_VR_LITTLE_ENDIAN,
        EXPLICIT_VR_LITTLE_ENDIAN,
        EXPLICIT_VR_BIG_ENDIAN,
        DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN,
    ],
)
def test_sort_keys_agree_with_reading_them_back_from_the_file(syntax: str, tmp_path: Path) -> None:
    """The sorted layout's folder names, taken as the bytes go by, are what reading the
    written file gives (codec.read_sort_keys, which the writer used before), whatever the
    fragmenting; nested values and padding are not taken."""
    from asyncdicom.storage.codec import read_sort_keys

    ds = Dataset()
    ds.SOPInstanceUID = "1.2.3"
    ds.PatientID = "PAT 7 "  # inner space kept, trailing padding dropped
    ds.StudyInstanceUID = "1.2.826.0.1.3680043.10.999.1"  # odd length: NUL padded
    item = Dataset()
    item.SeriesInstanceUID = "9.9.9"  # nested: not the data set's own
    ds.ReferencedSeriesSequence = Sequence([item])
    cases = [ds.copy()]
    ds.SeriesInstanceUID = "1.2.826.0.1.3680043.10.999.2"
    cases.append(ds)
    for case in cases:
        raw = encode_dataset(case, EXPLICIT_VR_LITTLE_ENDIAN if syntax.endswith(".99") else syntax)
        if syntax.endswith(".99"):
            deflater = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
            raw = deflater.compress(raw) + deflater.flush()
        path = tmp_path / "data"
        path.write_bytes(raw)
        expected = read_sort_keys(path, 0, syntax)
        assert expected[0] == "PAT 7" and expected[1] == case.StudyInstanceUID
        for sizes in ([], [1] * len(raw), [3, 5, 7, 11, 13]):
            assert _check(raw, syntax, sizes).sort_keys() == expected
    assert expected[2] == "1.2.826.0.1.3680043.10.999.2"
