"""DICOM Part 10 files for C-STORE: streaming writer (SCP side) and streaming reader (SCU side).

Everything here is synchronous and does plain, short file operations so that the async driver can
run each call in a worker thread (``anyio.to_thread.run_sync``) without tying it up for long.

Receiving (PS3.10 section 7):
    :class:`Part10Writer` writes one received SOP instance to ``folder`` as a Part 10 file: a
    128-byte preamble, ``DICM``, the File Meta Information (group 0002, always Explicit VR Little
    Endian, PS3.10 section 7.1) and then the data set bytes exactly as received in the negotiated
    transfer syntax.  The data set is appended chunk by chunk and never held in memory.  The file
    is written under a temporary name in the same folder and renamed atomically on
    :meth:`Part10Writer.commit`, so a reader never sees a half-written instance.  The file is
    placed flat in the folder or in patient/study/series sub-folders (:data:`LAYOUTS`), and an
    existing file of the same name is kept, replaced or ignored (:data:`DUPLICATE_POLICIES`).
    :func:`read_header` reads a stored file's data set without its pixel data, and
    :func:`remove_stale_temp_files` removes what a killed writer left.

Sending:
    :func:`read_part10_for_send` parses only the File Meta Information of a file and returns a
    :class:`Part10Source` whose :meth:`~Part10Source.iter_chunks` streams the data set bytes from
    disk without decoding them.  :func:`transcode`, :func:`encode_dataset` and
    :func:`decode_dataset` convert between the uncompressed transfer syntaxes with pydicom (not a
    hot path).

File naming (:func:`safe_filename`): the SOP Instance UID comes from the peer and is untrusted.
A well-formed UID is used as the file name (``<uid>.dcm``); anything else is replaced by a name
derived from a SHA-256 hash of the raw value, so no peer-supplied value can name a path outside
the storage folder.  The sorted layout's folder names (:func:`folder_name`) come from the data
set (Patient ID, Study and Series Instance UID) and are sanitised the same way.
"""

from __future__ import annotations

import array
import contextlib
import copy
import hashlib
import io
import os
import re
import struct
import sys
import uuid
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, BinaryIO, Literal, cast

from ..errors import StorageError

if sys.platform == "win32":  # pragma: no cover
    from pathlib import WindowsPath as _SystemPath
else:
    from pathlib import PosixPath as _SystemPath

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

# pydicom (and numpy, which it pulls in) is imported where it is used: writing received files
# and sending Part 10 files never need it, and importing it costs ~0.1 s of every CLI start.
if TYPE_CHECKING:
    from pydicom.dataset import Dataset

__all__ = [
    "DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN",
    "DUPLICATE_POLICIES",
    "EXPLICIT_VR_BIG_ENDIAN",
    "EXPLICIT_VR_LITTLE_ENDIAN",
    "IMPLICIT_VR_LITTLE_ENDIAN",
    "LAYOUTS",
    "NATIVE_TRANSFER_SYNTAXES",
    "DuplicatePolicy",
    "InvalidDataset",
    "InvalidDicomFile",
    "Layout",
    "Part10Source",
    "Part10Writer",
    "StorageError",
    "StoredFile",
    "TranscodeError",
    "UnsupportedTransferSyntax",
    "decode_dataset",
    "encode_dataset",
    "encode_file_meta",
    "folder_name",
    "is_valid_uid",
    "read_header",
    "read_part10_for_send",
    "remove_stale_temp_files",
    "safe_filename",
    "target_path",
    "transcode",
]

# Transfer syntaxes (PS3.5 sections 10 and A.1-A.5).
IMPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2"
EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1.99"
EXPLICIT_VR_BIG_ENDIAN = "1.2.840.10008.1.2.2"

#: The transfer syntaxes whose data sets :func:`transcode` converts between: native (not
#: encapsulated) pixel data, so a data set can be decoded and re-encoded losslessly.
NATIVE_TRANSFER_SYNTAXES: frozenset[str] = frozenset(
    {
        IMPLICIT_VR_LITTLE_ENDIAN,
        EXPLICIT_VR_LITTLE_ENDIAN,
        DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN,
        EXPLICIT_VR_BIG_ENDIAN,
    }
)

#: (implicit VR, little endian) of each native transfer syntax, as stored in the file/stream
#: after inflating (Deflated is Explicit VR Little Endian underneath, PS3.5 A.5).
_NATIVE_ENCODING: dict[str, tuple[bool, bool]] = {
    IMPLICIT_VR_LITTLE_ENDIAN: (True, True),
    EXPLICIT_VR_LITTLE_ENDIAN: (False, True),
    DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN: (False, True),
    EXPLICIT_VR_BIG_ENDIAN: (False, False),
}

_PREAMBLE = b"\x00" * 128
_PREFIX = b"DICM"

