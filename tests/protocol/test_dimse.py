"""DIMSE framing: command-set codec, PDV fragmentation and reassembly (PS3.7 6.3, PS3.8 Annex E)."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import struct
from collections.abc import Iterator
from io import BytesIO
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.filewriter import write_dataset
from pynetdicom import dimse_messages as pn_messages
from pynetdicom import dimse_primitives as pn_primitives
from pynetdicom.pdu import P_DATA_TF as PnPDataTF

from asyncdicom.protocol import messages as m
from asyncdicom.protocol.codec import PDUFramer, decode_pdu, encode_pdata
from asyncdicom.protocol.dimse import (
    DEFAULT_SEND_PDU_LIMIT,
    CommandReceived,
    DatasetFragment,
    DatasetFragmenter,
    MessageAssembler,
    command_pdus,
    decode_command,
    encode_command,
    fragment_command,
    fragment_dataset,
    fragment_size,
)
from asyncdicom.protocol.errors import DIMSEError, ProtocolError
from asyncdicom.protocol.pdu import PDataTF, PresentationDataValue

ALL_CLASSES = list(m.MESSAGE_TYPES.values())

# Field -> pydicom keyword of the command element (PS3.7 Annex E), independent of dimse.py.
KEYWORDS = {
    "affected_sop_class_uid": "AffectedSOPClassUID",
    "requested_sop_class_uid": "RequestedSOPClassUID",
    "message_id": "MessageID",
    "message_id_being_responded_to": "MessageIDBeingRespondedTo",
    "move_destination": "MoveDestination",
    "priority": "Priority",
    "status": "Status",
    "offending_element": "OffendingElement",
    "error_comment": "ErrorComment",
    "error_id": "ErrorID",
    "affected_sop_instance_uid": "AffectedSOPInstanceUID",
    "requested_sop_instance_uid": "RequestedSOPInstanceUID",
    "event_type_id": "EventTypeID",
    "attribute_identifier_list": "AttributeIdentifierList",
    "action_type_id": "ActionTypeID",
    "number_of_remaining_suboperations": "NumberOfRemainingSuboperations",
    "number_of_completed_suboperations": "NumberOfCompletedSuboperations",
    "number_of_failed_suboperations": "NumberOfFailedSuboperations",
    "number_of_warning_suboperations": "NumberOfWarningSuboperations",
    "move_originator_aet": "MoveOriginatorApplicationEntityTitle",
    "move_originator_message_id": "MoveOriginatorMessageID",
}


def _write_implicit(ds: Dataset) -> bytes:
    fp = DicomBytesIO()
    fp.is_little_endian = True
    fp.is_implicit_VR = True
    write_dataset(fp, ds)
    return fp.getvalue()


def pydicom_command(message: m.Message, dataset_type: int | None = None) -> bytes:
    """The command set of *message* as pydicom writes it (Implicit VR Little Endian)."""
    ds = Dataset()
    ds.CommandField = message.COMMAND_FIELD
    if dataset_type is None:
        dataset_type = 0x0001 if message.has_dataset else 0x0101
    ds.CommandDataSetType = dataset_type
    for f in dataclasses.fields(message):
        value = getattr(message, f.name)
        if f.name == "has_dataset" or value is None:
            continue
        setattr(ds, KEYWORDS[f.name], list(value) if isinstance(value, tuple) else value)
    body = _write_implicit(ds)
    group_length = Dataset()
    group_length.CommandGroupLength = len(body)
    return _write_implicit(group_length) + body


def pydicom_read(data: bytes) -> Dataset:
    return read_dataset(BytesIO(data), is_implicit_VR=True, is_little_endian=True)


# --------------------------------------------------------------------------- strategies

UIDS = st.from_regex(r"\A[1-9][0-9]{0,8}(\.(0|[1-9][0-9]{0,8})){0,6}\Z")
_PRINTABLE = st.characters(min_codepoint=0x20, max_codepoint=0x7E, exclude_characters="\\")
AE_TITLES = st.text(_PRINTABLE, min_size=1, max_size=16).filter(
    lambda s: s.strip(" ") and s == s.rstrip(" ")
)
COMMENTS = st.text(_PRINTABLE, min_size=1, max_size=64).filter(lambda s: s == s.rstrip(" "))
US = st.integers(0, 0xFFFF)
TAG_LISTS = st.lists(st.integers(0, 0xFFFFFFFF), min_size=1, max_size=6).map(tuple)


def _field_strategy(name: str) -> st.SearchStrategy[Any]:
    if name == "has_dataset":
        return st.booleans()
    if name.endswith("_uid"):
        return UIDS
    if name in ("move_destination", "move_originator_aet"):
        return AE_TITLES
    if name == "error_comment":
        return COMMENTS
    if name in ("offending_element", "attribute_identifier_list"):
        return TAG_LISTS
    return US


def message_strategy(cls: type[m.Message]) -> st.SearchStrategy[m.Message]:
    kwargs = {}
    for f in dataclasses.fields(cls):
        strategy = _field_strategy(f.name)
        if f.default is None:
            strategy = st.none() | strategy
        kwargs[f.name] = strategy
    return st.builds(cls, **kwargs)


ANY_MESSAGE = st.sampled_from(ALL_CLASSES).flatmap(message_strategy)


def full_message(cls: type[m.Message]) -> m.Message:
    """An instance of *cls* with every field set."""
    values: dict[str, Any] = {
        "has_dataset": True,
        "move_destination": "MOVE_SCP",
        "move_originator_aet": "ORIGIN",
        "error_comment": "odd length",
        "offending_element": (0x00100010, 0x00100020),
        "attribute_identifier_list": (0x00080018,),
        "affected_sop_class_uid": "1.2.840.10008.5.1.4.1.1.2",
        "requested_sop_class_uid": "1.2.840.10008.1.20.1",
        "affected_sop_instance_uid": "1.2.3.4.5.6.7",
        "requested_sop_instance_uid": "1.2.840.10008.1.20.1.1",
    }
    kwargs = {f.name: values.get(f.name, 0x1234 + i) for i, f in enumerate(dataclasses.fields(cls))}
    return cls(**kwargs)


# --------------------------------------------------------------------------- encoding


@pytest.mark.parametrize("cls", ALL_CLASSES, ids=lambda c: c.__name__)
def test_encode_matches_pydicom_all_fields(cls: type[m.Message]) -> None:
    message = full_message(cls)
    assert encode_command(message) == pydicom_command(message)


def test_encode_c_echo_rq_exact_bytes() -> None:
    encoded = encode_command(m.CEchoRQ(message_id=1))
    expected = (
        b"\x00\x00\x00\x00\x04\x00\x00\x00\x38\x00\x00\x00"  # group length 56
        b"\x00\x00\x02\x00\x12\x00\x00\x001.2.840.10008.1.1\x00"  # UI padded with NUL
        b"\x00\x00\x00\x01\x02\x00\x00\x00\x30\x00"  # command field 0x0030
        b"\x00\x00\x10\x01\x02\x00\x00\x00\x01\x00"  # message ID 1
        b"\x00\x00\x00\x08\x02\x00\x00\x00\x01\x01"  # data set type 0x0101
    )
    assert encoded == expected


def test_encode_c_store_rsp_success_exact_bytes() -> None:
    # the common response, encoded from a pre-encoded template: PS3.7 9.3.1.2, E.1
    encoded = encode_command(m.CStoreRSP(7, 0, "1.2.840.10008.5.1.4.1.1.2", "1.2.3"))
    expected = (
        b"\x00\x00\x00\x00\x04\x00\x00\x00\x58\x00\x00\x00"  # group length 34 + 4 x 10 + 14
        b"\x00\x00\x02\x00\x1a\x00\x00\x001.2.840.10008.5.1.4.1.1.2\x00"  # CT Image Storage
        b"\x00\x00\x00\x01\x02\x00\x00\x00\x01\x80"  # command field 0x8001
        b"\x00\x00\x20\x01\x02\x00\x00\x00\x07\x00"  # responding to message ID 7
        b"\x00\x00\x00\x08\x02\x00\x00\x00\x01\x01"  # no data set
        b"\x00\x00\x00\x09\x02\x00\x00\x00\x00\x00"  # status 0x0000
        b"\x00\x00\x00\x10\x06\x00\x00\x001.2.3\x00"  # SOP instance, padded with NUL
    )
    assert encoded == expected


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from([m.CEchoRSP, m.CStoreRSP]),
    US,
    st.sampled_from([0x0000, 0x0001, 0xB000, 0xA700, 0xC000, 0x0122]),
    st.none() | UIDS,
    UIDS,
)
def test_common_responses_match_pydicom(
    cls: type[m.Message], message_id: int, status: int, sop_class: str | None, instance: str
) -> None:
    # C-ECHO-RSP and C-STORE-RSP without error fields are encoded from templates cached per
    # (class, SOP class, status): every combination, in any order, as pydicom encodes it
    kwargs: dict[str, Any] = {"affected_sop_class_uid": sop_class}
    if cls is m.CStoreRSP:
        kwargs["affected_sop_instance_uid"] = instance
    for mid in (message_id, (message_id + 1) & 0xFFFF):
        message = cls(mid, status, **kwargs)
        assert encode_command(message) == pydicom_command(message)
        assert decode_command(encode_command(message)) == message


def test_encode_pads_ae_and_lo_with_space() -> None:
    encoded = encode_command(m.CMoveRQ(1, "1.2", "ABC"))
    assert b"\x00\x00\x00\x06\x04\x00\x00\x00ABC " in encoded
    encoded = encode_command(m.CStoreRSP(1, 0xA700, error_comment="abc"))
    assert b"\x00\x00\x02\x09\x04\x00\x00\x00abc " in encoded


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(ANY_MESSAGE)
def test_round_trip_and_pydicom_equivalence(message: m.Message) -> None:
    encoded = encode_command(message)
    assert decode_command(encoded) == message
    assert decode_command(memoryview(encoded)) == message
    assert encoded == pydicom_command(message)
    # Structure: group length first and correct, tags ascending, even value lengths.
    group, elem, length, value = struct.unpack_from("<HHII", encoded)
    assert (group, elem, length, value) == (0, 0, 4, len(encoded) - 12)
    offset, previous = 12, 0
    while offset < len(encoded):
        group, elem, length = struct.unpack_from("<HHI", encoded, offset)
        assert group == 0 and elem > previous and length % 2 == 0
        previous = elem
        offset += 8 + length
    assert offset == len(encoded)


def _pn_primitive(kind: str, **values: Any) -> Any:
    primitive = getattr(pn_primitives, kind)()
    for key, value in values.items():
        setattr(primitive, key, value)
    return primitive


PYNETDICOM_CASES = [
    (
        m.CEchoRQ(message_id=3),
        "C_ECHO",
        "C_ECHO_RQ",
        {"MessageID": 3, "AffectedSOPClassUID": "1.2.840.10008.1.1"},
    ),
    (
        m.CEchoRSP(3, 0x0000, affected_sop_class_uid="1.2.840.10008.1.1"),
        "C_ECHO",
        "C_ECHO_RSP",
        {"MessageIDBeingRespondedTo": 3, "Status": 0, "AffectedSOPClassUID": "1.2.840.10008.1.1"},
    ),
    (
        m.CStoreRQ(
            7,
            "1.2.840.10008.5.1.4.1.1.2",
            "1.2.3.4.5",
            priority=2,
            move_originator_aet="ORIGIN_AE",
            move_originator_message_id=99,
        ),
        "C_STORE",
        "C_STORE_RQ",
        {
            "MessageID": 7,
            "AffectedSOPClassUID": "1.2.840.10008.5.1.4.1.1.2",
            "AffectedSOPInstanceUID": "1.2.3.4.5",
            "Priority": 2,
            "MoveOriginatorApplicationEntityTitle": "ORIGIN_AE",
            "MoveOriginatorMessageID": 99,
            "DataSet": BytesIO(b"\x08\x00\x16\x00\x02\x00\x00\x001\x00"),
        },
    ),
    (
        m.CStoreRSP(7, 0xB000, "1.2.840.10008.5.1.4.1.1.2", "1.2.3.4.5"),
        "C_STORE",
        "C_STORE_RSP",
        {
            "MessageIDBeingRespondedTo": 7,
            "Status": 0xB000,
            "AffectedSOPClassUID": "1.2.840.10008.5.1.4.1.1.2",
            "AffectedSOPInstanceUID": "1.2.3.4.5",
        },
    ),
    (
        m.CMoveRQ(11, "1.2.840.10008.5.1.4.1.2.2.2", "STORESCP", priority=1),
        "C_MOVE",
        "C_MOVE_RQ",
        {
            "MessageID": 11,
            "AffectedSOPClassUID": "1.2.840.10008.5.1.4.1.2.2.2",
            "MoveDestination": "STORESCP",
            "Priority": 1,
            "Identifier": BytesIO(b"\x08\x00\x52\x00\x06\x00\x00\x00STUDY "),
        },
    ),
    (
        m.CGetRSP(
            12,
            0xFF00,
            "1.2.840.10008.5.1.4.1.2.2.3",
            number_of_remaining_suboperations=5,
            number_of_completed_suboperations=1,
            number_of_failed_suboperations=0,
            number_of_warning_suboperations=2,
        ),
        "C_GET",
        "C_GET_RSP",
        {
            "MessageIDBeingRespondedTo": 12,
            "Status": 0xFF00,
            "AffectedSOPClassUID": "1.2.840.10008.5.1.4.1.2.2.3",
            "NumberOfRemainingSuboperations": 5,
            "NumberOfCompletedSuboperations": 1,
            "NumberOfFailedSuboperations": 0,
            "NumberOfWarningSuboperations": 2,
        },
    ),
    (
        m.CCancelRQ(12),
        "C_CANCEL",
        "C_CANCEL_RQ",
        {"MessageIDBeingRespondedTo": 12},
    ),
    (
        m.NActionRQ(4, "1.2.840.10008.1.20.1", "1.2.840.10008.1.20.1.1", 1, has_dataset=True),
        "N_ACTION",
        "N_ACTION_RQ",
        {
            "MessageID": 4,
            "RequestedSOPClassUID": "1.2.840.10008.1.20.1",
            "RequestedSOPInstanceUID": "1.2.840.10008.1.20.1.1",
            "ActionTypeID": 1,
            "ActionInformation": BytesIO(b"\x08\x00\x95\x11\x02\x00\x00\x001\x00"),
        },
    ),
    (
        m.NEventReportRQ(5, "1.2.840.10008.1.20.1", "1.2.840.10008.1.20.1.1", 2, True),
        "N_EVENT_REPORT",
        "N_EVENT_REPORT_RQ",
        {
            "MessageID": 5,
            "AffectedSOPClassUID": "1.2.840.10008.1.20.1",
            "AffectedSOPInstanceUID": "1.2.840.10008.1.20.1.1",
            "EventTypeID": 2,
            "EventInformation": BytesIO(b"\x08\x00\x95\x11\x02\x00\x00\x001\x00"),
        },
    ),
    (
        m.NGetRQ(6, "1.2.3", "1.2.3.4", attribute_identifier_list=(0x00100010, 0x7FE00010)),
        "N_GET",
        "N_GET_RQ",
        {
            "MessageID": 6,
            "RequestedSOPClassUID": "1.2.3",
            "RequestedSOPInstanceUID": "1.2.3.4",
            "AttributeIdentifierList": [0x00100010, 0x7FE00010],
        },
    ),
]


@pytest.mark.parametrize(
    ("message", "primitive", "message_class", "values"),
    PYNETDICOM_CASES,
    ids=[case[2] for case in PYNETDICOM_CASES],
)
def test_encode_matches_pynetdicom(
    message: m.Message, primitive: str, message_class: str, values: dict[str, Any]
) -> None:
    pn_message = getattr(pn_messages, message_class)()
    pn_message.primitive_to_message(_pn_primitive(primitive, **values))
    # pynetdicom's own encoder path: its P-DATA for the command set.
    pdata = next(iter(pn_message.encode_msg(1, 16382)))
    ((context_id, pdv),) = pdata.presentation_data_value_list
    assert context_id == 1 and pdv[0] == 0x03
    assert encode_command(message) == pdv[1:]
    assert decode_command(pdv[1:]) == message


def test_pynetdicom_decodes_our_pdus() -> None:
    message = m.CStoreRQ(9, "1.2.840.10008.5.1.4.1.1.7", "1.2.3.9", move_originator_aet="X")
    dataset = bytes(range(256)) * 40
    pdus = command_pdus(1, message, 1000) + list(fragment_dataset(1, dataset, 1000))
    pn_message = pn_messages.DIMSEMessage()
    done = False
    for raw in pdus:
        pdu = PnPDataTF()
        pdu.decode(raw)
        done = pn_message.decode_msg(pdu.to_primitive())
    assert done
    assert pn_message.__class__.__name__ == "C_STORE_RQ"
    assert pn_message.command_set.AffectedSOPInstanceUID == "1.2.3.9"
    assert pn_message.command_set.MoveOriginatorApplicationEntityTitle == "X"
    received: Any = pn_message.data_set
    assert received.getvalue() == dataset


def test_we_decode_pynetdicom_pdus() -> None:
    primitive = _pn_primitive(
        "C_FIND",
        MessageID=21,
        AffectedSOPClassUID="1.2.840.10008.5.1.4.1.2.2.1",
        Priority=0,
        Identifier=BytesIO(b"\x08\x00\x52\x00\x06\x00\x00\x00STUDY " * 300),
    )
    pn_message = pn_messages.C_FIND_RQ()
    pn_message.primitive_to_message(primitive)
    assembler = MessageAssembler()
    events = []
    for pdata in pn_message.encode_msg(3, 512):
        raw = PnPDataTF(pdata).encode()
        pdu = decode_pdu(raw)
        assert isinstance(pdu, PDataTF)
        events.extend(assembler.receive(pdu))
    assert events[0] == CommandReceived(3, m.CFindRQ(21, "1.2.840.10008.5.1.4.1.2.2.1"))
    fragments = [e for e in events[1:] if isinstance(e, DatasetFragment)]
    assert len(fragments) == len(events) - 1
    assert [e.last for e in fragments] == [False] * (len(fragments) - 1) + [True]
    identifier: Any = primitive.Identifier
    assert b"".join(e.data for e in fragments) == identifier.getvalue()
    assert assembler.idle


@pytest.mark.parametrize("value", [0x0001, 0x0000, 0x0102, 0xFEFE])
def test_any_dataset_type_other_than_0101_means_present(value: int) -> None:
    message = m.CFindRSP(1, 0xFF00, has_dataset=True)
    decoded = decode_command(pydicom_command(message, dataset_type=value))
    assert decoded.has_dataset is True
    absent = decode_command(pydicom_command(message, dataset_type=0x0101))
    assert absent.has_dataset is False


@pytest.mark.parametrize(
    ("message", "error"),
    [
        (m.CEchoRQ(0x10000), "fit in a US"),
        (m.CEchoRQ(-1), "fit in a US"),
        (m.CStoreRSP(1, 0x10000), "fit in a US"),
        (m.CMoveRQ(1, "1.2", "SEVENTEEN_CHARS_X"), "longer than 16"),
        (m.CMoveRQ(1, "1.2", "   "), "empty"),
        (m.CMoveRQ(1, "1.2", "BAD\\AE"), "backslash"),
        (m.CEchoRQ(1, ""), "empty"),
        (m.CEchoRQ(1, "1.2.\u00e9"), "not ASCII"),
        (m.CStoreRSP(1, 0, error_comment="x" * 65), "longer than 64"),
        (m.CStoreRSP(1, 0, error_comment="line\nbreak"), "control character"),
        (m.CStoreRSP(1, 0, offending_element=(1 << 32,)), "32-bit tag"),
        (m.CStoreRSP(0x10000, 0, "1.2", "1.2.3"), "fit in a US"),
        (m.CStoreRSP(1, 0, "1.2", "1.2\\3"), "backslash"),
        (m.CStoreRSP(1, 0, "1.2", "1.2\x003"), "control character"),
        (m.CStoreRSP(1, 0, "1.2", ""), "empty"),
        (m.CStoreRSP(1, 0, "1.2", "1.2.\u00e9"), "not ASCII"),
        (m.CEchoRSP(1, 0, "1.2.\u00e9"), "not ASCII"),
        (m.CEchoRSP(1, -1), "fit in a US"),
        (m.CEchoRSP("1", 0), "must be an int"),  # type: ignore[arg-type]
        (m.CEchoRQ("1"), "must be an int"),  # type: ignore[arg-type]
    ],
)
def test_encode_refuses_bad_values(message: m.Message, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        encode_command(message)


def test_encode_refuses_non_messages() -> None:
    with pytest.raises(TypeError):
        encode_command(object())  # type: ignore[arg-type]


# --------------------------------------------------------------------------- decoding


def element(elem: int, value: bytes) -> bytes:
    return struct.pack("<HHI", 0, elem, len(value)) + value


def us(elem: int, value: int) -> bytes:
    return element(elem, struct.pack("<H", value))


def with_group_length(body: bytes) -> bytes:
    return struct.pack("<HHII", 0, 0, 4, len(body)) + body


ECHO_BODY = (
    element(0x0002, b"1.2.840.10008.1.1\x00")
    + us(0x0100, 0x0030)
    + us(0x0110, 7)
    + us(0x0800, 0x0101)
)


def test_decode_tolerates_missing_group_length() -> None:
    assert decode_command(ECHO_BODY) == m.CEchoRQ(7)


def test_decode_skips_retired_and_unknown_group_0000_elements() -> None:
    body = (
        element(0x0001, struct.pack("<I", 1234))  # Length to End (retired, UL)
        + element(0x0002, b"1.2.840.10008.1.1\x00")
        + element(0x0010, b"ACR-NEMA 1.0")  # Recognition Code (retired)
        + us(0x0100, 0x0030)
        + us(0x0110, 7)
        + element(0x0200, b"AE")  # Initiator (retired)
        + us(0x0800, 0x0101)
        + element(0x5010, b"12")  # Message Set ID (retired)
        + element(0x7777, b"")  # unknown, empty
    )
    assert decode_command(with_group_length(body)) == m.CEchoRQ(7)


def test_decode_ignores_elements_the_message_does_not_use() -> None:
    body = ECHO_BODY + us(0x0900, 0) + element(0x0902, b"hello ")
    assert decode_command(body) == m.CEchoRQ(7)


def test_decode_strips_padding_and_treats_empty_as_absent() -> None:
    body = (
        element(0x0002, b"1.2.3 ")  # space-padded UID from a sloppy peer
        + us(0x0100, 0x8001)
        + us(0x0120, 2)
        + us(0x0800, 0x0101)
        + us(0x0900, 0)
        + element(0x0902, b"")  # empty error comment
        + element(0x1000, b"")  # empty instance UID
    )
    assert decode_command(body) == m.CStoreRSP(2, 0, affected_sop_class_uid="1.2.3")


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (b"", "empty"),
        (b"\x00\x00\x00\x00\x04\x00", "too short for an element header"),
        (ECHO_BODY + b"\x00\x00", "too short for an element header"),
        (ECHO_BODY + struct.pack("<HHI", 0, 0x0903, 4) + b"\x01\x00", "declares 4 bytes"),
        (ECHO_BODY + struct.pack("<HHI", 0, 0x0903, 0xFFFFFFFF), "declares 4294967295"),
        (struct.pack("<HHI", 8, 0x0018, 2) + b"1\x00" + ECHO_BODY, "outside group 0000"),
        (ECHO_BODY + struct.pack("<HHI", 8, 0x0058, 9) + b"1\x00", "declares 9 bytes"),
        (ECHO_BODY + struct.pack("<HHI", 8, 0x0058, 2) + b"1\x00" + us(0x0902, 0), "follows"),
        (ECHO_BODY + struct.pack("<HHI", 8, 0x0058, 2) + b"1\x00\x00", "too short"),
        (
            struct.pack("<HHII", 0, 0, 4, len(ECHO_BODY) - 2)
            + ECHO_BODY
            + struct.pack("<HHI", 8, 0x0058, 2)
            + b"1\x00",
            "group length says",
        ),
        (struct.pack("<HHII", 0, 0, 4, 999) + ECHO_BODY, "group length says 999"),
        (struct.pack("<HHIH", 0, 0, 2, 5) + ECHO_BODY, "not 4"),
        (ECHO_BODY + struct.pack("<HHII", 0, 0, 4, 0), "not first"),
        (ECHO_BODY + us(0x0110, 8), "appears twice"),
        (ECHO_BODY.replace(us(0x0100, 0x0030), us(0x0100, 0x0031)), "unknown Command Field"),
        (ECHO_BODY.replace(us(0x0100, 0x0030), b""), "no \\(0000,0100\\) Command Field"),
        (ECHO_BODY.replace(us(0x0800, 0x0101), b""), "no \\(0000,0800\\)"),
        (ECHO_BODY.replace(us(0x0110, 7), b""), "lacks mandatory .*message_id"),
        (
            ECHO_BODY.replace(element(0x0002, b"1.2.840.10008.1.1\x00"), b""),
            "C-ECHO-RQ lacks mandatory .*affected_sop_class_uid",
        ),
        (ECHO_BODY.replace(us(0x0110, 7), element(0x0110, b"\x07\x00\x00\x00")), "not 2"),
        (ECHO_BODY + element(0x0901, b"\x10\x00"), "multiple of 4"),
        (ECHO_BODY.replace(b"1.2.840.10008.1.1\x00", b"1.2.840.10008.1.\xff\x00"), "not ASCII"),
    ],
)
def test_decode_malformed(data: bytes, error: str) -> None:
    with pytest.raises(DIMSEError, match=error):
        decode_command(data)


def test_decode_ignores_elements_of_other_groups_after_the_command() -> None:
    """Orthanc 1.10 puts a C-GET-RSP's (0008,0058) Failed SOP Instance UID List in the
    command set, after group 0000 (PS3.7 6.3.1 puts it in the identifier): the command is
    decoded, the trailing element ignored, with or without a group length counting group
    0000 only (or counting everything)."""
    trailing = struct.pack("<HHI", 8, 0x0058, 6) + b"1.2.3\x00"
    assert decode_command(ECHO_BODY + trailing) == m.CEchoRQ(7)
    for counted in (len(ECHO_BODY), len(ECHO_BODY) + len(trailing)):
        with_length = struct.pack("<HHII", 0, 0, 4, counted) + ECHO_BODY + trailing
        assert decode_command(with_length) == m.CEchoRQ(7)


def test_decode_missing_mandatory_of_store_rq_names_the_element() -> None:
    message = m.CStoreRQ(1, "1.2", "1.2.3")
    encoded = encode_command(message)
    broken = encoded.replace(element(0x1000, b"1.2.3\x00"), b"")
    with pytest.raises(DIMSEError, match=r"C-STORE-RQ lacks .*\(0000,1000\)"):
        decode_command(broken[12:])


def test_decode_errors_are_protocol_errors() -> None:
    assert issubclass(DIMSEError, ProtocolError)


@settings(max_examples=500)
@given(ANY_MESSAGE, st.data())
def test_decode_mutated_never_crashes(message: m.Message, data: st.DataObject) -> None:
    encoded = bytearray(encode_command(message))
    for _ in range(data.draw(st.integers(1, 4))):
        action = data.draw(st.sampled_from(["flip", "cut", "insert"]))
        position = data.draw(st.integers(0, len(encoded)))
        if action == "flip" and position < len(encoded):
            encoded[position] ^= data.draw(st.integers(1, 255))
        elif action == "cut":
            del encoded[position:]
        else:
            encoded[position:position] = data.draw(st.binary(min_size=1, max_size=8))
    try:
        result = decode_command(bytes(encoded))
    except DIMSEError:
        return
    assert type(result) in ALL_CLASSES


@given(st.binary(max_size=200))
def test_decode_random_bytes_never_crashes(data: bytes) -> None:
    with contextlib.suppress(DIMSEError):
        decode_command(data)


def test_pydicom_reads_what_we_write() -> None:
    message = full_message(m.CGetRSP)
    ds = pydicom_read(encode_command(message))
    assert ds.CommandField == 0x8010
    assert ds.NumberOfWarningSuboperations == message.number_of_warning_suboperations  # type: ignore[union-attr]
    assert ds.ErrorComment == "odd length"
    assert [int(t) for t in ds.OffendingElement] == [0x00100010, 0x00100020]


# --------------------------------------------------------------------------- fragmentation


def _pdata(raw: bytes) -> PDataTF:
    pdu = decode_pdu(raw)
    assert isinstance(pdu, PDataTF)
    return pdu


def _check_pdus(
    pdus: list[bytes], max_pdu_length: int, *, command: bool, last: bool = True
) -> bytes:
    limit = max_pdu_length or DEFAULT_SEND_PDU_LIMIT
    out = []
    for index, raw in enumerate(pdus):
        (pdu_length,) = struct.unpack_from(">I", raw, 2)
        assert pdu_length == len(raw) - 6
        assert pdu_length <= limit
        (pdv,) = _pdata(raw).pdvs
        final = index == len(pdus) - 1
        assert pdv.context_id == 5
        assert pdv.is_command is command
        assert pdv.is_last is (final and last)
        if not final:
            assert len(pdv.data) % 2 == 0
            assert len(pdv.data) == fragment_size(max_pdu_length)
        out.append(bytes(pdv.data))
    return b"".join(out)


MAX_PDU = st.sampled_from([0]) | st.integers(8, 700)


@settings(max_examples=300)
@given(st.binary(max_size=3000), MAX_PDU)
def test_fragment_dataset_respects_max_pdu(data: bytes, max_pdu_length: int) -> None:
    pdus = list(fragment_dataset(5, data, max_pdu_length))
    assert len(pdus) >= 1
    assert _check_pdus(pdus, max_pdu_length, command=False) == data


@settings(max_examples=200)
@given(st.binary(max_size=3000).map(lambda b: b[: len(b) & ~1]), MAX_PDU)
def test_fragment_dataset_not_last(data: bytes, max_pdu_length: int) -> None:
    pdus = list(fragment_dataset(5, data, max_pdu_length, last=False))
    if not data:
        assert pdus == []
    else:
        assert _check_pdus(pdus, max_pdu_length, command=False, last=False) == data


@settings(max_examples=200)
@given(ANY_MESSAGE, MAX_PDU)
def test_fragment_command_respects_max_pdu(message: m.Message, max_pdu_length: int) -> None:
    command = encode_command(message)
    pdus = fragment_command(5, command, max_pdu_length)
    assert pdus == command_pdus(5, message, max_pdu_length)
    assert _check_pdus(pdus, max_pdu_length, command=True) == command


def test_fragment_sizes() -> None:
    assert fragment_size(16384) == 16378
    assert fragment_size(16383) == 16376  # rounded down to even
    assert fragment_size(8) == 2
    assert fragment_size(0) == DEFAULT_SEND_PDU_LIMIT - 6
    assert fragment_size(1 << 31) == DEFAULT_SEND_PDU_LIMIT - 6
    assert DEFAULT_SEND_PDU_LIMIT == 1 << 20
    with pytest.raises(ValueError):
        fragment_size(7)


def test_empty_dataset_is_one_empty_last_pdv() -> None:
    (raw,) = fragment_dataset(1, b"", 1000)
    assert raw == b"\x04\x00\x00\x00\x00\x06\x00\x00\x00\x02\x01\x02"
    (raw,) = DatasetFragmenter(1, 1000).finish()
    assert raw == b"\x04\x00\x00\x00\x00\x06\x00\x00\x00\x02\x01\x02"


@pytest.mark.parametrize("context_id", [0, 2, 256, -1])
def test_fragmenters_refuse_bad_context_ids(context_id: int) -> None:
    with pytest.raises(ValueError):
        fragment_command(context_id, b"\x00\x00", 100)
    with pytest.raises(ValueError):
        fragment_dataset(context_id, b"\x00\x00", 100)
    with pytest.raises(ValueError):
        DatasetFragmenter(context_id, 100)


def test_fragment_dataset_odd_piece_refused_when_not_last() -> None:
    with pytest.raises(ValueError, match="even"):
        fragment_dataset(1, b"abc", 100, last=False)


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({min(c, len(data)) for c in cuts})
    pieces, start = [], 0
    for point in [*points, len(data)]:
        pieces.append(data[start:point])
        start = point
    return pieces


@settings(max_examples=300)
@given(st.binary(max_size=4000), st.lists(st.integers(0, 4000), max_size=12), MAX_PDU)
def test_dataset_fragmenter_equals_one_shot(
    data: bytes, cuts: list[int], max_pdu_length: int
) -> None:
    fragmenter = DatasetFragmenter(5, max_pdu_length)
    pdus: list[bytes] = []
    emitted = 0
    for piece in _split(data, cuts):
        # Feed through a reusable buffer: the fragmenter must not keep references to it.
        buffer = bytearray(piece)
        new = fragmenter.feed(buffer)
        buffer[:] = b"\xee" * len(buffer)
        pdus.extend(new)
        emitted += sum(len(p) - 12 for p in new)
        # Bounded hold-back: at most one fragment is buffered.
        assert fragmenter.bytes_fed - emitted <= fragment_size(max_pdu_length)
    pdus.extend(fragmenter.finish())
    assert pdus == list(fragment_dataset(5, data, max_pdu_length))
    with pytest.raises(ValueError):
        fragmenter.feed(b"xx")
    with pytest.raises(ValueError):
        fragmenter.finish()


# --------------------------------------------------------------------------- reassembly


def _pdv(context_id: int, header: int, data: bytes | memoryview) -> PresentationDataValue:
    return PresentationDataValue(context_id, header, data)


def _events(assembler: MessageAssembler, pdus: list[bytes]) -> list[Any]:
    events = []
    for raw in pdus:
        events.extend(assembler.receive(_pdata(raw)))
    return events


@settings(max_examples=200)
@given(ANY_MESSAGE, st.binary(max_size=2000), MAX_PDU)
def test_assembler_round_trip(message: m.Message, data: bytes, max_pdu_length: int) -> None:
    assembler = MessageAssembler()
    pdus = command_pdus(7, message, max_pdu_length)
    if message.has_dataset:
        pdus += list(fragment_dataset(7, data, max_pdu_length))
    # Two messages back to back: the assembler is ready for the next one after each.
    events = _events(assembler, pdus + pdus)
    half = len(events) // 2
    for run in (events[:half], events[half:]):
        assert run[0] == CommandReceived(7, message)
        fragments = run[1:]
        if message.has_dataset:
            assert all(isinstance(f, DatasetFragment) and f.context_id == 7 for f in fragments)
            assert [f.last for f in fragments] == [False] * (len(fragments) - 1) + [True]
            assert b"".join(f.data for f in fragments) == data
        else:
            assert fragments == []
    assert assembler.idle and not assembler.expecting_dataset


def test_assembler_several_pdvs_in_one_pdu() -> None:
    command = encode_command(m.CStoreRQ(1, "1.2", "1.2.3"))
    pdu = PDataTF(
        (
            _pdv(3, 0x01, command[:10]),
            _pdv(3, 0x03, command[10:]),
            _pdv(3, 0x00, b"ab"),
            _pdv(3, 0x02, b"cd"),
            _pdv(3, 0x03, encode_command(m.CEchoRQ(2))),
        )
    )
    events = MessageAssembler().receive(pdu)
    assert events == [
        CommandReceived(3, m.CStoreRQ(1, "1.2", "1.2.3")),
        DatasetFragment(3, memoryview(b"ab"), False),
        DatasetFragment(3, memoryview(b"cd"), True),
        CommandReceived(3, m.CEchoRQ(2)),
    ]


def test_assembler_ignores_reserved_control_bits() -> None:
    command = encode_command(m.CEchoRQ(2))
    (event,) = MessageAssembler().receive(PDataTF((_pdv(1, 0xFF, command),)))
    assert event == CommandReceived(1, m.CEchoRQ(2))


def test_assembler_dataset_fragments_are_views_not_copies() -> None:
    assembler = MessageAssembler()
    assembler.receive(PDataTF((_pdv(1, 0x03, encode_command(m.CFindRQ(1, "1.2"))),)))
    payload = b"\x10\x00\x10\x00\x04\x00\x00\x00Doe "
    view = memoryview(payload)
    (event,) = assembler.receive(PDataTF((_pdv(1, 0x02, view),)))
    assert isinstance(event, DatasetFragment)
    assert event.data is view
    assembler = MessageAssembler()
    assembler.receive(PDataTF((_pdv(1, 0x03, encode_command(m.CFindRQ(1, "1.2"))),)))
    (event,) = assembler.receive(PDataTF((_pdv(1, 0x02, payload),)))
    assert isinstance(event, DatasetFragment)
    assert event.data.obj is payload


def _command_pdv(message: m.Message, context_id: int = 1) -> PresentationDataValue:
    return _pdv(context_id, 0x03, encode_command(message))


def test_sequencing_data_before_command() -> None:
    with pytest.raises(DIMSEError, match="before any command set"):
        MessageAssembler().receive(PDataTF((_pdv(1, 0x02, b"xx"),)))


def test_sequencing_data_when_command_says_none() -> None:
    assembler = MessageAssembler()
    assembler.receive(PDataTF((_command_pdv(m.CEchoRQ(1)),)))
    with pytest.raises(DIMSEError, match="C-ECHO-RQ whose Command Data Set Type says no"):
        assembler.receive(PDataTF((_pdv(1, 0x02, b"xx"),)))


def test_sequencing_command_while_dataset_expected() -> None:
    assembler = MessageAssembler()
    assembler.receive(PDataTF((_command_pdv(m.CStoreRQ(1, "1.2", "1.3")),)))
    assert assembler.expecting_dataset
    assembler.receive(PDataTF((_pdv(1, 0x00, b"xx"),)))
    with pytest.raises(DIMSEError, match="data set of C-STORE-RQ is still expected"):
        assembler.receive(PDataTF((_command_pdv(m.CEchoRQ(2)),)))


def test_sequencing_data_inside_command() -> None:
    command = encode_command(m.CStoreRQ(1, "1.2", "1.3"))
    assembler = MessageAssembler()
    assembler.receive(PDataTF((_pdv(1, 0x01, command[:8]),)))
    assert not assembler.idle
    with pytest.raises(DIMSEError, match="before the command set was complete"):
        assembler.receive(PDataTF((_pdv(1, 0x02, b"xx"),)))


@pytest.mark.parametrize("phase", ["command", "dataset"])
def test_sequencing_context_switch(phase: str) -> None:
    command = encode_command(m.CStoreRQ(1, "1.2", "1.3"))
    assembler = MessageAssembler()
    if phase == "command":
        assembler.receive(PDataTF((_pdv(1, 0x01, command[:8]),)))
        bad = _pdv(3, 0x03, command[8:])
    else:
        assembler.receive(PDataTF((_pdv(1, 0x03, command),)))
        bad = _pdv(3, 0x02, b"xx")
    with pytest.raises(DIMSEError, match="context 3 in the middle of a message on context 1"):
        assembler.receive(PDataTF((bad,)))


def test_sequencing_command_too_large() -> None:
    assembler = MessageAssembler(max_command_length=100)
    assembler.receive(PDataTF((_pdv(1, 0x01, b"\x00" * 60),)))
    with pytest.raises(DIMSEError, match="exceeds the limit of 100"):
        assembler.receive(PDataTF((_pdv(1, 0x01, b"\x00" * 42),)))
    # Exactly at the limit is fine (decoding then fails for the junk content).
    assembler = MessageAssembler(max_command_length=len(encode_command(m.CEchoRQ(1))))
    (event,) = assembler.receive(PDataTF((_command_pdv(m.CEchoRQ(1)),)))
    assert event == CommandReceived(1, m.CEchoRQ(1))


def test_sequencing_empty_pdu_and_bad_context() -> None:
    with pytest.raises(DIMSEError, match="without presentation data values"):
        MessageAssembler().receive(PDataTF(()))
    with pytest.raises(DIMSEError, match="invalid presentation context ID 2"):
        MessageAssembler().receive(PDataTF((_command_pdv(m.CEchoRQ(1), context_id=2),)))


def test_bad_command_set_raises_dimse_error_from_assembler() -> None:
    with pytest.raises(DIMSEError, match="unknown Command Field"):
        MessageAssembler().receive(
            PDataTF((_pdv(1, 0x03, ECHO_BODY.replace(us(0x0100, 0x30), us(0x0100, 0x31))),))
        )


def test_empty_dataset_fragment_completes_message() -> None:
    assembler = MessageAssembler()
    pdus = command_pdus(1, m.CStoreRQ(1, "1.2", "1.3"), 0) + list(fragment_dataset(1, b"", 0))
    events = _events(assembler, pdus)
    assert events[1] == DatasetFragment(1, memoryview(b""), True)
    assert assembler.idle


# --------------------------------------------------------------------------- streaming


def _chunks(total: int, chunk_size: int) -> Iterator[bytes]:
    """Deterministic pseudo-random chunks, generated on the fly (never all in memory)."""
    counter = 0
    produced = 0
    while produced < total:
        size = min(chunk_size, total - produced)
        block = hashlib.sha256(counter.to_bytes(8, "little")).digest() * (size // 32 + 1)
        yield block[:size]
        counter += 1
        produced += size


def test_stream_100_mb_through_fragmenter_framer_and_assembler() -> None:
    total = 100 * 1024 * 1024
    max_pdu_length = 65536
    size = fragment_size(max_pdu_length)
    message = m.CStoreRQ(1, "1.2.840.10008.5.1.4.1.1.7", "1.2.3")

    sent = hashlib.sha256()
    received = hashlib.sha256()
    framer = PDUFramer(max_pdata_length=max_pdu_length)
    assembler = MessageAssembler()
    fragmenter = DatasetFragmenter(1, max_pdu_length)
    received_bytes = 0
    fragments = 0
    last_seen = False
    commands: list[Any] = []

    def deliver(pdus: list[bytes]) -> None:
        nonlocal received_bytes, fragments, last_seen
        # Hand the PDUs to the framer as a socket would: in 64 KiB pieces.
        stream = b"".join(pdus)
        for offset in range(0, len(stream), 65536):
            framer.feed(stream[offset : offset + 65536])
            while (pdu := framer.next_pdu()) is not None:
                assert isinstance(pdu, PDataTF)
                events = assembler.receive(pdu)
                for pdv, event in zip(pdu.pdvs, events, strict=True):
                    if isinstance(event, CommandReceived):
                        commands.append(event.message)
                        continue
                    # Zero copy: the event carries the framer's view, not a copy of it.
                    assert event.data is pdv.data
                    assert len(event.data) <= size
                    received.update(event.data)
                    received_bytes += len(event.data)
                    fragments += 1
                    last_seen = event.last

    deliver(command_pdus(1, message, max_pdu_length))
    for chunk in _chunks(total, 1 << 20):
        sent.update(chunk)
        deliver(fragmenter.feed(chunk))
        # Never more than one fragment held back by the sender or buffered by the framer.
        assert fragmenter.bytes_fed - received_bytes <= size
        assert framer.buffered < max_pdu_length + 6
    assert not last_seen
    deliver(fragmenter.finish())

    assert commands == [message]
    assert last_seen and assembler.idle
    assert received_bytes == total
    assert fragments == -(-total // size)
    assert received.digest() == sent.digest()


def test_encode_pdata_contract_used_by_fragmenters() -> None:
    # The fragmenters rely on codec.encode_pdata producing one PDV per PDU with this layout.
    raw = encode_pdata(3, 0x02, memoryview(b"abcd"))
    assert raw == b"\x04\x00\x00\x00\x00\x0a\x00\x00\x00\x06\x03\x02abcd"
