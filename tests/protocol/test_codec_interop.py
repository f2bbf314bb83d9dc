"""Cross-check the codec against pynetdicom's PDU classes (an independent implementation).

Two directions, for generated PDUs of every type and every sub-item pynetdicom knows:
bytes encoded by pynetdicom decode with ours to the same values, and bytes encoded by ours
decode with pynetdicom to the same values; for well-formed input both encoders produce the
same bytes.
"""

from __future__ import annotations

from typing import Any

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
    release_rp,
    release_rq,
    role_selection_sub_items,
    sop_class_common_extended_negotiation_sub_items,
    sop_class_extended_negotiation_sub_items,
    user_identity_ac_sub_items,
    user_identity_rq_sub_items,
)

from asyncdicom.protocol.codec import decode_pdu, encode_pdu
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

try:
    import pynetdicom.pdu as pn
    import pynetdicom.pdu_items as pi
except ImportError:  # every test here is skipped (or failed) by its requires_peer marker
    pass

# Without pynetdicom these tests skip, or fail under ASYNCDICOM_REQUIRE_PEERS=1 (tests/conftest.py).
pytestmark = pytest.mark.requires_peer("pynetdicom")

# --------------------------------------------------------------------------- converters


def _sub_item_to_pn(item: UserInformationSubItem) -> Any:
    if isinstance(item, MaximumLengthSubItem):
        out = pi.MaximumLengthSubItem()
        out.maximum_length_received = item.maximum_length
    elif isinstance(item, ImplementationClassUIDSubItem):
        out = pi.ImplementationClassUIDSubItem()
        out.implementation_class_uid = item.uid
    elif isinstance(item, AsynchronousOperationsWindowSubItem):
        out = pi.AsynchronousOperationsWindowSubItem()
        out.maximum_number_operations_invoked = item.max_operations_invoked
        out.maximum_number_operations_performed = item.max_operations_performed
    elif isinstance(item, RoleSelectionSubItem):
        out = pi.SCP_SCU_RoleSelectionSubItem()
        out.sop_class_uid = item.sop_class_uid
        out.scu_role = int(item.scu_role)
        out.scp_role = int(item.scp_role)
    elif isinstance(item, ImplementationVersionNameSubItem):
        out = pi.ImplementationVersionNameSubItem()
        out.implementation_version_name = item.name
    elif isinstance(item, SOPClassExtendedNegotiationSubItem):
        out = pi.SOPClassExtendedNegotiationSubItem()
        out.sop_class_uid = item.sop_class_uid
        out.service_class_application_information = item.service_class_application_information
    elif isinstance(item, SOPClassCommonExtendedNegotiationSubItem):
        out = pi.SOPClassCommonExtendedNegotiationSubItem()
        out.sub_item_version = item.version
        out.sop_class_uid = item.sop_class_uid
        out.service_class_uid = item.service_class_uid
        out.related_general_sop_class_identification = list(item.related_general_sop_classes)
    elif isinstance(item, UserIdentityRQSubItem):
        out = pi.UserIdentitySubItemRQ()
        out.user_identity_type = item.identity_type
        out.positive_response_requested = int(item.positive_response_requested)
        out.primary_field = item.primary_field
        out.secondary_field = item.secondary_field
    elif isinstance(item, UserIdentityACSubItem):
        out = pi.UserIdentitySubItemAC()
        out.server_response = item.server_response
    else:  # pragma: no cover - the strategies below do not generate others
        raise TypeError(item)
    return out


def _sub_item_from_pn(item: Any) -> UserInformationSubItem:
    if isinstance(item, pi.MaximumLengthSubItem):
        return MaximumLengthSubItem(item.maximum_length_received)
    if isinstance(item, pi.ImplementationClassUIDSubItem):
        return ImplementationClassUIDSubItem(str(item.implementation_class_uid))
    if isinstance(item, pi.AsynchronousOperationsWindowSubItem):
        return AsynchronousOperationsWindowSubItem(
            item.maximum_number_operations_invoked, item.maximum_number_operations_performed
        )
    if isinstance(item, pi.SCP_SCU_RoleSelectionSubItem):
        return RoleSelectionSubItem(
            str(item.sop_class_uid), bool(item.scu_role), bool(item.scp_role)
        )
    if isinstance(item, pi.ImplementationVersionNameSubItem):
        return ImplementationVersionNameSubItem(item.implementation_version_name)
    if isinstance(item, pi.SOPClassExtendedNegotiationSubItem):
        return SOPClassExtendedNegotiationSubItem(
            str(item.sop_class_uid), item.service_class_application_information
        )
    if isinstance(item, pi.SOPClassCommonExtendedNegotiationSubItem):
        return SOPClassCommonExtendedNegotiationSubItem(
            str(item.sop_class_uid),
            str(item.service_class_uid),
            tuple(str(u) for u in item.related_general_sop_class_identification),
            item.sub_item_version,
        )
    if isinstance(item, pi.UserIdentitySubItemRQ):
        return UserIdentityRQSubItem(
            item.user_identity_type,
            bool(item.positive_response_requested),
            item.primary_field,
            item.secondary_field or b"",
        )
    if isinstance(item, pi.UserIdentitySubItemAC):
        return UserIdentityACSubItem(item.server_response)
    raise TypeError(item)  # pragma: no cover


