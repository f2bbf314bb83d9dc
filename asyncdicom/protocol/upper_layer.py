"""Sans-IO DICOM Upper Layer protocol machine (PS3.8 section 9).

:class:`UpperLayer` carries out the state machine of :mod:`asyncdicom.protocol.fsm` for one
association on one transport connection.  It never performs I/O and never reads a clock: the
driver hands it received bytes (:meth:`UpperLayer.receive_data`), transport news
(:meth:`UpperLayer.connection_made`, ``receive_data(None)``), the user's primitives
(:meth:`UpperLayer.send`, :meth:`UpperLayer.send_pdata`) and the time (every input takes
``now``, a monotonic clock reading); it gets back indications (:meth:`UpperLayer.next_event`),
bytes to write (:meth:`UpperLayer.data_to_send`) and the ARTIM deadline
(:meth:`UpperLayer.timer_deadline`).

Choices made where PS3.8 leaves room (each is repeated where it is implemented):

* A-ABORT contents.  AA-1 sends "A-ABORT PDU (service-user source)" (PS3.8 Table 9-9), so it
  sends source 0, reason 0 even when it is triggered by a PDU arriving in Sta2, before any local
  user knows of the association; we follow the text literally.  AA-8 sends source 2 with the
  reason of the :class:`~.errors.ProtocolError` (2 "unexpected-PDU" for a well-formed PDU in the
  wrong state).  AA-7 (Sta13) sends source 2 with the same reasons.  An A-ABORT requested by
  the user (Evt15, AA-1) is sent as given: ``Abort()`` is source 0, reason 0; a driver that
  finds the peer's DIMSE messages malformed may pass source 2 with a Table 9-26 reason.
* AA-7 sends at most one A-ABORT per connection.  In Sta13 the association is already gone and
  the peer has had our A-ASSOCIATE-RJ, A-RELEASE-RP or A-ABORT; a peer that keeps sending
  requests gets one A-ABORT, not one per request, and nothing at all if an A-ABORT was already
  sent by AA-1 or AA-8.  The transition itself is still taken (and reported to
  :attr:`UpperLayer.on_transition`).
* After an undecodable byte stream (Evt19) the framer is dead: the position of the next PDU is
  unknown, so every later received byte is ignored (the state is then Sta13, where ARTIM bounds
  the wait for the peer to close, or Sta1).  This is what keeps AA-7 from answering a stream of
  garbage with a stream of A-ABORTs.
* AE-6's "not acceptable" branch is taken when decoding the A-ASSOCIATE-RQ in Sta2 raises an
  error carrying a ``reject`` triple (for example a protocol version without bit 0): the
  A-ASSOCIATE-RJ is sent with that triple, ARTIM starts and the state is Sta13.  No indication
  is given: the local user never learnt of the association.
* Empty cells.  A user primitive in an empty cell raises :class:`~.errors.LocalProtocolError`
  and changes nothing (reference section 4.4).  So do transport inputs that cannot happen with a
  correct driver (``connection_made`` twice, bytes before the connection exists).  Two inputs
  are tolerated because they race with closing: ``receive_data`` (bytes or ``None``) after the
  machine is back in Sta1 is ignored.  :meth:`UpperLayer.handle_timer` does nothing unless ARTIM
  is running and expired, and ARTIM runs only in Sta2 and Sta13, the two states with an Evt18
  cell.
"""

from __future__ import annotations

from collections import deque
from enum import Enum

from .codec import PDUFramer, encode_pdata, encode_pdu
from .errors import AbortReason, AbortSource, LocalProtocolError, ProtocolError, UnexpectedPDU
from .events import (
    NEED_DATA,
    AssociationAborted,
    AssociationAccepted,
    AssociationRefused,
    AssociationRejected,
    AssociationRequested,
    ConnectionClosed,
    DataReceived,
    NeedData,
    ReleaseConfirmed,
    ReleaseRequested,
    UpperLayerEvent,
)
from .fsm import (
    ARTIM_STARTS,
    ARTIM_STOPS,
    CONDITIONAL_NEXT_STATE,
    NEXT_STATE,
    TRANSITIONS,
    Action,
    Event,
    State,
    TransitionObserver,
)
from .pdu import (
    PDU,
    Abort,
    AssociateAC,
    AssociateRJ,
    AssociateRQ,
    PDataTF,
    ReleaseRP,
    ReleaseRQ,
)

