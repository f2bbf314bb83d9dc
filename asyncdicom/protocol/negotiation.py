"""Association negotiation as pure functions (PS3.8 section 7.1, 9.3.2-9.3.4; PS3.7 Annex D.3).

Nothing here performs I/O or reads a clock.  Three entry points:

* :func:`build_associate_rq` -- the requestor turns a :class:`RequestorConfig` and a list of
  :class:`ContextRequest` into an :class:`~asyncdicom.protocol.pdu.AssociateRQ`.
* :func:`negotiate` -- the acceptor answers an A-ASSOCIATE-RQ according to an
  :class:`AcceptorConfig`, giving either :class:`Rejected` (an A-ASSOCIATE-RJ) or
  :class:`Accepted` (an A-ASSOCIATE-AC plus the acceptor's :class:`NegotiatedAssociation`).
* :func:`process_associate_ac` -- the requestor checks the peer's A-ASSOCIATE-AC against the
  RQ it sent and gets its own :class:`NegotiatedAssociation`.

Both sides derive their :class:`NegotiatedAssociation` from the same (RQ, AC) pair with the same
rules, each from its own perspective, so the two views always agree.

Perspective
-----------
Every role and window in a :class:`NegotiatedAssociation` is seen from the **local** side:

* ``PresentationContext.scu_role`` / ``scp_role`` -- may *this* side act as SCU (send
  requests) / SCP (answer requests) on the context.  Without role selection the requestor is
  SCU and the acceptor is SCP (PS3.7 D.3.3.4).
* ``max_operations_invoked`` -- how many operations *we* may have outstanding on the peer;
  ``max_operations_performed`` -- how many the *peer* may have outstanding on us (0 = unlimited;
  PS3.7 D.3.3.3).
* ``local_max_pdu_length`` -- the largest P-DATA-TF we announced we will receive;
  ``peer_max_pdu_length`` -- the largest the peer will receive, i.e. what we may send (0 =
  unlimited; PS3.8 Annex D.1).

Decisions taken where the standard leaves room (all documented at the point of use):

* A presentation context ID repeated in an RQ (or even, or outside 1-255) gets a single
  result 2 (no-reason, provider rejection) in the AC; the rest of the association goes ahead.
* Role selection (PS3.7 D.3.3.4) that grants no proposed role falls back to the default roles
  (requestor SCU, acceptor SCP) when the acceptor allows the SCP role for the SOP class: no
  role answer is returned for that SOP class, which means the defaults.  DCMTK's and
  pynetdicom's acceptors do the same in their default configuration, and requestors such as
  a Storage Commitment SCU proposing "SCP only" rely on it.  Only when the default role is
  not allowed either does the context get result 1 (user-rejection).  Every refused context,
  and every fallback, carries its reason in :attr:`PresentationContext.reason`.
* An AC that omits the result for a proposed context is read as result 2 for that context
  (lenient); an AC result for a context ID we never proposed, an accepted transfer syntax we
  never proposed, a repeated result for one ID or an undefined result value raise a
  :class:`~asyncdicom.protocol.errors.ProtocolError` subclass (the driver aborts).
* A rejected context's AC item carries the first transfer syntax proposed for it (the value is
  "not significant", PS3.8 Table 9-18, but an empty sub-item upsets some decoders).
* A missing Maximum Length sub-item (required by PS3.7 D.3.3.1) is read as
  :data:`FALLBACK_MAX_PDU_LENGTH` rather than "unlimited", so that we never flood a peer that
  said nothing.  A Maximum Length of 1 to 7 cannot carry any PDV: the acceptor rejects such
  an RQ, the requestor treats such an AC as a protocol error.
* An RQ whose answers would not fit in the AC's User Information item (16-bit item-length;
  role selection and extended negotiation answers echo the RQ's UIDs) is rejected.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from types import MappingProxyType
from typing import Literal

from .codec import _encode_user_information
from .dimse import MIN_USABLE_MAX_PDU_LENGTH
from .errors import (
    ACSE_NO_REASON,
    ACSE_PROTOCOL_VERSION_NOT_SUPPORTED,
    InvalidItem,
    InvalidParameterValue,
    LocalProtocolError,
    RejectReason,
    RejectResult,
    RejectSource,
)
from .pdu import (
    APPLICATION_CONTEXT_NAME,
    AssociateAC,
    AssociateRJ,
    AssociateRQ,
    AsynchronousOperationsWindowSubItem,
    ImplementationClassUIDSubItem,
    ImplementationVersionNameSubItem,
    MaximumLengthSubItem,
    PresentationContextACItem,
    PresentationContextRQItem,
    RoleSelectionSubItem,
    SOPClassCommonExtendedNegotiationSubItem,
    SOPClassExtendedNegotiationSubItem,
    UserIdentityACSubItem,
    UserIdentityRQSubItem,
    UserInformationItem,
    UserInformationSubItem,
    ae_title_equal,
)

__all__ = [
    "FALLBACK_MAX_PDU_LENGTH",
    "MAX_PRESENTATION_CONTEXTS",
    "Accepted",
    "AcceptorConfig",
    "ContextRequest",
    "ContextResult",
    "ExtendedNegotiationHandler",
    "IdentityDecision",
    "NegotiatedAssociation",
    "NegotiationResult",
    "PresentationContext",
    "Rejected",
    "RequestorConfig",
    "SupportedContext",
    "build_associate_rq",
    "negotiate",
    "process_associate_ac",
]

#: Presentation context IDs are the odd numbers 1..255 (PS3.8 9.3.2.2), so at most 128.
MAX_PRESENTATION_CONTEXTS = 128

#: Used as the peer's maximum PDU length when its Maximum Length sub-item is missing.  The
#: sub-item is mandatory (PS3.7 D.3.3.1); a peer that leaves it out gets a conservative value
#: (the common 16 KiB default of many implementations) rather than "unlimited".
FALLBACK_MAX_PDU_LENGTH = 16384

_MAX_UINT32 = 0xFFFFFFFF
_MAX_UINT16 = 0xFFFF

#: Called with the requestor's SOP Class Extended Negotiation sub-item for an accepted SOP
#: class; returns the service-class-application-information to answer with, or ``None`` to
#: send no answer for that SOP class (PS3.7 D.3.3.5).
ExtendedNegotiationHandler = Callable[[SOPClassExtendedNegotiationSubItem], bytes | None]


class ContextResult(IntEnum):
    """Presentation context result/reason of an A-ASSOCIATE-AC (PS3.8 Table 9-18, byte 7)."""

    ACCEPTANCE = 0
    USER_REJECTION = 1
    NO_REASON = 2
    ABSTRACT_SYNTAX_NOT_SUPPORTED = 3
    TRANSFER_SYNTAXES_NOT_SUPPORTED = 4


_RESULT_VALUES = frozenset(int(r) for r in ContextResult)

_RESULT_TEXT: dict[int, str] = {
    ContextResult.ACCEPTANCE: "accepted",
    ContextResult.USER_REJECTION: "user-rejection",
    ContextResult.NO_REASON: "no-reason (provider rejection)",
    ContextResult.ABSTRACT_SYNTAX_NOT_SUPPORTED: "abstract-syntax-not-supported",
    ContextResult.TRANSFER_SYNTAXES_NOT_SUPPORTED: "transfer-syntaxes-not-supported",
}


# --------------------------------------------------------------------------- validation helpers


def _check_ae_title(what: str, title: str) -> None:
    """AE VR rules (PS3.5 Table 6.2-1, PS3.8 7.1.1.3): 1-16 ASCII characters, not all spaces,
    no backslash or control characters."""
    if not title.strip(" "):
        raise ValueError(f"{what} must not be empty or all spaces")
    if len(title.rstrip(" ")) > 16:
        raise ValueError(f"{what} {title!r} is longer than 16 characters")
    if any(not (0x20 <= ord(c) < 0x7F) or c == "\\" for c in title):
        raise ValueError(f"{what} {title!r} has a character not allowed in an AE title")


def _check_uid(what: str, uid: str) -> None:
    """UID encoding of PS3.8 Annex F / PS3.5 9.1: digits and dots, at most 64 characters."""
    if not uid or len(uid) > 64 or any(c not in "0123456789." for c in uid):
        raise ValueError(f"{what} {uid!r} is not a valid UID")


def _check_uint(what: str, value: int, maximum: int) -> None:
    if not 0 <= value <= maximum:
        raise ValueError(f"{what} must be between 0 and {maximum}, got {value}")


def _check_window(what: str, window: tuple[int, int] | None) -> None:
    if window is not None:
        _check_uint(f"{what}[0]", window[0], _MAX_UINT16)
        _check_uint(f"{what}[1]", window[1], _MAX_UINT16)


def _check_version_name(name: str | None) -> None:
    # PS3.7 D.3.3.2.3: 1 to 16 ISO 646 characters.
    if name is not None and not (1 <= len(name) <= 16 and name.isascii()):
        raise ValueError(f"implementation version name {name!r} must be 1-16 ASCII characters")


def _min_window(a: int, b: int) -> int:
    """The smaller of two window values where 0 means unlimited (PS3.7 D.3.3.3)."""
    if a == 0:
        return b
    if b == 0:
        return a
    return min(a, b)


# --------------------------------------------------------------------------- requestor input


@dataclass(frozen=True, slots=True)
class ContextRequest:
    """One presentation context the requestor wants to propose (PS3.8 7.1.1.13).

    ``transfer_syntaxes`` are in the requestor's preference order.  ``scu_role`` / ``scp_role``
    are the roles the requestor proposes for itself through an SCP/SCU Role Selection sub-item
    (PS3.7 D.3.3.4); both ``None`` means no sub-item.  When only one is given the other takes
    the requestor's default value (SCU yes, SCP no), so ``ContextRequest(storage, ts,
    scp_role=True)`` proposes SCU=1, SCP=1.
    """

    abstract_syntax: str
    transfer_syntaxes: tuple[str, ...]
    scu_role: bool | None = None
    scp_role: bool | None = None

    @property
    def proposes_roles(self) -> bool:
        """True when this request asks for a role selection sub-item."""
        return self.scu_role is not None or self.scp_role is not None

    @property
    def proposed_roles(self) -> tuple[bool, bool] | None:
        """``(scu, scp)`` as they go into the role selection sub-item, or ``None``."""
        if not self.proposes_roles:
            return None
        return (
            True if self.scu_role is None else self.scu_role,
            False if self.scp_role is None else self.scp_role,
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class RequestorConfig:
    """What the association requestor announces in its A-ASSOCIATE-RQ (PS3.8 7.1.1).

    ``max_pdu_length`` is the largest P-DATA-TF PDU-length we will receive (0 = unlimited,
    PS3.8 Annex D.1).  ``async_ops_window`` is ``(max_operations_invoked,
    max_operations_performed)`` as in the RQ sub-item (PS3.7 D.3.3.3): how many operations we
    want to have outstanding on the acceptor, and how many of the acceptor's we can have
    outstanding at once; ``None`` sends no sub-item (synchronous, 1/1).
    """

    calling_ae_title: str
    called_ae_title: str
    implementation_class_uid: str
    max_pdu_length: int = 262144
    implementation_version_name: str | None = None
    async_ops_window: tuple[int, int] | None = None
    user_identity: UserIdentityRQSubItem | None = None
    extended_negotiation: tuple[SOPClassExtendedNegotiationSubItem, ...] = ()
    common_extended_negotiation: tuple[SOPClassCommonExtendedNegotiationSubItem, ...] = ()

    def __post_init__(self) -> None:
        _check_ae_title("calling AE title", self.calling_ae_title)
        _check_ae_title("called AE title", self.called_ae_title)
        _check_uid("implementation class UID", self.implementation_class_uid)
        _check_uint("max_pdu_length", self.max_pdu_length, _MAX_UINT32)
        _check_version_name(self.implementation_version_name)
        _check_window("async_ops_window", self.async_ops_window)
        # One sub-item per SOP class (PS3.7 D.3.3.5, D.3.3.6).
        for items, what in (
            (self.extended_negotiation, "SOP class extended negotiation"),
            (self.common_extended_negotiation, "SOP class common extended negotiation"),
        ):
            uids = [i.sop_class_uid for i in items]
            if len(uids) != len(set(uids)):
                raise ValueError(f"more than one {what} sub-item for one SOP class")


def build_associate_rq(config: RequestorConfig, contexts: Sequence[ContextRequest]) -> AssociateRQ:
    """Build the A-ASSOCIATE-RQ for *contexts* (PS3.8 9.3.2; PS3.7 D.3.3).

    Context IDs are assigned 1, 3, 5, ... in the order given (PS3.8 9.3.2.2: odd, 1-255, so at
    most :data:`MAX_PRESENTATION_CONTEXTS`).  One role selection sub-item is sent per SOP class
    that asks for one (PS3.7 D.3.3.4 allows at most one per SOP class); contexts of the same
    abstract syntax must not ask for different roles (``None`` roles are compatible with any).
    User information sub-items are in increasing item-type order (PS3.8 9.3.1).

    Raises ``ValueError`` for an empty or too long context list, a context without transfer
    syntaxes, bad UIDs or conflicting role requests.
    """
    if not contexts:
        raise ValueError("an A-ASSOCIATE-RQ needs at least one presentation context")
    if len(contexts) > MAX_PRESENTATION_CONTEXTS:
        raise ValueError(
            f"{len(contexts)} presentation contexts requested; at most "
            f"{MAX_PRESENTATION_CONTEXTS} fit in one association (odd IDs 1-255)"
        )
    items: list[PresentationContextRQItem] = []
    roles: dict[str, tuple[bool, bool]] = {}
    for index, request in enumerate(contexts):
        _check_uid("abstract syntax", request.abstract_syntax)
        if not request.transfer_syntaxes:
            raise ValueError(f"no transfer syntax proposed for {request.abstract_syntax}")
        for ts in request.transfer_syntaxes:
            _check_uid("transfer syntax", ts)
        items.append(
            PresentationContextRQItem(
                context_id=2 * index + 1,
                abstract_syntax=request.abstract_syntax,
                transfer_syntaxes=tuple(request.transfer_syntaxes),
            )
        )
        wanted = request.proposed_roles
        if wanted is not None:
            previous = roles.setdefault(request.abstract_syntax, wanted)
            if previous != wanted:
                raise ValueError(
                    f"conflicting role selection for {request.abstract_syntax}: "
                    f"(scu, scp) {previous} and {wanted}"
                )

    sub_items: list[UserInformationSubItem] = [
        MaximumLengthSubItem(config.max_pdu_length),
        ImplementationClassUIDSubItem(config.implementation_class_uid),
    ]
    if config.async_ops_window is not None:
        sub_items.append(AsynchronousOperationsWindowSubItem(*config.async_ops_window))
    sub_items.extend(RoleSelectionSubItem(uid, scu, scp) for uid, (scu, scp) in roles.items())
    if config.implementation_version_name is not None:
        sub_items.append(ImplementationVersionNameSubItem(config.implementation_version_name))
    sub_items.extend(config.extended_negotiation)
    sub_items.extend(config.common_extended_negotiation)
    if config.user_identity is not None:
        sub_items.append(config.user_identity)
    return AssociateRQ(
        called_ae_title=config.called_ae_title.rstrip(" "),
        calling_ae_title=config.calling_ae_title.rstrip(" "),
        presentation_contexts=tuple(items),
        user_information=UserInformationItem(tuple(sub_items)),
    )


# --------------------------------------------------------------------------- acceptor input


@dataclass(frozen=True, slots=True)
class SupportedContext:
    """An abstract syntax the acceptor supports.

    ``transfer_syntaxes`` are in the *local* preference order: the first one the requestor
    also proposed is accepted.  ``scu_role_allowed`` / ``scp_role_allowed`` are the roles the
    **acceptor itself** may take for this SOP class: by default it acts as SCP only (the
    requestor is SCU, PS3.7 D.3.3.4).  Allowing the SCU role lets a requestor that proposes
    SCP=1 act as SCP (C-GET storage sub-operations, a Storage Commitment N-EVENT-REPORT on a
    new association, PS3.4 J.3.3).
    """

    abstract_syntax: str
    transfer_syntaxes: tuple[str, ...]
    scu_role_allowed: bool = False
    scp_role_allowed: bool = True

    def __post_init__(self) -> None:
        _check_uid("abstract syntax", self.abstract_syntax)
        if not self.transfer_syntaxes:
            raise ValueError(f"no transfer syntax supported for {self.abstract_syntax}")


@dataclass(frozen=True, slots=True)
class IdentityDecision:
    """The outcome of checking a requestor's User Identity sub-item (PS3.7 D.3.3.7).

    Computed by the caller (possibly asynchronously) before calling :func:`negotiate`.
    ``server_response`` goes into the AC's User Identity sub-item when the requestor asked for
    a positive response (``None`` sends an empty response, as for identity types 1 and 2).
    """

    accepted: bool
    server_response: bytes | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class AcceptorConfig:
    """How the acceptor answers an A-ASSOCIATE-RQ.

    * ``ae_title`` -- our AE title; the RQ's called AE title must match it (leading/trailing
      spaces ignored, PS3.8 7.1.1.3) unless ``require_called_ae_title`` is false.
    * ``allowed_calling_ae_titles`` -- when not ``None``, only these peers are accepted.
    * ``supported`` -- the abstract syntaxes we accept (one entry per abstract syntax).
    * ``accept_any_storage`` -- also accept any SOP class for which ``is_storage_sop_class``
      (supplied by the caller) is true, with ``storage_transfer_syntaxes`` in that preference
      order and the default roles of :class:`SupportedContext`.  Entries in ``supported`` win.
    * ``max_pdu_length`` -- largest P-DATA-TF PDU-length we receive (0 = unlimited).
    * ``async_ops_window`` -- ``(max_operations_invoked, max_operations_performed)`` from our
      side: how many operations we may have outstanding on the requestor, and how many of the
      requestor's we can work on at once (0 = unlimited).  ``None``: we do not do asynchronous
      operations; an RQ window item then gets no answer, which means 1/1 (PS3.7 D.3.3.3).
    * ``require_user_identity`` -- reject an RQ without a User Identity sub-item.
    * ``extended_negotiation_handler`` -- see :data:`ExtendedNegotiationHandler`.
    """

    ae_title: str
    supported: tuple[SupportedContext, ...]
    implementation_class_uid: str
    implementation_version_name: str | None = None
    max_pdu_length: int = 262144
    accept_any_storage: bool = False
    storage_transfer_syntaxes: tuple[str, ...] = ()
    is_storage_sop_class: Callable[[str], bool] | None = None
    require_called_ae_title: bool = True
    allowed_calling_ae_titles: frozenset[str] | None = None
    async_ops_window: tuple[int, int] | None = None
    require_user_identity: bool = False
    extended_negotiation_handler: ExtendedNegotiationHandler | None = None

    def __post_init__(self) -> None:
        _check_ae_title("AE title", self.ae_title)
        _check_uid("implementation class UID", self.implementation_class_uid)
        _check_version_name(self.implementation_version_name)
        _check_uint("max_pdu_length", self.max_pdu_length, _MAX_UINT32)
        _check_window("async_ops_window", self.async_ops_window)
        seen: set[str] = set()
        for context in self.supported:
            if context.abstract_syntax in seen:
                raise ValueError(f"{context.abstract_syntax} is listed twice in supported")
            seen.add(context.abstract_syntax)
        if self.accept_any_storage and (
            self.is_storage_sop_class is None or not self.storage_transfer_syntaxes
        ):
            raise ValueError(
                "accept_any_storage needs is_storage_sop_class and storage_transfer_syntaxes"
            )

    def supported_context(self, abstract_syntax: str) -> SupportedContext | None:
        """What we support for *abstract_syntax*, or ``None``."""
        for context in self.supported:
            if context.abstract_syntax == abstract_syntax:
                return context
        if (
            self.accept_any_storage
            and self.is_storage_sop_class is not None
            and self.is_storage_sop_class(abstract_syntax)
        ):
            return SupportedContext(abstract_syntax, self.storage_transfer_syntaxes)
        return None


# --------------------------------------------------------------------------- results


@dataclass(frozen=True, slots=True)
class PresentationContext:
    """A presentation context after negotiation (PS3.8 7.1.1.13/14).

    ``transfer_syntax`` is the accepted transfer syntax, ``None`` unless ``result`` is 0.
    ``scu_role`` / ``scp_role`` are the roles **this (local) side** may take on it; both are
    false for a context that was not accepted.
    """

    context_id: int
    abstract_syntax: str
    transfer_syntax: str | None
    result: int
    scu_role: bool = False
    scp_role: bool = False
    #: why the context was refused, or, for an accepted one, how role selection was settled
    #: when the proposed roles fell back to the defaults; empty otherwise.  The acceptor knows
    #: the local reason; the requestor only has the result code.
    reason: str = field(default="", compare=False)

    @property
    def accepted(self) -> bool:
        """True when the acceptor accepted the context (result 0)."""
        return self.result == ContextResult.ACCEPTANCE

    def describe(self) -> str:
        """One line for logs: ID, abstract syntax, result and reason."""
        name = _RESULT_TEXT.get(self.result, f"result {self.result}")
        text = f"context {self.context_id} {self.abstract_syntax}: {name}"
        return f"{text} ({self.reason})" if self.reason else text


@dataclass(frozen=True, slots=True, kw_only=True)
class NegotiatedAssociation:
    """Everything agreed at association establishment, from the local side's perspective
    (see the module docstring).

    ``contexts`` are in the order the requestor proposed them.  ``user_identity`` is the
    requestor's User Identity sub-item (``None`` when none was sent);
    ``user_identity_response`` is the server response of the AC's User Identity sub-item
    (``None`` when the AC has none).  ``extended_negotiation`` holds the AC's SOP Class
    Extended Negotiation answers (only for SOP classes the requestor asked about);
    ``common_extended_negotiation`` the requestor's SOP Class Common Extended Negotiation
    sub-items (RQ only, PS3.7 D.3.3.6).
    """

    is_requestor: bool
    calling_ae_title: str
    called_ae_title: str
    contexts: tuple[PresentationContext, ...]
    local_max_pdu_length: int
    peer_max_pdu_length: int
    max_operations_invoked: int
    max_operations_performed: int
    peer_implementation_class_uid: str | None
    peer_implementation_version_name: str | None
    user_identity: UserIdentityRQSubItem | None = None
    user_identity_response: bytes | None = None
    extended_negotiation: tuple[SOPClassExtendedNegotiationSubItem, ...] = ()
    common_extended_negotiation: tuple[SOPClassCommonExtendedNegotiationSubItem, ...] = ()
    _by_id: Mapping[int, PresentationContext] = field(
        init=False, repr=False, compare=False, hash=False
    )

    def __post_init__(self) -> None:
        # A lookup table for the DIMSE layer, which resolves a context ID for every PDV.
        by_id = MappingProxyType({c.context_id: c for c in self.contexts})
        object.__setattr__(self, "_by_id", by_id)

    @property
    def peer_ae_title(self) -> str:
        """The other side's AE title."""
        return self.called_ae_title if self.is_requestor else self.calling_ae_title

    @property
    def local_ae_title(self) -> str:
        """Our AE title as used in the RQ."""
        return self.calling_ae_title if self.is_requestor else self.called_ae_title

    @property
    def accepted_contexts(self) -> tuple[PresentationContext, ...]:
        """The contexts with result 0, in proposal order."""
        return tuple(c for c in self.contexts if c.accepted)

    @property
    def refused_contexts(self) -> tuple[PresentationContext, ...]:
        """The contexts the acceptor did not accept, each with its ``reason``."""
        return tuple(c for c in self.contexts if not c.accepted)

    @property
    def default_role_contexts(self) -> tuple[PresentationContext, ...]:
        """Accepted contexts whose proposed roles fell back to the defaults (acceptor side)."""
        return tuple(c for c in self.contexts if c.accepted and c.reason)

    def context_by_id(self, context_id: int) -> PresentationContext | None:
        """The context with *context_id* (accepted or not), or ``None``."""
        return self._by_id.get(context_id)

    def context_for(
        self,
        abstract_syntax: str,
        transfer_syntax: str | None = None,
        role: Literal["scu", "scp"] | None = "scu",
    ) -> PresentationContext | None:
        """The first accepted context for *abstract_syntax* on which this side may act in
        *role* (``None``: any role), optionally with the given *transfer_syntax*."""
        for context in self.contexts:
            if not context.accepted or context.abstract_syntax != abstract_syntax:
                continue
            if transfer_syntax is not None and context.transfer_syntax != transfer_syntax:
                continue
            if role == "scu" and not context.scu_role:
                continue
            if role == "scp" and not context.scp_role:
                continue
            return context
        return None

    def extended_negotiation_for(self, sop_class_uid: str) -> bytes | None:
        """The agreed service-class-application-information for *sop_class_uid*, or ``None``."""
        for item in self.extended_negotiation:
            if item.sop_class_uid == sop_class_uid:
                return item.service_class_application_information
        return None


