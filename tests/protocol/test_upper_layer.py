"""Scripted conversations through the sans-IO upper layer (PS3.8 section 9).

Most tests wire a requestor :class:`UpperLayer` to an acceptor in memory (:class:`Link`): bytes
one side queues are fed to the other, and when one side enters Sta1 (``ConnectionClosed``) the
other is told that the transport closed.  Time is a plain float passed as ``now``.
"""

from __future__ import annotations

import pytest

from asyncdicom.protocol.codec import decode_pdu, encode_pdu
from asyncdicom.protocol.errors import (
    BadProtocolVersion,
    InvalidPDU,
    LocalProtocolError,
    PDUTooLarge,
    UnexpectedPDU,
    UnrecognizedPDU,
)
from asyncdicom.protocol.events import (
    NEED_DATA,
    AssociationAborted,
    AssociationAccepted,
    AssociationRefused,
    AssociationRejected,
    AssociationRequested,
    ConnectionClosed,
    DataReceived,
    ReleaseConfirmed,
    ReleaseRequested,
    UpperLayerEvent,
)
from asyncdicom.protocol.fsm import Action, Event, State
from asyncdicom.protocol.pdu import (
    PDU,
    Abort,
    AssociateAC,
    AssociateRJ,
    AssociateRQ,
    ImplementationClassUIDSubItem,
    MaximumLengthSubItem,
    PDataTF,
    PresentationContextACItem,
    PresentationContextRQItem,
    PresentationDataValue,
    ReleaseRP,
    ReleaseRQ,
    UserInformationItem,
)
from asyncdicom.protocol.upper_layer import Role, UpperLayer

VERIFICATION = "1.2.840.10008.1.1"
IMPLICIT_LE = "1.2.840.10008.1.2"
ARTIM = 30.0


def make_rq(max_length: int = 16384, protocol_version: int = 1) -> AssociateRQ:
    return AssociateRQ(
        called_ae_title="STORESCP",
        calling_ae_title="STORESCU",
        presentation_contexts=(PresentationContextRQItem(1, VERIFICATION, (IMPLICIT_LE,)),),
        user_information=UserInformationItem(
            (MaximumLengthSubItem(max_length), ImplementationClassUIDSubItem("1.2.3.4"))
        ),
        protocol_version=protocol_version,
    )


def make_ac(max_length: int = 32768) -> AssociateAC:
    return AssociateAC(
        called_ae_title="STORESCP",
        calling_ae_title="STORESCU",
        presentation_contexts=(PresentationContextACItem(1, 0, IMPLICIT_LE),),
        user_information=UserInformationItem(
            (MaximumLengthSubItem(max_length), ImplementationClassUIDSubItem("1.2.3.5"))
        ),
    )


def abort_bytes(source: int, reason: int) -> bytes:
    """A-ABORT PDU written out by hand from PS3.8 Table 9-26."""
    return b"\x07\x00\x00\x00\x00\x04\x00\x00" + bytes((source, reason))


def state_of(ul: UpperLayer) -> State:
    """The state, read through a call so that type checkers do not carry narrowing across
    inputs that change it."""
    return ul.state


def drain(ul: UpperLayer) -> list[UpperLayerEvent]:
    out: list[UpperLayerEvent] = []
    while (event := ul.next_event()) is not NEED_DATA:
        assert not isinstance(event, type(NEED_DATA))
        out.append(event)
    return out


def split_pdus(data: bytes) -> list[PDU]:
    pdus: list[PDU] = []
    pos = 0
    while pos < len(data):
        length = int.from_bytes(data[pos + 2 : pos + 6], "big")
        pdus.append(decode_pdu(data[pos : pos + 6 + length]))
        pos += 6 + length
    return pdus


