"""The composed sans-IO association, driven pairwise in memory.

Two :class:`AssociationCore` objects, a requestor and an acceptor, are wired to each other:
what one queues is handed to the other, and time is passed as ``now``.  No socket, no event
loop, no sleep: every timeout is reached by passing a later ``now``.  Expected values come from
PS3.8 (states, PDUs, A-ABORT fields) and PS3.7 (operations, window), not from the code.
"""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from asyncdicom.protocol import messages as m
from asyncdicom.protocol.association import (
    Aborted,
    AbortKind,
    AssociationCore,
    AssociationRejected,
    AssociationRequested,
    CancelReceived,
    ConnectionClosed,
    CoreConfig,
    CoreEvent,
    Established,
    FragmentReceived,
    ReleaseConfirmed,
    ReleaseRequested,
    RequestReceived,
    ResponseComplete,
    ResponseOnOtherContext,
)
from asyncdicom.protocol.errors import LocalProtocolError
from asyncdicom.protocol.events import NEED_DATA
from asyncdicom.protocol.fsm import State
from asyncdicom.protocol.negotiation import (
    Accepted,
    AcceptorConfig,
    ContextRequest,
    RequestorConfig,
    SupportedContext,
    build_associate_rq,
    negotiate,
)
from asyncdicom.protocol.pdu import AssociateRJ
from asyncdicom.protocol.upper_layer import Role

VERIFICATION = "1.2.840.10008.1.1"
CT = "1.2.840.10008.5.1.4.1.1.2"
FIND = "1.2.840.10008.5.1.4.1.2.2.1"
IMPLICIT = "1.2.840.10008.1.2"
EXPLICIT = "1.2.840.10008.1.2.1"
IMPL_UID = "1.2.826.0.1.3680043.9.9999"
# Implicit VR LE (0010,0010) Patient's Name
DATASET = b"\x10\x00\x10\x00\x08\x00\x00\x00DOE^JOHN"


class Pair:
    """A requestor and an acceptor core joined by an in-memory wire."""

    def __init__(
        self,
        contexts: Sequence[ContextRequest] = (ContextRequest(VERIFICATION, (IMPLICIT,)),),
        *,
        client: CoreConfig | None = None,
        server: CoreConfig | None = None,
        window: tuple[int, int] | None = None,
        server_window: tuple[int, int] | None = (16, 16),
        supported: Sequence[SupportedContext] = (
            SupportedContext(VERIFICATION, (IMPLICIT,)),
            SupportedContext(CT, (EXPLICIT, IMPLICIT)),
            SupportedContext(FIND, (IMPLICIT,)),
        ),
    ) -> None:
        self.client = AssociationCore(Role.REQUESTOR, client)
        self.server = AssociationCore(Role.ACCEPTOR, server)
        self.rq = build_associate_rq(
            RequestorConfig(
                calling_ae_title="SCU",
                called_ae_title="SCP",
                implementation_class_uid=IMPL_UID,
                async_ops_window=window,
            ),
            list(contexts),
        )
        self.acceptor = AcceptorConfig(
            ae_title="SCP",
            supported=tuple(supported),
            implementation_class_uid=IMPL_UID,
            async_ops_window=server_window,
        )
        self.seen: dict[str, list[CoreEvent]] = {"client": [], "server": []}

    def events(self, side: str) -> list[CoreEvent]:
        core = self.client if side == "client" else self.server
        out: list[CoreEvent] = []
        while (event := core.next_event()) is not NEED_DATA:
            assert not isinstance(event, type(NEED_DATA))
            out.append(event)
        self.seen[side].extend(out)
        return out

    def wire(self, now: float) -> None:
        """Deliver whatever either side queued, until both are quiet."""
        while True:
            a = self.client.data_to_send()
            b = self.server.data_to_send()
            if not a and not b:
                return
            if a and not self.server.is_closed and self.server.state is not State.IDLE:
                self.server.receive_data(a, now)
            if b and not self.client.is_closed:
                self.client.receive_data(b, now)

    def close_transport(self, now: float) -> None:
        """One side closed the connection: the other sees it (Evt17)."""
        for core in (self.client, self.server):
            if not core.is_closed and core.state is not State.IDLE:
                core.receive_data(None, now)

    def establish(self, now: float = 0.0) -> None:
        self.server.start(now)
        self.client.start(now, request=self.rq)
        self.wire(now)
        (requested,) = self.events("server")
        assert isinstance(requested, AssociationRequested)
        result = negotiate(requested.request, self.acceptor)
        assert isinstance(result, Accepted), result
        self.server.accept(result.ac, result.association, now)
        assert [type(e) for e in self.events("server")] == [Established]
        self.wire(now)
        assert [type(e) for e in self.events("client")] == [Established]


