"""Tests for asyncdicom.protocol.negotiation (PS3.8 7.1, 9.3.2-9.3.4; PS3.7 Annex D.3.3)."""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from asyncdicom.protocol.errors import InvalidItem, InvalidParameterValue, ProtocolError
from asyncdicom.protocol.negotiation import (
    FALLBACK_MAX_PDU_LENGTH,
    Accepted,
    AcceptorConfig,
    ContextRequest,
    ContextResult,
    IdentityDecision,
    NegotiatedAssociation,
    PresentationContext,
    Rejected,
    RequestorConfig,
    SupportedContext,
    build_associate_rq,
    negotiate,
    process_associate_ac,
)
from asyncdicom.protocol.pdu import (
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
    UnknownSubItem,
    UserIdentityACSubItem,
    UserIdentityRQSubItem,
    UserInformationItem,
)

# UIDs (PS3.6 / PS3.4); literal strings on purpose, this module does not depend on uids.py.
VERIFICATION = "1.2.840.10008.1.1"
CT_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
SC_STORAGE = "1.2.840.10008.5.1.4.1.1.7"  # Secondary Capture Image Storage
STORAGE_COMMITMENT = "1.2.840.10008.1.20.1"
STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
STUDY_ROOT_GET = "1.2.840.10008.5.1.4.1.2.2.3"
IMPLICIT_LE = "1.2.840.10008.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
DEFLATED_LE = "1.2.840.10008.1.2.1.99"
EXPLICIT_BE = "1.2.840.10008.1.2.2"
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
DICOM_APP_CONTEXT = "1.2.840.10008.3.1.1.1"

REQUESTOR_IMPL = "1.2.826.0.1.3680043.9.1"
ACCEPTOR_IMPL = "1.2.826.0.1.3680043.9.2"

ALL_TS = (IMPLICIT_LE, EXPLICIT_LE, DEFLATED_LE, EXPLICIT_BE, JPEG_BASELINE)
STORAGE_CLASSES = frozenset({CT_STORAGE, MR_STORAGE, SC_STORAGE})


def is_storage(uid: str) -> bool:
    return uid in STORAGE_CLASSES


def requestor(**kw: object) -> RequestorConfig:
    values: dict[str, object] = {
        "calling_ae_title": "SCU",
        "called_ae_title": "ARCHIVE",
        "implementation_class_uid": REQUESTOR_IMPL,
        "max_pdu_length": 16384,
    }
    values.update(kw)
    return RequestorConfig(**values)  # type: ignore[arg-type]


def acceptor(*supported: SupportedContext, **kw: object) -> AcceptorConfig:
    values: dict[str, object] = {
        "ae_title": "ARCHIVE",
        "supported": supported or (SupportedContext(VERIFICATION, (IMPLICIT_LE,)),),
        "implementation_class_uid": ACCEPTOR_IMPL,
        "implementation_version_name": "ACC_1",
        "max_pdu_length": 32768,
    }
    values.update(kw)
    return AcceptorConfig(**values)  # type: ignore[arg-type]


def make_rq(
    contexts: Sequence[PresentationContextRQItem] = (
        PresentationContextRQItem(1, VERIFICATION, (IMPLICIT_LE,)),
    ),
    *,
    sub_items: Sequence[object] = (),
    called: str = "ARCHIVE",
    calling: str = "SCU",
    max_length: int | None = 16384,
    app_context: str = DICOM_APP_CONTEXT,
) -> AssociateRQ:
    """An RQ built by hand, as a peer might send it."""
    items: list[object] = []
    if max_length is not None:
        items.append(MaximumLengthSubItem(max_length))
    items.append(ImplementationClassUIDSubItem(REQUESTOR_IMPL))
    items.extend(sub_items)
    return AssociateRQ(
        called_ae_title=called,
        calling_ae_title=calling,
        presentation_contexts=tuple(contexts),
        user_information=UserInformationItem(tuple(items)),  # type: ignore[arg-type]
        application_context=app_context,
    )


def make_ac(
    results: Sequence[PresentationContextACItem], *, sub_items: Sequence[object] = ()
) -> AssociateAC:
    items: list[object] = [
        MaximumLengthSubItem(32768),
        ImplementationClassUIDSubItem(ACCEPTOR_IMPL),
    ]
    items.extend(sub_items)
    return AssociateAC(
        called_ae_title="ARCHIVE",
        calling_ae_title="SCU",
        presentation_contexts=tuple(results),
        user_information=UserInformationItem(tuple(items)),  # type: ignore[arg-type]
    )


def accept(
    rq: AssociateRQ, config: AcceptorConfig, identity: IdentityDecision | None = None
) -> Accepted:
    result = negotiate(rq, config, identity)
    assert isinstance(result, Accepted), result
    return result


def reject(
    rq: AssociateRQ, config: AcceptorConfig, identity: IdentityDecision | None = None
) -> AssociateRJ:
    result = negotiate(rq, config, identity)
    assert isinstance(result, Rejected), result
    return result.rj


_ITEM_TYPES: dict[type, int] = {
    MaximumLengthSubItem: 0x51,
    ImplementationClassUIDSubItem: 0x52,
    AsynchronousOperationsWindowSubItem: 0x53,
    RoleSelectionSubItem: 0x54,
    ImplementationVersionNameSubItem: 0x55,
    SOPClassExtendedNegotiationSubItem: 0x56,
    SOPClassCommonExtendedNegotiationSubItem: 0x57,
    UserIdentityRQSubItem: 0x58,
    UserIdentityACSubItem: 0x59,
}


def item_type(item: object) -> int:
    """Item type of a user-information sub-item (PS3.7 Annex D.3.3)."""
    return _ITEM_TYPES[type(item)]


def results_by_id(ac: AssociateAC) -> dict[int, PresentationContextACItem]:
    return {item.context_id: item for item in ac.presentation_contexts}


def min0(a: int, b: int) -> int:
    """Reference rule of PS3.7 D.3.3.3: 0 is unlimited, otherwise the smaller value."""
    if 0 in (a, b):
        return max(a, b)
    return min(a, b)


# =========================================================================== build_associate_rq


