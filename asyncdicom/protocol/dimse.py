"""DIMSE framing: command-set codec, PDV fragmentation and message reassembly (sans-IO).

References: PS3.7 section 6.3 (message structure, command set encoding), PS3.7 Annex E (command
elements), PS3.8 section 9.3.5 and Annex E (P-DATA-TF, PDVs, message control header), PS3.8
Annex D.1 (maximum length).

Command sets
    :func:`encode_command` / :func:`decode_command` convert between the message dataclasses of
    :mod:`asyncdicom.protocol.messages` and the group-0000 command set, which is always Implicit
    VR Little Endian whatever transfer syntax the presentation context uses.  The codec is written
    by hand over the closed set of command elements (no pydicom on this path): element headers
    are precomputed and the encoder is a loop over a per-class plan in tag order.  On receipt,
    unknown and retired group-0000 elements ((0000,0001) Length to End, (0000,0010) Recognition
    Code, (0000,5xxx) ...) are skipped by their length; Command Data Set Type values other than
    0x0101 all mean "a data set follows" (we send 0x0001).

Packing policy (sending)
    * One PDV per P-DATA-TF PDU.  PS3.8 Annex E allows several PDVs of the same message in one
      PDU, but a single PDV keeps every PDU a plain header plus one contiguous slice of the
      message, which is what :func:`asyncdicom.protocol.codec.encode_pdata` builds.
    * Fragment size = ``max_pdu_length - 6`` rounded down to an even number: the PDU-length field
      then counts 4 (PDV item length) + 1 (context ID) + 1 (control header) + fragment, which
      is at most the peer's maximum (PS3.8 D.1 limits the PDU-length field, header excluded).
      Fragments are even as PS3.8 Annex E.1 requires; only a final fragment of an odd-length
      input can be odd, and encoded data sets are always even (PS3.5 7.1).
    * The command set goes in its own PDU(s); data-set fragments start in a new PDU.
    * ``max_pdu_length == 0`` (the peer set no limit) and values above
      :data:`DEFAULT_SEND_PDU_LIMIT` are both sent with PDUs of :data:`DEFAULT_SEND_PDU_LIMIT`
      (1 MiB): sending smaller PDUs than the peer allows is always permitted, and it bounds the
      memory a single PDU (and the streaming fragmenter's hold-back buffer) can take.
    * An empty data set, when the command announces one, is sent as one last data PDV with a
      zero-length fragment (PDV item length 2: context ID and control header only).  Zero is an
      even length, the PDV still carries its mandatory control header, and without it the
      receiver could never see the "last" bit and would wait forever for the data set.

Reassembly (receiving)
    :class:`MessageAssembler` turns P-DATA-TF PDUs into :class:`CommandReceived` and
    :class:`DatasetFragment` events.  Data-set fragments are handed on as ``memoryview`` slices
    of the received PDU (never joined, never copied), so a data set of any size can be streamed
    to disk.  The command set is bounded by ``max_command_length``.  Any violation of the
    sequencing rules of PS3.8 Annex E raises :class:`~asyncdicom.protocol.errors.DIMSEError`;
    receivers are lenient where the standard allows (bits 2-7 of the control header are ignored,
    odd-length and empty fragments are accepted).
"""

from __future__ import annotations

import re
import struct
from collections.abc import Iterator
from dataclasses import dataclass, fields
from typing import Any, Final

from .codec import encode_pdata
from .errors import DIMSEError
from .messages import MESSAGE_TYPES, CEchoRSP, CStoreRSP, Message
from .pdu import PDataTF

__all__ = [
    "DATASET_ABSENT",
    "DATASET_PRESENT",
    "DEFAULT_SEND_PDU_LIMIT",
    "MIN_USABLE_MAX_PDU_LENGTH",
    "CommandReceived",
    "DIMSEEvent",
    "DatasetFragment",
    "DatasetFragmenter",
    "MessageAssembler",
    "command_pdus",
    "decode_command",
    "encode_command",
    "fragment_command",
    "fragment_dataset",
    "fragment_size",
    "pdv_fragments",
]