@dataclass(frozen=True, slots=True)
class Rejected:
    """:func:`negotiate` refused the association; send ``rj``.  ``detail`` is for logs."""

    rj: AssociateRJ
    detail: str = ""


@dataclass(frozen=True, slots=True)
class Accepted:
    """:func:`negotiate` accepted the association; send ``ac``."""

    ac: AssociateAC
    association: NegotiatedAssociation


NegotiationResult = Accepted | Rejected


# --------------------------------------------------------------------------- shared rules


def _first_by_sop_class(
    items: Iterable[RoleSelectionSubItem],
) -> dict[str, RoleSelectionSubItem]:
    # At most one role item per SOP class is allowed (PS3.7 D.3.3.4); if a peer repeats one,
    # the first counts.
    out: dict[str, RoleSelectionSubItem] = {}
    for item in items:
        out.setdefault(item.sop_class_uid, item)
    return out


def _requestor_roles(
    proposed: RoleSelectionSubItem | None, answer: RoleSelectionSubItem | None
) -> tuple[bool, bool]:
    """The requestor's ``(scu, scp)`` after role selection (PS3.7 D.3.3.4).

    Without a proposal or without an answer the defaults apply: requestor SCU, acceptor SCP.
    Otherwise a role is held when it was proposed as 1 *and* answered with 1 -- the requestor
    ignores a 1 for a role it did not propose.
    """
    if proposed is None or answer is None:
        return (True, False)
    return (proposed.scu_role and answer.scu_role, proposed.scp_role and answer.scp_role)