__all__ = ["Role", "UpperLayer"]


class Role(Enum):
    """Which end of the association this upper layer is (PS3.8 section 9.1.1)."""

    #: Opens the transport connection and sends the A-ASSOCIATE-RQ.
    REQUESTOR = "requestor"
    #: Accepts the transport connection and answers the A-ASSOCIATE-RQ.
    ACCEPTOR = "acceptor"


#: The user primitive that each PDU class stands for (see :mod:`.events`).
_USER_EVENT: dict[type, Event] = {
    AssociateRQ: Event.ASSOCIATE_REQUEST,
    AssociateAC: Event.ASSOCIATE_ACCEPT_RESPONSE,
    AssociateRJ: Event.ASSOCIATE_REJECT_RESPONSE,
    PDataTF: Event.P_DATA_REQUEST,
    ReleaseRQ: Event.RELEASE_REQUEST,
    ReleaseRP: Event.RELEASE_RESPONSE,
    Abort: Event.ABORT_REQUEST,
}

#: The event raised by receiving each PDU class.
_PEER_EVENT: dict[type, Event] = {
    AssociateAC: Event.ASSOCIATE_AC_RECEIVED,
    AssociateRJ: Event.ASSOCIATE_RJ_RECEIVED,
    AssociateRQ: Event.ASSOCIATE_RQ_RECEIVED,
    PDataTF: Event.P_DATA_RECEIVED,
    ReleaseRQ: Event.RELEASE_RQ_RECEIVED,
    ReleaseRP: Event.RELEASE_RP_RECEIVED,
    Abort: Event.ABORT_RECEIVED,
}

#: Actions that send the PDU the local user gave to :meth:`UpperLayer.send`.
_SENDS_USER_PDU = frozenset(
    {
        Action.AE_7,
        Action.AE_8,
        Action.DT_1,
        Action.AR_1,
        Action.AR_4,
        Action.AR_7,
        Action.AR_9,
    }
)

_PDU_NAMES: dict[type, str] = {
    AssociateRQ: "A-ASSOCIATE-RQ",
    AssociateAC: "A-ASSOCIATE-AC",
    AssociateRJ: "A-ASSOCIATE-RJ",
    PDataTF: "P-DATA-TF",
    ReleaseRQ: "A-RELEASE-RQ",
    ReleaseRP: "A-RELEASE-RP",
    Abort: "A-ABORT",
}

#: P-DATA-TF header: PDU type, reserved byte, 4-byte PDU-length (PS3.8 Table 9-22).
_PDU_HEADER_LENGTH = 6

_IDLE = State.IDLE
_PROVIDER = int(AbortSource.SERVICE_PROVIDER)
_ESTABLISHED = State.ESTABLISHED
_AWAITING_LOCAL_RELEASE_RESPONSE = State.AWAITING_LOCAL_RELEASE_RESPONSE


def _describe(state: State, event: Event) -> str:
    return f"Evt{int(event)} ({event.name}) has no transition in Sta{int(state)} ({state.name})"


