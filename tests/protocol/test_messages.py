"""DIMSE message dataclasses (PS3.7 9.3, 10.3, Annex E) and the UID constants."""

from __future__ import annotations

import dataclasses
import re
from typing import Any, get_args

import pytest
from pydicom._uid_dict import UID_dictionary
from pydicom.uid import UID

from asyncdicom.protocol import messages as m
from asyncdicom.protocol import uids
from asyncdicom.protocol.status import StatusCategory

ALL_CLASSES = list(m.MESSAGE_TYPES.values())

# PS3.7 Annex E, independent of the module's own table.
EXPECTED_COMMAND_FIELDS = {
    "CStoreRQ": 0x0001,
    "CStoreRSP": 0x8001,
    "CGetRQ": 0x0010,
    "CGetRSP": 0x8010,
    "CFindRQ": 0x0020,
    "CFindRSP": 0x8020,
    "CMoveRQ": 0x0021,
    "CMoveRSP": 0x8021,
    "CEchoRQ": 0x0030,
    "CEchoRSP": 0x8030,
    "NEventReportRQ": 0x0100,
    "NEventReportRSP": 0x8100,
    "NGetRQ": 0x0110,
    "NGetRSP": 0x8110,
    "NSetRQ": 0x0120,
    "NSetRSP": 0x8120,
    "NActionRQ": 0x0130,
    "NActionRSP": 0x8130,
    "NCreateRQ": 0x0140,
    "NCreateRSP": 0x8140,
    "NDeleteRQ": 0x0150,
    "NDeleteRSP": 0x8150,
    "CCancelRQ": 0x0FFF,
}

# Mandatory elements per request (PS3.7 section 8.4 of the reference / PS3.7 9.1, 10.1).
EXPECTED_REQUIRED = {
    "CEchoRQ": {"message_id", "affected_sop_class_uid"},
    "CStoreRQ": {"message_id", "affected_sop_class_uid", "affected_sop_instance_uid"},
    "CFindRQ": {"message_id", "affected_sop_class_uid"},
    "CGetRQ": {"message_id", "affected_sop_class_uid"},
    "CMoveRQ": {"message_id", "affected_sop_class_uid", "move_destination"},
    "CCancelRQ": {"message_id_being_responded_to"},
    "NEventReportRQ": {
        "message_id",
        "affected_sop_class_uid",
        "affected_sop_instance_uid",
        "event_type_id",
    },
    "NGetRQ": {"message_id", "requested_sop_class_uid", "requested_sop_instance_uid"},
    "NSetRQ": {"message_id", "requested_sop_class_uid", "requested_sop_instance_uid"},
    "NActionRQ": {
        "message_id",
        "requested_sop_class_uid",
        "requested_sop_instance_uid",
        "action_type_id",
    },
    "NCreateRQ": {"message_id", "affected_sop_class_uid"},
    "NDeleteRQ": {"message_id", "requested_sop_class_uid", "requested_sop_instance_uid"},
}


def test_message_types_cover_every_command_field() -> None:
    assert {cls.__name__: cf for cf, cls in m.MESSAGE_TYPES.items()} == EXPECTED_COMMAND_FIELDS
    for cls in ALL_CLASSES:
        assert EXPECTED_COMMAND_FIELDS[cls.__name__] == cls.COMMAND_FIELD
        assert m.CommandField[cls.NAME.replace("-", "_")] == cls.COMMAND_FIELD


def test_responses_pair_with_requests() -> None:
    for cf, cls in m.MESSAGE_TYPES.items():
        if cls.__name__.endswith("RSP"):
            request = m.MESSAGE_TYPES[cf & 0x7FFF]
            assert request.__name__ == cls.__name__[:-3] + "RQ"
            assert issubclass(cls, m.Response)
        elif cls is m.CCancelRQ:
            # it starts no operation: no Message ID of its own (PS3.7 Table 9.3-3)
            assert not issubclass(cls, m.Request)
        else:
            assert issubclass(cls, m.Request)


def test_bases_declare_the_message_id_fields() -> None:
    # PS3.7 9.3 / 10.3: every request that starts an operation has Message ID (0000,0110),
    # every response and C-CANCEL-RQ Message ID Being Responded To (0000,0120); the bases
    # declare them so that code holding a Request or a Response can read them typed.
    assert m.Request.__annotations__["message_id"] in (int, "int")
    assert m.Response.__annotations__["message_id_being_responded_to"] in (int, "int")
    for cls in m.MESSAGE_TYPES.values():
        names = {f.name for f in dataclasses.fields(cls)}
        if issubclass(cls, m.Request):
            assert "message_id" in names, cls.NAME
        else:
            assert "message_id_being_responded_to" in names, cls.NAME
    assert set(get_args(m.RequestMessage)) == {
        c for c in m.MESSAGE_TYPES.values() if issubclass(c, m.Request)
    }
    assert set(get_args(m.ResponseMessage)) == {
        c for c in m.MESSAGE_TYPES.values() if issubclass(c, m.Response)
    }