def _window(item: AsynchronousOperationsWindowSubItem | None) -> tuple[int, int]:
    # Absent item: both values default to 1 (PS3.7 D.3.3.3).
    if item is None:
        return (1, 1)
    return (item.max_operations_invoked, item.max_operations_performed)


def _max_length(user_information: UserInformationItem) -> int:
    value = user_information.maximum_length
    return FALLBACK_MAX_PDU_LENGTH if value is None else value


def _association_view(
    rq: AssociateRQ,
    ac: AssociateAC,
    *,
    is_requestor: bool,
    reasons: Mapping[int, str] | None = None,
) -> NegotiatedAssociation:
    """Derive one side's :class:`NegotiatedAssociation` from a validated (RQ, AC) pair.

    *reasons* (acceptor side) gives the local reason per context ID; without it a refused
    context's reason is what its result code says."""
    reasons = reasons or {}
    rq_info, ac_info = rq.user_information, ac.user_information
    proposed_roles = _first_by_sop_class(rq_info.role_selections)
    answered_roles = _first_by_sop_class(ac_info.role_selections)
    results: dict[int, PresentationContextACItem] = {}
    for result in ac.presentation_contexts:
        results.setdefault(result.context_id, result)

    contexts: list[PresentationContext] = []
    seen: set[int] = set()
    for proposal in rq.presentation_contexts:
        if proposal.context_id in seen:
            continue
        seen.add(proposal.context_id)
        answer = results.get(proposal.context_id)
        if answer is None or answer.result != ContextResult.ACCEPTANCE:
            # A missing result is read as a provider rejection without reason.
            code = int(ContextResult.NO_REASON) if answer is None else answer.result
            reason = reasons.get(proposal.context_id) or (
                "the A-ASSOCIATE-AC has no result for it" if answer is None else ""
            )
            contexts.append(
                PresentationContext(
                    proposal.context_id, proposal.abstract_syntax, None, code, reason=reason
                )
            )
            continue
        req_scu, req_scp = _requestor_roles(
            proposed_roles.get(proposal.abstract_syntax),
            answered_roles.get(proposal.abstract_syntax),
        )
        # The acceptor is SCP exactly when the requestor is SCU, and vice versa.
        scu, scp = (req_scu, req_scp) if is_requestor else (req_scp, req_scu)
        contexts.append(
            PresentationContext(
                proposal.context_id,
                proposal.abstract_syntax,
                answer.transfer_syntax,
                int(ContextResult.ACCEPTANCE),
                scu_role=scu,
                scp_role=scp,
                reason=reasons.get(proposal.context_id, ""),
            )
        )

    # Each direction's window is the smaller of what the two sides said (0 = unlimited, an
    # absent item = 1).  The RQ's "invoked" and the AC's "invoked" both count operations the
    # requestor invokes on the acceptor; "performed" counts the other direction (D.3.3.3).
    rq_invoked, rq_performed = _window(rq_info.async_ops_window)
    ac_invoked, ac_performed = _window(ac_info.async_ops_window)
    requestor_to_acceptor = _min_window(rq_invoked, ac_invoked)
    acceptor_to_requestor = _min_window(rq_performed, ac_performed)

    asked_ext = {i.sop_class_uid for i in rq_info.extended_negotiations}
    ext: dict[str, SOPClassExtendedNegotiationSubItem] = {}
    for item in ac_info.extended_negotiations:
        if item.sop_class_uid in asked_ext:
            ext.setdefault(item.sop_class_uid, item)

    identity_ac = ac_info.user_identity_ac
    rq_max = _max_length(rq_info)
    ac_max = _max_length(ac_info)
    peer_info = ac_info if is_requestor else rq_info
    return NegotiatedAssociation(
        is_requestor=is_requestor,
        calling_ae_title=rq.calling_ae_title.strip(" "),
        called_ae_title=rq.called_ae_title.strip(" "),
        contexts=tuple(contexts),
        local_max_pdu_length=rq_max if is_requestor else ac_max,
        peer_max_pdu_length=ac_max if is_requestor else rq_max,
        max_operations_invoked=(requestor_to_acceptor if is_requestor else acceptor_to_requestor),
        max_operations_performed=(acceptor_to_requestor if is_requestor else requestor_to_acceptor),
        peer_implementation_class_uid=peer_info.implementation_class_uid,
        peer_implementation_version_name=peer_info.implementation_version_name,
        user_identity=rq_info.user_identity_rq,
        user_identity_response=None if identity_ac is None else identity_ac.server_response,
        extended_negotiation=tuple(ext.values()),
        common_extended_negotiation=rq_info.common_extended_negotiations,
    )


