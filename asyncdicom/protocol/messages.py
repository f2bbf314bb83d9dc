"""DIMSE message dataclasses, one per command (PS3.7 sections 9.3 and 10.3, Annex E).

Each class holds the command elements of its message (the command set, group 0000) as
snake_case fields; the data set that may follow travels separately (see
:mod:`asyncdicom.protocol.dimse`).  Field names and element tags:

==================================  ============  ====================================
field                               tag           VR
==================================  ============  ====================================
affected_sop_class_uid              (0000,0002)   UI
requested_sop_class_uid             (0000,0003)   UI
message_id                          (0000,0110)   US
message_id_being_responded_to       (0000,0120)   US
move_destination                    (0000,0600)   AE
priority                            (0000,0700)   US
has_dataset                         (0000,0800)   US (0x0101 = False, anything else True)
status                              (0000,0900)   US
offending_element                   (0000,0901)   AT (tuple of int tags ``0xGGGGEEEE``)
error_comment                       (0000,0902)   LO
error_id                            (0000,0903)   US
affected_sop_instance_uid           (0000,1000)   UI
requested_sop_instance_uid          (0000,1001)   UI
event_type_id                       (0000,1002)   US
attribute_identifier_list           (0000,1005)   AT (tuple of int tags)
action_type_id                      (0000,1008)   US
number_of_remaining_suboperations   (0000,1020)   US
number_of_completed_suboperations   (0000,1021)   US
number_of_failed_suboperations      (0000,1022)   US
number_of_warning_suboperations     (0000,1023)   US
move_originator_aet                 (0000,1030)   AE
move_originator_message_id          (0000,1031)   US
==================================  ============  ====================================

Mandatory elements (PS3.7 "M") are fields without a default; :func:`dimse.decode_command`
rejects a command set that lacks one.  Two exceptions for convenience, both tolerated when absent
on receipt: ``priority`` defaults to MEDIUM (0) and :class:`CEchoRQ`'s
``affected_sop_class_uid`` defaults to the Verification SOP class (it is still required on
receipt).  Optional and conditional elements default to ``None`` (= not sent).

Every response class carries the status-related elements of PS3.7 Annex C
(``offending_element``, ``error_comment``, ``error_id``, and for N-services
``attribute_identifier_list``) so that nothing a peer sends is lost.

``has_dataset`` mirrors Command Data Set Type (0000,0800); its default is what the message
normally carries (True for C-STORE-RQ, C-FIND/C-GET/C-MOVE-RQ and N-SET-RQ, False otherwise).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import ClassVar

from .status import StatusCategory, category
from .uids import VERIFICATION

__all__ = [
    "MESSAGE_TYPES",
    "CCancelRQ",
    "CEchoRQ",
    "CEchoRSP",
    "CFindRQ",
    "CFindRSP",
    "CGetRQ",
    "CGetRSP",
    "CMoveRQ",
    "CMoveRSP",
    "CStoreRQ",
    "CStoreRSP",
    "CommandField",
    "Message",
    "NActionRQ",
    "NActionRSP",
    "NCreateRQ",
    "NCreateRSP",
    "NDeleteRQ",
    "NDeleteRSP",
    "NEventReportRQ",
    "NEventReportRSP",
    "NGetRQ",
    "NGetRSP",
    "NSetRQ",
    "NSetRSP",
    "Priority",
    "Request",
    "RequestMessage",
    "Response",
    "ResponseMessage",
    "sop_class_uid",
]


class CommandField(IntEnum):
    """Command Field (0000,0100) values (PS3.7 Annex E); a response is its request | 0x8000."""

    C_STORE_RQ = 0x0001
    C_STORE_RSP = 0x8001
    C_GET_RQ = 0x0010
    C_GET_RSP = 0x8010
    C_FIND_RQ = 0x0020
    C_FIND_RSP = 0x8020
    C_MOVE_RQ = 0x0021
    C_MOVE_RSP = 0x8021
    C_ECHO_RQ = 0x0030
    C_ECHO_RSP = 0x8030
    N_EVENT_REPORT_RQ = 0x0100
    N_EVENT_REPORT_RSP = 0x8100
    N_GET_RQ = 0x0110
    N_GET_RSP = 0x8110
    N_SET_RQ = 0x0120
    N_SET_RSP = 0x8120
    N_ACTION_RQ = 0x0130
    N_ACTION_RSP = 0x8130
    N_CREATE_RQ = 0x0140
    N_CREATE_RSP = 0x8140
    N_DELETE_RQ = 0x0150
    N_DELETE_RSP = 0x8150
    C_CANCEL_RQ = 0x0FFF


class Priority(IntEnum):
    """Priority (0000,0700) values (PS3.7 Annex E)."""

    MEDIUM = 0x0000
    HIGH = 0x0001
    LOW = 0x0002


class _MessageBase:
    """Behaviour shared by all message classes (no fields; the dataclasses add them)."""

    __slots__ = ()

    #: Command Data Set Type (0000,0800): a data set follows the command set
    has_dataset: bool

    #: the Command Field (0000,0100) value of the class
    COMMAND_FIELD: ClassVar[int]
    #: the DIMSE name, e.g. "C-ECHO-RQ"
    NAME: ClassVar[str]
    #: fields that must be present in a received command set (PS3.7 "M")
    REQUIRED: ClassVar[frozenset[str]] = frozenset()

    @property
    def is_response(self) -> bool:
        """True for the -RSP messages (bit 15 of the command field set)."""
        return bool(self.COMMAND_FIELD & 0x8000)


class Request(_MessageBase):
    """Base of the request messages that start an operation; every one carries a Message ID.

    C-CANCEL-RQ is not one of them: it starts nothing and carries Message ID Being Responded
    To (see :class:`CCancelRQ`)."""

    __slots__ = ()

    #: Message ID (0000,0110)
    message_id: int


class Response(_MessageBase):
    """Base of the response messages."""

    __slots__ = ()

    #: Message ID Being Responded To (0000,0120)
    message_id_being_responded_to: int
    #: Status (0000,0900)
    status: int

    @property
    def category(self) -> StatusCategory:
        """The class of :attr:`status` (PS3.7 Annex C)."""
        return category(self.status)


# --------------------------------------------------------------------------- C-ECHO


@dataclass(frozen=True, slots=True)
class CEchoRQ(Request):
    """C-ECHO-RQ (PS3.7 9.3.5.1)."""

    COMMAND_FIELD: ClassVar[int] = 0x0030
    NAME: ClassVar[str] = "C-ECHO-RQ"
    REQUIRED: ClassVar[frozenset[str]] = frozenset({"message_id", "affected_sop_class_uid"})

    message_id: int
    affected_sop_class_uid: str = VERIFICATION
    has_dataset: bool = False


@dataclass(frozen=True, slots=True)
class CEchoRSP(Response):
    """C-ECHO-RSP (PS3.7 9.3.5.2)."""

    COMMAND_FIELD: ClassVar[int] = 0x8030
    NAME: ClassVar[str] = "C-ECHO-RSP"

    message_id_being_responded_to: int
    status: int
    affected_sop_class_uid: str | None = None
    offending_element: tuple[int, ...] | None = None
    error_comment: str | None = None
    error_id: int | None = None
    has_dataset: bool = False


# --------------------------------------------------------------------------- C-STORE


@dataclass(frozen=True, slots=True)
class CStoreRQ(Request):
    """C-STORE-RQ (PS3.7 9.3.1.1); the data set (the SOP instance) follows."""

    COMMAND_FIELD: ClassVar[int] = 0x0001
    NAME: ClassVar[str] = "C-STORE-RQ"

    message_id: int
    affected_sop_class_uid: str
    affected_sop_instance_uid: str
    priority: int = Priority.MEDIUM
    move_originator_aet: str | None = None
    move_originator_message_id: int | None = None
    has_dataset: bool = True


@dataclass(frozen=True, slots=True)
class CStoreRSP(Response):
    """C-STORE-RSP (PS3.7 9.3.1.2)."""

    COMMAND_FIELD: ClassVar[int] = 0x8001
    NAME: ClassVar[str] = "C-STORE-RSP"

    message_id_being_responded_to: int
    status: int
    affected_sop_class_uid: str | None = None
    affected_sop_instance_uid: str | None = None
    offending_element: tuple[int, ...] | None = None
    error_comment: str | None = None
    error_id: int | None = None
    has_dataset: bool = False


# --------------------------------------------------------------------------- C-FIND


@dataclass(frozen=True, slots=True)
class CFindRQ(Request):
    """C-FIND-RQ (PS3.7 9.3.2.1); the identifier (query keys) follows."""

    COMMAND_FIELD: ClassVar[int] = 0x0020
    NAME: ClassVar[str] = "C-FIND-RQ"

    message_id: int
    affected_sop_class_uid: str
    priority: int = Priority.MEDIUM
    has_dataset: bool = True


@dataclass(frozen=True, slots=True)
class CFindRSP(Response):
    """C-FIND-RSP (PS3.7 9.3.2.2); pending responses carry a matching identifier."""

    COMMAND_FIELD: ClassVar[int] = 0x8020
    NAME: ClassVar[str] = "C-FIND-RSP"

    message_id_being_responded_to: int
    status: int
    affected_sop_class_uid: str | None = None
    offending_element: tuple[int, ...] | None = None
    error_comment: str | None = None
    error_id: int | None = None
    has_dataset: bool = False


# --------------------------------------------------------------------------- C-GET


@dataclass(frozen=True, slots=True)
class CGetRQ(Request):
    """C-GET-RQ (PS3.7 9.3.3.1); the identifier follows."""

    COMMAND_FIELD: ClassVar[int] = 0x0010
    NAME: ClassVar[str] = "C-GET-RQ"

    message_id: int
    affected_sop_class_uid: str
    priority: int = Priority.MEDIUM
    has_dataset: bool = True


@dataclass(frozen=True, slots=True)
class CGetRSP(Response):
    """C-GET-RSP (PS3.7 9.3.3.2)."""

    COMMAND_FIELD: ClassVar[int] = 0x8010
    NAME: ClassVar[str] = "C-GET-RSP"

    message_id_being_responded_to: int
    status: int
    affected_sop_class_uid: str | None = None
    number_of_remaining_suboperations: int | None = None
    number_of_completed_suboperations: int | None = None
    number_of_failed_suboperations: int | None = None
    number_of_warning_suboperations: int | None = None
    offending_element: tuple[int, ...] | None = None
    error_comment: str | None = None
    error_id: int | None = None
    has_dataset: bool = False


# --------------------------------------------------------------------------- C-MOVE


@dataclass(frozen=True, slots=True)
class CMoveRQ(Request):
    """C-MOVE-RQ (PS3.7 9.3.4.1); the identifier follows."""

    COMMAND_FIELD: ClassVar[int] = 0x0021
    NAME: ClassVar[str] = "C-MOVE-RQ"

    message_id: int
    affected_sop_class_uid: str
    move_destination: str
    priority: int = Priority.MEDIUM
    has_dataset: bool = True


@dataclass(frozen=True, slots=True)
class CMoveRSP(Response):
    """C-MOVE-RSP (PS3.7 9.3.4.2)."""

    COMMAND_FIELD: ClassVar[int] = 0x8021
    NAME: ClassVar[str] = "C-MOVE-RSP"

    message_id_being_responded_to: int
    status: int
    affected_sop_class_uid: str | None = None
    number_of_remaining_suboperations: int | None = None
    number_of_completed_suboperations: int | None = None
    number_of_failed_suboperations: int | None = None
    number_of_warning_suboperations: int | None = None
    offending_element: tuple[int, ...] | None = None
    error_comment: str | None = None
    error_id: int | None = None
    has_dataset: bool = False


# --------------------------------------------------------------------------- C-CANCEL


@dataclass(frozen=True, slots=True)
class CCancelRQ(_MessageBase):
    """C-CANCEL-RQ (PS3.7 9.3.2.3 and following); it has no response of its own and is not a
    :class:`Request` (it starts no operation: it names the one it cancels)."""

    COMMAND_FIELD: ClassVar[int] = 0x0FFF
    NAME: ClassVar[str] = "C-CANCEL-RQ"

    message_id_being_responded_to: int
    has_dataset: bool = False


# --------------------------------------------------------------------------- N-EVENT-REPORT


@dataclass(frozen=True, slots=True)
class NEventReportRQ(Request):
    """N-EVENT-REPORT-RQ (PS3.7 10.3.1.1); Event Information may follow."""

    COMMAND_FIELD: ClassVar[int] = 0x0100
    NAME: ClassVar[str] = "N-EVENT-REPORT-RQ"

    message_id: int
    affected_sop_class_uid: str
    affected_sop_instance_uid: str
    event_type_id: int
    has_dataset: bool = False


@dataclass(frozen=True, slots=True)
class NEventReportRSP(Response):
    """N-EVENT-REPORT-RSP (PS3.7 10.3.1.2); Event Reply may follow."""

    COMMAND_FIELD: ClassVar[int] = 0x8100
    NAME: ClassVar[str] = "N-EVENT-REPORT-RSP"

    message_id_being_responded_to: int
    status: int
    affected_sop_class_uid: str | None = None
    affected_sop_instance_uid: str | None = None
    event_type_id: int | None = None
    attribute_identifier_list: tuple[int, ...] | None = None
    offending_element: tuple[int, ...] | None = None
    error_comment: str | None = None
    error_id: int | None = None
    has_dataset: bool = False


# --------------------------------------------------------------------------- N-GET


@dataclass(frozen=True, slots=True)
class NGetRQ(Request):
    """N-GET-RQ (PS3.7 10.3.2.1); no Attribute Identifier List means all attributes."""

    COMMAND_FIELD: ClassVar[int] = 0x0110
    NAME: ClassVar[str] = "N-GET-RQ"

    message_id: int
    requested_sop_class_uid: str
    requested_sop_instance_uid: str
    attribute_identifier_list: tuple[int, ...] | None = None
    has_dataset: bool = False


@dataclass(frozen=True, slots=True)
class NGetRSP(Response):
    """N-GET-RSP (PS3.7 10.3.2.2); the Attribute List follows on success."""

    COMMAND_FIELD: ClassVar[int] = 0x8110
    NAME: ClassVar[str] = "N-GET-RSP"

    message_id_being_responded_to: int
    status: int
    affected_sop_class_uid: str | None = None
    affected_sop_instance_uid: str | None = None
    attribute_identifier_list: tuple[int, ...] | None = None
    offending_element: tuple[int, ...] | None = None
    error_comment: str | None = None
    error_id: int | None = None
    has_dataset: bool = False


# --------------------------------------------------------------------------- N-SET


@dataclass(frozen=True, slots=True)
class NSetRQ(Request):
    """N-SET-RQ (PS3.7 10.3.3.1); the Modification List follows."""

    COMMAND_FIELD: ClassVar[int] = 0x0120
    NAME: ClassVar[str] = "N-SET-RQ"

    message_id: int
    requested_sop_class_uid: str
    requested_sop_instance_uid: str
    has_dataset: bool = True


@dataclass(frozen=True, slots=True)
class NSetRSP(Response):
    """N-SET-RSP (PS3.7 10.3.3.2)."""

    COMMAND_FIELD: ClassVar[int] = 0x8120
    NAME: ClassVar[str] = "N-SET-RSP"

    message_id_being_responded_to: int
    status: int
    affected_sop_class_uid: str | None = None
    affected_sop_instance_uid: str | None = None
    attribute_identifier_list: tuple[int, ...] | None = None
    offending_element: tuple[int, ...] | None = None
    error_comment: str | None = None
    error_id: int | None = None
    has_dataset: bool = False


# --------------------------------------------------------------------------- N-ACTION


@dataclass(frozen=True, slots=True)
class NActionRQ(Request):
    """N-ACTION-RQ (PS3.7 10.3.4.1); Action Information may follow."""

    COMMAND_FIELD: ClassVar[int] = 0x0130
    NAME: ClassVar[str] = "N-ACTION-RQ"

    message_id: int
    requested_sop_class_uid: str
    requested_sop_instance_uid: str
    action_type_id: int
    has_dataset: bool = False


@dataclass(frozen=True, slots=True)
class NActionRSP(Response):
    """N-ACTION-RSP (PS3.7 10.3.4.2); Action Reply may follow."""

    COMMAND_FIELD: ClassVar[int] = 0x8130
    NAME: ClassVar[str] = "N-ACTION-RSP"

    message_id_being_responded_to: int
    status: int
    affected_sop_class_uid: str | None = None
    affected_sop_instance_uid: str | None = None
    action_type_id: int | None = None
    attribute_identifier_list: tuple[int, ...] | None = None
    offending_element: tuple[int, ...] | None = None
    error_comment: str | None = None
    error_id: int | None = None
    has_dataset: bool = False


# --------------------------------------------------------------------------- N-CREATE


@dataclass(frozen=True, slots=True)
class NCreateRQ(Request):
    """N-CREATE-RQ (PS3.7 10.3.5.1); without an instance UID the SCP assigns one."""

    COMMAND_FIELD: ClassVar[int] = 0x0140
    NAME: ClassVar[str] = "N-CREATE-RQ"

    message_id: int
    affected_sop_class_uid: str
    affected_sop_instance_uid: str | None = None
    has_dataset: bool = False


@dataclass(frozen=True, slots=True)
class NCreateRSP(Response):
    """N-CREATE-RSP (PS3.7 10.3.5.2)."""

    COMMAND_FIELD: ClassVar[int] = 0x8140
    NAME: ClassVar[str] = "N-CREATE-RSP"

    message_id_being_responded_to: int
    status: int
    affected_sop_class_uid: str | None = None
    affected_sop_instance_uid: str | None = None
    attribute_identifier_list: tuple[int, ...] | None = None
    offending_element: tuple[int, ...] | None = None
    error_comment: str | None = None
    error_id: int | None = None
    has_dataset: bool = False


# --------------------------------------------------------------------------- N-DELETE


@dataclass(frozen=True, slots=True)
class NDeleteRQ(Request):
    """N-DELETE-RQ (PS3.7 10.3.6.1)."""

    COMMAND_FIELD: ClassVar[int] = 0x0150
    NAME: ClassVar[str] = "N-DELETE-RQ"

    message_id: int
    requested_sop_class_uid: str
    requested_sop_instance_uid: str
    has_dataset: bool = False


@dataclass(frozen=True, slots=True)
class NDeleteRSP(Response):
    """N-DELETE-RSP (PS3.7 10.3.6.2)."""

    COMMAND_FIELD: ClassVar[int] = 0x8150
    NAME: ClassVar[str] = "N-DELETE-RSP"

    message_id_being_responded_to: int
    status: int
    affected_sop_class_uid: str | None = None
    affected_sop_instance_uid: str | None = None
    attribute_identifier_list: tuple[int, ...] | None = None
    offending_element: tuple[int, ...] | None = None
    error_comment: str | None = None
    error_id: int | None = None
    has_dataset: bool = False


#: the request messages (each a :class:`Request`: it carries ``message_id``)
RequestMessage = (
    CEchoRQ
    | CStoreRQ
    | CFindRQ
    | CGetRQ
    | CMoveRQ
    | NEventReportRQ
    | NGetRQ
    | NSetRQ
    | NActionRQ
    | NCreateRQ
    | NDeleteRQ
)

#: the response messages (each a :class:`Response`: it carries
#: ``message_id_being_responded_to`` and ``status``)
ResponseMessage = (
    CEchoRSP
    | CStoreRSP
    | CFindRSP
    | CGetRSP
    | CMoveRSP
    | NEventReportRSP
    | NGetRSP
    | NSetRSP
    | NActionRSP
    | NCreateRSP
    | NDeleteRSP
)

#: every DIMSE message
Message = RequestMessage | ResponseMessage | CCancelRQ

_ALL: tuple[type[Message], ...] = (
    CEchoRQ,
    CEchoRSP,
    CStoreRQ,
    CStoreRSP,
    CFindRQ,
    CFindRSP,
    CGetRQ,
    CGetRSP,
    CMoveRQ,
    CMoveRSP,
    CCancelRQ,
    NEventReportRQ,
    NEventReportRSP,
    NGetRQ,
    NGetRSP,
    NSetRQ,
    NSetRSP,
    NActionRQ,
    NActionRSP,
    NCreateRQ,
    NCreateRSP,
    NDeleteRQ,
    NDeleteRSP,
)

#: Message class by Command Field value.
MESSAGE_TYPES: dict[int, type[Message]] = {cls.COMMAND_FIELD: cls for cls in _ALL}


def _finish_required() -> None:
    # Mandatory = fields without a default, plus any listed explicitly in the class body.
    from dataclasses import MISSING, fields

    for cls in _ALL:
        no_default = {
            f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING
        }
        cls.REQUIRED = frozenset(no_default | cls.REQUIRED)


_finish_required()


def sop_class_uid(message: Message) -> str:
    """The SOP class a message is about: its Affected SOP Class UID, else its Requested SOP
    Class UID (N-GET/N-SET/N-ACTION/N-DELETE), else ``""`` (C-CANCEL-RQ)."""
    uid = getattr(message, "affected_sop_class_uid", None) or getattr(
        message, "requested_sop_class_uid", None
    )
    return str(uid or "")
