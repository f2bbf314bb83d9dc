"""Tests of asyncdicom.storage: Part 10 writing, reading for sending, transcoding, synthetic data.

The writer is synchronous; the async driver runs it in worker threads, so the tests that write
files do the same through ``anyio.to_thread.run_sync`` (on asyncio and trio).
"""

from __future__ import annotations

import array
import functools
import hashlib
import logging
import os
import re
import shutil
import struct
import tracemalloc
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import anyio
import anyio.to_thread
import pydicom
import pydicom.data
import pydicom.uid
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import _read_file_meta_info, read_preamble
from pydicom.filewriter import write_file_meta_info

from asyncdicom import AE, AEConfig
from asyncdicom.errors import DICOMError, InvalidDataset, StorageError
from asyncdicom.protocol import uids
from asyncdicom.protocol.uids import (
    DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN,
    EXPLICIT_VR_BIG_ENDIAN,
    EXPLICIT_VR_LITTLE_ENDIAN,
    IMPLICIT_VR_LITTLE_ENDIAN,
)
from asyncdicom.services.storage import save_request
from asyncdicom.storage import (
    InvalidDicomFile,
    Part10Source,
    Part10Writer,
    TranscodeError,
    UnsupportedTransferSyntax,
    decode_dataset,
    encode_dataset,
    is_valid_uid,
    read_part10_for_send,
    safe_filename,
    target_path,
    transcode,
)
from asyncdicom.storage.codec import NATIVE_TRANSFER_SYNTAXES, read_header
from asyncdicom.storage.meta import encode_file_meta
from asyncdicom.storage.synthetic import CT_IMAGE_STORAGE, make_ct_instance, write_ct_files
from asyncdicom.storage.writer import StoredFile, prune_empty_folders, remove_stale_temp_files

SAMPLES = Path(pydicom.data.__file__).parent / "test_files"
IMPL_UID = "1.2.3.4.5.6.7"  # an arbitrary syntactically valid implementation class UID
IMPL_VERSION = "ASYNCDICOM_TEST"
DCMDUMP = "/usr/bin/dcmdump"

T = TypeVar("T")

# pydicom's rtdose samples carry a UID with a leading-zero component; reading them warns.
pytestmark = pytest.mark.filterwarnings(
    r"ignore:.*Invalid value for VR UI. '1\.2\.123\.456\.78\.9\.0123:UserWarning"
)


