"""The DICOMDIR of a File-set (PS3.10 section 8, PS3.3 Annex F), written and kept current.

A DICOMDIR is a Part 10 file of the Media Storage Directory SOP class (1.2.840.10008.1.3.10)
at the root of a File-set: the Basic Directory IOD, whose Directory Record Sequence holds one
PATIENT record per patient, below it one STUDY record per study, one SERIES record per series
and one leaf record (IMAGE, SR DOCUMENT, PRESENTATION, ... chosen by pydicom from the SOP
class) per instance, which names the instance's file by its File ID.  Records are linked by
byte offsets (next record of the same entity, first record of the entity below); this module
computes them.  What goes into each record is pydicom's
(:data:`pydicom.fileset.DIRECTORY_RECORDERS`: the Type 1 and 2 keys of PS3.3 F.5).

* :func:`scan_folder` finds the instances under a folder and the files whose names are not
  File IDs of the General Purpose CD-R profile (:mod:`asyncdicom.storage.media`);
* :func:`entry_for` reads one instance's header and makes its records;
* :func:`write_dicomdir` encodes the records and replaces ``DICOMDIR`` atomically;
* :func:`read_dicomdir` reads the entries of an existing one back;
* :class:`DicomdirUpdater` keeps the DICOMDIR of a folder being written current.

The DICOMDIR is written to a temporary file in the root (``.DICOMDIR.<hex>.tmp``) and renamed
over ``DICOMDIR``: a reader sees the previous DICOMDIR or the new one, whole.  Writers of one
folder, in this process or in others, take turns (an exclusive ``flock`` on the folder).
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import struct
import sys
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import InvalidDicomFile
from ..protocol import uids
from .media import file_id_problem
from .meta import PREAMBLE, PREFIX, encode_file_meta
from .tags import LONG_LENGTH_VRS

if sys.platform == "win32":  # pragma: no cover
    fcntl = None
else:
    import fcntl

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

__all__ = [
    "DICOMDIR",
    "MEDIA_STORAGE_DIRECTORY",
    "DicomdirEntry",
    "DicomdirUpdater",
    "FolderScan",
    "entry_for",
    "read_dicomdir",
    "scan_folder",
    "update_dicomdir",
    "write_dicomdir",
]

#: the name of the DICOMDIR file in the root of a File-set (PS3.10 8.6)
DICOMDIR = "DICOMDIR"
#: Media Storage Directory Storage SOP Class UID (PS3.4 Annex F)
MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"

_TEMP_RE = re.compile(r"\.DICOMDIR\.[0-9a-f]{32}\.tmp")
_ITEM = 0xFFFEE000
#: (0004,1220) Directory Record Sequence
_DIRECTORY_RECORD_SEQUENCE = 0x00041220
_NEXT = "OffsetOfTheNextDirectoryRecord"
_LOWER = "OffsetOfReferencedLowerLevelDirectoryEntity"
#: the record attribute that tells two records of one level apart (else: the whole record)
_KEYS = {
    "PATIENT": "PatientID",
    "STUDY": "StudyInstanceUID",
    "SERIES": "SeriesInstanceUID",
}


@dataclass(frozen=True, slots=True)
class Record:
    """One directory record, encoded (Explicit VR Little Endian, without its item header).
    Its two offsets are patched in place when the DICOMDIR is written: a record is encoded
    once, and one read from a DICOMDIR is written back as it was read."""

    #: Directory Record Type (0004,1430): PATIENT, STUDY, SERIES, IMAGE, ...
    kind: str
    #: what tells two records of one level apart: the Patient ID, the Study or Series
    #: Instance UID, the referenced SOP Instance UID of a leaf
    key: str
    body: bytes
    #: where the values of (0004,1400) and (0004,1420) are in ``body``
    next_at: int
    lower_at: int


@dataclass(frozen=True, slots=True)
class DicomdirEntry:
    """One instance of a File-set: its File ID (components), the UIDs its leaf record
    references, and its directory records from the top level (PATIENT) down to that leaf."""

    file_id: tuple[str, ...]
    sop_instance_uid: str
    transfer_syntax_uid: str
    records: tuple[Record, ...]


@dataclass(slots=True)
class FolderScan:
    """What :func:`scan_folder` found under a folder."""

    #: Part 10 files whose paths are File IDs (relative paths, as components)
    instances: list[tuple[str, ...]] = field(default_factory=list)
    #: Part 10 files whose paths are not File IDs, with the reason
    unfit: list[tuple[Path, str]] = field(default_factory=list)
    #: files that are not Part 10 files (no ``DICM`` prefix) or are DICOMDIRs
    skipped: list[Path] = field(default_factory=list)


def scan_folder(root: str | os.PathLike[str]) -> FolderScan:
    """The files under ``root`` (recursively, in path order), sorted into instances whose
    paths are File IDs of the General Purpose CD-R profile, instances whose paths are not, and
    other files.  ``root/DICOMDIR``, and names starting with ``.`` (temporary files of a writer,
    hidden files), are left out; a file is an instance when it has the ``DICM`` prefix of a
    Part 10 file and is no DICOMDIR.

    Raises:
        OSError: ``root`` cannot be listed.
    """
    base = Path(root)
    scan = FolderScan()
    todo: list[tuple[Path, tuple[str, ...]]] = [(base, ())]
    while todo:
        folder, parts = todo.pop()
        with os.scandir(folder) as it:
            entries = sorted(it, key=lambda e: e.name)
        folders = []
        for entry in entries:
            if entry.name.startswith(".") or (not parts and entry.name == DICOMDIR):
                continue
            path = folder / entry.name
            if entry.is_dir():
                folders.append((path, (*parts, entry.name)))
                continue
            if not entry.is_file():
                continue
            sop_class = _part10_sop_class(path)
            if sop_class is None or sop_class == MEDIA_STORAGE_DIRECTORY:
                scan.skipped.append(path)
                continue
            file_id = (*parts, entry.name)
            problem = file_id_problem(file_id)
            if problem is None:
                scan.instances.append(file_id)
            else:
                scan.unfit.append((path, problem))
        todo.extend(reversed(folders))
    scan.unfit.sort()
    return scan


def _part10_sop_class(path: Path) -> str | None:
    """The Media Storage SOP Class UID of a Part 10 file ("" when it has none); None when the
    file is not one."""
    from .meta import HeadReader, parse_meta_group, ui_value
    from .tags import MEDIA_STORAGE_SOP_CLASS_UID

    try:
        with open(path, "rb") as fp:
            reader = HeadReader(fp, os.fstat(fp.fileno()).st_size)
            if reader.get(128, 4) != PREFIX:
                return None
            values, _ = parse_meta_group(reader, 132, path)
    except (OSError, InvalidDicomFile):
        return None
    return ui_value(values.get(MEDIA_STORAGE_SOP_CLASS_UID)) or ""


def entry_for(
    root: str | os.PathLike[str],
    file_id: Sequence[str],
    *,
    known: dict[tuple[str, str], Record] | None = None,
) -> DicomdirEntry:
    """The directory records of the instance at ``root/<file_id>``, read from its header
    (never its pixel data).  ``known`` (a dict kept across calls) holds the PATIENT, STUDY
    and SERIES records made so far, by (type, key): an instance of a series seen before
    reuses them (a DICOMDIR keeps the first record of each key anyway) and only its leaf
    record is encoded (each instance is still checked for the values its records need).

    Raises:
        InvalidDicomFile: the file is not DICOM, or lacks a value a record needs (a
            Patient ID, a Study Date, ...: PS3.3 F.5).
        OSError: the file cannot be read.
    """
    from pydicom.fileset import DIRECTORY_RECORDERS

    from .codec import read_header

    path = Path(root, *file_id)
    ds = read_header(path)
    try:
        record_type = _leaf_type(ds)
        sop_instance_uid = str(ds.file_meta.MediaStorageSOPInstanceUID)
        transfer_syntax_uid = str(ds.file_meta.TransferSyntaxUID)
        records = []
        for kind in ("PATIENT", "STUDY", "SERIES", record_type):
            # made for every instance: it checks that the instance has the record's values
            record = DIRECTORY_RECORDERS[kind](ds)
            attribute = _KEYS.get(kind)
            if known is not None and attribute is not None:
                found = known.get((kind, str(ds.get(attribute, "") or "")))
                if found is not None:
                    records.append(found)
                    continue
            record[_NEXT] = _ul(_NEXT)
            record.RecordInUseFlag = 0xFFFF
            record[_LOWER] = _ul(_LOWER)
            record.DirectoryRecordType = kind
            if "SpecificCharacterSet" in ds:
                record.SpecificCharacterSet = ds.SpecificCharacterSet
            if kind == record_type:
                record.ReferencedFileID = list(file_id)
                record.ReferencedSOPClassUIDInFile = ds.file_meta.MediaStorageSOPClassUID
                record.ReferencedSOPInstanceUIDInFile = sop_instance_uid
                record.ReferencedTransferSyntaxUIDInFile = transfer_syntax_uid
            encoded = _encoded(record, kind, sop_instance_uid)
            if known is not None and attribute is not None:
                known[(kind, encoded.key)] = encoded
            records.append(encoded)
    except (ValueError, AttributeError, KeyError) as exc:
        raise InvalidDicomFile(f"{path}: no directory record can be made ({exc})") from exc
    return DicomdirEntry(tuple(file_id), sop_instance_uid, transfer_syntax_uid, tuple(records))


def _encoded(record: Dataset, kind: str, sop_instance_uid: str) -> Record:
    """``record`` encoded once (its offsets are patched when the DICOMDIR is written)."""
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    fp = DicomBytesIO()
    fp.is_little_endian = True
    fp.is_implicit_VR = False
    write_dataset(fp, record)
    body = fp.getvalue()
    attribute = _KEYS.get(kind)
    key = str(record.get(attribute, "") or "") if attribute else sop_instance_uid
    # the record's first elements are group 0004's, in tag order: the first match of each
    # element header is the element (no value before it can hold those bytes)
    next_at = body.index(_NEXT_HEADER) + len(_NEXT_HEADER)
    lower_at = body.index(_LOWER_HEADER) + len(_LOWER_HEADER)
    return Record(kind, key, body, next_at, lower_at)


def _ul(keyword: str) -> Any:
    from pydicom.dataelem import DataElement

    return DataElement(_NEXT_OFFSET if keyword == _NEXT else _LOWER_OFFSET, "UL", 0)


def _leaf_type(ds: Dataset) -> str:
    """The Directory Record Type of an instance's leaf record (IMAGE for images and anything
    pydicom does not name otherwise; single-level classes such as palettes are not kept in a
    four-level tree and are refused)."""
    import pydicom.fileset as fileset

    single: Callable[[Dataset], str] | None = getattr(fileset, "_single_level_record_type", None)
    if single is not None and single(ds) != "PATIENT":
        raise ValueError(f"a {single(ds)} instance has no place below a PATIENT record")
    four: Callable[[Dataset], str] | None = getattr(fileset, "_four_level_record_type", None)
    return four(ds) if four is not None else "IMAGE"


# --------------------------------------------------------------------------- encoding


def encode_dicomdir(
    entries: Iterable[DicomdirEntry],
    *,
    fileset_uid: str,
    fileset_id: str = "",
    implementation_class_uid: str = uids.IMPLEMENTATION_CLASS_UID,
    implementation_version_name: str | None = uids.IMPLEMENTATION_VERSION_NAME,
) -> bytes:
    """The bytes of a DICOMDIR (Explicit VR Little Endian, PS3.10 8.6) for ``entries``.

    Records are grouped into a tree (one PATIENT record per Patient ID, one STUDY record per
    Study Instance UID below it, ...), in the order of ``entries``, and written depth first,
    each as an item of defined length whose two offsets are patched in.  One entry per SOP
    Instance UID is kept (the first).
    """
    from pydicom.dataset import Dataset
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    # the tree: node = (record, {(kind, key): child node}); a key keeps the first record seen
    tree: dict[tuple[str, str], tuple[Record, dict[Any, Any]]] = {}
    seen: set[str] = set()
    for entry in entries:
        if entry.sop_instance_uid in seen:
            continue
        seen.add(entry.sop_instance_uid)
        level = tree
        for record in entry.records:
            node = level.get((record.kind, record.key))
            if node is None:
                node = level[(record.kind, record.key)] = (record, {})
            level = node[1]

    # depth first: [record, index of the next record of its entity, index of its first child]
    order: list[list[Any]] = []

    def walk(level: dict[tuple[str, str], tuple[Record, dict[Any, Any]]]) -> int | None:
        previous: list[Any] | None = None
        first: int | None = None
        for record, children in level.values():
            row: list[Any] = [record, None, None]
            index = len(order)
            order.append(row)
            if previous is None:
                first = index
            else:
                previous[1] = index
            previous = row
            row[2] = walk(children)
        return first

    walk(tree)

    meta = PREAMBLE + PREFIX
    meta += encode_file_meta(
        sop_class_uid=MEDIA_STORAGE_DIRECTORY,
        sop_instance_uid=fileset_uid,
        transfer_syntax_uid=uids.EXPLICIT_VR_LITTLE_ENDIAN,
        implementation_class_uid=implementation_class_uid,
        implementation_version_name=implementation_version_name,
    )
    head = Dataset()
    head.FileSetID = fileset_id
    head.OffsetOfTheFirstDirectoryRecordOfTheRootDirectoryEntity = 0
    head.OffsetOfTheLastDirectoryRecordOfTheRootDirectoryEntity = 0
    head.FileSetConsistencyFlag = 0

    def encode_head() -> bytes:
        fp = DicomBytesIO()
        fp.is_little_endian = True
        fp.is_implicit_VR = False
        write_dataset(fp, head)
        return fp.getvalue()

    # the offset of each item from the start of the file: after the meta group, the head
    # and the sequence's 12-byte header (tag, VR, 2 reserved bytes, 4-byte length)
    offsets = []
    position = len(meta) + len(encode_head()) + 12
    for record, _following, _child in order:
        offsets.append(position)
        position += 8 + len(record.body)
    if order:
        last = 0
        while order[last][1] is not None:
            last = order[last][1]
        head.OffsetOfTheFirstDirectoryRecordOfTheRootDirectoryEntity = offsets[0]
        head.OffsetOfTheLastDirectoryRecordOfTheRootDirectoryEntity = offsets[last]
    out = bytearray(meta)
    out += encode_head()
    sequence_length = position - len(out) - 12
    tag = _DIRECTORY_RECORD_SEQUENCE
    out += struct.pack("<HH2sHI", tag >> 16, tag & 0xFFFF, b"SQ", 0, sequence_length)
    for record, following, child in order:
        body = bytearray(record.body)
        struct.pack_into("<I", body, record.next_at, 0 if following is None else offsets[following])
        struct.pack_into("<I", body, record.lower_at, 0 if child is None else offsets[child])
        out += struct.pack("<HHI", _ITEM >> 16, _ITEM & 0xFFFF, len(body))
        out += body
    return bytes(out)


def write_dicomdir(
    root: str | os.PathLike[str],
    entries: Iterable[DicomdirEntry],
    *,
    fileset_uid: str | None = None,
    implementation_class_uid: str = uids.IMPLEMENTATION_CLASS_UID,
    implementation_version_name: str | None = uids.IMPLEMENTATION_VERSION_NAME,
) -> Path:
    """Write ``root/DICOMDIR`` for ``entries`` (atomically: a temporary file in ``root``,
    renamed over it); return its path.  ``fileset_uid`` (the Media Storage SOP Instance UID of
    the DICOMDIR) is a new UID by default.

    Raises:
        OSError: the file cannot be written (nothing is left behind).
    """
    from pydicom.uid import generate_uid

    data = encode_dicomdir(
        entries,
        fileset_uid=fileset_uid or generate_uid(prefix=None),
        implementation_class_uid=implementation_class_uid,
        implementation_version_name=implementation_version_name,
    )
    final = Path(root) / DICOMDIR
    temp = Path(root) / f".{DICOMDIR}.{uuid.uuid4().hex}.tmp"
    try:
        with open(temp, "xb") as fp:
            fp.write(data)
        os.replace(temp, final)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    return final


# --------------------------------------------------------------------------- reading


def read_dicomdir(path: str | os.PathLike[str]) -> tuple[str | None, list[DicomdirEntry]]:
    """The File-set UID and the entries (instances) of the DICOMDIR at ``path``, following its
    offsets from the first root record (records not reachable that way are not entries).  The
    records are kept as encoded in the file (Explicit VR Little Endian, as PS3.10 8.6 wants a
    DICOMDIR), for :func:`encode_dicomdir` to write back unchanged but for their offsets.

    Raises:
        InvalidDicomFile: ``path`` is not a DICOMDIR this reader can follow (not one, in
            another transfer syntax, or damaged).
        OSError: it cannot be read.
    """
    from .meta import HeadReader, parse_meta_group, ui_value
    from .tags import (
        MEDIA_STORAGE_SOP_CLASS_UID,
        MEDIA_STORAGE_SOP_INSTANCE_UID,
        TRANSFER_SYNTAX_UID,
    )

    file_path = Path(path)
    data = file_path.read_bytes()
    try:
        if data[128:132] != PREFIX:
            raise ValueError("no DICM prefix: not a Part 10 file")
        reader = HeadReader(io.BytesIO(data), len(data))
        values, position = parse_meta_group(reader, 132, file_path)
        if ui_value(values.get(MEDIA_STORAGE_SOP_CLASS_UID)) != MEDIA_STORAGE_DIRECTORY:
            raise ValueError("not a Media Storage Directory (DICOMDIR)")
        if ui_value(values.get(TRANSFER_SYNTAX_UID)) != uids.EXPLICIT_VR_LITTLE_ENDIAN:
            raise ValueError("not in Explicit VR Little Endian")
        first = 0
        records: dict[int, tuple[Record, int, int, dict[int, str]]] = {}
        for tag, value_at, length in _elements(data, position, len(data)):
            if tag == _FIRST_OFFSET:
                first = struct.unpack_from("<I", data, value_at)[0]
            elif tag == _DIRECTORY_RECORD_SEQUENCE:
                end = len(data) if length == _UNDEFINED else value_at + length
                for item_at, body_at, body_end in _items(data, value_at, end):
                    records[item_at] = _record(data, body_at, body_end)
        entries: list[DicomdirEntry] = []
        visited: set[int] = set()
        todo: list[tuple[int, tuple[Record, ...]]] = [(first, ())]
        while todo:  # depth first, in file order: a stack of (next offset, records above)
            offset, above = todo.pop()
            if not offset:
                continue
            if offset in visited:
                raise ValueError(f"directory record offset {offset} is used twice")
            visited.add(offset)
            found = records.get(offset)
            if found is None:
                raise ValueError(f"no directory record at offset {offset}")
            record, following, lower, texts = found
            chain = (*above, record)
            file_id = texts.get(_REFERENCED_FILE_ID)
            if file_id and not lower:
                parts = tuple(part.strip(" ") for part in file_id.split("\\"))
                entries.append(
                    DicomdirEntry(
                        parts,
                        texts.get(_REFERENCED_SOP_INSTANCE_UID, ""),
                        texts.get(_REFERENCED_TRANSFER_SYNTAX_UID, ""),
                        chain,
                    )
                )
            todo.append((following, above))
            todo.append((lower, chain))
    except (ValueError, struct.error) as exc:
        raise InvalidDicomFile(f"{path}: cannot read the DICOMDIR ({exc})") from exc
    return ui_value(values.get(MEDIA_STORAGE_SOP_INSTANCE_UID)), entries


_UNDEFINED = 0xFFFFFFFF
_ITEM_DELIMITER = 0xFFFEE00D
_SEQUENCE_DELIMITER = 0xFFFEE0DD
_FIRST_OFFSET = 0x00041200
_NEXT_OFFSET = 0x00041400
_LOWER_OFFSET = 0x00041420
_RECORD_TYPE = 0x00041430
_REFERENCED_FILE_ID = 0x00041500
_REFERENCED_SOP_INSTANCE_UID = 0x00041511
_REFERENCED_TRANSFER_SYNTAX_UID = 0x00041512
#: the key attributes of _KEYS, by tag
_KEY_TAGS = {"PATIENT": 0x00100020, "STUDY": 0x0020000D, "SERIES": 0x0020000E}
#: the text values read from a record
_RECORD_TEXTS = frozenset(
    {
        _RECORD_TYPE,
        _REFERENCED_FILE_ID,
        _REFERENCED_SOP_INSTANCE_UID,
        _REFERENCED_TRANSFER_SYNTAX_UID,
        *_KEY_TAGS.values(),
    }
)
_NEXT_HEADER = struct.pack("<HH2sH", 0x0004, 0x1400, b"UL", 4)
_LOWER_HEADER = struct.pack("<HH2sH", 0x0004, 0x1420, b"UL", 4)


def _element_at(data: bytes, position: int) -> tuple[int, int, int]:
    """(tag, offset of the value, length) of the Explicit VR Little Endian element at
    ``position``."""
    group, element = struct.unpack_from("<HH", data, position)
    if data[position + 4 : position + 6] in LONG_LENGTH_VRS:
        return group << 16 | element, position + 12, struct.unpack_from("<I", data, position + 8)[0]
    return group << 16 | element, position + 8, struct.unpack_from("<H", data, position + 6)[0]


def _elements(data: bytes, position: int, end: int) -> Iterator[tuple[int, int, int]]:
    """(tag, offset of the value, length) of the elements from ``position`` to ``end``; a
    value of undefined length (a sequence) is skipped."""
    while position < end:
        tag, value_at, length = _element_at(data, position)
        yield tag, value_at, length
        position = (
            _skip_sequence(data, value_at, end) if length == _UNDEFINED else value_at + length
        )
    if position > end:
        raise ValueError("an element runs past its end")


def _items(data: bytes, position: int, end: int) -> Iterator[tuple[int, int, int]]:
    """(offset of the item tag, offset of its body, end of its body) of the items of a
    sequence value from ``position`` to ``end`` or its sequence delimiter."""
    while position < end:
        group, element, length = struct.unpack_from("<HHI", data, position)
        tag = group << 16 | element
        if tag == _SEQUENCE_DELIMITER:
            return
        if tag != _ITEM:
            raise ValueError(f"({group:04X},{element:04X}) where an item should be")
        body_at = position + 8
        if length == _UNDEFINED:
            body_end = _item_end(data, body_at, end)
            yield position, body_at, body_end
            position = body_end + 8  # the item delimiter
        else:
            if body_at + length > end:
                raise ValueError("an item runs past its sequence")
            yield position, body_at, body_at + length
            position = body_at + length


def _item_end(data: bytes, position: int, end: int) -> int:
    """The offset of the delimiter of an item of undefined length whose body starts at
    ``position``."""
    while position < end:
        tag, value_at, length = _element_at(data, position)
        if tag == _ITEM_DELIMITER:
            return position
        position = (
            _skip_sequence(data, value_at, end) if length == _UNDEFINED else value_at + length
        )
    raise ValueError("an item of undefined length has no delimiter")


def _skip_sequence(data: bytes, position: int, end: int) -> int:
    """The offset after a sequence value of undefined length that starts at ``position``."""
    while position < end:
        group, element, length = struct.unpack_from("<HHI", data, position)
        tag = group << 16 | element
        if tag == _SEQUENCE_DELIMITER:
            return position + 8
        if tag != _ITEM:
            raise ValueError(f"({group:04X},{element:04X}) where an item should be")
        position = (
            _item_end(data, position + 8, end) + 8
            if length == _UNDEFINED
            else position + 8 + length
        )
    raise ValueError("a sequence of undefined length has no delimiter")


def _record(data: bytes, start: int, end: int) -> tuple[Record, int, int, dict[int, str]]:
    """The directory record whose item body is ``data[start:end]``, its next and lower
    offsets, and its values of :data:`_RECORD_TEXTS`."""
    texts: dict[int, str] = {}
    following = lower = 0
    next_at = lower_at = -1
    for tag, value_at, length in _elements(data, start, end):
        if tag == _NEXT_OFFSET and length == 4:
            following = struct.unpack_from("<I", data, value_at)[0]
            next_at = value_at - start
        elif tag == _LOWER_OFFSET and length == 4:
            lower = struct.unpack_from("<I", data, value_at)[0]
            lower_at = value_at - start
        elif tag in _RECORD_TEXTS:
            texts[tag] = data[value_at : value_at + length].decode("latin-1").strip(" \x00")
    if next_at < 0 or lower_at < 0:
        raise ValueError("a directory record lacks its offsets (0004,1400) and (0004,1420)")
    kind = texts.get(_RECORD_TYPE, "")
    key_tag = _KEY_TAGS.get(kind)
    if key_tag is not None:
        key = texts.get(key_tag, "")
    else:  # a leaf, or a record type we do not group: its own
        key = texts.get(_REFERENCED_SOP_INSTANCE_UID) or f"@{start}"
    return Record(kind, key, data[start:end], next_at, lower_at), following, lower, texts


# --------------------------------------------------------------------------- keeping it current


class _FolderLock:
    """An exclusive ``flock`` on a folder, across processes (nothing where there is none)."""

    def __init__(self, folder: Path) -> None:
        self._folder = folder
        self._fd: int | None = None

    def __enter__(self) -> None:
        if fcntl is None:  # pragma: no cover - Windows
            return
        self._fd = os.open(self._folder, os.O_RDONLY)
        # no locks on this file system: writers may then overlap, each writing a whole file
        with contextlib.suppress(OSError):
            fcntl.flock(self._fd, fcntl.LOCK_EX)

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            os.close(self._fd)  # releases the lock
            self._fd = None


class DicomdirUpdater:
    """Keeps ``root/DICOMDIR`` listing the instances stored under ``root`` (media layout).

    :meth:`add` notes a stored file (cheap, any thread); :meth:`flush` rewrites the DICOMDIR
    now: under an exclusive lock on ``root`` (other processes writing the same folder wait),
    it reads the DICOMDIR on disk (which may list instances other processes stored), drops
    the entries whose files are gone, adds the headers of the files noted since, and replaces
    it atomically.  :meth:`request` asks a background thread to flush, at most once per
    ``min_interval`` seconds (requests meanwhile are merged into one rewrite); :meth:`close`
    flushes whatever is left and stops the thread.

    Guarantees: ``DICOMDIR`` is always a whole DICOMDIR (the old one or the new one) that
    lists only files that exist, each once; once :meth:`flush` (or :meth:`close`) returns,
    it lists every instance noted before.  The first flush of an updater made with
    ``recover=True`` also adds the files under ``root`` that the DICOMDIR does not list (an
    earlier run was killed between storing and flushing), reading their headers only.  A file
    that cannot be recorded (not DICOM, a value a record needs missing) is left out and
    reported to ``on_error(path, reason)``.  Cost: each rewrite reads and writes the whole
    DICOMDIR (some 500 bytes per instance) and reads the headers of the new files only.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        min_interval: float = 1.0,
        recover: bool = False,
        on_error: Callable[[Path, str], None] | None = None,
        on_written: Callable[[Path, int], None] | None = None,
        implementation_class_uid: str = uids.IMPLEMENTATION_CLASS_UID,
        implementation_version_name: str | None = uids.IMPLEMENTATION_VERSION_NAME,
    ) -> None:
        self.root = Path(root)
        self._min_interval = min_interval
        self._recover = recover
        self._on_error = on_error
        self._on_written = on_written
        self._implementation = (implementation_class_uid, implementation_version_name)
        self._pending: list[Path] = []
        self._pending_lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def add(self, path: str | os.PathLike[str]) -> None:
        """Note a file stored under ``root`` (to be listed by the next flush)."""
        with self._pending_lock:
            self._pending.append(Path(path))

    def request(self) -> None:
        """Ask for a flush soon, in the background thread (started on first use)."""
        if self._stop.is_set():
            return
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="dicomdir-updater", daemon=True)
            self._thread.start()
        self._wake.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait()
            if self._stop.is_set():
                return
            self._wake.clear()
            try:
                self.flush()
            except Exception as exc:  # reported; the next request tries again
                if self._on_error is not None:
                    self._on_error(self.root / DICOMDIR, f"not written: {exc}")
            self._stop.wait(self._min_interval)  # merge the requests of this interval

    def close(self) -> None:
        """Stop the background thread and flush what is left (in this thread).

        Raises:
            OSError: the DICOMDIR cannot be written.
        """
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join()
        self.flush()

    def flush(self) -> int | None:
        """Rewrite the DICOMDIR now if files were noted (or it is missing, or recovery is
        due); return the number of instances it lists, None when nothing was to be done.

        Raises:
            OSError: the DICOMDIR cannot be written (the noted files stay noted).
        """
        with self._flush_lock:
            with self._pending_lock:
                pending, self._pending = self._pending, []
            try:
                return self._flush(pending)
            except BaseException:
                with self._pending_lock:
                    self._pending[:0] = pending
                raise

    def _flush(self, pending: list[Path]) -> int | None:
        path = self.root / DICOMDIR
        with _FolderLock(self.root):
            exists = path.exists()
            if not pending and exists and not self._recover:
                return None
            fileset_uid: str | None = None
            entries: dict[tuple[str, ...], DicomdirEntry] = {}
            if exists:
                try:
                    fileset_uid, found = read_dicomdir(path)
                except InvalidDicomFile as exc:
                    self._error(path, f"{exc}; written again from the files")
                    found = []
                    self._recover = True
                for entry in found:
                    if Path(self.root, *entry.file_id).is_file():
                        entries.setdefault(entry.file_id, entry)
            new: list[tuple[str, ...]] = []
            for file in pending:
                try:
                    new.append(Path(file).resolve().relative_to(self.root.resolve()).parts)
                except ValueError:
                    self._error(file, "not under the File-set's root")
            if self._recover:
                self._recover = False
                new.extend(self._unlisted(entries))
            known: dict[tuple[str, str], Record] = {}
            for file_id in new:
                problem = file_id_problem(file_id)
                if problem is not None:
                    self._error(Path(self.root, *file_id), f"not a File ID: {problem}")
                    continue
                try:
                    entries[file_id] = entry_for(self.root, file_id, known=known)
                except (OSError, InvalidDicomFile) as exc:
                    self._error(Path(self.root, *file_id), str(exc))
            listed = sorted(entries.values(), key=lambda e: e.file_id)
            self._remove_stale_temp_files()
            class_uid, version = self._implementation
            write_dicomdir(
                self.root,
                listed,
                fileset_uid=fileset_uid,
                implementation_class_uid=class_uid,
                implementation_version_name=version,
            )
        count = len({entry.sop_instance_uid for entry in listed})
        if self._on_written is not None:
            self._on_written(path, count)
        return count

    def _unlisted(self, entries: dict[tuple[str, ...], DicomdirEntry]) -> list[tuple[str, ...]]:
        try:
            scan = scan_folder(self.root)
        except OSError as exc:
            self._error(self.root, f"cannot be listed: {exc}")
            return []
        for path, problem in scan.unfit:
            self._error(path, f"not a File ID: {problem}")
        return [file_id for file_id in scan.instances if file_id not in entries]

    def _remove_stale_temp_files(self) -> None:
        """Temporary DICOMDIRs of a killed writer (we hold the folder's lock: none is live)."""
        with contextlib.suppress(OSError), os.scandir(self.root) as it:
            for entry in it:
                if _TEMP_RE.fullmatch(entry.name):
                    with contextlib.suppress(OSError):
                        os.unlink(entry.path)

    def _error(self, path: Path, reason: str) -> None:
        if self._on_error is not None:
            self._on_error(path, reason)


def update_dicomdir(
    root: str | os.PathLike[str],
    paths: Iterable[str | os.PathLike[str]],
    *,
    recover: bool = False,
    on_error: Callable[[Path, str], None] | None = None,
) -> int | None:
    """Add ``paths`` (files stored under ``root``) to ``root/DICOMDIR`` now, in this thread
    (an async caller runs it in a worker thread): the number of instances it lists, as
    :meth:`DicomdirUpdater.flush`.  ``recover`` and ``on_error`` as for the updater.

    Raises:
        OSError: the DICOMDIR cannot be written.
    """
    updater = DicomdirUpdater(root, recover=recover, on_error=on_error)
    for path in paths:
        updater.add(path)
    return updater.flush()