class Link:
    """A requestor and an acceptor joined by an in-memory "transport"."""

    def __init__(self, chunk: int = 0, **options: float | int) -> None:
        self.req = UpperLayer(Role.REQUESTOR, **options)  # type: ignore[arg-type]
        self.acc = UpperLayer(Role.ACCEPTOR, **options)  # type: ignore[arg-type]
        self.chunk = chunk  # 0: deliver whole writes; n: deliver n bytes at a time
        self.now = 0.0
        self.events: dict[str, list[UpperLayerEvent]] = {"req": [], "acc": []}
        self.wire: dict[str, list[PDU]] = {"req": [], "acc": []}  # PDUs written by each side
        self.closed = False

    def connect(self) -> None:
        """Requestor: send the A-ASSOCIATE-RQ; both: the TCP connection opens."""
        self.req.send(make_rq(), now=self.now)
        assert state_of(self.req) is State.AWAITING_TRANSPORT_OPEN
        self.acc.connection_made(now=self.now)
        self.req.connection_made(now=self.now)
        self.pump()

    def _deliver(self, data: bytes, to: UpperLayer) -> None:
        if not self.chunk:
            to.receive_data(data, now=self.now)
            return
        for i in range(0, len(data), self.chunk):
            to.receive_data(data[i : i + self.chunk], now=self.now)

    def pump(self) -> None:
        """Move bytes until both sides are quiet; propagate a close to the other side."""
        sides = (("req", self.req, self.acc), ("acc", self.acc, self.req))
        progress = True
        while progress:
            progress = False
            for name, ul, peer in sides:
                data = ul.data_to_send()
                if data:
                    progress = True
                    self.wire[name] += split_pdus(data)
                    if not self.closed:
                        self._deliver(data, peer)
                new = drain(ul)
                if new:
                    progress = True
                    self.events[name] += new
                if any(isinstance(e, ConnectionClosed) for e in new) and not self.closed:
                    self.closed = True
                    peer.receive_data(None, now=self.now)

    def take(self, name: str) -> list[UpperLayerEvent]:
        out, self.events[name] = self.events[name], []
        return out

    def sent(self, name: str) -> list[PDU]:
        out, self.wire[name] = self.wire[name], []
        return out


def established(chunk: int = 0, **options: float | int) -> Link:
    link = Link(chunk, **options)
    link.connect()
    (requested,) = link.take("acc")
    assert isinstance(requested, AssociationRequested)
    link.acc.send(make_ac(), now=link.now)
    link.pump()
    (accepted,) = link.take("req")
    assert isinstance(accepted, AssociationAccepted)
    assert state_of(link.req) is state_of(link.acc) is State.ESTABLISHED
    link.sent("req")
    link.sent("acc")
    return link


# --------------------------------------------------------------------------- normal flows


