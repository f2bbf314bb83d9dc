"""atheris harness: a live acceptor without sockets.

The chain the AE runs for every connection (asyncdicom/ae.py, association.py), driven
synchronously: an :class:`UpperLayer` in the acceptor role is fed the fuzzer's bytes in the
fuzzer's reads; an A-ASSOCIATE-RQ indication is answered by :func:`negotiate` (identity decision
and extended negotiation as the AE makes them) with an A-ASSOCIATE-AC or -RJ; P-DATA goes
through :class:`DIMSEOperations` (message assembly, command decoding, the operations window)
and every request is answered (C-ECHO at once, a request with a data set after its last
fragment, a known C-CANCEL with a Cancel status) with its command set fragmented for the
peer's maximum PDU length; a DIMSE protocol error is answered with an A-ABORT (provider); a
release request with A-RELEASE-RP.  Then ARTIM may expire and the transport closes.

Input: ``[selector][cut count][cut sizes, 2 bytes each][stream]``; selector bit 0 puts a
valid A-ASSOCIATE-RQ (with user identity, role selection, extended negotiation and a window)
in front of the stream, so that most inputs reach the DIMSE layer; the stream's first PDU is
fed before the rest, as a requestor waits for the A-ASSOCIATE-AC, unless bit 5 asks for
everything pipelined; the other bits choose the configuration.

Properties: only the typed protocol errors come out (the upper layer takes peer bytes without
raising; a user primitive is refused with :class:`LocalProtocolError` only when the state no
longer allows it); an answer built from peer data can always be encoded and sent; the acceptor
writes whole, valid PDUs and nothing after an A-ABORT; a protocol error found by the upper
layer always queues an A-ABORT or an A-ASSOCIATE-RJ; no P-DATA is indicated after an abort;
the machine ends closed (Sta1) with exactly one ConnectionClosed, its last event.
"""

from __future__ import annotations

import contextlib
import sys
from typing import Any

if __name__ == "__main__":
    import atheris

    _imports = atheris.instrument_imports(include=["asyncdicom"])
else:
    _imports = contextlib.nullcontext()

with _imports:
    from fuzz_common import (
        EXPLICIT,
        IMPLICIT,
        Input,
        associate_rq,
        cut,
        read_cuts,
        session_seeds,
        split_pdus,
    )

    from asyncdicom.protocol import dimse, messages, uids
    from asyncdicom.protocol.codec import encode_pdu
    from asyncdicom.protocol.errors import LocalProtocolError, ProtocolError
    from asyncdicom.protocol.events import (
        NEED_DATA,
        AssociationAborted,
        AssociationRefused,
        AssociationRequested,
        ConnectionClosed,
        DataReceived,
        ReleaseConfirmed,
        ReleaseRequested,
    )
    from asyncdicom.protocol.fsm import TRANSITIONS, Event, State
    from asyncdicom.protocol.negotiation import (
        Accepted,
        AcceptorConfig,
        IdentityDecision,
        SupportedContext,
        negotiate,
    )
    from asyncdicom.protocol.operations import (
        CancelReceived,
        DIMSEOperations,
        FragmentReceived,
        RequestReceived,
        ResponseReceived,
    )
    from asyncdicom.protocol.pdu import (
        Abort,
        AssociateAC,
        AssociateRJ,
        AssociateRQ,
        PDataTF,
        ReleaseRP,
        SOPClassExtendedNegotiationSubItem,
    )
    from asyncdicom.protocol.upper_layer import Role, UpperLayer

SEED_RQ = encode_pdu(associate_rq())
ARTIM = 1.0

_USER_EVENTS = {
    AssociateAC: Event.ASSOCIATE_ACCEPT_RESPONSE,
    AssociateRJ: Event.ASSOCIATE_REJECT_RESPONSE,
    PDataTF: Event.P_DATA_REQUEST,
    ReleaseRP: Event.RELEASE_RESPONSE,
    Abort: Event.ABORT_REQUEST,
}


def _extended(item: SOPClassExtendedNegotiationSubItem) -> bytes | None:
    return item.service_class_application_information[:4] or None


