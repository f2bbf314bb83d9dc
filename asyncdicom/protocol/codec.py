"""Byte codec of the DICOM Upper Layer PDUs (PS3.8 section 9.3, Annex D; PS3.7 Annex D.3.3).

Sans-IO: bytes in, dataclasses out (and back).  Three entry points:

* :func:`decode_pdu` -- exactly one complete PDU (6-byte header included) to a dataclass of
  :mod:`asyncdicom.protocol.pdu`.  Anything wrong with the bytes raises a
  :class:`~asyncdicom.protocol.errors.ProtocolError` subclass whose message names the field;
  no other exception escapes for any input.
* :func:`encode_pdu` / :func:`encode_pdata` -- dataclass (or one PDV) to bytes.  Values that
  cannot be put on the wire raise :class:`~asyncdicom.protocol.errors.LocalProtocolError`.
* :class:`PDUFramer` -- cuts a TCP byte stream into PDUs, refusing oversized or unknown PDUs
  from their header alone.

Error classes used by the decoder:

* :class:`TruncatedPDU` -- the buffer is shorter than the 6-byte header or than the PDU-length
  it declares, or has bytes after it.
* :class:`InvalidPDU` -- a fixed PDU field is wrong (PDU-length of RJ/release/abort not 4,
  A-ASSOCIATE fixed part missing, P-DATA-TF without a PDV).
* :class:`InvalidItem` -- an item or sub-item is malformed: its header does not fit, it overruns
  its parent, its internal lengths do not add up, it is empty where a value is required,
  repeated where one is allowed, missing where one is required, or sits at the wrong level.
* :class:`InvalidParameterValue` -- a field holds a forbidden value (AE title characters,
  non-ASCII UID, even presentation context ID, result code above 4, repeated context ID).
* :class:`BadProtocolVersion` -- bit 0 of the protocol version is not set.
* :class:`UnrecognizedPDU` -- the PDU type is not one of the seven.

Leniency, where the standard says "not tested" or where old peers are known to deviate:
reserved fields are ignored; the AE-title fields of an A-ASSOCIATE-AC are reserved fields
echoing the RQ (PS3.8 Table 9-17) and are decoded without checks (Latin-1, trailing spaces
removed); the transfer syntax of a rejected presentation context is not tested (Table 9-18);
role-selection and positive-response bytes treat any non-zero value as 1; the implementation
version name is not checked for length or character set (it is informative only).
"""

from __future__ import annotations

import struct
from collections import deque
from collections.abc import Callable, Iterator

from .errors import (
    BadProtocolVersion,
    InvalidItem,
    InvalidParameterValue,
    InvalidPDU,
    LocalProtocolError,
    PDUTooLarge,
    ProtocolError,
    TruncatedPDU,
    UnrecognizedPDU,
)
from .pdu import (
    PDU,
    Abort,
    AssociateAC,
    AssociateRJ,
    AssociateRQ,
    AsynchronousOperationsWindowSubItem,
    ImplementationClassUIDSubItem,
    ImplementationVersionNameSubItem,
    MaximumLengthSubItem,
    PDataTF,
    PresentationContextACItem,
    PresentationContextRQItem,
    PresentationDataValue,
    ReleaseRP,
    ReleaseRQ,
    RoleSelectionSubItem,
    SOPClassCommonExtendedNegotiationSubItem,
    SOPClassExtendedNegotiationSubItem,
    UnknownSubItem,
    UserIdentityACSubItem,
    UserIdentityRQSubItem,
    UserInformationItem,
    UserInformationSubItem,
)

__all__ = ["PDUFramer", "decode_pdu", "encode_pdata", "encode_pdu"]

# --------------------------------------------------------------------------- wire structures
# All UL header integers are unsigned big-endian (PS3.8 9.3.1).

#: PDU header: type, reserved (skipped), PDU-length.
_PDU_HEADER = struct.Struct(">BxI")
#: Item / sub-item header: type, reserved, item-length.
_ITEM_HEADER = struct.Struct(">BBH")
#: PDV item header: item-length, presentation context ID, message control header.
_PDV_HEADER = struct.Struct(">IBB")
#: Whole header of a one-PDV P-DATA-TF: PDU type, reserved, PDU-length, PDV item-length,
#: context ID, message control header.
_PDATA_HEADER = struct.Struct(">BBIIBB")
#: Fixed part of an A-ASSOCIATE-RQ/AC after the PDU header: version, reserved, 2 x 16 bytes of
#: AE title, 32 reserved bytes.
_ASSOC_FIXED = struct.Struct(">HH16s16s32s")
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_U16x2 = struct.Struct(">HH")
_USER_IDENTITY_RQ_HEAD = struct.Struct(">BBH")
_FIXED4 = struct.Struct(">BBBB")

_PDU_HEADER_LENGTH = 6
_ASSOC_FIXED_LENGTH = 68  # bytes of the A-ASSOCIATE fixed part counted in the PDU-length
_MAX_U16 = 0xFFFF
_MAX_U32 = 0xFFFFFFFF

_PDU_NAMES = {
    0x01: "A-ASSOCIATE-RQ",
    0x02: "A-ASSOCIATE-AC",
    0x03: "A-ASSOCIATE-RJ",
    0x04: "P-DATA-TF",
    0x05: "A-RELEASE-RQ",
    0x06: "A-RELEASE-RP",
    0x07: "A-ABORT",
}
#: PDU types whose PDU-length is fixed at 4 (PS3.8 Tables 9-21, 9-24, 9-25, 9-26).
_FIXED_LENGTH_TYPES = frozenset((0x03, 0x05, 0x06, 0x07))
_P_DATA_TF = 0x04

#: AE VR repertoire (PS3.5 Table 6.2-1, PS3.8 7.1.1.3): ISO 646 G0 printable, no backslash.
_AE_CHARACTERS = bytes(c for c in range(0x20, 0x7F) if c != 0x5C)
#: Printable ISO 646 G0, used for UIDs (PS3.8 Annex F restricts further to digits and '.',
#: but peers with slightly irregular UIDs -- leading zeros, letters in private UIDs -- exist,
#: and the negotiation layer compares UIDs against what it knows anyway).
_PRINTABLE = bytes(range(0x20, 0x7F))