@pytest.mark.parametrize("chunk", [0, 1, 7])
def test_association_data_release(chunk: int) -> None:
    link = Link(chunk, artim_timeout=ARTIM)
    req, acc = link.req, link.acc
    req.send(make_rq(), now=0.0)
    assert state_of(req) is State.AWAITING_TRANSPORT_OPEN
    assert req.data_to_send() == b""  # AE-1 only asks for a connection
    acc.connection_made(now=0.0)
    assert state_of(acc) is State.AWAITING_ASSOCIATE_RQ
    assert acc.timer_deadline() == ARTIM
    req.connection_made(now=0.0)
    assert state_of(req) is State.AWAITING_ASSOCIATE_AC
    link.pump()
    assert link.sent("req") == [make_rq()]
    assert link.take("acc") == [AssociationRequested(make_rq())]
    assert state_of(acc) is State.AWAITING_LOCAL_ASSOCIATE_RESPONSE
    assert acc.timer_deadline() is None  # AE-6 stops ARTIM
    assert acc.peer_max_pdu_length == 16384

    acc.send(make_ac(), now=1.0)
    link.pump()
    assert link.take("req") == [AssociationAccepted(make_ac())]
    assert state_of(req) is state_of(acc) is State.ESTABLISHED
    assert req.peer_max_pdu_length == 32768

    # data both ways, through send_pdata and send
    payload = bytes(range(256)) * 10
    req.send_pdata(1, 0x03, payload, now=2.0)
    acc.send(PDataTF((PresentationDataValue(1, 0x02, b"reply"),)), now=2.0)
    link.pump()
    (got,) = link.take("acc")
    assert isinstance(got, DataReceived)
    assert got.pdu == PDataTF((PresentationDataValue(1, 0x03, payload),))
    assert link.take("req") == [DataReceived(PDataTF((PresentationDataValue(1, 0x02, b"reply"),)))]

    # release: requestor asks, acceptor answers and waits in Sta13 for the close
    req.send(ReleaseRQ(), now=3.0)
    assert state_of(req) is State.AWAITING_RELEASE_RP
    link.pump()
    assert link.take("acc") == [ReleaseRequested(collision=False)]
    assert state_of(acc) is State.AWAITING_LOCAL_RELEASE_RESPONSE
    acc.send_pdata(1, 0x02, b"late", now=3.5)  # AR-7: data may still flow in Sta8
    link.pump()
    assert link.take("req") == [DataReceived(PDataTF((PresentationDataValue(1, 2, b"late"),)))]
    assert state_of(req) is State.AWAITING_RELEASE_RP  # AR-6
    acc.send(ReleaseRP(), now=4.0)
    assert state_of(acc) is State.AWAITING_TRANSPORT_CLOSE
    assert acc.timer_deadline() == 4.0 + ARTIM  # AR-4
    link.pump()
    assert link.take("req") == [ReleaseConfirmed(), ConnectionClosed()]
    assert state_of(req) is State.IDLE and req.is_closed
    # the requestor closed TCP; the acceptor got Evt17 in Sta13 -> AR-5
    assert link.take("acc") == [ConnectionClosed()]
    assert state_of(acc) is State.IDLE and acc.is_closed
    assert acc.timer_deadline() is None


def test_observer_sees_every_transition() -> None:
    seen: list[tuple[State, Event, Action, State]] = []
    ul = UpperLayer(Role.REQUESTOR)
    ul.on_transition = lambda *args: seen.append(args)
    ul.send(make_rq(), now=0)
    ul.connection_made(now=0)
    ul.receive_data(
        encode_pdu(make_ac()) + encode_pdu(PDataTF((PresentationDataValue(1, 2, b"x"),))), now=0
    )
    ul.send_pdata(1, 2, b"y", now=0)
    ul.send(ReleaseRQ(), now=0)
    ul.receive_data(encode_pdu(ReleaseRP()), now=0)
    s, e, a = State, Event, Action
    assert seen == [
        (s.IDLE, e.ASSOCIATE_REQUEST, a.AE_1, s.AWAITING_TRANSPORT_OPEN),
        (s.AWAITING_TRANSPORT_OPEN, e.TRANSPORT_CONNECT_CONFIRM, a.AE_2, s.AWAITING_ASSOCIATE_AC),
        (s.AWAITING_ASSOCIATE_AC, e.ASSOCIATE_AC_RECEIVED, a.AE_3, s.ESTABLISHED),
        (s.ESTABLISHED, e.P_DATA_RECEIVED, a.DT_2, s.ESTABLISHED),
        (s.ESTABLISHED, e.P_DATA_REQUEST, a.DT_1, s.ESTABLISHED),
        (s.ESTABLISHED, e.RELEASE_REQUEST, a.AR_1, s.AWAITING_RELEASE_RP),
        (s.AWAITING_RELEASE_RP, e.RELEASE_RP_RECEIVED, a.AR_3, s.IDLE),
    ]


