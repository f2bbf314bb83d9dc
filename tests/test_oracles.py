"""Storage encoders checked against expectations that do not come from asyncdicom.

The oracles: pydicom's writer (``pydicom.dcmwrite`` with a File Meta Information built from
its data dictionary by keyword), pydicom's big endian sample files (encoded by other tools),
DCMTK's ``dcmdump`` (an independent decoder), and the file naming rule as documented
(``<SOP Instance UID>.dcm`` for a valid UID, else ``uid-`` and the first 32 hex digits of the
SHA-256 of the raw value). Nothing expected here is computed with the code under test.
"""

from __future__ import annotations

import copy
import hashlib
import io
import re
import subprocess
import zlib
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import pydicom
import pydicom.data
import pytest
from harness.peers import find_dcmtk_program
from hypothesis import given
from hypothesis import strategies as st
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filereader import read_preamble
from pydicom.uid import UID

from asyncdicom import AE, ServiceRequest
from asyncdicom.storage import Part10Writer, encode_dataset, encode_file_meta, safe_filename

SAMPLES = Path(pydicom.data.__file__).parent / "test_files"
IMPLICIT = "1.2.840.10008.1.2"
EXPLICIT = "1.2.840.10008.1.2.1"
DEFLATED = "1.2.840.10008.1.2.1.99"
BIG_ENDIAN = "1.2.840.10008.1.2.2"
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
IMPL_UID = "1.2.826.0.1.3680043.8.498.77.1.1"

# pydicom's rtdose samples carry a UID with a leading-zero component; reading them warns.
pytestmark = pytest.mark.filterwarnings("ignore:.*Invalid value for VR UI:UserWarning")


# --------------------------------------------------------------------------- pydicom oracles


def pydicom_file(
    ds: Dataset,
    *,
    transfer_syntax_uid: str,
    sop_class_uid: str,
    sop_instance_uid: str,
    implementation_version_name: str | None,
    source_ae_title: str | None,
) -> bytes:
    """A whole Part 10 file of ``ds`` as pydicom writes it, its File Meta Information set by
    keyword (pydicom's dictionary gives the VRs) and written by ``pydicom.dcmwrite``.

    With an Implementation Version Name, pydicom's standard file format mode
    (``enforce_file_format=True``) writes it; without one that mode would add pydicom's own, so
    the group is written as given (group length and version present, which pydicom fills in).
    """
    ds = copy.deepcopy(ds)
    meta = FileMetaDataset()
    meta.FileMetaInformationGroupLength = 0  # recomputed by pydicom
    meta.FileMetaInformationVersion = b"\x00\x01"
    meta.MediaStorageSOPClassUID = sop_class_uid
    meta.MediaStorageSOPInstanceUID = sop_instance_uid
    meta.TransferSyntaxUID = transfer_syntax_uid
    meta.ImplementationClassUID = IMPL_UID
    if implementation_version_name is not None:
        meta.ImplementationVersionName = implementation_version_name
    if source_ae_title is not None:
        meta.SourceApplicationEntityTitle = source_ae_title
    ds.file_meta = meta
    ds.preamble = b"\x00" * 128
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, ds, enforce_file_format=implementation_version_name is not None)
    return buffer.getvalue()


def split_part10(data: bytes) -> tuple[bytes, bytes]:
    """(File Meta Information group, data set) of a Part 10 file, cut after the group whose
    length pydicom's reader finds in (0002,0000)."""
    fp = io.BytesIO(data)
    read_preamble(fp, False)
    meta = pydicom.filereader._read_file_meta_info(fp)
    end = 132 + 12 + int(meta.FileMetaInformationGroupLength)
    return data[132:end], data[end:]


def pydicom_dataset_bytes(ds: Dataset, transfer_syntax_uid: str) -> bytes:
    """The data set alone, encoded by ``pydicom.dcmwrite`` in a native transfer syntax."""
    plain = copy.deepcopy(ds)
    if transfer_syntax_uid == DEFLATED:
        # pydicom deflates only a file whose meta says so: write one, keep its data set
        whole = pydicom_file(
            plain,
            transfer_syntax_uid=DEFLATED,
            sop_class_uid=str(ds.SOPClassUID),
            sop_instance_uid=str(ds.SOPInstanceUID),
            implementation_version_name="ORACLE",
            source_ae_title=None,
        )
        return split_part10(whole)[1]
    if "file_meta" in plain.__dict__:
        del plain.file_meta
    plain.preamble = None
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, plain, implicit_vr=transfer_syntax_uid == IMPLICIT, little_endian=True)
    return buffer.getvalue()


def on_disk_dataset(path: Path) -> bytes:
    return split_part10(path.read_bytes())[1]


# --------------------------------------------------------------------------- File Meta Information


