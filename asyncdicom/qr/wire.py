"""C-FIND response identifiers encoded straight to the wire, without a pydicom data set per match.

:meth:`~asyncdicom.qr.matching.Query.response` builds a pydicom Dataset per match, which is
then encoded in the presentation context's transfer syntax: about 0.2 ms per match, most of
the cost of a query returning many entities.  :class:`ResponseEncoder` makes the same bytes
from the record's elements as they are already encoded (the index keeps each record as an
Explicit VR Little Endian data set; a worklist item is encoded once and kept): it picks the
requested elements in tag order, writes their headers for Implicit or Explicit VR Little
Endian, and copies the values.

The result is byte for byte what pydicom writes for the Dataset of ``Query.response`` (tests
compare the two).  Where copying could differ from pydicom's decode-and-encode, the element
is not copied and :class:`SlowPath` is raised, for the caller to build that one response the
pydicom way:

* a value that is not in the form pydicom would write it back in: padding beyond the one byte
  that makes an odd length even, spaces around a value or around a backslash, NUL bytes (a UI
  keeps its one trailing NUL), characters outside ASCII (pydicom decodes and encodes them with
  the character sets in force, which may change the escape sequences of ISO 2022);
* an empty stored value whose VR differs from the request's (pydicom answers it with the
  request's VR);
* a sequence key with item keys (the matching items, each with the requested item keys) when
  the record's sequence items are not given as data sets to match against;
* a short-VR value longer than 65 535 bytes, or a record that cannot be parsed.

Other transfer syntaxes (Explicit VR Big Endian, Deflated) are not handled here:
:data:`WIRE_SYNTAXES` lists those that are.
"""

from __future__ import annotations

import struct
from bisect import bisect_left
from collections.abc import Container, Mapping
from dataclasses import dataclass
from typing import NamedTuple

from pydicom.dataset import Dataset

from ..errors import SlowPath
from .matching import _NOT_MATCHED, QUERY_RETRIEVE_LEVEL, Query, _Key, _match_item, _vr_of

__all__ = [
    "EXPLICIT_VR_LITTLE_ENDIAN",
    "IMPLICIT_VR_LITTLE_ENDIAN",
    "WIRE_SYNTAXES",
    "Element",
    "Item",
    "ResponseEncoder",
    "SlowPath",
    "parse_explicit_le",
]

IMPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2"
EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
#: the transfer syntaxes :class:`ResponseEncoder` writes
WIRE_SYNTAXES = frozenset({IMPLICIT_VR_LITTLE_ENDIAN, EXPLICIT_VR_LITTLE_ENDIAN})

SPECIFIC_CHARACTER_SET = 0x00080005

#: VRs whose Explicit VR length field is 4 bytes, after 2 reserved bytes (PS3.5 7.1.2)
_LONG = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR"})
_LONG |= {b"UT", b"UV"}
#: VRs whose values are numbers in binary: copied as they are
_BINARY = frozenset({"AT", "FD", "FL", "OB", "OD", "OF", "OL", "OV", "OW", "SL", "SS", "SV"})
_BINARY |= {"UL", "UN", "US", "UV"}
_UNDEFINED = 0xFFFFFFFF
_ITEM = 0xFFFEE000
_ITEM_END = 0xFFFEE00D
_SEQUENCE_END = 0xFFFEE0DD

_u16 = struct.Struct("<H").unpack_from
_u32 = struct.Struct("<I").unpack_from
_tag = struct.Struct("<HH").unpack_from
_head = struct.Struct("<HH2sH").unpack_from
_explicit_short = struct.Struct("<HH2sH").pack
_explicit_long = struct.Struct("<HH2s2xI").pack
_implicit = struct.Struct("<HHI").pack
_pack_u16 = struct.Struct("<H").pack
_pack_u32 = struct.Struct("<I").pack
_ITEM_UNDEFINED = struct.pack("<HHI", 0xFFFE, 0xE000, _UNDEFINED)
_ITEM_DELIMITER = struct.pack("<HHI", 0xFFFE, 0xE00D, 0)
_SEQUENCE_DELIMITER = struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)


#: a sequence item: its elements by tag, and whether it was encoded with undefined length
class Item(NamedTuple):
    elements: dict[int, Element]
    undefined: bool


#: one element as encoded: its VR and its value bytes (for SQ, its items and whether the
#: sequence was encoded with undefined length)
class Element(NamedTuple):
    vr: str
    value: bytes
    items: tuple[Item, ...] = ()
    undefined: bool = False


