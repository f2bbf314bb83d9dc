"""DICOM Part 10 files for C-STORE: streaming writer (SCP side) and streaming reader (SCU side).

Everything here is synchronous and does plain, short file operations so that the async driver can
run each call in a worker thread (``anyio.to_thread.run_sync``) without tying it up for long.

Receiving (PS3.10 section 7):
    :class:`Part10Writer` writes one received SOP instance to ``folder`` as a Part 10 file: a
    128-byte preamble, ``DICM``, the File Meta Information (group 0002, always Explicit VR Little
    Endian, PS3.10 section 7.1) and then the data set bytes exactly as received in the negotiated
    transfer syntax.  The data set is appended chunk by chunk and never held in memory.  The file
    is written under a temporary name in the same folder and renamed atomically on
    :meth:`Part10Writer.commit`, so a reader never sees a half-written instance.

Sending:
    :func:`read_part10_for_send` parses only the File Meta Information of a file and returns a
    :class:`Part10Source` whose :meth:`~Part10Source.iter_chunks` streams the data set bytes from
    disk without decoding them.  :func:`transcode`, :func:`encode_dataset` and
    :func:`decode_dataset` convert between the uncompressed transfer syntaxes with pydicom (not a
    hot path).

File naming (:func:`safe_filename`): the SOP Instance UID comes from the peer and is untrusted.
A well-formed UID is used as the file name (``<uid>.dcm``); anything else is replaced by a name
derived from a SHA-256 hash of the raw value, so no peer-supplied value can name a path outside
the storage folder.
"""

from __future__ import annotations

import array
import contextlib
import copy
import hashlib
import os
import re
import struct
import uuid
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, BinaryIO, cast

# pydicom (and numpy, which it pulls in) is imported where it is used: writing received files
# and sending Part 10 files never need it, and importing it costs ~0.1 s of every CLI start.
if TYPE_CHECKING:
    from pydicom.dataset import Dataset

__all__ = [
    "DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN",
    "EXPLICIT_VR_BIG_ENDIAN",
    "EXPLICIT_VR_LITTLE_ENDIAN",
    "IMPLICIT_VR_LITTLE_ENDIAN",
    "NATIVE_TRANSFER_SYNTAXES",
    "InvalidDicomFile",
    "Part10Source",
    "Part10Writer",
    "StorageError",
    "TranscodeError",
    "UnsupportedTransferSyntax",
    "decode_dataset",
    "encode_dataset",
    "encode_file_meta",
    "is_valid_uid",
    "read_part10_for_send",
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
_META_VERSION = b"\x00\x01"  # (0002,0001) File Meta Information Version, PS3.10 Table 7.1-1

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
_SOP_CLASS_UID_TAG = 0x00080016
_SOP_INSTANCE_UID_TAG = 0x00080018


class StorageError(Exception):
    """Base class of the errors raised by :mod:`asyncdicom.storage`."""


class InvalidDicomFile(StorageError):
    """The file (or byte string) is not a DICOM data set we can read."""


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
    # the bytes against pydicom's encoding (_encode_file_meta_pydicom).  UIDs are written as
    # received: a peer's non-conformant UID is recorded as sent.
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


def _encode_file_meta_pydicom(
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
        (0x00020001, "OB", _META_VERSION),
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


class Part10Writer:
    """Write one received SOP instance to ``folder`` as a DICOM Part 10 file, streaming.

    Parameters
    ----------
    folder:
        Existing directory; the file ends up directly inside it (never elsewhere, whatever the
        UIDs contain).
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

    Life cycle: the constructor creates ``folder/.<random hex>.part`` with ``O_CREAT | O_EXCL``
    (it cannot clobber or follow anything) and writes preamble, ``DICM`` and the meta group.
    :meth:`write` appends data set bytes.  :meth:`commit` flushes, closes and renames the
    temporary file to the final name with :func:`os.replace`, atomic because both are in the
    same folder; :meth:`discard` removes the temporary file.  Used as a context manager, leaving
    the block without :meth:`commit` (normally or by an exception) discards.  A writer dropped
    without either (process killed) leaves its ``.*.part`` file behind; those names never clash
    with stored files and can be removed when the server starts.

    An existing file with the final name is replaced atomically: a SOP instance that is sent
    again replaces the previous copy.  If the final name is a symlink, the link itself is
    replaced, its target is never written.  There is no ``fsync``: after a power loss a recent
    file may be missing or empty, but a crash of the process never leaves a partial file under a
    final name.  File permissions are ``0o666`` minus the process umask.
    """

    __slots__ = ("_bytes_written", "_file", "_final_path", "_state", "_temp_path")

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
    ) -> None:
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
        self._final_path = target_path(folder, safe_filename(sop_instance_uid))
        self._temp_path = target_path(self._final_path.parent, f".{uuid.uuid4().hex}{_TEMP_SUFFIX}")
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
        fd = os.open(self._temp_path, flags, 0o666)
        self._state = "open"
        self._bytes_written = 0
        try:
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
        """The final path the instance gets on :meth:`commit`."""
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

    def commit(self) -> Path:
        """Flush, close and atomically move the file to its final name, which is returned."""
        if self._state != "open":
            raise ValueError(f"Part10Writer is {self._state}")
        try:
            self._file.close()  # flushes
            os.replace(self._temp_path, self._final_path)
        except BaseException:
            self._state = "discarded"
            self._remove_temp()
            raise
        self._state = "committed"
        return self._final_path

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
        return f"<Part10Writer {self._final_path.name} {self._state} {self._bytes_written} bytes>"


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