# --------------------------------------------------------------------------- acceptor


def _reject(result: int, source: int, reason: int, detail: str) -> Rejected:
    return Rejected(AssociateRJ(result=result, source=source, reason=reason), detail)


def _user_reject(reason: RejectReason, detail: str) -> Rejected:
    return _reject(
        int(RejectResult.REJECTED_PERMANENT), int(RejectSource.SERVICE_USER), int(reason), detail
    )


def _check_association(
    rq: AssociateRQ, config: AcceptorConfig, identity: IdentityDecision | None
) -> Rejected | None:
    """The A-ASSOCIATE-RJ cases (PS3.8 Table 9-21), in the order they are tested."""
    if not rq.protocol_version & 1:
        # Normally caught by the decoder (BadProtocolVersion); kept for RQs built in code.
        return _reject(
            int(RejectResult.REJECTED_PERMANENT),
            int(RejectSource.SERVICE_PROVIDER_ACSE),
            ACSE_PROTOCOL_VERSION_NOT_SUPPORTED,
            f"protocol version {rq.protocol_version:#06x} lacks version 1",
        )
    if rq.application_context != APPLICATION_CONTEXT_NAME:
        return _user_reject(
            RejectReason.USER_APPLICATION_CONTEXT_NOT_SUPPORTED,
            f"application context {rq.application_context!r} is not supported",
        )
    if config.require_called_ae_title and not ae_title_equal(rq.called_ae_title, config.ae_title):
        return _user_reject(
            RejectReason.USER_CALLED_AE_NOT_RECOGNIZED,
            f"called AE title {rq.called_ae_title!r} is not {config.ae_title!r}",
        )
    if config.allowed_calling_ae_titles is not None:
        allowed = {title.strip(" ") for title in config.allowed_calling_ae_titles}
        if rq.calling_ae_title.strip(" ") not in allowed:
            return _user_reject(
                RejectReason.USER_CALLING_AE_NOT_RECOGNIZED,
                f"calling AE title {rq.calling_ae_title!r} is not allowed",
            )
    user_identity = rq.user_information.user_identity_rq
    if user_identity is None:
        if config.require_user_identity:
            return _user_reject(RejectReason.USER_NO_REASON, "no user identity was supplied")
    elif (identity is None and config.require_user_identity) or (
        identity is not None and not identity.accepted
    ):
        # PS3.7 D.3.3.7 leaves the rejection code open; we give no reason on purpose so as
        # not to tell a prober why the credentials failed.
        return _user_reject(RejectReason.USER_NO_REASON, "user identity refused")
    peer_max = rq.user_information.maximum_length
    if peer_max is not None and 0 < peer_max < MIN_USABLE_MAX_PDU_LENGTH:
        # No P-DATA-TF that short can carry a PDV: we could never answer on this association.
        return _reject(
            int(RejectResult.REJECTED_PERMANENT),
            int(RejectSource.SERVICE_PROVIDER_ACSE),
            ACSE_NO_REASON,
            f"Maximum Length {peer_max} is too small to carry a PDV "
            f"(at least {MIN_USABLE_MAX_PDU_LENGTH}, or 0 for no limit)",
        )
    return None