def test_pdus_in_one_chunk_are_processed_in_order() -> None:
    ul = UpperLayer(Role.REQUESTOR)
    ul.send(make_rq(), now=0)
    ul.connection_made(now=0)
    ul.data_to_send()
    pdata = PDataTF((PresentationDataValue(1, 3, b"abc"),))
    ul.receive_data(encode_pdu(make_ac()) + encode_pdu(pdata) + encode_pdu(ReleaseRQ()), now=0)
    assert drain(ul) == [
        AssociationAccepted(make_ac()),
        DataReceived(pdata),
        ReleaseRequested(collision=False),
    ]
    assert state_of(ul) is State.AWAITING_LOCAL_RELEASE_RESPONSE


# --------------------------------------------------------------------------- rejection


def test_reject_by_user() -> None:
    link = Link(artim_timeout=ARTIM)
    link.connect()
    link.take("acc")
    rj = AssociateRJ(1, 1, 3)  # permanent, service-user, calling AE title not recognized
    link.acc.send(rj, now=1.0)
    assert state_of(link.acc) is State.AWAITING_TRANSPORT_CLOSE
    assert link.acc.timer_deadline() == 1.0 + ARTIM  # AE-8
    link.pump()
    assert link.sent("acc") == [rj]
    assert link.take("req") == [AssociationRejected(rj), ConnectionClosed()]  # AE-4
    assert state_of(link.req) is State.IDLE
    assert link.take("acc") == [ConnectionClosed()]  # AR-5
    assert state_of(link.acc) is State.IDLE


def test_reject_by_provider_for_protocol_version() -> None:
    acc = UpperLayer(Role.ACCEPTOR, artim_timeout=ARTIM)
    acc.connection_made(now=0.0)
    seen: list[tuple[State, Event, Action, State]] = []
    acc.on_transition = lambda *args: seen.append(args)
    acc.receive_data(encode_pdu(make_rq(protocol_version=2)), now=5.0)
    # AE-6, "not acceptable" branch: A-ASSOCIATE-RJ (1, 2, 2), ARTIM restarted, Sta13
    assert acc.data_to_send() == b"\x03\x00\x00\x00\x00\x04\x00\x01\x02\x02"
    # no A-ASSOCIATE indication: the local user only hears of the refusal (to log it)
    (refused,) = drain(acc)
    assert isinstance(refused, AssociationRefused)
    assert refused.reject == AssociateRJ(1, 2, 2)
    assert isinstance(refused.error, BadProtocolVersion)
    assert state_of(acc) is State.AWAITING_TRANSPORT_CLOSE
    assert acc.timer_deadline() == 5.0 + ARTIM
    assert seen == [
        (
            State.AWAITING_ASSOCIATE_RQ,
            Event.ASSOCIATE_RQ_RECEIVED,
            Action.AE_6,
            State.AWAITING_TRANSPORT_CLOSE,
        )
    ]
    assert BadProtocolVersion.reject == (1, 2, 2)

    # and the requestor sees a rejection
    req = UpperLayer(Role.REQUESTOR)
    req.send(make_rq(protocol_version=2), now=0)
    req.connection_made(now=0)
    req.receive_data(b"\x03\x00\x00\x00\x00\x04\x00\x01\x02\x02", now=0)
    assert drain(req) == [AssociationRejected(AssociateRJ(1, 2, 2)), ConnectionClosed()]


# --------------------------------------------------------------------------- abort


@pytest.mark.parametrize("aborter", ["req", "acc"])
def test_user_abort(aborter: str) -> None:
    link = established(artim_timeout=ARTIM)
    ul = link.req if aborter == "req" else link.acc
    other = "acc" if aborter == "req" else "req"
    link.now = 7.0
    ul.send(Abort(), now=link.now)
    assert state_of(ul) is State.AWAITING_TRANSPORT_CLOSE
    assert ul.timer_deadline() == 7.0 + ARTIM  # AA-1
    data = ul.data_to_send()
    assert data == abort_bytes(0, 0)
    link.wire[aborter].append(decode_pdu(data))
    (link.acc if aborter == "req" else link.req).receive_data(data, now=link.now)
    link.pump()
    # AA-3: the peer gets an A-ABORT indication (source 0) and closes
    assert link.take(other) == [AssociationAborted(0, 0, local=False), ConnectionClosed()]
    # the aborting side then sees the close in Sta13 (AR-5) without any indication but the close
    assert link.take(aborter) == [ConnectionClosed()]
    assert state_of(link.req) is state_of(link.acc) is State.IDLE