_USER_INFO_KNOWN = frozenset(range(0x51, 0x5A))
#: Item types that have a defined meaning somewhere; found at the wrong level they are errors,
#: whereas types without a meaning are skipped (PS3.8 9.3.1).
_PDU_LEVEL_MISPLACED = frozenset((0x30, 0x40, *range(0x51, 0x5A)))
_CONTEXT_LEVEL_MISPLACED = frozenset((0x10, 0x20, 0x21, 0x50, *range(0x51, 0x5A)))


def _bytes_view(data: bytes | bytearray | memoryview) -> memoryview:
    view = memoryview(data)
    if view.format != "B" or view.ndim != 1:
        view = view.cast("B")
    return view


# --------------------------------------------------------------------------- field decoders


def _decode_rq_ae_title(raw: bytes, field: str) -> str:
    """An A-ASSOCIATE-RQ AE title (PS3.8 Table 9-11, 7.1.1.3; PS3.5 AE VR)."""
    bad = raw.translate(None, _AE_CHARACTERS)
    if bad:
        raise InvalidParameterValue(
            f"{field}: byte 0x{bad[0]:02X} is not an ISO 646 G0 AE-title character"
        )
    title = raw.decode("ascii").rstrip(" ")
    if not title:
        raise InvalidParameterValue(f"{field}: all spaces (no AE title)")
    return title


def _decode_ac_ae_title(raw: bytes) -> str:
    """An A-ASSOCIATE-AC AE-title field: reserved, echoes the RQ, not tested (Table 9-17).

    Latin-1 maps every byte to one character, so any content round-trips.
    """
    return raw.decode("latin-1").rstrip(" ")


def _decode_uid(raw: bytes, field: str) -> str:
    """A UID in an item (PS3.8 Annex F): ASCII, no padding, must not be empty."""
    # Some old implementations pad odd-length UIDs with one NUL as inside data sets (PS3.5
    # 9.1) although Annex F forbids padding in UL items; accept and drop it.  Such input
    # is not well-formed, so it does not re-encode byte for byte.
    if raw[-1:] == b"\x00":
        raw = raw[:-1]
    bad = raw.translate(None, _PRINTABLE)
    if bad:
        raise InvalidParameterValue(f"{field}: byte 0x{bad[0]:02X} is not a UID character")
    if not raw:
        raise InvalidItem(f"{field}: empty, a UID is required")
    return raw.decode("ascii")


def _check_context_id(context_id: int, field: str) -> None:
    # Presentation context IDs are odd integers 1..255 (PS3.8 9.3.2.2).
    if not context_id & 1:
        raise InvalidParameterValue(f"{field}: {context_id} is not an odd integer 1-255")


def _iter_items(
    view: memoryview, start: int, end: int, where: str
) -> Iterator[tuple[int, int, int, int]]:
    """Yield ``(item_type, reserved, body_start, body_end)`` of the items in ``view[start:end]``."""
    pos = start
    while pos < end:
        if end - pos < 4:
            raise InvalidItem(f"{where}: {end - pos} byte(s) left, too short for an item header")
        item_type, reserved, length = _ITEM_HEADER.unpack_from(view, pos)
        body = pos + 4
        stop = body + length
        if stop > end:
            raise InvalidItem(
                f"{where}: item 0x{item_type:02X} item-length {length} overruns its parent "
                f"by {stop - end} byte(s)"
            )
        yield item_type, reserved, body, stop
        pos = stop


# --------------------------------------------------------------------------- A-ASSOCIATE


def _decode_pc_rq(view: memoryview, start: int, end: int) -> PresentationContextRQItem:
    """Presentation Context item 0x20 (PS3.8 9.3.2.2, Table 9-13)."""
    if end - start < 4:
        raise InvalidItem(
            f"Presentation Context item (0x20): item-length {end - start} is shorter than 4"
        )
    context_id = view[start]
    _check_context_id(context_id, "Presentation Context item (0x20) Presentation-context-ID")
    where = f"Presentation Context item (0x20) ID {context_id}"
    abstract: str | None = None
    transfer: list[str] = []
    for item_type, _reserved, body, stop in _iter_items(view, start + 4, end, where):
        if item_type == 0x30:
            if abstract is not None:
                raise InvalidItem(f"{where}: more than one Abstract Syntax sub-item (0x30)")
            abstract = _decode_uid(bytes(view[body:stop]), f"{where} Abstract-syntax-name")
        elif item_type == 0x40:
            transfer.append(_decode_uid(bytes(view[body:stop]), f"{where} Transfer-syntax-name"))
        elif item_type in _CONTEXT_LEVEL_MISPLACED:
            raise InvalidItem(f"{where}: item 0x{item_type:02X} does not belong here")
        # other types: unrecognized, skipped (PS3.8 9.3.1)
    if abstract is None:
        raise InvalidItem(f"{where}: no Abstract Syntax sub-item (0x30)")
    if not transfer:
        raise InvalidItem(f"{where}: no Transfer Syntax sub-item (0x40)")
    return PresentationContextRQItem(context_id, abstract, tuple(transfer))