def request_pdus(core: AssociationCore, cid: int, message: m.Message, now: float) -> None:
    core.send_command(cid, message, now)
    if message.has_dataset:
        core.send_data(cid, DATASET, last=True, now=now)


# --------------------------------------------------------------------------- establishment


def test_establishment_and_one_echo() -> None:
    pair = Pair()
    pair.establish()
    client, server = pair.client, pair.server
    assert client.state is State.ESTABLISHED and server.state is State.ESTABLISHED
    assert client.negotiated is not None and server.negotiated is not None
    (context,) = client.negotiated.accepted_contexts
    assert (context.context_id, context.abstract_syntax) == (1, VERIFICATION)
    assert client.timer_deadline() is None  # the ACSE wait ended with the AC
    mid = client.next_message_id()
    echo = m.CEchoRQ(message_id=mid)
    client.invoke(1, echo)
    client.send_command(1, echo, 1.0)
    assert client.timer_deadline() == 1.0 + 60.0  # its DIMSE deadline runs
    pair.wire(1.0)
    (request,) = pair.events("server")
    assert isinstance(request, RequestReceived) and request.message == echo
    response = m.CEchoRSP(message_id_being_responded_to=mid, status=0)
    server.respond(mid, response)
    server.send_command(1, response, 2.0)
    pair.wire(2.0)
    (answer,) = pair.events("client")
    assert isinstance(answer, ResponseComplete)
    assert answer.final and answer.message == response and answer.dataset is None
    assert client.timer_deadline() is None and client.outstanding == 0


def test_requestor_acse_timer_runs_from_the_request() -> None:
    pair = Pair(client=CoreConfig(acse=5.0))
    pair.client.start(10.0, request=pair.rq)
    assert pair.client.timer_deadline() == 15.0


def test_rejection() -> None:
    pair = Pair()
    pair.server.start(0.0)
    pair.client.start(0.0, request=pair.rq)
    pair.wire(0.0)
    assert isinstance(pair.events("server")[0], AssociationRequested)
    rj = AssociateRJ(1, 1, 7)  # permanent, service-user, called AE title not recognized
    pair.server.reject(rj, 0.0)
    # acceptor: Sta13 waits (ARTIM) for the requestor to close
    assert pair.server.state is State.AWAITING_TRANSPORT_CLOSE
    assert pair.server.timer_deadline() == 30.0
    pair.wire(0.0)
    events = pair.events("client")
    assert [type(e) for e in events] == [AssociationRejected, ConnectionClosed]
    assert isinstance(events[0], AssociationRejected) and events[0].reject == rj
    assert pair.client.rejection == rj and pair.client.abort_cause is None
    pair.close_transport(0.5)
    assert [type(e) for e in pair.events("server")] == [ConnectionClosed]


def test_invalid_associate_ac_aborts_with_a_protocol_cause() -> None:
    """An AC accepting a transfer syntax that was not proposed: the requestor's own A-ABORT
    (source 0, reason 0), then a moment for the peer to close."""
    from dataclasses import replace

    from asyncdicom.protocol.pdu import PresentationContextACItem

    pair = Pair()
    pair.server.start(0.0)
    pair.client.start(0.0, request=pair.rq)
    pair.wire(0.0)
    (requested,) = pair.events("server")
    assert isinstance(requested, AssociationRequested)
    result = negotiate(requested.request, pair.acceptor)
    assert isinstance(result, Accepted)
    bad = replace(result.ac, presentation_contexts=(PresentationContextACItem(1, 0, EXPLICIT),))
    pair.server.accept(bad, result.association, 0.0)
    pair.wire(0.0)
    (aborted,) = pair.events("client")
    assert isinstance(aborted, Aborted)
    cause = aborted.cause
    assert (cause.kind, cause.source, cause.reason, cause.local) == (
        AbortKind.PROTOCOL,
        0,
        0,
        True,
    )
    assert "was not proposed" in cause.detail
    server_events = pair.events("server")
    assert [type(e) for e in server_events] == [Established, Aborted, ConnectionClosed]
    assert isinstance(server_events[1], Aborted)
    assert server_events[1].cause.kind is AbortKind.PEER