def test_peer_provider_abort_is_a_p_abort_indication() -> None:
    link = established()
    link.req.receive_data(abort_bytes(2, 6), now=0)
    assert drain(link.req) == [AssociationAborted(2, 6, local=False), ConnectionClosed()]
    assert link.req.data_to_send() == b""


def test_user_abort_is_sent_as_given() -> None:
    # A driver reporting a malformed DIMSE message aborts with the provider source.
    link = established()
    link.req.send(Abort(2, 5), now=0)
    assert link.req.data_to_send() == abort_bytes(2, 5)
    assert state_of(link.req) is State.AWAITING_TRANSPORT_CLOSE
    link.acc.receive_data(abort_bytes(2, 5), now=0)
    assert drain(link.acc) == [AssociationAborted(2, 5, local=False), ConnectionClosed()]
    # source 1 is reserved
    other = established()
    with pytest.raises(LocalProtocolError):
        other.req.send(Abort(1, 0), now=0)
    assert state_of(other.req) is State.ESTABLISHED
    assert other.req.data_to_send() == b""


def test_abort_while_connecting_just_closes() -> None:
    ul = UpperLayer(Role.REQUESTOR)
    ul.send(make_rq(), now=0)
    ul.send(Abort(), now=0)  # AA-2 in Sta4: nothing to send, no connection yet
    assert ul.data_to_send() == b""
    assert drain(ul) == [ConnectionClosed()]
    assert state_of(ul) is State.IDLE and ul.is_closed


def test_connect_failure_in_sta4() -> None:
    ul = UpperLayer(Role.REQUESTOR)
    ul.send(make_rq(), now=0)
    ul.receive_data(None, now=0)  # AA-4
    assert drain(ul) == [AssociationAborted(2, 0, local=True), ConnectionClosed()]


# --------------------------------------------------------------------------- release collision


def test_release_collision() -> None:
    link = established(artim_timeout=ARTIM)
    req, acc = link.req, link.acc
    req.send(ReleaseRQ(), now=1.0)
    acc.send(ReleaseRQ(), now=1.0)
    assert state_of(req) is state_of(acc) is State.AWAITING_RELEASE_RP
    # the two A-RELEASE-RQs cross on the wire
    to_acc, to_req = req.data_to_send(), acc.data_to_send()
    acc.receive_data(to_acc, now=1.0)
    req.receive_data(to_req, now=1.0)
    # AR-8: both get an indication, then the roles decide
    assert drain(req) == [ReleaseRequested(collision=True)]
    assert drain(acc) == [ReleaseRequested(collision=True)]
    assert state_of(req) is State.COLLISION_REQUESTOR_AWAITING_LOCAL_RESPONSE  # Sta9
    assert state_of(acc) is State.COLLISION_ACCEPTOR_AWAITING_RELEASE_RP  # Sta10
    # acceptor may not answer yet (Evt14 is empty in Sta10)
    with pytest.raises(LocalProtocolError):
        acc.send(ReleaseRP(), now=1.0)
    req.send(ReleaseRP(), now=2.0)  # AR-9
    assert state_of(req) is State.COLLISION_REQUESTOR_AWAITING_RELEASE_RP  # Sta11
    acc.receive_data(req.data_to_send(), now=2.0)  # AR-10
    assert drain(acc) == [ReleaseConfirmed()]
    assert state_of(acc) is State.COLLISION_ACCEPTOR_AWAITING_LOCAL_RESPONSE  # Sta12
    acc.send(ReleaseRP(), now=3.0)  # AR-4
    assert state_of(acc) is State.AWAITING_TRANSPORT_CLOSE
    assert acc.timer_deadline() == 3.0 + ARTIM
    req.receive_data(acc.data_to_send(), now=3.0)  # AR-3
    assert drain(req) == [ReleaseConfirmed(), ConnectionClosed()]
    assert state_of(req) is State.IDLE
    acc.receive_data(None, now=3.5)  # the requestor closed: AR-5
    assert drain(acc) == [ConnectionClosed()]
    assert state_of(acc) is State.IDLE