def _decode_pc_ac(view: memoryview, start: int, end: int) -> PresentationContextACItem:
    """Presentation Context item 0x21 (PS3.8 9.3.3.2, Table 9-18)."""
    if end - start < 4:
        raise InvalidItem(
            f"Presentation Context item (0x21): item-length {end - start} is shorter than 4"
        )
    context_id = view[start]
    _check_context_id(context_id, "Presentation Context item (0x21) Presentation-context-ID")
    where = f"Presentation Context item (0x21) ID {context_id}"
    result = view[start + 2]
    if result > 4:
        raise InvalidParameterValue(f"{where}: Result/Reason {result} is not 0-4")
    raw: bytes | None = None
    for item_type, _reserved, body, stop in _iter_items(view, start + 4, end, where):
        if item_type == 0x40:
            if raw is not None:
                raise InvalidItem(f"{where}: more than one Transfer Syntax sub-item (0x40)")
            raw = bytes(view[body:stop])
        elif item_type == 0x30 or item_type in _CONTEXT_LEVEL_MISPLACED:
            raise InvalidItem(f"{where}: item 0x{item_type:02X} does not belong here")
    if result == 0:
        if raw is None:
            raise InvalidItem(f"{where}: accepted but no Transfer Syntax sub-item (0x40)")
        transfer = _decode_uid(raw, f"{where} Transfer-syntax-name")
    else:
        # Not significant and not to be tested when the context is rejected (Table 9-18);
        # keep it if it is readable so that a well-formed PDU round-trips.
        transfer = ""
        if raw:
            try:
                transfer = _decode_uid(raw, "")
            except ProtocolError:
                transfer = ""
    return PresentationContextACItem(context_id, result, transfer)


def _split_uid(view: memoryview, pos: int, end: int, where: str, field: str) -> tuple[str, int]:
    """A 2-byte length followed by a UID; returns the UID and the position after it."""
    if end - pos < 2:
        raise InvalidItem(f"{where}: no room for the {field} length")
    (length,) = _U16.unpack_from(view, pos)
    pos += 2
    if pos + length > end:
        raise InvalidItem(f"{where}: {field} length {length} overruns the sub-item")
    return _decode_uid(bytes(view[pos : pos + length]), f"{where} {field}"), pos + length


def _decode_user_information(view: memoryview, start: int, end: int) -> UserInformationItem:
    """User Information item 0x50 and its sub-items (PS3.8 9.3.2.3, Annex D; PS3.7 D.3.3)."""
    items: list[UserInformationSubItem] = []
    for item_type, reserved, body, stop in _iter_items(
        view, start, end, "User Information item (0x50)"
    ):
        length = stop - body
        if item_type not in _USER_INFO_KNOWN:
            # Unknown sub-items are kept but otherwise ignored (PS3.8 D.2 note).
            items.append(UnknownSubItem(item_type, bytes(view[body:stop]), reserved))
        elif item_type == 0x51:
            if length != 4:
                raise InvalidItem(
                    f"Maximum Length sub-item (0x51): item-length {length}, must be 4"
                )
            items.append(MaximumLengthSubItem(_U32.unpack_from(view, body)[0]))
        elif item_type == 0x52:
            uid = _decode_uid(
                bytes(view[body:stop]), "Implementation Class UID sub-item (0x52) UID"
            )
            items.append(ImplementationClassUIDSubItem(uid))
        elif item_type == 0x53:
            if length != 4:
                raise InvalidItem(
                    f"Asynchronous Operations Window sub-item (0x53): item-length {length}, "
                    "must be 4"
                )
            invoked, performed = _U16x2.unpack_from(view, body)
            items.append(AsynchronousOperationsWindowSubItem(invoked, performed))
        elif item_type == 0x54:
            where = "SCP/SCU Role Selection sub-item (0x54)"
            uid, pos = _split_uid(view, body, stop, where, "SOP-class-uid")
            if stop - pos != 2:
                raise InvalidItem(
                    f"{where}: {stop - pos} byte(s) after the UID, expected SCU-role and SCP-role"
                )
            items.append(RoleSelectionSubItem(uid, view[pos] != 0, view[pos + 1] != 0))
        elif item_type == 0x55:
            # Informative only; decoded leniently (see the module docstring).
            items.append(ImplementationVersionNameSubItem(bytes(view[body:stop]).decode("latin-1")))
        elif item_type == 0x56:
            where = "SOP Class Extended Negotiation sub-item (0x56)"
            uid, pos = _split_uid(view, body, stop, where, "SOP-class-uid")
            items.append(SOPClassExtendedNegotiationSubItem(uid, bytes(view[pos:stop])))
        elif item_type == 0x57:
            items.append(_decode_common_extended(view, body, stop, reserved))
        elif item_type == 0x58:
            items.append(_decode_user_identity_rq(view, body, stop))
        else:  # 0x59
            where = "User Identity sub-item (0x59)"
            if length < 2:
                raise InvalidItem(f"{where}: item-length {length} has no Server-response-length")
            (size,) = _U16.unpack_from(view, body)
            if 2 + size != length:
                raise InvalidItem(
                    f"{where}: Server-response-length {size} does not match item-length {length}"
                )
            items.append(UserIdentityACSubItem(bytes(view[body + 2 : stop])))
    return UserInformationItem(tuple(items))


def _decode_common_extended(
    view: memoryview, body: int, stop: int, version: int
) -> SOPClassCommonExtendedNegotiationSubItem:
    """SOP Class Common Extended Negotiation sub-item 0x57 (PS3.7 D.3.3.6)."""
    where = "SOP Class Common Extended Negotiation sub-item (0x57)"
    sop_class, pos = _split_uid(view, body, stop, where, "SOP-class-uid")
    service_class, pos = _split_uid(view, pos, stop, where, "Service-class-uid")
    if stop - pos < 2:
        raise InvalidItem(f"{where}: no Related-general-sop-class-identification-length")
    (related_length,) = _U16.unpack_from(view, pos)
    pos += 2
    if pos + related_length != stop:
        raise InvalidItem(
            f"{where}: Related-general-sop-class-identification-length {related_length} does not "
            f"match the {stop - pos} byte(s) left"
        )
    related: list[str] = []
    while pos < stop:
        uid, pos = _split_uid(view, pos, stop, where, "Related-general-sop-class-uid")
        related.append(uid)
    return SOPClassCommonExtendedNegotiationSubItem(
        sop_class, service_class, tuple(related), version
    )