# Explicit VR elements whose length field is 2 reserved bytes + 4-byte length (PS3.5 7.1.2).
_LONG_LENGTH_VRS = frozenset(
    {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
)
# Binary VRs whose value is a sequence of fixed-size words that pydicom writes verbatim; their
# bytes must be swapped when the byte order changes (pydicom does not do it, see dcmwrite docs).
_SWAP_WIDTH = {"OW": 2, "OF": 4, "OL": 4, "OD": 8, "OV": 8}
_ARRAY_CODE_FOR_WIDTH = {
    width: code
    for code in ("H", "I", "L", "Q")
    for width in (array.array(code).itemsize,)
    if width in (2, 4, 8)
}

# PS3.5 section 9.1 allows components without leading zeros only; for *naming* we accept leading
# zeros too (they are common in the wild and equally safe: digits and dots only).
_UID_RE = re.compile(r"[0-9]+(?:\.[0-9]+)*")
_MAX_UID_LENGTH = 64  # PS3.5 Table 6.2-1, VR UI
_HASHED_NAME_PREFIX = "uid-"
_TEMP_SUFFIX = ".part"
#: the temporary names of Part10Writer: "." + 32 hex digits + ".part"
_TEMP_NAME_RE = re.compile(r"\.[0-9a-f]{32}\.part")
_SOP_CLASS_UID_TAG = 0x00080016
_SOP_INSTANCE_UID_TAG = 0x00080018
_PATIENT_ID_TAG = 0x00100020
_STUDY_INSTANCE_UID_TAG = 0x0020000D
_SERIES_INSTANCE_UID_TAG = 0x0020000E
#: the bulk data elements :func:`read_header` stops at: Float, Double Float and Pixel Data
_PIXEL_DATA_TAGS = frozenset({0x7FE00008, 0x7FE00009, 0x7FE00010})

#: What :class:`Part10Writer` does when a file with the instance's name exists already:
#:
#: * ``"unique"``: keep both; the new file gets the first free name ``<name>_1.dcm``,
#:   ``<name>_2.dcm``, ... (``_`` never occurs in a UID, so such a name cannot be another
#:   instance's);
#: * ``"overwrite"``: replace the existing file (atomically);
#: * ``"ignore"``: keep the existing file and drop the new one.
DuplicatePolicy = Literal["unique", "overwrite", "ignore"]
#: the values of :data:`DuplicatePolicy`, the default (``"unique"``: nothing received is lost) first
DUPLICATE_POLICIES: tuple[DuplicatePolicy, ...] = ("unique", "overwrite", "ignore")

#: Where :class:`Part10Writer` puts a file in its folder:
#:
#: * ``"flat"``: ``<SOP Instance UID>.dcm`` directly in the folder;
#: * ``"sorted"``: ``<Patient ID>/<Study Instance UID>/<Series Instance UID>/<SOP Instance
#:   UID>.dcm``, the three folder names read from the data set (:func:`folder_name`).
Layout = Literal["flat", "sorted"]
#: the values of :data:`Layout`, the default first
LAYOUTS: tuple[Layout, ...] = ("flat", "sorted")

#: the folder name used for a missing (empty or absent) Patient ID, Study or Series UID
MISSING_VALUE_FOLDER = "UNKNOWN"

#: most files named ``<name>_<n>.dcm`` tried for one instance under the ``"unique"`` policy
_MAX_COPIES = 10_000
#: times the sorted layout's folders are made and the file placed, when a folder vanishes
_PLACE_ATTEMPTS = 3
#: values longer than this are read only when accessed by :func:`read_header` (bytes)
_HEADER_DEFER_SIZE = 64 * 1024


class InvalidDicomFile(StorageError):
    """The file (or byte string) is not a DICOM data set we can read."""


class InvalidDataset(StorageError, ValueError):
    """A data set lacks what the operation needs, e.g. a C-STORE of a data set without SOP
    Class UID (0008,0016) or SOP Instance UID (0008,0018)."""


class TranscodeError(StorageError):
    """A data set cannot be converted to the requested transfer syntax."""


class UnsupportedTransferSyntax(TranscodeError):
    """The transfer syntax is unknown or cannot be encoded/decoded here."""


# ---------------------------------------------------------------------------------------------
# File names


def is_valid_uid(value: str) -> bool:
    """True if ``value`` is digits separated by single dots, 1 to 64 characters (PS3.5 9.1).

    Leading zeros inside a component are tolerated (see module notes); no padding is accepted,
    callers strip the NUL padding of received UI values before asking.
    """
    return 0 < len(value) <= _MAX_UID_LENGTH and _UID_RE.fullmatch(value) is not None


def safe_filename(sop_instance_uid: str, *, suffix: str = ".dcm") -> str:
    """Return a file name (a single path component) for an untrusted SOP Instance UID.

    * a valid UID (:func:`is_valid_uid`) -> ``f"{uid}{suffix}"``;
    * anything else (``"../x"``, ``"/abs"``, ``"a/b"``, NUL bytes, empty, over-long, ...) ->
      ``"uid-" + sha256(raw value)[:32 hex] + suffix``.  The hash keeps distinct bad values
      distinct, so two different instances still do not overwrite each other.

    Neither form can start with ``.``, so they never collide with the ``.<hex>.part`` temporary
    names of :class:`Part10Writer`.  ``suffix`` must itself be harmless (checked).
    """
    if suffix and (not suffix.startswith(".") or not _is_plain_component(suffix[1:] or "x")):
        raise ValueError(f"unsafe file name suffix {suffix!r}")
    if is_valid_uid(sop_instance_uid):
        return sop_instance_uid + suffix
    # surrogatepass: any str (even one carrying lone surrogates) has a byte form to hash.
    raw = sop_instance_uid.encode("utf-8", errors="surrogatepass")
    return _HASHED_NAME_PREFIX + hashlib.sha256(raw).hexdigest()[:32] + suffix


def _is_plain_component(name: str) -> bool:
    """A non-empty single path component that is not ``.``/``..`` and has no NUL/separator."""
    if name in ("", ".", "..") or "\x00" in name or "/" in name or "\\" in name:
        return False
    return not (os.altsep and os.altsep in name)


def target_path(folder: str | os.PathLike[str], name: str) -> Path:
    """Return ``resolved(folder) / name`` after checking that it lies directly inside ``folder``.

    ``folder`` must be an existing directory; it is resolved (symlinks in the folder path itself
    are the administrator's choice and are followed).  ``name`` is *not* resolved: if
    ``folder/name`` is a pre-existing symlink, :func:`os.replace` later replaces the link itself
    and never writes through it, so the final component must not be followed here either.
    """
    base = Path(folder).resolve(strict=True)
    if not base.is_dir():
        raise NotADirectoryError(f"storage folder {base} is not a directory")
    if not _is_plain_component(name):
        raise ValueError(f"unsafe file name {name!r}")
    candidate = base / name
    # Defence in depth: the parent of the candidate must resolve to the folder itself.
    if candidate.parent.resolve() != base or candidate.name != name:
        raise ValueError(f"file name {name!r} escapes the storage folder")
    return candidate


_UNSAFE_FOLDER_CHARS = re.compile(r"[^A-Za-z0-9._-]")
_MAX_FOLDER_NAME = 64
#: names Windows reserves for devices, whatever their extension
_RESERVED_NAMES = frozenset(
    {"CON", "PRN", "AUX", "NUL"} | {f"{d}{n}" for d in ("COM", "LPT") for n in range(1, 10)}
)


def folder_name(value: str | None, *, uid: bool = False) -> str:
    """A safe folder name (one path component) for an untrusted value from a data set.

    With ``uid=True`` (Study/Series Instance UID) a valid UID is used as it is and anything
    else is named like :func:`safe_filename` does (``uid-<hash>``).  Otherwise (Patient ID)
    surrounding spaces are dropped, every character but ASCII letters, digits, ``.``, ``_`` and
    ``-`` becomes ``_``, leading and trailing dots become ``_`` (so ``..`` and hidden names
    cannot occur), the name is cut to 64 characters, and Windows device names get a ``_``
    prefix (``"../../etc"`` becomes ``"___.._etc"``, ``"CON"`` ``"_CON"``).  Distinct values
    may share a name (``"a/b"`` and ``"a_b"``); the UIDs below keep their instances apart.  An
    empty or missing value gives :data:`MISSING_VALUE_FOLDER`.
    """
    text = (value or "").strip(" \x00")
    if not text:
        return MISSING_VALUE_FOLDER
    if uid:
        return safe_filename(text, suffix="")
    name = _UNSAFE_FOLDER_CHARS.sub("_", text)[:_MAX_FOLDER_NAME]
    stripped = name.strip(".")
    lead = len(name) - len(name.lstrip("."))
    trail = len(name) - len(name.rstrip("."))
    name = "_" * lead + stripped + "_" * trail if stripped else "_" * len(name)
    if name.split(".")[0].upper() in _RESERVED_NAMES:
        name = "_" + name
    return name


# ---------------------------------------------------------------------------------------------
# Writing (SCP side)


def _check_short_text(name: str, value: str, max_length: int) -> None:
    """AE/SH values in the meta group: printable ASCII, no backslash (the VM separator)."""
    stripped = value.strip(" ")
    if not stripped or len(value.rstrip(" ")) > max_length:
        raise ValueError(f"{name} must be 1-{max_length} characters, got {value!r}")
    if any(not (0x20 <= ord(c) <= 0x7E) or c == "\\" for c in value):
        raise ValueError(f"{name} must be printable ASCII without backslash, got {value!r}")


def _check_meta_uid(name: str, value: str) -> None:
    """UIDs are recorded verbatim (even non-conformant ones from a peer) if they can be encoded.

    The explicit VR UI length field is 16 bits, and the UI repertoire is ASCII (PS3.5 6.2).
    """
    if not isinstance(value, str):
        raise TypeError(f"{name} must be str, got {type(value).__name__}")
    if not value.isascii():
        raise ValueError(f"{name} must be ASCII, got {value!r}")
    if len(value) > 0xFFFE:
        raise ValueError(f"{name} is too long to encode ({len(value)} characters)")


def encode_file_meta(
    *,
    sop_class_uid: str,
    sop_instance_uid: str,
    transfer_syntax_uid: str,
    implementation_class_uid: str,
    implementation_version_name: str | None = None,
    source_ae_title: str | None = None,
) -> bytes:
    """Encode the File Meta Information group (PS3.10 section 7.1, Table 7.1-1).

    Returns the group 0002 elements only (no preamble or prefix), Explicit VR Little Endian, with
    a correct (0002,0000) group length.  UIDs are written verbatim (validated only for being
    encodable, see :class:`Part10Writer`).
    """
    _check_meta_uid("sop_class_uid", sop_class_uid)
    _check_meta_uid("sop_instance_uid", sop_instance_uid)
    _check_meta_uid("transfer_syntax_uid", transfer_syntax_uid)
    if not is_valid_uid(implementation_class_uid):
        raise ValueError(f"implementation_class_uid {implementation_class_uid!r} is not a UID")
    if implementation_version_name is not None:
        _check_short_text("implementation_version_name", implementation_version_name, 16)
    if source_ae_title is not None:
        _check_short_text("source_ae_title", source_ae_title, 16)

    # Hand-encoded: this runs once per received instance, and pydicom's general writer costs
    # ~0.4 ms here where these few fixed-VR elements take microseconds.  The test suite checks
    # the bytes against pydicom's encoding (tests/test_storage_files.py, tests/test_oracles.py).
    # UIDs are written as received: a peer's non-conformant UID is recorded as sent.
    body = bytearray()
    body += _META_VERSION_ELEMENT
    body += _short_element(0x0002, 0x0002, b"UI", _ui_bytes(sop_class_uid), b"\x00")
    body += _short_element(0x0002, 0x0003, b"UI", _ui_bytes(sop_instance_uid), b"\x00")
    body += _short_element(0x0002, 0x0010, b"UI", _ui_bytes(transfer_syntax_uid), b"\x00")
    body += _short_element(0x0002, 0x0012, b"UI", _ui_bytes(implementation_class_uid), b"\x00")
    if implementation_version_name is not None:
        body += _short_element(
            0x0002, 0x0013, b"SH", implementation_version_name.encode("ascii"), b" "
        )
    if source_ae_title is not None:
        body += _short_element(
            0x0002, 0x0016, b"AE", source_ae_title.strip(" ").encode("ascii"), b" "
        )
    return struct.pack("<HH2sHI", 0x0002, 0x0000, b"UL", 4, len(body)) + bytes(body)


#: (0002,0001) File Meta Information Version, OB, value 00 01
_META_VERSION_ELEMENT = struct.pack("<HH2sHI", 0x0002, 0x0001, b"OB", 0, 2) + b"\x00\x01"


def _ui_bytes(value: str) -> bytes:
    # like pydicom, surrounding white space is not part of a UI value
    return value.strip().encode("ascii")


def _short_element(group: int, element: int, vr: bytes, value: bytes, pad: bytes) -> bytes:
    """One Explicit VR Little Endian element with a 2-byte length, padded to even length."""
    if len(value) % 2:
        value += pad
    return struct.pack("<HH2sH", group, element, vr, len(value)) + value


class StoredFile(_SystemPath):
    """The path of a stored instance (a :class:`pathlib.Path`), with what happened to it.

    Returned by :meth:`Part10Writer.commit` and ``request.save_to()``.  It compares, hashes and
    works like the plain path of the file, and adds:

    * :attr:`duplicate`: ``None`` when no file had the instance's name; otherwise the
      :data:`DuplicatePolicy` that was applied (``"unique"``: this path is the new copy's
      ``<name>_<n>.dcm``; ``"overwrite"``: the previous file was replaced; ``"ignore"``: this
      path is the existing file, the instance just received was dropped);
    * :attr:`dataset_size`: the number of data set bytes received;
    * :meth:`header`: the file's data set without its pixel data, read when asked.

    Paths derived from it (``parent``, ``with_suffix()``, ...) are of this class too but carry
    the defaults (``duplicate=None``, ``dataset_size=0``).
    """

    #: ``None``, or the policy applied because a file with the instance's name existed
    duplicate: DuplicatePolicy | None = None
    #: data set bytes received (the File Meta Information is not counted)
    dataset_size: int = 0

    @classmethod
    def _made(
        cls, path: Path, *, duplicate: DuplicatePolicy | None, dataset_size: int
    ) -> StoredFile:
        stored = cls(path)
        stored.duplicate = duplicate
        stored.dataset_size = dataset_size
        return stored

    def header(self, *, defer_size: int | None = _HEADER_DEFER_SIZE) -> Dataset:
        """The data set of this file up to its pixel data, with its File Meta Information.

        Reads the file now, with :func:`read_header` (a few kilobytes for an image; the pixel
        data is never read).  Blocking file I/O: from an ``async`` handler on a slow disk, call
        it through ``anyio.to_thread.run_sync``.
        """
        return read_header(self, defer_size=defer_size)


class Part10Writer:
    """Write one received SOP instance to ``folder`` as a DICOM Part 10 file, streaming.

    Parameters
    ----------
    folder:
        Existing directory; the file ends up inside it (never elsewhere, whatever the UIDs and
        other values from the peer contain).
    sop_class_uid, sop_instance_uid:
        Affected SOP Class/Instance UID of the C-STORE-RQ; they become (0002,0002)/(0002,0003)
        and the instance UID names the file (:func:`safe_filename`).
    transfer_syntax_uid:
        The transfer syntax of the presentation context the data set arrived on, (0002,0010).
        The data set bytes given to :meth:`write` must already be in it; for Deflated Explicit VR
        Little Endian they are the deflated stream and are stored as received.
    implementation_class_uid, implementation_version_name:
        Identify the implementation writing the file, (0002,0012)/(0002,0013).
    source_ae_title:
        Optional (0002,0016) Source Application Entity Title: the AE that sent the instance.
    on_duplicate:
        What :meth:`commit` does when a file with the final name exists
        (:data:`DuplicatePolicy`): ``"unique"`` (default) keeps both, ``"overwrite"`` replaces
        the existing file, ``"ignore"`` keeps it and drops the new one.
    layout:
        ``"flat"`` (default): ``folder/<SOP Instance UID>.dcm``; ``"sorted"``:
        ``folder/<Patient ID>/<Study UID>/<Series UID>/<SOP Instance UID>.dcm`` (:data:`Layout`),
        the three names read by :meth:`commit` from the head of the data set written, never
        from its pixel data, and made safe with :func:`folder_name`.

    Life cycle: the constructor creates ``folder/.<random hex>.part`` with ``O_CREAT | O_EXCL``
    (it cannot clobber or follow anything), locks it (POSIX ``flock``, so that
    :func:`remove_stale_temp_files` in another process leaves it alone) and writes preamble,
    ``DICM`` and the meta group.  :meth:`write` appends data set bytes.  :meth:`commit` flushes
    the file and moves it to its final name, atomically: :func:`os.replace` (overwrite) or a
    hard link that fails if the name is taken (unique, ignore), the temporary name being in the
    same folder tree.  :meth:`discard` removes the temporary file.  Used as a context manager,
    leaving the block without :meth:`commit` (normally or by an exception) discards.  A writer
    dropped without either (process killed) leaves its ``.*.part`` file behind; those names
    never clash with stored files and :func:`remove_stale_temp_files` removes them.

    If the final name is a symlink, it counts as an existing file: the link itself is replaced
    (overwrite) or kept, its target is never written.  There is no ``fsync``: after a power
    loss a recent file may be missing or empty, but a crash of the process never leaves a
    partial file under a final name.  File permissions are ``0o666`` minus the process umask.
    """

    __slots__ = (
        "_bytes_written",
        "_file",
        "_final_path",
        "_folder",
        "_header_length",
        "_layout",
        "_name",
        "_on_duplicate",
        "_state",
        "_temp_path",
        "_transfer_syntax_uid",
    )

    def __init__(
        self,
        folder: str | os.PathLike[str],
        *,
        sop_class_uid: str,
        sop_instance_uid: str,
        transfer_syntax_uid: str,
        implementation_class_uid: str,
        implementation_version_name: str | None = None,
        source_ae_title: str | None = None,
        on_duplicate: DuplicatePolicy = "unique",
        layout: Layout = "flat",
    ) -> None:
        if on_duplicate not in DUPLICATE_POLICIES:
            raise ValueError(
                f"on_duplicate must be one of {DUPLICATE_POLICIES}, not {on_duplicate!r}"
            )
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, not {layout!r}")
        header = (
            _PREAMBLE
            + _PREFIX
            + encode_file_meta(
                sop_class_uid=sop_class_uid,
                sop_instance_uid=sop_instance_uid,
                transfer_syntax_uid=transfer_syntax_uid,
                implementation_class_uid=implementation_class_uid,
                implementation_version_name=implementation_version_name,
                source_ae_title=source_ae_title,
            )
        )
        self._name = safe_filename(sop_instance_uid)
        self._on_duplicate: DuplicatePolicy = on_duplicate
        self._layout: Layout = layout
        self._transfer_syntax_uid = transfer_syntax_uid
        self._header_length = len(header)
        # Flat: the final path is known (and checked) now.  Sorted: only the folder is.
        self._final_path: Path | None = None
        if layout == "flat":
            self._final_path = target_path(folder, self._name)
            self._folder = self._final_path.parent
        else:
            self._folder = target_path(folder, self._name).parent
        self._temp_path = target_path(self._folder, f".{uuid.uuid4().hex}{_TEMP_SUFFIX}")
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
        fd = os.open(self._temp_path, flags, 0o666)
        self._state = "open"
        self._bytes_written = 0
        try:
            _lock(fd)
            self._file: BinaryIO = os.fdopen(fd, "wb")
        except BaseException:
            os.close(fd)
            self._remove_temp()
            raise
        try:
            self._file.write(header)
        except BaseException:
            self.discard()
            raise

    @property
    def path(self) -> Path:
        """The file's path: after :meth:`commit`, where it was stored; before, where the flat
        layout will put it (unless the name is taken).  The sorted layout names its folders on
        :meth:`commit`: before, this raises :class:`ValueError`."""
        if self._final_path is None:
            raise ValueError("the sorted layout chooses the file's folder on commit")
        return self._final_path

    @property
    def temp_path(self) -> Path:
        """The temporary path being written."""
        return self._temp_path

    @property
    def bytes_written(self) -> int:
        """Number of data set bytes written so far (the meta header is not counted)."""
        return self._bytes_written

    @property
    def closed(self) -> bool:
        """True after :meth:`commit` or :meth:`discard`."""
        return self._state != "open"

    def write(self, chunk: bytes | bytearray | memoryview) -> None:
        """Append data set bytes.  Nothing is retained beyond the file object's small buffer."""
        if self._state != "open":
            raise ValueError(f"Part10Writer is {self._state}")
        # A buffered file passes writes larger than its buffer straight to the OS without copying.
        self._file.write(chunk)
        self._bytes_written += memoryview(chunk).nbytes

    def commit(self) -> StoredFile:
        """Flush the file and move it to its final name; return that path (a :class:`StoredFile`
        telling whether a file of that name existed and what was done).

        On POSIX the temporary file stays open (and locked) until it has its final name.  With
        the ``"ignore"`` policy and a taken name, the new file is removed and the existing one's
        path is returned.
        """
        if self._state != "open":
            raise ValueError(f"Part10Writer is {self._state}")
        try:
            self._file.flush()
            if not _RENAME_OPEN_FILES:
                self._file.close()
            if self._final_path is not None:
                path, duplicate = _place(self._temp_path, self._final_path, self._on_duplicate)
            else:
                path, duplicate = self._place_sorted()
            self._file.close()
        except BaseException:
            self._state = "discarded"
            with contextlib.suppress(OSError):
                self._file.close()
            self._remove_temp()
            raise
        self._state = "committed"
        self._final_path = path
        return StoredFile._made(path, duplicate=duplicate, dataset_size=self._bytes_written)

    def _place_sorted(self) -> tuple[Path, DuplicatePolicy | None]:
        """Create the sorted layout's folders and place the file there.  Another writer may
        remove a folder it emptied (:func:`prune_empty_folders`) between our ``mkdir`` and our
        ``link``: the folders are made again, a few times at most."""
        for attempt in range(_PLACE_ATTEMPTS):
            try:
                return _place(self._temp_path, self._sorted_path(), self._on_duplicate)
            except FileNotFoundError:
                if attempt == _PLACE_ATTEMPTS - 1 or not self._temp_path.exists():
                    raise
        raise AssertionError("unreachable")

    def _sorted_path(self) -> Path:
        """``folder/<patient>/<study>/<series>/<name>``, the folders created as needed.

        Each level must be a real directory inside ``folder``: a symlink or a file of that name
        fails the commit (:class:`OSError`) rather than being followed.
        """
        patient, study, series = _read_sort_keys(
            self._temp_path, self._header_length, self._transfer_syntax_uid
        )
        current = self._folder
        for part in (
            folder_name(patient),
            folder_name(study, uid=True),
            folder_name(series, uid=True),
        ):
            if not _is_plain_component(part):  # cannot happen: folder_name makes plain names
                raise ValueError(f"unsafe folder name {part!r}")
            current = current / part
            with contextlib.suppress(FileExistsError):
                os.mkdir(current)
            if current.is_symlink() or not current.is_dir():
                raise NotADirectoryError(
                    f"{current} is not a directory (a file or a link has its name)"
                )
        return current / self._name

    def discard(self) -> None:
        """Close and remove the temporary file.  Idempotent; does nothing after :meth:`commit`."""
        if self._state != "open":
            return
        self._state = "discarded"
        try:
            self._file.close()
        finally:
            self._remove_temp()

    def _remove_temp(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._temp_path)

    def __enter__(self) -> Part10Writer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.discard()

    def __repr__(self) -> str:
        name = self._final_path.name if self._final_path is not None else self._name
        return f"<Part10Writer {name} {self._state} {self._bytes_written} bytes>"


#: POSIX renames a file that is open (and keeps its lock) without trouble; Windows does not.
_RENAME_OPEN_FILES = os.name == "posix"


def _lock(fd: int) -> None:
    """Mark a temporary file as being written: an exclusive ``flock`` held until it is closed.

    Where locks are not available (Windows, a file system without them) nothing is done: on
    Windows an open file cannot be removed anyway.
    """
    if fcntl is None:  # pragma: no cover - Windows
        return
    with contextlib.suppress(OSError):
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)


