"""``harness.peers.instance_differences``, the check behind every interop content test, finds
the differences it promises to find and reports nothing for files that hold the same instance.

Every interop test that asserts ``instance_differences(received, sent) == []`` is only as good
as this function: here it is fed pairs of files written with pydicom that differ in one known
way each, and pairs that differ only in ways a receiver may legitimately introduce.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pydicom
import pydicom.data
import pytest
from harness.peers import instance_differences
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

SAMPLES = Path(pydicom.data.__file__).parent / "test_files"
CT = SAMPLES / "CT_small.dcm"  # explicit VR LE, private elements, a sequence, 16-bit pixels
RTPLAN = SAMPLES / "rtplan.dcm"  # nested sequences, no pixel data
MR = SAMPLES / "MR_small.dcm"  # explicit VR LE
#: the same MR instance in other transfer syntaxes (pydicom's samples)
MR_BIG_ENDIAN = SAMPLES / "MR_small_bigendian.dcm"
MR_RLE = SAMPLES / "MR_small_RLE.dcm"
MR_IMPLICIT = SAMPLES / "MR_small_implicit.dcm"


def write(ds: Dataset, path: Path) -> Path:
    """Save ``ds`` as a Part 10 file in its file meta's transfer syntax (pydicom alone)."""
    ds.save_as(path, enforce_file_format=True)
    return path


def changed(source: Path, tmp_path: Path, change: Callable[[Dataset], None]) -> Path:
    """A copy of ``source`` with ``change`` applied to its data set, written by pydicom."""
    ds = pydicom.dcmread(source)
    change(ds)
    return write(ds, tmp_path / f"changed-{source.name}")


# --------------------------------------------------------------------------- differences


def _set_patient_name(ds: Dataset) -> None:
    ds.PatientName = "Someone^Else"


def _delete_patient_id(ds: Dataset) -> None:
    del ds.PatientID


def _add_element(ds: Dataset) -> None:
    assert "DerivationDescription" not in ds
    ds.DerivationDescription = "added on the way"