def test_required_fields() -> None:
    for cls in ALL_CLASSES:
        name = cls.__name__
        if name.endswith("RSP"):
            assert {"message_id_being_responded_to", "status"} == cls.REQUIRED, name
        else:
            assert EXPECTED_REQUIRED[name] == cls.REQUIRED, name


def _minimal(cls: type[m.Message]) -> m.Message:
    values = {
        "message_id": 1,
        "message_id_being_responded_to": 1,
        "status": 0xFF00,
        "affected_sop_class_uid": "1.2.3",
        "affected_sop_instance_uid": "1.2.3.4",
        "requested_sop_class_uid": "1.2.3",
        "requested_sop_instance_uid": "1.2.3.4",
        "move_destination": "DEST",
        "event_type_id": 1,
        "action_type_id": 1,
    }
    kwargs: dict[str, Any] = {
        f.name: values[f.name] for f in dataclasses.fields(cls) if f.name in cls.REQUIRED
    }
    return cls(**kwargs)


@pytest.mark.parametrize("cls", ALL_CLASSES, ids=lambda c: c.__name__)
def test_frozen_slotted_and_flags(cls: type[m.Message]) -> None:
    message = _minimal(cls)
    assert not hasattr(message, "__dict__")
    with pytest.raises(dataclasses.FrozenInstanceError):
        message.has_dataset = True  # type: ignore[misc]
    assert message.is_response == cls.__name__.endswith("RSP")
    if isinstance(message, m.Response):
        assert message.category is StatusCategory.PENDING
    # Optional fields default to None.
    for f in dataclasses.fields(cls):
        if f.name not in cls.REQUIRED and f.name not in ("has_dataset", "priority"):
            if cls is m.CEchoRQ and f.name == "affected_sop_class_uid":
                continue
            assert getattr(message, f.name) is None, f.name


def test_has_dataset_defaults() -> None:
    with_dataset = {"CStoreRQ", "CFindRQ", "CGetRQ", "CMoveRQ", "NSetRQ"}
    for cls in ALL_CLASSES:
        assert _minimal(cls).has_dataset == (cls.__name__ in with_dataset), cls.__name__


def test_defaults_and_category() -> None:
    assert m.CEchoRQ(5).affected_sop_class_uid == uids.VERIFICATION
    assert m.CFindRQ(1, uids.STUDY_ROOT_QR_FIND).priority == m.Priority.MEDIUM
    assert [int(p) for p in (m.Priority.MEDIUM, m.Priority.HIGH, m.Priority.LOW)] == [0, 1, 2]
    assert m.CStoreRSP(1, 0x0000).category is StatusCategory.SUCCESS
    assert m.CStoreRSP(1, 0xB007).category is StatusCategory.WARNING
    assert m.CMoveRSP(1, 0xA801).category is StatusCategory.FAILURE
    assert m.CFindRSP(1, 0xFE00).category is StatusCategory.CANCEL


# --------------------------------------------------------------------------- UIDs

_UID_RE = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*")


def _uid_constants() -> dict[str, str]:
    return {
        name: value
        for name, value in vars(uids).items()
        if name.isupper() and isinstance(value, str) and name != "IMPLEMENTATION_VERSION_NAME"
    }


def test_uid_constants_are_valid_and_known_to_pydicom() -> None:
    constants = _uid_constants()
    assert len(constants) > 60
    for name, value in constants.items():
        assert _UID_RE.fullmatch(value) and len(value) <= 64, name
        if name != "IMPLEMENTATION_CLASS_UID":
            assert value in UID_dictionary, name
    # Spot checks against the reference (section 9).
    assert uids.VERIFICATION == "1.2.840.10008.1.1"
    assert uids.STORAGE_COMMITMENT_PUSH_MODEL_INSTANCE == "1.2.840.10008.1.20.1.1"
    assert uids.STUDY_ROOT_QR_FIND == "1.2.840.10008.5.1.4.1.2.2.1"
    assert uids.PATIENT_ROOT_QR_GET == "1.2.840.10008.5.1.4.1.2.1.3"
    assert uids.CT_IMAGE_STORAGE == "1.2.840.10008.5.1.4.1.1.2"
    assert uids.JPEG_LOSSLESS_SV1 == "1.2.840.10008.1.2.4.70"
    assert uids.RLE_LOSSLESS == "1.2.840.10008.1.2.5"