@pytest.mark.parametrize("version_name", [None, "V1", "ASYNCDICOM_010", "ODD"])
@pytest.mark.parametrize("source_ae", [None, "A", "STORESCU", "ODDAE"])
@pytest.mark.parametrize(
    "instance_uid", ["1.2.3", "1.2.34", "1.2.826.0.1.3680043.8.498.1234567890123456789"]
)
def test_file_meta_is_what_pydicom_writes(
    version_name: str | None, source_ae: str | None, instance_uid: str
) -> None:
    ours = encode_file_meta(
        sop_class_uid=CT_IMAGE_STORAGE,
        sop_instance_uid=instance_uid,
        transfer_syntax_uid=EXPLICIT,
        implementation_class_uid=IMPL_UID,
        implementation_version_name=version_name,
        source_ae_title=source_ae,
    )
    reference = pydicom_file(
        Dataset(),
        transfer_syntax_uid=EXPLICIT,
        sop_class_uid=CT_IMAGE_STORAGE,
        sop_instance_uid=instance_uid,
        implementation_version_name=version_name,
        source_ae_title=source_ae,
    )
    assert ours == split_part10(reference)[0]


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("sample", "transfer_syntax"),
    [
        ("CT_small.dcm", EXPLICIT),
        ("CT_small.dcm", IMPLICIT),
        ("MR_small_implicit.dcm", IMPLICIT),
        ("rtplan.dcm", IMPLICIT),
        ("rtplan.dcm", DEFLATED),
        ("MR_small_bigendian.dcm", BIG_ENDIAN),
        ("JPEG2000.dcm", "1.2.840.10008.1.2.4.91"),
    ],
)
async def test_written_file_is_byte_for_byte_what_pydicom_writes(
    tmp_path: Path, sample: str, transfer_syntax: str
) -> None:
    """Part10Writer, fed the data set as received, produces the file pydicom writes for the
    same instance: preamble, prefix, meta group, data set appended unchanged; its name is the
    SOP Instance UID pydicom reads from the sample."""
    ds = pydicom.dcmread(SAMPLES / sample)
    uid = str(ds.SOPInstanceUID)
    reference = pydicom_file(
        ds,
        transfer_syntax_uid=transfer_syntax,
        sop_class_uid=str(ds.SOPClassUID),
        sop_instance_uid=uid,
        implementation_version_name="ORACLE_TEST",
        source_ae_title="SENDER",
    )
    received = split_part10(reference)[1]

    def write() -> Path:
        with Part10Writer(
            tmp_path,
            sop_class_uid=str(ds.SOPClassUID),
            sop_instance_uid=uid,
            transfer_syntax_uid=transfer_syntax,
            implementation_class_uid=IMPL_UID,
            implementation_version_name="ORACLE_TEST",
            source_ae_title="SENDER",
        ) as writer:
            for start in range(0, len(received), 1000):  # as fragments arrive
                writer.write(memoryview(received[start : start + 1000]))
            return Path(writer.commit())

    written = await anyio.to_thread.run_sync(write)
    assert written.name == f"{uid}.dcm"
    assert written.read_bytes() == reference


# --------------------------------------------------------------------------- file names


_UID = re.compile(r"[0-9]+(\.[0-9]+)*")


def documented_name(uid: str) -> str:
    """The documented naming rule, written out independently of the code."""
    if 0 < len(uid) <= 64 and _UID.fullmatch(uid):
        return f"{uid}.dcm"
    digest = hashlib.sha256(uid.encode("utf-8", errors="surrogatepass")).hexdigest()
    return f"uid-{digest[:32]}.dcm"


@given(
    st.one_of(
        st.text(),
        st.text(alphabet="0123456789.", max_size=80),
        st.lists(st.integers(0, 10**12), min_size=1, max_size=30).map(
            lambda parts: ".".join(map(str, parts))
        ),
    )
)
def test_file_names_follow_the_documented_rule(uid: str) -> None:
    assert safe_filename(uid) == documented_name(uid)


@pytest.mark.anyio
@pytest.mark.parametrize(
    "uid",
    ["1.2.3", "2.25.0012", "1" * 64, "1" * 65, "../../x", "/etc/passwd", "a\\b", "1.2.", ""],
)
async def test_written_file_name_follows_the_documented_rule(tmp_path: Path, uid: str) -> None:
    def write() -> Path:
        with Part10Writer(
            tmp_path,
            sop_class_uid=CT_IMAGE_STORAGE,
            sop_instance_uid=uid,
            transfer_syntax_uid=EXPLICIT,
            implementation_class_uid=IMPL_UID,
        ) as writer:
            writer.write(b"\x08\x00\x05\x00CS\x0a\x00ISO_IR 100")
            return Path(writer.commit())

    written = await anyio.to_thread.run_sync(write)
    assert written == tmp_path.resolve() / documented_name(uid)


