"""Hypothesis strategies for every PDU, item and sub-item dataclass of asyncdicom.protocol.pdu.

Everything generated here is *well-formed*: it encodes without error and decodes back to an
equal object (``decode_pdu(encode_pdu(x)) == x``).  Reuse them anywhere a realistic PDU is
needed; the builders take optional strategies for their parts so that callers can pin fields
(for example ``associate_rq(presentation_contexts=st.just((...)))``).

Import with ``from strategies import ...`` (tests/protocol/conftest.py puts this folder on
sys.path).
"""

from __future__ import annotations

from hypothesis import strategies as st

from asyncdicom.protocol.pdu import (
    APPLICATION_CONTEXT_NAME,
    PDU,
    Abort,
    AbstractSyntaxSubItem,
    ApplicationContextItem,
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
    TransferSyntaxSubItem,
    UnknownSubItem,
    UserIdentityACSubItem,
    UserIdentityRQSubItem,
    UserInformationItem,
    UserInformationSubItem,
)

__all__ = [
    "abort",
    "abstract_syntax_sub_items",
    "ac_ae_titles",
    "ae_titles",
    "any_pdu",
    "application_context_items",
    "associate_ac",
    "associate_rj",
    "associate_rq",
    "async_ops_window_sub_items",
    "context_ids",
    "implementation_class_uid_sub_items",
    "implementation_version_name_sub_items",
    "maximum_length_sub_items",
    "p_data_tf",
    "presentation_context_ac_items",
    "presentation_context_rq_items",
    "presentation_data_values",
    "release_rp",
    "release_rq",
    "role_selection_sub_items",
    "sop_class_common_extended_negotiation_sub_items",
    "sop_class_extended_negotiation_sub_items",
    "transfer_syntax_sub_items",
    "uids",
    "unknown_sub_items",
    "user_identity_ac_sub_items",
    "user_identity_rq_sub_items",
    "user_information_items",
    "user_information_sub_items",
]

# --------------------------------------------------------------------------- scalars

#: AE VR repertoire: ISO 646 G0 printable characters except backslash (PS3.5, PS3.8 7.1.1.3).
_AE_ALPHABET = "".join(chr(c) for c in range(0x20, 0x7F) if c != 0x5C)

_WELL_KNOWN_UIDS = (
    APPLICATION_CONTEXT_NAME,
    "1.2.840.10008.1.1",  # Verification
    "1.2.840.10008.1.2",  # Implicit VR Little Endian
    "1.2.840.10008.1.2.1",  # Explicit VR Little Endian
    "1.2.840.10008.1.2.4.50",  # JPEG Baseline
    "1.2.840.10008.5.1.4.1.1.2",  # CT Image Storage
    "1.2.840.10008.5.1.4.1.2.1.1",  # Patient Root Q/R Find
)


@st.composite
def _generated_uids(draw: st.DrawFn) -> str:
    # PS3.8 Annex F / PS3.5 9.1: components of digits without leading zeros, '.'-separated,
    # at most 64 characters.
    components = draw(st.lists(st.integers(min_value=0, max_value=10**12), min_size=2, max_size=12))
    uid = ".".join(str(c) for c in components)
    return uid[:64].rstrip(".")


def uids() -> st.SearchStrategy[str]:
    """Valid UIDs: well-known ones and generated ones (1-64 characters, Annex F syntax)."""
    return st.one_of(st.sampled_from(_WELL_KNOWN_UIDS), _generated_uids())


def ae_titles() -> st.SearchStrategy[str]:
    """AE titles as the decoder returns them: 1-16 AE characters, no trailing space, not blank.

    Leading spaces are allowed (kept as received, PS3.8 7.1.1.3).
    """
    return st.text(alphabet=_AE_ALPHABET, min_size=1, max_size=16).filter(
        lambda s: not s.endswith(" ")
    )


def ac_ae_titles() -> st.SearchStrategy[str]:
    """The echoed (reserved) AE-title fields of an A-ASSOCIATE-AC: any AE title or empty."""
    return st.one_of(ae_titles(), st.just(""))


def context_ids() -> st.SearchStrategy[int]:
    """Presentation context IDs: odd integers 1-255 (PS3.8 9.3.2.2)."""
    return st.integers(min_value=0, max_value=127).map(lambda n: 2 * n + 1)