#: PDU length used when the peer announced 0 (no limit), and the largest we ever send.
DEFAULT_SEND_PDU_LIMIT: Final = 1 << 20
#: The smallest peer maximum PDU length (other than 0, unlimited) that can carry a PDV with
#: data: 4 (PDV item length) + 1 (context ID) + 1 (control header) + a 2-byte fragment.
MIN_USABLE_MAX_PDU_LENGTH: Final = 8
#: Command Data Set Type (0000,0800) value meaning "no data set follows" (PS3.7 E.1).
DATASET_ABSENT: Final = 0x0101
#: The value we send for "a data set follows" (any value other than 0x0101 means that).
DATASET_PRESENT: Final = 0x0001

# Message control header bits (PS3.8 E.2).
_COMMAND: Final = 0x01
_LAST: Final = 0x02

# --------------------------------------------------------------------------- element table

# Value kinds of the command elements (VRs of PS3.7 Annex E).
_US: Final = 0
_UI: Final = 1
_AE: Final = 2
_LO: Final = 3
_AT: Final = 4
_CF: Final = 5  # Command Field (US), taken from the class
_DST: Final = 6  # Command Data Set Type (US), taken from has_dataset

#: element number (group 0000) -> (field name, kind)
_ELEMENTS: Final[dict[int, tuple[str, int]]] = {
    0x0002: ("affected_sop_class_uid", _UI),
    0x0003: ("requested_sop_class_uid", _UI),
    0x0100: ("command_field", _CF),
    0x0110: ("message_id", _US),
    0x0120: ("message_id_being_responded_to", _US),
    0x0600: ("move_destination", _AE),
    0x0700: ("priority", _US),
    0x0800: ("has_dataset", _DST),
    0x0900: ("status", _US),
    0x0901: ("offending_element", _AT),
    0x0902: ("error_comment", _LO),
    0x0903: ("error_id", _US),
    0x1000: ("affected_sop_instance_uid", _UI),
    0x1001: ("requested_sop_instance_uid", _UI),
    0x1002: ("event_type_id", _US),
    0x1005: ("attribute_identifier_list", _AT),
    0x1008: ("action_type_id", _US),
    0x1020: ("number_of_remaining_suboperations", _US),
    0x1021: ("number_of_completed_suboperations", _US),
    0x1022: ("number_of_failed_suboperations", _US),
    0x1023: ("number_of_warning_suboperations", _US),
    0x1030: ("move_originator_aet", _AE),
    0x1031: ("move_originator_message_id", _US),
}
_TAG_OF_FIELD: Final = {name: elem for elem, (name, _kind) in _ELEMENTS.items()}

_HEADER = struct.Struct("<HHI")  # group, element, value length (Implicit VR LE)
_US_ELEMENT = struct.Struct("<HHIH")  # a whole US element
_UL_ELEMENT = struct.Struct("<HHII")  # a whole UL element (the group length)
_TAG_PAIR = struct.Struct("<HH")  # one AT value
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")


def _field_label(name: str) -> str:
    return f"(0000,{_TAG_OF_FIELD[name]:04X}) {name}"


# Per class: (field name, element, kind) in ascending tag order, plus the encoded Command Field.
_PLANS: dict[type, tuple[tuple[tuple[str, int, int], ...], bytes]] = {}
_FIELDS: dict[type, frozenset[str]] = {}
for _cls in MESSAGE_TYPES.values():
    _names = {f.name for f in fields(_cls)}
    _unknown = _names - set(_TAG_OF_FIELD)
    assert not _unknown, f"{_cls.__name__} has fields without a tag: {_unknown}"
    _plan = [(name, elem, kind) for elem, (name, kind) in sorted(_ELEMENTS.items())]
    _PLANS[_cls] = (
        tuple(p for p in _plan if p[0] in _names or p[2] == _CF),
        _US_ELEMENT.pack(0, 0x0100, 2, _cls.COMMAND_FIELD),
    )
    _FIELDS[_cls] = frozenset(_names)

_DST_ABSENT_BYTES: Final = _US_ELEMENT.pack(0, 0x0800, 2, DATASET_ABSENT)
_DST_PRESENT_BYTES: Final = _US_ELEMENT.pack(0, 0x0800, 2, DATASET_PRESENT)

# --------------------------------------------------------------------------- value encoding

# Encoded UI/AE elements are cached: the same SOP class UIDs and AE titles recur in every
# message.  The cache is cleared when it grows, which keeps memory bounded.
_STR_CACHE: dict[tuple[int, str], bytes] = {}
_STR_CACHE_MAX: Final = 4096


