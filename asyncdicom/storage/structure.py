"""Check that a received data set is whole, as it streams in, without decoding it.

A C-STORE SCP that stores data sets as received (:class:`~asyncdicom.storage.writer.Part10Writer`
never parses them) would otherwise store, and answer Success for, bytes that are not a data set
or a data set cut short inside its last element.  :class:`StructureCheck` walks the element
headers of the stream (PS3.5 section 7) as the fragments arrive: tag, VR and length of each
element; it skips the values without looking at them, so a big Pixel Data value costs one
subtraction per fragment.  Sequences and items (PS3.5 7.5) are walked into, to their
delimiters or to the end their length gives, and encapsulated pixel data (PS3.5 A.4) to its
delimiter.  In Implicit VR a sequence of defined length is known by its tag (the data
dictionary's SQ attributes); a private one is skipped like any value.

At the end (:meth:`StructureCheck.finish`) the stream must stop exactly after an element, with
every sequence and item of undefined length closed.  What is refused, each with an
:class:`~asyncdicom.errors.InvalidDataset` naming the element:

* a stream that ends inside an element header or value, or inside an open sequence or item;
* an explicit VR that is not two upper-case letters, or undefined length on a VR that cannot
  have it;
* an item, item delimiter or sequence delimiter where none can be, or another element where
  only items can be (directly in a sequence or in encapsulated pixel data);
* an element or item running past the end of the sequence or item of defined length that
  holds it;
* a deflated stream (Deflated Explicit VR Little Endian) that does not end, or does not inflate.

What is let through, as pydicom and DCMTK read it: a data set whose first element shows it
is in implicit VR although its transfer syntax is explicit (or the reverse), some senders
passing such files on unchanged (it is then walked in the encoding it has); NUL bytes after
the last element, fewer than a header's eight.

What is not checked: the values themselves, the order of the tags, and a data set cut exactly
between two elements of its top level (it looks like a shorter, complete one: only the sender
knows how long it is).

Sans-IO and synchronous: :meth:`feed` takes the bytes as received, any split.
"""

from __future__ import annotations

import struct
import zlib

from pydicom.datadict import dictionary_VR, keyword_dict

from ..errors import InvalidDataset
from ..protocol.uids import (
    DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN,
    EXPLICIT_VR_BIG_ENDIAN,
    IMPLICIT_VR_LITTLE_ENDIAN,
)
from . import tags

__all__ = ["StructureCheck"]

#: JPIP Referenced Deflate: the data set is deflated like Deflated Explicit VR Little Endian
_JPIP_REFERENCED_DEFLATE = "1.2.840.10008.1.2.4.95"
_DEFLATED = frozenset({DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN, _JPIP_REFERENCED_DEFLATE})

#: explicit VRs with a 2-byte reserved field and a 4-byte length (PS3.5 Table 7.1-1)
_LONG_VRS = tags.LONG_LENGTH_VRS
#: the other VRs of PS3.5 Table 6.2-1 (2-byte length); an unknown VR must at least be two
#: upper-case letters (it is read with a 2-byte length, as a reader of an older edition would)
_SHORT_VRS = frozenset(
    {
        b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FD", b"FL", b"IS", b"LO",
        b"LT", b"PN", b"SH", b"SL", b"SS", b"ST", b"TM", b"UI", b"UL", b"US",
    }
)  # fmt: skip
_UNDEFINED = 0xFFFFFFFF
_ITEM = 0xE000
_ITEM_END = 0xE00D
_SEQUENCE_END = 0xE0DD
_PIXEL_DATA = tags.PIXEL_DATA

# What an open container holds; each stack entry is (kind, explicit VR inside, stream offset
# of its end, or -1 for undefined length: then it ends at its delimiter).
_SEQUENCE = 0  # items
_ITEM_OPEN = 1  # elements
_FRAGMENTS = 2  # items of defined length (offset table, fragments), up to a sequence delimiter

#: the tags of the data dictionary whose VR is SQ: in Implicit VR, the sequences of defined
#: length that can be told from other values (a private one cannot: it is skipped as a value)
_SEQUENCE_TAGS = frozenset(tag for tag in keyword_dict.values() if dictionary_VR(tag) == "SQ")