# --------------------------------------------------------------------------- ARTIM


def test_artim_expiry_in_sta2() -> None:
    acc = UpperLayer(Role.ACCEPTOR, artim_timeout=ARTIM)
    acc.connection_made(now=5.0)
    assert acc.timer_deadline() == 35.0
    acc.handle_timer(now=34.999)
    assert state_of(acc) is State.AWAITING_ASSOCIATE_RQ
    assert drain(acc) == []
    acc.handle_timer(now=35.0)  # AA-2
    assert state_of(acc) is State.IDLE
    assert drain(acc) == [ConnectionClosed()]
    assert acc.data_to_send() == b""
    assert acc.timer_deadline() is None
    acc.handle_timer(now=100.0)  # nothing running: nothing happens
    assert drain(acc) == []


def test_artim_expiry_in_sta13() -> None:
    link = Link(artim_timeout=ARTIM)
    link.connect()
    link.take("acc")
    link.acc.send(AssociateRJ(2, 3, 1), now=10.0)
    assert link.acc.timer_deadline() == 40.0
    link.acc.data_to_send()  # the requestor never reads it and never closes
    link.acc.handle_timer(now=39.0)
    assert state_of(link.acc) is State.AWAITING_TRANSPORT_CLOSE
    link.acc.handle_timer(now=41.0)
    assert state_of(link.acc) is State.IDLE
    assert drain(link.acc) == [ConnectionClosed()]


def test_aa1_restarts_artim_in_sta2() -> None:
    acc = UpperLayer(Role.ACCEPTOR, artim_timeout=ARTIM)
    acc.connection_made(now=0.0)
    acc.receive_data(encode_pdu(ReleaseRQ()), now=20.0)  # a PDU before the RQ: AA-1
    assert state_of(acc) is State.AWAITING_TRANSPORT_CLOSE
    assert acc.timer_deadline() == 50.0
    assert acc.data_to_send() == abort_bytes(0, 0)
    assert drain(acc) == []


# --------------------------------------------------------------------------- bad input