#: what no command-set text may contain: control characters, backslash, DEL
_FORBIDDEN_TEXT: Final = re.compile(rb"[\x00-\x1f\\\x7f]")


def _check_text(value: str, what: str, max_len: int) -> bytes:
    try:
        raw = value.encode("ascii")
    except UnicodeEncodeError:
        raise ValueError(f"{what} {value!r} is not ASCII") from None
    if _FORBIDDEN_TEXT.search(raw) is not None:
        raise ValueError(f"{what} {value!r} contains a control character or backslash")
    if len(raw) > max_len:
        raise ValueError(f"{what} {value!r} is longer than {max_len} characters")
    return raw


def _encode_ui_uncached(elem: int, value: str) -> bytes:
    """A UI element whose value is unlikely to recur (an SOP Instance UID): checked and encoded
    as :func:`_encode_string_element` does, without filling its cache."""
    if not isinstance(value, str):
        raise ValueError(f"{_ELEMENTS[elem][0]} must be a str, not {type(value).__name__}")
    raw = _check_text(value, _ELEMENTS[elem][0], 1 << 15)
    if not raw:
        raise ValueError(f"{_ELEMENTS[elem][0]} is empty")
    if len(raw) & 1:
        raw += b"\x00"
    return _HEADER.pack(0, elem, len(raw)) + raw


def _encode_string_element(elem: int, kind: int, value: str) -> bytes:
    key = (elem, value)
    cached = _STR_CACHE.get(key)
    if cached is not None:
        return cached
    name = _ELEMENTS[elem][0]
    if not isinstance(value, str):
        raise ValueError(f"{name} must be a str, not {type(value).__name__}")
    if kind == _UI:
        # UI: digits and dots (PS3.5 9.1); 64 is not enforced so that a peer's over-long UID
        # can still be echoed back in a response.
        raw = _check_text(value, name, 1 << 15)
        if not raw:
            raise ValueError(f"{name} is empty")
        pad = b"\x00"
    elif kind == _AE:
        raw = _check_text(value, name, 16).rstrip(b" ")
        if not raw.strip(b" "):
            raise ValueError(f"{name} is empty")
        pad = b" "
    else:  # _LO
        raw = _check_text(value, name, 64)
        pad = b" "
    if len(raw) & 1:
        raw += pad
    encoded = _HEADER.pack(0, elem, len(raw)) + raw
    if len(_STR_CACHE) >= _STR_CACHE_MAX:
        _STR_CACHE.clear()
    _STR_CACHE[key] = encoded
    return encoded


def _encode_at(elem: int, value: tuple[int, ...]) -> bytes:
    parts = [_HEADER.pack(0, elem, 4 * len(value))]
    for tag in value:
        if not isinstance(tag, int) or not 0 <= tag <= 0xFFFFFFFF:
            raise ValueError(f"{_ELEMENTS[elem][0]}: {tag!r} is not a 32-bit tag")
        parts.append(_TAG_PAIR.pack(tag >> 16, tag & 0xFFFF))
    return b"".join(parts)


# Responses whose command set is pre-encoded: C-ECHO-RSP and C-STORE-RSP without Offending
# Element, Error Comment or Error ID (every Success, most Warnings and Failures).  Their
# elements are (0000,0000) group length, (0000,0002) Affected SOP Class UID, (0000,0100)
# Command Field, (0000,0120) Message ID Being Responded To, (0000,0800) Command Data Set Type,
# (0000,0900) Status and, for C-STORE, (0000,1000) Affected SOP Instance UID: once the SOP
# class and the status are known only the Message ID and the SOP Instance UID vary.
#: (class, Affected SOP Class UID, Status) -> the encoded elements before the Message ID's
#: value, those after it (Command Data Set Type and Status), and their total length with it
_TEMPLATES: dict[tuple[type, str | None, int], tuple[bytes, bytes, int]] = {}
_TEMPLATES_MAX: Final = 1024
_MESSAGE_ID_HEADER: Final = _HEADER.pack(0, 0x0120, 2)