def _user_info_to_pn(ui: UserInformationItem) -> Any:
    out = pi.UserInformationItem()
    out.user_data = [_sub_item_to_pn(i) for i in ui.sub_items]
    return out


def _app_context(name: str) -> Any:
    out = pi.ApplicationContextItem()
    out.application_context_name = name
    return out


def to_pynetdicom(pdu: PDU) -> Any:
    """Build the equivalent pynetdicom PDU object, field by field."""
    if isinstance(pdu, AssociateRQ):
        rq = pn.A_ASSOCIATE_RQ()
        rq.protocol_version = pdu.protocol_version
        rq.called_ae_title = pdu.called_ae_title
        rq.calling_ae_title = pdu.calling_ae_title
        items = [_app_context(pdu.application_context)]
        for context in pdu.presentation_contexts:
            item = pi.PresentationContextItemRQ()
            item.presentation_context_id = context.context_id
            abstract = pi.AbstractSyntaxSubItem()
            abstract.abstract_syntax_name = context.abstract_syntax
            subs = [abstract]
            for uid in context.transfer_syntaxes:
                ts = pi.TransferSyntaxSubItem()
                ts.transfer_syntax_name = uid
                subs.append(ts)
            item.abstract_transfer_syntax_sub_items = subs
            items.append(item)
        items.append(_user_info_to_pn(pdu.user_information))
        rq.variable_items = items
        return rq
    if isinstance(pdu, AssociateAC):
        ac = pn.A_ASSOCIATE_AC()
        ac.protocol_version = pdu.protocol_version
        ac._reserved_aet = pdu.called_ae_title
        ac._reserved_aec = pdu.calling_ae_title
        items = [_app_context(pdu.application_context)]
        for result in pdu.presentation_contexts:
            item = pi.PresentationContextItemAC()
            item.presentation_context_id = result.context_id
            item.result_reason = result.result
            ts = pi.TransferSyntaxSubItem()
            ts.transfer_syntax_name = result.transfer_syntax
            item.transfer_syntax_sub_item = [ts]
            items.append(item)
        items.append(_user_info_to_pn(pdu.user_information))
        ac.variable_items = items
        return ac
    if isinstance(pdu, AssociateRJ):
        rj = pn.A_ASSOCIATE_RJ()
        rj.result, rj.source, rj.reason_diagnostic = pdu.result, pdu.source, pdu.reason
        return rj
    if isinstance(pdu, PDataTF):
        pdata = pn.P_DATA_TF()
        for pdv in pdu.pdvs:
            item = pi.PresentationDataValueItem()
            item.presentation_context_id = pdv.context_id
            item.presentation_data_value = bytes((pdv.message_control_header,)) + bytes(pdv.data)
            pdata.presentation_data_value_items.append(item)
        return pdata
    if isinstance(pdu, ReleaseRQ):
        return pn.A_RELEASE_RQ()
    if isinstance(pdu, ReleaseRP):
        return pn.A_RELEASE_RP()
    assert isinstance(pdu, Abort)
    ab = pn.A_ABORT_RQ()
    ab.source, ab.reason_diagnostic = pdu.source, pdu.reason
    return ab


def _text(value: bytes | str) -> str:
    return value.decode("ascii") if isinstance(value, bytes) else str(value)