def _decode_user_identity_rq(view: memoryview, body: int, stop: int) -> UserIdentityRQSubItem:
    """User Identity sub-item 0x58 (PS3.7 D.3.3.7.1)."""
    where = "User Identity sub-item (0x58)"
    if stop - body < 4:
        raise InvalidItem(f"{where}: item-length {stop - body} is shorter than 6")
    identity_type, positive, primary_length = _USER_IDENTITY_RQ_HEAD.unpack_from(view, body)
    pos = body + 4
    if pos + primary_length + 2 > stop:
        raise InvalidItem(f"{where}: Primary-field-length {primary_length} overruns the sub-item")
    primary = bytes(view[pos : pos + primary_length])
    pos += primary_length
    (secondary_length,) = _U16.unpack_from(view, pos)
    pos += 2
    if pos + secondary_length != stop:
        raise InvalidItem(
            f"{where}: Secondary-field-length {secondary_length} does not match the "
            f"{stop - pos} byte(s) left"
        )
    secondary = bytes(view[pos:stop])
    return UserIdentityRQSubItem(identity_type, positive != 0, primary, secondary)


def _decode_associate(view: memoryview, length: int, is_rq: bool) -> AssociateRQ | AssociateAC:
    """A-ASSOCIATE-RQ (PS3.8 9.3.2) or -AC (9.3.3)."""
    name = "A-ASSOCIATE-RQ" if is_rq else "A-ASSOCIATE-AC"
    if length < _ASSOC_FIXED_LENGTH:
        raise InvalidPDU(f"{name}: PDU-length {length} is shorter than the 68-byte fixed part")
    version, _reserved, called_raw, calling_raw, reserved = _ASSOC_FIXED.unpack_from(view, 6)
    # A version-1 receiver tests only bit 0 (Tables 9-11 and 9-17).
    if not version & 1:
        raise BadProtocolVersion(
            f"{name}: Protocol-version 0x{version:04X} does not have bit 0 (version 1) set"
        )
    if is_rq:
        called = _decode_rq_ae_title(called_raw, f"{name} Called-AE-title")
        calling = _decode_rq_ae_title(calling_raw, f"{name} Calling-AE-title")
    else:
        called = _decode_ac_ae_title(called_raw)
        calling = _decode_ac_ae_title(calling_raw)

    app_context: str | None = None
    user_info: UserInformationItem | None = None
    rq_contexts: list[PresentationContextRQItem] = []
    ac_contexts: list[PresentationContextACItem] = []
    seen_ids: set[int] = set()
    context_type = 0x20 if is_rq else 0x21
    end = _PDU_HEADER_LENGTH + length
    for item_type, _res, body, stop in _iter_items(view, 74, end, f"{name} variable items"):
        if item_type == 0x10:
            if app_context is not None:
                raise InvalidItem(f"{name}: more than one Application Context item (0x10)")
            app_context = _decode_uid(bytes(view[body:stop]), f"{name} Application-context-name")
        elif item_type == context_type:
            context: PresentationContextRQItem | PresentationContextACItem
            if is_rq:
                context = _decode_pc_rq(view, body, stop)
                rq_contexts.append(context)
            else:
                context = _decode_pc_ac(view, body, stop)
                ac_contexts.append(context)
            if context.context_id in seen_ids:
                raise InvalidParameterValue(
                    f"{name}: Presentation-context-ID {context.context_id} used twice"
                )
            seen_ids.add(context.context_id)
        elif item_type == 0x50:
            if user_info is not None:
                raise InvalidItem(f"{name}: more than one User Information item (0x50)")
            user_info = _decode_user_information(view, body, stop)
        elif item_type in (0x20, 0x21) or item_type in _PDU_LEVEL_MISPLACED:
            raise InvalidItem(f"{name}: item 0x{item_type:02X} does not belong in this PDU")
        # any other item type is unrecognized and skipped (PS3.8 9.3.1)
    if app_context is None:
        raise InvalidItem(f"{name}: no Application Context item (0x10)")
    if not seen_ids:
        raise InvalidItem(f"{name}: no Presentation Context item (0x{context_type:02X})")
    if user_info is None:
        raise InvalidItem(f"{name}: no User Information item (0x50)")
    if is_rq:
        return AssociateRQ(
            called_ae_title=called,
            calling_ae_title=calling,
            presentation_contexts=tuple(rq_contexts),
            user_information=user_info,
            application_context=app_context,
            protocol_version=version,
        )
    return AssociateAC(
        called_ae_title=called,
        calling_ae_title=calling,
        presentation_contexts=tuple(ac_contexts),
        user_information=user_info,
        application_context=app_context,
        protocol_version=version,
        reserved=reserved,
    )


def _decode_rq(view: memoryview, length: int) -> PDU:
    return _decode_associate(view, length, True)


def _decode_ac(view: memoryview, length: int) -> PDU:
    return _decode_associate(view, length, False)


# --------------------------------------------------------------------------- fixed-size PDUs


def _check_fixed_length(length: int, ptype: int) -> None:
    if length != 4:
        raise InvalidPDU(f"{_PDU_NAMES[ptype]}: PDU-length {length}, must be 4")


def _decode_rj(view: memoryview, length: int) -> PDU:
    """A-ASSOCIATE-RJ (PS3.8 9.3.4): reserved, result, source, reason."""
    _check_fixed_length(length, 0x03)
    _reserved, result, source, reason = _FIXED4.unpack_from(view, 6)
    return AssociateRJ(result, source, reason)


def _decode_release_rq(view: memoryview, length: int) -> PDU:
    _check_fixed_length(length, 0x05)
    return ReleaseRQ()


def _decode_release_rp(view: memoryview, length: int) -> PDU:
    _check_fixed_length(length, 0x06)
    return ReleaseRP()


def _decode_abort(view: memoryview, length: int) -> PDU:
    """A-ABORT (PS3.8 9.3.8): two reserved bytes, source, reason."""
    _check_fixed_length(length, 0x07)
    return Abort(view[8], view[9])


# --------------------------------------------------------------------------- P-DATA-TF