class UpperLayer:
    """The PS3.8 upper-layer protocol machine for one association (sans-IO).

    ``max_pdu_length`` is the largest P-DATA-TF PDU-length accepted from the peer (the value
    announced in our Maximum Length sub-item, 0 = no limit); a larger P-DATA-TF is refused from
    its header.  ``max_associate_pdu_length`` bounds every other PDU.  ``artim_timeout`` is the
    ARTIM timer duration in seconds (PS3.8 section 9.1.5).

    ``on_transition``, when set, is called after every transition with
    ``(old_state, event, action, new_state)``.
    """

    __slots__ = (
        "_abort_sent",
        "_artim_deadline",
        "_artim_timeout",
        "_events",
        "_framer",
        "_framer_dead",
        "_max_pdu_length",
        "_outgoing",
        "_peer_max_pdu_length",
        "_pending_rq",
        "_role",
        "_started",
        "_state",
        "on_transition",
    )

    def __init__(
        self,
        role: Role,
        *,
        artim_timeout: float = 30.0,
        max_pdu_length: int = 262144,
        max_associate_pdu_length: int = 1 << 20,
    ) -> None:
        if not isinstance(role, Role):
            raise TypeError(f"role must be a Role, not {role!r}")
        if not artim_timeout > 0:
            raise ValueError(f"artim_timeout must be positive, not {artim_timeout!r}")
        if max_pdu_length < 0 or max_associate_pdu_length <= 0:
            raise ValueError("PDU length limits must be positive (max_pdu_length 0 = no limit)")
        self._role = role
        self._state = State.IDLE
        self._artim_timeout = float(artim_timeout)
        self._artim_deadline: float | None = None
        self._max_pdu_length = max_pdu_length
        self._framer = PDUFramer(max_pdu_length, max_associate_pdu_length)
        self._framer_dead = False
        self._events: deque[UpperLayerEvent] = deque()
        self._outgoing: list[bytes] = []
        self._pending_rq: bytes | None = None
        self._peer_max_pdu_length = 0
        # True once the machine has left Sta1: a later Sta1 means "closed", not "not started".
        self._started = False
        # True once an A-ABORT PDU has been queued on this connection (bounds AA-7, see above).
        self._abort_sent = False
        self.on_transition: TransitionObserver | None = None

    # ------------------------------------------------------------------ properties

    @property
    def role(self) -> Role:
        """Requestor or acceptor, fixed at construction."""
        return self._role

    @property
    def state(self) -> State:
        """The current state (Sta1 ... Sta13)."""
        return self._state

    @property
    def is_closed(self) -> bool:
        """True when the machine is back in Sta1 after having left it (the connection is over)."""
        return self._state is _IDLE and self._started

    @property
    def peer_max_pdu_length(self) -> int:
        """The peer's Maximum Length (PS3.8 Annex D.1): the largest P-DATA-TF PDU-length it
        accepts, from the A-ASSOCIATE-AC (requestor) or -RQ (acceptor); 0 = unlimited, also
        while unknown or when the peer omitted the sub-item."""
        return self._peer_max_pdu_length

    @property
    def max_pdu_length(self) -> int:
        """The largest P-DATA-TF PDU-length accepted from the peer (0 = no limit)."""
        return self._max_pdu_length

    # ------------------------------------------------------------------ outputs

    def next_event(self) -> UpperLayerEvent | NeedData:
        """The next indication, or :data:`NEED_DATA` when none is queued."""
        if self._events:
            return self._events.popleft()
        return NEED_DATA

    def data_to_send(self) -> bytes:
        """All bytes queued for the peer since the last call (``b""`` when none)."""
        outgoing = self._outgoing
        if not outgoing:
            return b""
        self._outgoing = []
        if len(outgoing) == 1:
            return outgoing[0]
        return b"".join(outgoing)

    @property
    def receiving_pdu(self) -> bool:
        """True while part of a PDU has been received and the rest has not."""
        return self._framer.buffered > 0 and not self._framer_dead

    def timer_deadline(self) -> float | None:
        """When ARTIM expires (in the clock of ``now``), or ``None`` when it is not running."""
        return self._artim_deadline

    # ------------------------------------------------------------------ inputs

    def connection_made(self, *, now: float) -> None:
        """The transport connection is open.

        Requestor: the T-CONNECT confirmation, Evt2 (AE-2 queues the A-ASSOCIATE-RQ, Sta5).
        Acceptor: the T-CONNECT indication, Evt5 (AE-5 starts ARTIM, Sta2).
        """
        if self._role is Role.REQUESTOR:
            self._fire(Event.TRANSPORT_CONNECT_CONFIRM, now)
        else:
            self._fire(Event.TRANSPORT_CONNECT_INDICATION, now)

    def handle_timer(self, *, now: float) -> None:
        """Fire Evt18 (ARTIM expired) if ARTIM is running and ``now`` has reached its deadline."""
        deadline = self._artim_deadline
        if deadline is not None and now >= deadline:
            self._fire(Event.ARTIM_EXPIRED, now)

    def send(self, pdu: PDU, *, now: float) -> None:
        """Issue a user primitive (PS3.8 section 7), given as the PDU that carries it.

        ``AssociateRQ`` Evt1, ``AssociateAC`` Evt7, ``AssociateRJ`` Evt8, ``PDataTF`` Evt9,
        ``ReleaseRQ`` Evt11, ``ReleaseRP`` Evt14, ``Abort`` Evt15.  Raises
        :class:`LocalProtocolError` (and changes nothing) when the primitive is not allowed in
        the current state, and lets the encoder's error through when the PDU cannot be encoded.
        """
        event = _USER_EVENT.get(type(pdu))
        if event is None:
            raise TypeError(f"not a PDU: {pdu!r}")
        state = self._state
        action = TRANSITIONS.get((state, event))
        if action is None:
            raise LocalProtocolError(_describe(state, event))
        if event is Event.ABORT_REQUEST:
            assert isinstance(pdu, Abort)
            # AA-1 names the service-user source, and ``Abort()`` (source 0, reason 0) is that
            # A-ABORT request.  The PDU is nevertheless sent as given, so that the driver can
            # report a problem it found inside P-DATA (a malformed DIMSE message) as a
            # provider abort (source 2 with a reason of PS3.8 Table 9-26), as the peer's
            # decoder would.  Source 1 is reserved and refused.
            if pdu.source not in (AbortSource.SERVICE_USER, AbortSource.SERVICE_PROVIDER):
                raise LocalProtocolError(f"A-ABORT source {pdu.source} is reserved (PS3.8 9.3.8)")
        elif event is Event.ASSOCIATE_REQUEST and self._role is not Role.REQUESTOR:
            raise LocalProtocolError("only the association-requestor sends A-ASSOCIATE-RQ")
        data = encode_pdu(pdu)
        if event is Event.P_DATA_REQUEST:
            self._check_pdata_length(len(data))
        self._perform(state, event, action, now, pdu, None, data)

    def send_pdata(
        self, context_id: int, control_header: int, payload: bytes | memoryview, *, now: float
    ) -> None:
        """Fast path for a P-DATA request carrying one PDV (Evt9: DT-1 in Sta6, AR-7 in Sta8).

        Equal to ``send(PDataTF((PresentationDataValue(context_id, control_header, payload),)))``.
        """
        state = self._state
        # The two Evt9 cells of Table 9-10, spelled out to keep the hot path short.
        if state is _ESTABLISHED:
            action = Action.DT_1
        elif state is _AWAITING_LOCAL_RELEASE_RESPONSE:
            action = Action.AR_7
        else:
            raise LocalProtocolError(_describe(state, Event.P_DATA_REQUEST))
        data = encode_pdata(context_id, control_header, payload)
        if self._peer_max_pdu_length:
            self._check_pdata_length(len(data))
        self._outgoing.append(data)
        observer = self.on_transition
        if observer is not None:
            observer(state, Event.P_DATA_REQUEST, action, state)

    def receive_data(self, data: bytes | memoryview | None, *, now: float) -> None:
        """Bytes received from the peer, or ``None`` when the transport connection closed (Evt17).

        Every complete PDU is run through the state machine (Evt3/4/6/10/12/13/16); undecodable
        bytes are Evt19.  Never raises on peer input.  P-DATA values in the indications are
        views of ``data`` (no copy), so a buffer passed here must not be modified afterwards.
        """
        state = self._state
        if data is None:
            if state is _IDLE:
                # Table 9-10 has no Evt17 cell in Sta1: the connection is already gone (the
                # driver's close raced with the peer's), so there is nothing left to do.
                return
            self._fire(Event.TRANSPORT_CLOSED, now)
            return
        if state is _IDLE or state is State.AWAITING_TRANSPORT_OPEN:
            if self._started and state is _IDLE:
                return  # bytes that arrived while we were closing
            raise LocalProtocolError("receive_data() before the transport connection is open")
        if self._framer_dead or not data:
            return
        framer = self._framer
        events = self._events
        try:
            # feed() checks a PDU header as soon as its 6 bytes are in, so it can raise too.
            framer.feed(data)
        except ProtocolError as exc:
            self._framer_dead = True
            self._protocol_error(exc, now)
            return
        while True:
            try:
                pdu = framer.next_pdu()
            except ProtocolError as exc:
                self._framer_dead = True
                self._protocol_error(exc, now)
                return
            if pdu is None:
                return
            state = self._state
            if state is _ESTABLISHED and type(pdu) is PDataTF:
                # DT-2, the hot path: no state change, no timer.
                events.append(DataReceived(pdu))
                observer = self.on_transition
                if observer is not None:
                    observer(state, Event.P_DATA_RECEIVED, Action.DT_2, state)
                continue
            event = _PEER_EVENT[type(pdu)]
            action = TRANSITIONS.get((state, event))
            # Every state with a transport connection has a cell for every PDU event
            # (only Sta1 and Sta4 have none, and they were handled above).
            assert action is not None, _describe(state, event)
            error: ProtocolError | None = None
            if action is Action.AA_8 or action is Action.AA_7:
                error = UnexpectedPDU(
                    f"{_PDU_NAMES[type(pdu)]} PDU received in Sta{int(state)} ({state.name})"
                )
            self._perform(state, event, action, now, pdu, error, None)
            if self._state is _IDLE:
                return

    # ------------------------------------------------------------------ internals

    def _check_pdata_length(self, encoded_length: int) -> None:
        limit = self._peer_max_pdu_length
        if limit and encoded_length - _PDU_HEADER_LENGTH > limit:
            raise LocalProtocolError(
                f"P-DATA-TF PDU-length {encoded_length - _PDU_HEADER_LENGTH} exceeds the "
                f"peer's maximum {limit} (PS3.8 Annex D.1)"
            )

    def _protocol_error(self, exc: ProtocolError, now: float) -> None:
        state = self._state
        if state is State.AWAITING_ASSOCIATE_RQ and exc.reject is not None:
            # The A-ASSOCIATE-RQ arrived (Evt6) but is not acceptable to the service-provider:
            # AE-6's reject branch rather than an abort.
            self._perform(state, Event.ASSOCIATE_RQ_RECEIVED, Action.AE_6, now, None, exc, None)
            return
        action = TRANSITIONS.get((state, Event.INVALID_PDU_RECEIVED))
        assert action is not None, _describe(state, Event.INVALID_PDU_RECEIVED)
        self._perform(state, Event.INVALID_PDU_RECEIVED, action, now, None, exc, None)

    def _fire(self, event: Event, now: float) -> None:
        """Run an event that carries no PDU (transport and timer events)."""
        state = self._state
        action = TRANSITIONS.get((state, event))
        if action is None:
            if event is Event.TRANSPORT_CONNECT_CONFIRM and state is _IDLE:
                raise LocalProtocolError(
                    "connection_made() before send(AssociateRQ): " + _describe(state, event)
                )
            raise LocalProtocolError(_describe(state, event))
        self._perform(state, event, action, now, None, None, None)

    def _queue_abort(self, source: int, reason: int) -> None:
        self._outgoing.append(encode_pdu(Abort(source, reason)))
        self._abort_sent = True

    def _void_pending_data(self) -> None:
        """An abort (the user's, the peer's or ours after a bad PDU) voids the P-DATA and
        A-RELEASE indications of PDUs that arrived before it but that the user has not taken
        yet: it could no longer answer them (Evt9 and Evt14 have no transition in Sta1 or
        Sta13), and an operation cut off by an abort must not complete (a C-STORE whose last
        fragment was queued in front of the abort's cause would be stored although its
        requestor never gets a response).  PS3.8 7.3.2: an abort may lose data in transit."""
        events = self._events
        if events:
            kept = [e for e in events if not isinstance(e, (DataReceived, ReleaseRequested))]
            if len(kept) != len(events):
                events.clear()
                events.extend(kept)

    def _perform(
        self,
        state: State,
        event: Event,
        action: Action,
        now: float,
        pdu: PDU | None,
        error: ProtocolError | None,
        data: bytes | None,
    ) -> None:
        """Carry out ``action`` (PS3.8 Tables 9-6 to 9-9) and move to its next state."""
        if action in ARTIM_STOPS:
            self._artim_deadline = None
        if action in ARTIM_STARTS:
            # AA-1 "start (or restart if already started)": both are a new deadline.
            self._artim_deadline = now + self._artim_timeout
        events = self._events
        new_state = NEXT_STATE.get(action)

        if action in _SENDS_USER_PDU:
            assert data is not None
            self._outgoing.append(data)
        elif action is Action.AE_1:
            # Issue the transport connect request: the driver connects when it sees Sta4; the
            # A-ASSOCIATE-RQ waits, already encoded, for the connect confirmation (AE-2).
            self._pending_rq = data
        elif action is Action.AE_2:
            assert self._pending_rq is not None
            self._outgoing.append(self._pending_rq)
            self._pending_rq = None
        elif action is Action.AE_3:
            assert isinstance(pdu, AssociateAC)
            self._peer_max_pdu_length = pdu.user_information.maximum_length or 0
            events.append(AssociationAccepted(pdu))
        elif action is Action.AE_4:
            assert isinstance(pdu, AssociateRJ)
            events.append(AssociationRejected(pdu))
        elif action is Action.AE_6:
            accepted_state, rejected_state = CONDITIONAL_NEXT_STATE[action]
            if error is not None and error.reject is not None:
                result, source, reason = error.reject
                reject = AssociateRJ(result, source, reason)
                self._outgoing.append(encode_pdu(reject))
                events.append(AssociationRefused(reject, error))
                self._artim_deadline = now + self._artim_timeout
                new_state = rejected_state
            else:
                assert isinstance(pdu, AssociateRQ)
                self._peer_max_pdu_length = pdu.user_information.maximum_length or 0
                events.append(AssociationRequested(pdu))
                new_state = accepted_state
        elif action is Action.DT_2 or action is Action.AR_6:
            assert isinstance(pdu, PDataTF)
            events.append(DataReceived(pdu))
        elif action is Action.AR_2:
            events.append(ReleaseRequested(collision=False))
        elif action is Action.AR_8:
            requestor_state, acceptor_state = CONDITIONAL_NEXT_STATE[action]
            events.append(ReleaseRequested(collision=True))
            new_state = requestor_state if self._role is Role.REQUESTOR else acceptor_state
        elif action is Action.AR_3 or action is Action.AR_10:
            events.append(ReleaseConfirmed())
        elif action is Action.AA_1:
            # "Send A-ABORT PDU (service-user source)" (PS3.8 Table 9-9).  When a PDU in Sta2
            # triggers AA-1 no local user has heard of the association yet and the abort is
            # really the provider's doing, but the standard's text names the service-user
            # source for AA-1 without exception, so that is what is sent (reason 0: not
            # significant for that source).  No indication: either the user asked for it
            # (Evt15) or there is no user yet (Sta2).
            if data is not None:  # Evt15: the user's A-ABORT, as given (see send())
                self._outgoing.append(data)
                self._abort_sent = True
                self._void_pending_data()
            else:
                self._queue_abort(AbortSource.SERVICE_USER, 0)
        elif action is Action.AA_3:
            assert isinstance(pdu, Abort)
            self._void_pending_data()
            # source 0: A-ABORT indication; source 2: A-P-ABORT indication.
            events.append(AssociationAborted(int(pdu.source), int(pdu.reason), local=False))
        elif action is Action.AA_4:
            events.append(AssociationAborted(_PROVIDER, int(AbortReason.NOT_SPECIFIED), local=True))
        elif action is Action.AA_7:
            # At most one A-ABORT per connection (see the module docstring).
            if not self._abort_sent:
                reason = error.abort_reason if error is not None else AbortReason.UNEXPECTED_PDU
                self._queue_abort(AbortSource.SERVICE_PROVIDER, reason)
        elif action is Action.AA_8:
            assert error is not None
            reason = int(error.abort_reason)
            self._void_pending_data()
            self._queue_abort(_PROVIDER, reason)
            events.append(AssociationAborted(_PROVIDER, reason, local=True, error=error))
        # AE-5, AR-5, AA-2, AA-5 and AA-6 only touch the timer (done above) or nothing at all.

        assert new_state is not None
        self._state = new_state
        if new_state is _IDLE:
            # Entering Sta1 always means "close the transport now" (AE-4, AR-3, AR-5, AA-2 to
            # AA-5 close it; Sta1 has no connection by definition).
            self._artim_deadline = None
            events.append(ConnectionClosed())
        else:
            self._started = True
        observer = self.on_transition
        if observer is not None:
            observer(state, event, action, new_state)