# --------------------------------------------------------------------------- release, abort


def test_release() -> None:
    pair = Pair()
    pair.establish()
    pair.client.release(1.0)
    assert pair.client.timer_deadline() == 31.0  # ACSE bounds the wait for the RP
    pair.wire(1.0)
    assert [type(e) for e in pair.events("server")] == [ReleaseRequested]
    pair.server.release_response(1.0)
    pair.wire(1.0)
    assert [type(e) for e in pair.events("client")] == [ReleaseConfirmed, ConnectionClosed]
    assert pair.client.released and pair.server.released
    pair.close_transport(1.0)
    assert [type(e) for e in pair.events("server")] == [ConnectionClosed]


def test_release_collision() -> None:
    """Both sides send A-RELEASE-RQ at once (PS3.8 9.2.3.1): the requestor answers first
    (Sta9 -> Sta11), the acceptor answers only after the requestor's RP (Sta10 -> Sta12 ->
    Sta13).  Each side is asked to answer exactly once."""
    pair = Pair()
    pair.establish()
    pair.client.release(1.0)
    pair.server.release(1.0)
    a = pair.client.data_to_send()
    b = pair.server.data_to_send()
    pair.server.receive_data(a, 1.0)
    pair.client.receive_data(b, 1.0)
    assert pair.client.state is State(9) and pair.server.state is State(10)
    assert [type(e) for e in pair.events("client")] == [ReleaseRequested]
    assert pair.events("server") == []  # the acceptor waits for the requestor's RP
    pair.client.release_response(1.0)
    assert pair.client.state is State(11)
    pair.wire(1.0)
    server_events = pair.events("server")
    assert [type(e) for e in server_events] == [ReleaseConfirmed, ReleaseRequested]
    assert pair.server.state is State(12)
    pair.server.release_response(1.0)
    pair.wire(1.0)
    assert [type(e) for e in pair.events("client")] == [ReleaseConfirmed, ConnectionClosed]
    assert pair.server.state is State.AWAITING_TRANSPORT_CLOSE


def test_user_abort_is_one_cause_on_each_side_and_lingers() -> None:
    pair = Pair()
    pair.establish()
    assert pair.client.abort(5.0, detail="changed my mind")
    pair.wire(5.0)
    (mine,) = pair.events("client")
    assert isinstance(mine, Aborted)
    assert (mine.cause.kind, mine.cause.source, mine.cause.local) == (AbortKind.USER, 0, True)
    assert mine.cause.detail == "changed my mind"
    theirs = pair.events("server")
    assert [type(e) for e in theirs] == [Aborted, ConnectionClosed]
    assert isinstance(theirs[0], Aborted)
    assert (theirs[0].cause.kind, theirs[0].cause.source, theirs[0].cause.local) == (
        AbortKind.PEER,
        0,
        False,
    )
    # the peer did not close the connection: after the linger time the core says close it
    deadline = pair.client.timer_deadline()
    assert deadline is not None and 5.0 < deadline <= 5.0 + 30.0
    pair.client.handle_timer(deadline)
    assert [type(e) for e in pair.events("client")] == [ConnectionClosed]
    assert not pair.client.abort(deadline)  # over: nothing more is sent


def test_abort_drops_requests_not_yet_taken() -> None:
    """PS3.7/PS3.8: an operation cut off by an abort must not complete."""
    pair = Pair()
    pair.establish()
    echo = m.CEchoRQ(message_id=1)
    pair.client.invoke(1, echo)
    pair.client.send_command(1, echo, 1.0)
    pair.wire(1.0)
    pair.server.abort(1.0)
    assert [type(e) for e in pair.events("server")] == [Aborted]