def _template(cls: type, sop_class_uid: str | None, status: int) -> tuple[bytes, bytes, int]:
    """The fixed parts of a pre-encoded response (see :func:`_encode_templated`), made and
    cached; ``status`` is an int of 0-65535 (checked by the caller)."""
    head = b"" if sop_class_uid is None else _encode_string_element(0x0002, _UI, sop_class_uid)
    head += _PLANS[cls][1] + _MESSAGE_ID_HEADER
    tail = _DST_ABSENT_BYTES + _US_ELEMENT.pack(0, 0x0900, 2, status)
    template = (head, tail, len(head) + 2 + len(tail))
    if len(_TEMPLATES) >= _TEMPLATES_MAX:
        _TEMPLATES.clear()
    _TEMPLATES[(cls, sop_class_uid, status)] = template
    return template


def _encode_templated(message: CEchoRSP | CStoreRSP) -> bytes:
    """:func:`encode_command` for a C-ECHO-RSP or C-STORE-RSP without Offending Element, Error
    Comment, Error ID or data set (checked by the caller), from the pre-encoded parts."""
    cls = type(message)
    status = message.status
    mid = message.message_id_being_responded_to
    sop_class_uid = message.affected_sop_class_uid
    if (
        type(status) is not int
        or not 0 <= status <= 0xFFFF
        or type(mid) is not int
        or not 0 <= mid <= 0xFFFF
        or (sop_class_uid is not None and type(sop_class_uid) is not str)
    ):
        return _encode_planned(message)  # which says what is wrong (ValueError)
    try:
        head, tail, size = _TEMPLATES[(cls, sop_class_uid, status)]
    except KeyError:
        head, tail, size = _template(cls, sop_class_uid, status)
    uid = message.affected_sop_instance_uid if isinstance(message, CStoreRSP) else None
    if uid is None:
        return _UL_ELEMENT.pack(0, 0, 4, size) + head + _U16.pack(mid) + tail
    element = _encode_ui_uncached(0x1000, uid)
    return _UL_ELEMENT.pack(0, 0, 4, size + len(element)) + head + _U16.pack(mid) + tail + element


def encode_command(message: Message) -> bytes:
    """Encode the command set of *message* (PS3.7 6.3.1): Implicit VR Little Endian, elements
    in ascending tag order, (0000,0000) Command Group Length first.

    Fields that are ``None`` are left out.  Raises :class:`ValueError` for values that cannot be
    encoded (a US outside 0-65535, a non-ASCII or over-long AE title or comment, ...).
    """
    if (
        isinstance(message, (CEchoRSP, CStoreRSP))
        and message.offending_element is None
        and message.error_comment is None
        and message.error_id is None
        and not message.has_dataset
    ):
        return _encode_templated(message)
    return _encode_planned(message)


def _encode_planned(message: Message) -> bytes:
    """:func:`encode_command` for any message: its class's plan, element by element."""
    try:
        plan, command_field = _PLANS[type(message)]
    except KeyError:
        raise TypeError(f"not a DIMSE message: {message!r}") from None
    parts: list[bytes] = []
    append = parts.append
    for name, elem, kind in plan:
        if kind == _CF:
            append(command_field)
            continue
        value = getattr(message, name)
        if kind == _DST:
            append(_DST_PRESENT_BYTES if value else _DST_ABSENT_BYTES)
        elif value is None:
            continue
        elif kind == _US:
            if not isinstance(value, int):
                raise ValueError(f"{name} must be an int, not {type(value).__name__}")
            if not 0 <= value <= 0xFFFF:
                raise ValueError(f"{name} = {value!r} does not fit in a US (0-65535)")
            append(_US_ELEMENT.pack(0, elem, 2, value))
        elif kind == _AT:
            append(_encode_at(elem, value))
        else:
            append(_encode_string_element(elem, kind, value))
    body = b"".join(parts)
    return _UL_ELEMENT.pack(0, 0, 4, len(body)) + body


# --------------------------------------------------------------------------- decoding


def _decode_text(raw: bytes, name: str) -> str:
    try:
        return raw.decode("ascii")
    except UnicodeDecodeError:
        raise DIMSEError(f"command set: {_field_label(name)} is not ASCII: {raw!r}") from None


#: decoded UI/AE values by their raw bytes: the same UIDs and AE titles recur in every command
_TEXT_CACHE: dict[bytes, str | None] = {}
_TEXT_CACHE_MAX: Final = 4096


