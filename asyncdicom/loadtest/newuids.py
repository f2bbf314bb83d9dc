"""Fresh Study/Series/SOP Instance UIDs in an encoded data set, without re-encoding it.

A load test that stores the same files again and again makes a PACS see duplicates (it may
refuse them, or overwrite and do less work).  ``--new-uids`` gives every stored instance new
Study Instance UID (0020,000D), Series Instance UID (0020,000E) and SOP Instance UID
(0008,0018).  Decoding and re-encoding the whole data set with pydicom for every operation
would cost more than sending it, so :func:`locate_uids` walks the top-level elements of the
encoded bytes once (up to (0020,000E), skipping nested sequences), and :func:`patch_uids` then
builds each copy from slices of the original bytes and the three new values: the pixel data and
every other element are copied as they are.  Group Length elements (gggg,0000), retired but
sometimes present, are corrected.

Little and big endian, explicit and implicit VR are supported; a deflated data set is not (it
would have to be inflated and deflated again) and raises :class:`UIDPatchError`.
"""

from __future__ import annotations

import struct
import uuid
from dataclasses import dataclass

from ..errors import UIDPatchError
from ..protocol import uids
from ..storage.tags import LONG_LENGTH_VRS

__all__ = [
    "SERIES_INSTANCE_UID",
    "SOP_INSTANCE_UID",
    "STUDY_INSTANCE_UID",
    "UIDLocations",
    "UIDPatchError",
    "UIDSource",
    "locate_uids",
    "patch_uids",
]

SOP_INSTANCE_UID = 0x00080018
STUDY_INSTANCE_UID = 0x0020000D
SERIES_INSTANCE_UID = 0x0020000E
_TARGETS = (SOP_INSTANCE_UID, STUDY_INSTANCE_UID, SERIES_INSTANCE_UID)

_ITEM = 0xFFFEE000
_ITEM_END = 0xFFFEE00D
_SEQUENCE_END = 0xFFFEE0DD
_UNDEFINED = 0xFFFFFFFF
_LONG_VRS = LONG_LENGTH_VRS


@dataclass(frozen=True, slots=True)
class _Element:
    """One top-level element: where its header starts, its value, its header's length."""

    tag: int
    start: int
    value_start: int
    length: int


@dataclass(frozen=True, slots=True)
class UIDLocations:
    """Where the three UIDs (and the Group Lengths of their groups) are in one data set.

    ``found`` maps each UID tag present to its element; ``insert_at`` gives, for a UID tag
    absent from the data set, the offset where its element goes (before the first top-level
    element with a greater tag).  ``values`` holds the original UIDs (``""`` when absent).
    """

    transfer_syntax_uid: str
    found: dict[int, _Element]
    insert_at: dict[int, int]
    group_lengths: dict[int, _Element]
    values: dict[int, str]


def _encoding(transfer_syntax_uid: str) -> tuple[bool, str]:
    """(implicit VR, struct byte order) of a transfer syntax whose bytes can be patched."""
    if transfer_syntax_uid == uids.IMPLICIT_VR_LITTLE_ENDIAN:
        return True, "<"
    if transfer_syntax_uid == uids.EXPLICIT_VR_BIG_ENDIAN:
        return False, ">"
    if transfer_syntax_uid == uids.DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN:
        raise UIDPatchError(
            "--new-uids cannot patch a deflated data set (it would have to be re-compressed)"
        )
    return False, "<"  # explicit VR little endian, and every encapsulated (compressed) syntax


def _header(data: bytes, pos: int, implicit: bool, order: str) -> tuple[int, int, int]:
    """(tag, value length, header length) of the element at ``pos``."""
    if pos + 8 > len(data):
        raise UIDPatchError(f"data set truncated in an element header at offset {pos}")
    group, element = struct.unpack_from(order + "HH", data, pos)
    tag = (group << 16) | element
    if group == 0xFFFE or implicit:
        return tag, struct.unpack_from(order + "I", data, pos + 4)[0], 8
    vr = data[pos + 4 : pos + 6]
    if vr in _LONG_VRS:
        if pos + 12 > len(data):
            raise UIDPatchError(f"data set truncated in an element header at offset {pos}")
        return tag, struct.unpack_from(order + "I", data, pos + 8)[0], 12
    return tag, struct.unpack_from(order + "H", data, pos + 6)[0], 8


def _skip_undefined(data: bytes, pos: int, implicit: bool, order: str) -> int:
    """The offset after a value of undefined length starting at ``pos`` (a sequence's items
    up to its Sequence Delimitation Item)."""
    while True:
        tag, length, size = _header(data, pos, True, order)
        pos += size
        if tag == _SEQUENCE_END:
            return pos
        if tag != _ITEM:
            raise UIDPatchError(f"unexpected element ({tag:08X}) in a sequence at offset {pos}")
        pos = _skip_item(data, pos, implicit, order) if length == _UNDEFINED else pos + length


def _skip_item(data: bytes, pos: int, implicit: bool, order: str) -> int:
    """The offset after an item of undefined length whose data set starts at ``pos``."""
    while True:
        tag, length, size = _header(data, pos, implicit, order)
        if tag == _ITEM_END:
            return pos + size
        pos += size
        if length == _UNDEFINED:
            # an SQ, or UN of undefined length, whose content is implicit VR (PS3.5 6.2.2)
            pos = _skip_undefined(data, pos, implicit or data[pos - 8 : pos - 6] == b"UN", order)
        else:
            pos += length