def _small_bytes(max_size: int = 64) -> st.SearchStrategy[bytes]:
    return st.binary(max_size=max_size)


# --------------------------------------------------------------------------- items


def application_context_items() -> st.SearchStrategy[ApplicationContextItem]:
    return st.builds(ApplicationContextItem, uids())


def abstract_syntax_sub_items() -> st.SearchStrategy[AbstractSyntaxSubItem]:
    return st.builds(AbstractSyntaxSubItem, uids())


def transfer_syntax_sub_items() -> st.SearchStrategy[TransferSyntaxSubItem]:
    return st.builds(TransferSyntaxSubItem, uids())


def presentation_context_rq_items(
    context_id: st.SearchStrategy[int] | None = None,
) -> st.SearchStrategy[PresentationContextRQItem]:
    """0x20 items: one abstract syntax, 1-6 transfer syntaxes."""
    return st.builds(
        PresentationContextRQItem,
        context_id=context_id if context_id is not None else context_ids(),
        abstract_syntax=uids(),
        transfer_syntaxes=st.lists(uids(), min_size=1, max_size=6).map(tuple),
    )


@st.composite
def _pc_ac(draw: st.DrawFn, context_id: st.SearchStrategy[int] | None) -> PresentationContextACItem:
    cid = draw(context_id if context_id is not None else context_ids())
    result = draw(st.integers(min_value=0, max_value=4))
    # An accepted context names its transfer syntax; a rejected one may carry an empty one.
    transfer = draw(uids()) if result == 0 else draw(st.one_of(st.just(""), uids()))
    return PresentationContextACItem(cid, result, transfer)


def presentation_context_ac_items(
    context_id: st.SearchStrategy[int] | None = None,
) -> st.SearchStrategy[PresentationContextACItem]:
    """0x21 items: result 0-4; the transfer syntax is a UID when accepted, maybe empty if not."""
    return _pc_ac(context_id)


def maximum_length_sub_items() -> st.SearchStrategy[MaximumLengthSubItem]:
    return st.builds(
        MaximumLengthSubItem,
        st.one_of(
            st.sampled_from([0, 16384, 65536, 262144]),
            st.integers(min_value=0, max_value=0xFFFFFFFF),
        ),
    )


def implementation_class_uid_sub_items() -> st.SearchStrategy[ImplementationClassUIDSubItem]:
    return st.builds(ImplementationClassUIDSubItem, uids())


def async_ops_window_sub_items() -> st.SearchStrategy[AsynchronousOperationsWindowSubItem]:
    u16 = st.integers(min_value=0, max_value=0xFFFF)
    return st.builds(AsynchronousOperationsWindowSubItem, u16, u16)


def role_selection_sub_items() -> st.SearchStrategy[RoleSelectionSubItem]:
    return st.builds(RoleSelectionSubItem, uids(), st.booleans(), st.booleans())


def implementation_version_name_sub_items() -> st.SearchStrategy[ImplementationVersionNameSubItem]:
    """1-16 ISO 646 printable characters (PS3.7 D.3.3.2.3)."""
    alphabet = "".join(chr(c) for c in range(0x20, 0x7F))
    return st.builds(
        ImplementationVersionNameSubItem, st.text(alphabet=alphabet, min_size=1, max_size=16)
    )


def sop_class_extended_negotiation_sub_items() -> st.SearchStrategy[
    SOPClassExtendedNegotiationSubItem
]:
    return st.builds(SOPClassExtendedNegotiationSubItem, uids(), _small_bytes())


def sop_class_common_extended_negotiation_sub_items() -> st.SearchStrategy[
    SOPClassCommonExtendedNegotiationSubItem
]:
    return st.builds(
        SOPClassCommonExtendedNegotiationSubItem,
        sop_class_uid=uids(),
        service_class_uid=uids(),
        related_general_sop_classes=st.lists(uids(), max_size=4).map(tuple),
        version=st.one_of(st.just(0), st.integers(min_value=0, max_value=255)),
    )