class TestBuildAssociateRQ:
    def test_context_ids_are_odd_and_in_order(self) -> None:
        contexts = [
            ContextRequest(uid, (IMPLICIT_LE,)) for uid in (VERIFICATION, CT_STORAGE, MR_STORAGE)
        ]
        rq = build_associate_rq(requestor(), contexts)
        assert [c.context_id for c in rq.presentation_contexts] == [1, 3, 5]
        assert [c.abstract_syntax for c in rq.presentation_contexts] == [
            VERIFICATION,
            CT_STORAGE,
            MR_STORAGE,
        ]

    def test_transfer_syntax_order_is_kept(self) -> None:
        rq = build_associate_rq(
            requestor(), [ContextRequest(CT_STORAGE, (JPEG_BASELINE, EXPLICIT_LE, IMPLICIT_LE))]
        )
        assert rq.presentation_contexts[0].transfer_syntaxes == (
            JPEG_BASELINE,
            EXPLICIT_LE,
            IMPLICIT_LE,
        )

    def test_128_contexts_fit_and_the_last_id_is_255(self) -> None:
        rq = build_associate_rq(requestor(), [ContextRequest(CT_STORAGE, (IMPLICIT_LE,))] * 128)
        ids = [c.context_id for c in rq.presentation_contexts]
        assert ids == list(range(1, 256, 2))
        assert len(set(ids)) == 128

    def test_129_contexts_are_refused(self) -> None:
        with pytest.raises(ValueError, match="128"):
            build_associate_rq(requestor(), [ContextRequest(CT_STORAGE, (IMPLICIT_LE,))] * 129)

    def test_no_context_is_refused(self) -> None:
        with pytest.raises(ValueError):
            build_associate_rq(requestor(), [])

    def test_context_without_transfer_syntax_is_refused(self) -> None:
        with pytest.raises(ValueError, match="transfer syntax"):
            build_associate_rq(requestor(), [ContextRequest(CT_STORAGE, ())])

    @pytest.mark.parametrize("uid", ["", "1.2.abc", "1." * 40])
    def test_bad_uid_is_refused(self, uid: str) -> None:
        with pytest.raises(ValueError):
            build_associate_rq(requestor(), [ContextRequest(uid, (IMPLICIT_LE,))])

    def test_minimal_user_information(self) -> None:
        rq = build_associate_rq(requestor(), [ContextRequest(VERIFICATION, (IMPLICIT_LE,))])
        assert rq.user_information.sub_items == (
            MaximumLengthSubItem(16384),
            ImplementationClassUIDSubItem(REQUESTOR_IMPL),
        )
        assert rq.application_context == DICOM_APP_CONTEXT
        assert rq.called_ae_title == "ARCHIVE"
        assert rq.calling_ae_title == "SCU"

    def test_sub_items_are_in_increasing_item_type_order(self) -> None:
        ext = SOPClassExtendedNegotiationSubItem(STUDY_ROOT_FIND, b"\x01")
        common = SOPClassCommonExtendedNegotiationSubItem(CT_STORAGE, "1.2.840.10008.4.2")
        identity = UserIdentityRQSubItem(2, True, b"alice", b"secret")
        config = requestor(
            implementation_version_name="REQ_1",
            async_ops_window=(5, 3),
            user_identity=identity,
            extended_negotiation=(ext,),
            common_extended_negotiation=(common,),
        )
        rq = build_associate_rq(
            config,
            [
                ContextRequest(STUDY_ROOT_GET, (IMPLICIT_LE,)),
                ContextRequest(CT_STORAGE, (IMPLICIT_LE,), scu_role=False, scp_role=True),
                ContextRequest(STORAGE_COMMITMENT, (IMPLICIT_LE,), scu_role=True, scp_role=True),
            ],
        )
        items = rq.user_information.sub_items
        assert items == (
            MaximumLengthSubItem(16384),
            ImplementationClassUIDSubItem(REQUESTOR_IMPL),
            AsynchronousOperationsWindowSubItem(5, 3),
            RoleSelectionSubItem(CT_STORAGE, False, True),
            RoleSelectionSubItem(STORAGE_COMMITMENT, True, True),
            ImplementationVersionNameSubItem("REQ_1"),
            ext,
            common,
            identity,
        )
        codes = [item_type(item) for item in items]
        assert codes == sorted(codes)

    def test_no_role_items_without_role_requests(self) -> None:
        rq = build_associate_rq(requestor(), [ContextRequest(CT_STORAGE, (IMPLICIT_LE,))])
        assert rq.user_information.role_selections == ()

    def test_one_role_item_per_sop_class(self) -> None:
        rq = build_associate_rq(
            requestor(),
            [
                ContextRequest(CT_STORAGE, (IMPLICIT_LE,), scu_role=False, scp_role=True),
                ContextRequest(CT_STORAGE, (JPEG_BASELINE,), scu_role=False, scp_role=True),
                ContextRequest(CT_STORAGE, (EXPLICIT_LE,)),  # no preference: compatible
            ],
        )
        assert rq.user_information.role_selections == (
            RoleSelectionSubItem(CT_STORAGE, False, True),
        )
        assert len(rq.presentation_contexts) == 3

    def test_conflicting_roles_for_one_sop_class_are_refused(self) -> None:
        with pytest.raises(ValueError, match="conflicting"):
            build_associate_rq(
                requestor(),
                [
                    ContextRequest(CT_STORAGE, (IMPLICIT_LE,), scu_role=False, scp_role=True),
                    ContextRequest(CT_STORAGE, (EXPLICIT_LE,), scu_role=True, scp_role=True),
                ],
            )

    @pytest.mark.parametrize(
        ("scu", "scp", "expected"),
        [
            (None, True, (True, True)),
            (False, None, (False, False)),
            (True, None, (True, False)),
            (None, False, (True, False)),
        ],
    )
    def test_one_missing_role_takes_the_requestor_default(
        self, scu: bool | None, scp: bool | None, expected: tuple[bool, bool]
    ) -> None:
        rq = build_associate_rq(
            requestor(), [ContextRequest(CT_STORAGE, (IMPLICIT_LE,), scu_role=scu, scp_role=scp)]
        )
        assert rq.user_information.role_selections == (RoleSelectionSubItem(CT_STORAGE, *expected),)

    @pytest.mark.parametrize(
        "kw",
        [
            {"calling_ae_title": ""},
            {"calling_ae_title": "   "},
            {"called_ae_title": "A" * 17},
            {"called_ae_title": "BAD\\AE"},
            {"called_ae_title": "TAB\tAE"},
            {"called_ae_title": "ÄRCHIVE"},
            {"max_pdu_length": -1},
            {"max_pdu_length": 1 << 32},
            {"async_ops_window": (65536, 1)},
            {"async_ops_window": (1, -1)},
            {"implementation_version_name": ""},
            {"implementation_version_name": "X" * 17},
            {"implementation_class_uid": "not-a-uid"},
            {
                "extended_negotiation": (
                    SOPClassExtendedNegotiationSubItem(CT_STORAGE, b"\x01"),
                    SOPClassExtendedNegotiationSubItem(CT_STORAGE, b"\x00"),
                )
            },
            {
                "common_extended_negotiation": (
                    SOPClassCommonExtendedNegotiationSubItem(CT_STORAGE, "1.2.840.10008.4.2"),
                    SOPClassCommonExtendedNegotiationSubItem(CT_STORAGE, "1.2.840.10008.4.2"),
                )
            },
        ],
    )
    def test_invalid_requestor_config(self, kw: dict[str, object]) -> None:
        with pytest.raises(ValueError):
            requestor(**kw)

    def test_ae_titles_may_be_padded_with_spaces_and_are_sent_without_trailing_ones(self) -> None:
        rq = build_associate_rq(
            requestor(calling_ae_title="SCU   ", called_ae_title="ARCHIVE" + " " * 9),
            [ContextRequest(VERIFICATION, (IMPLICIT_LE,))],
        )
        assert rq.calling_ae_title == "SCU"
        assert rq.called_ae_title == "ARCHIVE"

    def test_max_pdu_zero_is_announced_as_zero(self) -> None:
        rq = build_associate_rq(
            requestor(max_pdu_length=0), [ContextRequest(VERIFICATION, (IMPLICIT_LE,))]
        )
        assert rq.user_information.maximum_length == 0


# =========================================================================== negotiate: RJ cases