def _check_trailing(buf: bytes, offset: int, size: int) -> None:
    """Elements of other groups after a command set's group 0000 (ignored by
    :func:`decode_command`) must still be well-formed: each within the buffer, and none of
    group 0000 among them."""
    while offset < size:
        if size - offset < 8:
            raise DIMSEError(
                f"command set: {size - offset} trailing byte(s) at offset {offset}, "
                "too short for an element header"
            )
        group, elem, length = _HEADER.unpack_from(buf, offset)
        if group == 0:
            raise DIMSEError(
                f"command set: element (0000,{elem:04X}) at offset {offset} follows elements "
                "of other groups"
            )
        if offset + 8 + length > size:
            raise DIMSEError(
                f"command set: element ({group:04X},{elem:04X}) at offset {offset} declares "
                f"{length} bytes but only {size - offset - 8} remain"
            )
        offset += 8 + length


def decode_command(data: bytes | bytearray | memoryview) -> Message:
    """Decode a complete command set (PS3.7 6.3.1, Implicit VR Little Endian) into a message.

    Unknown and retired group-0000 elements are skipped.  A missing (0000,0000) group length is
    tolerated; one that disagrees with the actual size is not, unless it counts group 0000
    only and well-formed elements of other groups follow (they are not part of a command set
    and are ignored: Orthanc 1.10 puts a C-GET-RSP's Failed SOP Instance UID List there).
    Raises :class:`~asyncdicom.protocol.errors.DIMSEError` for anything malformed: truncated or
    overrunning elements, a first element outside group 0000, duplicated elements, values of
    the wrong size, an unknown or missing Command Field, a missing Command Data Set Type or a
    missing mandatory element of the message.
    """
    buf = data if type(data) is bytes else bytes(data)
    size = len(buf)
    if size == 0:
        raise DIMSEError("command set is empty")
    values: dict[str, Any] = {}
    offset = 0
    command_end = size  # where the group-0000 elements end
    group_end = -1  # where the group length says they end (-1: no group length)
    unpack_header = _HEADER.unpack_from
    unpack_u16 = _U16.unpack_from
    elements = _ELEMENTS
    text_cache = _TEXT_CACHE
    while offset < size:
        if size - offset < 8:
            raise DIMSEError(
                f"command set: {size - offset} trailing byte(s) at offset {offset}, "
                "too short for an element header"
            )
        group, elem, length = unpack_header(buf, offset)
        start = offset + 8
        end = start + length
        if group != 0:
            if offset == 0:
                raise DIMSEError(
                    f"command set: element ({group:04X},{elem:04X}) at offset {offset} "
                    "is outside group 0000"
                )
            # Elements of other groups after the command's (Orthanc 1.10 puts a C-GET-RSP's
            # (0008,0058) Failed SOP Instance UID List there): not part of the command set
            # (PS3.7 6.3.1), so ignored, as long as they are well-formed and no group-0000
            # element follows them
            _check_trailing(buf, offset, size)
            command_end = offset
            break
        if end > size:
            # Also catches the undefined length 0xFFFFFFFF, which a command set cannot use.
            raise DIMSEError(
                f"command set: element (0000,{elem:04X}) at offset {offset} declares "
                f"{length} bytes but only {size - start} remain"
            )
        offset = end
        spec = elements.get(elem)
        if spec is None:
            if elem == 0x0000:
                if length != 4:
                    raise DIMSEError(f"command set: group length has {length} bytes, not 4")
                if start != 8:
                    raise DIMSEError("command set: (0000,0000) group length is not first")
                declared = _U32.unpack_from(buf, start)[0]
                if declared > size - 12:
                    raise DIMSEError(
                        f"command set: group length says {declared} bytes follow, "
                        f"but there are {size - 12}"
                    )
                # fewer: only if elements of other groups follow group 0000 there (checked
                # once the loop found where they start)
                group_end = 12 + declared
            # other elements: retired or unknown group-0000 elements, skipped
            continue
        name, kind = spec
        if name in values:
            raise DIMSEError(f"command set: {_field_label(name)} appears twice")
        if length == 0:
            # An empty value is the same as an absent element.
            values[name] = None
            continue
        value: Any
        if kind <= _UI or kind >= _CF:  # _US, _UI, _CF, _DST
            if kind == _UI:
                raw = buf[start:end]
                value = text_cache.get(raw, _MISSING)
                if value is _MISSING:
                    value = _decode_text(raw.rstrip(b"\x00 "), name) or None
                    if len(text_cache) >= _TEXT_CACHE_MAX:
                        text_cache.clear()
                    text_cache[raw] = value
            else:
                if length != 2:
                    raise DIMSEError(f"command set: {_field_label(name)} has {length} bytes, not 2")
                value = unpack_u16(buf, start)[0]
                if kind == _DST:
                    value = value != DATASET_ABSENT
        elif kind == _AE:
            value = _decode_text(buf[start:end].rstrip(b"\x00 "), name) or None
        elif kind == _LO:
            # padding only is an empty value, as for the UI and AE elements: absent
            value = buf[start:end].rstrip(b"\x00 ").decode("utf-8", "replace") or None
        else:  # _AT
            if length % 4:
                raise DIMSEError(
                    f"command set: {_field_label(name)} has {length} bytes, not a multiple of 4"
                )
            value = tuple((g << 16) | e for g, e in _TAG_PAIR.iter_unpack(buf[start:end]))
        values[name] = value

    # the group length counts group 0000 (or, from a peer that puts elements of other groups
    # after them, everything)
    if group_end >= 0 and group_end != command_end and group_end != size:
        raise DIMSEError(
            f"command set: group length says {group_end - 12} bytes follow, "
            f"but there are {command_end - 12}"
        )
    command_field = values.pop("command_field", None)
    if command_field is None:
        raise DIMSEError("command set has no (0000,0100) Command Field")
    cls = MESSAGE_TYPES.get(command_field)
    if cls is None:
        raise DIMSEError(f"command set: unknown Command Field 0x{command_field:04X}")
    if values.get("has_dataset") is None:
        raise DIMSEError(f"{cls.NAME}: no (0000,0800) Command Data Set Type")
    allowed = _FIELDS[cls]
    if None in values.values() or not allowed.issuperset(values):
        values = {k: v for k, v in values.items() if v is not None and k in allowed}
    if not cls.REQUIRED.issubset(values):
        missing = cls.REQUIRED - values.keys()
        labels = ", ".join(_field_label(n) for n in sorted(missing, key=_TAG_OF_FIELD.__getitem__))
        raise DIMSEError(f"{cls.NAME} lacks mandatory element(s) {labels}")
    return cls(**values)