def acceptor_config(selector: int) -> AcceptorConfig:
    """An AE's acceptor configuration (Verification, any storage, a window), varied a bit."""
    return AcceptorConfig(
        ae_title="SCP",
        supported=(
            SupportedContext(uids.VERIFICATION, (IMPLICIT, EXPLICIT)),
            SupportedContext(
                "1.2.840.10008.5.1.4.1.2.1.1", (IMPLICIT, EXPLICIT), scu_role_allowed=True
            ),
        ),
        implementation_class_uid=uids.IMPLEMENTATION_CLASS_UID,
        implementation_version_name="ASYNCDICOM",
        max_pdu_length=16384,
        accept_any_storage=True,
        storage_transfer_syntaxes=(EXPLICIT, IMPLICIT),
        is_storage_sop_class=uids.is_storage_sop_class,
        require_called_ae_title=not selector & 0x02,
        async_ops_window=(16, 16) if selector & 0x04 else None,
        require_user_identity=bool(selector & 0x08),
        extended_negotiation_handler=_extended,
    )


class Acceptor:
    """The acceptor's driver, synchronous: what Association + AE do with the sans-IO core."""

    def __init__(self, selector: int) -> None:
        self.selector = selector
        self.config = acceptor_config(selector)
        self.ul = UpperLayer(
            Role.ACCEPTOR,
            artim_timeout=ARTIM,
            max_pdu_length=self.config.max_pdu_length,
            max_associate_pdu_length=1 << 20,
        )
        self.now = 0.0
        self.ops: DIMSEOperations | None = None
        self.waiting: dict[int, messages.Message] = {}
        self.requests: dict[int, messages.Message] = {}
        self.out = bytearray()
        self.events: list[Any] = []
        self.aborted = False
        self.protocol_errors = 0

    # ------------------------------------------------------------------ user primitives

    def send(self, pdu: Any) -> bool:
        """A user primitive; refused only when the state does not allow it (then False)."""
        encode_pdu(pdu)  # what the acceptor builds from peer data must always encode
        state = self.ul.state
        try:
            self.ul.send(pdu, now=self.now)
        except LocalProtocolError:
            assert TRANSITIONS.get((state, _USER_EVENTS[type(pdu)])) is None, (state, pdu)
            return False
        return True

    def send_pdata(self, context_id: int, header: int, payload: memoryview) -> None:
        state = self.ul.state
        try:
            self.ul.send_pdata(context_id, header, payload, now=self.now)
        except LocalProtocolError:
            assert TRANSITIONS.get((state, Event.P_DATA_REQUEST)) is None, state
            return

    def abort(self, exc: ProtocolError) -> None:
        assert str(exc)
        self.protocol_errors += 1
        if self.send(Abort(2, int(exc.abort_reason))):
            self.aborted = True

    # ------------------------------------------------------------------ indications

    def on_request(self, rq: AssociateRQ) -> None:
        item = rq.user_information.user_identity_rq
        identity = None
        if item is not None:
            identity = IdentityDecision(item.primary_field == b"user", b"welcome")
        result = negotiate(rq, self.config, identity)
        if isinstance(result, Accepted):
            if self.send(result.ac):
                agreed = result.association
                assert self.ul.peer_max_pdu_length == (rq.user_information.maximum_length or 0)
                self.ops = DIMSEOperations(
                    (c.context_id for c in agreed.accepted_contexts),
                    max_invoked=agreed.max_operations_invoked,
                    max_performed=agreed.max_operations_performed,
                )
        else:
            self.send(result.rj)

    def respond(self, context_id: int, message: Any, status: int) -> None:
        assert self.ops is not None
        cls = messages.MESSAGE_TYPES[message.COMMAND_FIELD | 0x8000]
        response = cls(message_id_being_responded_to=message.message_id, status=status)
        self.ops.respond(message.message_id, response)  # type: ignore[arg-type]
        # as Association.send_message: the command set in fragments for the peer's maximum
        size = dimse.fragment_size(self.ul.peer_max_pdu_length)
        command = dimse.encode_command(response)
        for header, payload in dimse.pdv_fragments(command, size, command=True):
            self.send_pdata(context_id, header, payload)

    def on_data(self, pdu: PDataTF) -> None:
        assert not self.aborted, "P-DATA indicated after the association was aborted"
        ops = self.ops
        assert ops is not None, "P-DATA indicated before the association was accepted"
        try:
            events = ops.receive(pdu)
        except ProtocolError as exc:
            self.abort(exc)
            return
        for event in events:
            if isinstance(event, RequestReceived):
                self.requests[event.message_id] = event.message
                if event.message.has_dataset:
                    self.waiting[event.message_id] = event.message
                else:
                    self.respond(event.context_id, event.message, 0x0000)
            elif isinstance(event, FragmentReceived):
                if event.last and event.message_id in self.waiting:
                    self.respond(event.context_id, self.waiting.pop(event.message_id), 0x0000)
            elif isinstance(event, CancelReceived):
                if event.known and event.message_id not in self.waiting:
                    # a C-FIND/GET/MOVE whose identifier is in: ends with status Cancel
                    request = self.requests[event.message_id]
                    self.respond(event.context_id, request, 0xFE00)
            else:
                assert not isinstance(event, ResponseReceived), "a response to no request"

    def process(self) -> None:
        ul = self.ul
        while (event := ul.next_event()) is not NEED_DATA:
            self.events.append(event)
            if isinstance(event, DataReceived):
                self.on_data(event.pdu)
            elif isinstance(event, AssociationRequested):
                self.on_request(event.request)
            elif isinstance(event, ReleaseRequested):
                if not event.collision:  # (a collision cannot happen: we never release)
                    self.send(ReleaseRP())
            elif isinstance(event, ReleaseConfirmed):
                raise AssertionError("A-RELEASE-RP confirmed although we never sent an RQ")
            elif isinstance(event, AssociationRefused):
                # the provider refused the RQ itself: its RJ carries the error's fields
                assert isinstance(event.error, ProtocolError), event
                assert event.error.reject == (
                    event.reject.result,
                    event.reject.source,
                    event.reject.reason,
                ), event
                assert not any(isinstance(e, AssociationRequested) for e in self.events), event
            elif isinstance(event, AssociationAborted):
                if event.local:
                    assert event.error is None or isinstance(event.error, ProtocolError)
                    self.protocol_errors += event.error is not None
                self.aborted = True
            else:
                assert isinstance(event, ConnectionClosed), event
        self.out += ul.data_to_send()

    # ------------------------------------------------------------------ the session

    def run(self, stream: bytes, sizes: list[int]) -> None:
        ul = self.ul
        ul.connection_made(now=self.now)
        assert ul.state is State.AWAITING_ASSOCIATE_RQ
        parts = cut(stream, sizes)
        if not self.selector & 0x20 and len(stream) >= 6:
            # a requestor waits for the answer to its first PDU: that PDU in reads of its
            # own, the rest only once it has been answered
            first = 6 + int.from_bytes(stream[2:6], "big")
            parts = cut(stream[:first], sizes) + cut(stream[first:], sizes)
        for part in parts:
            self.now += 0.01
            ul.receive_data(part, now=self.now)
            self.process()
            deadline = ul.timer_deadline()
            assert deadline is None or ul.state in (
                State.AWAITING_ASSOCIATE_RQ,
                State.AWAITING_TRANSPORT_CLOSE,
            ), ul.state
        deadline = ul.timer_deadline()
        if self.selector & 0x10 and deadline is not None:
            self.now = deadline
            ul.handle_timer(now=self.now)  # ARTIM expires
            self.process()
        ul.receive_data(None, now=self.now)  # the transport closes
        self.process()
        self.check()

    def check(self) -> None:
        ul = self.ul
        assert ul.state is State.IDLE and ul.is_closed, ul.state
        closed = [e for e in self.events if isinstance(e, ConnectionClosed)]
        assert len(closed) == 1 and self.events[-1] is closed[0], self.events
        pdus = split_pdus(bytes(self.out))
        for i, pdu in enumerate(pdus):
            assert isinstance(pdu, (AssociateAC, AssociateRJ, PDataTF, ReleaseRP, Abort)), pdu
            if isinstance(pdu, Abort):
                assert i == len(pdus) - 1, f"PDUs after an A-ABORT: {pdus[i + 1 :]}"
        if self.protocol_errors:
            assert any(isinstance(p, (Abort, AssociateRJ)) for p in pdus), pdus


def TestOneInput(data: bytes) -> None:
    inp = Input(data)
    selector = inp.u8()
    sizes = read_cuts(inp, 16)
    stream = inp.rest()
    if selector & 0x01:
        stream = SEED_RQ + stream
    Acceptor(selector).run(stream, sizes)


def seeds() -> list[bytes]:
    """Sessions after the built-in RQ (selector bit 0) and whole streams with their own RQ."""
    out = []
    minimal = encode_pdu(associate_rq(full=False))
    for i, session in enumerate(session_seeds()):
        selector = 0x01 | (0x04 if i % 2 else 0) | (0x10 if i % 3 == 0 else 0)
        out.append(bytes((selector, 0)) + session)
        out.append(bytes((0x04, 2, 0, 10, 0, 200)) + minimal + session)
    out.append(b"\x00\x00" + SEED_RQ)
    # boundary Maximum Lengths: the smallest usable one (2-byte fragments) and 0 (no limit)
    echo = session_seeds()[0]
    for maximum in (8, 0):
        rq = encode_pdu(associate_rq(full=False, maximum_length=maximum))
        out.append(b"\x00\x00" + rq + echo)
    return out


def main() -> None:
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