class TestReject:
    def test_other_application_context(self) -> None:
        rj = reject(make_rq(app_context="1.2.3.4"), acceptor())
        assert (rj.result, rj.source, rj.reason) == (1, 1, 2)

    def test_protocol_version_without_bit_0(self) -> None:
        rq = dataclasses.replace(make_rq(), protocol_version=2)
        rj = reject(rq, acceptor())
        assert (rj.result, rj.source, rj.reason) == (1, 2, 2)

    def test_called_ae_title_mismatch(self) -> None:
        rj = reject(make_rq(called="OTHER"), acceptor())
        assert (rj.result, rj.source, rj.reason) == (1, 1, 7)

    @pytest.mark.parametrize("called", ["ARCHIVE", "  ARCHIVE", "ARCHIVE   ", " ARCHIVE "])
    def test_called_ae_title_compare_ignores_padding(self, called: str) -> None:
        accept(make_rq(called=called), acceptor())
        accept(make_rq(called="ARCHIVE"), acceptor(ae_title=" ARCHIVE  "))

    def test_called_ae_title_is_case_sensitive(self) -> None:
        rj = reject(make_rq(called="archive"), acceptor())
        assert rj.reason == 7

    def test_called_ae_title_not_required(self) -> None:
        accept(make_rq(called="ANYTHING"), acceptor(require_called_ae_title=False))

    def test_calling_ae_title_not_allowed(self) -> None:
        config = acceptor(allowed_calling_ae_titles=frozenset({"MODALITY1", "MODALITY2 "}))
        rj = reject(make_rq(calling="INTRUDER"), config)
        assert (rj.result, rj.source, rj.reason) == (1, 1, 3)
        accept(make_rq(calling="MODALITY1"), config)
        accept(make_rq(calling=" MODALITY2"), config)

    def test_application_context_is_checked_before_ae_titles(self) -> None:
        rj = reject(
            make_rq(app_context="1.2.3", called="OTHER", calling="X"),
            acceptor(allowed_calling_ae_titles=frozenset({"Y"})),
        )
        assert rj.reason == 2

    def test_called_is_checked_before_calling(self) -> None:
        rj = reject(
            make_rq(called="OTHER", calling="X"),
            acceptor(allowed_calling_ae_titles=frozenset({"Y"})),
        )
        assert rj.reason == 7

    def test_rejected_carries_a_detail(self) -> None:
        result = negotiate(make_rq(called="OTHER"), acceptor())
        assert isinstance(result, Rejected)
        assert "OTHER" in result.detail


# =========================================================================== negotiate: identity


class TestUserIdentity:
    IDENTITY = UserIdentityRQSubItem(2, True, b"alice", b"secret")
    NO_RESPONSE = UserIdentityRQSubItem(1, False, b"bob")

    def test_refused_identity_rejects(self) -> None:
        rj = reject(make_rq(sub_items=[self.IDENTITY]), acceptor(), IdentityDecision(False))
        assert (rj.result, rj.source, rj.reason) == (1, 1, 1)

    def test_accepted_identity_with_positive_response(self) -> None:
        result = accept(
            make_rq(sub_items=[self.IDENTITY]), acceptor(), IdentityDecision(True, b"ticket")
        )
        assert result.ac.user_information.user_identity_ac == UserIdentityACSubItem(b"ticket")
        assert result.association.user_identity == self.IDENTITY
        assert result.association.user_identity_response == b"ticket"

    def test_accepted_identity_positive_response_without_server_response(self) -> None:
        result = accept(make_rq(sub_items=[self.IDENTITY]), acceptor(), IdentityDecision(True))
        assert result.ac.user_information.user_identity_ac == UserIdentityACSubItem(b"")
        assert result.association.user_identity_response == b""

    def test_accepted_identity_without_positive_response_requested(self) -> None:
        result = accept(
            make_rq(sub_items=[self.NO_RESPONSE]), acceptor(), IdentityDecision(True, b"x")
        )
        assert result.ac.user_information.user_identity_ac is None
        assert result.association.user_identity == self.NO_RESPONSE
        assert result.association.user_identity_response is None

    def test_identity_item_without_decision_is_ignored(self) -> None:
        result = accept(make_rq(sub_items=[self.IDENTITY]), acceptor(), None)
        assert result.ac.user_information.user_identity_ac is None

    def test_identity_item_without_decision_when_required_is_refused(self) -> None:
        rj = reject(make_rq(sub_items=[self.IDENTITY]), acceptor(require_user_identity=True))
        assert (rj.result, rj.source, rj.reason) == (1, 1, 1)

    def test_missing_identity_when_required(self) -> None:
        rj = reject(make_rq(), acceptor(require_user_identity=True), IdentityDecision(True))
        assert (rj.result, rj.source, rj.reason) == (1, 1, 1)

    def test_decision_without_identity_item_is_ignored(self) -> None:
        result = accept(make_rq(), acceptor(), IdentityDecision(False))
        assert result.ac.user_information.user_identity_ac is None

    def test_requestor_sees_the_server_response(self) -> None:
        config = requestor(user_identity=self.IDENTITY)
        rq = build_associate_rq(config, [ContextRequest(VERIFICATION, (IMPLICIT_LE,))])
        result = accept(rq, acceptor(), IdentityDecision(True, b"saml"))
        assoc = process_associate_ac(rq, result.ac)
        assert assoc.user_identity_response == b"saml"
        assert assoc.user_identity == self.IDENTITY


# =========================================================================== negotiate: contexts