def _flip_pixel_byte(ds: Dataset) -> None:
    pixels = bytearray(ds.PixelData)
    pixels[len(pixels) // 2] ^= 0x01
    ds.PixelData = bytes(pixels)


def _truncate_pixels(ds: Dataset) -> None:
    ds.PixelData = ds.PixelData[:-2]


def _delete_pixels(ds: Dataset) -> None:
    del ds.PixelData


def _change_instance_uid(ds: Dataset) -> None:
    ds.SOPInstanceUID = ds.SOPInstanceUID + ".1"


def _change_class_uid(ds: Dataset) -> None:
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.4"  # MR Image Storage instead of CT


def _change_private_value(ds: Dataset) -> None:
    ds[0x00091001].value = "CHANGED"


def _change_sequence_item(ds: Dataset) -> None:
    ds.OtherPatientIDsSequence[0].PatientID = "not the same"


def _change_nested_item(ds: Dataset) -> None:
    ds.BeamSequence[0].ControlPointSequence[0].GantryAngle = 123.0


def _drop_nested_element(ds: Dataset) -> None:
    del ds.BeamSequence[0].BeamName


def _drop_sequence_item(ds: Dataset) -> None:
    del ds.BeamSequence[-1]


CHANGES: list[tuple[Path, Callable[[Dataset], None], list[str]]] = [
    (CT, _set_patient_name, ["value of (0010,0010) PatientName differs"]),
    (CT, _delete_patient_id, ["top-level tags differ: missing ['(0010,0020)'], extra []"]),
    (CT, _add_element, ["top-level tags differ: missing [], extra ['(0008,2111)']"]),
    (CT, _flip_pixel_byte, ["PixelData differs (32768 bytes received, 32768 sent)"]),
    (CT, _truncate_pixels, ["PixelData differs (32766 bytes received, 32768 sent)"]),
    (
        CT,
        _delete_pixels,
        [
            "PixelData present in only one of received/sent",
            "top-level tags differ: missing ['(7FE0,0010)'], extra []",
        ],
    ),
    (
        CT,
        _change_instance_uid,
        ["SOPInstanceUID: received", "value of (0008,0018) SOPInstanceUID differs"],
    ),
    (
        CT,
        _change_class_uid,
        ["SOPClassUID: received", "value of (0008,0016) SOPClassUID differs"],
    ),
    (CT, _change_private_value, ["value of (0009,1001) private differs"]),
    (CT, _change_sequence_item, ["value of (0010,1002) OtherPatientIDsSequence differs"]),
    (RTPLAN, _change_nested_item, ["value of (300A,00B0) BeamSequence differs"]),
    (RTPLAN, _drop_nested_element, ["value of (300A,00B0) BeamSequence differs"]),
    (RTPLAN, _drop_sequence_item, ["value of (300A,00B0) BeamSequence differs"]),
]


@pytest.mark.parametrize(
    ("source", "change", "expected"),
    [pytest.param(*case, id=case[1].__name__.strip("_")) for case in CHANGES],
)
def test_a_changed_instance_is_reported(
    tmp_path: Path, source: Path, change: Callable[[Dataset], None], expected: list[str]
) -> None:
    received = changed(source, tmp_path, change)
    problems = instance_differences(received, source)
    assert len(problems) == len(expected), problems
    for problem, start in zip(problems, expected, strict=True):
        assert problem.startswith(start), problems
    # the comparison is symmetric in what it finds
    assert len(instance_differences(source, received)) == len(expected)


def test_every_difference_is_reported_not_only_the_first(tmp_path: Path) -> None:
    def change(ds: Dataset) -> None:
        _set_patient_name(ds)
        _delete_patient_id(ds)
        _flip_pixel_byte(ds)
        _change_instance_uid(ds)

    problems = instance_differences(changed(CT, tmp_path, change), CT)
    assert len(problems) == 5, problems  # the SOP Instance UID is named twice
    assert any(p.startswith("SOPInstanceUID") for p in problems)
    assert any(p.startswith("PixelData differs") for p in problems)
    assert any("missing ['(0010,0020)']" in p for p in problems)
    assert any("PatientName" in p for p in problems)


@pytest.mark.parametrize(
    "received",
    [MR_BIG_ENDIAN, MR_RLE],
    ids=["big-endian", "rle-compressed"],
)
def test_a_change_of_byte_order_or_compression_is_reported(received: Path) -> None:
    """The same instance, but its pixel data in another byte order or compressed: what a
    receiver must not do when it was sent uncompressed little endian."""
    assert pydicom.dcmread(received).SOPInstanceUID == pydicom.dcmread(MR).SOPInstanceUID
    problems = instance_differences(received, MR)
    assert len(problems) == 1 and problems[0].startswith("PixelData differs"), problems


# --------------------------------------------------------------------------- no difference


@pytest.mark.parametrize("source", [CT, RTPLAN, MR], ids=lambda p: p.name)
def test_a_copy_is_the_same_instance(tmp_path: Path, source: Path) -> None:
    copy = tmp_path / source.name
    shutil.copyfile(source, copy)
    assert instance_differences(copy, source) == []


@pytest.mark.parametrize("source", [CT, RTPLAN], ids=lambda p: p.name)
def test_a_re_encoded_instance_is_the_same_instance(tmp_path: Path, source: Path) -> None:
    """What a receiver may change: the transfer syntax between the uncompressed little endian
    ones, its own file meta information, group lengths and trailing padding."""

    def re_encode(ds: Dataset) -> None:
        implicit = ds.file_meta.TransferSyntaxUID == ImplicitVRLittleEndian
        ds.file_meta.TransferSyntaxUID = (
            ExplicitVRLittleEndian if implicit else (ImplicitVRLittleEndian)
        )
        ds.file_meta.ImplementationClassUID = "1.2.3.4"
        ds.file_meta.ImplementationVersionName = "RECEIVER"
        ds.file_meta.SourceApplicationEntityTitle = "SOMEONE"
        ds.add_new(0x00080000, "UL", 1234)  # a group length element
        ds.add_new(0xFFFCFFFC, "OB", b"\x00" * 8)  # Data Set Trailing Padding

    received = changed(source, tmp_path, re_encode)
    assert (
        pydicom.dcmread(received).file_meta.TransferSyntaxUID
        != pydicom.dcmread(source).file_meta.TransferSyntaxUID
    )
    assert instance_differences(received, source) == []


def test_pydicom_samples_in_implicit_and_explicit_vr_are_the_same_instance() -> None:
    assert instance_differences(MR_IMPLICIT, MR) == []
