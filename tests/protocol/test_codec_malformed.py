"""Malformed PDUs: each case asserts the exact ProtocolError subclass, its abort reason and that
the message names the offending field.  Inputs are built with small helpers that follow the
PS3.8 9.3 layouts directly (independent of the codec)."""

from __future__ import annotations

import struct

import pytest

from asyncdicom.protocol.codec import PDUFramer, decode_pdu
from asyncdicom.protocol.errors import (
    AbortReason,
    BadProtocolVersion,
    InvalidItem,
    InvalidParameterValue,
    InvalidPDU,
    ProtocolError,
    TruncatedPDU,
    UnrecognizedPDU,
)

H = bytes.fromhex
APP = b"1.2.840.10008.3.1.1.1"
VERIFICATION = b"1.2.840.10008.1.1"
IMPLICIT_LE = b"1.2.840.10008.1.2"
INVALID = AbortReason.INVALID_PDU_PARAMETER_VALUE


def item(item_type: int, body: bytes, reserved: int = 0) -> bytes:
    return struct.pack(">BBH", item_type, reserved, len(body)) + body


def pdu(pdu_type: int, body: bytes) -> bytes:
    return struct.pack(">BBI", pdu_type, 0, len(body)) + body


def fixed(
    version: bytes = H("0001"), called: bytes = b"CALLED", calling: bytes = b"CALLING"
) -> bytes:
    return version + H("0000") + called.ljust(16) + calling.ljust(16) + bytes(32)


def pc_rq(body: bytes, context_id: int = 1) -> bytes:
    return item(0x20, bytes((context_id, 0, 0, 0)) + body)


def pc_ac(body: bytes, context_id: int = 1, result: int = 0) -> bytes:
    return item(0x21, bytes((context_id, 0, result, 0)) + body)


GOOD_PC = pc_rq(item(0x30, VERIFICATION) + item(0x40, IMPLICIT_LE))
GOOD_PC_AC = pc_ac(item(0x40, IMPLICIT_LE))


def rq(*items: bytes, **kwargs: bytes) -> bytes:
    return pdu(0x01, fixed(**kwargs) + b"".join(items))


def ac(*items: bytes, **kwargs: bytes) -> bytes:
    return pdu(0x02, fixed(**kwargs) + b"".join(items))


def rq_pc(pc: bytes) -> bytes:
    return rq(item(0x10, APP), pc, item(0x50, b""))


def ac_pc(pc: bytes) -> bytes:
    return ac(item(0x10, APP), pc, item(0x50, b""))


def rq_ui(user_data: bytes) -> bytes:
    return rq(item(0x10, APP), GOOD_PC, item(0x50, user_data))


def ac_ui(user_data: bytes) -> bytes:
    return ac(item(0x10, APP), GOOD_PC_AC, item(0x50, user_data))


def sanity() -> None:
    # the builders produce decodable PDUs when nothing is broken
    for data in (rq_pc(GOOD_PC), ac_pc(GOOD_PC_AC), rq_ui(b""), ac_ui(b"")):
        decode_pdu(data)


def test_builders_make_valid_pdus() -> None:
    sanity()


UID25 = b"1.2.840.10008.5.1.4.1.1.2"