class TestContextResults:
    def test_transfer_syntax_follows_local_preference(self) -> None:
        rq = make_rq(
            [PresentationContextRQItem(1, CT_STORAGE, (IMPLICIT_LE, EXPLICIT_LE, JPEG_BASELINE))]
        )
        config = acceptor(SupportedContext(CT_STORAGE, (JPEG_BASELINE, EXPLICIT_LE, IMPLICIT_LE)))
        assert results_by_id(accept(rq, config).ac)[1] == PresentationContextACItem(
            1, 0, JPEG_BASELINE
        )
        config = acceptor(SupportedContext(CT_STORAGE, (DEFLATED_LE, EXPLICIT_LE, IMPLICIT_LE)))
        assert results_by_id(accept(rq, config).ac)[1] == PresentationContextACItem(
            1, 0, EXPLICIT_LE
        )

    def test_abstract_syntax_not_supported(self) -> None:
        rq = make_rq([PresentationContextRQItem(1, MR_STORAGE, (IMPLICIT_LE,))])
        result = accept(rq, acceptor(SupportedContext(CT_STORAGE, (IMPLICIT_LE,))))
        assert results_by_id(result.ac)[1].result == 3
        ctx = result.association.contexts[0]
        assert (ctx.result, ctx.transfer_syntax, ctx.scu_role, ctx.scp_role) == (
            3,
            None,
            False,
            False,
        )

    def test_transfer_syntaxes_not_supported(self) -> None:
        rq = make_rq([PresentationContextRQItem(1, CT_STORAGE, (JPEG_BASELINE, DEFLATED_LE))])
        result = accept(rq, acceptor(SupportedContext(CT_STORAGE, (IMPLICIT_LE, EXPLICIT_LE))))
        assert results_by_id(result.ac)[1].result == 4
        assert result.association.accepted_contexts == ()

    def test_every_proposed_context_gets_one_result(self) -> None:
        rq = make_rq(
            [
                PresentationContextRQItem(1, VERIFICATION, (IMPLICIT_LE,)),
                PresentationContextRQItem(3, MR_STORAGE, (IMPLICIT_LE,)),
                PresentationContextRQItem(5, CT_STORAGE, (JPEG_BASELINE,)),
                PresentationContextRQItem(7, CT_STORAGE, (EXPLICIT_LE, IMPLICIT_LE)),
            ]
        )
        config = acceptor(
            SupportedContext(VERIFICATION, (IMPLICIT_LE,)),
            SupportedContext(CT_STORAGE, (EXPLICIT_LE, IMPLICIT_LE)),
        )
        result = accept(rq, config)
        assert [(r.context_id, r.result) for r in result.ac.presentation_contexts] == [
            (1, 0),
            (3, 3),
            (5, 4),
            (7, 0),
        ]
        assert [c.context_id for c in result.association.accepted_contexts] == [1, 7]

    def test_no_acceptable_context_still_accepts(self) -> None:
        rq = make_rq([PresentationContextRQItem(1, MR_STORAGE, (IMPLICIT_LE,))])
        result = accept(rq, acceptor())
        assert result.association.accepted_contexts == ()

    def test_duplicate_context_id_gets_a_single_no_reason_result(self) -> None:
        rq = make_rq(
            [
                PresentationContextRQItem(1, VERIFICATION, (IMPLICIT_LE,)),
                PresentationContextRQItem(3, VERIFICATION, (IMPLICIT_LE,)),
                PresentationContextRQItem(1, VERIFICATION, (IMPLICIT_LE,)),
            ]
        )
        result = accept(rq, acceptor())
        assert [(r.context_id, r.result) for r in result.ac.presentation_contexts] == [
            (1, 2),
            (3, 0),
        ]
        assert [(c.context_id, c.result) for c in result.association.contexts] == [(1, 2), (3, 0)]

    def test_even_context_id_gets_no_reason(self) -> None:
        rq = make_rq([PresentationContextRQItem(2, VERIFICATION, (IMPLICIT_LE,))])
        assert results_by_id(accept(rq, acceptor()).ac)[2].result == 2

    def test_accept_any_storage(self) -> None:
        config = acceptor(
            SupportedContext(VERIFICATION, (IMPLICIT_LE,)),
            SupportedContext(CT_STORAGE, (IMPLICIT_LE,)),
            accept_any_storage=True,
            storage_transfer_syntaxes=(EXPLICIT_LE, IMPLICIT_LE),
            is_storage_sop_class=is_storage,
        )
        rq = make_rq(
            [
                PresentationContextRQItem(1, MR_STORAGE, (IMPLICIT_LE, EXPLICIT_LE)),
                PresentationContextRQItem(3, CT_STORAGE, (EXPLICIT_LE, IMPLICIT_LE)),
                PresentationContextRQItem(5, STUDY_ROOT_FIND, (IMPLICIT_LE,)),
                PresentationContextRQItem(7, SC_STORAGE, (JPEG_BASELINE,)),
            ]
        )
        by_id = results_by_id(accept(rq, config).ac)
        # not listed, storage: storage_transfer_syntaxes order wins
        assert (by_id[1].result, by_id[1].transfer_syntax) == (0, EXPLICIT_LE)
        # listed explicitly: the listed entry wins over the storage defaults
        assert (by_id[3].result, by_id[3].transfer_syntax) == (0, IMPLICIT_LE)
        # not storage, not listed
        assert by_id[5].result == 3
        # storage but no common transfer syntax
        assert by_id[7].result == 4

    def test_without_accept_any_storage_unlisted_storage_is_refused(self) -> None:
        rq = make_rq([PresentationContextRQItem(1, MR_STORAGE, (IMPLICIT_LE,))])
        config = acceptor(storage_transfer_syntaxes=(IMPLICIT_LE,), is_storage_sop_class=is_storage)
        assert results_by_id(accept(rq, config).ac)[1].result == 3

    def test_ac_echoes_titles_and_carries_our_implementation(self) -> None:
        rq = make_rq(called="ARCHIVE ", calling=" SCU")
        ac = accept(rq, acceptor()).ac
        assert (ac.called_ae_title, ac.calling_ae_title) == ("ARCHIVE ", " SCU")
        assert ac.application_context == DICOM_APP_CONTEXT
        info = ac.user_information
        assert info.implementation_class_uid == ACCEPTOR_IMPL
        assert info.implementation_version_name == "ACC_1"
        assert info.maximum_length == 32768

    def test_ac_without_version_name(self) -> None:
        ac = accept(make_rq(), acceptor(implementation_version_name=None)).ac
        assert ac.user_information.implementation_version_name is None

    def test_unknown_sub_items_in_rq_are_ignored(self) -> None:
        rq = make_rq(sub_items=[UnknownSubItem(0x7F, b"\x00\x01")])
        assert results_by_id(accept(rq, acceptor()).ac)[1].result == 0

    def test_acceptor_view_basics(self) -> None:
        rq = make_rq(
            called="ARCHIVE",
            calling="SCU",
            sub_items=[ImplementationVersionNameSubItem("REQ_9")],
        )
        assoc = accept(rq, acceptor()).association
        assert assoc.is_requestor is False
        assert (assoc.calling_ae_title, assoc.called_ae_title) == ("SCU", "ARCHIVE")
        assert (assoc.local_ae_title, assoc.peer_ae_title) == ("ARCHIVE", "SCU")
        assert assoc.peer_implementation_class_uid == REQUESTOR_IMPL
        assert assoc.peer_implementation_version_name == "REQ_9"
        assert assoc.contexts == (
            PresentationContext(1, VERIFICATION, IMPLICIT_LE, 0, False, True),
        )

    @pytest.mark.parametrize(
        "kw",
        [
            {"ae_title": ""},
            {"ae_title": "X" * 17},
            {"max_pdu_length": -5},
            {"async_ops_window": (70000, 0)},
            {"accept_any_storage": True},
            {"accept_any_storage": True, "is_storage_sop_class": is_storage},
            {"accept_any_storage": True, "storage_transfer_syntaxes": (IMPLICIT_LE,)},
            {
                "supported": (
                    SupportedContext(CT_STORAGE, (IMPLICIT_LE,)),
                    SupportedContext(CT_STORAGE, (EXPLICIT_LE,)),
                )
            },
        ],
    )
    def test_invalid_acceptor_config(self, kw: dict[str, object]) -> None:
        with pytest.raises(ValueError):
            acceptor(**kw)

    def test_supported_context_needs_a_transfer_syntax(self) -> None:
        with pytest.raises(ValueError):
            SupportedContext(CT_STORAGE, ())


# =========================================================================== max PDU


class TestMaxPDU:
    @pytest.mark.parametrize(
        ("req_max", "acc_max"), [(16384, 32768), (0, 65536), (4096, 0), (0, 0)]
    )
    def test_both_directions(self, req_max: int, acc_max: int) -> None:
        rq = build_associate_rq(
            requestor(max_pdu_length=req_max), [ContextRequest(VERIFICATION, (IMPLICIT_LE,))]
        )
        result = accept(rq, acceptor(max_pdu_length=acc_max))
        assert result.ac.user_information.maximum_length == acc_max
        acc = result.association
        req = process_associate_ac(rq, result.ac)
        assert (acc.local_max_pdu_length, acc.peer_max_pdu_length) == (acc_max, req_max)
        assert (req.local_max_pdu_length, req.peer_max_pdu_length) == (req_max, acc_max)

    def test_missing_max_length_falls_back(self) -> None:
        rq = make_rq(max_length=None)
        assoc = accept(rq, acceptor()).association
        assert assoc.peer_max_pdu_length == FALLBACK_MAX_PDU_LENGTH
        ac = AssociateAC(
            called_ae_title="ARCHIVE",
            calling_ae_title="SCU",
            presentation_contexts=(PresentationContextACItem(1, 0, IMPLICIT_LE),),
            user_information=UserInformationItem((ImplementationClassUIDSubItem(ACCEPTOR_IMPL),)),
        )
        assert process_associate_ac(make_rq(), ac).peer_max_pdu_length == FALLBACK_MAX_PDU_LENGTH


# =========================================================================== roles

BOOLS = (False, True)
PROPOSALS: list[tuple[bool, bool] | None] = [None, *itertools.product(BOOLS, BOOLS)]


