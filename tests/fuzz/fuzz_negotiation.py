"""atheris harness: association negotiation (asyncdicom/protocol/negotiation.py), both ends.

Input: ``[config selector][PDU]``.  An A-ASSOCIATE-RQ is answered by :func:`negotiate` under
an acceptor configuration picked by the selector (storage accepted by default or not, an
asynchronous operations window or none, required user identity, an allow-list of calling AE
titles, an identity decision, an extended negotiation handler); an A-ASSOCIATE-AC is checked by
:func:`process_associate_ac` against the seed RQ.

Properties: decoding raises only :class:`ProtocolError`; ``negotiate`` never raises, and what
it answers can be sent (the AC or RJ encodes, the AC decodes back equal); every proposed
context gets exactly one result; the requestor's view of the (RQ, AC) pair agrees with the
acceptor's (same contexts, results and transfer syntaxes, roles mirrored, windows swapped);
``process_associate_ac`` raises only :class:`ProtocolError`.
"""

from __future__ import annotations

import contextlib
import sys

if __name__ == "__main__":
    import atheris

    _imports = atheris.instrument_imports(include=["asyncdicom"])
else:
    _imports = contextlib.nullcontext()

with _imports:
    from fuzz_common import (
        CT,
        EXPLICIT,
        IMPLICIT,
        Input,
        associate_ac,
        associate_rq,
        big_associate_rq,
    )

    from asyncdicom.protocol import uids
    from asyncdicom.protocol.codec import decode_pdu, encode_pdu
    from asyncdicom.protocol.errors import ProtocolError
    from asyncdicom.protocol.negotiation import (
        Accepted,
        AcceptorConfig,
        IdentityDecision,
        NegotiatedAssociation,
        Rejected,
        SupportedContext,
        negotiate,
        process_associate_ac,
    )
    from asyncdicom.protocol.pdu import (
        AssociateAC,
        AssociateRQ,
        SOPClassExtendedNegotiationSubItem,
    )

SEED_RQ = associate_rq()


def echo_extended(item: SOPClassExtendedNegotiationSubItem) -> bytes | None:
    """An extended negotiation handler that answers with what was asked (or nothing)."""
    info = item.service_class_application_information
    return info if len(info) % 2 else None


def acceptor_config(selector: int) -> AcceptorConfig:
    """One of the acceptor configurations, from the bits of ``selector``."""
    supported = [
        SupportedContext(uids.VERIFICATION, (IMPLICIT, EXPLICIT)),
        SupportedContext(CT, (EXPLICIT, IMPLICIT), scu_role_allowed=bool(selector & 0x01)),
        SupportedContext("1.2.840.10008.5.1.4.1.2.1.1", (IMPLICIT,), scp_role_allowed=True),
    ]
    return AcceptorConfig(
        ae_title="SCP",
        supported=tuple(supported),
        implementation_class_uid="1.2.3.4",
        implementation_version_name="FUZZ" if selector & 0x02 else None,
        accept_any_storage=bool(selector & 0x04),
        storage_transfer_syntaxes=(EXPLICIT, IMPLICIT),
        is_storage_sop_class=uids.is_storage_sop_class,
        require_called_ae_title=not selector & 0x08,
        allowed_calling_ae_titles=frozenset({"FUZZER", " B "}) if selector & 0x10 else None,
        async_ops_window=((16, 16), None, (0, 0), (1, 3))[(selector >> 5) & 3],
        require_user_identity=bool(selector & 0x80),
        extended_negotiation_handler=echo_extended if selector & 0x40 else None,
    )


def identity_decision(rq: AssociateRQ, selector: int) -> IdentityDecision | None:
    """As an AE with an identity handler does: a decision only when the RQ has the item."""
    item = rq.user_information.user_identity_rq
    if item is None or selector & 0x03 == 0:
        return None
    accepted = item.primary_field == b"user" or selector & 0x03 == 1
    return IdentityDecision(accepted, item.secondary_field[:64] if selector & 0x04 else None)


def check_views_agree(acceptor: NegotiatedAssociation, requestor: NegotiatedAssociation) -> None:
    assert len(acceptor.contexts) == len(requestor.contexts)
    for ours, theirs in zip(acceptor.contexts, requestor.contexts, strict=True):
        assert ours.context_id == theirs.context_id
        assert ours.abstract_syntax == theirs.abstract_syntax
        assert ours.result == theirs.result
        assert ours.transfer_syntax == theirs.transfer_syntax
        assert (ours.scu_role, ours.scp_role) == (theirs.scp_role, theirs.scu_role)
    assert acceptor.max_operations_invoked == requestor.max_operations_performed
    assert acceptor.max_operations_performed == requestor.max_operations_invoked
    assert acceptor.local_max_pdu_length == requestor.peer_max_pdu_length
    assert acceptor.peer_max_pdu_length == requestor.local_max_pdu_length


def answer(rq: AssociateRQ, selector: int, identity_selector: int) -> None:
    config = acceptor_config(selector)
    result = negotiate(rq, config, identity_decision(rq, identity_selector))
    if isinstance(result, Rejected):
        assert decode_pdu(encode_pdu(result.rj)) == result.rj
        return
    assert isinstance(result, Accepted)
    ac = result.ac
    # an AC built from a peer's RQ must be sendable: a LocalProtocolError here is a bug
    wire = encode_pdu(ac)
    decoded = decode_pdu(wire)
    assert isinstance(decoded, AssociateAC)
    answered = [c.context_id for c in ac.presentation_contexts]
    assert len(answered) == len(set(answered))
    assert set(answered) == {c.context_id for c in rq.presentation_contexts}
    for context in result.association.accepted_contexts:
        proposed = next(c for c in rq.presentation_contexts if c.context_id == context.context_id)
        assert context.transfer_syntax in proposed.transfer_syntaxes
        assert context.scu_role or context.scp_role
    # the requestor reads the AC as sent on the wire and must agree with the acceptor
    check_views_agree(result.association, process_associate_ac(rq, decoded))


def TestOneInput(data: bytes) -> None:
    inp = Input(data)
    selector = inp.u8()
    identity_selector = inp.u8()
    try:
        pdu = decode_pdu(inp.rest())
    except ProtocolError:
        return
    if isinstance(pdu, AssociateRQ):
        answer(pdu, selector, identity_selector)
    elif isinstance(pdu, AssociateAC):
        with contextlib.suppress(ProtocolError):
            process_associate_ac(SEED_RQ, pdu)


def seeds() -> list[bytes]:
    """The full RQ and AC, a minimal RQ and a boundary-size RQ, under several configs."""
    rqs = [associate_rq(), associate_rq(full=False), big_associate_rq()]
    out = [bytes((s, 3)) + encode_pdu(rq) for rq in rqs for s in (0x00, 0x47, 0x94)]
    out.append(b"\x00\x00" + encode_pdu(associate_ac()))
    return out


def main() -> None:
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