async def in_thread(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run a blocking storage call the way the async driver does."""
    return await anyio.to_thread.run_sync(functools.partial(fn, *args, **kwargs))


def dataset_bytes_on_disk(path: Path) -> tuple[bytes, int]:
    """The bytes after the meta group, located with pydicom's own reader, and their offset."""
    with open(path, "rb") as fp:
        read_preamble(fp, False)
        _read_file_meta_info(fp)
        offset = fp.tell()
        return fp.read(), offset


def meta_group_bytes(path: Path) -> bytes:
    """Raw group 0002 bytes of a Part 10 file (between 'DICM' and the data set)."""
    data = path.read_bytes()
    _, offset = dataset_bytes_on_disk(path)
    return data[132:offset]


def write_source(folder: Path, source: Part10Source, chunk_size: int) -> Path:
    with Part10Writer(
        folder,
        sop_class_uid=source.sop_class_uid,
        sop_instance_uid=source.sop_instance_uid,
        transfer_syntax_uid=source.transfer_syntax_uid,
        implementation_class_uid=IMPL_UID,
        implementation_version_name=IMPL_VERSION,
        source_ae_title="SENDER",
    ) as writer:
        for chunk in source.iter_chunks(chunk_size):
            writer.write(memoryview(chunk))
        return writer.commit()


def new_writer(
    folder: Path, uid: str, ts: str = EXPLICIT_VR_LITTLE_ENDIAN, **options: Any
) -> Part10Writer:
    return Part10Writer(
        folder,
        sop_class_uid=CT_IMAGE_STORAGE,
        sop_instance_uid=uid,
        transfer_syntax_uid=ts,
        implementation_class_uid=IMPL_UID,
        **options,
    )


def tree(root: Path) -> set[str]:
    """Every path below ``root`` (files, dirs, links), relative, without following links."""
    found: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            found.add(str((Path(dirpath) / name).relative_to(root)))
    return found


# ---------------------------------------------------------------------------------------------
# Writing


@pytest.mark.anyio
@pytest.mark.parametrize(
    "sample",
    [
        "CT_small.dcm",  # Explicit VR LE
        "MR_small_implicit.dcm",  # Implicit VR LE
        "MR_small_bigendian.dcm",  # Explicit VR BE
        "image_dfl.dcm",  # Deflated: the deflated stream is stored as received
        "JPEG2000.dcm",  # encapsulated
        "rtplan.dcm",  # sequences, no pixel data
    ],
)
async def test_written_file_matches_source(tmp_path: Path, sample: str) -> None:
    source = await in_thread(read_part10_for_send, SAMPLES / sample)
    written = await in_thread(write_source, tmp_path, source, 1000)

    assert written == tmp_path.resolve() / f"{source.sop_instance_uid}.dcm"
    assert sorted(os.listdir(tmp_path)) == [written.name]
    raw = written.read_bytes()
    assert raw[:128] == b"\x00" * 128 and raw[128:132] == b"DICM"

    # Byte level: the data set is stored exactly as it came.
    stored, _ = dataset_bytes_on_disk(written)
    original, _ = dataset_bytes_on_disk(SAMPLES / sample)
    assert stored == original

    # Meta group: group length equals the bytes that follow (0002,0000), elements as given.
    meta = meta_group_bytes(written)
    assert meta[:8] == b"\x02\x00\x00\x00UL\x04\x00"
    assert struct.unpack("<I", meta[8:12])[0] == len(meta) - 12
    result = pydicom.dcmread(written)
    fm = result.file_meta
    assert fm.FileMetaInformationVersion == b"\x00\x01"
    assert fm.MediaStorageSOPClassUID == source.sop_class_uid
    assert fm.MediaStorageSOPInstanceUID == source.sop_instance_uid
    assert fm.TransferSyntaxUID == source.transfer_syntax_uid
    assert fm.ImplementationClassUID == IMPL_UID
    assert fm.ImplementationVersionName == IMPL_VERSION
    assert fm.SourceApplicationEntityTitle == "SENDER"
    assert [e.tag for e in fm] == [
        0x00020000,
        0x00020001,
        0x00020002,
        0x00020003,
        0x00020010,
        0x00020012,
        0x00020013,
        0x00020016,
    ]
    # Data set level: pydicom reads the same data set from both files.
    expected = pydicom.dcmread(SAMPLES / sample)
    assert Dataset(result) == Dataset(expected)


@pytest.mark.anyio
async def test_dcmdump_accepts_written_file(tmp_path: Path) -> None:
    ds = make_ct_instance(10_000, patient_id="DUMP")
    data = encode_dataset(ds, EXPLICIT_VR_LITTLE_ENDIAN)
    uid = str(ds.SOPInstanceUID)

    def write() -> Path:
        with new_writer(tmp_path, uid) as writer:
            writer.write(data)
            return writer.commit()

    written = await in_thread(write)
    # +fo: read as a file format only (preamble, DICM and meta required); errors -> exit != 0.
    proc = await anyio.run_process([DCMDUMP, "+fo", "-Ep", str(written)], check=False)
    out = proc.stdout.decode("latin-1")
    assert proc.returncode == 0, proc.stderr
    assert "(0002,0010) UI =LittleEndianExplicit" in out
    assert f"(0002,0003) UI [{uid}]" in out
    assert "(0010,0020) LO [DUMP]" in out
    assert "(0002,0012) UI [1.2.3.4.5.6.7]" in out
    assert b"E:" not in proc.stderr and b"W:" not in proc.stderr


@pytest.mark.anyio
async def test_exception_inside_context_discards(tmp_path: Path) -> None:
    def write_then_fail() -> None:
        with new_writer(tmp_path, "1.2.3.4") as writer:
            writer.write(b"\x08\x00\x05\x00CS\x0a\x00ISO_IR 100")
            assert writer.temp_path.exists()
            assert writer.temp_path.parent == tmp_path.resolve()
            assert writer.temp_path.name.startswith(".")
            assert writer.temp_path.name.endswith(".part")
            raise RuntimeError("peer aborted")

    with pytest.raises(RuntimeError, match="peer aborted"):
        await in_thread(write_then_fail)
    assert os.listdir(tmp_path) == []


@pytest.mark.anyio
async def test_leaving_without_commit_and_explicit_discard(tmp_path: Path) -> None:
    def no_commit() -> Part10Writer:
        with new_writer(tmp_path, "1.2.3.4") as writer:
            writer.write(b"\x00" * 100)
        return writer

    writer = await in_thread(no_commit)
    assert writer.closed
    assert os.listdir(tmp_path) == []
    with pytest.raises(ValueError):
        writer.write(b"xx")
    with pytest.raises(ValueError):
        writer.commit()

    other = await in_thread(new_writer, tmp_path, "1.2.3.5")
    await in_thread(other.write, b"\x00" * 10)
    await in_thread(other.discard)
    await in_thread(other.discard)  # idempotent
    assert os.listdir(tmp_path) == []
    assert other.bytes_written == 10


@pytest.mark.anyio
async def test_commit_failure_leaves_nothing(tmp_path: Path) -> None:
    (tmp_path / "1.2.3.dcm").mkdir()  # the final name is taken by a directory
    writer = await in_thread(new_writer, tmp_path, "1.2.3", on_duplicate="overwrite")
    await in_thread(writer.write, b"\x00\x00")
    with pytest.raises(OSError):
        await in_thread(writer.commit)
    assert os.listdir(tmp_path) == ["1.2.3.dcm"]
    assert (tmp_path / "1.2.3.dcm").is_dir()


@pytest.mark.anyio
async def test_existing_file_is_replaced_atomically(tmp_path: Path) -> None:
    final = tmp_path / "1.2.3.dcm"
    final.write_bytes(b"old copy")

    def write(payload: bytes) -> Path:
        with new_writer(tmp_path, "1.2.3", on_duplicate="overwrite") as writer:
            writer.write(payload)
            # Until commit the old copy is untouched.
            assert final.read_bytes() == b"old copy"
            return writer.commit()

    path = await in_thread(write, b"\x08\x00" * 4)
    assert path == final.resolve()
    assert path.read_bytes().endswith(b"\x08\x00" * 4)
    assert os.listdir(tmp_path) == ["1.2.3.dcm"]


HOSTILE_UIDS = [
    "../../etc/passwd",
    "/abs",
    "/etc/passwd",
    "a/b",
    "a\\b",
    "1.2\x00",
    "1.2\x00/../../x",
    "9" * 200,
    "1." * 100 + "1",
    "",
    ".",
    "..",
    "...",
    ".1.2",
    "1.2.",
    "1..2",
    " 1.2",
    "1.2.3.dcm",
    "~root",
    "CON",
]


@pytest.mark.parametrize("uid", HOSTILE_UIDS)
def test_safe_filename_hostile(uid: str) -> None:
    name = safe_filename(uid)
    assert name.startswith("uid-") and name.endswith(".dcm")
    assert len(name) == len("uid-") + 32 + len(".dcm")
    assert all(c in "0123456789abcdef" for c in name[4:-4])
    assert not is_valid_uid(uid)


def test_safe_filename_valid_and_distinct() -> None:
    assert safe_filename("1.2.840.10008.1.2") == "1.2.840.10008.1.2.dcm"
    assert safe_filename("2.25.0012") == "2.25.0012.dcm"  # leading zero tolerated for naming
    assert safe_filename("1" * 64) == "1" * 64 + ".dcm"
    assert safe_filename("1" * 65).startswith("uid-")
    assert safe_filename("1.2", suffix=".part2") == "1.2.part2"
    names = {safe_filename(uid) for uid in HOSTILE_UIDS}
    assert len(names) == len(HOSTILE_UIDS)  # distinct bad values do not overwrite each other
    expected = "uid-" + hashlib.sha256(b"a/b").hexdigest()[:32] + ".dcm"
    assert safe_filename("a/b") == expected
    # Lone surrogates (undecodable bytes from a peer) still get a name.
    assert safe_filename("1.2\udcff").startswith("uid-")
    for bad_suffix in ("/x", ".dcm/..", "x", "./", ".\x00"):
        with pytest.raises(ValueError):
            safe_filename("1.2", suffix=bad_suffix)


def test_target_path_rejects_escapes(tmp_path: Path) -> None:
    for name in ("..", ".", "", "a/b", "../x", "/abs", "x\x00y", "a\\b"):
        with pytest.raises(ValueError):
            target_path(tmp_path, name)
    assert target_path(tmp_path, "1.2.dcm") == tmp_path.resolve() / "1.2.dcm"
    with pytest.raises(FileNotFoundError):
        target_path(tmp_path / "missing", "1.2.dcm")
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(NotADirectoryError):
        target_path(tmp_path / "file", "1.2.dcm")


def test_a_storage_folder_replaced_after_use_is_resolved_again(tmp_path: Path) -> None:
    """The storage folder's resolution is remembered between instances; a folder removed
    since, or replaced by a link to elsewhere, is not written through the old answer: the
    writer fails (FileNotFoundError) and the next one resolves the folder again."""
    store, elsewhere = tmp_path / "store", tmp_path / "elsewhere"
    store.mkdir()
    elsewhere.mkdir()
    with new_writer(store, "1.2.1") as writer:
        writer.write(b"")
    store.rmdir()
    with pytest.raises(FileNotFoundError):
        new_writer(store, "1.2.2")
    store.symlink_to(elsewhere)  # the administrator moved the storage
    writer = new_writer(store, "1.2.3")
    assert writer.path == elsewhere.resolve() / "1.2.3.dcm"
    writer.discard()


@pytest.mark.anyio
async def test_hostile_uids_never_escape_the_folder(tmp_path: Path) -> None:
    store = tmp_path / "a" / "b" / "store"
    store.mkdir(parents=True)
    (tmp_path / "etc").mkdir()
    before_outside = tree(tmp_path) - {str(p.relative_to(tmp_path)) for p in [store]}

    def write(uid: str) -> Path:
        with new_writer(store, uid) as writer:
            writer.write(b"\x08\x00\x05\x00CS\x0a\x00ISO_IR 100")
            return writer.commit()

    written: set[Path] = set()
    for uid in HOSTILE_UIDS:
        path = await in_thread(write, uid)
        assert path.parent == store.resolve()
        assert path.name == safe_filename(uid)
        written.add(path)
        # The peer's value is recorded verbatim in (0002,0003), NUL-padded to even length
        # (pydicom drops insignificant surrounding spaces of UI values).
        raw = uid.strip(" ").encode("ascii")
        value = raw + b"\x00" * (len(raw) % 2)
        element = b"\x02\x00\x03\x00UI" + struct.pack("<H", len(value)) + value
        assert element in meta_group_bytes(path)
    assert len(written) == len(HOSTILE_UIDS)
    assert set(os.listdir(store)) == {p.name for p in written}
    after_outside = {p for p in tree(tmp_path) if not p.startswith("a/b/store/")} - {"a/b/store"}
    assert after_outside == before_outside


@pytest.mark.anyio
async def test_symlink_at_final_name_is_replaced_not_followed(tmp_path: Path) -> None:
    store = tmp_path / "store"
    store.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"precious")
    (store / "1.2.3.dcm").symlink_to(victim)
    # A dangling link named like a temporary file cannot be hijacked either (O_EXCL).
    writer = await in_thread(new_writer, store, "1.2.3", on_duplicate="overwrite")
    await in_thread(writer.write, b"\x00\x00")
    path = await in_thread(writer.commit)
    assert victim.read_bytes() == b"precious"
    assert not path.is_symlink()
    assert path.read_bytes()[128:132] == b"DICM"


