"""Role selection the acceptor cannot honour (PS3.7 D.3.3.4), without a socket.

A requestor that proposes "SCP only" for Storage Commitment (pynetdicom's
``build_role(uid, scp_role=True)``) to an AE that is Storage Commitment SCP only: nothing it
proposed can be granted.  The decision: the default roles apply (requestor SCU, acceptor SCP)
and the role answer for the SOP class is left out, which is what "defaults" means in
D.3.3.4; DCMTK's and pynetdicom's acceptors do the same in their default configuration.  A
context is refused (user-rejection) only when the default role is not allowed either, and then
its reason says so.
"""

from __future__ import annotations

from typing import Any

import pytest

from asyncdicom.archive import qrscp_config
from asyncdicom.presets import storage_commitment_scp_supported
from asyncdicom.protocol import decode_pdu, encode_pdu
from asyncdicom.protocol.negotiation import (
    Accepted,
    AcceptorConfig,
    ContextResult,
    SupportedContext,
    negotiate,
    process_associate_ac,
)
from asyncdicom.protocol.pdu import AssociateRQ

pytestmark = pytest.mark.requires_peer("pynetdicom")

COMMITMENT = "1.2.840.10008.1.20.1"
IMPLICIT_LE = "1.2.840.10008.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
CT_STORAGE = "1.2.840.10008.5.1.4.1.1.2"


def _pynetdicom_rq(uid: str, **role: bool) -> tuple[AssociateRQ, Any, Any]:
    """pynetdicom's own A-ASSOCIATE-RQ bytes for one context of *uid*, with
    ``build_role(uid, **role)``, decoded by our codec; also pynetdicom's context and role."""
    from pynetdicom import build_context, build_role
    from pynetdicom.pdu import A_ASSOCIATE_RQ
    from pynetdicom.pdu_primitives import (
        A_ASSOCIATE,
        ImplementationClassUIDNotification,
        MaximumLengthNotification,
    )

    primitive = A_ASSOCIATE()
    primitive.application_context_name = "1.2.840.10008.3.1.1.1"
    primitive.calling_ae_title = "PYNETSCU"
    primitive.called_ae_title = "QRSCP"
    max_length = MaximumLengthNotification()
    max_length.maximum_length_received = 16382
    implementation = ImplementationClassUIDNotification()
    implementation.implementation_class_uid = "1.2.826.0.1.3680043.9.3811.2"
    context = build_context(uid, [EXPLICIT_LE, IMPLICIT_LE])
    context.context_id = 1
    role_item = build_role(uid, **role)
    primitive.presentation_context_definition_list = [context]
    primitive.user_information = [max_length, implementation, role_item]
    pdu = A_ASSOCIATE_RQ()
    pdu.from_primitive(primitive)
    rq = decode_pdu(pdu.encode())
    assert isinstance(rq, AssociateRQ)
    return rq, context, role_item


def _pynetdicom_acceptor_outcome(
    uid: str, context: Any, role_item: Any, *, scu_role: bool | None, scp_role: bool | None
) -> tuple[int, bool, bool, list[Any]]:
    """What pynetdicom's acceptor decides for the same proposal: result, its own SCU and SCP
    roles, and the role answers it would send.  ``scu_role``/``scp_role`` are pynetdicom's
    acceptor settings (``None``: its default, the proposal is not taken up)."""
    from pynetdicom import build_context
    from pynetdicom.presentation import negotiate_as_acceptor

    supported = build_context(uid, [EXPLICIT_LE, IMPLICIT_LE])
    supported.scu_role = scu_role
    supported.scp_role = scp_role
    roles = {role_item.sop_class_uid: (role_item.scu_role, role_item.scp_role)}
    (result,), answers = negotiate_as_acceptor([context], [supported], roles)
    return result.result, bool(result.as_scu), bool(result.as_scp), answers