# --------------------------------------------------------------------------- encode_dataset


ENCODE_SAMPLES = ["CT_small.dcm", "MR_small.dcm", "MR_small_implicit.dcm", "rtplan.dcm"]


def hand_built_dataset() -> Dataset:
    """A data set made with pydicom alone: odd-length values, multi-valued and binary
    elements, a sequence, 16-bit pixels."""
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SOPClassUID = CT_IMAGE_STORAGE
    ds.SOPInstanceUID = "1.2.826.0.1.3680043.8.498.5"
    ds.PatientName = "Oracle^Odd"
    ds.PatientID = "ODD"
    item = Dataset()
    item.CodeValue = "T-1"
    item.CodingSchemeDesignator = "SRT"
    item.CodeMeaning = "odd"
    ds.AnatomicRegionSequence = [item]
    ds.ImagePositionPatient = [-1.5, 2.25, 3]
    ds.Rows, ds.Columns = 4, 3
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
    ds.PixelRepresentation = 0
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.PixelData = bytes(range(24))
    ds["PixelData"].VR = "OW"
    return ds


def _dataset(name: str) -> Dataset:
    return hand_built_dataset() if name == "hand-built" else pydicom.dcmread(SAMPLES / name)


@pytest.mark.parametrize("transfer_syntax", [IMPLICIT, EXPLICIT, DEFLATED])
@pytest.mark.parametrize("source", [*ENCODE_SAMPLES, "hand-built"])
def test_encode_dataset_little_endian_is_what_pydicom_writes(
    source: str, transfer_syntax: str
) -> None:
    ds = _dataset(source)
    assert encode_dataset(ds, transfer_syntax) == pydicom_dataset_bytes(ds, transfer_syntax)


@pytest.mark.parametrize(
    ("little", "big"),
    [
        ("MR_small.dcm", "MR_small_bigendian.dcm"),
        ("MR_small.dcm", "MR_small_expb.dcm"),
        ("rtdose.dcm", "rtdose_expb.dcm"),  # 32-bit pixel cells
        ("SC_rgb_small_odd.dcm", "SC_rgb_small_odd_big_endian.dcm"),  # 8-bit, odd length
    ],
)
def test_encode_dataset_big_endian_is_byte_for_byte_pydicoms_big_endian_sample(
    little: str, big: str
) -> None:
    """pydicom ships the same instances encoded in both byte orders (by other software): our
    big endian encoding of the little endian file must be the big endian file's data set."""
    ds = pydicom.dcmread(SAMPLES / little)
    reference = pydicom.dcmread(SAMPLES / big)
    for tag in [elem.tag for elem in ds if elem.tag not in reference]:
        del ds[tag]  # e.g. MR_small.dcm's trailing padding, absent from the other file
    assert encode_dataset(ds, BIG_ENDIAN) == on_disk_dataset(SAMPLES / big)


# --------------------------------------------------------------------------- dcmdump


def dcmdump(path: Path, *options: str) -> subprocess.CompletedProcess[str]:
    program = find_dcmtk_program("dcmdump")
    assert program is not None
    return subprocess.run(
        [program, *options, str(path)], capture_output=True, text=True, timeout=60
    )


def dumped_dataset(path: Path) -> list[str]:
    """dcmdump's view of a Part 10 file's data set: one line per element (tag, VR, value), the
    lengths and names dropped (lengths legitimately differ between implicit and explicit VR)."""
    proc = dcmdump(path, "-q", "+L", "+fo")
    assert proc.returncode == 0, proc.stderr
    assert "E:" not in proc.stderr and "W:" not in proc.stderr, proc.stderr
    data_set = proc.stdout.split("# Dicom-Data-Set", 1)[1].splitlines()
    assert data_set[1].startswith("# Used TransferSyntax"), data_set[:2]
    return [re.sub(r"\s+#\s*\d+,\s*\d+.*$", "", line).rstrip() for line in data_set[2:]]


def dumped_meta(path: Path) -> dict[str, str]:
    """dcmdump's view of the File Meta Information: tag -> "VR value"."""
    proc = dcmdump(path, "-q", "+fo", "-M")
    assert proc.returncode == 0, proc.stderr
    meta = proc.stdout.split("# Dicom-Meta-Information-Header", 1)[1].split("# Dicom-Data-Set")[0]
    found = {}
    for line in meta.splitlines():
        if match := re.match(r"\((0002,[0-9a-f]{4})\) (\S\S) (.*?)\s+#", line):
            found[match[1]] = f"{match[2]} {match[3]}"
    return found