def _role_text(scu: bool, scp: bool) -> str:
    return {(True, True): "SCU and SCP", (True, False): "SCU only", (False, True): "SCP only"}.get(
        (scu, scp), "neither SCU nor SCP"
    )


@dataclass(frozen=True, slots=True)
class _RoleOutcome:
    """The acceptor's own roles for a supported SOP class after role selection."""

    scu: bool
    scp: bool
    #: the proposal granted nothing and the default roles apply: no role answer is sent
    fallback: bool = False
    reason: str = ""


def _acceptor_roles(
    proposed: RoleSelectionSubItem | None, supported: SupportedContext
) -> _RoleOutcome:
    """The acceptor's own roles for a supported SOP class (PS3.7 D.3.3.4).

    A proposal that grants no role falls back to the defaults (requestor SCU, acceptor SCP)
    when we may be SCP: the role answer is then left out, which means the defaults.
    """
    if proposed is None:
        # Default: the acceptor is SCP; if it may not be, it has no role at all.
        if supported.scp_role_allowed:
            return _RoleOutcome(False, True)
        return _RoleOutcome(
            False,
            False,
            reason="no role selection proposed, and this AE does not act as SCP "
            "for this SOP class (it could act as SCU if the requestor proposed the SCP role)",
        )
    # The requestor's SCP role is our SCU role and the other way round.
    scu = proposed.scp_role and supported.scu_role_allowed
    scp = proposed.scu_role and supported.scp_role_allowed
    if scu or scp:
        return _RoleOutcome(scu, scp)
    wanted = _role_text(proposed.scu_role, proposed.scp_role)
    ours = _role_text(supported.scp_role_allowed, supported.scu_role_allowed)
    if supported.scp_role_allowed:
        return _RoleOutcome(
            False,
            True,
            fallback=True,
            reason=f"role selection: the requestor proposed {wanted} for itself, which this "
            "AE cannot grant; default roles apply (requestor SCU, acceptor SCP, no role answer)",
        )
    return _RoleOutcome(
        False,
        False,
        reason=f"role selection: the requestor proposed {wanted} for itself; this AE allows "
        f"the requestor {ours}",
    )