def _decode_pdata(view: memoryview, length: int) -> PDU:
    """P-DATA-TF (PS3.8 9.3.5): PDV values are zero-copy slices of ``view``."""
    end = _PDU_HEADER_LENGTH + length
    pos = _PDU_HEADER_LENGTH
    pdvs: list[PresentationDataValue] = []
    unpack = _PDV_HEADER.unpack_from
    while pos < end:
        if end - pos < 6:
            raise InvalidItem(
                f"P-DATA-TF: {end - pos} byte(s) left, too short for a PDV item (at least 6)"
            )
        item_length, context_id, control = unpack(view, pos)
        stop = pos + 4 + item_length
        if item_length < 2:
            raise InvalidItem(f"P-DATA-TF: PDV Item-length {item_length} is below 2")
        if stop > end:
            raise InvalidItem(
                f"P-DATA-TF: PDV Item-length {item_length} overruns the PDU by {stop - end} byte(s)"
            )
        if not context_id & 1:
            raise InvalidParameterValue(
                f"P-DATA-TF: PDV Presentation-context-ID {context_id} is not odd"
            )
        pdvs.append(PresentationDataValue(context_id, control, view[pos + 6 : stop]))
        pos = stop
    if not pdvs:
        raise InvalidPDU("P-DATA-TF: no Presentation-data-value item")
    return PDataTF(tuple(pdvs))


_DECODERS: dict[int, Callable[[memoryview, int], PDU]] = {
    0x01: _decode_rq,
    0x02: _decode_ac,
    0x03: _decode_rj,
    0x04: _decode_pdata,
    0x05: _decode_release_rq,
    0x06: _decode_release_rp,
    0x07: _decode_abort,
}


def decode_pdu(data: bytes | bytearray | memoryview) -> PDU:
    """Decode exactly one complete PDU, its 6-byte header included (PS3.8 9.3).

    P-DATA values are ``memoryview`` slices of ``data`` (zero copy), so ``data`` must not be
    modified while they are in use.  Raises a :class:`ProtocolError` subclass naming the field
    for any malformed input, and nothing else.
    """
    view = _bytes_view(data)
    size = len(view)
    if size < _PDU_HEADER_LENGTH:
        raise TruncatedPDU(f"PDU header: {size} byte(s), a PDU header has 6")
    ptype, length = _PDU_HEADER.unpack_from(view, 0)
    decoder = _DECODERS.get(ptype)
    if decoder is None:
        raise UnrecognizedPDU(f"PDU-type 0x{ptype:02X} is not a DICOM UL PDU type")
    end = _PDU_HEADER_LENGTH + length
    if size < end:
        raise TruncatedPDU(
            f"{_PDU_NAMES[ptype]}: PDU-length {length} but only {size - 6} byte(s) follow"
        )
    if size > end:
        raise TruncatedPDU(
            f"{_PDU_NAMES[ptype]}: {size - end} byte(s) after the PDU-length {length}"
        )
    return decoder(view, length)


# --------------------------------------------------------------------------- encoders


def _u8(value: int, field: str) -> int:
    if not isinstance(value, int) or not 0 <= value <= 0xFF:
        raise LocalProtocolError(f"{field}: {value!r} does not fit in one byte")
    return value


def _u16(value: int, field: str) -> int:
    if not isinstance(value, int) or not 0 <= value <= _MAX_U16:
        raise LocalProtocolError(f"{field}: {value!r} does not fit in 16 bits")
    return value


def _u32(value: int, field: str) -> int:
    if not isinstance(value, int) or not 0 <= value <= _MAX_U32:
        raise LocalProtocolError(f"{field}: {value!r} does not fit in 32 bits")
    return value


def _context_id(value: int, field: str) -> int:
    if not isinstance(value, int) or not 1 <= value <= 255 or not value & 1:
        raise LocalProtocolError(f"{field}: {value!r} is not an odd integer 1-255")
    return value


def _blob(value: bytes | bytearray | memoryview, field: str) -> bytes:
    if not isinstance(value, (bytes, bytearray, memoryview)):
        raise LocalProtocolError(f"{field}: {type(value).__name__} is not bytes")
    return bytes(value)


def _encode_uid(value: str, field: str, required: bool = True) -> bytes:
    if not isinstance(value, str) or not value.isascii() or not value.isprintable():
        raise LocalProtocolError(f"{field}: {value!r} is not a printable ASCII UID")
    if required and not value:
        raise LocalProtocolError(f"{field}: a UID is required")
    return value.encode("ascii")


def _encode_rq_ae_title(value: str, field: str) -> bytes:
    if (
        not isinstance(value, str)
        or not value.isascii()
        or not value.isprintable()
        or "\\" in value
    ):
        raise LocalProtocolError(f"{field}: {value!r} has characters outside the AE VR")
    if len(value) > 16:
        raise LocalProtocolError(f"{field}: {value!r} is longer than 16 characters")
    if not value.strip(" "):
        raise LocalProtocolError(f"{field}: an AE title must not be empty or all spaces")
    return value.encode("ascii").ljust(16, b" ")


def _encode_ac_ae_title(value: str, field: str) -> bytes:
    # Reserved field echoing the RQ (Table 9-17): any byte the decoder may have read.
    if not isinstance(value, str) or len(value) > 16:
        raise LocalProtocolError(f"{field}: {value!r} is not a string of at most 16 characters")
    try:
        raw = value.encode("latin-1")
    except UnicodeEncodeError:
        raise LocalProtocolError(f"{field}: {value!r} has characters outside Latin-1") from None
    return raw.ljust(16, b" ")


def _item(item_type: int, body: bytes, field: str, reserved: int = 0) -> bytes:
    if len(body) > _MAX_U16:
        raise LocalProtocolError(
            f"{field}: {len(body)} bytes exceed the 65535-byte item-length limit"
        )
    return _ITEM_HEADER.pack(item_type, reserved, len(body)) + body


def _with_u16_length(raw: bytes, field: str) -> bytes:
    if len(raw) > _MAX_U16:
        raise LocalProtocolError(f"{field}: {len(raw)} bytes exceed the 16-bit length field")
    return _U16.pack(len(raw)) + raw