# (id, data, exception class, abort reason, fragment of the message)
CASES: list[tuple[str, bytes, type[ProtocolError], AbortReason, str]] = [
    # --- PDU header and length (PS3.8 9.3.1)
    ("empty", b"", TruncatedPDU, INVALID, "PDU header"),
    ("short-header", H("010000"), TruncatedPDU, INVALID, "PDU header"),
    ("five-bytes", H("0500000000"), TruncatedPDU, INVALID, "PDU header"),
    ("length-beyond-data", H("05 00 00000004 0000"), TruncatedPDU, INVALID, "PDU-length"),
    ("length-4gb", H("04 00 ffffffff 00000002 0100"), TruncatedPDU, INVALID, "PDU-length"),
    (
        "trailing-bytes",
        H("05 00 00000004 00000000 00"),
        TruncatedPDU,
        INVALID,
        "after the PDU-length",
    ),
    ("trailing-pdu", H("05 00 00000004 00000000") * 2, TruncatedPDU, INVALID, "after"),
    (
        "unknown-type-0",
        H("00 00 00000004 00000000"),
        UnrecognizedPDU,
        AbortReason.UNRECOGNIZED_PDU,
        "PDU-type 0x00",
    ),
    (
        "unknown-type-8",
        H("08 00 00000004 00000000"),
        UnrecognizedPDU,
        AbortReason.UNRECOGNIZED_PDU,
        "PDU-type 0x08",
    ),
    (
        "unknown-type-ff",
        H("ff 00 00000000"),
        UnrecognizedPDU,
        AbortReason.UNRECOGNIZED_PDU,
        "PDU-type 0xFF",
    ),
    # --- fixed-length PDUs (Tables 9-21, 9-24, 9-25, 9-26)
    (
        "rj-length-3",
        H("03 00 00000003 000101"),
        InvalidPDU,
        INVALID,
        "A-ASSOCIATE-RJ: PDU-length 3",
    ),
    (
        "rj-length-5",
        H("03 00 00000005 0001010100"),
        InvalidPDU,
        INVALID,
        "A-ASSOCIATE-RJ: PDU-length 5",
    ),
    ("release-rq-length-0", H("05 00 00000000"), InvalidPDU, INVALID, "A-RELEASE-RQ: PDU-length 0"),
    ("release-rp-length-6", H("06 00 00000006 000000000000"), InvalidPDU, INVALID, "A-RELEASE-RP"),
    ("abort-length-2", H("07 00 00000002 0002"), InvalidPDU, INVALID, "A-ABORT: PDU-length 2"),
    # --- P-DATA-TF (9.3.5)
    ("pdata-no-pdv", H("04 00 00000000"), InvalidPDU, INVALID, "no Presentation-data-value"),
    (
        "pdata-pdv-length-0",
        H("04 00 00000006 00000000 0100"),
        InvalidItem,
        INVALID,
        "Item-length 0",
    ),
    (
        "pdata-pdv-length-1",
        H("04 00 00000006 00000001 0100"),
        InvalidItem,
        INVALID,
        "Item-length 1",
    ),
    ("pdata-pdv-overrun", H("04 00 00000008 00000005 0103 aabb"), InvalidItem, INVALID, "overruns"),
    ("pdata-pdv-huge", H("04 00 00000008 ffffffff 0103 aabb"), InvalidItem, INVALID, "overruns"),
    (
        "pdata-header-fragment",
        H("04 00 00000009 00000003 010300 0000"),
        InvalidItem,
        INVALID,
        "too short for a PDV",
    ),
    (
        "pdata-trailing-3",
        H("04 00 00000009 00000002 0103 000000"),
        InvalidItem,
        INVALID,
        "too short for a PDV",
    ),
    (
        "pdata-context-even",
        H("04 00 00000006 00000002 0203"),
        InvalidParameterValue,
        INVALID,
        "Presentation-context-ID 2",
    ),
    (
        "pdata-context-0",
        H("04 00 00000007 00000003 0003 ff"),
        InvalidParameterValue,
        INVALID,
        "Presentation-context-ID 0",
    ),
    # --- A-ASSOCIATE fixed part
    ("rq-length-below-68", pdu(0x01, fixed()[:67]), InvalidPDU, INVALID, "68-byte fixed part"),
    ("ac-length-0", pdu(0x02, b""), InvalidPDU, INVALID, "68-byte fixed part"),
    (
        "rq-version-0",
        rq(item(0x10, APP), GOOD_PC, item(0x50, b""), version=H("0000")),
        BadProtocolVersion,
        INVALID,
        "Protocol-version 0x0000",
    ),
    (
        "rq-version-2",
        rq(item(0x10, APP), GOOD_PC, item(0x50, b""), version=H("0002")),
        BadProtocolVersion,
        INVALID,
        "Protocol-version 0x0002",
    ),
    (
        "ac-version-0",
        ac(item(0x10, APP), GOOD_PC_AC, item(0x50, b""), version=H("0000")),
        BadProtocolVersion,
        INVALID,
        "A-ASSOCIATE-AC: Protocol-version",
    ),
    (
        "rq-version-bad-before-items",
        pdu(0x01, fixed(version=H("fffe"))),
        BadProtocolVersion,
        INVALID,
        "bit 0",
    ),
    # --- AE titles (7.1.1.3, PS3.5 AE VR)
    (
        "called-all-spaces",
        rq_pc(GOOD_PC)[:10] + b" " * 16 + rq_pc(GOOD_PC)[26:],
        InvalidParameterValue,
        INVALID,
        "Called-AE-title: all spaces",
    ),
    (
        "calling-all-spaces",
        rq(item(0x10, APP), GOOD_PC, item(0x50, b""), calling=b""),
        InvalidParameterValue,
        INVALID,
        "Calling-AE-title: all spaces",
    ),
    (
        "called-non-ascii",
        rq(item(0x10, APP), GOOD_PC, item(0x50, b""), called=b"CALL\xc9D"),
        InvalidParameterValue,
        INVALID,
        "Called-AE-title: byte 0xC9",
    ),
    (
        "called-control",
        rq(item(0x10, APP), GOOD_PC, item(0x50, b""), called=b"CALL\x01"),
        InvalidParameterValue,
        INVALID,
        "Called-AE-title: byte 0x01",
    ),
    (
        "called-nul-padded",
        rq(item(0x10, APP), GOOD_PC, item(0x50, b""), called=b"SCP".ljust(16, b"\x00")),
        InvalidParameterValue,
        INVALID,
        "Called-AE-title: byte 0x00",
    ),
    (
        "calling-backslash",
        rq(item(0x10, APP), GOOD_PC, item(0x50, b""), calling=b"A\\B"),
        InvalidParameterValue,
        INVALID,
        "Calling-AE-title: byte 0x5C",
    ),
    (
        "calling-del",
        rq(item(0x10, APP), GOOD_PC, item(0x50, b""), calling=b"A\x7f"),
        InvalidParameterValue,
        INVALID,
        "Calling-AE-title: byte 0x7F",
    ),
    # --- variable items of A-ASSOCIATE (9.3.2, 9.3.3)
    (
        "rq-no-app-context",
        rq(GOOD_PC, item(0x50, b"")),
        InvalidItem,
        INVALID,
        "no Application Context item",
    ),
    (
        "rq-no-contexts",
        rq(item(0x10, APP), item(0x50, b"")),
        InvalidItem,
        INVALID,
        "no Presentation Context item (0x20)",
    ),
    (
        "rq-no-user-info",
        rq(item(0x10, APP), GOOD_PC),
        InvalidItem,
        INVALID,
        "no User Information item",
    ),
    (
        "ac-no-contexts",
        ac(item(0x10, APP), item(0x50, b"")),
        InvalidItem,
        INVALID,
        "no Presentation Context item (0x21)",
    ),
    (
        "ac-no-user-info",
        ac(item(0x10, APP), GOOD_PC_AC),
        InvalidItem,
        INVALID,
        "no User Information item",
    ),
    (
        "ac-no-app-context",
        ac(GOOD_PC_AC, item(0x50, b"")),
        InvalidItem,
        INVALID,
        "no Application Context item",
    ),
    ("no-items-at-all", rq(), InvalidItem, INVALID, "no Application Context item"),
    (
        "two-app-contexts",
        rq(item(0x10, APP), item(0x10, APP), GOOD_PC, item(0x50, b"")),
        InvalidItem,
        INVALID,
        "more than one Application Context",
    ),
    (
        "two-user-infos",
        rq(item(0x10, APP), GOOD_PC, item(0x50, b""), item(0x50, b"")),
        InvalidItem,
        INVALID,
        "more than one User Information",
    ),
    (
        "app-context-empty",
        rq(item(0x10, b""), GOOD_PC, item(0x50, b"")),
        InvalidItem,
        INVALID,
        "Application-context-name: empty",
    ),
    (
        "app-context-only-nul",
        rq(item(0x10, b"\x00"), GOOD_PC, item(0x50, b"")),
        InvalidItem,
        INVALID,
        "Application-context-name: empty",
    ),
    (
        "app-context-non-ascii",
        rq(item(0x10, b"1.2.\x80"), GOOD_PC, item(0x50, b"")),
        InvalidParameterValue,
        INVALID,
        "Application-context-name: byte 0x80",
    ),
    (
        "app-context-two-nuls",
        rq(item(0x10, APP + b"\x00\x00"), GOOD_PC, item(0x50, b"")),
        InvalidParameterValue,
        INVALID,
        "Application-context-name: byte 0x00",
    ),
    (
        "ac-item-in-rq",
        rq(item(0x10, APP), GOOD_PC, GOOD_PC_AC, item(0x50, b"")),
        InvalidItem,
        INVALID,
        "item 0x21 does not belong",
    ),
    (
        "rq-item-in-ac",
        ac(item(0x10, APP), GOOD_PC_AC, GOOD_PC, item(0x50, b"")),
        InvalidItem,
        INVALID,
        "item 0x20 does not belong",
    ),
    (
        "sub-item-at-pdu-level",
        rq(item(0x10, APP), GOOD_PC, item(0x51, bytes(4)), item(0x50, b"")),
        InvalidItem,
        INVALID,
        "item 0x51 does not belong",
    ),
    (
        "item-header-truncated",
        pdu(0x01, fixed() + item(0x10, APP) + GOOD_PC + item(0x50, b"") + H("1000 00")),
        InvalidItem,
        INVALID,
        "too short for an item header",
    ),
    (
        "item-overruns-pdu",
        pdu(0x01, fixed() + item(0x10, APP) + GOOD_PC + H("5000 0010") + bytes(4)),
        InvalidItem,
        INVALID,
        "A-ASSOCIATE-RQ variable items: item 0x50 item-length 16 overruns",
    ),
    (
        "unknown-item-overruns-pdu",
        pdu(0x01, fixed() + item(0x10, APP) + GOOD_PC + item(0x50, b"") + H("7700 0010")),
        InvalidItem,
        INVALID,
        "item 0x77",
    ),
    # --- presentation context RQ (Table 9-13)
    (
        "pc-rq-length-3",
        rq_pc(item(0x20, H("010000"))),
        InvalidItem,
        INVALID,
        "item-length 3 is shorter than 4",
    ),
    (
        "pc-rq-id-0",
        rq_pc(pc_rq(item(0x30, VERIFICATION) + item(0x40, IMPLICIT_LE), 0)),
        InvalidParameterValue,
        INVALID,
        "Presentation-context-ID: 0",
    ),
    (
        "pc-rq-id-even",
        rq_pc(pc_rq(item(0x30, VERIFICATION) + item(0x40, IMPLICIT_LE), 2)),
        InvalidParameterValue,
        INVALID,
        "Presentation-context-ID: 2",
    ),
    (
        "pc-rq-no-abstract",
        rq_pc(pc_rq(item(0x40, IMPLICIT_LE))),
        InvalidItem,
        INVALID,
        "no Abstract Syntax sub-item",
    ),
    (
        "pc-rq-no-transfer",
        rq_pc(pc_rq(item(0x30, VERIFICATION))),
        InvalidItem,
        INVALID,
        "no Transfer Syntax sub-item",
    ),
    ("pc-rq-empty", rq_pc(pc_rq(b"")), InvalidItem, INVALID, "no Abstract Syntax"),
    (
        "pc-rq-two-abstract",
        rq_pc(pc_rq(item(0x30, VERIFICATION) * 2 + item(0x40, IMPLICIT_LE))),
        InvalidItem,
        INVALID,
        "more than one Abstract Syntax",
    ),
    (
        "pc-rq-abstract-empty",
        rq_pc(pc_rq(item(0x30, b"") + item(0x40, IMPLICIT_LE))),
        InvalidItem,
        INVALID,
        "Abstract-syntax-name: empty",
    ),
    (
        "pc-rq-transfer-empty",
        rq_pc(pc_rq(item(0x30, VERIFICATION) + item(0x40, b""))),
        InvalidItem,
        INVALID,
        "Transfer-syntax-name: empty",
    ),
    (
        "pc-rq-abstract-non-ascii",
        rq_pc(pc_rq(item(0x30, b"1.2\xff") + item(0x40, IMPLICIT_LE))),
        InvalidParameterValue,
        INVALID,
        "Abstract-syntax-name: byte 0xFF",
    ),
    (
        "pc-rq-transfer-control",
        rq_pc(pc_rq(item(0x30, VERIFICATION) + item(0x40, b"1.2\n3"))),
        InvalidParameterValue,
        INVALID,
        "Transfer-syntax-name: byte 0x0A",
    ),
    (
        "pc-rq-sub-item-overrun",
        rq_pc(pc_rq(item(0x30, VERIFICATION) + H("4000 0020") + IMPLICIT_LE)),
        InvalidItem,
        INVALID,
        "ID 1: item 0x40 item-length 32 overruns",
    ),
    (
        "pc-rq-sub-item-header-cut",
        rq_pc(pc_rq(item(0x30, VERIFICATION) + item(0x40, IMPLICIT_LE) + H("40"))),
        InvalidItem,
        INVALID,
        "too short for an item header",
    ),
    (
        "pc-rq-misplaced-item",
        rq_pc(pc_rq(item(0x30, VERIFICATION) + item(0x40, IMPLICIT_LE) + item(0x51, bytes(4)))),
        InvalidItem,
        INVALID,
        "item 0x51 does not belong",
    ),
    (
        "pc-rq-duplicate-id",
        rq(item(0x10, APP), GOOD_PC, GOOD_PC, item(0x50, b"")),
        InvalidParameterValue,
        INVALID,
        "Presentation-context-ID 1 used twice",
    ),
    # --- presentation context AC (Table 9-18)
    (
        "pc-ac-length-2",
        ac_pc(item(0x21, H("0100"))),
        InvalidItem,
        INVALID,
        "item-length 2 is shorter than 4",
    ),
    (
        "pc-ac-id-even",
        ac_pc(pc_ac(item(0x40, IMPLICIT_LE), 4)),
        InvalidParameterValue,
        INVALID,
        "Presentation-context-ID: 4",
    ),
    (
        "pc-ac-result-5",
        ac_pc(pc_ac(item(0x40, IMPLICIT_LE), result=5)),
        InvalidParameterValue,
        INVALID,
        "Result/Reason 5",
    ),
    (
        "pc-ac-result-ff",
        ac_pc(pc_ac(item(0x40, IMPLICIT_LE), result=0xFF)),
        InvalidParameterValue,
        INVALID,
        "Result/Reason 255",
    ),
    (
        "pc-ac-accepted-no-ts",
        ac_pc(pc_ac(b"")),
        InvalidItem,
        INVALID,
        "accepted but no Transfer Syntax",
    ),
    (
        "pc-ac-accepted-empty-ts",
        ac_pc(pc_ac(item(0x40, b""))),
        InvalidItem,
        INVALID,
        "Transfer-syntax-name: empty",
    ),
    (
        "pc-ac-accepted-bad-ts",
        ac_pc(pc_ac(item(0x40, b"\xc3\xa9"))),
        InvalidParameterValue,
        INVALID,
        "Transfer-syntax-name: byte 0xC3",
    ),
    (
        "pc-ac-two-ts",
        ac_pc(pc_ac(item(0x40, IMPLICIT_LE) * 2)),
        InvalidItem,
        INVALID,
        "more than one Transfer Syntax",
    ),
    (
        "pc-ac-abstract-syntax",
        ac_pc(pc_ac(item(0x30, VERIFICATION) + item(0x40, IMPLICIT_LE))),
        InvalidItem,
        INVALID,
        "item 0x30 does not belong",
    ),
    (
        "pc-ac-duplicate-id",
        ac(item(0x10, APP), GOOD_PC_AC, GOOD_PC_AC, item(0x50, b"")),
        InvalidParameterValue,
        INVALID,
        "used twice",
    ),
    # --- user information sub-items (Annex D, PS3.7 D.3.3)
    (
        "ui-header-cut",
        rq_ui(H("51 00")),
        InvalidItem,
        INVALID,
        "User Information item (0x50): 2 byte(s) left",
    ),
    (
        "ui-sub-item-overrun",
        rq_ui(H("52 00 0010") + b"1.2"),
        InvalidItem,
        INVALID,
        "User Information item (0x50): item 0x52 item-length 16 overruns",
    ),
    (
        "max-length-0",
        rq_ui(item(0x51, b"")),
        InvalidItem,
        INVALID,
        "Maximum Length sub-item (0x51): item-length 0",
    ),
    (
        "max-length-2",
        rq_ui(item(0x51, H("4000"))),
        InvalidItem,
        INVALID,
        "Maximum Length sub-item (0x51): item-length 2",
    ),
    ("max-length-8", ac_ui(item(0x51, bytes(8))), InvalidItem, INVALID, "item-length 8, must be 4"),
    (
        "impl-uid-empty",
        rq_ui(item(0x52, b"")),
        InvalidItem,
        INVALID,
        "Implementation Class UID sub-item (0x52) UID: empty",
    ),
    (
        "impl-uid-non-ascii",
        rq_ui(item(0x52, b"1.2.\xe9")),
        InvalidParameterValue,
        INVALID,
        "Implementation Class UID sub-item (0x52) UID: byte 0xE9",
    ),
    (
        "async-length-3",
        rq_ui(item(0x53, H("000100"))),
        InvalidItem,
        INVALID,
        "Asynchronous Operations Window sub-item (0x53): item-length 3",
    ),
    ("async-length-0", rq_ui(item(0x53, b"")), InvalidItem, INVALID, "(0x53): item-length 0"),
    (
        "role-empty",
        rq_ui(item(0x54, b"")),
        InvalidItem,
        INVALID,
        "SCP/SCU Role Selection sub-item (0x54): no room for the SOP-class-uid length",
    ),
    (
        "role-uid-overrun",
        rq_ui(item(0x54, H("0020") + VERIFICATION + H("0101"))),
        InvalidItem,
        INVALID,
        "SOP-class-uid length 32 overruns",
    ),
    (
        "role-no-role-bytes",
        rq_ui(item(0x54, H("0011") + VERIFICATION)),
        InvalidItem,
        INVALID,
        "0 byte(s) after the UID",
    ),
    (
        "role-one-role-byte",
        rq_ui(item(0x54, H("0011") + VERIFICATION + H("01"))),
        InvalidItem,
        INVALID,
        "1 byte(s) after the UID",
    ),
    (
        "role-extra-byte",
        rq_ui(item(0x54, H("0011") + VERIFICATION + H("010100"))),
        InvalidItem,
        INVALID,
        "3 byte(s) after the UID",
    ),
    (
        "role-uid-empty",
        rq_ui(item(0x54, H("0000 0101"))),
        InvalidItem,
        INVALID,
        "(0x54) SOP-class-uid: empty",
    ),
    (
        "ext-neg-length-1",
        rq_ui(item(0x56, H("00"))),
        InvalidItem,
        INVALID,
        "SOP Class Extended Negotiation sub-item (0x56): no room",
    ),
    (
        "ext-neg-uid-overrun",
        rq_ui(item(0x56, H("0030") + VERIFICATION)),
        InvalidItem,
        INVALID,
        "(0x56): SOP-class-uid length 48 overruns",
    ),
    (
        "ext-neg-uid-empty",
        rq_ui(item(0x56, H("0000 01"))),
        InvalidItem,
        INVALID,
        "(0x56) SOP-class-uid: empty",
    ),
    (
        "common-ext-no-service",
        rq_ui(item(0x57, H("0019") + UID25)),
        InvalidItem,
        INVALID,
        "no room for the Service-class-uid length",
    ),
    (
        "common-ext-service-overrun",
        rq_ui(item(0x57, H("0019") + UID25 + H("0040") + b"1.2")),
        InvalidItem,
        INVALID,
        "Service-class-uid length 64 overruns",
    ),
    (
        "common-ext-service-empty",
        rq_ui(item(0x57, H("0019") + UID25 + H("0000 0000"))),
        InvalidItem,
        INVALID,
        "Service-class-uid: empty",
    ),
    (
        "common-ext-no-related-length",
        rq_ui(item(0x57, H("0019") + UID25 + H("0003") + b"1.2")),
        InvalidItem,
        INVALID,
        "no Related-general-sop-class-identification-length",
    ),
    (
        "common-ext-related-length-short",
        rq_ui(item(0x57, H("0019") + UID25 + H("0003") + b"1.2" + H("0001") + H("0003") + b"1.2")),
        InvalidItem,
        INVALID,
        "Related-general-sop-class-identification-length 1 does not match",
    ),
    (
        "common-ext-related-length-long",
        rq_ui(item(0x57, H("0019") + UID25 + H("0003") + b"1.2" + H("0009") + H("0003") + b"1.2")),
        InvalidItem,
        INVALID,
        "length 9 does not match",
    ),
    (
        "common-ext-related-entry-overrun",
        rq_ui(item(0x57, H("0019") + UID25 + H("0003") + b"1.2" + H("0005") + H("0009") + b"1.2")),
        InvalidItem,
        INVALID,
        "Related-general-sop-class-uid length 9 overruns",
    ),
    (
        "common-ext-related-entry-cut",
        rq_ui(item(0x57, H("0019") + UID25 + H("0003") + b"1.2" + H("0001") + H("00"))),
        InvalidItem,
        INVALID,
        "no room for the Related-general-sop-class-uid length",
    ),
    (
        "common-ext-related-entry-empty",
        rq_ui(item(0x57, H("0019") + UID25 + H("0003") + b"1.2" + H("0002") + H("0000"))),
        InvalidItem,
        INVALID,
        "Related-general-sop-class-uid: empty",
    ),
    (
        "identity-length-3",
        rq_ui(item(0x58, H("010000"))),
        InvalidItem,
        INVALID,
        "User Identity sub-item (0x58): item-length 3",
    ),
    (
        "identity-no-secondary-length",
        rq_ui(item(0x58, H("0100 0004") + b"user")),
        InvalidItem,
        INVALID,
        "Primary-field-length 4 overruns",
    ),
    (
        "identity-primary-overrun",
        rq_ui(item(0x58, H("0100 00ff") + b"user" + H("0000"))),
        InvalidItem,
        INVALID,
        "Primary-field-length 255 overruns",
    ),
    (
        "identity-secondary-overrun",
        rq_ui(item(0x58, H("0200 0004") + b"user" + H("0009") + b"pw")),
        InvalidItem,
        INVALID,
        "Secondary-field-length 9 does not match",
    ),
    (
        "identity-trailing-byte",
        rq_ui(item(0x58, H("0100 0004") + b"user" + H("0000") + b"!")),
        InvalidItem,
        INVALID,
        "Secondary-field-length 0 does not match the 1 byte(s) left",
    ),
    (
        "identity-ac-length-1",
        ac_ui(item(0x59, H("00"))),
        InvalidItem,
        INVALID,
        "User Identity sub-item (0x59): item-length 1",
    ),
    (
        "identity-ac-mismatch",
        ac_ui(item(0x59, H("0005") + b"abc")),
        InvalidItem,
        INVALID,
        "Server-response-length 5 does not match item-length 5",
    ),
]