def test_storage_commitment_scp_only_proposal_to_qrscp_falls_back_to_default_roles() -> None:
    rq, context, role_item = _pynetdicom_rq(COMMITMENT, scp_role=True)
    # qrscp's Storage Commitment context: SCP only (it never takes the SCU role for it)
    assert storage_commitment_scp_supported() in [
        (c,) for c in qrscp_config("QRSCP").supported_contexts if c.abstract_syntax == COMMITMENT
    ]
    (supported,) = storage_commitment_scp_supported()
    assert (supported.scu_role_allowed, supported.scp_role_allowed) == (False, True)
    acceptor = AcceptorConfig(
        ae_title="QRSCP", supported=(supported,), implementation_class_uid="1.2.3.4"
    )
    result = negotiate(rq, acceptor)
    assert isinstance(result, Accepted)

    # the context is accepted; no role answer for the SOP class: the defaults apply
    (item,) = result.ac.presentation_contexts
    assert item.result == ContextResult.ACCEPTANCE
    assert result.ac.user_information.role_selections == ()
    (ours,) = result.association.contexts
    assert (ours.scu_role, ours.scp_role) == (False, True)
    assert "SCP only" in ours.reason and "default roles" in ours.reason
    assert result.association.default_role_contexts == (ours,)
    assert result.association.refused_contexts == ()

    # pynetdicom's acceptor, in its default configuration, decides the same
    code, as_scu, as_scp, answers = _pynetdicom_acceptor_outcome(
        COMMITMENT, context, role_item, scu_role=None, scp_role=None
    )
    assert (code, as_scu, as_scp, answers) == (0, False, True, [])

    # and a requestor reading our AC (pynetdicom decodes it; we check ours) is SCU
    from pynetdicom.pdu import A_ASSOCIATE_AC

    ac = A_ASSOCIATE_AC()
    ac.decode(encode_pdu(result.ac))
    assert [i.result for i in ac.presentation_context] == [0]
    assert not [i for i in ac.user_information.user_data if type(i).__name__.startswith("SCP")]
    (theirs,) = process_associate_ac(rq, result.ac).contexts
    assert (theirs.scu_role, theirs.scp_role) == (True, False)


def test_proposal_granted_when_the_ae_may_take_the_other_role() -> None:
    # stgcmtscu listening for reports allows both roles: the proposal is granted
    rq, context, role_item = _pynetdicom_rq(COMMITMENT, scp_role=True)
    supported = SupportedContext(
        COMMITMENT, (EXPLICIT_LE, IMPLICIT_LE), scu_role_allowed=True, scp_role_allowed=True
    )
    acceptor = AcceptorConfig(
        ae_title="QRSCP", supported=(supported,), implementation_class_uid="1.2.3.4"
    )
    result = negotiate(rq, acceptor)
    assert isinstance(result, Accepted)
    (ours,) = result.association.contexts
    assert (ours.result, ours.scu_role, ours.scp_role, ours.reason) == (0, True, False, "")
    (answer,) = result.ac.user_information.role_selections
    assert (answer.scu_role, answer.scp_role) == (False, True)
    code, as_scu, as_scp, answers = _pynetdicom_acceptor_outcome(
        COMMITMENT, context, role_item, scu_role=True, scp_role=True
    )
    assert (code, as_scu, as_scp) == (0, True, False)
    assert [(a.scu_role, a.scp_role) for a in answers] == [(False, True)]


def test_refused_with_its_reason_when_the_default_role_is_not_allowed_either() -> None:
    # an AE that may only be SCU for CT storage (say a C-GET SCP's sub-operations only), and a
    # requestor that wants to be SCU only: no role fits, the context is refused
    rq, _context, _role = _pynetdicom_rq(CT_STORAGE, scu_role=True)
    supported = SupportedContext(
        CT_STORAGE, (EXPLICIT_LE,), scu_role_allowed=True, scp_role_allowed=False
    )
    acceptor = AcceptorConfig(
        ae_title="QRSCP", supported=(supported,), implementation_class_uid="1.2.3.4"
    )
    result = negotiate(rq, acceptor)
    assert isinstance(result, Accepted)
    (ours,) = result.association.refused_contexts
    assert ours.result == ContextResult.USER_REJECTION
    assert "SCU only" in ours.reason
    assert "user-rejection" in ours.describe() and CT_STORAGE in ours.describe()
    (answer,) = result.ac.user_information.role_selections
    assert (answer.scu_role, answer.scp_role) == (False, False)


@pytest.mark.parametrize(
    ("supported", "result", "words"),
    [
        pytest.param((), 3, "does not support the SOP class", id="abstract-syntax"),
        pytest.param(
            (SupportedContext(COMMITMENT, ("1.2.840.10008.1.2.2",)),),
            4,
            "none of the proposed transfer syntaxes",
            id="transfer-syntax",
        ),
    ],
)
def test_every_refusal_has_a_reason(
    supported: tuple[SupportedContext, ...], result: int, words: str
) -> None:
    rq, _context, _role = _pynetdicom_rq(COMMITMENT, scp_role=True)
    acceptor = AcceptorConfig(
        ae_title="QRSCP", supported=supported, implementation_class_uid="1.2.3.4"
    )
    outcome = negotiate(rq, acceptor)
    assert isinstance(outcome, Accepted)
    (ours,) = outcome.association.refused_contexts
    assert ours.result == result
    assert words in ours.reason