def part10_with_pydicom_meta(path: Path, ds: Dataset, transfer_syntax: str, data: bytes) -> Path:
    """``data`` as the data set of a Part 10 file whose meta group pydicom wrote."""
    head = pydicom_file(
        Dataset(),
        transfer_syntax_uid=transfer_syntax,
        sop_class_uid=str(ds.SOPClassUID),
        sop_instance_uid=str(ds.SOPInstanceUID),
        implementation_version_name="ORACLE",
        source_ae_title=None,
    )
    meta, _ = split_part10(head)  # without the (deflated, empty) data set pydicom wrote
    path.write_bytes(b"\x00" * 128 + b"DICM" + meta + data)
    return path


@pytest.mark.requires_peer("dcmtk")
@pytest.mark.parametrize("transfer_syntax", [IMPLICIT, EXPLICIT, DEFLATED, BIG_ENDIAN])
@pytest.mark.parametrize("source", ["CT_small.dcm", "rtplan.dcm", "MR_small.dcm", "hand-built"])
def test_dcmdump_reads_the_same_data_set_in_every_native_syntax(
    tmp_path: Path, source: str, transfer_syntax: str
) -> None:
    ds = _dataset(source)
    if source == "hand-built":
        original = part10_with_pydicom_meta(
            tmp_path / "original.dcm", ds, EXPLICIT, pydicom_dataset_bytes(ds, EXPLICIT)
        )
    else:
        original = SAMPLES / source
    encoded = part10_with_pydicom_meta(
        tmp_path / "encoded.dcm", ds, transfer_syntax, encode_dataset(ds, transfer_syntax)
    )
    assert dumped_dataset(encoded) == dumped_dataset(original)


# --------------------------------------------------------------------------- over the network


#: distinct SOP Instance UIDs, in explicit and implicit VR LE, deflated and big endian
STORE_SAMPLES = ["CT_small.dcm", "rtplan.dcm", "image_dfl.dcm", "MR_small_bigendian.dcm"]


@pytest.mark.anyio
@pytest.mark.requires_peer("dcmtk")
async def test_stored_files_are_named_by_uid_and_hold_what_was_sent(tmp_path: Path) -> None:
    """Sample files sent to a storage SCP with ``store(path)`` and saved with ``save_to``:
    each file's name is the SOP Instance UID pydicom reads from the sample, and dcmdump reads
    the sent data set and a meta group that names the instance and its transfer syntax."""
    folder = tmp_path / "received"
    scp = AE("ORACLESCP", accept_any_storage=True)

    @scp.on_store
    async def on_store(request: ServiceRequest) -> int:
        await request.save_to(folder)
        return 0x0000

    sources = [SAMPLES / name for name in STORE_SAMPLES]
    headers = {p: pydicom.dcmread(p, stop_before_pixels=True) for p in sources}
    contexts: list[Any] = [
        (str(h.SOPClassUID), [str(h.file_meta.TransferSyntaxUID)]) for h in headers.values()
    ]
    with anyio.fail_after(60):
        async with (
            scp.server("127.0.0.1", 0) as server,
            AE("ORACLESCU").associate(
                "127.0.0.1", server.port, called_aet="ORACLESCP", contexts=contexts
            ) as assoc,
        ):
            for path in sources:
                assert (await assoc.store(path)).status == 0x0000, path.name

    names = sorted(p.name for p in folder.iterdir())
    assert names == sorted(f"{h.SOPInstanceUID}.dcm" for h in headers.values())
    for path, header in headers.items():
        stored = folder / f"{header.SOPInstanceUID}.dcm"
        assert dumped_dataset(stored) == dumped_dataset(path), path.name
        meta = dumped_meta(stored)
        ts = UID(str(header.file_meta.TransferSyntaxUID))
        assert meta["0002,0003"] == f"UI [{header.SOPInstanceUID}]", meta
        assert meta["0002,0002"].startswith("UI "), meta
        assert meta["0002,0010"].startswith("UI ="), meta
        assert meta["0002,0016"] == "AE [ORACLESCU]", meta
        # the transfer syntax named in the meta is the one the data set is in
        assert pydicom.dcmread(stored).file_meta.TransferSyntaxUID == ts
        # the group length dcmdump reads is the length of the group pydicom finds
        assert meta["0002,0000"] == f"UL {len(split_part10(stored.read_bytes())[0]) - 12}"


def test_pydicom_deflate_oracle_round_trips() -> None:
    """The deflated oracle above is a real deflate stream of the explicit VR encoding."""
    ds = pydicom.dcmread(SAMPLES / "rtplan.dcm")
    deflated = pydicom_dataset_bytes(ds, DEFLATED)
    inflated = zlib.decompressobj(-zlib.MAX_WBITS).decompress(deflated)
    assert inflated == pydicom_dataset_bytes(ds, EXPLICIT)