class TestRolesAcceptor:
    @pytest.mark.parametrize("proposed", PROPOSALS)
    @pytest.mark.parametrize("scu_allowed", BOOLS)
    @pytest.mark.parametrize("scp_allowed", BOOLS)
    def test_matrix(
        self, proposed: tuple[bool, bool] | None, scu_allowed: bool, scp_allowed: bool
    ) -> None:
        sub_items = [] if proposed is None else [RoleSelectionSubItem(CT_STORAGE, *proposed)]
        rq = make_rq(
            [PresentationContextRQItem(1, CT_STORAGE, (IMPLICIT_LE,))], sub_items=sub_items
        )
        config = acceptor(
            SupportedContext(
                CT_STORAGE,
                (IMPLICIT_LE,),
                scu_role_allowed=scu_allowed,
                scp_role_allowed=scp_allowed,
            )
        )
        result = accept(rq, config)
        answers = result.ac.user_information.role_selections
        ctx = result.association.contexts[0]
        if proposed is None:
            # No role items in the RQ -> none in the AC; the acceptor is SCP by default.
            assert answers == ()
            expected_acceptor = (False, True)
        else:
            req_scu, req_scp = proposed
            # 1 only for a role proposed as 1 (PS3.7 D.3.3.4) and allowed for us: the
            # requestor's SCU role needs us as SCP and its SCP role needs us as SCU.
            granted = (req_scu and scp_allowed, req_scp and scu_allowed)
            expected_acceptor = (granted[1], granted[0])
            if any(granted):
                assert answers == (RoleSelectionSubItem(CT_STORAGE, *granted),)
            elif scp_allowed:
                # Nothing proposed can be granted but our default role is allowed: no answer
                # for the SOP class, which means the default roles (D.3.3.4), as DCMTK and
                # pynetdicom acceptors do; the fallback is told in the context's reason.
                assert answers == ()
                expected_acceptor = (False, True)
                assert "default roles" in ctx.reason
            else:
                assert answers == (RoleSelectionSubItem(CT_STORAGE, False, False),)
        allowed = (expected_acceptor[0] and scu_allowed) or (expected_acceptor[1] and scp_allowed)
        if allowed:
            assert ctx.result == 0
            assert (ctx.scu_role, ctx.scp_role) == expected_acceptor
            # the requestor reaches the same roles from the AC alone
            req = process_associate_ac(rq, result.ac).contexts[0]
            assert (req.scu_role, req.scp_role) == (expected_acceptor[1], expected_acceptor[0])
        else:
            # no role left that we allow -> user rejection, with the reason
            assert ctx.result == ContextResult.USER_REJECTION
            assert (ctx.scu_role, ctx.scp_role) == (False, False)
            assert ctx.reason
            assert result.association.refused_contexts == (ctx,)

    def test_storage_commitment_report_on_new_association(self) -> None:
        # PS3.4 J.3.3 / reference 8.8: the commitment SCP calls back, proposing SCU=0, SCP=1.
        rq = make_rq(
            [PresentationContextRQItem(1, STORAGE_COMMITMENT, (IMPLICIT_LE,))],
            sub_items=[RoleSelectionSubItem(STORAGE_COMMITMENT, False, True)],
        )
        config = acceptor(
            SupportedContext(
                STORAGE_COMMITMENT, (IMPLICIT_LE,), scu_role_allowed=True, scp_role_allowed=True
            )
        )
        result = accept(rq, config)
        assert result.ac.user_information.role_selections == (
            RoleSelectionSubItem(STORAGE_COMMITMENT, False, True),
        )
        ctx = result.association.context_for(STORAGE_COMMITMENT, role="scu")
        assert ctx is not None and not ctx.scp_role
        assert result.association.context_for(STORAGE_COMMITMENT, role="scp") is None

    def test_role_answers_only_per_sop_class_and_for_unsupported_ones_zero(self) -> None:
        rq = make_rq(
            [
                PresentationContextRQItem(1, CT_STORAGE, (IMPLICIT_LE,)),
                PresentationContextRQItem(3, CT_STORAGE, (EXPLICIT_LE,)),
                PresentationContextRQItem(5, MR_STORAGE, (IMPLICIT_LE,)),
            ],
            sub_items=[
                RoleSelectionSubItem(CT_STORAGE, True, True),
                RoleSelectionSubItem(CT_STORAGE, False, False),  # repeated: first counts
                RoleSelectionSubItem(MR_STORAGE, True, True),
            ],
        )
        config = acceptor(
            SupportedContext(CT_STORAGE, (IMPLICIT_LE, EXPLICIT_LE), scu_role_allowed=True)
        )
        result = accept(rq, config)
        assert result.ac.user_information.role_selections == (
            RoleSelectionSubItem(CT_STORAGE, True, True),
            RoleSelectionSubItem(MR_STORAGE, False, False),
        )
        for ctx in result.association.accepted_contexts:
            assert (ctx.scu_role, ctx.scp_role) == (True, True)

    def test_role_items_do_not_leak_into_other_sop_classes(self) -> None:
        rq = make_rq(
            [
                PresentationContextRQItem(1, CT_STORAGE, (IMPLICIT_LE,)),
                PresentationContextRQItem(3, VERIFICATION, (IMPLICIT_LE,)),
            ],
            sub_items=[RoleSelectionSubItem(CT_STORAGE, False, True)],
        )
        config = acceptor(
            SupportedContext(CT_STORAGE, (IMPLICIT_LE,), scu_role_allowed=True),
            SupportedContext(VERIFICATION, (IMPLICIT_LE,)),
        )
        assoc = accept(rq, config).association
        ct, ver = assoc.contexts
        assert (ct.scu_role, ct.scp_role) == (True, False)
        assert (ver.scu_role, ver.scp_role) == (False, True)


class TestRolesRequestor:
    @pytest.mark.parametrize("proposed", PROPOSALS)
    @pytest.mark.parametrize("answer", [None, *itertools.product(BOOLS, BOOLS)])
    def test_matrix(
        self, proposed: tuple[bool, bool] | None, answer: tuple[bool, bool] | None
    ) -> None:
        scu, scp = proposed if proposed is not None else (None, None)
        rq = build_associate_rq(
            requestor(), [ContextRequest(CT_STORAGE, (IMPLICIT_LE,), scu_role=scu, scp_role=scp)]
        )
        sub_items = [] if answer is None else [RoleSelectionSubItem(CT_STORAGE, *answer)]
        ac = make_ac([PresentationContextACItem(1, 0, IMPLICIT_LE)], sub_items=sub_items)
        ctx = process_associate_ac(rq, ac).contexts[0]
        if proposed is None or answer is None:
            expected = (True, False)  # default: requestor SCU, acceptor SCP
        else:
            # a 1 counts only for a role we proposed as 1
            expected = (proposed[0] and answer[0], proposed[1] and answer[1])
        assert (ctx.scu_role, ctx.scp_role) == expected

    def test_c_get_scu_can_receive_storage(self) -> None:
        rq = build_associate_rq(
            requestor(),
            [
                ContextRequest(STUDY_ROOT_GET, (IMPLICIT_LE,)),
                ContextRequest(CT_STORAGE, (IMPLICIT_LE,), scu_role=False, scp_role=True),
            ],
        )
        config = acceptor(
            SupportedContext(STUDY_ROOT_GET, (IMPLICIT_LE,)),
            SupportedContext(CT_STORAGE, (IMPLICIT_LE,), scu_role_allowed=True),
        )
        result = accept(rq, config)
        req = process_associate_ac(rq, result.ac)
        assert req.context_for(STUDY_ROOT_GET) is not None
        store = req.context_for(CT_STORAGE, role="scp")
        assert store is not None and store.context_id == 3
        assert req.context_for(CT_STORAGE, role="scu") is None
        acc_store = result.association.context_for(CT_STORAGE, role="scu")
        assert acc_store is not None and acc_store.context_id == 3


# =========================================================================== async window

WINDOWS: list[tuple[int, int] | None] = [None, (1, 1), (0, 0), (5, 2), (0, 3), (2, 0), (10, 10)]