def parse_explicit_le(data: bytes, wanted: Container[int] | None = None) -> dict[int, Element]:
    """The elements of an Explicit VR Little Endian data set, by tag (in the order met); with
    ``wanted``, only the top-level elements whose tags it holds (the others are stepped over).

    Raises:
        SlowPath: the bytes are not a well-formed data set.
    """
    try:
        if wanted is not None:
            return _pick(data, wanted)
        elements, _end = _parse(data, 0, len(data), False)
    except (struct.error, IndexError, UnicodeDecodeError) as exc:
        raise SlowPath(f"malformed record: {exc}") from None
    return elements


def _pick(data: bytes, wanted: Container[int]) -> dict[int, Element]:
    out: dict[int, Element] = {}
    pos = 0
    end = len(data)
    while pos < end:
        group, elem, vr_bytes, length = _head(data, pos)
        tag = group << 16 | elem
        if vr_bytes in _LONG:
            length = _u32(data, pos + 8)[0]
            pos += 12
        else:
            if not (vr_bytes.isalpha() and vr_bytes.isupper()):
                raise SlowPath("not an Explicit VR data set")
            pos += 8
        if vr_bytes == b"SQ":
            if tag in wanted or length == _UNDEFINED:
                items, after = _parse_items(data, pos, end, length)
                if tag in wanted:
                    out[tag] = Element("SQ", b"", items, length == _UNDEFINED)
                pos = after
            else:
                pos += length
            continue
        if length == _UNDEFINED or pos + length > end:
            raise SlowPath("an element of undefined or impossible length")
        if tag in wanted:
            out[tag] = Element(vr_bytes.decode("ascii"), data[pos : pos + length])
        pos += length
    return out


def _parse(data: bytes, pos: int, end: int, in_item: bool) -> tuple[dict[int, Element], int]:
    """Elements from ``pos`` up to ``end``, or up to an item delimiter when ``in_item`` and
    the item has undefined length; returns them and the position after them."""
    out: dict[int, Element] = {}
    while pos < end:
        group, elem = _tag(data, pos)
        tag = group << 16 | elem
        if tag == _ITEM_END:
            if not in_item:
                raise SlowPath("an item delimiter outside an item")
            return out, pos + 8
        vr_bytes = data[pos + 4 : pos + 6]
        if vr_bytes in _LONG:
            length = _u32(data, pos + 8)[0]
            pos += 12
        else:
            if len(vr_bytes) != 2 or not vr_bytes.isalpha() or not vr_bytes.isupper():
                raise SlowPath("not an Explicit VR data set")
            length = _u16(data, pos + 6)[0]
            pos += 8
        vr = vr_bytes.decode("ascii")
        if vr == "SQ":
            items, pos = _parse_items(data, pos, end, length)
            out[tag] = Element("SQ", b"", items, length == _UNDEFINED)
            continue
        if length == _UNDEFINED or pos + length > end:
            raise SlowPath("an element of undefined or impossible length")
        out[tag] = Element(vr, data[pos : pos + length])
        pos += length
    if in_item:
        raise SlowPath("an item without its delimiter")
    return out, pos


def _parse_items(data: bytes, pos: int, end: int, length: int) -> tuple[tuple[Item, ...], int]:
    stop = end if length == _UNDEFINED else pos + length
    if stop > end:
        raise SlowPath("a sequence longer than its data set")
    items: list[Item] = []
    while pos < stop:
        group, elem = _tag(data, pos)
        tag = group << 16 | elem
        item_length = _u32(data, pos + 4)[0]
        pos += 8
        if tag == _SEQUENCE_END:
            if length != _UNDEFINED:
                raise SlowPath("a sequence delimiter in a sequence of defined length")
            return tuple(items), pos
        if tag != _ITEM:
            raise SlowPath("a sequence holds something else than items")
        if item_length == _UNDEFINED:
            elements, pos = _parse(data, pos, stop, True)
            items.append(Item(elements, True))
        else:
            if pos + item_length > stop:
                raise SlowPath("an item longer than its sequence")
            elements, _ = _parse(data, pos, pos + item_length, False)
            pos += item_length
            items.append(Item(elements, False))
    if length == _UNDEFINED:
        raise SlowPath("a sequence without its delimiter")
    return tuple(items), pos