def _encode_sub_item(item: UserInformationSubItem) -> bytes:
    """One user-information sub-item (PS3.8 Annex D; PS3.7 D.3.3)."""
    if isinstance(item, MaximumLengthSubItem):
        value = _u32(item.maximum_length, "Maximum Length sub-item maximum_length")
        return _item(0x51, _U32.pack(value), "Maximum Length sub-item")
    if isinstance(item, ImplementationClassUIDSubItem):
        field = "Implementation Class UID sub-item"
        return _item(0x52, _encode_uid(item.uid, f"{field} uid"), field)
    if isinstance(item, AsynchronousOperationsWindowSubItem):
        field = "Asynchronous Operations Window sub-item"
        body = _U16x2.pack(
            _u16(item.max_operations_invoked, f"{field} max_operations_invoked"),
            _u16(item.max_operations_performed, f"{field} max_operations_performed"),
        )
        return _item(0x53, body, field)
    if isinstance(item, RoleSelectionSubItem):
        field = "SCP/SCU Role Selection sub-item"
        uid = _with_u16_length(_encode_uid(item.sop_class_uid, f"{field} sop_class_uid"), field)
        roles = bytes((1 if item.scu_role else 0, 1 if item.scp_role else 0))
        return _item(0x54, uid + roles, field)
    if isinstance(item, ImplementationVersionNameSubItem):
        field = "Implementation Version Name sub-item"
        name = item.name
        if (
            not isinstance(name, str)
            or not 1 <= len(name) <= 16
            or not name.isascii()
            or not name.isprintable()
        ):
            raise LocalProtocolError(f"{field} name: {name!r} is not 1-16 ISO 646 characters")
        return _item(0x55, name.encode("ascii"), field)
    if isinstance(item, SOPClassExtendedNegotiationSubItem):
        field = "SOP Class Extended Negotiation sub-item"
        uid = _with_u16_length(_encode_uid(item.sop_class_uid, f"{field} sop_class_uid"), field)
        info = _blob(
            item.service_class_application_information,
            f"{field} service_class_application_information",
        )
        return _item(0x56, uid + info, field)
    if isinstance(item, SOPClassCommonExtendedNegotiationSubItem):
        field = "SOP Class Common Extended Negotiation sub-item"
        related = b"".join(
            _with_u16_length(_encode_uid(uid, f"{field} related_general_sop_classes"), field)
            for uid in item.related_general_sop_classes
        )
        body = b"".join(
            (
                _with_u16_length(_encode_uid(item.sop_class_uid, f"{field} sop_class_uid"), field),
                _with_u16_length(
                    _encode_uid(item.service_class_uid, f"{field} service_class_uid"), field
                ),
                _with_u16_length(related, field),
            )
        )
        return _item(0x57, body, field, _u8(item.version, f"{field} version"))
    if isinstance(item, UserIdentityRQSubItem):
        field = "User Identity sub-item (RQ)"
        primary = _blob(item.primary_field, f"{field} primary_field")
        secondary = _blob(item.secondary_field, f"{field} secondary_field")
        body = b"".join(
            (
                bytes(
                    (
                        _u8(item.identity_type, f"{field} identity_type"),
                        1 if item.positive_response_requested else 0,
                    )
                ),
                _with_u16_length(primary, f"{field} primary_field"),
                _with_u16_length(secondary, f"{field} secondary_field"),
            )
        )
        return _item(0x58, body, field)
    if isinstance(item, UserIdentityACSubItem):
        field = "User Identity sub-item (AC)"
        response = _blob(item.server_response, f"{field} server_response")
        return _item(0x59, _with_u16_length(response, field), field)
    if isinstance(item, UnknownSubItem):
        field = "unknown user information sub-item"
        item_type = _u8(item.item_type, f"{field} item_type")
        if item_type in _USER_INFO_KNOWN:
            raise LocalProtocolError(
                f"{field}: item_type 0x{item_type:02X} is a known sub-item type; use its dataclass"
            )
        return _item(
            item_type,
            _blob(item.data, f"{field} data"),
            field,
            _u8(item.reserved, f"{field} reserved"),
        )
    raise LocalProtocolError(f"{type(item).__name__} is not a user information sub-item")


def _encode_user_information(user_info: UserInformationItem) -> bytes:
    if not isinstance(user_info, UserInformationItem):
        raise LocalProtocolError(
            f"user_information: {type(user_info).__name__} is not a UserInformationItem"
        )
    body = b"".join(_encode_sub_item(item) for item in user_info.sub_items)
    return _item(0x50, body, "User Information item")


def _encode_pc_rq(context: PresentationContextRQItem) -> bytes:
    if not isinstance(context, PresentationContextRQItem):
        raise LocalProtocolError(f"{type(context).__name__} is not a PresentationContextRQItem")
    field = "Presentation Context item (RQ)"
    context_id = _context_id(context.context_id, f"{field} context_id")
    if not context.transfer_syntaxes:
        raise LocalProtocolError(f"{field} {context_id}: at least one transfer syntax is required")
    parts = [
        bytes((context_id, 0, 0, 0)),
        _item(0x30, _encode_uid(context.abstract_syntax, f"{field} abstract_syntax"), field),
    ]
    parts.extend(
        _item(0x40, _encode_uid(uid, f"{field} transfer_syntaxes"), field)
        for uid in context.transfer_syntaxes
    )
    return _item(0x20, b"".join(parts), field)


def _encode_pc_ac(context: PresentationContextACItem) -> bytes:
    if not isinstance(context, PresentationContextACItem):
        raise LocalProtocolError(f"{type(context).__name__} is not a PresentationContextACItem")
    field = "Presentation Context item (AC)"
    context_id = _context_id(context.context_id, f"{field} context_id")
    result = context.result
    if not isinstance(result, int) or not 0 <= result <= 4:
        raise LocalProtocolError(f"{field} result: {result!r} is not 0-4")
    transfer = _encode_uid(context.transfer_syntax, f"{field} transfer_syntax", result == 0)
    body = bytes((context_id, 0, result, 0)) + _item(0x40, transfer, field)
    return _item(0x21, body, field)