def from_pynetdicom(obj: Any) -> PDU:
    """Read a pynetdicom PDU object back into our dataclasses."""
    if isinstance(obj, (pn.A_ASSOCIATE_RQ, pn.A_ASSOCIATE_AC)):
        ui = UserInformationItem(
            tuple(_sub_item_from_pn(i) for i in obj.user_information.user_data)
        )
        app = str(obj.application_context_name)
        if isinstance(obj, pn.A_ASSOCIATE_RQ):
            contexts_rq = tuple(
                PresentationContextRQItem(
                    c.presentation_context_id,
                    str(c.abstract_syntax),
                    tuple(str(t) for t in c.transfer_syntax),
                )
                for c in obj.presentation_context
            )
            return AssociateRQ(
                _text(obj.called_ae_title).rstrip(" "),
                _text(obj.calling_ae_title).rstrip(" "),
                contexts_rq,
                ui,
                app,
                obj.protocol_version,
            )
        contexts_ac = tuple(
            PresentationContextACItem(
                c.presentation_context_id, c.result_reason, str(c.transfer_syntax or "")
            )
            for c in obj.presentation_context
        )
        return AssociateAC(
            _text(obj.reserved_aet).rstrip(" "),
            _text(obj.reserved_aec).rstrip(" "),
            contexts_ac,
            ui,
            app,
            obj.protocol_version,
        )
    if isinstance(obj, pn.A_ASSOCIATE_RJ):
        return AssociateRJ(obj.result, obj.source, obj.reason_diagnostic)
    if isinstance(obj, pn.P_DATA_TF):
        return PDataTF(
            tuple(
                PresentationDataValue(
                    i.presentation_context_id,
                    i.presentation_data_value[0],
                    i.presentation_data_value[1:],
                )
                for i in obj.presentation_data_value_items
            )
        )
    if isinstance(obj, pn.A_RELEASE_RQ):
        return ReleaseRQ()
    if isinstance(obj, pn.A_RELEASE_RP):
        return ReleaseRP()
    assert isinstance(obj, pn.A_ABORT_RQ)
    return Abort(obj.source, obj.reason_diagnostic)


_PN_CLASSES = {
    0x01: "A_ASSOCIATE_RQ",
    0x02: "A_ASSOCIATE_AC",
    0x03: "A_ASSOCIATE_RJ",
    0x04: "P_DATA_TF",
    0x05: "A_RELEASE_RQ",
    0x06: "A_RELEASE_RP",
    0x07: "A_ABORT_RQ",
}


def pynetdicom_decode(data: bytes) -> Any:
    obj = getattr(pn, _PN_CLASSES[data[0]])()
    obj.decode(data)
    return obj


# --------------------------------------------------------------------------- strategies
# Restricted to what pynetdicom represents: AE titles without leading spaces (it strips them),
# no unknown sub-items (it has no class for them), a zero AC reserved field (it does not echo
# it), and AC AE-title fields that are valid AE titles.

_AE = st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.", min_size=1, max_size=16)


def _pn_sub_items(rq: bool) -> st.SearchStrategy[UserInformationSubItem]:
    common: list[st.SearchStrategy[UserInformationSubItem]] = [
        maximum_length_sub_items(),
        implementation_class_uid_sub_items(),
        async_ops_window_sub_items(),
        role_selection_sub_items(),
        # pynetdicom validates the name like an AE title (no backslash, no edge spaces)
        implementation_version_name_sub_items().filter(
            lambda i: i.name.strip() == i.name and "\\" not in i.name
        ),
        sop_class_extended_negotiation_sub_items(),
    ]
    if rq:
        common += [
            # pynetdicom reads the sub-item version byte as a fixed 0
            sop_class_common_extended_negotiation_sub_items().filter(lambda i: i.version == 0),
            # pynetdicom knows identity types 1-5 and sends the secondary field only for 2
            # (and mis-reads an empty primary field: its decoder treats a zero-length slice
            # as "to the end"), so the primary field is non-empty here
            user_identity_rq_sub_items().filter(
                lambda i: 1 <= i.identity_type <= 5 and len(i.primary_field) > 0
            ),
        ]
    else:
        common.append(user_identity_ac_sub_items())
    return st.one_of(common)


def _pn_user_info(rq: bool) -> st.SearchStrategy[UserInformationItem]:
    return st.lists(_pn_sub_items(rq), max_size=8).map(
        lambda items: UserInformationItem(tuple(items))
    )


@st.composite
def _pn_rq(draw: st.DrawFn) -> AssociateRQ:
    pdu = draw(associate_rq(user_information=_pn_user_info(True)))
    return AssociateRQ(
        draw(_AE),
        draw(_AE),
        pdu.presentation_contexts,
        pdu.user_information,
        pdu.application_context,
        pdu.protocol_version,
    )


@st.composite
def _pn_ac(draw: st.DrawFn) -> AssociateAC:
    pdu = draw(associate_ac(user_information=_pn_user_info(False)))
    # pynetdicom cannot encode an empty transfer syntax sub-item (it stores "" as None)
    contexts = tuple(
        PresentationContextACItem(c.context_id, c.result, c.transfer_syntax or "1.2.840.10008.1.2")
        for c in pdu.presentation_contexts
    )
    return AssociateAC(
        draw(_AE),
        draw(_AE),
        contexts,
        pdu.user_information,
        pdu.application_context,
        pdu.protocol_version,
    )


interop_pdus = st.one_of(
    _pn_rq(), _pn_ac(), associate_rj(), p_data_tf(), release_rq(), release_rp(), abort()
)