class TestAsyncWindow:
    @pytest.mark.parametrize("req_window", WINDOWS)
    @pytest.mark.parametrize("acc_window", WINDOWS)
    def test_combinations(
        self, req_window: tuple[int, int] | None, acc_window: tuple[int, int] | None
    ) -> None:
        rq = build_associate_rq(
            requestor(async_ops_window=req_window), [ContextRequest(VERIFICATION, (IMPLICIT_LE,))]
        )
        result = accept(rq, acceptor(async_ops_window=acc_window))
        item = result.ac.user_information.async_ops_window
        acc = result.association
        req = process_associate_ac(rq, result.ac)
        if req_window is None or acc_window is None:
            # absent in the RQ -> must be absent in the AC; no async support -> no answer
            assert item is None
            expected_req = (1, 1)
        else:
            req_invoke, req_perform = req_window
            acc_invoke, acc_perform = acc_window
            # operations the requestor invokes are the ones the acceptor performs
            assert item == AsynchronousOperationsWindowSubItem(
                min0(req_invoke, acc_perform), min0(req_perform, acc_invoke)
            )
            expected_req = (min0(req_invoke, acc_perform), min0(req_perform, acc_invoke))
        assert (req.max_operations_invoked, req.max_operations_performed) == expected_req
        # the acceptor's view is the mirror image
        assert (acc.max_operations_invoked, acc.max_operations_performed) == expected_req[::-1]

    def test_unlimited_both_sides_stays_unlimited(self) -> None:
        rq = build_associate_rq(
            requestor(async_ops_window=(0, 0)), [ContextRequest(VERIFICATION, (IMPLICIT_LE,))]
        )
        result = accept(rq, acceptor(async_ops_window=(0, 0)))
        assert result.ac.user_information.async_ops_window == AsynchronousOperationsWindowSubItem(
            0, 0
        )
        req = process_associate_ac(rq, result.ac)
        assert (req.max_operations_invoked, req.max_operations_performed) == (0, 0)

    @pytest.mark.parametrize(
        ("offered", "answered", "expected"),
        [
            ((4, 4), None, (1, 1)),  # acceptor ignored the item: synchronous
            ((4, 4), (8, 8), (4, 4)),  # acceptor answered above the offer: clamp to ours
            ((0, 0), (3, 0), (3, 0)),
            (None, (5, 5), (1, 1)),  # answer without offer (non-conformant): ignored
            (None, (0, 0), (1, 1)),
        ],
    )
    def test_requestor_clamps_peer_answer(
        self,
        offered: tuple[int, int] | None,
        answered: tuple[int, int] | None,
        expected: tuple[int, int],
    ) -> None:
        rq = build_associate_rq(
            requestor(async_ops_window=offered), [ContextRequest(VERIFICATION, (IMPLICIT_LE,))]
        )
        sub_items = [] if answered is None else [AsynchronousOperationsWindowSubItem(*answered)]
        ac = make_ac([PresentationContextACItem(1, 0, IMPLICIT_LE)], sub_items=sub_items)
        req = process_associate_ac(rq, ac)
        assert (req.max_operations_invoked, req.max_operations_performed) == expected


# =========================================================================== extended negotiation


class TestExtendedNegotiation:
    def test_answers_only_for_accepted_sop_classes_and_when_handler_returns_bytes(self) -> None:
        calls: list[str] = []

        def handler(item: SOPClassExtendedNegotiationSubItem) -> bytes | None:
            calls.append(item.sop_class_uid)
            if item.sop_class_uid == STUDY_ROOT_FIND:
                return b"\x01\x00"  # e.g. relational queries
            return None

        ext_requests = (
            SOPClassExtendedNegotiationSubItem(STUDY_ROOT_FIND, b"\x01\x01"),
            SOPClassExtendedNegotiationSubItem(CT_STORAGE, b"\x02"),
            SOPClassExtendedNegotiationSubItem(MR_STORAGE, b"\x02"),  # context rejected
            SOPClassExtendedNegotiationSubItem(SC_STORAGE, b"\x02"),  # never proposed
        )
        rq = build_associate_rq(
            requestor(extended_negotiation=ext_requests),
            [
                ContextRequest(STUDY_ROOT_FIND, (IMPLICIT_LE,)),
                ContextRequest(CT_STORAGE, (IMPLICIT_LE,)),
                ContextRequest(MR_STORAGE, (IMPLICIT_LE,)),
            ],
        )
        config = acceptor(
            SupportedContext(STUDY_ROOT_FIND, (IMPLICIT_LE,)),
            SupportedContext(CT_STORAGE, (IMPLICIT_LE,)),
            extended_negotiation_handler=handler,
        )
        result = accept(rq, config)
        assert calls == [STUDY_ROOT_FIND, CT_STORAGE]
        expected = (SOPClassExtendedNegotiationSubItem(STUDY_ROOT_FIND, b"\x01\x00"),)
        assert result.ac.user_information.extended_negotiations == expected
        assert result.association.extended_negotiation == expected
        assert result.association.extended_negotiation_for(STUDY_ROOT_FIND) == b"\x01\x00"
        assert result.association.extended_negotiation_for(CT_STORAGE) is None
        req = process_associate_ac(rq, result.ac)
        assert req.extended_negotiation == expected

    def test_no_handler_no_answers(self) -> None:
        rq = build_associate_rq(
            requestor(
                extended_negotiation=(SOPClassExtendedNegotiationSubItem(STUDY_ROOT_FIND, b"\x01"),)
            ),
            [ContextRequest(STUDY_ROOT_FIND, (IMPLICIT_LE,))],
        )
        result = accept(rq, acceptor(SupportedContext(STUDY_ROOT_FIND, (IMPLICIT_LE,))))
        assert result.ac.user_information.extended_negotiations == ()

    def test_requestor_ignores_answers_it_did_not_ask_for(self) -> None:
        rq = build_associate_rq(requestor(), [ContextRequest(STUDY_ROOT_FIND, (IMPLICIT_LE,))])
        ac = make_ac(
            [PresentationContextACItem(1, 0, IMPLICIT_LE)],
            sub_items=[SOPClassExtendedNegotiationSubItem(STUDY_ROOT_FIND, b"\x01")],
        )
        assert process_associate_ac(rq, ac).extended_negotiation == ()

    def test_common_extended_negotiation_is_visible_to_both(self) -> None:
        common = (SOPClassCommonExtendedNegotiationSubItem(CT_STORAGE, "1.2.840.10008.4.2"),)
        rq = build_associate_rq(
            requestor(common_extended_negotiation=common),
            [ContextRequest(CT_STORAGE, (IMPLICIT_LE,))],
        )
        result = accept(rq, acceptor(SupportedContext(CT_STORAGE, (IMPLICIT_LE,))))
        assert result.association.common_extended_negotiation == common
        assert process_associate_ac(rq, result.ac).common_extended_negotiation == common


# =========================================================================== process_associate_ac