def _check_unique_ids(ids: list[int], name: str) -> None:
    if len(set(ids)) != len(ids):
        raise LocalProtocolError(f"{name}: presentation context IDs are not unique")


def _encode_associate(pdu: AssociateRQ | AssociateAC) -> bytes:
    """A-ASSOCIATE-RQ (PS3.8 9.3.2) or -AC (9.3.3)."""
    is_rq = isinstance(pdu, AssociateRQ)
    name = "A-ASSOCIATE-RQ" if is_rq else "A-ASSOCIATE-AC"
    version = _u16(pdu.protocol_version, f"{name} protocol_version")
    if isinstance(pdu, AssociateRQ):
        called = _encode_rq_ae_title(pdu.called_ae_title, f"{name} called_ae_title")
        calling = _encode_rq_ae_title(pdu.calling_ae_title, f"{name} calling_ae_title")
        reserved = bytes(32)
        contexts = [_encode_pc_rq(c) for c in pdu.presentation_contexts]
    else:
        called = _encode_ac_ae_title(pdu.called_ae_title, f"{name} called_ae_title")
        calling = _encode_ac_ae_title(pdu.calling_ae_title, f"{name} calling_ae_title")
        reserved = _blob(pdu.reserved, f"{name} reserved")
        if len(reserved) != 32:
            raise LocalProtocolError(f"{name} reserved: {len(reserved)} bytes, must be 32")
        contexts = [_encode_pc_ac(c) for c in pdu.presentation_contexts]
    if not contexts:
        raise LocalProtocolError(f"{name}: at least one presentation context is required")
    _check_unique_ids([c.context_id for c in pdu.presentation_contexts], name)
    app_context = _encode_uid(pdu.application_context, f"{name} application_context")
    variable = b"".join(
        (
            _item(0x10, app_context, f"{name} Application Context item"),
            *contexts,
            _encode_user_information(pdu.user_information),
        )
    )
    length = _ASSOC_FIXED_LENGTH + len(variable)
    if length > _MAX_U32:
        raise LocalProtocolError(f"{name}: PDU-length {length} does not fit in 32 bits")
    return b"".join(
        (
            _PDU_HEADER.pack(0x01 if is_rq else 0x02, length),
            _ASSOC_FIXED.pack(version, 0, called, calling, reserved),
            variable,
        )
    )


def _encode_pdata_pdu(pdu: PDataTF) -> bytes:
    """P-DATA-TF (PS3.8 9.3.5)."""
    if not pdu.pdvs:
        raise LocalProtocolError("P-DATA-TF: at least one PDV is required")
    parts: list[bytes | memoryview] = [b""]
    length = 0
    for pdv in pdu.pdvs:
        if not isinstance(pdv, PresentationDataValue):
            raise LocalProtocolError(f"P-DATA-TF: {type(pdv).__name__} is not a PDV")
        data = pdv.data
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise LocalProtocolError(f"P-DATA-TF PDV data: {type(data).__name__} is not bytes")
        size = data.nbytes if isinstance(data, memoryview) else len(data)
        item_length = _u32(size + 2, "P-DATA-TF PDV item-length")
        parts.append(
            _PDV_HEADER.pack(
                item_length,
                _context_id(pdv.context_id, "P-DATA-TF PDV context_id"),
                _u8(pdv.message_control_header, "P-DATA-TF PDV message_control_header"),
            )
        )
        parts.append(data)
        length += 4 + item_length
    parts[0] = _PDU_HEADER.pack(0x04, _u32(length, "P-DATA-TF PDU-length"))
    return b"".join(parts)


def _encode_fixed(ptype: int, body: bytes) -> bytes:
    return _PDU_HEADER.pack(ptype, 4) + body


def encode_pdu(pdu: PDU) -> bytes:
    """Encode a PDU dataclass to bytes (PS3.8 9.3).

    AE titles are padded with spaces to 16 bytes, UIDs are not padded, reserved bytes are zero
    except :attr:`AssociateAC.reserved` and the AC's echoed AE-title fields.  Raises
    :class:`LocalProtocolError` for values that cannot be encoded.
    """
    if isinstance(pdu, PDataTF):
        return _encode_pdata_pdu(pdu)
    if isinstance(pdu, (AssociateRQ, AssociateAC)):
        return _encode_associate(pdu)
    if isinstance(pdu, AssociateRJ):
        name = "A-ASSOCIATE-RJ"
        return _encode_fixed(
            0x03,
            bytes(
                (
                    0,
                    _u8(pdu.result, f"{name} result"),
                    _u8(pdu.source, f"{name} source"),
                    _u8(pdu.reason, f"{name} reason"),
                )
            ),
        )
    if isinstance(pdu, ReleaseRQ):
        return _encode_fixed(0x05, bytes(4))
    if isinstance(pdu, ReleaseRP):
        return _encode_fixed(0x06, bytes(4))
    if isinstance(pdu, Abort):
        return _encode_fixed(
            0x07,
            bytes((0, 0, _u8(pdu.source, "A-ABORT source"), _u8(pdu.reason, "A-ABORT reason"))),
        )
    raise LocalProtocolError(f"{type(pdu).__name__} is not a PDU")


def encode_pdata(
    context_id: int, message_control_header: int, payload: bytes | memoryview
) -> bytes:
    """Encode a P-DATA-TF PDU holding one PDV (PS3.8 9.3.5, Annex E) with a single copy.

    The hot path of sending: one 12-byte header struct and one concatenation.
    """
    size = payload.nbytes if isinstance(payload, memoryview) else len(payload)
    if not isinstance(context_id, int) or not 1 <= context_id <= 255 or not context_id & 1:
        raise LocalProtocolError(
            f"P-DATA-TF context_id: {context_id!r} is not an odd integer 1-255"
        )
    if not isinstance(message_control_header, int) or not 0 <= message_control_header <= 0xFF:
        raise LocalProtocolError(
            f"P-DATA-TF message_control_header: {message_control_header!r} does not fit in a byte"
        )
    if size > _MAX_U32 - 6:
        raise LocalProtocolError(f"P-DATA-TF: payload of {size} bytes is too long for one PDU")
    return (
        _PDATA_HEADER.pack(0x04, 0, size + 6, size + 2, context_id, message_control_header)
        + payload
    )