def test_connection_lost_is_the_cause() -> None:
    pair = Pair()
    pair.establish()
    pair.client.connection_lost("the connection to the peer broke (reset)", 3.0)
    events = pair.events("client")
    assert [type(e) for e in events] == [Aborted, ConnectionClosed]
    assert isinstance(events[0], Aborted)
    cause = events[0].cause
    assert cause.kind is AbortKind.CONNECTION_LOST and "reset" in cause.detail
    assert (cause.source, cause.local) == (2, True)  # A-P-ABORT indication (AA-4)


# --------------------------------------------------------------------------- timeouts


def test_artim_on_an_acceptor_that_never_gets_a_request() -> None:
    core = AssociationCore(Role.ACCEPTOR, CoreConfig(artim=7.0))
    core.start(100.0)
    assert core.timer_deadline() == 107.0
    core.handle_timer(106.9)
    assert core.next_event() is NEED_DATA
    core.handle_timer(107.0)
    assert core.next_event() == ConnectionClosed()  # AA-2: Sta2 -> Sta1, no indication
    assert core.timer_deadline() is None


def test_acse_timeout_at_establishment() -> None:
    pair = Pair(client=CoreConfig(acse=4.0))
    pair.server.start(0.0)
    pair.client.start(0.0, request=pair.rq)
    pair.wire(0.0)
    pair.client.handle_timer(3.9)
    assert pair.events("client") == []
    pair.client.handle_timer(4.0)
    events = pair.events("client")
    assert [type(e) for e in events] == [Aborted, ConnectionClosed]
    assert isinstance(events[0], Aborted) and events[0].cause.kind is AbortKind.ACSE_TIMEOUT
    assert "A-ASSOCIATE-AC/RJ" in events[0].cause.detail
    assert pair.client.data_to_send()[:1] == b"\x07"  # A-ABORT PDU sent before closing


def test_acse_timeout_waiting_for_the_release_response() -> None:
    pair = Pair(client=CoreConfig(acse=2.0))
    pair.establish()
    pair.client.release(10.0)
    pair.wire(10.0)  # the acceptor never answers
    pair.client.handle_timer(12.0)
    events = pair.events("client")
    assert [type(e) for e in events] == [Aborted, ConnectionClosed]
    assert isinstance(events[0], Aborted) and "A-RELEASE-RP" in events[0].cause.detail


def test_network_idle_timeout() -> None:
    pair = Pair(server=CoreConfig(network=10.0))
    pair.establish(now=0.0)
    assert pair.server.wants_read_time
    pair.server.reading(1.0)
    assert pair.server.timer_deadline() == 11.0
    echo = m.CEchoRQ(message_id=1)
    pair.client.invoke(1, echo)
    pair.client.send_command(1, echo, 5.0)
    pair.wire(5.0)  # bytes received: the idle clock restarts
    pair.server.reading(5.0)
    assert pair.server.timer_deadline() == 15.0
    pair.server.handle_timer(15.0)
    events = pair.events("server")
    assert isinstance(events[-2], Aborted) and isinstance(events[-1], ConnectionClosed)
    assert events[-2].cause.kind is AbortKind.NETWORK_TIMEOUT


def test_receive_progress_a_trickling_peer_is_aborted() -> None:
    """A C-STORE whose data set stops arriving half-way: the bank of ``dimse`` seconds runs
    out; bytes refill it by 1/min_receive_rate seconds each."""
    pair = Pair(
        [ContextRequest(CT, (IMPLICIT,))], server=CoreConfig(dimse=10.0, min_receive_rate=1.0)
    )
    pair.establish()
    store = m.CStoreRQ(message_id=1, affected_sop_class_uid=CT, affected_sop_instance_uid="1.2")
    pair.client.invoke(1, store)
    pair.client.send_command(1, store, 0.0)
    pair.client.send_data(1, DATASET[:8], last=False, now=0.0)
    pair.wire(0.0)
    assert [type(e) for e in pair.events("server")] == [RequestReceived, FragmentReceived]
    assert pair.server.wants_read_time and pair.server.timer_deadline() == 10.0
    pair.server.reading(0.0)
    # 6 s later two bytes arrive (a PDU header's first bytes): 10 - 6 + 2 = 6 s left
    tail = bytes(DATASET[8:])
    pair.client.send_data(1, tail, last=True, now=6.0)
    pdu = pair.client.data_to_send()
    pair.server.receive_data(pdu[:2], 6.0)
    pair.server.reading(6.0)
    assert pair.server.timer_deadline() == 12.0
    pair.server.handle_timer(11.9)
    assert pair.events("server") == []
    pair.server.handle_timer(12.0)
    events = pair.events("server")
    assert isinstance(events[0], Aborted) and events[0].cause.kind is AbortKind.RECEIVE_TIMEOUT
    assert "slower than 1 bytes/s" in events[0].cause.detail