def _refused(
    proposal: PresentationContextRQItem, result: ContextResult
) -> PresentationContextACItem:
    # The transfer syntax of a rejected context is "not significant" (PS3.8 Table 9-18), but
    # the sub-item must be there; echoing a proposed UID keeps strict decoders happy.
    echo = proposal.transfer_syntaxes[0] if proposal.transfer_syntaxes else ""
    return PresentationContextACItem(proposal.context_id, int(result), echo)


def _negotiate_context(
    proposal: PresentationContextRQItem,
    config: AcceptorConfig,
    proposed_roles: Mapping[str, RoleSelectionSubItem],
) -> tuple[PresentationContextACItem, str]:
    """One context's AC item and the reason for its outcome (empty when plainly accepted)."""
    supported = config.supported_context(proposal.abstract_syntax)
    if supported is None:
        return (
            _refused(proposal, ContextResult.ABSTRACT_SYNTAX_NOT_SUPPORTED),
            "this AE does not support the SOP class",
        )
    # Local preference order decides among the transfer syntaxes both sides know.
    offered = set(proposal.transfer_syntaxes)
    chosen = next((ts for ts in supported.transfer_syntaxes if ts in offered), None)
    if chosen is None:
        return (
            _refused(proposal, ContextResult.TRANSFER_SYNTAXES_NOT_SUPPORTED),
            "none of the proposed transfer syntaxes ("
            + ", ".join(proposal.transfer_syntaxes)
            + ") is accepted for this SOP class",
        )
    roles = _acceptor_roles(proposed_roles.get(proposal.abstract_syntax), supported)
    if not (roles.scu or roles.scp):
        # Accepting a context neither side may use would only defer the failure.
        return _refused(proposal, ContextResult.USER_REJECTION), roles.reason
    item = PresentationContextACItem(proposal.context_id, int(ContextResult.ACCEPTANCE), chosen)
    return item, roles.reason