def _place(temp: Path, final: Path, policy: DuplicatePolicy) -> tuple[Path, DuplicatePolicy | None]:
    """Give ``temp`` the name ``final`` according to ``policy``; return the path the instance
    has and the policy applied (``None`` if the name was free)."""
    if policy == "overwrite":
        existed = os.path.lexists(final)
        os.replace(temp, final)
        return final, ("overwrite" if existed else None)
    if _link_if_free(temp, final):
        return final, None
    if policy == "ignore":
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        return final, "ignore"
    stem, suffix = final.name[: -len(final.suffix) or None], final.suffix
    for n in range(1, _MAX_COPIES + 1):
        candidate = final.with_name(f"{stem}_{n}{suffix}")
        if _link_if_free(temp, candidate):
            return candidate, "unique"
    raise FileExistsError(f"{final} and {_MAX_COPIES} copies of it exist already")


def _link_if_free(temp: Path, final: Path) -> bool:
    """Move ``temp`` to ``final`` unless that name is taken (by anything, a dangling link
    included); True if moved.  Atomic with a hard link; on a file system without hard links,
    checked first (another process might then take the name in between)."""
    try:
        os.link(temp, final)
    except FileExistsError:
        return False
    except OSError:
        # no hard links here (FAT, some network file systems): check, then rename
        if os.path.lexists(final):
            return False
        os.replace(temp, final)
        return True
    os.unlink(temp)
    return True