# --------------------------------------------------------------------------- properties


@given(interop_pdus)
def test_pynetdicom_encoded_decodes_with_ours(pdu: PDU) -> None:
    theirs = to_pynetdicom(pdu).encode()
    assert decode_pdu(theirs) == pdu


@given(interop_pdus)
def test_ours_decodes_with_pynetdicom(pdu: PDU) -> None:
    ours = encode_pdu(pdu)
    assert from_pynetdicom(pynetdicom_decode(ours)) == pdu


@given(interop_pdus)
def test_both_encoders_agree_byte_for_byte(pdu: PDU) -> None:
    assert encode_pdu(pdu) == to_pynetdicom(pdu).encode()


def test_pynetdicom_association_request_from_primitives() -> None:
    """A realistic RQ built the way pynetdicom's own ACSE builds it (from service primitives)."""
    from pynetdicom.pdu_primitives import (
        A_ASSOCIATE,
        ImplementationClassUIDNotification,
        ImplementationVersionNameNotification,
        MaximumLengthNotification,
        SCP_SCU_RoleSelectionNegotiation,
        UserIdentityNegotiation,
    )
    from pynetdicom.presentation import build_context

    primitive = A_ASSOCIATE()
    primitive.application_context_name = "1.2.840.10008.3.1.1.1"
    primitive.calling_ae_title = "STORESCU"
    primitive.called_ae_title = "ANY-SCP"
    contexts = [
        build_context("1.2.840.10008.1.1"),
        build_context("1.2.840.10008.5.1.4.1.1.2", ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"]),
    ]
    for cid, context in zip((1, 3), contexts, strict=True):
        context.context_id = cid
    primitive.presentation_context_definition_list = contexts
    max_length = MaximumLengthNotification()
    max_length.maximum_length_received = 16382
    impl_uid = ImplementationClassUIDNotification()
    impl_uid.implementation_class_uid = "1.2.826.0.1.3680043.9.3811.3.0.4"
    impl_name = ImplementationVersionNameNotification()
    impl_name.implementation_version_name = "PYNETDICOM_304"
    role = SCP_SCU_RoleSelectionNegotiation()
    role.sop_class_uid = "1.2.840.10008.5.1.4.1.1.2"
    role.scu_role = False
    role.scp_role = True
    identity = UserIdentityNegotiation()
    identity.user_identity_type = 2
    identity.positive_response_requested = True
    identity.primary_field = b"user"
    identity.secondary_field = b"pass"
    primitive.user_information = [max_length, impl_uid, impl_name, role, identity]
    data = pn.A_ASSOCIATE_RQ(primitive).encode()

    pdu = decode_pdu(data)
    assert isinstance(pdu, AssociateRQ)
    assert (pdu.called_ae_title, pdu.calling_ae_title) == ("ANY-SCP", "STORESCU")
    assert pdu.presentation_contexts == (
        PresentationContextRQItem(
            1, "1.2.840.10008.1.1", tuple(str(t) for t in contexts[0].transfer_syntax)
        ),
        PresentationContextRQItem(
            3, "1.2.840.10008.5.1.4.1.1.2", ("1.2.840.10008.1.2.1", "1.2.840.10008.1.2")
        ),
    )
    ui = pdu.user_information
    assert ui.maximum_length == 16382
    assert ui.implementation_class_uid == "1.2.826.0.1.3680043.9.3811.3.0.4"
    assert ui.implementation_version_name == "PYNETDICOM_304"
    assert ui.role_selections == (RoleSelectionSubItem("1.2.840.10008.5.1.4.1.1.2", False, True),)
    assert ui.user_identity_rq == UserIdentityRQSubItem(2, True, b"user", b"pass")
    assert encode_pdu(pdu) == data


def test_unknown_sub_item_is_ignored_by_pynetdicom_consumers_of_ours() -> None:
    """Our encoder re-emits unknown sub-items verbatim; the bytes stay parseable as items."""
    ui = UserInformationItem((MaximumLengthSubItem(0), UnknownSubItem(0x5A, b"\x01\x02", 3)))
    data = encode_pdu(AssociateRQ("A", "B", (PresentationContextRQItem(1, "1.2", ("1.2.3",)),), ui))
    assert data.endswith(b"\x5a\x03\x00\x02\x01\x02")
    assert decode_pdu(data).user_information == ui  # type: ignore[union-attr]


@pytest.mark.parametrize("context_id", [1, 127, 255])
def test_pdata_context_ids_agree(context_id: int) -> None:
    pdu = PDataTF((PresentationDataValue(context_id, 3, b"\x08\x00"),))
    assert encode_pdu(pdu) == to_pynetdicom(pdu).encode()