_MISSING: Final = object()


# --------------------------------------------------------------------------- fragmentation


def fragment_size(max_pdu_length: int) -> int:
    """The fragment payload size used for a peer maximum PDU length (see the packing policy)."""
    if max_pdu_length == 0 or max_pdu_length > DEFAULT_SEND_PDU_LIMIT:
        max_pdu_length = DEFAULT_SEND_PDU_LIMIT
    if max_pdu_length < MIN_USABLE_MAX_PDU_LENGTH:
        raise ValueError(
            f"max PDU length {max_pdu_length} leaves no room for a 2-byte fragment "
            "(a PDV needs 6 bytes of header)"
        )
    return (max_pdu_length - 6) & ~1


def _check_context_id(context_id: int) -> None:
    if not (1 <= context_id <= 255 and context_id & 1):
        raise ValueError(f"presentation context ID {context_id} is not an odd number 1-255")


def pdv_fragments(
    data: bytes | bytearray | memoryview, size: int, *, command: bool, last: bool = True
) -> Iterator[tuple[int, memoryview]]:
    """``(message control header, payload)`` for each PDV of at most ``size`` bytes (from
    :func:`fragment_size`) carrying ``data``, one PDV per PDU (PS3.8 Annex E.2).

    ``command`` sets the command bit; ``last`` marks the final fragment as the last one of its
    command set or data set (an empty ``data`` then gives one empty last fragment; without
    ``last`` nothing).  Payloads are memoryview slices of ``data``: nothing is copied.
    """
    view = memoryview(data).cast("B")
    base = _COMMAND if command else 0
    total = len(view)
    if total == 0:
        if last:
            yield base | _LAST, view
        return
    final_header = base | _LAST if last else base
    for offset in range(0, total, size):
        end = offset + size
        yield (final_header if end >= total else base), view[offset:end]


def fragment_command(context_id: int, command: bytes, max_pdu_length: int) -> list[bytes]:
    """The P-DATA-TF PDUs carrying an encoded command set (one PDV each, PS3.8 E.1)."""
    _check_context_id(context_id)
    size = fragment_size(max_pdu_length)
    if len(command) <= size:
        return [encode_pdata(context_id, _COMMAND | _LAST, command)]
    return [
        encode_pdata(context_id, header, payload)
        for header, payload in pdv_fragments(command, size, command=True)
    ]