@pytest.mark.parametrize(
    ("data", "kind", "reason", "fragment"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_malformed(
    data: bytes, kind: type[ProtocolError], reason: AbortReason, fragment: str
) -> None:
    with pytest.raises(ProtocolError) as info:
        decode_pdu(data)
    error = info.value
    assert type(error) is kind, f"{type(error).__name__}: {error}"
    assert error.abort_reason == reason
    assert fragment in str(error)
    assert error.message == str(error)
    if kind is BadProtocolVersion:
        # rejected-permanent, service-provider (ACSE), protocol-version-not-supported
        assert error.reject == (1, 2, 2)
    else:
        assert error.reject is None


def test_case_ids_are_unique() -> None:
    names = [case[0] for case in CASES]
    assert len(names) == len(set(names))


FRAMER_CASES = [case for case in CASES if case[2] is not TruncatedPDU]


@pytest.mark.parametrize(
    ("data", "kind", "reason"),
    [case[1:4] for case in FRAMER_CASES],
    ids=[case[0] for case in FRAMER_CASES],
)
def test_malformed_through_framer(
    data: bytes, kind: type[ProtocolError], reason: AbortReason
) -> None:
    """The framer reports the same error for a malformed PDU (from the header alone when the
    header is already wrong) and stays dead afterwards.  Truncation is not an error for a
    framer: it waits for more bytes."""
    framer = PDUFramer(max_pdata_length=0, max_other_length=0)
    with pytest.raises(ProtocolError) as info:
        framer.feed(data)
        framer.next_pdu()
    error = info.value
    assert type(error) is kind
    assert error.abort_reason == reason
    with pytest.raises(kind):
        framer.next_pdu()
    with pytest.raises(kind):
        framer.feed(b"\x05")


def test_truncated_input_makes_the_framer_wait() -> None:
    for case in CASES:
        if case[2] is TruncatedPDU and len(case[1]) >= 6 and case[1][0] in range(1, 8):
            framer = PDUFramer(max_pdata_length=0, max_other_length=0)
            framer.feed(case[1])
            first = framer.next_pdu()
            # either an incomplete PDU (None) or a complete one followed by leftovers
            assert first is None or framer.buffered > 0, case[0]
