"""encode_explicit_le: raw Explicit VR Little Endian elements copied as they are, anything
else through pydicom; decoded, the result holds what pydicom's own writer gives, for every
sample file pydicom ships (both little endian encodings, big endian, sequences of defined
and undefined length, ambiguous VRs)."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from samples import all_samples, sample

from asyncdicom.qr.index import _decode
from asyncdicom.qr.records import encode_explicit_le


def _encode(ds: Dataset) -> bytes:
    """pydicom's own writer, the reference."""
    fp = DicomBytesIO()
    fp.is_little_endian = True
    fp.is_implicit_VR = False
    write_dataset(fp, ds)
    return fp.getvalue()


BINARY = {"OB", "OW", "OD", "OF", "OL", "OV", "UN"}


def _kept(ds: Dataset) -> list[object]:
    """The elements an index record would hold (no meta, private, binary, group lengths)."""
    return [
        t
        for t in ds.keys()  # noqa: SIM118 (tags, not elements: nothing decoded)
        if t.group != 2 and t.group % 2 == 0 and t.element != 0 and ds.get_item(t).VR not in BINARY
    ]


# Files without a File Meta Information header: pydicom reads them only with force=True.
NO_META = {"ExplVR_BigEndNoMeta.dcm", "ExplVR_LitEndNoMeta.dcm", "no_meta.dcm", "rtstruct.dcm"}


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("path", all_samples(), ids=lambda p: str(p.name))
def test_same_values_as_pydicoms_writer(path: Path) -> None:
    """Every sample in pydicom's wheel; one pydicom cannot read fails here, it is not dropped."""
    ds = pydicom.dcmread(path, stop_before_pixels=True, defer_size=4096, force=path.name in NO_META)
    tags = _kept(ds)
    reference = Dataset()
    for t in tags:
        reference[t] = ds.get_item(t)
    expected = _decode(_encode(reference))
    got = _decode(encode_explicit_le([ds.get_item(t) for t in tags], ds))
    assert list(got.keys()) == list(expected.keys())
    for t in expected.keys():  # noqa: SIM118 (tags: iterating a Dataset gives elements)
        assert got[t].VR == expected[t].VR, t
        assert got[t].value == expected[t].value, t


def test_raw_explicit_elements_are_copied_byte_for_byte() -> None:
    ds = pydicom.dcmread(sample("CT_small.dcm"), stop_before_pixels=True)
    raw = ds.get_item(0x00080008)
    assert isinstance(raw, RawDataElement) and not raw.is_implicit_VR
    encoded = encode_explicit_le([raw])
    assert encoded == b"\x08\x00\x08\x00CS\x16\x00" + b"ORIGINAL\\PRIMARY\\AXIAL"
    sequence = ds.get_item(0x00101002)  # Other Patient IDs Sequence, defined length
    assert isinstance(sequence, RawDataElement) and sequence.VR == "SQ"
    assert encode_explicit_le([sequence])[8:12] == len(sequence.value).to_bytes(4, "little")
    assert encode_explicit_le([sequence])[12:] == sequence.value


def test_implicit_vr_and_decoded_elements_go_through_pydicom() -> None:
    ds = pydicom.dcmread(sample("MR_small_implicit.dcm"), stop_before_pixels=True)
    raw = ds.get_item(0x00080008)
    assert isinstance(raw, RawDataElement) and raw.is_implicit_VR
    decoded = Dataset()
    decoded.PatientName = "DOE^JOHN"
    got = _decode(encode_explicit_le([raw, decoded["PatientName"]]))
    assert got.ImageType == ds.ImageType
    assert got.PatientName == "DOE^JOHN"