def test_receive_progress_does_not_count_processing_time() -> None:
    pair = Pair(
        [ContextRequest(CT, (IMPLICIT,))], server=CoreConfig(dimse=10.0, min_receive_rate=1e9)
    )
    pair.establish()
    store = m.CStoreRQ(message_id=1, affected_sop_class_uid=CT, affected_sop_instance_uid="1.2")
    pair.client.invoke(1, store)
    pair.client.send_command(1, store, 0.0)
    pair.wire(0.0)
    # the driver was busy for 100 s (a slow disk); the wait starts when it reads again
    pair.server.reading(100.0)
    assert pair.server.timer_deadline() == 110.0


def test_no_progress_deadline_between_messages() -> None:
    pair = Pair()
    pair.establish()
    echo = m.CEchoRQ(message_id=1)
    pair.client.invoke(1, echo)
    pair.client.send_command(1, echo, 0.0)
    pair.wire(0.0)
    assert not pair.server.wants_read_time and pair.server.timer_deadline() is None


def test_receiving_while_a_pdu_or_a_message_is_incomplete() -> None:
    """``receiving`` says the peer is mid-PDU or mid-message (the driver then acknowledges at
    once, for a sender that has Nagle's algorithm on)."""
    pair = Pair([ContextRequest(CT, (IMPLICIT,)), ContextRequest(VERIFICATION, (IMPLICIT,))])
    pair.establish()
    assert not pair.server.receiving
    store = m.CStoreRQ(message_id=1, affected_sop_class_uid=CT, affected_sop_instance_uid="1.2")
    pair.client.invoke(1, store)
    pair.client.send_command(1, store, 0.0)
    command = pair.client.data_to_send()
    pair.server.receive_data(command[:6], 0.0)  # a PDU header: the PDU is incomplete
    assert pair.server.receiving
    pair.server.receive_data(command[6:], 0.0)  # the command: its data set is to follow
    assert pair.server.receiving
    pair.client.send_data(1, DATASET, last=True, now=0.0)
    pair.server.receive_data(pair.client.data_to_send(), 0.0)  # the whole message
    assert not pair.server.receiving
    assert [type(e) for e in pair.events("server")] == [RequestReceived, FragmentReceived]
    response = m.CStoreRSP(
        message_id_being_responded_to=1,
        status=0,
        affected_sop_class_uid=CT,
        affected_sop_instance_uid="1.2",
    )
    pair.server.respond(1, response)
    pair.server.send_command(1, response, 0.0)
    pair.wire(0.0)
    assert [type(e) for e in pair.events("client")] == [ResponseComplete]
    # a C-ECHO-RQ arrives whole: nothing incomplete
    echo = m.CEchoRQ(message_id=2)
    pair.client.invoke(3, echo)
    pair.client.send_command(3, echo, 0.0)
    pair.server.receive_data(pair.client.data_to_send(), 0.0)
    assert not pair.server.receiving
    assert [type(e) for e in pair.events("server")] == [RequestReceived]


def test_dimse_timeout_per_operation() -> None:
    pair = Pair(client=CoreConfig(dimse=3.0))
    pair.establish()
    echo = m.CEchoRQ(message_id=1)
    pair.client.invoke(1, echo)
    pair.client.send_command(1, echo, 10.0)
    pair.wire(10.0)
    pair.client.handle_timer(12.9)
    assert pair.events("client") == []
    pair.client.handle_timer(13.0)
    (aborted,) = pair.events("client")
    assert isinstance(aborted, Aborted) and aborted.cause.kind is AbortKind.DIMSE_TIMEOUT
    assert aborted.cause.detail == "no DIMSE response within 3.0 s"