def _value(vr: str, value: bytes) -> bytes:
    """``value`` as pydicom would write it back after reading it: padded to an even length
    (NUL for UI, space otherwise); SlowPath when pydicom would change more than that."""
    if not value:
        return value
    if vr in _BINARY:
        if len(value) % 2:
            raise SlowPath("a binary value of odd length")
        return value
    if not value.isascii():
        raise SlowPath("a value outside ASCII")
    odd = len(value) % 2
    core = value
    if vr == "UI":
        if not odd and core[-1:] == b"\0":
            core = core[:-1]
    elif not odd and core[-1:] == b" ":
        core = core[:-1]
    if (
        core[:1] == b" "
        or core[-1:] == b" "
        or b"\0" in core
        or b" \\" in core
        or b"\\ " in core
        or b"\x1b" in core
    ):
        raise SlowPath("a value with padding pydicom would remove")
    if odd or core is not value:
        return core + (b"\0" if vr == "UI" else b" ") if len(core) % 2 else core
    return value


def _header(tag: int, vr: str, length: int, explicit: bool) -> bytes:
    if not explicit:
        return _implicit(tag >> 16, tag & 0xFFFF, length)
    code = vr.encode("ascii")
    if code in _LONG:
        return _explicit_long(tag >> 16, tag & 0xFFFF, code, length)
    if length > 0xFFFF:
        raise SlowPath("a value too long for its VR's length field")
    return _explicit_short(tag >> 16, tag & 0xFFFF, code, length)


def _encode_element(tag: int, elem: Element, explicit: bool) -> bytes:
    if elem.vr == "SQ":
        bodies = [_encode_item(item, explicit) for item in elem.items]
        return _encode_sequence(tag, bodies, elem.undefined, explicit)
    value = _value(elem.vr, elem.value)
    return _header(tag, elem.vr, len(value), explicit) + value


def _encode_item(item: Item, explicit: bool) -> tuple[bytes, bool]:
    body = b"".join(
        _encode_element(tag, elem, explicit) for tag, elem in sorted(item.elements.items())
    )
    return body, item.undefined


def _encode_sequence(
    tag: int, items: list[tuple[bytes, bool]], undefined: bool, explicit: bool
) -> bytes:
    parts: list[bytes] = []
    for body, undefined in items:
        if undefined:
            parts += (_ITEM_UNDEFINED, body, _ITEM_DELIMITER)
        else:
            parts += (_implicit(0xFFFE, 0xE000, len(body)), body)
    if undefined:
        parts.append(_SEQUENCE_DELIMITER)
        length = _UNDEFINED
    else:
        length = sum(len(p) for p in parts)
    return _header(tag, "SQ", length, explicit) + b"".join(parts)


@dataclass(frozen=True, slots=True)
class _Entry:
    """One element of the response: its tag, the key (None: not a key, only returned), the
    VR of an empty answer, and the entries of a sequence key's item keys."""

    tag: int
    key: _Key | None
    vr: str
    empty: bytes
    items: tuple[_Entry, ...] | None