def command_pdus(context_id: int, message: Message, max_pdu_length: int) -> list[bytes]:
    """Shortcut: ``fragment_command(context_id, encode_command(message), max_pdu_length)``."""
    return fragment_command(context_id, encode_command(message), max_pdu_length)


def fragment_dataset(
    context_id: int,
    data: bytes | bytearray | memoryview,
    max_pdu_length: int,
    *,
    last: bool = True,
) -> Iterator[bytes]:
    """Yield the P-DATA-TF PDUs carrying *data* as data-set fragments (one PDV each).

    With ``last=True`` the final fragment carries the "last" bit; an empty *data* then yields one
    zero-length last fragment.  With ``last=False`` (the data set continues in a later call) no
    fragment is marked last, nothing is yielded for empty *data*, and *data* must have an even
    length so that every fragment stays even (PS3.8 E.1).  Arguments are checked at call time.
    """
    _check_context_id(context_id)
    size = fragment_size(max_pdu_length)
    if not last and len(data) & 1:
        raise ValueError("a non-final piece of a data set must have an even length")
    return _fragment_dataset(context_id, memoryview(data).cast("B"), size, last)


def _fragment_dataset(context_id: int, view: memoryview, size: int, last: bool) -> Iterator[bytes]:
    for header, payload in pdv_fragments(view, size, command=False, last=last):
        yield encode_pdata(context_id, header, payload)


class DatasetFragmenter:
    """Fragments a data set that arrives in chunks (for example read from a file).

    :meth:`feed` returns the PDUs that are complete; the tail (at most one fragment) is held back
    so that :meth:`finish` can send it with the "last" bit.  Memory use is bounded by one
    fragment plus the chunk being fed.  Fragments have the full :func:`fragment_size` except the
    last one, whatever the chunk sizes.  If nothing was fed, :meth:`finish` sends one zero-length
    last fragment (see the packing policy).
    """

    __slots__ = ("_context_id", "_finished", "_pending", "_size", "bytes_fed")

    def __init__(self, context_id: int, max_pdu_length: int) -> None:
        _check_context_id(context_id)
        self._context_id = context_id
        self._size = fragment_size(max_pdu_length)
        self._pending = bytearray()
        self._finished = False
        #: total number of data-set bytes fed so far
        self.bytes_fed = 0

    def feed(self, chunk: bytes | bytearray | memoryview) -> list[bytes]:
        """Add the next chunk of the data set; return the PDUs that can be sent now."""
        if self._finished:
            raise ValueError("DatasetFragmenter.feed() after finish()")
        view = memoryview(chunk).cast("B")
        n = len(view)
        if n == 0:
            return []
        self.bytes_fed += n
        size = self._size
        pending = self._pending
        if len(pending) + n <= size:
            # Still within one fragment: keep it (the caller may reuse its buffer).
            pending += view
            return []
        pdus = []
        context_id = self._context_id
        offset = 0
        if pending:
            # Complete the held-back fragment from the start of the chunk.
            take = size - len(pending)
            pending += view[:take]
            pdus.append(encode_pdata(context_id, 0, memoryview(pending)))
            offset = take
            pending = bytearray()
        # Whole fragments straight from the chunk, keeping at least one byte back.
        while n - offset > size:
            pdus.append(encode_pdata(context_id, 0, view[offset : offset + size]))
            offset += size
        pending += view[offset:]
        self._pending = pending
        return pdus

    def finish(self) -> list[bytes]:
        """Return the last PDU (the held-back tail with the "last" bit)."""
        if self._finished:
            raise ValueError("DatasetFragmenter.finish() called twice")
        self._finished = True
        tail = bytes(self._pending)
        self._pending = bytearray()
        return [encode_pdata(self._context_id, _LAST, tail)]


# --------------------------------------------------------------------------- reassembly


@dataclass(frozen=True, slots=True)
class CommandReceived:
    """A complete command set arrived (its last fragment has been received)."""

    context_id: int
    message: Message