class TestProcessAssociateAC:
    RQ = build_associate_rq(
        requestor(),
        [
            ContextRequest(VERIFICATION, (IMPLICIT_LE,)),
            ContextRequest(CT_STORAGE, (JPEG_BASELINE, EXPLICIT_LE)),
            ContextRequest(MR_STORAGE, (IMPLICIT_LE,)),
            ContextRequest(CT_STORAGE, (IMPLICIT_LE,)),
        ],
    )

    def test_results_in_any_order(self) -> None:
        ac = make_ac(
            [
                PresentationContextACItem(7, 0, IMPLICIT_LE),
                PresentationContextACItem(3, 0, EXPLICIT_LE),
                PresentationContextACItem(5, 3, ""),
                PresentationContextACItem(1, 0, IMPLICIT_LE),
            ]
        )
        assoc = process_associate_ac(self.RQ, ac)
        assert assoc.is_requestor
        assert assoc.contexts == (
            PresentationContext(1, VERIFICATION, IMPLICIT_LE, 0, True, False),
            PresentationContext(3, CT_STORAGE, EXPLICIT_LE, 0, True, False),
            PresentationContext(5, MR_STORAGE, None, 3, False, False),
            PresentationContext(7, CT_STORAGE, IMPLICIT_LE, 0, True, False),
        )
        assert [c.context_id for c in assoc.accepted_contexts] == [1, 3, 7]
        assert assoc.context_by_id(5) == assoc.contexts[2]
        assert assoc.context_by_id(9) is None
        assert (assoc.local_ae_title, assoc.peer_ae_title) == ("SCU", "ARCHIVE")
        assert assoc.peer_implementation_class_uid == ACCEPTOR_IMPL
        assert assoc.peer_max_pdu_length == 32768
        assert assoc.local_max_pdu_length == 16384

    def test_context_for(self) -> None:
        ac = make_ac(
            [
                PresentationContextACItem(1, 0, IMPLICIT_LE),
                PresentationContextACItem(3, 0, EXPLICIT_LE),
                PresentationContextACItem(5, 0, IMPLICIT_LE),
                PresentationContextACItem(7, 0, IMPLICIT_LE),
            ]
        )
        assoc = process_associate_ac(self.RQ, ac)
        ctx = assoc.context_for(CT_STORAGE)
        assert ctx is not None and ctx.context_id == 3
        ctx = assoc.context_for(CT_STORAGE, IMPLICIT_LE)
        assert ctx is not None and ctx.context_id == 7
        assert assoc.context_for(CT_STORAGE, JPEG_BASELINE) is None
        assert assoc.context_for(CT_STORAGE, role="scp") is None
        ctx = assoc.context_for(CT_STORAGE, role=None)
        assert ctx is not None and ctx.context_id == 3
        assert assoc.context_for(SC_STORAGE) is None

    def test_rejected_context_transfer_syntax_is_not_tested(self) -> None:
        ac = make_ac(
            [
                PresentationContextACItem(1, 1, "9.9.9"),
                PresentationContextACItem(3, 4, ""),
                PresentationContextACItem(5, 2, IMPLICIT_LE),
                PresentationContextACItem(7, 3, EXPLICIT_BE),
            ]
        )
        assoc = process_associate_ac(self.RQ, ac)
        assert [(c.result, c.transfer_syntax) for c in assoc.contexts] == [
            (1, None),
            (4, None),
            (2, None),
            (3, None),
        ]
        assert assoc.accepted_contexts == ()

    def test_unknown_context_id_is_a_protocol_error(self) -> None:
        ac = make_ac([PresentationContextACItem(9, 0, IMPLICIT_LE)])
        with pytest.raises(InvalidParameterValue, match="9"):
            process_associate_ac(self.RQ, ac)

    def test_transfer_syntax_not_proposed_is_a_protocol_error(self) -> None:
        # IMPLICIT_LE was proposed for context 1 and 7, not for 3
        ac = make_ac([PresentationContextACItem(3, 0, IMPLICIT_LE)])
        with pytest.raises(InvalidParameterValue, match="transfer syntax"):
            process_associate_ac(self.RQ, ac)

    def test_duplicate_result_is_a_protocol_error(self) -> None:
        ac = make_ac(
            [PresentationContextACItem(1, 0, IMPLICIT_LE), PresentationContextACItem(1, 3, "")]
        )
        with pytest.raises(InvalidItem):
            process_associate_ac(self.RQ, ac)

    @pytest.mark.parametrize("value", [5, 255])
    def test_undefined_result_is_a_protocol_error(self, value: int) -> None:
        ac = make_ac([PresentationContextACItem(1, value, IMPLICIT_LE)])
        with pytest.raises(InvalidParameterValue):
            process_associate_ac(self.RQ, ac)

    def test_errors_are_protocol_errors_with_abort_reason(self) -> None:
        ac = make_ac([PresentationContextACItem(9, 0, IMPLICIT_LE)])
        with pytest.raises(ProtocolError) as info:
            process_associate_ac(self.RQ, ac)
        assert info.value.abort_reason == 6
        assert info.value.reject is None

    def test_missing_result_reads_as_no_reason(self) -> None:
        ac = make_ac([PresentationContextACItem(1, 0, IMPLICIT_LE)])
        assoc = process_associate_ac(self.RQ, ac)
        assert [(c.context_id, c.result) for c in assoc.contexts] == [
            (1, 0),
            (3, 2),
            (5, 2),
            (7, 2),
        ]

    def test_implementation_version_name_of_peer(self) -> None:
        ac = make_ac(
            [PresentationContextACItem(1, 0, IMPLICIT_LE)],
            sub_items=[ImplementationVersionNameSubItem("PEER_2")],
        )
        assoc = process_associate_ac(self.RQ, ac)
        assert assoc.peer_implementation_version_name == "PEER_2"
        assert assoc.user_identity_response is None


# =========================================================================== round trip


def assert_mirrored(req: NegotiatedAssociation, acc: NegotiatedAssociation) -> None:
    """Both sides agree on everything, each from its own perspective."""
    assert req.is_requestor and not acc.is_requestor
    assert (req.calling_ae_title, req.called_ae_title) == (
        acc.calling_ae_title,
        acc.called_ae_title,
    )
    assert req.local_ae_title == acc.peer_ae_title
    assert req.peer_ae_title == acc.local_ae_title
    assert len(req.contexts) == len(acc.contexts)
    for mine, theirs in zip(req.contexts, acc.contexts, strict=True):
        assert mine.context_id == theirs.context_id
        assert mine.abstract_syntax == theirs.abstract_syntax
        assert mine.transfer_syntax == theirs.transfer_syntax
        assert mine.result == theirs.result
        # the requestor's SCU role is the acceptor's SCP role and vice versa
        assert (mine.scu_role, mine.scp_role) == (theirs.scp_role, theirs.scu_role)
    assert req.local_max_pdu_length == acc.peer_max_pdu_length
    assert req.peer_max_pdu_length == acc.local_max_pdu_length
    assert req.max_operations_invoked == acc.max_operations_performed
    assert req.max_operations_performed == acc.max_operations_invoked
    assert req.extended_negotiation == acc.extended_negotiation
    assert req.user_identity == acc.user_identity
    assert req.user_identity_response == acc.user_identity_response