class ResponseEncoder:
    """The C-FIND response identifiers of one query, encoded in ``transfer_syntax`` (one of
    :data:`WIRE_SYNTAXES`) from records given as :class:`Element` mappings.

    :meth:`encode` gives the bytes of the Dataset ``query.response(record)`` encoded in the
    transfer syntax, the same bytes pydicom writes, or raises :class:`SlowPath` (see the
    module docstring).

    Raises:
        ValueError: ``transfer_syntax`` is not one of :data:`WIRE_SYNTAXES`.
    """

    def __init__(self, query: Query, transfer_syntax: str) -> None:
        if transfer_syntax not in WIRE_SYNTAXES:
            raise ValueError(f"not a transfer syntax encoded here: {transfer_syntax!r}")
        self.query = query
        self.explicit = transfer_syntax == EXPLICIT_VR_LITTLE_ENDIAN
        keys = {key.tag: key for key in query._keys}
        self._entries = self._plan(query.identifier, keys)
        tags = [entry.tag for entry in self._entries]
        self._charset_at = bisect_left(tags, SPECIFIC_CHARACTER_SET)
        self._level_at = bisect_left(tags, QUERY_RETRIEVE_LEVEL)
        self._headers: dict[tuple[int, str], tuple[bytes, bool]] = {}
        #: the tags of the record's elements a response may take
        self.wanted = frozenset({entry.tag for entry in self._entries} | {SPECIFIC_CHARACTER_SET})
        level = query.level.encode("ascii")
        if len(level) % 2:
            level += b" "
        # Query/Retrieve Level, added to the response (PS3.4 C.4.1.2.3)
        self._level = (
            _header(QUERY_RETRIEVE_LEVEL, "CS", len(level), self.explicit) + level
            if query.level
            else None
        )
        self._request_charset: bytes | None = None
        charset = query.identifier.get(SPECIFIC_CHARACTER_SET)
        if charset is not None and charset.value:
            from ..storage.codec import encode_dataset

            ds = Dataset()
            ds.add(charset)
            self._request_charset = encode_dataset(ds, transfer_syntax)

    def _plan(self, request: Dataset, keys: Mapping[int, _Key]) -> tuple[_Entry, ...]:
        entries: list[_Entry] = []
        for elem in request:
            tag = int(elem.tag)
            if tag in _NOT_MATCHED:
                continue
            vr = _vr_of(tag, elem.VR)
            key = keys.get(tag)
            items = None
            if key is not None and key.kind == "sequence":
                item_keys = {k.tag: k for k in key.items}
                items = self._plan(elem.value[0], item_keys)
            entries.append(_Entry(tag, key, vr, _header(tag, vr, 0, self.explicit), items))
        return tuple(entries)

    def encode(
        self,
        record: Mapping[int, Element],
        dataset: Dataset | None = None,
    ) -> bytes:
        """The response identifier for a matching record: ``record`` its elements (those of
        the levels above included, and the computed ones); ``dataset``, when given, the
        same record as a Dataset, against whose sequence items a sequence key's item keys
        are matched.

        Raises:
            SlowPath: the response cannot be copied byte for byte.
        """
        parts = self._dataset(self._entries, record, dataset)
        # the elements the response adds, at their places in tag order
        if self._level is not None:
            parts.insert(self._level_at, self._level)
        charset_elem = record.get(SPECIFIC_CHARACTER_SET)
        if charset_elem is not None:
            if charset_elem.value:
                parts.insert(
                    self._charset_at,
                    _encode_element(SPECIFIC_CHARACTER_SET, charset_elem, self.explicit),
                )
        elif self._request_charset is not None:
            parts.insert(self._charset_at, self._request_charset)
        return b"".join(parts)

    def _header(self, tag: int, vr: str, length: int) -> bytes:
        known = self._headers.get((tag, vr))
        if known is None:
            code = vr.encode("ascii")
            if not self.explicit:
                known = (struct.pack("<HH", tag >> 16, tag & 0xFFFF), True)
            elif code in _LONG:
                known = (struct.pack("<HH2s2x", tag >> 16, tag & 0xFFFF, code), True)
            else:
                known = (struct.pack("<HH2s", tag >> 16, tag & 0xFFFF, code), False)
            self._headers[tag, vr] = known
        prefix, long = known
        if long:
            return prefix + _pack_u32(length)
        if length > 0xFFFF:
            raise SlowPath("a value too long for its VR's length field")
        return prefix + _pack_u16(length)

    def _dataset(
        self,
        entries: tuple[_Entry, ...],
        record: Mapping[int, Element],
        dataset: Dataset | None,
    ) -> list[bytes]:
        out: list[bytes] = []
        for entry in entries:
            tag = entry.tag
            stored = record.get(tag)
            if stored is None:
                out.append(entry.empty)
                continue
            vr = stored.vr
            if vr == "SQ":
                if entry.items is not None:
                    out.append(self._sequence(entry, stored, dataset))
                else:
                    out.append(_encode_element(tag, stored, self.explicit))
            elif stored.value:
                value = _value(vr, stored.value)
                out.append(self._header(tag, vr, len(value)) + value)  # one part per element
            elif vr == entry.vr:
                out.append(entry.empty)
            else:
                raise SlowPath("an empty value of another VR than the request's")
        return out

    def _sequence(self, entry: _Entry, stored: Element, dataset: Dataset | None) -> bytes:
        """A sequence key with item keys: the matching items, each with the item keys."""
        held = dataset.get(entry.tag) if dataset is not None else None
        if held is None or held.VR != "SQ" or len(held.value or ()) != len(stored.items):
            raise SlowPath("a sequence key with item keys and no data set to match")
        assert entry.key is not None and entry.items is not None
        item_keys = entry.key.items
        bodies: list[tuple[bytes, bool]] = []
        for item, item_ds in zip(stored.items, held.value, strict=True):
            if _match_item(item_keys, item_ds):
                parts = self._dataset(entry.items, item.elements, item_ds)
                bodies.append((b"".join(parts), False))
        # a new sequence of new items: pydicom writes both with defined lengths
        return _encode_sequence(entry.tag, bodies, False, self.explicit)