@dataclass(frozen=True, slots=True)
class DatasetFragment:
    """One data-set fragment, a zero-copy view of the received PDU; ``last`` ends the data set.

    The view stays valid as long as it is referenced (it keeps the PDU's buffer alive).
    """

    context_id: int
    data: memoryview
    last: bool


DIMSEEvent = CommandReceived | DatasetFragment

# Assembler states.
_IDLE: Final = 0  # between messages: the next PDV must start a command set
_COMMAND_STATE: Final = 1  # inside a command set
_DATASET_STATE: Final = 2  # command done, its data set is expected


class MessageAssembler:
    """Reassembles DIMSE messages from P-DATA-TF PDUs (PS3.8 Annex E, PS3.7 6.3).

    :meth:`receive` returns, in order, a :class:`CommandReceived` when a command set is complete
    and a :class:`DatasetFragment` for each data-set fragment.  A message ends with a command
    set that announces no data set, or with the last data-set fragment; then the next message
    may start.  Command-set fragments are buffered up to ``max_command_length`` bytes in total;
    data-set fragments are never buffered.
    """

    __slots__ = (
        "_command_parts",
        "_command_size",
        "_context_id",
        "_last_message",
        "_state",
        "max_command_length",
    )

    def __init__(self, max_command_length: int = 65536) -> None:
        self.max_command_length = max_command_length
        self._state = _IDLE
        self._context_id = 0
        self._command_parts: list[bytes | memoryview] = []
        self._command_size = 0
        self._last_message: Message | None = None

    @property
    def idle(self) -> bool:
        """True between messages (no message partially received)."""
        return self._state == _IDLE

    @property
    def expecting_dataset(self) -> bool:
        """True when a command set announced a data set that has not ended yet."""
        return self._state == _DATASET_STATE

    def receive(self, pdu: PDataTF) -> list[DIMSEEvent]:
        """Process one P-DATA-TF PDU; raise :class:`DIMSEError` on a sequencing violation."""
        if not pdu.pdvs:
            raise DIMSEError("P-DATA-TF PDU without presentation data values")
        events: list[DIMSEEvent] = []
        for pdv in pdu.pdvs:
            context_id = pdv.context_id
            header = pdv.message_control_header
            state = self._state
            if state == _IDLE:
                if not header & _COMMAND:
                    previous = self._last_message
                    if previous is not None and not previous.has_dataset:
                        raise DIMSEError(
                            f"data set fragment on context {context_id} after a "
                            f"{previous.NAME} whose Command Data Set Type says no data set follows"
                        )
                    raise DIMSEError(
                        f"data set fragment on context {context_id} before any command set"
                    )
                if not (1 <= context_id <= 255 and context_id & 1):
                    raise DIMSEError(f"PDV with invalid presentation context ID {context_id}")
                self._context_id = context_id
                self._state = state = _COMMAND_STATE
            elif context_id != self._context_id:
                raise DIMSEError(
                    f"PDV on presentation context {context_id} in the middle of a message "
                    f"on context {self._context_id}"
                )

            if header & _COMMAND:
                if state == _DATASET_STATE:
                    raise DIMSEError(
                        "command fragment received while the data set of "
                        f"{self._last_message_name()} is still expected"
                    )
                self._add_command_fragment(pdv.data)
                if header & _LAST:
                    message = self._complete_command()
                    events.append(CommandReceived(context_id, message))
                    self._last_message = message
                    self._state = _DATASET_STATE if message.has_dataset else _IDLE
            else:
                if state == _COMMAND_STATE:
                    raise DIMSEError(
                        "data set fragment received before the command set was complete"
                    )
                data = pdv.data
                view = data if isinstance(data, memoryview) else memoryview(data)
                last = bool(header & _LAST)
                events.append(DatasetFragment(context_id, view, last))
                if last:
                    self._state = _IDLE
        return events

    def _last_message_name(self) -> str:
        return self._last_message.NAME if self._last_message is not None else "the message"

    def _add_command_fragment(self, data: bytes | memoryview) -> None:
        size = self._command_size + len(data)
        if size > self.max_command_length:
            raise DIMSEError(f"command set exceeds the limit of {self.max_command_length} bytes")
        self._command_size = size
        self._command_parts.append(data)

    def _complete_command(self) -> Message:
        parts = self._command_parts
        data = parts[0] if len(parts) == 1 else b"".join(parts)
        self._command_parts = []
        self._command_size = 0
        return decode_command(data)