def negotiate(
    rq: AssociateRQ, config: AcceptorConfig, identity: IdentityDecision | None = None
) -> NegotiationResult:
    """Answer an A-ASSOCIATE-RQ (PS3.8 7.1, 9.3.3, 9.3.4; PS3.7 D.3.3).

    Rejections (permanent, PS3.8 Table 9-21): protocol version without bit 0 (source 2,
    reason 2); application context other than the DICOM one (source 1, reason 2); called AE
    title not ours while ``require_called_ae_title`` (source 1, reason 7); calling AE title
    not in ``allowed_calling_ae_titles`` (source 1, reason 3); a User Identity sub-item with a
    refused *identity* decision, or none when ``require_user_identity`` (source 1, reason 1);
    answers that do not fit in the AC's User Information item (its item-length is 16 bits, and
    role selection and extended negotiation answers echo the RQ's UIDs), or a Maximum Length
    of 1 to 7, too small to carry any PDV (source 2, reason 1).
    A User Identity sub-item with ``identity=None`` and ``require_user_identity`` false is
    ignored (PS3.7 D.3.3.7: an acceptor need not support it).

    Otherwise the association is accepted, even when no context is acceptable (peers expect an
    AC with every context rejected).  Each proposed context gets one result (PS3.8 Table 9-18):

    * 0 with the first of *our* transfer syntaxes, in our preference order, that the requestor
      also proposed;
    * 3 abstract syntax not supported; 4 no common transfer syntax;
    * 1 user-rejection when neither a proposed role nor the default roles are ones we allow;
    * 2 (once) for a context ID that is repeated, even or out of range -- the AC cannot give
      two answers for one ID.

    Each refused context of the :class:`NegotiatedAssociation` carries the reason in
    :attr:`PresentationContext.reason` (for the acceptor's log and hooks).

    Role selection answers (PS3.7 D.3.3.4) are sent only if the RQ had any, one per SOP class
    proposed: a role gets 1 only when proposed as 1 and allowed locally (our SCP role answers
    the requestor's SCU proposal and vice versa).  A proposal that would leave us no role
    falls back to the default roles when we may be SCP: its SOP class then gets no answer
    (which means the defaults) and its contexts are accepted, with the fallback told in their
    ``reason``.  The asynchronous operations window is
    answered only when the RQ has one and ``config.async_ops_window`` is set, with the smaller
    value per direction (0 = unlimited).  Extended negotiation is answered only for SOP
    classes with an accepted context and only when the handler returns bytes.
    """
    refusal = _check_association(rq, config, identity)
    if refusal is not None:
        return refusal

    info = rq.user_information
    proposed_roles = _first_by_sop_class(info.role_selections)

    # Context IDs that cannot be answered individually: repeated, even, or out of range.
    counts: dict[int, int] = {}
    for proposal in rq.presentation_contexts:
        counts[proposal.context_id] = counts.get(proposal.context_id, 0) + 1
    results: list[PresentationContextACItem] = []
    reasons: dict[int, str] = {}
    answered: set[int] = set()
    for proposal in rq.presentation_contexts:
        cid = proposal.context_id
        if cid in answered:
            continue
        answered.add(cid)
        if counts[cid] > 1 or cid % 2 == 0 or not 1 <= cid <= 255:
            results.append(_refused(proposal, ContextResult.NO_REASON))
            reasons[cid] = (
                "the presentation context ID is proposed more than once"
                if counts[cid] > 1
                else "the presentation context ID is not an odd number from 1 to 255"
            )
        else:
            item, reason = _negotiate_context(proposal, config, proposed_roles)
            results.append(item)
            if reason:
                reasons[cid] = reason

    by_id = {r.context_id: r for r in results}
    accepted_sop_classes = {
        p.abstract_syntax
        for p in rq.presentation_contexts
        if by_id[p.context_id].result == ContextResult.ACCEPTANCE
    }

    sub_items: list[UserInformationSubItem] = [
        MaximumLengthSubItem(config.max_pdu_length),
        ImplementationClassUIDSubItem(config.implementation_class_uid),
    ]
    rq_window = info.async_ops_window
    if rq_window is not None and config.async_ops_window is not None:
        we_invoke, we_perform = config.async_ops_window
        sub_items.append(
            AsynchronousOperationsWindowSubItem(
                # operations the requestor invokes are the ones we perform, and vice versa
                max_operations_invoked=_min_window(rq_window.max_operations_invoked, we_perform),
                max_operations_performed=_min_window(rq_window.max_operations_performed, we_invoke),
            )
        )
    for uid, proposal_roles in proposed_roles.items():
        supported = config.supported_context(uid)
        if supported is None:
            sub_items.append(RoleSelectionSubItem(uid, scu_role=False, scp_role=False))
            continue
        roles = _acceptor_roles(proposal_roles, supported)
        if roles.fallback:
            continue  # no answer: the default roles apply (PS3.7 D.3.3.4)
        # The sub-item speaks of the requestor's roles: its SCU is our SCP.
        sub_items.append(RoleSelectionSubItem(uid, scu_role=roles.scp, scp_role=roles.scu))
    if config.implementation_version_name is not None:
        sub_items.append(ImplementationVersionNameSubItem(config.implementation_version_name))
    handler = config.extended_negotiation_handler
    if handler is not None:
        handled: set[str] = set()
        for request in info.extended_negotiations:
            uid = request.sop_class_uid
            if uid in handled or uid not in accepted_sop_classes:
                continue
            handled.add(uid)
            answer = handler(request)
            if answer is not None:
                sub_items.append(SOPClassExtendedNegotiationSubItem(uid, bytes(answer)))
    user_identity = info.user_identity_rq
    if (
        user_identity is not None
        and identity is not None
        and identity.accepted
        and user_identity.positive_response_requested
    ):
        sub_items.append(UserIdentityACSubItem(identity.server_response or b""))

    user_information = UserInformationItem(tuple(sub_items))
    try:
        # The answers echo what the peer sent (role selection UIDs, extended negotiation), so
        # a User Information item filled up to its 16-bit item-length in the RQ can give an AC
        # whose item does not fit (and an AC we could not send would leave the peer waiting).
        _encode_user_information(user_information)
    except LocalProtocolError as exc:
        return _reject(
            int(RejectResult.REJECTED_PERMANENT),
            int(RejectSource.SERVICE_PROVIDER_ACSE),
            ACSE_NO_REASON,
            f"the A-ASSOCIATE-AC cannot carry the answers to this request: {exc}",
        )
    ac = AssociateAC(
        # These fields are reserved in the AC and echo the RQ (PS3.8 Table 9-17).
        called_ae_title=rq.called_ae_title,
        calling_ae_title=rq.calling_ae_title,
        presentation_contexts=tuple(results),
        user_information=user_information,
    )
    return Accepted(ac, _association_view(rq, ac, is_requestor=False, reasons=reasons))