def test_storage_constant_names_match_dictionary_kind() -> None:
    for name, value in _uid_constants().items():
        if name.endswith("_STORAGE") or "_STORAGE_FOR_" in name:
            assert UID_dictionary[value][1] == "SOP Class", name
            assert uids.is_storage_sop_class(value), name


def test_implementation_identity() -> None:
    assert uids.IMPLEMENTATION_CLASS_UID.startswith("2.25.")  # our own root (PS3.5 B.2)
    assert 1 <= len(uids.IMPLEMENTATION_VERSION_NAME) <= 16
    assert uids.IMPLEMENTATION_VERSION_NAME.isascii()


def test_transfer_syntax_groups() -> None:
    for group in (
        uids.UNCOMPRESSED_TRANSFER_SYNTAXES,
        uids.COMPRESSED_TRANSFER_SYNTAXES,
        uids.ALL_TRANSFER_SYNTAXES,
    ):
        assert len(set(group)) == len(group)
        for ts in group:
            assert UID_dictionary[ts][1] == "Transfer Syntax", ts
    assert uids.UNCOMPRESSED_TRANSFER_SYNTAXES[0] == uids.EXPLICIT_VR_LITTLE_ENDIAN
    assert uids.IMPLICIT_VR_LITTLE_ENDIAN in uids.UNCOMPRESSED_TRANSFER_SYNTAXES
    for ts in uids.UNCOMPRESSED_TRANSFER_SYNTAXES:
        assert not UID(ts).is_compressed and not UID(ts).is_encapsulated
    for ts in uids.COMPRESSED_TRANSFER_SYNTAXES:
        assert UID(ts).is_compressed or UID(ts).is_deflated, ts
    assert set(uids.UNCOMPRESSED_TRANSFER_SYNTAXES) <= set(uids.ALL_TRANSFER_SYNTAXES)
    assert set(uids.COMPRESSED_TRANSFER_SYNTAXES) <= set(uids.ALL_TRANSFER_SYNTAXES)
    ts_constants = {
        v
        for v in _uid_constants().values()
        if UID_dictionary.get(v, ("", ""))[1] == "Transfer Syntax"
    }
    assert ts_constants == set(uids.ALL_TRANSFER_SYNTAXES)


def test_storage_sop_classes() -> None:
    classes = uids.storage_sop_classes()
    assert classes is uids.storage_sop_classes()  # cached
    assert len(classes) == len(set(classes)) > 150
    for uid in classes:
        name, kind = UID_dictionary[uid][:2]
        assert kind == "SOP Class"
        assert "Storage" in name and "Commitment" not in name
    for expected in (
        uids.CT_IMAGE_STORAGE,
        uids.MR_IMAGE_STORAGE,
        uids.DIGITAL_XRAY_IMAGE_STORAGE_FOR_PROCESSING,
        uids.ENCAPSULATED_PDF_STORAGE,
        uids.RT_PLAN_STORAGE,
        "1.2.840.10008.5.1.4.1.1.6",  # retired Ultrasound Image Storage: still C-STORE-able
        "1.2.840.10008.5.1.4.38.1",  # Hanging Protocol Storage, outside 5.1.4.1.1
    ):
        assert uids.is_storage_sop_class(expected), expected
    for not_storage in (
        uids.VERIFICATION,
        uids.STORAGE_COMMITMENT_PUSH_MODEL,
        "1.2.840.10008.1.20.2",  # Storage Commitment Pull Model (retired)
        "1.2.840.10008.1.3.10",  # Media Storage Directory Storage (media only)
        uids.STUDY_ROOT_QR_FIND,
        uids.MODALITY_WORKLIST_FIND,
        uids.CT_IMAGE_STORAGE + ".1234",
    ):
        assert not uids.is_storage_sop_class(not_storage), not_storage
    # Every SOP class in the storage branch of PS3.6 whose dictionary entry has a name and that is
    # not a query/retrieve model is included.
    for uid, entry in UID_dictionary.items():
        name, kind = entry[0], entry[1]
        if uid.startswith("1.2.840.10008.5.1.4.1.1.") and kind == "SOP Class" and "Storage" in name:
            assert uids.is_storage_sop_class(uid), uid