def prune_empty_folders(path: str | os.PathLike[str], root: str | os.PathLike[str]) -> None:
    """Remove the folders between ``path`` (a removed file's) and ``root`` that are left
    empty, deepest first; ``root`` itself stays.  Stops at the first folder that is not empty
    (or cannot be removed); a folder outside ``root`` is never touched."""
    root_path = Path(root).resolve()
    current = Path(path).resolve().parent
    while current != root_path and root_path in current.parents:
        try:
            os.rmdir(current)
        except OSError:
            return
        current = current.parent


def remove_stale_temp_files(folder: str | os.PathLike[str]) -> int:
    """Remove the temporary files that killed writers left in ``folder``; return how many.

    Only names of :class:`Part10Writer`'s form (``.<32 hex digits>.part``, regular files, not
    links) directly in ``folder`` are considered.  One that a live writer (of this or another
    process) is still writing is left alone: the writer holds a lock on it (POSIX), and Windows
    refuses to remove an open file.  A missing ``folder`` has none.
    """
    removed = 0
    try:
        entries = list(os.scandir(folder))
    except FileNotFoundError:
        return 0
    for entry in entries:
        if not _TEMP_NAME_RE.fullmatch(entry.name) or not entry.is_file(follow_symlinks=False):
            continue
        try:
            if _remove_if_unlocked(entry.path):
                removed += 1
        except FileNotFoundError:
            continue  # its writer committed or discarded it meanwhile
        except PermissionError:
            continue  # open elsewhere (Windows), or not ours to remove
    return removed