# --------------------------------------------------------------------------- requestor


def process_associate_ac(rq: AssociateRQ, ac: AssociateAC) -> NegotiatedAssociation:
    """The requestor's view of an accepted association (PS3.8 9.3.3; PS3.7 D.3.3).

    *rq* is the A-ASSOCIATE-RQ we sent, *ac* the peer's answer.  Results may come in any order
    (PS3.8 7.1.1.14).  Raises :class:`~asyncdicom.protocol.errors.InvalidParameterValue` for a
    result for a context ID we never proposed, an undefined result value, or an accepted
    transfer syntax we did not propose for that context, and
    :class:`~asyncdicom.protocol.errors.InvalidItem` for two results for one context ID, and
    :class:`~asyncdicom.protocol.errors.InvalidParameterValue` for a Maximum Length of 1 to 7
    (too small to carry any PDV); these are peer protocol errors that end in an A-ABORT.  A
    missing result is read as result 2.  Role answers count only for roles we proposed as 1;
    no answer means the default roles.
    """
    peer_max = ac.user_information.maximum_length
    if peer_max is not None and 0 < peer_max < MIN_USABLE_MAX_PDU_LENGTH:
        raise InvalidParameterValue(
            f"A-ASSOCIATE-AC Maximum Length {peer_max} is too small to carry a PDV "
            f"(at least {MIN_USABLE_MAX_PDU_LENGTH}, or 0 for no limit)"
        )
    proposals = {p.context_id: p for p in rq.presentation_contexts}
    seen: set[int] = set()
    for result in ac.presentation_contexts:
        proposal = proposals.get(result.context_id)
        if proposal is None:
            raise InvalidParameterValue(
                f"A-ASSOCIATE-AC has a result for presentation context {result.context_id}, "
                "which was not proposed"
            )
        if result.context_id in seen:
            raise InvalidItem(
                f"A-ASSOCIATE-AC has more than one result for presentation context "
                f"{result.context_id}"
            )
        seen.add(result.context_id)
        if result.result not in _RESULT_VALUES:
            raise InvalidParameterValue(
                f"presentation context {result.context_id} has undefined result {result.result}"
            )
        if (
            result.result == ContextResult.ACCEPTANCE
            and result.transfer_syntax not in proposal.transfer_syntaxes
        ):
            raise InvalidParameterValue(
                f"presentation context {result.context_id} was accepted with transfer syntax "
                f"{result.transfer_syntax!r}, which was not proposed for it"
            )
    return _association_view(rq, ac, is_requestor=True)