@st.composite
def _user_identity_rq(draw: st.DrawFn) -> UserIdentityRQSubItem:
    identity_type = draw(st.one_of(st.integers(1, 5), st.integers(0, 255)))
    primary = draw(_small_bytes())
    # Only username+passcode (type 2) has a secondary field; others send it empty.
    secondary = draw(_small_bytes()) if identity_type == 2 else b""
    return UserIdentityRQSubItem(identity_type, draw(st.booleans()), primary, secondary)


def user_identity_rq_sub_items() -> st.SearchStrategy[UserIdentityRQSubItem]:
    return _user_identity_rq()


def user_identity_ac_sub_items() -> st.SearchStrategy[UserIdentityACSubItem]:
    return st.builds(UserIdentityACSubItem, _small_bytes())


def unknown_sub_items() -> st.SearchStrategy[UnknownSubItem]:
    """Sub-items of types outside 0x51-0x59, kept verbatim by the decoder."""
    item_type = st.integers(min_value=0, max_value=255).filter(lambda t: not 0x51 <= t <= 0x59)
    return st.builds(
        UnknownSubItem,
        item_type=item_type,
        data=_small_bytes(),
        reserved=st.integers(min_value=0, max_value=255),
    )


def user_information_sub_items(
    *, rq: bool | None = None
) -> st.SearchStrategy[UserInformationSubItem]:
    """Any sub-item; ``rq=True`` leaves out the AC-only 0x59, ``rq=False`` the RQ-only ones."""
    options: list[st.SearchStrategy[UserInformationSubItem]] = [
        maximum_length_sub_items(),
        implementation_class_uid_sub_items(),
        async_ops_window_sub_items(),
        role_selection_sub_items(),
        implementation_version_name_sub_items(),
        sop_class_extended_negotiation_sub_items(),
        unknown_sub_items(),
    ]
    if rq is not False:
        options += [sop_class_common_extended_negotiation_sub_items(), user_identity_rq_sub_items()]
    if rq is not True:
        options.append(user_identity_ac_sub_items())
    return st.one_of(options)


@st.composite
def _user_information(draw: st.DrawFn, rq: bool | None, typical: bool) -> UserInformationItem:
    items: list[UserInformationSubItem] = []
    if typical:
        items.append(draw(maximum_length_sub_items()))
        items.append(draw(implementation_class_uid_sub_items()))
    items += draw(st.lists(user_information_sub_items(rq=rq), max_size=8))
    return UserInformationItem(tuple(items))


def user_information_items(
    *, rq: bool | None = None, typical: bool | None = None
) -> st.SearchStrategy[UserInformationItem]:
    """0x50 items with up to 10 sub-items (well under the 65535-byte item limit).

    ``typical=True`` always starts with Maximum Length and Implementation Class UID (as real
    peers do); ``None`` draws both kinds.
    """
    if typical is None:
        return st.one_of(_user_information(rq, True), _user_information(rq, False))
    return _user_information(rq, typical)


# --------------------------------------------------------------------------- PDUs


@st.composite
def _associate_rq(
    draw: st.DrawFn,
    presentation_contexts: st.SearchStrategy[tuple[PresentationContextRQItem, ...]] | None,
    user_information: st.SearchStrategy[UserInformationItem] | None,
) -> AssociateRQ:
    if presentation_contexts is None:
        ids = draw(st.lists(context_ids(), min_size=1, max_size=8, unique=True))
        contexts = tuple(draw(presentation_context_rq_items(st.just(i))) for i in ids)
    else:
        contexts = draw(presentation_contexts)
    return AssociateRQ(
        called_ae_title=draw(ae_titles()),
        calling_ae_title=draw(ae_titles()),
        presentation_contexts=contexts,
        user_information=draw(
            user_information if user_information is not None else user_information_items(rq=True)
        ),
        application_context=draw(st.one_of(st.just(APPLICATION_CONTEXT_NAME), uids())),
        # bit 0 must be set; other bits are future versions a receiver ignores
        protocol_version=draw(
            st.one_of(st.just(1), st.integers(0, 0x7FFF).map(lambda v: 2 * v + 1))
        ),
    )


def associate_rq(
    *,
    presentation_contexts: st.SearchStrategy[tuple[PresentationContextRQItem, ...]] | None = None,
    user_information: st.SearchStrategy[UserInformationItem] | None = None,
) -> st.SearchStrategy[AssociateRQ]:
    """A-ASSOCIATE-RQ with 1-8 contexts of unique IDs."""
    return _associate_rq(presentation_contexts, user_information)