def test_full_round_trip() -> None:
    identity = UserIdentityRQSubItem(1, True, b"alice")
    req_config = requestor(
        implementation_version_name="REQ_1",
        async_ops_window=(8, 2),
        user_identity=identity,
        max_pdu_length=0,
        extended_negotiation=(SOPClassExtendedNegotiationSubItem(STUDY_ROOT_FIND, b"\x01"),),
    )
    contexts = [
        ContextRequest(VERIFICATION, (EXPLICIT_LE, IMPLICIT_LE)),
        ContextRequest(STUDY_ROOT_FIND, (IMPLICIT_LE,)),
        ContextRequest(STUDY_ROOT_GET, (IMPLICIT_LE,)),
        ContextRequest(
            CT_STORAGE, (JPEG_BASELINE, EXPLICIT_LE, IMPLICIT_LE), scu_role=True, scp_role=True
        ),
        ContextRequest(MR_STORAGE, (DEFLATED_LE,)),
        ContextRequest(STORAGE_COMMITMENT, (IMPLICIT_LE,), scu_role=False, scp_role=True),
    ]
    rq = build_associate_rq(req_config, contexts)
    acc_config = acceptor(
        SupportedContext(VERIFICATION, (IMPLICIT_LE, EXPLICIT_LE)),
        SupportedContext(STUDY_ROOT_FIND, (IMPLICIT_LE,)),
        SupportedContext(STORAGE_COMMITMENT, (IMPLICIT_LE,), scu_role_allowed=True),
        accept_any_storage=True,
        storage_transfer_syntaxes=(EXPLICIT_LE, IMPLICIT_LE),
        is_storage_sop_class=is_storage,
        async_ops_window=(3, 0),
        allowed_calling_ae_titles=frozenset({"SCU"}),
        extended_negotiation_handler=lambda item: b"\x01",
    )
    result = accept(rq, acc_config, IdentityDecision(True))
    acc = result.association
    # the AC's sub-items, like the RQ's, come in increasing item-type order (PS3.8 9.3.1)
    codes = [item_type(item) for item in result.ac.user_information.sub_items]
    assert codes == sorted(codes)
    assert set(codes) == {0x51, 0x52, 0x53, 0x54, 0x55, 0x56, 0x59}
    # shuffle the AC's results: the requestor must not depend on their order
    ac = dataclasses.replace(result.ac, presentation_contexts=result.ac.presentation_contexts[::-1])
    req = process_associate_ac(rq, ac)
    assert_mirrored(req, acc)

    assert [(c.context_id, c.result, c.transfer_syntax) for c in req.contexts] == [
        (1, 0, IMPLICIT_LE),
        (3, 0, IMPLICIT_LE),
        (5, 3, None),
        (7, 0, EXPLICIT_LE),
        (9, 4, None),
        (11, 0, IMPLICIT_LE),
    ]
    # CT storage: requestor proposed both roles; any-storage defaults allow only our SCP role
    ct = req.context_by_id(7)
    assert ct is not None and (ct.scu_role, ct.scp_role) == (True, False)
    # storage commitment: requestor acts as SCP (sends N-EVENT-REPORT), acceptor as SCU
    sc = req.context_by_id(11)
    assert sc is not None and (sc.scu_role, sc.scp_role) == (False, True)
    assert (req.max_operations_invoked, req.max_operations_performed) == (8, 2)
    assert req.peer_max_pdu_length == 32768 and acc.peer_max_pdu_length == 0
    assert req.user_identity_response == b""
    assert req.extended_negotiation_for(STUDY_ROOT_FIND) == b"\x01"
    assert req.peer_implementation_version_name == "ACC_1"
    assert acc.peer_implementation_version_name == "REQ_1"


# --------------------------------------------------------------------------- property tests

ABSTRACTS = (VERIFICATION, CT_STORAGE, MR_STORAGE, SC_STORAGE, STUDY_ROOT_FIND, STORAGE_COMMITMENT)
optional_role = st.one_of(st.none(), st.booleans())
window = st.one_of(st.none(), st.tuples(st.integers(0, 6), st.integers(0, 6)))


@st.composite
def context_requests(draw: st.DrawFn) -> list[ContextRequest]:
    roles = {
        uid: (draw(optional_role), draw(optional_role)) for uid in ABSTRACTS
    }  # one role choice per SOP class, so no conflicts
    requests = draw(
        st.lists(
            st.tuples(
                st.sampled_from(ABSTRACTS),
                st.lists(st.sampled_from(ALL_TS), min_size=1, max_size=4, unique=True),
                st.booleans(),
            ),
            min_size=1,
            max_size=12,
        )
    )
    return [
        ContextRequest(uid, tuple(ts), *(roles[uid] if with_roles else (None, None)))
        for uid, ts, with_roles in requests
    ]


@st.composite
def acceptor_configs(draw: st.DrawFn) -> AcceptorConfig:
    chosen = draw(st.lists(st.sampled_from(ABSTRACTS), unique=True, max_size=len(ABSTRACTS)))
    supported = tuple(
        SupportedContext(
            uid,
            tuple(draw(st.lists(st.sampled_from(ALL_TS), min_size=1, max_size=5, unique=True))),
            scu_role_allowed=draw(st.booleans()),
            scp_role_allowed=draw(st.booleans()),
        )
        for uid in chosen
    )
    any_storage = draw(st.booleans())
    return acceptor(
        supported=supported,
        accept_any_storage=any_storage,
        storage_transfer_syntaxes=(EXPLICIT_LE, IMPLICIT_LE),
        is_storage_sop_class=is_storage,
        async_ops_window=draw(window),
        max_pdu_length=draw(st.sampled_from([0, 4096, 16384, 1 << 20])),
    )


@settings(max_examples=300, deadline=None)
@given(
    contexts=context_requests(),
    acc_config=acceptor_configs(),
    req_window=window,
    req_max=st.sampled_from([0, 8192, 65536]),
)
def test_round_trip_property(
    contexts: list[ContextRequest],
    acc_config: AcceptorConfig,
    req_window: tuple[int, int] | None,
    req_max: int,
) -> None:
    rq = build_associate_rq(
        requestor(async_ops_window=req_window, max_pdu_length=req_max), contexts
    )
    result = negotiate(rq, acc_config)
    assert isinstance(result, Accepted)
    ac = result.ac
    assert sorted(r.context_id for r in ac.presentation_contexts) == [
        2 * i + 1 for i in range(len(contexts))
    ]
    req = process_associate_ac(
        rq, dataclasses.replace(ac, presentation_contexts=ac.presentation_contexts[::-1])
    )
    assert_mirrored(req, result.association)

    # an independent statement of the rules, per context
    for request, ctx in zip(contexts, req.contexts, strict=True):
        supported = {s.abstract_syntax: s for s in acc_config.supported}.get(
            request.abstract_syntax
        )
        if (
            supported is None
            and acc_config.accept_any_storage
            and is_storage(request.abstract_syntax)
        ):
            supported = SupportedContext(
                request.abstract_syntax, acc_config.storage_transfer_syntaxes
            )
        if supported is None:
            assert ctx.result == 3
            continue
        common = [ts for ts in supported.transfer_syntaxes if ts in request.transfer_syntaxes]
        if not common:
            assert ctx.result == 4
            continue
        proposed = next(
            (
                c.proposed_roles
                for c in contexts
                if c.abstract_syntax == request.abstract_syntax and c.proposed_roles
            ),
            None,
        )
        if proposed is None:
            req_roles = (True, False)
            acceptor_ok = supported.scp_role_allowed
        else:
            req_roles = (
                proposed[0] and supported.scp_role_allowed,
                proposed[1] and supported.scu_role_allowed,
            )
            acceptor_ok = any(req_roles)
            if not acceptor_ok and supported.scp_role_allowed:
                # nothing proposed can be granted: the default roles, when we may be SCP
                req_roles, acceptor_ok = (True, False), True
        if not acceptor_ok:
            assert ctx.result == 1
            continue
        assert ctx.result == 0
        assert ctx.transfer_syntax == common[0]
        assert (ctx.scu_role, ctx.scp_role) == req_roles

    # role answers: never 1 for a role proposed as 0, and none at all if none were proposed
    proposed_items = {i.sop_class_uid: i for i in rq.user_information.role_selections}
    answers = ac.user_information.role_selections
    if not proposed_items:
        assert answers == ()
    for answer in answers:
        offer = proposed_items[answer.sop_class_uid]
        assert offer.scu_role or not answer.scu_role
        assert offer.scp_role or not answer.scp_role

    if req_window is None or acc_config.async_ops_window is None:
        assert (req.max_operations_invoked, req.max_operations_performed) == (1, 1)
    else:
        assert req.max_operations_invoked == min0(req_window[0], acc_config.async_ops_window[1])
        assert req.max_operations_performed == min0(req_window[1], acc_config.async_ops_window[0])
    assert req.peer_max_pdu_length == acc_config.max_pdu_length


def test_results_are_frozen() -> None:
    rq = build_associate_rq(requestor(), [ContextRequest(VERIFICATION, (IMPLICIT_LE,))])
    assoc = accept(rq, acceptor()).association
    with pytest.raises(dataclasses.FrozenInstanceError):
        field_name = "peer_max_pdu_length"
        setattr(assoc, field_name, 5)
    assert hash(assoc.contexts[0]) == hash(
        PresentationContext(1, VERIFICATION, IMPLICIT_LE, 0, False, True)
    )