# --------------------------------------------------------------------------- framer


class PDUFramer:
    """Cut a received byte stream into PDUs (PS3.8 9.3.1: 6-byte header with PDU-length).

    ``feed`` bytes as they arrive, then call :meth:`next_pdu` until it returns ``None``.  The
    header is checked as soon as its 6 bytes are in: an unknown PDU type raises
    :class:`UnrecognizedPDU`; a P-DATA-TF longer than ``max_pdata_length`` or any other PDU
    longer than ``max_other_length`` (PDU-length field, 0 = no limit) raises
    :class:`PDUTooLarge`, and a release/abort/reject PDU whose length is not 4 raises
    :class:`InvalidPDU`, all before the body is buffered.

    Copies: a PDU lying inside one fed chunk is decoded from a ``memoryview`` of that chunk
    (its P-DATA values keep the chunk alive, so fed buffers must not be modified afterwards);
    a PDU spanning chunks is joined once.  Provided the caller drains :meth:`next_pdu` after
    each :meth:`feed`, the framer holds at most one incomplete PDU plus one fed chunk.

    After any error the framer is dead: every later call raises the same error type.
    """

    __slots__ = (
        "_buffered",
        "_chunks",
        "_error",
        "_max_other",
        "_max_pdata",
        "_need",
        "_offset",
        "_ptype",
    )

    def __init__(self, max_pdata_length: int, max_other_length: int = 1 << 20) -> None:
        if max_pdata_length < 0 or max_other_length < 0:
            raise ValueError("PDU length limits must be >= 0 (0 = no limit)")
        self._max_pdata = max_pdata_length
        self._max_other = max_other_length
        self._chunks: deque[memoryview] = deque()
        self._offset = 0  # consumed bytes of self._chunks[0]
        self._buffered = 0
        self._need = 0  # total size of the current PDU once its header is checked, else 0
        self._ptype = 0
        self._error: ProtocolError | None = None

    @property
    def buffered(self) -> int:
        """Bytes received and not yet returned as a PDU."""
        return self._buffered

    def _raise_dead(self) -> None:
        error = self._error
        assert error is not None
        raise type(error)(error.message)

    def _fail(self, error: ProtocolError) -> ProtocolError:
        self._error = error
        self._chunks.clear()
        self._offset = 0
        self._buffered = 0
        return error

    def feed(self, data: bytes | memoryview) -> None:
        """Add received bytes; raises if they complete a bad PDU header."""
        if self._error is not None:
            self._raise_dead()
        view = _bytes_view(data)
        if not len(view):
            return
        self._chunks.append(view)
        self._buffered += len(view)
        if not self._need and self._buffered >= _PDU_HEADER_LENGTH:
            self._read_header()

    def next_pdu(self) -> PDU | None:
        """The next complete PDU, or ``None`` when more bytes are needed."""
        if self._error is not None:
            self._raise_dead()
        if not self._need:
            if self._buffered < _PDU_HEADER_LENGTH:
                return None
            self._read_header()
        need = self._need
        if self._buffered < need:
            return None
        view = self._take(need)
        self._need = 0
        try:
            return _DECODERS[self._ptype](view, need - _PDU_HEADER_LENGTH)
        except ProtocolError as error:
            raise self._fail(error) from None

    def _read_header(self) -> None:
        first = self._chunks[0]
        offset = self._offset
        if len(first) - offset >= _PDU_HEADER_LENGTH:
            ptype, length = _PDU_HEADER.unpack_from(first, offset)
        else:
            header = bytearray()
            for chunk in self._chunks:
                header += chunk[offset : offset + _PDU_HEADER_LENGTH - len(header)]
                offset = 0
                if len(header) == _PDU_HEADER_LENGTH:
                    break
            ptype, length = _PDU_HEADER.unpack(header)
        name = _PDU_NAMES.get(ptype)
        if name is None:
            raise self._fail(UnrecognizedPDU(f"PDU-type 0x{ptype:02X} is not a DICOM UL PDU type"))
        limit = self._max_pdata if ptype == _P_DATA_TF else self._max_other
        if limit and length > limit:
            raise self._fail(
                PDUTooLarge(f"{name}: PDU-length {length} exceeds the local maximum {limit}")
            )
        if ptype in _FIXED_LENGTH_TYPES and length != 4:
            raise self._fail(InvalidPDU(f"{name}: PDU-length {length}, must be 4"))
        if ptype in (0x01, 0x02) and length < _ASSOC_FIXED_LENGTH:
            raise self._fail(
                InvalidPDU(f"{name}: PDU-length {length} is shorter than the 68-byte fixed part")
            )
        self._ptype = ptype
        self._need = _PDU_HEADER_LENGTH + length

    def _take(self, size: int) -> memoryview:
        """Remove ``size`` buffered bytes: a slice of one chunk, or one join across chunks."""
        chunks = self._chunks
        first = chunks[0]
        offset = self._offset
        available = len(first) - offset
        self._buffered -= size
        if available >= size:
            if available == size:
                chunks.popleft()
                self._offset = 0
            else:
                self._offset = offset + size
            return first[offset : offset + size]
        parts = [first[offset:]]
        chunks.popleft()
        remaining = size - available
        while remaining:
            chunk = chunks[0]
            if len(chunk) <= remaining:
                parts.append(chunk)
                chunks.popleft()
                remaining -= len(chunk)
                self._offset = 0
            else:
                parts.append(chunk[:remaining])
                self._offset = remaining
                remaining = 0
        return memoryview(b"".join(parts))