def _remove_if_unlocked(path: str) -> bool:
    if fcntl is None:  # pragma: no cover - Windows: an open file cannot be removed
        os.unlink(path)
        return True
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(path, flags)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False  # a live writer has it
        except OSError:
            pass  # no locks on this file system: the name alone decides
        os.unlink(path)
        return True
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------------------------
# Reading for sending (SCU side)


@dataclass(frozen=True, slots=True)
class Part10Source:
    """A data set on disk ready to be sent: where it is and how it is encoded.

    ``dataset_offset``/``dataset_length`` delimit the data set bytes in ``path`` (everything
    after the File Meta Information; the whole file for a raw data set without meta).  The
    bytes are in ``transfer_syntax_uid`` exactly as on disk (the deflated stream for Deflated
    Explicit VR Little Endian).  ``has_file_meta`` is False for raw data sets, whose UIDs and
    transfer syntax were found by reading the data set with pydicom.

    ``data`` holds the data set bytes when they were read together with the header
    (``read_part10_for_send(..., read_limit=...)``) or by :meth:`load`; it is ``None`` when
    they are read from disk as they are sent.  It takes no part in comparisons.
    """

    path: Path
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str
    dataset_offset: int
    dataset_length: int
    has_file_meta: bool = True
    data: bytes | None = field(default=None, repr=False, compare=False)

    def iter_chunks(self, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        """Yield the data set bytes in chunks of at most ``chunk_size``, read lazily from disk.

        The file is opened when iteration starts and closed when it ends (or the generator is
        closed).  A file that shrank since :func:`read_part10_for_send` raises
        :class:`InvalidDicomFile` instead of silently sending a truncated data set.  A source
        whose :attr:`data` is loaded yields slices of it and does not touch the file.
        """
        if chunk_size <= 0:
            raise ValueError("chunk_size must be positive")
        if self.data is not None:
            if len(self.data) <= chunk_size:
                yield self.data
                return
            for start in range(0, len(self.data), chunk_size):
                yield self.data[start : start + chunk_size]
            return
        remaining = self.dataset_length
        with open(self.path, "rb", buffering=0) as fp:
            fp.seek(self.dataset_offset)
            while remaining > 0:
                chunk = fp.read(min(chunk_size, remaining))
                if not chunk:
                    raise InvalidDicomFile(
                        f"{self.path}: file is shorter than when it was opened "
                        f"({remaining} data set bytes missing)"
                    )
                remaining -= len(chunk)
                yield chunk

    def read_bytes(self) -> bytes:
        """The whole data set in memory (for small files and transcoding)."""
        if self.data is not None:
            return self.data
        with open(self.path, "rb", buffering=0) as fp:
            fp.seek(self.dataset_offset)
            return _read_exactly(fp, self.dataset_length, self.path)

    def load(self) -> Part10Source:
        """This source with :attr:`data` read from disk (itself if it is loaded already).

        One open and, normally, one read: the cheap way to send a small file whole.  The same
        truncation check as :meth:`iter_chunks` applies.
        """
        if self.data is not None:
            return self
        return replace(self, data=self.read_bytes())


def _read_exactly(fp: BinaryIO, length: int, path: Path) -> bytes:
    """``length`` bytes from the current position of ``fp``; :class:`InvalidDicomFile` if the
    file ends first (it shrank since it was scanned)."""
    data = fp.read(length)
    if len(data) == length:
        return data  # the usual case: one read() call, no copy
    parts = [data]
    got = len(data)
    while got < length:
        chunk = fp.read(length - got)
        if not chunk:
            raise InvalidDicomFile(
                f"{path}: file is shorter than when it was opened "
                f"({length - got} data set bytes missing)"
            )
        parts.append(chunk)
        got += len(chunk)
    return b"".join(parts)


class _HeadReader:
    """Random access to the start of a file through one in-memory window.

    The header of a Part 10 file (preamble, meta group, head of the data set) is normally a few
    hundred bytes: one ``read`` of :data:`_HEAD_WINDOW` bytes covers it, where walking it with
    ``seek``/``read`` on the file object cost some 30 system calls per file (the scan of a
    folder of 1000 files was dominated by them).  A value past the window (a huge private meta
    element) moves the window.
    """

    __slots__ = ("_buf", "_fp", "_start", "size")

    def __init__(self, fp: BinaryIO, size: int) -> None:
        self._fp = fp
        self.size = size
        self._buf = b""
        self._start = 0

    def get(self, pos: int, n: int) -> bytes:
        """Up to ``n`` bytes at ``pos`` (fewer only at the end of the file)."""
        rel = pos - self._start
        if rel < 0 or rel + n > len(self._buf):
            self._fp.seek(pos)
            self._buf = self._fp.read(max(n, _HEAD_WINDOW))
            self._start = pos
            rel = 0
        return self._buf[rel : rel + n]


#: bytes read at once from the start of a file being located for sending
_HEAD_WINDOW = 16384


def _parse_meta_group(reader: _HeadReader, start: int, path: Path) -> tuple[dict[int, bytes], int]:
    """Walk the group 0002 elements starting at ``start``.

    Returns the values of the elements we need and the offset of the first element after the
    group.  The meta group is Explicit VR Little Endian (PS3.10 7.1); files whose meta group was
    written in Implicit VR (seen in the wild) are accepted too.  Values we do not need are
    skipped (checked against the file size only), so large private meta elements cost nothing.
    """
    wanted = {0x00020002, 0x00020003, 0x00020010}
    values: dict[int, bytes] = {}
    implicit: bool | None = None
    pos = start
    while True:
        head = reader.get(pos, 12)
        if len(head) < 8:
            if len(head) >= 2 and struct.unpack_from("<H", head)[0] == 0x0002:
                raise InvalidDicomFile(f"{path}: File Meta Information is truncated")
            return values, pos  # end of file (possibly no data set at all)
        group, element = struct.unpack_from("<HH", head)
        if group != 0x0002:
            return values, pos
        vr = head[4:6]
        if implicit is None:
            implicit = not (vr.isalpha() and vr.isupper())
        if implicit:
            length = struct.unpack_from("<I", head, 4)[0]
            pos += 8
        elif vr in _LONG_LENGTH_VRS:
            if len(head) < 12:
                raise InvalidDicomFile(f"{path}: File Meta Information is truncated")
            length = struct.unpack_from("<I", head, 8)[0]
            pos += 12
        else:
            length = struct.unpack_from("<H", head, 6)[0]
            pos += 8
        if length == 0xFFFFFFFF:
            raise InvalidDicomFile(f"{path}: undefined length in the File Meta Information")
        if pos + length > reader.size:
            raise InvalidDicomFile(f"{path}: File Meta Information is truncated")
        tag = (group << 16) | element
        if tag in wanted:
            values[tag] = reader.get(pos, length)
        pos += length


def _ui(raw: bytes | None) -> str | None:
    """Decode a UI value: ASCII, with the trailing NUL (and tolerated space) padding removed."""
    if raw is None:
        return None
    text = raw.decode("latin-1").rstrip("\x00 ")
    return text or None


#: bytes at the start of a data set searched for its SOP Class/Instance UID (group 0008 comes
#: first, so they are normally within the first few hundred bytes)
_DATASET_HEAD_BYTES = 4096


def _dataset_head_uids(head: bytes, transfer_syntax_uid: str) -> tuple[str | None, str | None]:
    """(SOP Class UID, SOP Instance UID) from the first bytes of an encoded data set.

    A C-STORE-RQ's Affected SOP Class/Instance UID must identify the data set sent (PS3.7
    9.3.1.1), and some files' (0002,0002)/(0002,0003) disagree with their (0008,0016)/(0008,0018)
    (pydicom's rtplan.dcm and rtdose.dcm): an SCP that checks, such as DCMTK's storescp, refuses
    such an instance with 0xA900 when the meta's values are sent.  DCMTK's storescu and
    pynetdicom take them from the data set too.  Only top-level elements up to (0008,0018) are
    walked (microseconds); an undefined length before them (a sequence), a value running past
    ``head``, or an undecodable deflated stream gives ``None`` for what was not found.
    """
    if transfer_syntax_uid == DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN:
        try:
            head = zlib.decompressobj(-zlib.MAX_WBITS).decompress(head, _DATASET_HEAD_BYTES)
        except zlib.error:
            return None, None
    implicit = transfer_syntax_uid == IMPLICIT_VR_LITTLE_ENDIAN
    order = ">" if transfer_syntax_uid == EXPLICIT_VR_BIG_ENDIAN else "<"
    found: dict[int, str | None] = {}
    pos = 0
    while pos + 8 <= len(head):
        group, element = struct.unpack_from(order + "HH", head, pos)
        tag = (group << 16) | element
        if tag > _SOP_INSTANCE_UID_TAG:
            break
        if implicit:
            length = struct.unpack_from(order + "I", head, pos + 4)[0]
            pos += 8
        elif head[pos + 4 : pos + 6] in _LONG_LENGTH_VRS:
            if pos + 12 > len(head):
                break
            length = struct.unpack_from(order + "I", head, pos + 8)[0]
            pos += 12
        else:
            length = struct.unpack_from(order + "H", head, pos + 6)[0]
            pos += 8
        if length == 0xFFFFFFFF or pos + length > len(head):
            break
        if tag in (_SOP_CLASS_UID_TAG, _SOP_INSTANCE_UID_TAG):
            found[tag] = _ui(head[pos : pos + length])
        pos += length
    return found.get(_SOP_CLASS_UID_TAG), found.get(_SOP_INSTANCE_UID_TAG)


def _probe_with_pydicom(path: Path) -> tuple[str | None, str | None, str]:
    """Read (SOP Class UID, SOP Instance UID, transfer syntax) from the data set itself."""
    import pydicom

    try:
        ds = pydicom.dcmread(
            path,
            force=True,
            stop_before_pixels=True,
            specific_tags=[_SOP_CLASS_UID_TAG, _SOP_INSTANCE_UID_TAG],
        )
        sop_class = ds.get("SOPClassUID")
        sop_instance = ds.get("SOPInstanceUID")
    except Exception as exc:  # pydicom raises many kinds of errors on garbage input
        raise InvalidDicomFile(f"{path}: not a DICOM data set ({exc})") from exc
    implicit, little = ds.original_encoding
    if implicit is None or little is None:
        raise InvalidDicomFile(f"{path}: cannot determine the data set encoding")
    if implicit:
        ts = IMPLICIT_VR_LITTLE_ENDIAN
    else:
        ts = EXPLICIT_VR_LITTLE_ENDIAN if little else EXPLICIT_VR_BIG_ENDIAN
    return (
        str(sop_class) if sop_class else None,
        str(sop_instance) if sop_instance else None,
        ts,
    )


def read_part10_for_send(path: str | os.PathLike[str], *, read_limit: int = 0) -> Part10Source:
    """Locate the data set of a DICOM file for sending, without decoding it.

    * Part 10 file (preamble + ``DICM`` + meta, PS3.10 7.1): the transfer syntax comes from
      (0002,0010), the SOP Class/Instance UID from (0008,0016)/(0008,0018) at the head of the
      data set (see :func:`_dataset_head_uids`), else from (0002,0002)/(0002,0003); the data
      set is everything after the meta group.
    * Meta group without preamble (some old writers): parsed the same way from offset 0.
    * Raw data set (no meta at all): read with pydicom (``force=True``) to find the SOP UIDs and
      the encoding (Implicit VR LE, Explicit VR LE or Explicit VR BE, detected by pydicom); the
      whole file is the data set and is sent as it is, nothing is re-encoded.
    * A meta group missing one of the three values: the missing ones are taken from the data set
      the same way.

    A data set of at most ``read_limit`` bytes is read in the same call and returned in
    :attr:`Part10Source.data` (a file sent whole costs one open); a bigger one is left on disk
    to be streamed.  The default, 0, reads only the header.

    Raises :class:`InvalidDicomFile` if the file is not DICOM, is truncated inside the meta
    group, has no data set, or no SOP Class/Instance UID can be found.  ``OSError`` (missing
    file, permissions) propagates unchanged.
    """
    file_path = Path(path)
    data: bytes | None = None
    with open(file_path, "rb", buffering=0) as fp:
        size = os.fstat(fp.fileno()).st_size
        reader = _HeadReader(fp, size)
        head = reader.get(0, 132)
        has_preamble = len(head) == 132 and head[128:132] == _PREFIX
        values, offset = _parse_meta_group(reader, 132 if has_preamble else 0, file_path)
        data_head = reader.get(offset, _DATASET_HEAD_BYTES)
        if 0 < size - offset <= read_limit:
            fp.seek(offset)
            data = _read_exactly(fp, size - offset, file_path)
    # A "DICM" prefix directly followed by the data set counts as having no meta group.
    has_meta = offset > (len(_PREAMBLE) + len(_PREFIX) if has_preamble else 0)
    sop_class = _ui(values.get(0x00020002))
    sop_instance = _ui(values.get(0x00020003))
    ts = _ui(values.get(0x00020010))
    if ts is not None:
        # The data set's own UIDs win over the meta's (see _dataset_head_uids).
        head_class, head_instance = _dataset_head_uids(data_head, ts)
        sop_class = head_class or sop_class
        sop_instance = head_instance or sop_instance
    if sop_class is None or sop_instance is None or ts is None:
        probed_class, probed_instance, probed_ts = _probe_with_pydicom(file_path)
        sop_class = sop_class or probed_class
        sop_instance = sop_instance or probed_instance
        ts = ts or probed_ts
    if not sop_class or not sop_instance:
        raise InvalidDicomFile(f"{file_path}: no SOP Class UID / SOP Instance UID found")
    length = size - offset
    if length <= 0:
        raise InvalidDicomFile(f"{file_path}: no data set after the File Meta Information")
    return Part10Source(
        path=file_path,
        sop_class_uid=sop_class,
        sop_instance_uid=sop_instance,
        transfer_syntax_uid=ts,
        dataset_offset=offset,
        dataset_length=length,
        has_file_meta=has_meta,
        data=data,
    )


# ---------------------------------------------------------------------------------------------
# Reading the header of a stored file


def read_header(
    path: str | os.PathLike[str], *, defer_size: int | None = _HEADER_DEFER_SIZE
) -> Dataset:
    """The data set of a DICOM file up to its pixel data, with its File Meta Information.

    Reading stops at the first of (7FE0,0008) Float Pixel Data, (7FE0,0009) Double Float Pixel
    Data and (7FE0,0010) Pixel Data, so an image's pixels are never read: what is read is the
    few kilobytes of the header (Patient Name, UIDs, ...).  Values longer than ``defer_size``
    bytes (e.g. an encapsulated PDF) are read from the file only when accessed (pydicom's
    deferred reading, which opens ``path`` again); ``None`` reads every value.  A Deflated
    Explicit VR Little Endian file is inflated as it is read, up to the pixel data (its values
    are never deferred).

    Raises :class:`InvalidDicomFile` if the file is not DICOM; :class:`OSError` (missing file,
    permissions) propagates unchanged.
    """
    import pydicom
    from pydicom.dataset import FileDataset
    from pydicom.filereader import read_dataset, read_file_meta_info

    file_path = Path(path)
    with open(file_path, "rb", buffering=0) as fp:
        reader = _HeadReader(fp, os.fstat(fp.fileno()).st_size)
        head = reader.get(0, 132)
        has_preamble = len(head) == 132 and head[128:132] == _PREFIX
        values, offset = _parse_meta_group(reader, 132 if has_preamble else 0, file_path)
    try:
        if _ui(values.get(0x00020010)) != DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN:
            return pydicom.dcmread(
                file_path, stop_before_pixels=True, defer_size=defer_size, force=True
            )
        # pydicom would inflate the whole data set, pixel data included: inflate as we read
        meta = read_file_meta_info(file_path)
        with open(file_path, "rb") as raw:
            raw.seek(offset)
            data = read_dataset(
                cast(BinaryIO, _InflatingReader(raw)),
                is_implicit_VR=False,
                is_little_endian=True,
                stop_when=lambda tag, _vr, _length: tag in _PIXEL_DATA_TAGS,
            )
        preamble = head[:128] if has_preamble else None
        return FileDataset(file_path, data, preamble, meta, False, True)
    except (OSError, InvalidDicomFile):
        raise
    except Exception as exc:  # pydicom raises many kinds of errors on garbage input
        raise InvalidDicomFile(f"{file_path}: cannot read the data set ({exc})") from exc


def _read_sort_keys(
    path: Path, offset: int, transfer_syntax_uid: str
) -> tuple[str | None, str | None, str | None]:
    """(Patient ID, Study Instance UID, Series Instance UID) from the data set at ``offset``.

    Reading stops after (0020,000E): only the head of the data set is read, other values on
    the way are skipped (not read) and deflated data is inflated only that far.  A data set
    that cannot be parsed that far gives ``None`` for what was not found.  The values are the
    raw bytes decoded as Latin-1 without padding (:func:`folder_name` keeps ASCII only).
    """
    from pydicom.filereader import read_dataset

    try:
        implicit, little, deflated = _encoding_of(transfer_syntax_uid)
    except UnsupportedTransferSyntax:
        implicit, little, deflated = False, True, False  # private syntaxes: explicit VR LE
    wanted = (_PATIENT_ID_TAG, _STUDY_INSTANCE_UID_TAG, _SERIES_INSTANCE_UID_TAG)
    with open(path, "rb") as raw:
        raw.seek(offset)
        fp = cast(BinaryIO, _InflatingReader(raw)) if deflated else raw
        try:
            ds = read_dataset(
                fp,
                implicit,
                little,
                stop_when=lambda tag, _vr, _length: tag > _SERIES_INSTANCE_UID_TAG,
                specific_tags=list(wanted),
            )
        except Exception:  # malformed data set: store it all the same, under placeholders
            return None, None, None
    found: list[str | None] = []
    for tag in wanted:
        elem = ds.get_item(tag) if tag in ds else None
        value = getattr(elem, "value", None)
        if isinstance(value, bytes):
            found.append(value.decode("latin-1").strip(" \x00") or None)
        else:
            found.append(None)
    patient, study, series = found
    return patient, study, series


class _InflatingReader(io.RawIOBase):
    """A read-only file object over a raw deflate stream, inflated as it is read (for pydicom's
    data set reader): :meth:`tell`, :meth:`read`, and :meth:`seek` forward (skipping) or back by
    at most :data:`_INFLATE_BACK` bytes.  Memory stays bounded whatever the stream holds."""

    def __init__(self, raw: BinaryIO) -> None:
        super().__init__()
        self._raw = raw
        self._inflater = zlib.decompressobj(-zlib.MAX_WBITS)
        self._buf = bytearray()  # inflated bytes, self._buf[0] is at position self._start
        self._start = 0
        self._pos = 0
        self._eof = False

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_SET:
            target = offset
        elif whence == io.SEEK_CUR:
            target = self._pos + offset
        else:
            raise OSError("an inflated stream cannot seek from its end")
        if target < self._start:
            raise OSError("an inflated stream cannot seek that far back")
        self._pos = target
        return target

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        n = len(buffer)
        self._fill(self._pos + n)
        rel = self._pos - self._start
        chunk = self._buf[rel : rel + n]
        buffer[: len(chunk)] = chunk
        self._pos += len(chunk)
        return len(chunk)

    def _fill(self, end: int) -> None:
        """Inflate until the bytes before ``end`` are buffered or the stream ends; bytes more
        than :data:`_INFLATE_BACK` behind the position are dropped on the way."""
        while self._start + len(self._buf) < end and not self._eof:
            data = self._inflater.unconsumed_tail or self._raw.read(1 << 16)
            if not data:
                self._buf += self._inflater.flush()
                self._eof = True
            else:
                self._buf += self._inflater.decompress(data, 1 << 20)
                self._eof = self._inflater.eof
            keep_from = min(self._pos - _INFLATE_BACK, self._start + len(self._buf))
            if keep_from - self._start > _INFLATE_BACK:
                del self._buf[: keep_from - self._start]
                self._start = keep_from


#: how far back an :class:`_InflatingReader` can seek (pydicom steps back a few bytes at most)
_INFLATE_BACK = 1 << 16


# ---------------------------------------------------------------------------------------------
# Encoding, decoding, transcoding (pydicom; not a hot path)


def _encoding_of(transfer_syntax_uid: str) -> tuple[bool, bool, bool]:
    """(implicit VR, little endian, deflated) for a transfer syntax pydicom knows."""
    if transfer_syntax_uid in _NATIVE_ENCODING:
        implicit, little = _NATIVE_ENCODING[transfer_syntax_uid]
        return implicit, little, transfer_syntax_uid == DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN
    from pydicom.uid import UID

    uid = UID(transfer_syntax_uid)
    if not uid.is_transfer_syntax or uid.is_private:
        raise UnsupportedTransferSyntax(f"unknown transfer syntax {transfer_syntax_uid!r}")
    # Every other standard syntax is encapsulated Explicit VR Little Endian (PS3.5 A.4),
    # or deflated on top of that (e.g. JPIP Referenced Deflate).
    return bool(uid.is_implicit_VR), bool(uid.is_little_endian), bool(uid.is_deflated)


def _byteswap(value: bytes, width: int) -> bytes:
    whole = len(value) - len(value) % width
    words = array.array(_ARRAY_CODE_FOR_WIDTH[width])
    words.frombytes(value[:whole])
    words.byteswap()
    return words.tobytes() + value[whole:]


def _swap_binary_values(ds: Dataset, *, top_level: bool = True) -> None:
    """Swap the byte order of OW/OF/OL/OD/OV values in place, recursing into sequences.

    OW is a string of 16-bit words (PS3.5 6.2), except for native Pixel Data with Bits Allocated
    32 or 64: its cells are swapped as 32/64-bit values.  PS3.5 is not explicit about that case;
    this follows pydicom (whose big endian samples are encoded that way, so its pixel decoding
    agrees), whereas DCMTK swaps such Pixel Data as 16-bit words.  UN values (unknown private
    elements) cannot be interpreted and are left as they are.
    """
    for elem in ds:  # iterating converts raw elements to DataElements in place
        if elem.VR == "SQ":
            for item in elem.value or ():
                _swap_binary_values(item, top_level=False)
        elif elem.VR in _SWAP_WIDTH and isinstance(elem.value, (bytes, bytearray)):
            width = _SWAP_WIDTH[elem.VR]
            if top_level and elem.tag == 0x7FE00010 and elem.VR == "OW":
                bits = ds.get("BitsAllocated")
                if bits in (32, 64):
                    width = bits // 8
            elem.value = _byteswap(bytes(elem.value), width)


def encode_dataset(ds: Dataset, transfer_syntax_uid: str) -> bytes:
    """Encode ``ds`` (without any file meta) as the data set of a C-STORE in a transfer syntax.

    * Implicit VR LE, Explicit VR LE/BE: pydicom's :func:`~pydicom.filewriter.write_dataset`
      with the encoding set on the buffer.  When the byte order differs from the one ``ds`` was
      decoded in (a fresh Dataset counts as little endian), a copy is made and its OW/OF/OL/OD/OV
      values are byte-swapped, which pydicom does not do itself; ``ds`` is not changed.
    * Deflated Explicit VR LE (PS3.5 A.5): Explicit VR LE then raw deflate, padded with one NUL
      byte to an even length as pydicom and DCMTK do.
    * Encapsulated (compressed) syntaxes: Explicit VR LE with Pixel Data of undefined length; the
      pixel data must already be encapsulated in that syntax (not checked).

    Raises :class:`UnsupportedTransferSyntax` for an unknown or private transfer syntax.
    """
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import correct_ambiguous_vr, write_dataset

    implicit, little, deflated = _encoding_of(transfer_syntax_uid)
    source_little = ds.original_encoding[1]
    if source_little is None:
        source_little = True
    is_encapsulated = transfer_syntax_uid not in _NATIVE_ENCODING
    pixel_flag_wrong = "PixelData" in ds and ds["PixelData"].is_undefined_length != is_encapsulated
    if source_little != little or pixel_flag_wrong:
        # Work on a copy so that the caller's Dataset is left alone (deepcopy shares the
        # immutable ``bytes`` values, so large pixel data is not duplicated).
        ds = copy.deepcopy(ds)
    if source_little != little:
        # Resolve ambiguous VRs (OB or OW, US or SS, ...) while raw values are still read in
        # their original byte order, then swap the word-valued binary elements.
        correct_ambiguous_vr(ds, source_little)
        _swap_binary_values(ds)
    if pixel_flag_wrong:
        # PS3.5 A.4: encapsulated Pixel Data has undefined length, native Pixel Data does not.
        ds["PixelData"].is_undefined_length = is_encapsulated
    if is_encapsulated and "PixelData" in ds:
        value = ds["PixelData"].value
        # Encapsulated Pixel Data starts with the Basic Offset Table item (FFFE,E000), PS3.5 A.4.
        if not isinstance(value, (bytes, bytearray)) or bytes(value[:4]) != b"\xfe\xff\x00\xe0":
            name = _ts_name(transfer_syntax_uid)
            raise TranscodeError(
                f"Pixel Data is not encapsulated, cannot encode it as {name} "
                "(compression is not supported)"
            )
    buffer = DicomBytesIO()
    buffer.is_implicit_VR = implicit
    buffer.is_little_endian = little
    write_dataset(buffer, ds)
    data = buffer.getvalue()
    if deflated:
        compressor = zlib.compressobj(wbits=-zlib.MAX_WBITS)
        data = compressor.compress(data) + compressor.flush()
        if len(data) % 2:
            data += b"\x00"
    return data


#: values longer than this stay in the spool file of :func:`decode_spooled_dataset` until read
SPOOL_DEFER_SIZE = 64 * 1024


def decode_spooled_dataset(
    spool: BinaryIO, transfer_syntax_uid: str, directory: str | None = None
) -> Dataset:
    """Decode data set bytes written to the open binary file ``spool`` (see
    :meth:`asyncdicom.services.ServiceRequest.dataset`): element headers are parsed now, values
    longer than :data:`SPOOL_DEFER_SIZE` are read from ``spool`` when accessed, so the data
    set keeps the file (and the file its bytes) as long as it lives.  A deflated data set is
    inflated into a second temporary file (in ``directory``) first, in pieces.  Raises
    :class:`InvalidDicomFile` or :class:`UnsupportedTransferSyntax` as :func:`decode_dataset`
    does; ``spool`` is closed when it raises."""
    import tempfile

    from pydicom.dataset import FileMetaDataset
    from pydicom.filereader import read_dataset
    from pydicom.uid import UID

    try:
        implicit, little, deflated = _encoding_of(transfer_syntax_uid)
        spool.seek(0)
        if deflated:
            # not a with-block: on success the file is handed to the data set
            inflated = tempfile.TemporaryFile(dir=directory)  # noqa: SIM115
            inflater = zlib.decompressobj(wbits=-zlib.MAX_WBITS)
            try:
                while piece := spool.read(1 << 20):
                    inflated.write(inflater.decompress(piece))
                    if inflater.eof:
                        break  # trailing padding after the deflate stream
                inflated.write(inflater.flush())
            except zlib.error as exc:
                inflated.close()
                raise InvalidDicomFile(f"deflated data set cannot be inflated: {exc}") from exc
            spool.close()
            spool = cast(BinaryIO, inflated)
            spool.seek(0)
        try:
            ds = read_dataset(
                spool, is_implicit_VR=implicit, is_little_endian=little, defer_size=SPOOL_DEFER_SIZE
            )
        except Exception as exc:  # pydicom raises many kinds of errors on malformed input
            raise InvalidDicomFile(f"data set cannot be decoded: {exc}") from exc
    except BaseException:
        spool.close()
        raise
    # where pydicom reads deferred values from: the open file (not a name: it has none)
    ds.filename = None
    ds.buffer = spool
    ds.fileobj_type = type(spool)
    ds.timestamp = None
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = UID(transfer_syntax_uid)
    return ds


def decode_dataset(data: bytes | bytearray | memoryview, transfer_syntax_uid: str) -> Dataset:
    """Decode data set bytes received (or read) in ``transfer_syntax_uid`` into a Dataset.

    Deflated syntaxes are inflated first (trailing padding after the deflate stream is ignored).
    The result carries ``file_meta.TransferSyntaxUID`` so that pydicom's pixel handling knows
    the encoding.  Reading is pydicom's lazy reading: element headers are parsed here, values
    when accessed.  Raises :class:`InvalidDicomFile` if the bytes cannot be parsed and
    :class:`UnsupportedTransferSyntax` for an unknown transfer syntax.
    """
    from pydicom.dataset import FileMetaDataset
    from pydicom.filebase import DicomBytesIO
    from pydicom.filereader import read_dataset
    from pydicom.uid import UID

    implicit, little, deflated = _encoding_of(transfer_syntax_uid)
    raw = bytes(data)
    if deflated:
        try:
            inflater = zlib.decompressobj(wbits=-zlib.MAX_WBITS)
            raw = inflater.decompress(raw) + inflater.flush()
        except zlib.error as exc:
            raise InvalidDicomFile(f"deflated data set cannot be inflated: {exc}") from exc
    try:
        ds = read_dataset(
            cast(BinaryIO, DicomBytesIO(raw)), is_implicit_VR=implicit, is_little_endian=little
        )
    except Exception as exc:  # pydicom raises many kinds of errors on malformed input
        raise InvalidDicomFile(f"data set cannot be decoded: {exc}") from exc
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = UID(transfer_syntax_uid)
    return ds


def transcode(source: Part10Source, target_ts: str) -> bytes:
    """Return the data set of ``source`` encoded in ``target_ts``.

    Same syntax: the bytes as stored, not decoded.  Otherwise both syntaxes must be native
    (:data:`NATIVE_TRANSFER_SYNTAXES`: Implicit VR LE, Explicit VR LE, Deflated Explicit VR LE,
    Explicit VR BE); the data set is decoded with pydicom and re-encoded (whole data set in
    memory).  Anything involving an encapsulated (compressed) syntax raises
    :class:`TranscodeError`: that needs a codec, which this library does not do.

    Limitation: converting between byte orders cannot fix UN elements (unknown private
    elements), which keep their original byte order.
    """
    source_ts = source.transfer_syntax_uid
    if source_ts == target_ts:
        return source.read_bytes()
    for ts, role in ((source_ts, "source"), (target_ts, "target")):
        if ts not in NATIVE_TRANSFER_SYNTAXES:
            raise TranscodeError(
                f"cannot transcode {source.path.name} from {_ts_name(source_ts)} to "
                f"{_ts_name(target_ts)}: the {role} syntax {_ts_name(ts)} is not an "
                "uncompressed syntax (compression and decompression are not supported)"
            )
    return encode_dataset(decode_dataset(source.read_bytes(), source_ts), target_ts)


def _ts_name(transfer_syntax_uid: str) -> str:
    from pydicom.uid import UID

    name = UID(transfer_syntax_uid).name
    return f"{name} ({transfer_syntax_uid})" if name != transfer_syntax_uid else repr(name)