#: SOP Class UID and SOP Instance UID: their values at the top level are kept (sop_uids)
_SOP_CLASS_TAG = tags.SOP_CLASS_UID
_SOP_INSTANCE_TAG = tags.SOP_INSTANCE_UID
#: the sorted layout's folder names (Patient ID, Study and Series Instance UIDs)
_SORT_TAGS = (tags.PATIENT_ID, tags.STUDY_INSTANCE_UID, tags.SERIES_INSTANCE_UID)
_CAPTURED_TAGS = frozenset({_SOP_CLASS_TAG, _SOP_INSTANCE_TAG, *_SORT_TAGS})
#: bytes kept of such a value at most (a UID has 64)
_CAPTURE_LIMIT = 256

_KIND_NAMES = {_SEQUENCE: "sequence", _ITEM_OPEN: "item", _FRAGMENTS: "pixel data"}
_KIND_PHRASES = {_SEQUENCE: "a sequence", _ITEM_OPEN: "an item", _FRAGMENTS: "pixel data"}

#: inflated bytes walked at a time (bounds the memory a deflate bomb can take)
_INFLATE_STEP = 1 << 20


def _tag(tag: int) -> str:
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


class StructureCheck:
    """Walk the element structure of one data set fed in fragments (see the module docstring).

    ``transfer_syntax_uid`` is the one the data set is encoded in (that of its presentation
    context); every syntax not implicit, big endian or deflated is Explicit VR Little Endian
    (PS3.5 A.4: the compressed ones too).  :meth:`feed` raises
    :class:`~asyncdicom.errors.InvalidDataset` as soon as the structure is broken,
    :meth:`finish` if the data set does not end where an element ends.  ``elements`` counts the
    elements walked (of the top level and inside sequences); :meth:`sop_uids` gives the SOP
    Class and Instance UIDs of the top level.
    """

    __slots__ = (
        "_base_explicit",
        "_capture",
        "_capture_left",
        "_captured",
        "_carry",
        "_detect_vr",
        "_explicit",
        "_fed",
        "_inflater",
        "_last_tag",
        "_long",
        "_short",
        "_skip",
        "_stack",
        "elements",
    )

    def __init__(self, transfer_syntax_uid: str) -> None:
        big = transfer_syntax_uid == EXPLICIT_VR_BIG_ENDIAN
        order = ">" if big else "<"
        self._short = struct.Struct(order + "HH2sH")  # tag, VR, 2-byte length
        self._long = struct.Struct(order + "HHL")  # tag, 4-byte length (implicit VR, items)
        self._base_explicit = transfer_syntax_uid != IMPLICIT_VR_LITTLE_ENDIAN
        self._explicit = self._base_explicit
        # the VR encoding is checked against the first element (see _detect) unless big endian
        self._detect_vr = not big
        self._inflater = (
            zlib.decompressobj(-zlib.MAX_WBITS) if transfer_syntax_uid in _DEFLATED else None
        )
        # open containers: (kind, explicit VR inside, stream offset of the end or -1 for
        # undefined length)
        self._stack: list[tuple[int, bool, int]] = []
        self._fed = 0  # stream bytes fed so far (inflated ones for a deflated data set)
        self._skip = 0  # value bytes still to come before the next header
        self._carry = b""  # the start of a header cut by the end of a fragment
        self._last_tag = -1
        self.elements = 0
        # the SOP Class and Instance UIDs of the top level, as found (see sop_uids)
        self._captured: dict[int, bytearray] = {}
        self._capture = bytearray()
        self._capture_left = 0

    # ------------------------------------------------------------------ feeding

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """The next bytes of the data set, as received."""
        inflater = self._inflater
        if inflater is None:
            self._feed(memoryview(data))
            return
        try:
            out = inflater.decompress(data, _INFLATE_STEP)
            self._feed(memoryview(out))
            while inflater.unconsumed_tail:
                out = inflater.decompress(inflater.unconsumed_tail, _INFLATE_STEP)
                self._feed(memoryview(out))
        except zlib.error as exc:
            raise InvalidDataset(f"the deflated data set does not inflate: {exc}") from None

    def _feed(self, mv: memoryview) -> None:
        start = self._fed  # stream offset of mv[0]
        size = len(mv)
        self._fed = start + size
        skip = self._skip
        if skip:
            if skip >= size and not self._capture_left:  # inside a value (pixel data, say)
                self._skip = skip - size
                return
            skipped = self._skip_value(mv)
            if skipped == len(mv):
                return
            mv = mv[skipped:]
            start += skipped
        carry = self._carry
        if carry:
            # finish the cut header from the first bytes of this fragment
            joined = carry + bytes(mv[:16])
            self._carry = b""
            used = self._walk(memoryview(joined), start - len(carry))
            if used < len(carry):  # still not one whole header: mv was shorter than 16
                self._carry = joined[used:]
                return
            if self._skip:  # a value runs past ``joined``: what follows it in mv is skipped
                mv = mv[16:]
                start += 16
                skipped = self._skip_value(mv)
                if skipped == len(mv):
                    return
                mv = mv[skipped:]
                start += skipped
            else:
                mv = mv[used - len(carry) :]
                start += used - len(carry)
        used = self._walk(mv, start)
        if used < len(mv) and not self._skip:
            self._carry = bytes(mv[used:])

    def _skip_value(self, mv: memoryview) -> int:
        """Skip what ``mv`` holds of the value in progress (collecting it if it is a UID
        being captured); return how many bytes that was."""
        taken = min(self._skip, len(mv))
        self._skip -= taken
        if self._capture_left:
            keep = min(self._capture_left, taken)
            self._capture += mv[:keep]
            self._capture_left -= keep
        return taken

    def _start_capture(self, tag: int, mv: memoryview, pos: int, length: int) -> None:
        """A SOP Class or Instance UID, or a sort key, of the top level: keep its value (it
        may run on into the next fragments, see _skip_value)."""
        wanted = min(length, _CAPTURE_LIMIT)
        here = mv[pos : pos + wanted]
        self._capture = bytearray(here)
        self._capture_left = wanted - len(here)
        self._captured[tag] = self._capture

    def _walk(self, mv: memoryview, base: int) -> int:
        """Walk the headers in ``mv`` (``base``: the stream offset of ``mv[0]``); return where
        the first incomplete header starts, or ``len(mv)`` with ``self._skip`` set when a
        value runs past the end."""
        end = len(mv)
        pos = 0
        if self._detect_vr and end >= 6:
            self._detect(mv)
        stack = self._stack
        explicit = self._explicit
        unpack_short = self._short.unpack_from
        unpack_long = self._long.unpack_from
        elements = 0
        tag = self._last_tag
        try:
            while True:
                # containers of defined length end where their length says
                while stack and stack[-1][2] == base + pos:
                    stack.pop()
                    explicit = stack[-1][1] if stack else self._base_explicit
                if pos + 8 > end:
                    break
                if explicit:
                    group, element, vr, length = unpack_short(mv, pos)
                    if group == 0xFFFE:
                        length = unpack_long(mv, pos)[2]
                        pos += 8
                    elif vr in _LONG_VRS:
                        if pos + 12 > end:
                            break
                        length = unpack_long(mv, pos + 4)[2]
                        pos += 12
                    elif vr in _SHORT_VRS or (vr.isalpha() and vr.isupper()):
                        pos += 8
                    else:
                        raise InvalidDataset(
                            f"element {_tag(group << 16 | element)} has no valid VR ({vr!r})"
                        )
                else:
                    group, element, length = unpack_long(mv, pos)
                    vr = b""
                    pos += 8
                tag = group << 16 | element
                if stack:
                    limit = stack[-1][2]
                    if 0 <= limit < base + pos + (0 if length == _UNDEFINED else length):
                        raise InvalidDataset(
                            f"element {_tag(tag)} runs past the end of its "
                            f"{_KIND_NAMES[stack[-1][0]]} of defined length"
                        )
                if group == 0xFFFE:
                    if element == _ITEM and length != _UNDEFINED:
                        if stack and stack[-1][0] == _SEQUENCE:
                            explicit = self._item(length, base + pos, stack)
                        elif stack and stack[-1][0] == _FRAGMENTS:
                            pos += length
                        else:
                            raise InvalidDataset("an item (FFFE,E000) outside a sequence")
                    else:
                        explicit = self._delimiter(element, length, stack)
                    continue
                if stack and stack[-1][0] != _ITEM_OPEN:
                    raise InvalidDataset(
                        f"element {_tag(tag)} where only items can be (in a sequence or "
                        "encapsulated pixel data)"
                    )
                elements += 1
                if length == _UNDEFINED:
                    explicit = self._open(tag, vr, explicit, stack)
                elif vr == b"SQ" or (not explicit and tag in _SEQUENCE_TAGS):
                    if length:
                        stack.append((_SEQUENCE, explicit, base + pos + length))
                else:
                    if tag in _CAPTURED_TAGS and not stack:
                        self._start_capture(tag, mv, pos, length)
                    pos += length
        finally:
            self._explicit = explicit
            self.elements += elements
            self._last_tag = tag
        if pos > end:
            self._skip = pos - end
            return end
        return pos

    def _detect(self, mv: memoryview) -> None:
        """At the first element: a data set whose VR encoding is not its transfer syntax's
        (implicit VR on an explicit context, or the reverse) is read in the encoding it has,
        as pydicom and DCMTK read such files; some senders pass such files on as they are."""
        self._detect_vr = False
        if mv[0] == 0xFE and mv[1] == 0xFF:  # an item tag: nothing to tell from
            return
        vr = bytes(mv[4:6])
        looks_explicit = vr in _LONG_VRS or vr in _SHORT_VRS
        if self._base_explicit and not looks_explicit and not (vr.isalpha() and vr.isupper()):
            self._base_explicit = self._explicit = False
        elif not self._base_explicit and looks_explicit:
            self._base_explicit = self._explicit = True

    @staticmethod
    def _item(length: int, start: int, stack: list[tuple[int, bool, int]]) -> bool:
        """An item of defined length in a sequence: walk its elements up to its end."""
        explicit = stack[-1][1]
        if length:
            stack.append((_ITEM_OPEN, explicit, start + length))
        return explicit

    def _delimiter(self, element: int, length: int, stack: list[tuple[int, bool, int]]) -> bool:
        """An item of undefined length or a delimiter tag (FFFE,eeee); return the VR encoding
        that follows it."""
        top = stack[-1] if stack else None
        kind = top[0] if top is not None else None
        if element == _ITEM:  # of undefined length
            if kind is None or kind == _ITEM_OPEN:
                raise InvalidDataset("an item (FFFE,E000) outside a sequence")
            if kind == _FRAGMENTS:
                raise InvalidDataset("a pixel data fragment of undefined length")
            stack.append((_ITEM_OPEN, stack[-1][1], -1))
            return stack[-1][1]
        if element == _ITEM_END:
            if kind != _ITEM_OPEN:
                raise InvalidDataset("an item delimiter (FFFE,E00D) outside an item")
        elif element == _SEQUENCE_END:
            if kind == _ITEM_OPEN and top is not None and top[2] < 0:
                raise InvalidDataset(
                    "a sequence delimiter (FFFE,E0DD) inside an item (its item delimiter missing)"
                )
            if kind is None or kind == _ITEM_OPEN:
                raise InvalidDataset("a sequence delimiter (FFFE,E0DD) outside a sequence")
        else:
            raise InvalidDataset(f"an unknown delimiter tag (FFFE,{element:04X})")
        if length != 0:
            raise InvalidDataset(f"a delimiter (FFFE,{element:04X}) with a length of {length}")
        assert top is not None
        if top[2] < 0:  # a container of undefined length ends at its delimiter
            stack.pop()
        # (in one of defined length, a delimiter is redundant: let through, as readers do)
        return stack[-1][1] if stack else self._base_explicit

    @staticmethod
    def _open(tag: int, vr: bytes, explicit: bool, stack: list[tuple[int, bool, int]]) -> bool:
        """An element of undefined length: open its container; return the VR encoding of
        what follows."""
        if not explicit:
            # implicit VR: Pixel Data is encapsulated, anything else a sequence
            stack.append((_FRAGMENTS if tag == _PIXEL_DATA else _SEQUENCE, False, -1))
            return False
        if vr == b"SQ":
            stack.append((_SEQUENCE, True, -1))
            return True
        if vr == b"UN" and tag != _PIXEL_DATA:
            # PS3.5 6.2.2: a UN value of undefined length is a sequence in Implicit VR
            stack.append((_SEQUENCE, False, -1))
            return False
        if vr == b"OB" or vr == b"OW" or vr == b"UN":  # UN: Pixel Data its sender did not know
            stack.append((_FRAGMENTS, True, -1))
            return True
        raise InvalidDataset(f"element {_tag(tag)} with VR {vr.decode()} has undefined length")

    # ------------------------------------------------------------------ the end

    def sop_uids(self) -> tuple[str | None, str | None]:
        """(SOP Class UID, SOP Instance UID) found at the top level of the data set, padding
        removed (``None`` for one that is absent); meaningful once :meth:`finish` passed."""
        found: list[str | None] = []
        for tag in (_SOP_CLASS_TAG, _SOP_INSTANCE_TAG):
            value = self._captured.get(tag)
            found.append(None if value is None else bytes(value).decode("latin-1").strip("\0 "))
        return found[0], found[1]

    def study_uid(self) -> tuple[bool, str | None]:
        """(known, Study Instance UID of the top level) from what was fed so far: known once
        its value is complete, or once the walk went past (0020,000D) at the top level
        without it (then ``None``).  Deflated data sets are inflated as fed."""
        tag = tags.STUDY_INSTANCE_UID
        value = self._captured.get(tag)
        if value is not None:
            if value is self._capture and self._capture_left:
                return False, None  # its value runs on into the next fragment
            return True, bytes(value).decode("latin-1").strip(" \0") or None
        return (not self._stack and self._last_tag > tag), None

    def sort_keys(self) -> tuple[str | None, str | None, str | None]:
        """(Patient ID, Study Instance UID, Series Instance UID) of the top level, as
        :func:`~asyncdicom.storage.codec.read_sort_keys` reads them from a file: the value
        bytes as Latin-1 without padding, ``None`` for one that is absent or empty;
        meaningful once :meth:`finish` passed."""
        found: list[str | None] = []
        for tag in _SORT_TAGS:
            value = self._captured.get(tag)
            text = None if value is None else bytes(value).decode("latin-1").strip(" \0")
            found.append(text or None)
        return found[0], found[1], found[2]

    def finish(self) -> None:
        """The data set is complete: raise if it stopped inside an element or container."""
        inflater = self._inflater
        if inflater is not None:
            try:
                self._feed(memoryview(inflater.flush()))
            except zlib.error as exc:
                raise InvalidDataset(f"the deflated data set does not inflate: {exc}") from None
            if not inflater.eof:
                raise InvalidDataset("the deflated data set stops before its end")
        last = _tag(self._last_tag) if self._last_tag >= 0 else "the first element"
        if self._skip:
            raise InvalidDataset(
                f"the data set stops inside the value of {last}, {self._skip} byte(s) short"
            )
        carry = self._carry
        stack = self._stack
        while stack and stack[-1][2] == self._fed - len(carry):  # ended with the data set
            stack.pop()
        # NUL padding shorter than a header after the last element is let through
        if carry and (carry.strip(b"\0") or not self.elements):
            raise InvalidDataset(
                f"the data set stops inside an element header after {last} "
                f"({len(self._carry)} byte(s) of it)"
            )
        if stack:
            kind, _, stop = stack[-1]
            what = _KIND_PHRASES[kind]
            if stop < 0:
                raise InvalidDataset(
                    f"the data set stops inside {what} of undefined length (no delimiter), "
                    f"after {last}"
                )
            raise InvalidDataset(
                f"the data set stops inside {what} of defined length, "
                f"{stop - self._fed} byte(s) short, after {last}"
            )
