"""PDU codec: golden bytes written from the PS3.8 9.3 / PS3.7 D.3.3 layouts, round trips, the
P-DATA fast path and the stream framer."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st
from strategies import (
    abort,
    associate_ac,
    associate_rj,
    associate_rq,
    async_ops_window_sub_items,
    implementation_class_uid_sub_items,
    implementation_version_name_sub_items,
    maximum_length_sub_items,
    p_data_tf,
    presentation_context_ac_items,
    presentation_context_rq_items,
    release_rp,
    release_rq,
    role_selection_sub_items,
    sop_class_common_extended_negotiation_sub_items,
    sop_class_extended_negotiation_sub_items,
    unknown_sub_items,
    user_identity_ac_sub_items,
    user_identity_rq_sub_items,
)

from asyncdicom.protocol.codec import PDUFramer, decode_pdu, encode_pdata, encode_pdu
from asyncdicom.protocol.errors import (
    InvalidPDU,
    LocalProtocolError,
    PDUTooLarge,
    ProtocolError,
    UnrecognizedPDU,
)
from asyncdicom.protocol.pdu import (
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

H = bytes.fromhex
VERIFICATION = "1.2.840.10008.1.1"
IMPLICIT_LE = "1.2.840.10008.1.2"

# --------------------------------------------------------------------------- golden PDUs
# Every length below was counted by hand from the standard's tables; the strings are the
# literal ASCII bytes.

# A-ASSOCIATE-RQ (PS3.8 Table 9-11): 6 + 68 + 106 = 180 bytes.
GOLDEN_RQ = b"".join(
    [
        H("01 00 000000ae"),  # PDU-type 1, reserved, PDU-length 174
        H("0001 0000"),  # protocol version 1, reserved
        b"ANY-SCP         ",  # called AE title, space padded to 16
        b"ECHOSCU         ",  # calling AE title
        bytes(32),  # reserved
        H("10 00 0015"),  # application context item, 21 bytes
        b"1.2.840.10008.3.1.1.1",
        H("20 00 002e 01 000000"),  # presentation context item, 46 bytes, ID 1
        H("30 00 0011"),  # abstract syntax, 17 bytes
        b"1.2.840.10008.1.1",
        H("40 00 0011"),  # transfer syntax, 17 bytes
        b"1.2.840.10008.1.2",
        H("50 00 001b"),  # user information, 27 bytes
        H("51 00 0004 00004000"),  # maximum length 16384
        H("52 00 0007"),  # implementation class UID, 7 bytes
        b"1.2.3.4",
        H("55 00 0004"),  # implementation version name, 4 bytes
        b"TEST",
    ]
)
GOLDEN_RQ_PDU = AssociateRQ(
    called_ae_title="ANY-SCP",
    calling_ae_title="ECHOSCU",
    presentation_contexts=(PresentationContextRQItem(1, VERIFICATION, (IMPLICIT_LE,)),),
    user_information=UserInformationItem(
        (
            MaximumLengthSubItem(16384),
            ImplementationClassUIDSubItem("1.2.3.4"),
            ImplementationVersionNameSubItem("TEST"),
        )
    ),
)

# A-ASSOCIATE-AC (PS3.8 Table 9-17): 6 + 68 + 89 = 163 bytes.
GOLDEN_AC = b"".join(
    [
        H("02 00 0000009d"),  # PDU-type 2, PDU-length 157
        H("0001 0000"),
        b"ANY-SCP         ",  # reserved, echoes the RQ
        b"ECHOSCU         ",
        bytes(32),
        H("10 00 0015"),
        b"1.2.840.10008.3.1.1.1",
        H("21 00 0019 01 00 00 00"),  # context 1, 25 bytes, result 0 (acceptance)
        H("40 00 0011"),
        b"1.2.840.10008.1.2",
        H("21 00 0008 03 00 03 00"),  # context 3, result 3, empty transfer syntax
        H("40 00 0000"),
        H("50 00 0013"),  # user information, 19 bytes
        H("51 00 0004 00000000"),  # maximum length 0 (unlimited)
        H("52 00 0007"),
        b"1.2.3.4",
    ]
)
GOLDEN_AC_PDU = AssociateAC(
    called_ae_title="ANY-SCP",
    calling_ae_title="ECHOSCU",
    presentation_contexts=(
        PresentationContextACItem(1, 0, IMPLICIT_LE),
        PresentationContextACItem(3, 3, ""),
    ),
    user_information=UserInformationItem(
        (MaximumLengthSubItem(0), ImplementationClassUIDSubItem("1.2.3.4"))
    ),
)

GOLDEN_FIXED: list[tuple[str, bytes, PDU]] = [
    ("rj", H("03 00 00000004 00 01 01 07"), AssociateRJ(1, 1, 7)),
    ("rj-transient", H("03 00 00000004 00 02 03 01"), AssociateRJ(2, 3, 1)),
    ("release-rq", H("05 00 00000004 00000000"), ReleaseRQ()),
    ("release-rp", H("06 00 00000004 00000000"), ReleaseRP()),
    ("abort-user", H("07 00 00000004 00 00 00 00"), Abort(0, 0)),
    ("abort-provider", H("07 00 00000004 00 00 02 06"), Abort(2, 6)),
    (
        "pdata-one",
        H("04 00 0000000c 00000008 01 03") + b"ABCDEF",
        PDataTF((PresentationDataValue(1, 0x03, b"ABCDEF"),)),
    ),
    (
        "pdata-two",
        H("04 00 00000014 00000004 01 01 aabb 00000008 03 02") + b"\x00" * 6,
        PDataTF(
            (
                PresentationDataValue(1, 0x01, b"\xaa\xbb"),
                PresentationDataValue(3, 0x02, bytes(6)),
            )
        ),
    ),
    (
        "pdata-empty-fragment",
        H("04 00 00000006 00000002 ff 00"),
        PDataTF((PresentationDataValue(255, 0, b""),)),
    ),
]


def test_golden_sizes_are_consistent() -> None:
    assert len(GOLDEN_RQ) == 180
    assert len(GOLDEN_AC) == 163


@pytest.mark.parametrize(
    ("data", "expected"),
    [(GOLDEN_RQ, GOLDEN_RQ_PDU), (GOLDEN_AC, GOLDEN_AC_PDU)]
    + [(data, pdu) for _, data, pdu in GOLDEN_FIXED],
    ids=["rq", "ac"] + [name for name, _, _ in GOLDEN_FIXED],
)
def test_golden_decode_and_encode(data: bytes, expected: PDU) -> None:
    assert decode_pdu(data) == expected
    assert encode_pdu(expected) == data
    assert encode_pdu(decode_pdu(data)) == data


# --------------------------------------------------------------------------- golden sub-items


def _item(item_type: int, body: bytes, reserved: int = 0) -> bytes:
    return struct.pack(">BBH", item_type, reserved, len(body)) + body


def _associate(pdu_type: int, variable: bytes) -> bytes:
    """Wrap variable items in the A-ASSOCIATE fixed part (Table 9-11), built independently."""
    body = H("0001 0000") + b"CALLED".ljust(16) + b"CALLING".ljust(16) + bytes(32) + variable
    return struct.pack(">BBI", pdu_type, 0, len(body)) + body


def _rq_with_user_data(user_data: bytes) -> bytes:
    return _associate(
        0x01,
        _item(0x10, b"1.2.840.10008.3.1.1.1")
        + _item(
            0x20,
            H("01000000") + _item(0x30, VERIFICATION.encode()) + _item(0x40, IMPLICIT_LE.encode()),
        )
        + _item(0x50, user_data),
    )


def _ac_with_user_data(user_data: bytes) -> bytes:
    return _associate(
        0x02,
        _item(0x10, b"1.2.840.10008.3.1.1.1")
        + _item(0x21, H("01000000") + _item(0x40, IMPLICIT_LE.encode()))
        + _item(0x50, user_data),
    )


CT_STORAGE = "1.2.840.10008.5.1.4.1.1.2"  # 25 characters
CR_STORAGE = "1.2.840.10008.5.1.4.1.1.1"  # 25 characters
PATIENT_FIND = "1.2.840.10008.5.1.4.1.2.1"  # 25 characters, not a real UID (prefix)

GOLDEN_SUB_ITEMS: list[tuple[str, bytes, UserInformationSubItem]] = [
    ("0x51", H("51 00 0004 00040000"), MaximumLengthSubItem(262144)),
    ("0x51-max", H("51 00 0004 ffffffff"), MaximumLengthSubItem(0xFFFFFFFF)),
    ("0x52", H("52 00 000e") + b"1.2.826.0.1.34", ImplementationClassUIDSubItem("1.2.826.0.1.34")),
    ("0x53", H("53 00 0004 0005 0000"), AsynchronousOperationsWindowSubItem(5, 0)),
    (
        "0x54",
        H("54 00 0015 0011") + VERIFICATION.encode() + H("00 01"),
        RoleSelectionSubItem(VERIFICATION, scu_role=False, scp_role=True),
    ),
    (
        "0x55",
        H("55 00 000f") + b"OFFIS_DCMTK_368",
        ImplementationVersionNameSubItem("OFFIS_DCMTK_368"),
    ),
    (
        "0x56",
        H("56 00 001e 0019") + PATIENT_FIND.encode() + H("010001"),
        SOPClassExtendedNegotiationSubItem(PATIENT_FIND, b"\x01\x00\x01"),
    ),
    (
        "0x56-empty-info",
        H("56 00 001b 0019") + PATIENT_FIND.encode(),
        SOPClassExtendedNegotiationSubItem(PATIENT_FIND, b""),
    ),
    (
        "0x57",
        H("57 00 004b 0019")
        + CT_STORAGE.encode()
        + H("0011")
        + b"1.2.840.10008.4.2"
        + H("001b 0019")
        + CR_STORAGE.encode(),
        SOPClassCommonExtendedNegotiationSubItem(CT_STORAGE, "1.2.840.10008.4.2", (CR_STORAGE,)),
    ),
    (
        "0x57-no-related",
        H("57 00 0030 0019") + CT_STORAGE.encode() + H("0011") + b"1.2.840.10008.4.2" + H("0000"),
        SOPClassCommonExtendedNegotiationSubItem(CT_STORAGE, "1.2.840.10008.4.2", ()),
    ),
    (
        "0x58-user-pass",
        H("58 00 0010 02 01 0004") + b"user" + H("0006") + b"secret",
        UserIdentityRQSubItem(2, True, b"user", b"secret"),
    ),
    (
        "0x58-username",
        H("58 00 000a 01 00 0004") + b"user" + H("0000"),
        UserIdentityRQSubItem(1, False, b"user"),
    ),
    ("0x59", H("59 00 0006 0004 deadbeef"), UserIdentityACSubItem(b"\xde\xad\xbe\xef")),
    ("0x59-empty", H("59 00 0002 0000"), UserIdentityACSubItem(b"")),
    ("unknown-0x5a", H("5a 07 0003 010203"), UnknownSubItem(0x5A, b"\x01\x02\x03", reserved=7)),
    ("unknown-0xff-empty", H("ff 00 0000"), UnknownSubItem(0xFF, b"")),
]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [(raw, item) for _, raw, item in GOLDEN_SUB_ITEMS],
    ids=[name for name, _, _ in GOLDEN_SUB_ITEMS],
)
@pytest.mark.parametrize("kind", ["rq", "ac"])
def test_golden_sub_item(kind: str, raw: bytes, expected: UserInformationSubItem) -> None:
    data = (_rq_with_user_data if kind == "rq" else _ac_with_user_data)(raw)
    pdu = decode_pdu(data)
    assert isinstance(pdu, (AssociateRQ, AssociateAC))
    assert pdu.user_information.sub_items == (expected,)
    assert encode_pdu(pdu) == data


def test_all_sub_items_in_one_user_information_keep_wire_order() -> None:
    raw = b"".join(r for _, r, _ in GOLDEN_SUB_ITEMS)
    pdu = decode_pdu(_rq_with_user_data(raw))
    assert isinstance(pdu, AssociateRQ)
    assert pdu.user_information.sub_items == tuple(item for _, _, item in GOLDEN_SUB_ITEMS)
    assert encode_pdu(pdu) == _rq_with_user_data(raw)
    ui = pdu.user_information
    assert ui.maximum_length == 262144
    assert ui.implementation_class_uid == "1.2.826.0.1.34"
    assert ui.implementation_version_name == "OFFIS_DCMTK_368"
    assert len(ui.common_extended_negotiations) == 2


def test_golden_presentation_context_items() -> None:
    # Three transfer syntaxes in preference order, ID 255.
    explicit = b"1.2.840.10008.1.2.1"  # 19 bytes
    pc = _item(
        0x20,
        H("ff000000")
        + _item(0x30, CT_STORAGE.encode())
        + H("40 00 0013")
        + explicit
        + H("40 00 0011")
        + IMPLICIT_LE.encode()
        + H("40 00 0016")
        + b"1.2.840.10008.1.2.4.50",
    )
    data = _associate(0x01, _item(0x10, b"1.2.840.10008.3.1.1.1") + pc + H("50 00 0000"))
    pdu = decode_pdu(data)
    assert isinstance(pdu, AssociateRQ)
    assert pdu.presentation_contexts == (
        PresentationContextRQItem(
            255, CT_STORAGE, ("1.2.840.10008.1.2.1", IMPLICIT_LE, "1.2.840.10008.1.2.4.50")
        ),
    )
    assert pdu.user_information == UserInformationItem(())
    assert pdu.called_ae_title == "CALLED"
    assert encode_pdu(pdu) == data


@pytest.mark.parametrize("result", [0, 1, 2, 3, 4])
def test_golden_ac_results(result: int) -> None:
    pc = _item(0x21, bytes((5, 0, result, 0)) + _item(0x40, IMPLICIT_LE.encode()))
    data = _associate(0x02, _item(0x10, b"1.2.840.10008.3.1.1.1") + pc + H("50 00 0000"))
    pdu = decode_pdu(data)
    assert isinstance(pdu, AssociateAC)
    assert pdu.presentation_contexts == (PresentationContextACItem(5, result, IMPLICIT_LE),)
    assert encode_pdu(pdu) == data


# --------------------------------------------------------------------------- tolerated input


def test_unknown_items_at_pdu_and_context_level_are_skipped() -> None:
    unknown = H("77 00 0002 abcd")
    pc = _item(
        0x20,
        H("01000000")
        + _item(0x30, VERIFICATION.encode())
        + unknown
        + _item(0x40, IMPLICIT_LE.encode()),
    )
    with_unknown = _associate(
        0x01, _item(0x10, b"1.2.840.10008.3.1.1.1") + unknown + pc + unknown + H("50 00 0000")
    )
    pc_clean = _item(
        0x20, H("01000000") + _item(0x30, VERIFICATION.encode()) + _item(0x40, IMPLICIT_LE.encode())
    )
    clean = _associate(0x01, _item(0x10, b"1.2.840.10008.3.1.1.1") + pc_clean + H("50 00 0000"))
    assert decode_pdu(with_unknown) == decode_pdu(clean)
    assert encode_pdu(decode_pdu(with_unknown)) == clean


def test_ae_titles_keep_leading_spaces_strip_trailing() -> None:
    data = bytearray(GOLDEN_RQ)
    data[10:26] = b"  LEAD          "
    pdu = decode_pdu(bytes(data))
    assert isinstance(pdu, AssociateRQ)
    assert pdu.called_ae_title == "  LEAD"
    assert encode_pdu(pdu) == bytes(data)
    data[10:26] = b"SIXTEEN-CHARS-AE"
    pdu = decode_pdu(bytes(data))
    assert isinstance(pdu, AssociateRQ)
    assert pdu.called_ae_title == "SIXTEEN-CHARS-AE"


def test_uid_with_one_trailing_nul_is_tolerated() -> None:
    padded = VERIFICATION.encode() + b"\x00"  # 18 bytes, as old peers send it
    pc = _item(
        0x20, H("01000000") + _item(0x30, padded) + _item(0x40, IMPLICIT_LE.encode() + b"\x00")
    )
    data = _associate(0x01, _item(0x10, b"1.2.840.10008.3.1.1.1\x00") + pc + H("50 00 0000"))
    pdu = decode_pdu(data)
    assert isinstance(pdu, AssociateRQ)
    assert pdu.application_context == "1.2.840.10008.3.1.1.1"
    assert pdu.presentation_contexts[0] == PresentationContextRQItem(
        1, VERIFICATION, (IMPLICIT_LE,)
    )
    # Not well-formed input: re-encoding drops the padding (3 bytes shorter).
    assert len(encode_pdu(pdu)) == len(data) - 3


def test_ac_reserved_fields_are_not_tested() -> None:
    data = bytearray(GOLDEN_AC)
    data[10:26] = bytes(16)  # NULs where the echoed called AE title goes
    data[26:42] = b"\xe9cho" + b" " * 12
    data[42:74] = bytes(range(32))
    pdu = decode_pdu(bytes(data))
    assert isinstance(pdu, AssociateAC)
    assert pdu.called_ae_title == "\x00" * 16
    assert pdu.calling_ae_title == "\xe9cho"
    assert pdu.reserved == bytes(range(32))
    assert encode_pdu(pdu) == bytes(data)


def test_rejected_context_transfer_syntax_is_not_tested() -> None:
    pc = _item(0x21, bytes((1, 0, 4, 0)) + _item(0x40, b"\xff\xfe"))
    data = _associate(0x02, _item(0x10, b"1.2.840.10008.3.1.1.1") + pc + H("50 00 0000"))
    pdu = decode_pdu(data)
    assert isinstance(pdu, AssociateAC)
    assert pdu.presentation_contexts == (PresentationContextACItem(1, 4, ""),)
    # and a rejected context without any transfer syntax sub-item is accepted too
    pc = _item(0x21, bytes((1, 0, 1, 0)))
    pdu = decode_pdu(_associate(0x02, _item(0x10, b"1.2.840.10008.3.1.1.1") + pc + H("50 00 0000")))
    assert isinstance(pdu, AssociateAC)
    assert pdu.presentation_contexts == (PresentationContextACItem(1, 1, ""),)


def test_role_and_positive_response_bytes_treat_nonzero_as_true() -> None:
    raw = H("54 00 0015 0011") + VERIFICATION.encode() + H("02 ff")
    raw += H("58 00 000a 01 05 0004") + b"user" + H("0000")
    pdu = decode_pdu(_rq_with_user_data(raw))
    assert isinstance(pdu, AssociateRQ)
    assert pdu.user_information.sub_items == (
        RoleSelectionSubItem(VERIFICATION, True, True),
        UserIdentityRQSubItem(1, True, b"user", b""),
    )


def test_protocol_version_other_bits_ignored() -> None:
    data = bytearray(GOLDEN_RQ)
    data[6:8] = H("8003")
    pdu = decode_pdu(bytes(data))
    assert isinstance(pdu, AssociateRQ)
    assert pdu.protocol_version == 0x8003
    assert encode_pdu(pdu) == bytes(data)


def test_decode_accepts_bytearray_and_memoryview() -> None:
    for data in (bytearray(GOLDEN_RQ), memoryview(GOLDEN_RQ), memoryview(b"xx" + GOLDEN_RQ)[2:]):
        assert decode_pdu(data) == GOLDEN_RQ_PDU


def test_pdata_values_are_zero_copy_slices() -> None:
    data = H("04 00 00000014 00000004 01 01 aabb 00000008 03 02") + b"abcdef"
    pdu = decode_pdu(data)
    assert isinstance(pdu, PDataTF)
    for pdv in pdu.pdvs:
        assert isinstance(pdv.data, memoryview)
        assert pdv.data.obj is data
    assert bytes(pdu.pdvs[1].data) == b"abcdef"
    assert pdu.pdvs[0].is_command and not pdu.pdvs[0].is_last
    assert pdu.pdvs[1].is_last and not pdu.pdvs[1].is_command


def test_pdata_control_header_reserved_bits_are_kept() -> None:
    data = H("04 00 00000008 00000004 07 fe 0102")
    pdu = decode_pdu(data)
    assert isinstance(pdu, PDataTF)
    assert pdu.pdvs[0].message_control_header == 0xFE
    assert encode_pdu(pdu) == data


# --------------------------------------------------------------------------- encode_pdata


def test_encode_pdata_golden() -> None:
    assert encode_pdata(1, 0x03, b"ABCDEF") == H("04 00 0000000c 00000008 01 03") + b"ABCDEF"
    assert encode_pdata(255, 0x00, b"") == H("04 00 00000006 00000002 ff 00")


@given(
    context_id=st.integers(0, 127).map(lambda n: 2 * n + 1),
    control=st.integers(0, 255),
    payload=st.binary(max_size=512),
    as_view=st.booleans(),
)
def test_encode_pdata_matches_encode_pdu(
    context_id: int, control: int, payload: bytes, as_view: bool
) -> None:
    data = memoryview(payload) if as_view else payload
    encoded = encode_pdata(context_id, control, data)
    assert encoded == encode_pdu(PDataTF((PresentationDataValue(context_id, control, payload),)))
    assert decode_pdu(encoded) == PDataTF((PresentationDataValue(context_id, control, payload),))


@pytest.mark.parametrize(
    ("context_id", "control"),
    [(0, 0), (2, 0), (256, 0), (-1, 0), (1, 256), (1, -1)],
)
def test_encode_pdata_refuses_bad_values(context_id: int, control: int) -> None:
    with pytest.raises(LocalProtocolError):
        encode_pdata(context_id, control, b"x")


# --------------------------------------------------------------------------- encode refusals

_UI = UserInformationItem((MaximumLengthSubItem(0),))
_PC = PresentationContextRQItem(1, VERIFICATION, (IMPLICIT_LE,))


def _rq(**kwargs: object) -> AssociateRQ:
    fields: dict[str, object] = {
        "called_ae_title": "SCP",
        "calling_ae_title": "SCU",
        "presentation_contexts": (_PC,),
        "user_information": _UI,
    }
    fields.update(kwargs)
    return AssociateRQ(**fields)  # type: ignore[arg-type]


def _ac(**kwargs: object) -> AssociateAC:
    fields: dict[str, object] = {
        "called_ae_title": "SCP",
        "calling_ae_title": "SCU",
        "presentation_contexts": (PresentationContextACItem(1, 0, IMPLICIT_LE),),
        "user_information": _UI,
    }
    fields.update(kwargs)
    return AssociateAC(**fields)  # type: ignore[arg-type]


def _rq_ui(*items: UserInformationSubItem) -> AssociateRQ:
    return _rq(user_information=UserInformationItem(items))


UNENCODABLE: list[tuple[str, object]] = [
    ("ae-17-chars", _rq(called_ae_title="A" * 17)),
    ("ae-non-ascii", _rq(calling_ae_title="SCÜ")),
    ("ae-backslash", _rq(called_ae_title="A\\B")),
    ("ae-control", _rq(called_ae_title="A\nB")),
    ("ae-empty", _rq(called_ae_title="")),
    ("ae-blank", _rq(calling_ae_title="   ")),
    ("ac-ae-17", _ac(called_ae_title="B" * 17)),
    ("ac-ae-non-latin1", _ac(called_ae_title="€")),
    ("ac-reserved-31", _ac(reserved=bytes(31))),
    ("ac-result-5", _ac(presentation_contexts=(PresentationContextACItem(1, 5, IMPLICIT_LE),))),
    ("ac-accepted-no-ts", _ac(presentation_contexts=(PresentationContextACItem(1, 0, ""),))),
    (
        "context-id-even",
        _rq(presentation_contexts=(PresentationContextRQItem(2, VERIFICATION, (IMPLICIT_LE,)),)),
    ),
    (
        "context-id-0",
        _rq(presentation_contexts=(PresentationContextRQItem(0, VERIFICATION, (IMPLICIT_LE,)),)),
    ),
    (
        "context-id-257",
        _rq(presentation_contexts=(PresentationContextRQItem(257, VERIFICATION, (IMPLICIT_LE,)),)),
    ),
    ("context-ids-repeated", _rq(presentation_contexts=(_PC, _PC))),
    ("no-contexts", _rq(presentation_contexts=())),
    (
        "no-transfer-syntax",
        _rq(presentation_contexts=(PresentationContextRQItem(1, VERIFICATION, ()),)),
    ),
    (
        "abstract-syntax-empty",
        _rq(presentation_contexts=(PresentationContextRQItem(1, "", (IMPLICIT_LE,)),)),
    ),
    (
        "uid-non-ascii",
        _rq(presentation_contexts=(PresentationContextRQItem(1, "1.2.é", (IMPLICIT_LE,)),)),
    ),
    ("uid-nul", _rq(application_context="1.2\x00")),
    (
        "item-too-long",
        _rq(presentation_contexts=(PresentationContextRQItem(1, "1" * 70000, (IMPLICIT_LE,)),)),
    ),
    (
        "user-info-too-long",
        _rq_ui(*[SOPClassExtendedNegotiationSubItem(VERIFICATION, bytes(60000))] * 2),
    ),
    ("version-17-bits", _rq(protocol_version=0x10001)),
    ("max-length-33-bits", _rq_ui(MaximumLengthSubItem(1 << 32))),
    ("max-length-negative", _rq_ui(MaximumLengthSubItem(-1))),
    ("async-window-17-bits", _rq_ui(AsynchronousOperationsWindowSubItem(0x10000, 1))),
    ("version-name-17", _rq_ui(ImplementationVersionNameSubItem("V" * 17))),
    ("version-name-empty", _rq_ui(ImplementationVersionNameSubItem(""))),
    ("impl-uid-empty", _rq_ui(ImplementationClassUIDSubItem(""))),
    ("identity-type-256", _rq_ui(UserIdentityRQSubItem(256, False, b"x"))),
    ("identity-primary-too-long", _rq_ui(UserIdentityRQSubItem(1, False, bytes(70000)))),
    (
        "common-ext-version-256",
        _rq_ui(SOPClassCommonExtendedNegotiationSubItem("1.2", "1.3", (), 256)),
    ),
    ("unknown-with-known-type", _rq_ui(UnknownSubItem(0x51, b"\x00\x00\x00\x00"))),
    ("unknown-type-256", _rq_ui(UnknownSubItem(0x100, b""))),
    ("rj-result-256", AssociateRJ(256, 1, 1)),
    ("abort-source-negative", Abort(-1, 0)),
    ("pdata-no-pdv", PDataTF(())),
    ("pdata-even-context", PDataTF((PresentationDataValue(4, 0, b"x"),))),
    ("pdata-control-256", PDataTF((PresentationDataValue(1, 256, b"x"),))),
    ("not-a-pdu", UserInformationItem(())),
]


@pytest.mark.parametrize(("pdu"), [p for _, p in UNENCODABLE], ids=[n for n, _ in UNENCODABLE])
def test_encode_refuses_unencodable_values(pdu: PDU) -> None:
    with pytest.raises(LocalProtocolError):
        encode_pdu(pdu)


# --------------------------------------------------------------------------- round trips


@given(
    st.one_of(
        associate_rq(),
        associate_ac(),
        associate_rj(),
        p_data_tf(),
        release_rq(),
        release_rp(),
        abort(),
    )
)
def test_round_trip_every_pdu(pdu: PDU) -> None:
    data = encode_pdu(pdu)
    decoded = decode_pdu(data)
    assert decoded == pdu
    assert encode_pdu(decoded) == data


_SUB_ITEM_STRATEGIES = {
    "0x51": maximum_length_sub_items(),
    "0x52": implementation_class_uid_sub_items(),
    "0x53": async_ops_window_sub_items(),
    "0x54": role_selection_sub_items(),
    "0x55": implementation_version_name_sub_items(),
    "0x56": sop_class_extended_negotiation_sub_items(),
    "0x57": sop_class_common_extended_negotiation_sub_items(),
    "0x58": user_identity_rq_sub_items(),
    "0x59": user_identity_ac_sub_items(),
    "unknown": unknown_sub_items(),
}


@pytest.mark.parametrize("kind", sorted(_SUB_ITEM_STRATEGIES))
def test_round_trip_every_sub_item(kind: str) -> None:
    @given(items=st.lists(_SUB_ITEM_STRATEGIES[kind], min_size=1, max_size=4), as_ac=st.booleans())
    def check(items: list[UserInformationSubItem], as_ac: bool) -> None:
        ui = UserInformationItem(tuple(items))
        pdu = _ac(user_information=ui) if as_ac else _rq(user_information=ui)
        data = encode_pdu(pdu)
        assert decode_pdu(data) == pdu
        assert encode_pdu(decode_pdu(data)) == data

    check()


@given(
    st.lists(
        presentation_context_rq_items(), min_size=1, max_size=5, unique_by=lambda c: c.context_id
    )
)
def test_round_trip_presentation_context_rq_items(
    contexts: list[PresentationContextRQItem],
) -> None:
    pdu = _rq(presentation_contexts=tuple(contexts))
    assert decode_pdu(encode_pdu(pdu)) == pdu


@given(
    st.lists(
        presentation_context_ac_items(), min_size=1, max_size=5, unique_by=lambda c: c.context_id
    )
)
def test_round_trip_presentation_context_ac_items(
    contexts: list[PresentationContextACItem],
) -> None:
    pdu = _ac(presentation_contexts=tuple(contexts))
    assert decode_pdu(encode_pdu(pdu)) == pdu


# --------------------------------------------------------------------------- framer

STREAM_PDUS: list[PDU] = [GOLDEN_RQ_PDU, GOLDEN_AC_PDU, *(p for _, _, p in GOLDEN_FIXED)]
STREAM = b"".join(encode_pdu(p) for p in STREAM_PDUS)


def _drain(framer: PDUFramer) -> list[PDU]:
    out: list[PDU] = []
    while (pdu := framer.next_pdu()) is not None:
        out.append(pdu)
    return out


def test_framer_whole_stream_in_one_chunk_is_zero_copy() -> None:
    framer = PDUFramer(max_pdata_length=16384)
    framer.feed(STREAM)
    assert framer.buffered == len(STREAM)
    pdus = _drain(framer)
    assert pdus == STREAM_PDUS
    assert framer.buffered == 0
    for pdu in pdus:
        if isinstance(pdu, PDataTF):
            assert all(isinstance(v.data, memoryview) and v.data.obj is STREAM for v in pdu.pdvs)


def test_framer_byte_by_byte() -> None:
    framer = PDUFramer(max_pdata_length=16384)
    out: list[PDU] = []
    for i in range(len(STREAM)):
        framer.feed(STREAM[i : i + 1])
        out += _drain(framer)
        # never more than one incomplete PDU held
        assert framer.buffered < 200
    assert out == STREAM_PDUS
    assert framer.buffered == 0


def test_framer_pdu_spanning_chunks_is_joined_once() -> None:
    pdata = encode_pdata(1, 2, bytes(range(200)))
    framer = PDUFramer(max_pdata_length=0)
    framer.feed(pdata[:3])
    assert framer.next_pdu() is None
    framer.feed(pdata[3:100])
    assert framer.next_pdu() is None
    assert framer.buffered == 100
    framer.feed(pdata[100:] + encode_pdu(ReleaseRQ()))
    pdu = framer.next_pdu()
    assert isinstance(pdu, PDataTF)
    assert bytes(pdu.pdvs[0].data) == bytes(range(200))
    data = pdu.pdvs[0].data
    assert isinstance(data, memoryview)
    assert isinstance(data.obj, bytes)  # the one joined copy
    assert data.obj is not pdata
    assert framer.next_pdu() == ReleaseRQ()
    assert framer.next_pdu() is None


def test_framer_accepts_memoryview_and_empty_feeds() -> None:
    framer = PDUFramer(max_pdata_length=16384)
    framer.feed(b"")
    framer.feed(memoryview(GOLDEN_RQ))
    framer.feed(memoryview(b""))
    assert _drain(framer) == [GOLDEN_RQ_PDU]


@pytest.mark.parametrize("declared", [0xFFFFFFFF, 0x100000000 - 6, 16385])
def test_framer_refuses_oversized_pdata_from_header(declared: int) -> None:
    framer = PDUFramer(max_pdata_length=16384)
    header = struct.pack(">BBI", 0x04, 0, declared)
    with pytest.raises(PDUTooLarge) as info:
        framer.feed(header[:5])
        assert framer.next_pdu() is None
        framer.feed(header[5:])
        framer.next_pdu()
    assert "PDU-length" in str(info.value)
    assert framer.buffered == 0


def test_framer_pdata_limit_is_exclusive_of_header_and_zero_means_unlimited() -> None:
    framer = PDUFramer(max_pdata_length=16)
    framer.feed(encode_pdata(1, 0, bytes(10)))  # PDU-length 16
    assert isinstance(framer.next_pdu(), PDataTF)
    unlimited = PDUFramer(max_pdata_length=0)
    unlimited.feed(struct.pack(">BBI", 0x04, 0, 0xFFFFFFFF))
    assert unlimited.next_pdu() is None


def test_framer_refuses_oversized_associate_pdu() -> None:
    framer = PDUFramer(max_pdata_length=0, max_other_length=100)
    with pytest.raises(PDUTooLarge):
        framer.feed(GOLDEN_RQ[:6])  # PDU-length 174
        framer.next_pdu()


def test_framer_refuses_unknown_type_from_header() -> None:
    framer = PDUFramer(max_pdata_length=16384)
    framer.feed(H("09 00"))
    assert framer.next_pdu() is None
    with pytest.raises(UnrecognizedPDU):
        framer.feed(H("0000 0004"))
        framer.next_pdu()


def test_framer_refuses_bad_fixed_length_from_header() -> None:
    framer = PDUFramer(max_pdata_length=16384)
    with pytest.raises(InvalidPDU):
        framer.feed(H("05 00 00100000"))
        framer.next_pdu()


def test_framer_is_dead_after_an_error() -> None:
    framer = PDUFramer(max_pdata_length=16384)
    framer.feed(encode_pdu(ReleaseRQ()))
    framer.feed(H("04 00 00000002 0000"))  # P-DATA-TF with a truncated PDV header
    assert framer.next_pdu() == ReleaseRQ()
    with pytest.raises(ProtocolError) as first:
        framer.next_pdu()
    kind = type(first.value)
    with pytest.raises(kind):
        framer.next_pdu()
    with pytest.raises(kind):
        framer.feed(encode_pdu(ReleaseRQ()))
    assert framer.buffered == 0


def test_framer_rejects_negative_limits() -> None:
    with pytest.raises(ValueError):
        PDUFramer(max_pdata_length=-1)