def test_dimse_deadline_starts_after_the_data_set_and_restarts_with_each_pending() -> None:
    pair = Pair([ContextRequest(FIND, (IMPLICIT,))], client=CoreConfig(dimse=3.0))
    pair.establish()
    find = m.CFindRQ(message_id=1, affected_sop_class_uid=FIND)
    pair.client.invoke(1, find)
    pair.client.send_command(1, find, 0.0)
    assert pair.client.timer_deadline() is None  # not until the identifier is sent
    pair.client.send_data(1, DATASET, last=True, now=5.0)
    assert pair.client.timer_deadline() == 8.0
    pair.wire(5.0)
    pending = m.CFindRSP(1, 0xFF00, affected_sop_class_uid=FIND, has_dataset=True)
    pair.server.respond(1, pending)
    request_pdus(pair.server, 1, pending, 7.0)
    pair.wire(7.0)
    (response,) = [e for e in pair.events("client") if isinstance(e, ResponseComplete)]
    assert not response.final and response.dataset == DATASET
    assert pair.client.timer_deadline() == 10.0


def test_abandoned_operation_must_end_in_time() -> None:
    pair = Pair([ContextRequest(FIND, (IMPLICIT,))], client=CoreConfig(dimse=3.0))
    pair.establish()
    find = m.CFindRQ(message_id=1, affected_sop_class_uid=FIND)
    pair.client.invoke(1, find)
    request_pdus(pair.client, 1, find, 0.0)
    cancel = pair.client.cancel(1)
    pair.client.send_command(1, cancel, 1.0)
    pair.client.abandon(1, 1.0)
    assert pair.client.timer_deadline() == 4.0
    pair.wire(1.0)
    # a Pending response does not restart the clock of an abandoned operation
    pending = m.CFindRSP(1, 0xFF00, affected_sop_class_uid=FIND, has_dataset=True)
    pair.server.respond(1, pending)
    request_pdus(pair.server, 1, pending, 2.0)
    pair.wire(2.0)
    got = [e for e in pair.events("client") if isinstance(e, ResponseComplete)]
    assert got and got[0].abandoned and got[0].dataset is None
    assert pair.client.timer_deadline() == 4.0
    pair.client.handle_timer(4.0)
    events = pair.events("client")
    assert isinstance(events[0], Aborted)
    assert events[0].cause.kind is AbortKind.ABANDONED_TIMEOUT
    assert "cancelled C-FIND-RQ" in events[0].cause.detail


def test_response_data_set_memory_limit() -> None:
    pair = Pair([ContextRequest(FIND, (IMPLICIT,))], client=CoreConfig(max_dataset_in_memory=10))
    pair.establish()
    find = m.CFindRQ(message_id=1, affected_sop_class_uid=FIND)
    pair.client.invoke(1, find)
    request_pdus(pair.client, 1, find, 0.0)
    pair.wire(0.0)
    pending = m.CFindRSP(1, 0xFF00, affected_sop_class_uid=FIND, has_dataset=True)
    pair.server.respond(1, pending)
    request_pdus(pair.server, 1, pending, 0.0)  # 16 bytes > 10
    pair.wire(0.0)
    (aborted,) = [e for e in pair.events("client") if isinstance(e, Aborted)]
    assert aborted.cause.kind is AbortKind.PROTOCOL and aborted.cause.source == 2
    assert "max_dataset_in_memory" in aborted.cause.detail


# --------------------------------------------------------------------------- C-CANCEL


def test_late_c_cancel_for_a_finished_operation_is_ignored() -> None:
    pair = Pair([ContextRequest(FIND, (IMPLICIT,))])
    pair.establish()
    find = m.CFindRQ(message_id=9, affected_sop_class_uid=FIND)
    pair.client.invoke(1, find)
    request_pdus(pair.client, 1, find, 0.0)
    pair.wire(0.0)
    final = m.CFindRSP(9, 0x0000, affected_sop_class_uid=FIND)
    pair.server.respond(9, final)
    pair.server.send_command(1, final, 0.0)
    # the C-CANCEL crosses the final response on the wire
    pair.client.send_command(1, m.CCancelRQ(message_id_being_responded_to=9), 0.0)
    pair.wire(0.0)
    cancels = [e for e in pair.events("server") if isinstance(e, CancelReceived)]
    assert len(cancels) == 1 and not cancels[0].known and cancels[0].late
    assert pair.server.abort_cause is None and pair.client.abort_cause is None
    # one naming an operation that never existed is not "late"
    pair.client.send_command(1, m.CCancelRQ(message_id_being_responded_to=4242), 0.0)
    pair.wire(0.0)
    (other,) = [e for e in pair.events("server") if isinstance(e, CancelReceived)]
    assert not other.known and not other.late