def test_garbage_in_sta2() -> None:
    acc = UpperLayer(Role.ACCEPTOR, artim_timeout=ARTIM)
    acc.connection_made(now=0.0)
    acc.receive_data(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", now=1.0)
    # Evt19 in Sta2 is AA-1: the A-ABORT has the service-user source (PS3.8 Table 9-9)
    assert acc.data_to_send() == abort_bytes(0, 0)
    assert drain(acc) == []
    assert state_of(acc) is State.AWAITING_TRANSPORT_CLOSE
    assert acc.timer_deadline() == 1.0 + ARTIM
    # the stream is unusable now: more bytes are ignored, no second A-ABORT
    acc.receive_data(b"more garbage" * 10, now=2.0)
    acc.receive_data(encode_pdu(make_rq()), now=2.0)
    assert acc.data_to_send() == b""
    assert drain(acc) == []
    acc.receive_data(None, now=3.0)
    assert drain(acc) == [ConnectionClosed()]


@pytest.mark.parametrize(
    ("data", "reason", "error"),
    [
        (b"\x0a\x00\x00\x00\x00\x04\x00\x00\x00\x00", 1, UnrecognizedPDU),
        (b"\x05\x00\x00\x00\x00\x05\x00\x00\x00\x00\x00", 6, InvalidPDU),
        (encode_pdu(make_ac()), 2, UnexpectedPDU),
        (encode_pdu(make_rq()), 2, UnexpectedPDU),
    ],
    ids=["unknown-type", "bad-release-length", "ac-in-sta6", "rq-in-sta6"],
)
def test_bad_input_in_sta6(data: bytes, reason: int, error: type[Exception]) -> None:
    link = established(artim_timeout=ARTIM)
    ul = link.acc
    ul.receive_data(data, now=9.0)
    # AA-8: A-ABORT from the provider with the error's reason, A-P-ABORT indication, ARTIM
    assert ul.data_to_send() == abort_bytes(2, reason)
    (event,) = drain(ul)
    assert isinstance(event, AssociationAborted)
    assert (event.source, event.reason, event.local) == (2, reason, True)
    assert isinstance(event.error, error)
    assert state_of(ul) is State.AWAITING_TRANSPORT_CLOSE
    assert ul.timer_deadline() == 9.0 + ARTIM


def test_oversized_pdata_refused_from_header() -> None:
    link = established(artim_timeout=ARTIM, max_pdu_length=1000)
    # only the 6-byte header of a 2000-byte P-DATA-TF: refused before any body arrives
    link.req.receive_data(b"\x04\x00\x00\x00\x07\xd0", now=1.0)
    assert link.req.data_to_send() == abort_bytes(2, 6)
    (event,) = drain(link.req)
    assert isinstance(event, AssociationAborted)
    assert isinstance(event.error, PDUTooLarge)
    # exactly at the limit is fine
    link2 = established(max_pdu_length=1000)
    link2.acc.send_pdata(1, 0, b"x" * 994, now=0)  # PDU-length 6 + 994 = 1000
    link2.pump()
    (got,) = link2.take("req")
    assert isinstance(got, DataReceived)


def test_pdata_over_peer_maximum_is_refused_locally() -> None:
    link = established()
    limit = link.req.peer_max_pdu_length  # 32768 from the AC
    with pytest.raises(LocalProtocolError):
        link.req.send_pdata(1, 0, b"x" * (limit - 5), now=0)
    with pytest.raises(LocalProtocolError):
        link.req.send(PDataTF((PresentationDataValue(1, 0, b"x" * (limit - 5)),)), now=0)
    assert link.req.data_to_send() == b""
    link.req.send_pdata(1, 0, b"x" * (limit - 6), now=0)
    assert len(link.req.data_to_send()) == 6 + limit


def test_peer_closes_mid_association() -> None:
    link = established()
    link.req.receive_data(None, now=0)  # AA-4
    assert drain(link.req) == [AssociationAborted(2, 0, local=True), ConnectionClosed()]
    assert state_of(link.req) is State.IDLE
    # bytes or a second close arriving afterwards are ignored
    link.req.receive_data(encode_pdu(ReleaseRQ()), now=0)
    link.req.receive_data(None, now=0)
    assert drain(link.req) == []
    assert link.req.data_to_send() == b""


def test_bytes_after_abort_in_same_chunk_are_ignored() -> None:
    link = established()
    link.req.receive_data(abort_bytes(0, 0) + encode_pdu(ReleaseRQ()), now=0)
    assert drain(link.req) == [AssociationAborted(0, 0, local=False), ConnectionClosed()]


def test_aa7_sends_at_most_one_abort() -> None:
    # Sta13 reached by AR-4 (no A-ABORT sent yet): the first stray RQ gets one A-ABORT.
    link = established(artim_timeout=ARTIM)
    link.req.send(ReleaseRQ(), now=0)
    link.acc.receive_data(link.req.data_to_send(), now=0)
    link.acc.send(ReleaseRP(), now=0)
    link.acc.data_to_send()
    drain(link.acc)
    deadline = link.acc.timer_deadline()
    link.acc.receive_data(encode_pdu(make_rq()), now=5.0)
    assert link.acc.data_to_send() == abort_bytes(2, 2)
    link.acc.receive_data(encode_pdu(make_rq()) + encode_pdu(make_rq()), now=6.0)
    assert link.acc.data_to_send() == b""
    assert state_of(link.acc) is State.AWAITING_TRANSPORT_CLOSE
    assert link.acc.timer_deadline() == deadline  # AA-7 leaves ARTIM alone
    # an A-ABORT from the peer ends the wait (AA-2)
    link.acc.receive_data(abort_bytes(0, 0), now=7.0)
    assert drain(link.acc) == [ConnectionClosed()]


def test_no_aa7_abort_after_aa8() -> None:
    link = established()
    link.req.receive_data(encode_pdu(make_ac()), now=0)  # AA-8, framer still in step
    assert link.req.data_to_send() == abort_bytes(2, 2)
    drain(link.req)
    link.req.receive_data(encode_pdu(make_rq()), now=0)  # AA-7: already aborted once
    assert link.req.data_to_send() == b""
    link.req.receive_data(encode_pdu(ReleaseRP()), now=0)  # AA-6
    assert drain(link.req) == []
    assert state_of(link.req) is State.AWAITING_TRANSPORT_CLOSE


# --------------------------------------------------------------------------- local misuse


def test_local_misuse_is_refused_without_change() -> None:
    acc = UpperLayer(Role.ACCEPTOR)
    with pytest.raises(LocalProtocolError):
        acc.send(make_rq(), now=0)  # an acceptor does not request
    with pytest.raises(LocalProtocolError):
        acc.receive_data(b"\x05\x00\x00\x00\x00\x04\x00\x00\x00\x00", now=0)  # no connection
    assert state_of(acc) is State.IDLE and not acc.is_closed
    acc.connection_made(now=0)
    with pytest.raises(LocalProtocolError):
        acc.connection_made(now=0)
    with pytest.raises(LocalProtocolError):
        acc.send_pdata(1, 0, b"x", now=0)
    with pytest.raises(LocalProtocolError):
        acc.send(Abort(), now=0)  # Evt15 has no cell in Sta2
    assert state_of(acc) is State.AWAITING_ASSOCIATE_RQ
    assert acc.data_to_send() == b""

    req = UpperLayer(Role.REQUESTOR)
    with pytest.raises(LocalProtocolError):
        req.connection_made(now=0)  # AE-1 first
    req.send(make_rq(), now=0)
    with pytest.raises(LocalProtocolError):
        req.send(make_rq(), now=0)
    with pytest.raises(LocalProtocolError):
        req.receive_data(b"\x06\x00\x00\x00\x00\x04\x00\x00\x00\x00", now=0)  # not connected
    assert state_of(req) is State.AWAITING_TRANSPORT_OPEN
    with pytest.raises(TypeError):
        req.send("not a pdu", now=0)  # type: ignore[arg-type]


def test_unencodable_pdu_leaves_state_unchanged() -> None:
    req = UpperLayer(Role.REQUESTOR)
    bad = AssociateRQ("X" * 17, "Y", make_rq().presentation_contexts, make_rq().user_information)
    with pytest.raises((LocalProtocolError, ValueError)):
        req.send(bad, now=0)
    assert state_of(req) is State.IDLE


def test_constructor_checks() -> None:
    with pytest.raises(ValueError):
        UpperLayer(Role.ACCEPTOR, artim_timeout=0)
    with pytest.raises(TypeError):
        UpperLayer("acceptor")  # type: ignore[arg-type]
    ul = UpperLayer(Role.ACCEPTOR, max_pdu_length=0)
    assert ul.role is Role.ACCEPTOR
    assert ul.max_pdu_length == 0
    assert ul.peer_max_pdu_length == 0
    assert ul.timer_deadline() is None
    assert ul.next_event() is NEED_DATA