@st.composite
def _associate_ac(
    draw: st.DrawFn,
    presentation_contexts: st.SearchStrategy[tuple[PresentationContextACItem, ...]] | None,
    user_information: st.SearchStrategy[UserInformationItem] | None,
) -> AssociateAC:
    if presentation_contexts is None:
        ids = draw(st.lists(context_ids(), min_size=1, max_size=8, unique=True))
        contexts = tuple(draw(presentation_context_ac_items(st.just(i))) for i in ids)
    else:
        contexts = draw(presentation_contexts)
    return AssociateAC(
        called_ae_title=draw(ac_ae_titles()),
        calling_ae_title=draw(ac_ae_titles()),
        presentation_contexts=contexts,
        user_information=draw(
            user_information if user_information is not None else user_information_items(rq=False)
        ),
        application_context=draw(st.one_of(st.just(APPLICATION_CONTEXT_NAME), uids())),
        protocol_version=draw(
            st.one_of(st.just(1), st.integers(0, 0x7FFF).map(lambda v: 2 * v + 1))
        ),
        reserved=draw(st.one_of(st.just(bytes(32)), st.binary(min_size=32, max_size=32))),
    )


def associate_ac(
    *,
    presentation_contexts: st.SearchStrategy[tuple[PresentationContextACItem, ...]] | None = None,
    user_information: st.SearchStrategy[UserInformationItem] | None = None,
) -> st.SearchStrategy[AssociateAC]:
    """A-ASSOCIATE-AC with 1-8 context results of unique IDs."""
    return _associate_ac(presentation_contexts, user_information)


def associate_rj() -> st.SearchStrategy[AssociateRJ]:
    """A-ASSOCIATE-RJ; mostly the Table 9-21 combinations, sometimes any byte values."""
    standard = st.one_of(
        st.builds(AssociateRJ, st.sampled_from([1, 2]), st.just(1), st.sampled_from([1, 2, 3, 7])),
        st.builds(AssociateRJ, st.sampled_from([1, 2]), st.just(2), st.sampled_from([1, 2])),
        st.builds(AssociateRJ, st.sampled_from([1, 2]), st.just(3), st.sampled_from([1, 2])),
    )
    byte = st.integers(min_value=0, max_value=255)
    return st.one_of(standard, st.builds(AssociateRJ, byte, byte, byte))


def presentation_data_values(
    *,
    context_id: st.SearchStrategy[int] | None = None,
    max_size: int = 256,
) -> st.SearchStrategy[PresentationDataValue]:
    """PDVs with any control header byte and up to ``max_size`` bytes of value."""
    return st.builds(
        PresentationDataValue,
        context_id=context_id if context_id is not None else context_ids(),
        message_control_header=st.one_of(st.integers(0, 3), st.integers(0, 255)),
        data=st.binary(max_size=max_size),
    )


def p_data_tf(*, max_pdvs: int = 4, max_size: int = 256) -> st.SearchStrategy[PDataTF]:
    """P-DATA-TF PDUs with 1-``max_pdvs`` PDVs."""
    return st.builds(
        PDataTF,
        st.lists(presentation_data_values(max_size=max_size), min_size=1, max_size=max_pdvs).map(
            tuple
        ),
    )


def release_rq() -> st.SearchStrategy[ReleaseRQ]:
    return st.just(ReleaseRQ())


def release_rp() -> st.SearchStrategy[ReleaseRP]:
    return st.just(ReleaseRP())


def abort() -> st.SearchStrategy[Abort]:
    """A-ABORT: user (0, reason 0) or provider (2, reasons 0-6), sometimes any bytes."""
    byte = st.integers(min_value=0, max_value=255)
    return st.one_of(
        st.just(Abort(0, 0)),
        st.builds(Abort, st.just(2), st.integers(0, 6)),
        st.builds(Abort, byte, byte),
    )


def any_pdu() -> st.SearchStrategy[PDU]:
    """Any of the seven PDUs."""
    return st.one_of(
        associate_rq(),
        associate_ac(),
        associate_rj(),
        p_data_tf(),
        release_rq(),
        release_rp(),
        abort(),
    )