def test_symlinked_store_folder_is_followed(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    link = tmp_path / "link"
    link.symlink_to(real, target_is_directory=True)
    with new_writer(link, "1.2.3") as writer:
        writer.write(b"\x00\x00")
        path = writer.commit()
    assert path == real.resolve() / "1.2.3.dcm"


def _write_both_ways(folder: Path, pieces: list[bytes]) -> tuple[bytes, bytes]:
    """The same pieces written with write() one by one and with write_many() (one file each)."""
    files = []
    for index, many in enumerate((False, True)):
        sub = folder / str(index)
        sub.mkdir()
        with new_writer(sub, "1.2.3") as writer:
            if many:
                writer.write_many([memoryview(p) for p in pieces])
            else:
                for piece in pieces:
                    writer.write(piece)
            assert writer.bytes_written == sum(map(len, pieces))
            files.append(writer.commit().read_bytes())
    return files[0], files[1]


def test_write_many_writes_what_write_does(tmp_path: Path) -> None:
    pieces = [bytes([n]) * (1000 + n) for n in range(40)]  # odd and even sizes
    one_by_one, at_once = _write_both_ways(tmp_path, pieces)
    assert at_once == one_by_one
    assert at_once.endswith(b"".join(pieces)) and at_once[128:132] == b"DICM"


def test_write_many_after_write_and_with_nothing(tmp_path: Path) -> None:
    with new_writer(tmp_path, "1.2.3") as writer:
        writer.write(b"\x08\x00")
        writer.write_many([])
        writer.write_many([b"\x16\x00", memoryview(b"UI\x00\x00")])
        path = writer.commit()
    assert dataset_bytes_on_disk(path)[0] == b"\x08\x00\x16\x00UI\x00\x00"
    empty = tmp_path / "empty"
    empty.mkdir()
    with new_writer(empty, "1.2.4") as writer:
        writer.write_many([])
        path = writer.commit()
    data, offset = dataset_bytes_on_disk(path)
    assert data == b"" and path.read_bytes()[128:132] == b"DICM"  # the meta header alone
    assert offset == len(path.read_bytes())


def test_write_many_goes_on_after_short_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # writev may write less than asked (a signal, a full pipe; rarely a file): the rest follows
    from asyncdicom.storage import writer as writer_module

    real = os.writev
    calls: list[int] = []

    def short_writev(fd: int, buffers: list[Any]) -> int:
        calls.append(len(buffers))
        first = memoryview(buffers[0]).cast("B")
        return real(fd, [first[: max(1, len(first) // 3)]])

    monkeypatch.setattr(writer_module, "_writev", short_writev)
    monkeypatch.setattr(writer_module, "_IOV_MAX", 3)
    pieces = [bytes([n]) * (10 + 7 * n) for n in range(9)]
    one_by_one, at_once = _write_both_ways(tmp_path, pieces)
    assert at_once == one_by_one
    assert len(calls) > len(pieces) and max(calls) <= 3


def test_writer_rejects_unencodable_values(tmp_path: Path) -> None:
    kwargs: dict[str, Any] = {
        "sop_class_uid": CT_IMAGE_STORAGE,
        "sop_instance_uid": "1.2.3",
        "transfer_syntax_uid": EXPLICIT_VR_LITTLE_ENDIAN,
        "implementation_class_uid": IMPL_UID,
    }
    bad: list[dict[str, Any]] = [
        {"sop_instance_uid": "1.2.é"},
        {"sop_class_uid": "1" * 70000},
        {"implementation_class_uid": "not a uid"},
        {"source_ae_title": "A" * 17},
        {"source_ae_title": "   "},
        {"source_ae_title": "A\\B"},
        {"implementation_version_name": "X" * 17},
        {"implementation_version_name": "tab\there"},
    ]
    for change in bad:
        with pytest.raises(ValueError):
            Part10Writer(tmp_path, **{**kwargs, **change})
    assert os.listdir(tmp_path) == []


@pytest.mark.anyio
async def test_streaming_64_mib_does_not_accumulate(tmp_path: Path) -> None:
    ds = make_ct_instance(64 << 20, seed=3)
    data = encode_dataset(ds, EXPLICIT_VR_LITTLE_ENDIAN)
    assert len(ds.PixelData) >= 64 << 20
    view = memoryview(data)
    chunk = 1 << 20
    writer = await in_thread(new_writer, tmp_path, str(ds.SOPInstanceUID))

    tracemalloc.start()
    try:
        for start in range(0, len(data), chunk):
            await in_thread(writer.write, view[start : start + chunk])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    path = await in_thread(writer.commit)

    # The writer kept no copy of what it was given: far below one chunk per MiB written.
    assert peak < 4 << 20, peak
    assert writer.bytes_written == len(data)
    stored, _ = dataset_bytes_on_disk(path)
    assert len(stored) == len(data)
    assert hashlib.sha256(stored).digest() == hashlib.sha256(data).digest()
    del stored
    back = pydicom.dcmread(path)
    assert back.SOPInstanceUID == ds.SOPInstanceUID
    assert back.PixelData == ds.PixelData


# ---------------------------------------------------------------------------------------------
# Reading for sending

SEND_SAMPLES = [
    "CT_small.dcm",
    "MR_small.dcm",
    "MR_small_implicit.dcm",
    "MR_small_bigendian.dcm",
    "image_dfl.dcm",
    "rtplan.dcm",
    "rtdose.dcm",
    "JPEG2000.dcm",
    "MR_small_RLE.dcm",
    "waveform_ecg.dcm",
    "no_meta_group_length.dcm",
    "priv_SQ.dcm",
]


@pytest.mark.parametrize("sample", SEND_SAMPLES)
def test_read_for_send_agrees_with_pydicom(sample: str) -> None:
    path = SAMPLES / sample
    source = read_part10_for_send(path)
    tail, offset = dataset_bytes_on_disk(path)
    reference = pydicom.dcmread(path)

    assert source.has_file_meta
    assert source.dataset_offset == offset
    assert source.dataset_length == len(tail)
    # the data set's own UIDs win over the meta's (they identify what is sent, PS3.7 9.3.1.1)
    meta = reference.file_meta
    assert source.sop_class_uid == reference.get("SOPClassUID", meta.MediaStorageSOPClassUID)
    assert source.sop_instance_uid == reference.get(
        "SOPInstanceUID", meta.MediaStorageSOPInstanceUID
    )
    assert source.transfer_syntax_uid == reference.file_meta.TransferSyntaxUID

    for chunk_size in (1, 7, 4096, 1 << 20):
        chunks = list(source.iter_chunks(chunk_size))
        assert all(0 < len(c) <= chunk_size for c in chunks)
        assert b"".join(chunks) == tail
    assert source.read_bytes() == tail

    decoded = decode_dataset(tail, source.transfer_syntax_uid)
    assert Dataset(decoded) == Dataset(reference)
    assert decoded.file_meta.TransferSyntaxUID == source.transfer_syntax_uid


@pytest.mark.parametrize(
    ("sample", "ts"),
    [
        ("ExplVR_BigEndNoMeta.dcm", EXPLICIT_VR_BIG_ENDIAN),
        ("ExplVR_LitEndNoMeta.dcm", EXPLICIT_VR_LITTLE_ENDIAN),
        ("rtstruct.dcm", IMPLICIT_VR_LITTLE_ENDIAN),
    ],
)
def test_read_for_send_raw_dataset(sample: str, ts: str) -> None:
    path = SAMPLES / sample
    source = read_part10_for_send(path)
    reference = pydicom.dcmread(path, force=True)
    assert not source.has_file_meta
    assert source.transfer_syntax_uid == ts
    assert source.dataset_offset == 0
    assert source.read_bytes() == path.read_bytes()
    assert source.sop_class_uid == reference.SOPClassUID
    assert source.sop_instance_uid == reference.SOPInstanceUID
    assert Dataset(decode_dataset(source.read_bytes(), ts)) == Dataset(reference)


@pytest.mark.parametrize("preamble", [True, False])
def test_read_for_send_meta_without_transfer_syntax(tmp_path: Path, preamble: bool) -> None:
    # A meta group lacking (0002,0010), with or without preamble: the encoding is detected from
    # the data set, the data set still starts after the meta group.
    ds = make_ct_instance(64)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    buffer = DicomBytesIO()
    write_file_meta_info(buffer, meta, enforce_standard=False)
    body = encode_dataset(ds, IMPLICIT_VR_LITTLE_ENDIAN)
    head = (b"\x00" * 128 + b"DICM" if preamble else b"") + buffer.getvalue()
    path = tmp_path / "x.dcm"
    path.write_bytes(head + body)

    source = read_part10_for_send(path)
    assert source.has_file_meta
    assert source.transfer_syntax_uid == IMPLICIT_VR_LITTLE_ENDIAN
    assert source.sop_instance_uid == ds.SOPInstanceUID
    assert source.dataset_offset == len(head)
    assert source.read_bytes() == body


def test_read_for_send_prefix_without_meta(tmp_path: Path) -> None:
    ds = make_ct_instance(64)
    body = encode_dataset(ds, EXPLICIT_VR_BIG_ENDIAN)
    path = tmp_path / "x.dcm"
    path.write_bytes(_part10_prefix() + body)
    source = read_part10_for_send(path)
    assert not source.has_file_meta
    assert source.dataset_offset == 132
    assert source.transfer_syntax_uid == EXPLICIT_VR_BIG_ENDIAN
    assert source.sop_class_uid == CT_IMAGE_STORAGE
    assert source.read_bytes() == body


def test_iter_chunks_detects_truncation(tmp_path: Path) -> None:
    path = tmp_path / "ct.dcm"
    shutil.copy(SAMPLES / "CT_small.dcm", path)
    source = read_part10_for_send(path)
    with open(path, "r+b") as fp:
        fp.truncate(source.dataset_offset + 100)
    with pytest.raises(InvalidDicomFile, match="shorter"):
        list(source.iter_chunks(64))
    with pytest.raises(ValueError):
        list(source.iter_chunks(0))


def _part10_prefix() -> bytes:
    return b"\x00" * 128 + b"DICM"


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("empty", b""),
        ("text", b"hello, this is not a DICOM file\n" * 20),
        ("random", bytes((i * 7919 + 13) % 251 for i in range(5000))),
        ("dicm_only", _part10_prefix()),
        ("truncated_meta", _part10_prefix() + b"\x02\x00\x00\x00UL\x04\x00\x60"),
        ("meta_value_past_eof", _part10_prefix() + b"\x02\x00\x02\x00UI\x40\x001.2.3"),
        (
            "meta_undefined_length",
            _part10_prefix() + b"\x02\x00\x01\x00OB\x00\x00\xff\xff\xff\xff",
        ),
    ],
)
def test_invalid_files(tmp_path: Path, name: str, content: bytes) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(InvalidDicomFile):
        read_part10_for_send(path)


def test_invalid_meta_only_and_no_sop_uids(tmp_path: Path) -> None:
    # A well-formed meta group with no data set behind it.
    path = tmp_path / "meta_only.dcm"
    with new_writer(tmp_path, "1.2.3") as writer:
        meta_only = writer.commit()
    meta_only.rename(path)
    with pytest.raises(InvalidDicomFile, match="no data set"):
        read_part10_for_send(path)
    # pydicom samples without any SOP Class/Instance UID.
    for sample in ("no_meta.dcm", "empty_charset_LEI.dcm"):
        with pytest.raises(InvalidDicomFile):
            read_part10_for_send(SAMPLES / sample)
    with pytest.raises(FileNotFoundError):
        read_part10_for_send(tmp_path / "does-not-exist.dcm")


# ---------------------------------------------------------------------------------------------
# Encoding, decoding, transcoding


def _public_elements(ds: Dataset) -> Dataset:
    """Non-private elements: private ones may legitimately become UN through Implicit VR."""
    out = Dataset()
    for elem in ds:
        if not elem.tag.is_private:
            out.add(elem)
    return out


@pytest.mark.parametrize("target", sorted(NATIVE_TRANSFER_SYNTAXES))
@pytest.mark.parametrize(
    "sample", ["MR_small.dcm", "MR_small_bigendian.dcm", "MR_small_implicit.dcm", "rtdose.dcm"]
)
def test_transcode_round_trip(sample: str, target: str) -> None:
    source = read_part10_for_send(SAMPLES / sample)
    original = pydicom.dcmread(SAMPLES / sample)
    there = transcode(source, target)
    decoded = decode_dataset(there, target)
    assert decoded.SOPInstanceUID == original.SOPInstanceUID
    assert decoded.SOPClassUID == original.SOPClassUID
    if target == source.transfer_syntax_uid:
        assert there == source.read_bytes()  # identity: no decoding at all
    if target == DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN:
        assert len(there) % 2 == 0

    back = encode_dataset(decoded, source.transfer_syntax_uid)
    again = decode_dataset(back, source.transfer_syntax_uid)
    assert again.PixelData == original.PixelData
    assert _public_elements(again) == _public_elements(original)


@pytest.mark.parametrize(
    ("little", "big"),
    [
        ("MR_small.dcm", "MR_small_bigendian.dcm"),
        ("MR_small.dcm", "MR_small_expb.dcm"),
        ("rtdose.dcm", "rtdose_expb.dcm"),  # 32-bit pixel cells
        ("SC_rgb_small_odd.dcm", "SC_rgb_small_odd_big_endian.dcm"),
        ("liver_1frame.dcm", "liver_expb_1frame.dcm"),  # 1-bit OB pixel data: no swap
    ],
)
def test_transcode_big_endian_matches_pydicom_samples(little: str, big: str) -> None:
    le_ref = pydicom.dcmread(SAMPLES / little)
    be_ref = pydicom.dcmread(SAMPLES / big)
    to_le = decode_dataset(
        transcode(read_part10_for_send(SAMPLES / big), EXPLICIT_VR_LITTLE_ENDIAN),
        EXPLICIT_VR_LITTLE_ENDIAN,
    )
    assert to_le.PixelData == le_ref.PixelData
    to_be = decode_dataset(
        transcode(read_part10_for_send(SAMPLES / little), EXPLICIT_VR_BIG_ENDIAN),
        EXPLICIT_VR_BIG_ENDIAN,
    )
    assert to_be.PixelData == be_ref.PixelData
    assert to_be.Rows == le_ref.Rows and to_be.SOPInstanceUID == le_ref.SOPInstanceUID


def test_encode_dataset_does_not_modify_input() -> None:
    ds = pydicom.dcmread(SAMPLES / "MR_small.dcm")
    pixels = ds.PixelData
    encode_dataset(ds, EXPLICIT_VR_BIG_ENDIAN)
    jpeg = read_part10_for_send(SAMPLES / "JPEG2000.dcm")
    encapsulated = decode_dataset(jpeg.read_bytes(), jpeg.transfer_syntax_uid)
    fresh = Dataset()
    fresh.update(encapsulated)  # a Dataset built by hand: Pixel Data length flag not set yet
    fresh["PixelData"].is_undefined_length = False
    assert encode_dataset(fresh, jpeg.transfer_syntax_uid) == jpeg.read_bytes()
    assert not fresh["PixelData"].is_undefined_length  # flag set on a copy only
    assert ds.PixelData == pixels
    assert not ds["PixelData"].is_undefined_length
    # Same syntax as read: pydicom re-encodes the file's data set byte for byte.
    on_disk, _ = dataset_bytes_on_disk(SAMPLES / "MR_small.dcm")
    assert encode_dataset(ds, EXPLICIT_VR_LITTLE_ENDIAN) == on_disk


def test_encode_fresh_dataset_all_native_syntaxes() -> None:
    ds = make_ct_instance(2048, seed=5)
    little = encode_dataset(ds, EXPLICIT_VR_LITTLE_ENDIAN)
    for ts in sorted(NATIVE_TRANSFER_SYNTAXES):
        decoded = decode_dataset(encode_dataset(ds, ts), ts)
        if ts == EXPLICIT_VR_BIG_ENDIAN:
            # 16-bit pixel words travel byte-swapped; back to little endian they are identical.
            swapped = array.array("H", ds.PixelData)
            swapped.byteswap()
            assert decoded.PixelData == swapped.tobytes()
            assert decoded.Rows == ds.Rows and decoded.SOPInstanceUID == ds.SOPInstanceUID
        else:
            assert Dataset(decoded) == Dataset(ds)
        assert encode_dataset(decoded, EXPLICIT_VR_LITTLE_ENDIAN) == little


def test_encode_native_pixels_in_compressed_syntax_refused() -> None:
    ds = make_ct_instance(256)
    with pytest.raises(TranscodeError, match="encapsulated"):
        encode_dataset(ds, "1.2.840.10008.1.2.4.50")


@pytest.mark.parametrize(
    ("sample", "target"),
    [
        ("JPEG2000.dcm", EXPLICIT_VR_LITTLE_ENDIAN),
        ("MR_small_RLE.dcm", IMPLICIT_VR_LITTLE_ENDIAN),
        ("MR_small.dcm", "1.2.840.10008.1.2.4.50"),
        ("MR_small.dcm", "1.2.840.10008.1.2.1.98"),  # encapsulated uncompressed
        ("MR_small.dcm", "1.2.840.10008.1.2.4.90"),
    ],
)
def test_transcode_refuses_compressed(sample: str, target: str) -> None:
    with pytest.raises(TranscodeError, match="compression"):
        transcode(read_part10_for_send(SAMPLES / sample), target)


def test_transcode_same_compressed_syntax_is_identity() -> None:
    source = read_part10_for_send(SAMPLES / "JPEG2000.dcm")
    assert transcode(source, source.transfer_syntax_uid) == source.read_bytes()


def test_unknown_transfer_syntax() -> None:
    ds = make_ct_instance(16)
    for ts in ("1.2.3.4.5", "1.2.840.10008.5.1.4.1.1.2"):
        with pytest.raises(UnsupportedTransferSyntax):
            encode_dataset(ds, ts)
        with pytest.raises(UnsupportedTransferSyntax):
            decode_dataset(b"", ts)


def test_decode_bad_deflate() -> None:
    with pytest.raises(InvalidDicomFile):
        decode_dataset(b"\xff" * 64, DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN)


def test_decode_deflated_ignores_trailing_padding() -> None:
    ds = make_ct_instance(100)
    deflated = encode_dataset(ds, DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN)
    assert Dataset(decode_dataset(deflated + b"\x00\x00", DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN)) == (
        Dataset(ds)
    )


# ---------------------------------------------------------------------------------------------
# Synthetic instances


def test_make_ct_instance() -> None:
    a = make_ct_instance(1 << 20, patient_id="P1", seed=1)
    b = make_ct_instance(1 << 20, patient_id="P1", seed=1)
    c = make_ct_instance(1 << 20, seed=2)
    assert a.SOPClassUID == CT_IMAGE_STORAGE
    assert a.PatientID == "P1" and c.PatientID == "ANON"
    assert abs(len(a.PixelData) - (1 << 20)) <= 2 * a.Columns
    assert len(a.PixelData) == a.Rows * a.Columns * 2
    assert a.PixelData == b.PixelData != c.PixelData
    uids = {str(x.SOPInstanceUID) for x in (a, b, c)}
    assert len(uids) == 3 and all(is_valid_uid(u) for u in uids)
    assert a.StudyInstanceUID != b.StudyInstanceUID
    tiny = make_ct_instance(0)
    assert tiny.Rows == tiny.Columns == 1
    with pytest.raises(ValueError):
        make_ct_instance(-1)


@pytest.mark.anyio
async def test_write_ct_files(tmp_path: Path) -> None:
    paths = await in_thread(write_ct_files, tmp_path / "out", 3, 4096)
    assert len(paths) == 3
    datasets = [pydicom.dcmread(p) for p in paths]
    assert [p.name for p in paths] == [f"{d.SOPInstanceUID}.dcm" for d in datasets]
    assert len({d.SeriesInstanceUID for d in datasets}) == 1
    assert [d.InstanceNumber for d in datasets] == [1, 2, 3]
    assert len({d.PixelData for d in datasets}) == 3
    for path, ds in zip(paths, datasets, strict=True):
        source = read_part10_for_send(path)
        assert source.transfer_syntax_uid == EXPLICIT_VR_LITTLE_ENDIAN
        assert source.sop_instance_uid == ds.SOPInstanceUID
    proc = await anyio.run_process([DCMDUMP, "+fo", str(paths[0])], check=False)
    assert proc.returncode == 0, proc.stderr


def encode_file_meta_with_pydicom(
    *,
    sop_class_uid: str,
    sop_instance_uid: str,
    transfer_syntax_uid: str,
    implementation_class_uid: str,
    implementation_version_name: str | None = None,
    source_ae_title: str | None = None,
) -> bytes:
    """The same group encoded by pydicom: the reference the fast encoder is tested against."""
    from pydicom import config as pydicom_config
    from pydicom.dataelem import DataElement
    from pydicom.dataset import FileMetaDataset
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_file_meta_info

    ignore = pydicom_config.IGNORE
    meta = FileMetaDataset()
    elements: list[tuple[int, str, object]] = [
        (0x00020000, "UL", 0),  # group length: filled in by write_file_meta_info
        (0x00020001, "OB", b"\x00\x01"),
        (0x00020002, "UI", sop_class_uid),
        (0x00020003, "UI", sop_instance_uid),
        (0x00020010, "UI", transfer_syntax_uid),
        (0x00020012, "UI", implementation_class_uid),
    ]
    if implementation_version_name is not None:
        elements.append((0x00020013, "SH", implementation_version_name))
    if source_ae_title is not None:
        elements.append((0x00020016, "AE", source_ae_title.strip(" ")))
    for tag, vr, value in elements:
        meta[tag] = DataElement(tag, vr, value, validation_mode=ignore)
    buffer = DicomBytesIO()
    # enforce_standard=False: write exactly our elements (pydicom would otherwise add its own
    # Implementation Version Name); the group length is still recomputed because it is present.
    write_file_meta_info(buffer, meta, enforce_standard=False)
    return buffer.getvalue()


@pytest.mark.parametrize("version_name", [None, "V1", "ASYNCDICOM_010", "ODD"])
@pytest.mark.parametrize("source_ae", [None, "A", "STORESCU", " PADDED  "])
@pytest.mark.parametrize(
    "instance_uid",
    ["1.2.3", "1.2.34", "1.2.826.0.1.3680043.8.498.1234567890123456789", "1.2.3\x00"],
)
def test_fast_file_meta_matches_pydicom(
    version_name: str | None, source_ae: str | None, instance_uid: str
) -> None:
    from asyncdicom.storage.meta import encode_file_meta

    kwargs = dict(
        sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
        sop_instance_uid=instance_uid,
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        implementation_class_uid="1.2.826.0.1.3680043.8.498.77.1.1",
        implementation_version_name=version_name,
        source_ae_title=source_ae,
    )
    assert encode_file_meta(**kwargs) == encode_file_meta_with_pydicom(**kwargs)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# An instance stored twice: the duplicate policies


def _commit(folder: Path, uid: str, payload: bytes, **options: Any) -> StoredFile:
    with new_writer(folder, uid, **options) as writer:
        writer.write(payload)
        return writer.commit()


@pytest.mark.anyio
@pytest.mark.parametrize("policy", [None, "unique", "overwrite", "ignore"])
async def test_duplicate_policies(tmp_path: Path, policy: str | None) -> None:
    options = {} if policy is None else {"on_duplicate": policy}
    root = tmp_path.resolve()
    # one element (0008,0005) CS, its value 2, 4 or 6 bytes long: each copy is told apart
    payloads = [b"\x08\x00\x05\x00CS" + struct.pack("<H", 2 * n) + b"AB" * n for n in (1, 2, 3)]
    stored = [await in_thread(_commit, tmp_path, "1.2.3", p, **options) for p in payloads]
    assert stored[0] == root / "1.2.3.dcm" and stored[0].duplicate is None
    assert [s.dataset_size for s in stored] == [len(p) for p in payloads]
    names = sorted(os.listdir(tmp_path))
    if policy in (None, "unique"):  # the default keeps every copy
        assert names == ["1.2.3.dcm", "1.2.3_1.dcm", "1.2.3_2.dcm"]
        assert stored[1:] == [root / "1.2.3_1.dcm", root / "1.2.3_2.dcm"]
        assert [s.duplicate for s in stored[1:]] == ["unique", "unique"]
        for path, payload in zip(stored, payloads, strict=True):
            assert dataset_bytes_on_disk(path)[0] == payload
    elif policy == "overwrite":
        assert names == ["1.2.3.dcm"]
        assert stored[1:] == [root / "1.2.3.dcm"] * 2
        assert [s.duplicate for s in stored[1:]] == ["overwrite", "overwrite"]
        assert dataset_bytes_on_disk(root / "1.2.3.dcm")[0] == payloads[2]
    else:
        assert names == ["1.2.3.dcm"]
        assert stored[1:] == [root / "1.2.3.dcm"] * 2
        assert [s.duplicate for s in stored[1:]] == ["ignore", "ignore"]
        assert dataset_bytes_on_disk(root / "1.2.3.dcm")[0] == payloads[0]


@pytest.mark.anyio
@pytest.mark.parametrize("policy", ["unique", "ignore"])
async def test_duplicate_name_taken_by_a_link_or_folder_is_kept(
    tmp_path: Path, policy: str
) -> None:
    store = tmp_path / "store"
    store.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"precious")
    (store / "1.2.3.dcm").symlink_to(victim)
    (store / "1.2.4.dcm").symlink_to(tmp_path / "dangling")
    (store / "1.2.5.dcm").mkdir()
    for uid in ("1.2.3", "1.2.4", "1.2.5"):
        path = await in_thread(_commit, store, uid, b"\x00\x00", on_duplicate=policy)
        if policy == "unique":
            assert path.name == f"{uid}_1.dcm" and path.duplicate == "unique"
            assert path.read_bytes()[128:132] == b"DICM" and not path.is_symlink()
        else:
            assert path.name == f"{uid}.dcm" and path.duplicate == "ignore"
    assert victim.read_bytes() == b"precious"
    assert not (tmp_path / "dangling").exists()
    assert (store / "1.2.3.dcm").is_symlink() and (store / "1.2.5.dcm").is_dir()
    assert not [n for n in os.listdir(store) if n.endswith(".part")]


def test_writer_rejects_unknown_policy_and_layout(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="on_duplicate"):
        new_writer(tmp_path, "1.2.3", on_duplicate="replace")
    with pytest.raises(ValueError, match="layout"):
        new_writer(tmp_path, "1.2.3", layout="tree")
    assert os.listdir(tmp_path) == []


def test_stored_file_is_a_path(tmp_path: Path) -> None:
    stored = _commit(tmp_path, "1.2.3", b"\x00\x00")
    assert isinstance(stored, StoredFile) and isinstance(stored, Path)
    assert stored == tmp_path.resolve() / "1.2.3.dcm"
    assert hash(stored) == hash(tmp_path.resolve() / "1.2.3.dcm")
    assert os.fspath(stored) == str(tmp_path.resolve() / "1.2.3.dcm")
    assert sorted(tmp_path.resolve().iterdir()) == [stored]
    assert stored.read_bytes()[128:132] == b"DICM"


# ---------------------------------------------------------------------------------------------
# The sorted layout


def _encoded(ds: Dataset, ts: str = EXPLICIT_VR_LITTLE_ENDIAN) -> bytes:
    return encode_dataset(ds, ts)


def _commit_dataset(folder: Path, ds: Dataset, ts: str = EXPLICIT_VR_LITTLE_ENDIAN) -> StoredFile:
    return _commit(folder, str(ds.SOPInstanceUID), _encoded(ds, ts), ts=ts, layout="sorted")


def _hashed(value: str) -> str:
    """How an invalid UID is named (computed here, not by the code under test)."""
    return "uid-" + hashlib.sha256(value.encode()).hexdigest()[:32]


# Patient ID -> folder name, worked out by hand from the rules in folder_name's docstring
HOSTILE_PATIENT_IDS = {
    "../../etc": "___.._etc",
    "/etc/passwd": "_etc_passwd",
    "..": "__",
    ".": "_",
    "a\\b": "a_b",
    "C:x": "C_x",
    "CON": "_CON",
    "nul.txt": "_nul.txt",
    ".hidden.": "_hidden_",
    "  PAT 7  ": "PAT_7",
    "x" * 70: "x" * 64,
    "": "UNKNOWN",
    "   ": "UNKNOWN",
}


@pytest.mark.anyio
@pytest.mark.filterwarnings("ignore:The value length .* exceeds:UserWarning")
async def test_sorted_layout_hostile_patient_ids_stay_inside(tmp_path: Path) -> None:
    store = tmp_path / "a" / "b" / "store"
    store.mkdir(parents=True)
    (tmp_path / "etc").mkdir()
    before_outside = tree(tmp_path) - {"a", "a/b", "a/b/store"}
    root = store.resolve()
    for patient_id, expected in HOSTILE_PATIENT_IDS.items():
        ds = make_ct_instance(64, patient_id=patient_id)
        path = await in_thread(_commit_dataset, store, ds)
        assert path.relative_to(root).parts == (
            expected,
            str(ds.StudyInstanceUID),
            str(ds.SeriesInstanceUID),
            f"{ds.SOPInstanceUID}.dcm",
        ), patient_id
        assert path.resolve().is_relative_to(root)
        assert pydicom.dcmread(path).SOPInstanceUID == ds.SOPInstanceUID
    after_outside = {p for p in tree(tmp_path) if not p.startswith("a/b/store/")}
    assert after_outside - {"a", "a/b", "a/b/store"} == before_outside
    assert not [p for p in tree(store) if p.endswith(".part")]


@pytest.mark.anyio
@pytest.mark.filterwarnings("ignore:Invalid value for VR UI:UserWarning")
async def test_sorted_layout_missing_and_invalid_values(tmp_path: Path) -> None:
    root = tmp_path.resolve()
    missing = make_ct_instance(64)
    del missing.PatientID, missing.StudyInstanceUID, missing.SeriesInstanceUID
    path = await in_thread(_commit_dataset, tmp_path, missing)
    assert path.relative_to(root).parts[:3] == ("UNKNOWN", "UNKNOWN", "UNKNOWN")

    hostile = make_ct_instance(64, patient_id="P")
    hostile.StudyInstanceUID = "../../x"
    hostile.SeriesInstanceUID = "/etc"
    path = await in_thread(_commit_dataset, tmp_path, hostile)
    assert path.relative_to(root).parts[:3] == ("P", _hashed("../../x"), _hashed("/etc"))

    # not a data set at all: stored all the same, under the placeholders
    path = await in_thread(_commit, tmp_path, "1.2.3", b"\xff\xff\xff\xff garbage", layout="sorted")
    assert path.relative_to(root).parts == ("UNKNOWN", "UNKNOWN", "UNKNOWN", "1.2.3.dcm")


@pytest.mark.anyio
@pytest.mark.parametrize(
    "sample",
    [
        "CT_small.dcm",
        "MR_small_implicit.dcm",
        "MR_small_bigendian.dcm",
        "image_dfl.dcm",
        "JPEG2000.dcm",
        "rtplan.dcm",
    ],
)
async def test_sorted_layout_folders_agree_with_pydicom(tmp_path: Path, sample: str) -> None:
    source = await in_thread(read_part10_for_send, SAMPLES / sample)
    with Part10Writer(
        tmp_path,
        sop_class_uid=source.sop_class_uid,
        sop_instance_uid=source.sop_instance_uid,
        transfer_syntax_uid=source.transfer_syntax_uid,
        implementation_class_uid=IMPL_UID,
        layout="sorted",
    ) as writer:
        with pytest.raises(ValueError, match="on commit"):
            _ = writer.path
        for chunk in source.iter_chunks(1000):
            writer.write(chunk)
        path = await in_thread(writer.commit)
    assert writer.path == path
    reference = pydicom.dcmread(SAMPLES / sample)
    assert path.relative_to(tmp_path.resolve()).parts == (
        reference.get("PatientID") or "UNKNOWN",
        reference.StudyInstanceUID,
        reference.SeriesInstanceUID,
        f"{source.sop_instance_uid}.dcm",
    )
    assert dataset_bytes_on_disk(path)[0] == dataset_bytes_on_disk(SAMPLES / sample)[0]


def _big_instance(ts: str, size: int) -> tuple[Dataset, bytes]:
    ds = make_ct_instance(64, patient_id="BIG")
    ds.Rows, ds.Columns = 2048, size // 4096
    ds.PixelData = bytes(size) if ts == DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN else os.urandom(size)
    return ds, encode_dataset(ds, ts)


@pytest.mark.anyio
@pytest.mark.parametrize("ts", [EXPLICIT_VR_LITTLE_ENDIAN, DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN])
async def test_sorted_layout_and_header_do_not_read_the_pixel_data(tmp_path: Path, ts: str) -> None:
    """The folder names and the header come from the head of the data set: memory stays far
    below the size of the pixel data (pydicom alone would inflate a deflated file whole)."""
    ds, data = _big_instance(ts, 32 << 20)
    writer = await in_thread(new_writer, tmp_path, str(ds.SOPInstanceUID), ts, layout="sorted")
    await in_thread(writer.write, data)
    del data
    tracemalloc.start()
    try:
        path = await in_thread(writer.commit)
        _, commit_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        header = await in_thread(path.header)
        _, header_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert path.relative_to(tmp_path.resolve()).parts[0] == "BIG"
    assert commit_peak < 4 << 20, commit_peak
    assert header_peak < 4 << 20, header_peak
    assert header.PatientID == "BIG" and header.SOPInstanceUID == ds.SOPInstanceUID
    assert "PixelData" not in header and header.Rows == 2048
    assert header.file_meta.TransferSyntaxUID == ts


@pytest.mark.anyio
async def test_sorted_layout_does_not_follow_links(tmp_path: Path) -> None:
    store = tmp_path / "store"
    store.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    (store / "PAT").symlink_to(outside)
    (store / "FILE").write_bytes(b"x")
    for patient_id in ("PAT", "FILE"):
        ds = make_ct_instance(64, patient_id=patient_id)
        with pytest.raises(NotADirectoryError):
            await in_thread(_commit_dataset, store, ds)
    assert list(outside.iterdir()) == []
    assert sorted(os.listdir(store)) == ["FILE", "PAT"]


# ---------------------------------------------------------------------------------------------
# Reading the header of a stored file


@pytest.mark.parametrize(
    "sample",
    ["CT_small.dcm", "MR_small_bigendian.dcm", "image_dfl.dcm", "JPEG2000.dcm", "rtplan.dcm"],
)
def test_read_header_agrees_with_pydicom(sample: str) -> None:
    header = read_header(SAMPLES / sample)
    reference = pydicom.dcmread(SAMPLES / sample)
    assert "PixelData" not in header
    assert [e.tag for e in header] == [e.tag for e in reference if e.tag < 0x7FE00008]
    for elem in header:
        assert elem.value == reference[elem.tag].value, elem.tag
    assert header.file_meta == reference.file_meta


def test_read_header_defers_long_values(tmp_path: Path) -> None:
    """A long value before the pixel data (a private blob here) is read only when accessed."""
    ds = make_ct_instance(64)
    ds.add_new(0x00091010, "LO", "PRIVATE")  # a private creator, then a long private value
    blob = os.urandom(16 << 20)
    ds.add_new(0x00091001, "OB", blob)
    path = tmp_path / "x.dcm"
    with open(path, "wb") as fp:
        fp.write(b"\x00" * 128 + b"DICM")
        fp.write(
            encode_file_meta(
                sop_class_uid=CT_IMAGE_STORAGE,
                sop_instance_uid=str(ds.SOPInstanceUID),
                transfer_syntax_uid=EXPLICIT_VR_LITTLE_ENDIAN,
                implementation_class_uid=IMPL_UID,
            )
        )
        fp.write(encode_dataset(ds, EXPLICIT_VR_LITTLE_ENDIAN))
    del ds
    tracemalloc.start()
    try:
        header = read_header(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2 << 20, peak
    assert header[0x00091001].value == blob  # read when asked
    assert header.SOPInstanceUID and "PixelData" not in header


def test_read_header_of_a_non_dicom_file(tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_bytes(b"\x02\x00\x10\x00" + b"not DICOM at all " * 20)
    with pytest.raises(InvalidDicomFile):
        read_header(text)
    with pytest.raises(FileNotFoundError):
        read_header(tmp_path / "missing.dcm")


# ---------------------------------------------------------------------------------------------
# Temporary files left by a killed writer


def test_remove_stale_temp_files(tmp_path: Path) -> None:
    stale = [tmp_path / f".{c * 32}.part" for c in "ab"]
    for path in stale:
        path.write_bytes(b"half an instance")
    live = new_writer(tmp_path, "1.2.3")  # being written: locked by its writer
    keep = [tmp_path / n for n in (".keep.part", "notes.part", f".{'C' * 32}.part", "x.dcm")]
    for path in keep:
        path.write_bytes(b"not ours")
    target = tmp_path.parent / f"{tmp_path.name}-target"
    target.write_bytes(b"precious")
    link = tmp_path / f".{'d' * 32}.part"
    link.symlink_to(target)
    folder = tmp_path / f".{'e' * 32}.part"
    folder.mkdir()

    assert remove_stale_temp_files(tmp_path) == 2
    assert not any(p.exists() for p in stale)
    assert live.temp_path.exists()
    assert all(p.exists() for p in keep) and link.is_symlink() and folder.is_dir()
    assert target.read_bytes() == b"precious"
    live.write(b"\x00\x00")
    assert live.commit() == tmp_path.resolve() / "1.2.3.dcm"
    assert remove_stale_temp_files(tmp_path) == 0
    assert remove_stale_temp_files(tmp_path / "missing") == 0


# ---------------------------------------------------------------------------------------------
# Implementation Class UID


def test_implementation_class_uid_is_our_own() -> None:
    """PS3.5 B.2: "2.25." and the decimal value of a UUID, under no other software's root."""
    uid = uids.IMPLEMENTATION_CLASS_UID
    assert re.fullmatch(r"2\.25\.(0|[1-9][0-9]*)", uid) and len(uid) <= 64
    value = int(uid.removeprefix("2.25."))
    assert value < 1 << 128
    assert uuid.UUID(int=value).version == 4
    assert pydicom.uid.UID(uid).is_valid
    assert not uid.startswith(pydicom.uid.PYDICOM_ROOT_UID)
    assert not uid.startswith("1.2.826.0.1.3680043.")
    assert AEConfig().implementation_class_uid == uid


# ---------------------------------------------------------------------------------------------
# The API: store() errors, save_request() options


CT_CONTEXT = (CT_IMAGE_STORAGE, [EXPLICIT_VR_LITTLE_ENDIAN])


@pytest.mark.anyio
async def test_store_errors_come_before_sending_and_are_dicom_errors(tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("not a DICOM file\n" * 50)
    received: list[str] = []
    scp = AE("SCP", accept_any_storage=True)

    @scp.on_store
    async def on_store(request: Any) -> int:
        received.append(request.message.affected_sop_instance_uid)
        await request.discard()
        return 0x0000

    no_instance_uid = make_ct_instance(64)
    del no_instance_uid.SOPInstanceUID
    empty_class_uid = make_ct_instance(64)
    empty_class_uid.SOPClassUID = ""
    good = make_ct_instance(64)
    with anyio.fail_after(30):
        async with scp.server("127.0.0.1", 0) as server:
            async with AE("SCU").associate(
                "127.0.0.1", server.port, contexts=[uids.VERIFICATION, CT_CONTEXT]
            ) as assoc:
                with pytest.raises(DICOMError) as caught:
                    await assoc.store(text)
                assert isinstance(caught.value, InvalidDicomFile)
                assert isinstance(caught.value, StorageError)
                for bad, missing in [
                    (Dataset(), r"SOP Class UID \(0008,0016\)"),
                    (empty_class_uid, r"SOP Class UID \(0008,0016\)"),
                    (no_instance_uid, r"SOP Instance UID \(0008,0018\)"),
                ]:
                    with pytest.raises(InvalidDataset, match=missing) as invalid:
                        await assoc.store(bad)
                    assert isinstance(invalid.value, ValueError)
                    assert isinstance(invalid.value, DICOMError)
                # nothing was sent: the association goes on
                assert assoc.is_established
                assert (await assoc.echo()).status == 0x0000
                assert (await assoc.store(good)).status == 0x0000
    assert received == [good.SOPInstanceUID]


@pytest.mark.anyio
async def test_save_request_policy_layout_and_header(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    out = tmp_path / "out"
    seen: list[tuple[StoredFile, str]] = []
    scp = AE("SCP", accept_any_storage=True)

    @scp.on_store
    async def on_store(request: Any) -> int:
        stored = await save_request(request, out, on_duplicate="ignore", layout="sorted")
        seen.append((stored, str(stored.header().PatientName)))
        return 0x0000

    first = make_ct_instance(20_000, patient_id="PAT-7", seed=1)
    first.PatientName = "Doe^Jane"
    again = make_ct_instance(20_000, patient_id="PAT-7", seed=2)
    for keyword in ("SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "PatientName"):
        setattr(again, keyword, first.get(keyword))
    caplog.set_level(logging.WARNING, logger="asyncdicom")
    with anyio.fail_after(30):
        async with scp.server("127.0.0.1", 0) as server:
            async with AE("SCU").associate("127.0.0.1", server.port, contexts=[CT_CONTEXT]) as a:
                assert (await a.store(first)).status == 0x0000
                assert (await a.store(again)).status == 0x0000
    expected = out.resolve().joinpath(
        "PAT-7",
        str(first.StudyInstanceUID),
        str(first.SeriesInstanceUID),
        f"{first.SOPInstanceUID}.dcm",
    )
    assert [(path, path.duplicate, name) for path, name in seen] == [
        (expected, None, "Doe^Jane"),
        (expected, "ignore", "Doe^Jane"),
    ]
    assert pydicom.dcmread(expected).PixelData == first.PixelData  # the first copy was kept
    assert pydicom.dcmread(expected).file_meta.ImplementationClassUID == (
        uids.IMPLEMENTATION_CLASS_UID
    )
    duplicates = [r for r in caplog.records if "duplicate_instance" in r.getMessage()]
    assert len(duplicates) == 1 and duplicates[0].levelno == logging.WARNING
    assert str(first.SOPInstanceUID) in duplicates[0].getMessage()


@pytest.mark.anyio
async def test_save_to_keeps_both_copies_by_default(tmp_path: Path) -> None:
    out = tmp_path / "out"
    saved: list[Path] = []
    scp = AE("SCP", accept_any_storage=True)

    @scp.on_store
    async def on_store(request: Any) -> int:
        saved.append(await request.save_to(out))
        return 0x0000

    ds = make_ct_instance(1000, seed=1)
    with anyio.fail_after(30):
        async with scp.server("127.0.0.1", 0) as server:
            async with AE("SCU").associate("127.0.0.1", server.port, contexts=[CT_CONTEXT]) as a:
                assert (await a.store(ds)).status == 0x0000
                assert (await a.store(ds)).status == 0x0000
    uid = str(ds.SOPInstanceUID)
    assert [p.name for p in saved] == [f"{uid}.dcm", f"{uid}_1.dcm"]
    assert [getattr(p, "duplicate", "?") for p in saved] == [None, "unique"]
    assert sorted(out.iterdir()) == sorted(saved)


# ---------------------------------------------------------------------------------------------
# Empty folders: pruned after a removal, made again by a writer that finds them gone


def test_prune_empty_folders_stops_at_a_folder_in_use_and_at_the_root(tmp_path: Path) -> None:
    root = tmp_path / "store"
    (root / "P1" / "1.1" / "1.1.1").mkdir(parents=True)
    (root / "P1" / "1.2").mkdir(parents=True)
    (root / "P1" / "1.2" / "kept.dcm").write_bytes(b"x")
    prune_empty_folders(root / "P1" / "1.1" / "1.1.1" / "gone.dcm", root)
    assert sorted(str(p.relative_to(root)) for p in root.rglob("*")) == [
        "P1",
        "P1/1.2",
        "P1/1.2/kept.dcm",
    ]
    (root / "P1" / "1.2" / "kept.dcm").unlink()
    prune_empty_folders(root / "P1" / "1.2" / "kept.dcm", root)
    assert root.is_dir() and list(root.iterdir()) == []
    # a path outside the root: nothing is touched
    (tmp_path / "other" / "empty").mkdir(parents=True)
    prune_empty_folders(tmp_path / "other" / "empty" / "x.dcm", root)
    assert (tmp_path / "other" / "empty").is_dir()


def test_sorted_commit_makes_the_folders_again_if_pruned_meanwhile(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from asyncdicom.storage import writer

    ds = make_ct_instance(64, patient_id="P1")
    real_place = writer._place
    calls: list[Path] = []

    def place_after_a_prune(temp: Path, final: Path, policy: Any) -> Any:
        calls.append(final)
        if len(calls) == 1:  # another writer empties and prunes the folders just now
            prune_empty_folders(final, tmp_path)
            assert not final.parent.exists()
        return real_place(temp, final, policy)

    monkeypatch.setattr(writer, "_place", place_after_a_prune)
    stored = _commit_dataset(tmp_path, ds)
    assert len(calls) == 2 and stored.exists()
    assert stored.relative_to(tmp_path.resolve()).parts[0] == "P1"
    assert read_header(stored).SOPInstanceUID == ds.SOPInstanceUID


def test_sorted_commit_makes_a_known_folder_again_if_another_process_removed_it(
    tmp_path: Path,
) -> None:
    """The series folder is remembered once made (no system call to find it for the next
    instance); removed behind the writer's back (another process pruning, an administrator),
    it is made again, not written past."""
    import shutil

    study, series = "1.2.826.0.1.3680043.10.999.7", "1.2.826.0.1.3680043.10.999.7.1"
    first = make_ct_instance(
        64, patient_id="P1", seed=1, study_instance_uid=study, series_instance_uid=series
    )
    stored = _commit_dataset(tmp_path, first)
    series_folder = stored.parent
    shutil.rmtree(tmp_path / "P1")  # not through prune_empty_folders: the writer is not told
    second = make_ct_instance(
        64, patient_id="P1", seed=2, study_instance_uid=study, series_instance_uid=series
    )
    assert second.SOPInstanceUID != first.SOPInstanceUID
    again = _commit_dataset(tmp_path, second)
    assert again.parent == series_folder and again.exists()
    assert read_header(again).SOPInstanceUID == second.SOPInstanceUID


def test_a_relative_storage_folder_follows_the_working_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ "incoming/" is resolved against the working folder of the moment, not the one of the
    first instance saved there (the resolution is remembered per absolute folder)."""
    for name in ("a", "b"):
        cwd = tmp_path / name
        (cwd / "incoming").mkdir(parents=True)
        monkeypatch.chdir(cwd)
        writer = new_writer(Path("incoming"), f"1.2.{len(name)}")
        assert writer.path == (cwd / "incoming").resolve() / f"1.2.{len(name)}.dcm"
        writer.discard()