def locate_uids(data: bytes, transfer_syntax_uid: str) -> UIDLocations:
    """Find the SOP, Study and Series Instance UIDs in an encoded data set (see the module
    docstring).  Raises :class:`UIDPatchError` for a deflated or malformed data set or one
    without a SOP Instance UID."""
    implicit, order = _encoding(transfer_syntax_uid)
    found: dict[int, _Element] = {}
    insert_at: dict[int, int] = {}
    group_lengths: dict[int, _Element] = {}
    pos = 0
    while pos < len(data):
        tag, length, size = _header(data, pos, implicit, order)
        for target in _TARGETS:
            if target not in found and target not in insert_at and tag > target:
                insert_at[target] = pos
        if tag > SERIES_INSTANCE_UID:
            break
        element = _Element(tag, pos, pos + size, length)
        if tag in _TARGETS:
            found[tag] = element
        elif tag & 0xFFFF == 0 and tag >> 16 in (0x0008, 0x0020) and length == 4:
            group_lengths[tag >> 16] = element
        pos += size
        if length == _UNDEFINED:
            vr_un = not implicit and data[pos - 8 : pos - 6] == b"UN"
            pos = _skip_undefined(data, pos, implicit or vr_un, order)
        else:
            pos += length
        if pos > len(data):
            raise UIDPatchError(f"data set truncated in element ({tag:08X})")
    for target in _TARGETS:
        if target not in found:
            insert_at.setdefault(target, pos)
    if SOP_INSTANCE_UID not in found:
        raise UIDPatchError("the data set has no SOP Instance UID (0008,0018)")
    values = {
        tag: data[e.value_start : e.value_start + e.length].decode("ascii", "replace").rstrip("\0 ")
        for tag, e in found.items()
    }
    for target in insert_at:
        values.setdefault(target, "")
    return UIDLocations(transfer_syntax_uid, found, insert_at, group_lengths, values)


def _ui_value(uid: str) -> bytes:
    raw = uid.encode("ascii")
    return raw + b"\0" if len(raw) % 2 else raw


def patch_uids(data: bytes, where: UIDLocations, new: dict[int, str]) -> bytes:
    """A copy of ``data`` with the UIDs ``new`` ({tag: UID}, tags of
    :data:`SOP_INSTANCE_UID`, :data:`STUDY_INSTANCE_UID`, :data:`SERIES_INSTANCE_UID`) in
    place of the ones :func:`locate_uids` found (or inserted where they were missing).  Every
    other byte is copied as it is, except the Group Length of a group whose length changed."""
    implicit, order = _encoding(where.transfer_syntax_uid)
    # (offset in the original, bytes removed there, bytes put there)
    edits: list[tuple[int, int, bytes]] = []
    delta: dict[int, int] = {}
    for tag, uid in new.items():
        value = _ui_value(uid)
        head = struct.pack(order + "HH", tag >> 16, tag & 0xFFFF)
        if implicit:
            head += struct.pack(order + "I", len(value))
        else:
            head += b"UI" + struct.pack(order + "H", len(value))
        element = where.found.get(tag)
        if element is not None:
            removed = element.value_start - element.start + element.length
            edits.append((element.start, removed, head + value))
        else:
            removed = 0
            edits.append((where.insert_at[tag], 0, head + value))
        group = tag >> 16
        delta[group] = delta.get(group, 0) + len(head) + len(value) - removed
    for group, element in where.group_lengths.items():
        if delta.get(group):
            old = struct.unpack_from(order + "I", data, element.value_start)[0]
            value = struct.pack(order + "I", old + delta[group])
            edits.append((element.value_start, 4, value))
    edits.sort(key=lambda edit: (edit[0], edit[1] == 0))
    view = memoryview(data)  # slices without copies: join() copies each byte once
    parts: list[bytes | memoryview] = []
    pos = 0
    for start, removed, put in edits:
        parts.append(view[pos:start])
        parts.append(put)
        pos = start + removed
    parts.append(view[pos:])
    return b"".join(parts)


class UIDSource:
    """New UIDs for copy after copy of a set of instances: copy ``n`` of the set gets its own
    studies and series (instances that shared a study in the files share the new one), and each
    instance its own SOP Instance UID.

    The UIDs are ``2.25.<a random UUID>.<kind>.<copy>.<index>``: unique to this object (each
    process of a load test has its own), at most 64 characters up to 10**9 copies of 10**5
    studies, series or instances.
    """

    def __init__(self) -> None:
        self._root = f"2.25.{uuid.uuid4().int}"
        self._studies: dict[str, int] = {}
        self._series: dict[str, int] = {}

    def new_uids(self, where: UIDLocations, index: int, copy: int) -> dict[int, str]:
        """The new UIDs of instance ``index`` (its position in the set) in copy ``copy``."""
        study = self._studies.setdefault(where.values[STUDY_INSTANCE_UID], len(self._studies))
        series = self._series.setdefault(where.values[SERIES_INSTANCE_UID], len(self._series))
        return {
            SOP_INSTANCE_UID: f"{self._root}.3.{copy}.{index}",
            STUDY_INSTANCE_UID: f"{self._root}.1.{copy}.{study}",
            SERIES_INSTANCE_UID: f"{self._root}.2.{copy}.{series}",
        }
