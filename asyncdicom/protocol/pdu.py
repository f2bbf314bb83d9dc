"""PDU and item dataclasses of the DICOM Upper Layer (PS3.8 section 9.3, Annex D; PS3.7 D.3.3).

One frozen, slotted dataclass per PDU and per item.  The byte codec lives in
:mod:`asyncdicom.protocol.codec` (``decode_pdu`` / ``encode_pdu``); this module only defines the
shapes so that every layer can share them without importing the codec.

Representation rules (chosen so that ``encode_pdu(decode_pdu(b)) == b`` for well-formed ``b``):

* UIDs are ``str`` without padding (PS3.8 Annex F).
* AE titles are ``str`` with trailing spaces removed; leading spaces are kept as received
  (they are not significant, compare with :func:`ae_title_equal`).  The encoder pads to 16 bytes
  with spaces.
* P-DATA values are ``bytes`` or ``memoryview`` (zero copy from the receive buffer).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum

__all__ = [
    "APPLICATION_CONTEXT_NAME",
    "PDU",
    "Abort",
    "AbstractSyntaxSubItem",
    "ApplicationContextItem",
    "AssociateAC",
    "AssociateRJ",
    "AssociateRQ",
    "AsynchronousOperationsWindowSubItem",
    "ImplementationClassUIDSubItem",
    "ImplementationVersionNameSubItem",
    "ItemType",
    "MaximumLengthSubItem",
    "PDUType",
    "PDataTF",
    "PresentationContextACItem",
    "PresentationContextRQItem",
    "PresentationDataValue",
    "ReleaseRP",
    "ReleaseRQ",
    "RoleSelectionSubItem",
    "SOPClassCommonExtendedNegotiationSubItem",
    "SOPClassExtendedNegotiationSubItem",
    "TransferSyntaxSubItem",
    "UnknownSubItem",
    "UserIdentityACSubItem",
    "UserIdentityRQSubItem",
    "UserInformationItem",
    "UserInformationSubItem",
    "ae_title_equal",
]

#: The only DICOM application context name (PS3.7 Annex A.2.1).
APPLICATION_CONTEXT_NAME = "1.2.840.10008.3.1.1.1"


class PDUType(IntEnum):
    """PDU type byte (PS3.8 Table 9-11 and following)."""

    ASSOCIATE_RQ = 0x01
    ASSOCIATE_AC = 0x02
    ASSOCIATE_RJ = 0x03
    P_DATA_TF = 0x04
    RELEASE_RQ = 0x05
    RELEASE_RP = 0x06
    ABORT = 0x07


class ItemType(IntEnum):
    """Item and sub-item type byte (PS3.8 section 9.3.2, Annex D; PS3.7 D.3.3)."""

    APPLICATION_CONTEXT = 0x10
    PRESENTATION_CONTEXT_RQ = 0x20
    PRESENTATION_CONTEXT_AC = 0x21
    ABSTRACT_SYNTAX = 0x30
    TRANSFER_SYNTAX = 0x40
    USER_INFORMATION = 0x50
    MAXIMUM_LENGTH = 0x51
    IMPLEMENTATION_CLASS_UID = 0x52
    ASYNCHRONOUS_OPERATIONS_WINDOW = 0x53
    ROLE_SELECTION = 0x54
    IMPLEMENTATION_VERSION_NAME = 0x55
    SOP_CLASS_EXTENDED_NEGOTIATION = 0x56
    SOP_CLASS_COMMON_EXTENDED_NEGOTIATION = 0x57
    USER_IDENTITY_RQ = 0x58
    USER_IDENTITY_AC = 0x59


def ae_title_equal(a: str, b: str) -> bool:
    """Compare two AE titles; leading and trailing spaces are not significant (PS3.8 7.1.1.3)."""
    return a.strip(" ") == b.strip(" ")


# --------------------------------------------------------------------------- items


@dataclass(frozen=True, slots=True)
class ApplicationContextItem:
    """Application Context item, 0x10 (PS3.8 9.3.2.1)."""

    name: str = APPLICATION_CONTEXT_NAME


@dataclass(frozen=True, slots=True)
class AbstractSyntaxSubItem:
    """Abstract Syntax sub-item, 0x30 (PS3.8 9.3.2.2.1)."""

    uid: str


@dataclass(frozen=True, slots=True)
class TransferSyntaxSubItem:
    """Transfer Syntax sub-item, 0x40 (PS3.8 9.3.2.2.2)."""

    uid: str


@dataclass(frozen=True, slots=True)
class PresentationContextRQItem:
    """Presentation Context item of an A-ASSOCIATE-RQ, 0x20 (PS3.8 9.3.2.2).

    One abstract syntax and one or more transfer syntaxes, in the requestor's preference order.
    """

    context_id: int
    abstract_syntax: str
    transfer_syntaxes: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class PresentationContextACItem:
    """Presentation Context item of an A-ASSOCIATE-AC, 0x21 (PS3.8 9.3.3.2).

    ``result`` is 0 acceptance, 1 user-rejection, 2 no-reason, 3 abstract-syntax-not-supported,
    4 transfer-syntaxes-not-supported.  ``transfer_syntax`` is significant only when accepted; it
    may be ``""`` (an empty sub-item is still encoded) when rejected.
    """

    context_id: int
    result: int
    transfer_syntax: str


@dataclass(frozen=True, slots=True)
class MaximumLengthSubItem:
    """Maximum Length sub-item, 0x51 (PS3.8 Annex D.1): largest P-DATA-TF PDU-length this side
    will receive; 0 means unlimited."""

    maximum_length: int


@dataclass(frozen=True, slots=True)
class ImplementationClassUIDSubItem:
    """Implementation Class UID sub-item, 0x52 (PS3.7 D.3.3.2)."""

    uid: str


@dataclass(frozen=True, slots=True)
class AsynchronousOperationsWindowSubItem:
    """Asynchronous Operations Window sub-item, 0x53 (PS3.7 D.3.3.3); 0 means unlimited."""

    max_operations_invoked: int
    max_operations_performed: int


@dataclass(frozen=True, slots=True)
class RoleSelectionSubItem:
    """SCP/SCU Role Selection sub-item, 0x54 (PS3.7 D.3.3.4).  SCU role is encoded first."""

    sop_class_uid: str
    scu_role: bool
    scp_role: bool


@dataclass(frozen=True, slots=True)
class ImplementationVersionNameSubItem:
    """Implementation Version Name sub-item, 0x55 (PS3.7 D.3.3.2.3): 1-16 characters."""

    name: str


@dataclass(frozen=True, slots=True)
class SOPClassExtendedNegotiationSubItem:
    """SOP Class Extended Negotiation sub-item, 0x56 (PS3.7 D.3.3.5)."""

    sop_class_uid: str
    service_class_application_information: bytes


@dataclass(frozen=True, slots=True)
class SOPClassCommonExtendedNegotiationSubItem:
    """SOP Class Common Extended Negotiation sub-item, 0x57 (PS3.7 D.3.3.6), RQ only."""

    sop_class_uid: str
    service_class_uid: str
    related_general_sop_classes: tuple[str, ...] = ()
    #: byte 2 of the item header, the sub-item version (0).
    version: int = 0


@dataclass(frozen=True, slots=True)
class UserIdentityRQSubItem:
    """User Identity sub-item of an A-ASSOCIATE-RQ, 0x58 (PS3.7 D.3.3.7.1).

    ``identity_type``: 1 username, 2 username and passcode, 3 Kerberos, 4 SAML, 5 JWT.
    """

    identity_type: int
    positive_response_requested: bool
    primary_field: bytes
    secondary_field: bytes = b""


@dataclass(frozen=True, slots=True)
class UserIdentityACSubItem:
    """User Identity sub-item of an A-ASSOCIATE-AC, 0x59 (PS3.7 D.3.3.7.2)."""

    server_response: bytes = b""


@dataclass(frozen=True, slots=True)
class UnknownSubItem:
    """A user-information sub-item of a type this implementation does not know; kept verbatim
    so that it round-trips, otherwise ignored (PS3.8 D.2)."""

    item_type: int
    data: bytes
    #: the reserved byte as received (sent back unchanged for round-trips)
    reserved: int = 0


UserInformationSubItem = (
    MaximumLengthSubItem
    | ImplementationClassUIDSubItem
    | AsynchronousOperationsWindowSubItem
    | RoleSelectionSubItem
    | ImplementationVersionNameSubItem
    | SOPClassExtendedNegotiationSubItem
    | SOPClassCommonExtendedNegotiationSubItem
    | UserIdentityRQSubItem
    | UserIdentityACSubItem
    | UnknownSubItem
)


@dataclass(frozen=True, slots=True)
class UserInformationItem:
    """User Information item, 0x50 (PS3.8 9.3.2.3): its sub-items in wire order.

    The convenience properties pick the first sub-item of each kind.
    """

    sub_items: tuple[UserInformationSubItem, ...] = ()

    def _first(self, kind: type) -> object | None:
        for item in self.sub_items:
            if isinstance(item, kind):
                return item
        return None

    @property
    def maximum_length(self) -> int | None:
        """The Maximum Length value, or ``None`` when the sub-item is absent."""
        item = self._first(MaximumLengthSubItem)
        return item.maximum_length if isinstance(item, MaximumLengthSubItem) else None

    @property
    def implementation_class_uid(self) -> str | None:
        """The Implementation Class UID, or ``None`` when absent."""
        item = self._first(ImplementationClassUIDSubItem)
        return item.uid if isinstance(item, ImplementationClassUIDSubItem) else None

    @property
    def implementation_version_name(self) -> str | None:
        """The Implementation Version Name, or ``None`` when absent."""
        item = self._first(ImplementationVersionNameSubItem)
        return item.name if isinstance(item, ImplementationVersionNameSubItem) else None

    @property
    def async_ops_window(self) -> AsynchronousOperationsWindowSubItem | None:
        """The Asynchronous Operations Window sub-item, or ``None`` when absent."""
        item = self._first(AsynchronousOperationsWindowSubItem)
        return item if isinstance(item, AsynchronousOperationsWindowSubItem) else None

    @property
    def role_selections(self) -> tuple[RoleSelectionSubItem, ...]:
        """All SCP/SCU Role Selection sub-items."""
        return tuple(i for i in self.sub_items if isinstance(i, RoleSelectionSubItem))

    @property
    def extended_negotiations(self) -> tuple[SOPClassExtendedNegotiationSubItem, ...]:
        """All SOP Class Extended Negotiation sub-items."""
        return tuple(i for i in self.sub_items if isinstance(i, SOPClassExtendedNegotiationSubItem))

    @property
    def common_extended_negotiations(
        self,
    ) -> tuple[SOPClassCommonExtendedNegotiationSubItem, ...]:
        """All SOP Class Common Extended Negotiation sub-items."""
        return tuple(
            i for i in self.sub_items if isinstance(i, SOPClassCommonExtendedNegotiationSubItem)
        )

    @property
    def user_identity_rq(self) -> UserIdentityRQSubItem | None:
        """The User Identity (RQ) sub-item, or ``None`` when absent."""
        item = self._first(UserIdentityRQSubItem)
        return item if isinstance(item, UserIdentityRQSubItem) else None

    @property
    def user_identity_ac(self) -> UserIdentityACSubItem | None:
        """The User Identity (AC) sub-item, or ``None`` when absent."""
        item = self._first(UserIdentityACSubItem)
        return item if isinstance(item, UserIdentityACSubItem) else None


# --------------------------------------------------------------------------- PDUs


@dataclass(frozen=True, slots=True)
class AssociateRQ:
    """A-ASSOCIATE-RQ PDU, type 0x01 (PS3.8 9.3.2)."""

    called_ae_title: str
    calling_ae_title: str
    presentation_contexts: tuple[PresentationContextRQItem, ...]
    user_information: UserInformationItem
    application_context: str = APPLICATION_CONTEXT_NAME
    protocol_version: int = 1


@dataclass(frozen=True, slots=True)
class AssociateAC:
    """A-ASSOCIATE-AC PDU, type 0x02 (PS3.8 9.3.3).

    ``called_ae_title`` / ``calling_ae_title`` are the reserved fields that echo the RQ's values.
    ``reserved`` is the 32-byte reserved field (echoing the RQ's, normally zero).
    """

    called_ae_title: str
    calling_ae_title: str
    presentation_contexts: tuple[PresentationContextACItem, ...]
    user_information: UserInformationItem
    application_context: str = APPLICATION_CONTEXT_NAME
    protocol_version: int = 1
    reserved: bytes = field(default=bytes(32))


@dataclass(frozen=True, slots=True)
class AssociateRJ:
    """A-ASSOCIATE-RJ PDU, type 0x03 (PS3.8 9.3.4): result, source and reason (Table 9-21)."""

    result: int
    source: int
    reason: int


@dataclass(frozen=True, slots=True)
class PresentationDataValue:
    """One PDV item (PS3.8 9.3.5.1, Annex E.2).

    ``message_control_header``: bit 0 set = command fragment, bit 1 set = last fragment.
    ``data`` is the fragment without the control header byte.
    """

    context_id: int
    message_control_header: int
    data: bytes | memoryview

    @property
    def is_command(self) -> bool:
        """True for a command-set fragment, False for a data-set fragment."""
        return bool(self.message_control_header & 0x01)

    @property
    def is_last(self) -> bool:
        """True for the last fragment of its command or data set."""
        return bool(self.message_control_header & 0x02)


@dataclass(frozen=True, slots=True)
class PDataTF:
    """P-DATA-TF PDU, type 0x04 (PS3.8 9.3.5): one or more PDVs."""

    pdvs: tuple[PresentationDataValue, ...]


@dataclass(frozen=True, slots=True)
class ReleaseRQ:
    """A-RELEASE-RQ PDU, type 0x05 (PS3.8 9.3.6)."""


@dataclass(frozen=True, slots=True)
class ReleaseRP:
    """A-RELEASE-RP PDU, type 0x06 (PS3.8 9.3.7)."""


@dataclass(frozen=True, slots=True)
class Abort:
    """A-ABORT PDU, type 0x07 (PS3.8 9.3.8).

    ``source``: 0 service-user, 2 service-provider; ``reason`` is significant only for source 2.
    """

    source: int = 0
    reason: int = 0


PDU = AssociateRQ | AssociateAC | AssociateRJ | PDataTF | ReleaseRQ | ReleaseRP | Abort
