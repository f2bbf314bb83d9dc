"""The File Meta Information of a Part 10 file (PS3.10 section 7.1): encoding it for the
writer, and walking it (without pydicom) for the reader and the header reader."""

from __future__ import annotations

import struct
from pathlib import Path
from typing import BinaryIO

from ..errors import InvalidDicomFile
from . import tags
from .names import is_valid_uid

__all__ = ["encode_file_meta"]

#: the 128-byte preamble written before the ``DICM`` prefix (PS3.10 7.1)
PREAMBLE = b"\x00" * 128
#: the prefix after the preamble
PREFIX = b"DICM"


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

    Raises:
        ValueError: a value cannot be encoded (a UID not ASCII or too long, an
            implementation class UID that is not a UID, a version name or AE title
            that is empty, too long or not printable ASCII).
        TypeError: a UID is not a ``str``.
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


class HeadReader:
    """Random access to the start of a file through one in-memory window.

    The header of a Part 10 file (preamble, meta group, head of the data set) is normally a few
    hundred bytes: one ``read`` of :data:`HEAD_WINDOW` bytes covers it, where walking it with
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
            self._buf = self._fp.read(max(n, HEAD_WINDOW))
            self._start = pos
            rel = 0
        return self._buf[rel : rel + n]


#: bytes read at once from the start of a file being located for sending
HEAD_WINDOW = 16384


def parse_meta_group(reader: HeadReader, start: int, path: Path) -> tuple[dict[int, bytes], int]:
    """Walk the group 0002 elements starting at ``start``.

    Returns the values of the elements we need and the offset of the first element after the
    group.  The meta group is Explicit VR Little Endian (PS3.10 7.1); files whose meta group was
    written in Implicit VR (seen in the wild) are accepted too.  Values we do not need are
    skipped (checked against the file size only), so large private meta elements cost nothing.
    """
    wanted = {
        tags.MEDIA_STORAGE_SOP_CLASS_UID,
        tags.MEDIA_STORAGE_SOP_INSTANCE_UID,
        tags.TRANSFER_SYNTAX_UID,
    }
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
        elif vr in tags.LONG_LENGTH_VRS:
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


def ui_value(raw: bytes | None) -> str | None:
    """Decode a UI value: ASCII, with the trailing NUL (and tolerated space) padding removed."""
    if raw is None:
        return None
    text = raw.decode("latin-1").rstrip("\x00 ")
    return text or None