# --------------------------------------------------------------------------- window


def test_operations_window_ours_is_enforced_locally() -> None:
    pair = Pair(window=(2, 1), server_window=(2, 2))
    pair.establish()
    for mid in (1, 2):
        pair.client.invoke(1, m.CEchoRQ(message_id=mid))
    with pytest.raises(LocalProtocolError, match="window"):
        pair.client.invoke(1, m.CEchoRQ(message_id=3))


def test_operations_window_a_peer_beyond_it_is_aborted() -> None:
    pair = Pair(window=(2, 1), server_window=(2, 2))
    pair.establish()
    assert pair.client.ops is not None
    pair.client.ops.max_invoked = 0  # a requestor that ignores what was negotiated
    for mid in (1, 2, 3):
        echo = m.CEchoRQ(message_id=mid)
        pair.client.invoke(1, echo)
        pair.client.send_command(1, echo, 0.0)
    pair.wire(0.0)
    events = pair.events("server")
    assert [type(e) for e in events] == [RequestReceived, RequestReceived, Aborted]
    aborted = events[-1]
    assert isinstance(aborted, Aborted)
    assert (aborted.cause.kind, aborted.cause.source, aborted.cause.reason) == (
        AbortKind.PROTOCOL,
        2,
        5,  # unexpected-PDU-parameter
    )
    client_abort = [e for e in pair.events("client") if isinstance(e, Aborted)]
    assert client_abort and client_abort[0].cause.kind is AbortKind.PEER


# --------------------------------------------------------------------------- issue 18 item 6


def two_ct_contexts_and_find() -> Pair:
    pair = Pair(
        [
            ContextRequest(CT, (EXPLICIT,)),
            ContextRequest(CT, (IMPLICIT,)),
            ContextRequest(FIND, (IMPLICIT,)),
        ]
    )
    pair.establish()
    return pair


def test_response_on_another_context_of_the_same_sop_class_is_accepted_warned_once() -> None:
    pair = two_ct_contexts_and_find()
    for mid in (1, 2):
        store = m.CStoreRQ(message_id=mid, affected_sop_class_uid=CT, affected_sop_instance_uid="1")
        pair.client.invoke(1, store)
        request_pdus(pair.client, 1, store, 0.0)
        pair.wire(0.0)
        response = m.CStoreRSP(mid, 0x0000, affected_sop_class_uid=CT)
        pair.server.respond(mid, response)
        pair.server.send_command(3, response, 0.0)  # context 3: CT as well
        pair.wire(0.0)
    events = pair.events("client")
    warnings = [e for e in events if isinstance(e, ResponseOnOtherContext)]
    assert len(warnings) == 1
    assert (warnings[0].context_id, warnings[0].request_context_id) == (3, 1)
    finals = [e for e in events if isinstance(e, ResponseComplete)]
    assert [(e.message_id, e.final, e.context_id) for e in finals] == [(1, True, 3), (2, True, 3)]
    assert pair.client.abort_cause is None


def test_response_on_a_context_of_another_sop_class_aborts() -> None:
    pair = two_ct_contexts_and_find()
    store = m.CStoreRQ(message_id=1, affected_sop_class_uid=CT, affected_sop_instance_uid="1")
    pair.client.invoke(1, store)
    request_pdus(pair.client, 1, store, 0.0)
    pair.wire(0.0)
    response = m.CStoreRSP(1, 0x0000, affected_sop_class_uid=CT)
    pair.server.respond(1, response)
    pair.server.send_command(5, response, 0.0)  # context 5: Study Root FIND
    pair.wire(0.0)
    (aborted,) = [e for e in pair.events("client") if isinstance(e, Aborted)]
    assert aborted.cause.kind is AbortKind.PROTOCOL
    assert "its request went on 1" in aborted.cause.detail
    assert not [e for e in pair.seen["client"] if isinstance(e, ResponseOnOtherContext)]
