"""The composed sans-IO association: one object per association, both roles.

**Every association-level rule of the standard lives here** (PS3.8 section 9 and Annex E,
PS3.7 sections 9, 10 and Annex D): the Upper Layer state machine, establishment (the
requestor's A-ASSOCIATE-RQ and the processing of the answer), the DIMSE operations in both
directions with the negotiated window, reassembly of response data sets within their memory
limit, release collisions, the cause of an abort, how messages are cut into PDVs, and every
deadline.  A driver around :class:`AssociationCore` moves bytes and time in and events and
bytes out; it decides nothing the standard decides.  Nothing here does I/O, reads a clock or
imports an async library: time is passed in as ``now`` (a monotonic clock reading in seconds).

Inputs (each takes ``now``)::

    start(now, request=rq)        the transport is open (requestor: sends the A-ASSOCIATE-RQ)
    receive_data(data, now)       bytes from the peer; None when the transport closed
    connection_lost(detail, now)  the transport broke (why, for the abort cause)
    reading(now)                  the driver is about to wait for bytes (see below)
    accept(ac, negotiated, now) / reject(rj, now)     acceptor's answer
    invoke / respond / finish / cancel / abandon      DIMSE operations
    send_command / send_data      a DIMSE message, cut into PDVs
    release(now) / release_response(now) / abort(now, ...)
    handle_timer(now)             the deadline of timer_deadline() has come

Outputs: :meth:`AssociationCore.next_event` (one vocabulary, see ``CoreEvent``),
:meth:`AssociationCore.data_to_send` and :meth:`AssociationCore.timer_deadline`, the earliest
of every running deadline (aioquic's ``get_timer``/``handle_timer``):

* **ARTIM** (PS3.8 9.1.5): from the Upper Layer machine (Sta2, Sta13).
* **ACSE**: the requestor's wait for the A-ASSOCIATE-AC/RJ, and our wait for the A-RELEASE-RP;
  expiry aborts (``AbortKind.ACSE_TIMEOUT``) and closes.
* **Network idle** (``network``): nothing received for that long aborts
  (``AbortKind.NETWORK_TIMEOUT``).
* **Receive progress**: a PDU or DIMSE message that has started must keep coming.  The wait is
  a bank of at most ``dimse`` seconds that each wait draws on and each byte received refills by
  ``1 / min_receive_rate`` seconds; a peer trickling bytes is aborted once it is empty
  (``AbortKind.RECEIVE_TIMEOUT``).  Only waits count: :meth:`AssociationCore.reading` marks the
  start of a wait, so the time the driver spends processing is never held against the peer.
* **DIMSE, per operation**: each operation of ours must get its next response within ``dimse``
  seconds of its request being sent (or of its last Pending response)
  (``AbortKind.DIMSE_TIMEOUT``).
* **Abandoned operations**: one we gave up on (cancelled) must end within ``dimse`` seconds
  (``AbortKind.ABANDONED_TIMEOUT``).
* **Linger after an abort**: after our A-ABORT the peer has a moment (at most ARTIM) to close
  the connection; then the core reports :class:`ConnectionClosed` and the driver closes it.

Choices where the standard leaves room:

* Release collision (PS3.8 9.2.3.1, AR-8): the requestor answers the peer's A-RELEASE-RQ at
  once; the acceptor waits for the peer's A-RELEASE-RP and answers after it.  Either way the
  driver sees one :class:`ReleaseRequested` when it is time to answer.
* A response on another presentation context than its request's is accepted when that context
  carries the same abstract syntax (peers such as odil and PixelMed do this; DCMTK accepts it),
  reported once per association by :class:`ResponseOnOtherContext`; for another abstract
  syntax it aborts.
* A late C-CANCEL (it crossed the final response) is reported with ``known=False``,
  ``late=True`` and ignored; a bounded memory of recently ended Message IDs tells it apart from
  one naming an operation that never existed.
* Fragmentation: one PDV per PDU, at most the peer's Maximum Length and at most 1 MiB
  (:func:`~.dimse.fragment_size`); a command set that fits is sent as one PDV with both bits
  set (the fast path).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

from . import dimse
from .errors import DIMSEError, LocalProtocolError, ProtocolError
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
)
from .fsm import State, TransitionObserver
from .messages import CCancelRQ, Message, Request, Response, ResponseMessage
from .negotiation import NegotiatedAssociation, PresentationContext, process_associate_ac
from .operations import (
    CancelReceived,
    DIMSEOperations,
    FragmentReceived,
    Invocation,
    RequestReceived,
    ResponseReceived,
)
from .pdu import Abort, AssociateAC, AssociateRJ, AssociateRQ, ReleaseRP, ReleaseRQ
from .upper_layer import Role, UpperLayer

__all__ = [
    "AbortCause",
    "AbortKind",
    "Aborted",
    "AssociationCore",
    "AssociationRefused",
    "AssociationRejected",
    "AssociationRequested",
    "CancelReceived",
    "ConnectionClosed",
    "CoreConfig",
    "CoreEvent",
    "Established",
    "FragmentReceived",
    "ReleaseConfirmed",
    "ReleaseRequested",
    "RequestReceived",
    "ResponseComplete",
    "ResponseOnOtherContext",
]

_ESTABLISHED = State.ESTABLISHED
_AWAITING_LOCAL_RELEASE_RESPONSE = State.AWAITING_LOCAL_RELEASE_RESPONSE


@dataclass(frozen=True, slots=True)
class CoreConfig:
    """Limits and timeouts of one association, in seconds (``None``: no bound).

    ``max_pdu_length`` is the largest P-DATA-TF we accept (our Maximum Length, 0 = none);
    ``max_dataset_in_memory`` bounds a response data set reassembled here.
    """

    artim: float = 30.0
    acse: float | None = 30.0
    dimse: float | None = 60.0
    network: float | None = None
    min_receive_rate: float | None = 1024.0
    max_pdu_length: int = 262144
    max_associate_pdu_length: int = 1 << 20
    max_command_length: int = 65536
    max_dataset_in_memory: int = 64 * 1024 * 1024


class AbortKind(Enum):
    """Why an association was aborted (the one value :attr:`AssociationCore.abort_cause`)."""

    #: the peer sent A-ABORT (source 0) or its provider did (A-P-ABORT, source 2)
    PEER = "peer"
    #: the peer broke the protocol (PS3.8 AA-8 or a DIMSE rule): we sent A-ABORT, source 2
    PROTOCOL = "protocol"
    #: the local user asked for it
    USER = "user"
    #: the transport closed or broke without release or abort (A-P-ABORT indication)
    CONNECTION_LOST = "connection-lost"
    #: no A-ASSOCIATE-AC/RJ or A-RELEASE-RP within the ACSE timeout
    ACSE_TIMEOUT = "acse-timeout"
    #: no response to an operation of ours within the DIMSE timeout
    DIMSE_TIMEOUT = "dimse-timeout"
    #: an operation we gave up on did not end within the DIMSE timeout
    ABANDONED_TIMEOUT = "abandoned-timeout"
    #: a PDU or message in progress stopped arriving or came too slowly
    RECEIVE_TIMEOUT = "receive-timeout"
    #: nothing received within the network timeout
    NETWORK_TIMEOUT = "network-timeout"
    #: a write to the transport took longer than the write timeout (reported by the driver)
    WRITE_TIMEOUT = "write-timeout"


#: after our A-ABORT, how long the peer may take to close the connection (Sta13; at most
#: ARTIM, which PS3.8 leaves to the implementation): the user's abort and a missing response
#: give a moment so that the A-ABORT is read; a protocol error waits ARTIM; the other
#: timeouts close at once (the peer is not answering, it will not close either)
ABORT_LINGER = 1.0
_LINGER: dict[AbortKind, float | None] = {
    AbortKind.USER: ABORT_LINGER,
    AbortKind.DIMSE_TIMEOUT: ABORT_LINGER,
    AbortKind.PROTOCOL: None,
}


@dataclass(frozen=True, slots=True)
class AbortCause:
    """Why the association was aborted: the A-ABORT's ``source`` and ``reason`` (PS3.8 Table
    9-26), whether this side did it (``local``), what happened in words (``detail``) and the
    error behind it, if any (a :class:`~.errors.ProtocolError`, or the transport's)."""

    kind: AbortKind
    source: int
    reason: int
    local: bool
    detail: str = ""
    error: BaseException | None = None

    @property
    def is_timeout(self) -> bool:
        """True for the kinds caused by a deadline."""
        return self.kind in _TIMEOUTS


_TIMEOUTS = frozenset(
    {
        AbortKind.ACSE_TIMEOUT,
        AbortKind.DIMSE_TIMEOUT,
        AbortKind.ABANDONED_TIMEOUT,
        AbortKind.RECEIVE_TIMEOUT,
        AbortKind.NETWORK_TIMEOUT,
        AbortKind.WRITE_TIMEOUT,
    }
)


# ---------------------------------------------------------------------- events


@dataclass(frozen=True, slots=True)
class Established:
    """The association is established (requestor: the A-ASSOCIATE-AC was valid; acceptor: our
    A-ASSOCIATE-AC is queued); DIMSE messages may flow."""

    negotiated: NegotiatedAssociation


@dataclass(frozen=True, slots=True)
class Aborted:
    """The association was aborted; :attr:`AssociationCore.abort_cause` holds the same cause.
    Every operation in progress ends without response."""

    cause: AbortCause


@dataclass(frozen=True, slots=True)
class ResponseComplete:
    """A response to one of our operations, with its data set reassembled (``None`` when it
    has none).  ``final`` is False for Pending; ``abandoned`` when we gave the operation up
    (its data set is then dropped).  ``context_id`` is the context the response came on: its
    transfer syntax is the data set's."""

    context_id: int
    message: ResponseMessage
    message_id: int
    final: bool
    dataset: bytes | None = None
    abandoned: bool = False


@dataclass(frozen=True, slots=True)
class ResponseOnOtherContext:
    """A response came on another presentation context than its request's, one with the same
    abstract syntax, and was accepted (issue a warning; reported once per association)."""

    message: ResponseMessage
    context_id: int
    request_context_id: int


#: what an abort makes moot if the driver has not taken it yet (PS3.8 7.3.2: data in transit
#: may be lost; an operation cut off by an abort must not complete)
_MOOT_AFTER_ABORT = (
    RequestReceived,
    FragmentReceived,
    CancelReceived,
    ResponseComplete,
    ReleaseRequested,
)

CoreEvent = (
    AssociationRequested
    | Established
    | AssociationRejected
    | AssociationRefused
    | RequestReceived
    | FragmentReceived
    | CancelReceived
    | ResponseComplete
    | ResponseOnOtherContext
    | ReleaseRequested
    | ReleaseConfirmed
    | Aborted
    | ConnectionClosed
)


class _Incoming:
    """A response data set being reassembled."""

    __slots__ = ("abandoned", "context_id", "final", "message", "message_id", "parts", "size")

    def __init__(self, event: ResponseReceived) -> None:
        self.context_id = event.context_id
        self.message: ResponseMessage = event.message
        self.message_id = event.message_id
        self.final = event.final
        self.abandoned = event.abandoned
        self.parts: list[bytes] = []
        self.size = 0


class AssociationCore:
    """One DICOM association, sans-IO (see the module docstring for the API and the rules)."""

    def __init__(self, role: Role, config: CoreConfig | None = None) -> None:
        cfg = config if config is not None else CoreConfig()
        self.config = cfg
        self._ul = UpperLayer(
            role,
            artim_timeout=cfg.artim,
            max_pdu_length=cfg.max_pdu_length,
            max_associate_pdu_length=cfg.max_associate_pdu_length,
        )
        self._role = role
        self._events: deque[CoreEvent] = deque()
        #: requestor: the A-ASSOCIATE-RQ sent, to read the AC against
        self.request: AssociateRQ | None = None
        self.negotiated: NegotiatedAssociation | None = None
        self.ops: DIMSEOperations | None = None
        self.rejection: AssociateRJ | None = None
        self.abort_cause: AbortCause | None = None
        #: released: the A-RELEASE exchange completed (or our RP is queued)
        self.released = False
        self._lost: tuple[AbortKind, str, BaseException | None] | None = None
        self._fragment_size = 0
        self._warned_context = False
        self._incoming: _Incoming | None = None
        # deadlines (math.inf: not running)
        self._acse_deadline = math.inf
        self._linger_deadline = math.inf
        self._network_deadline = math.inf
        self._bank: float | None = None  # receive progress: seconds left (None: no transfer)
        self._bank_mark = 0.0
        self._ops_deadline = math.inf  # earliest deadline of our operations (cached)
        self._ops_dirty = False
        #: the request of ours whose data set is being sent (its deadline starts at the end)
        self._sending: Invocation | None = None
        #: the driver wants ``reading(now)`` calls: a network timeout or a transfer in progress
        self.wants_read_time = cfg.network is not None
        #: ``data_to_send()``: every byte queued for the peer since the last call (``b""`` when
        #: none); the machine's own method, so that a write costs no wrapper call
        self.data_to_send: Callable[[], bytes] = self._ul.data_to_send

    # ------------------------------------------------------------------ state

    @property
    def role(self) -> Role:
        """Requestor or acceptor."""
        return self._role

    @property
    def state(self) -> State:
        """The Upper Layer state (Sta1 ... Sta13)."""
        return self._ul.state

    @property
    def is_established(self) -> bool:
        """True while DIMSE messages may be sent (Sta6, or Sta8 answering the peer)."""
        return self.ops is not None and self.abort_cause is None and not self._ul.is_closed

    @property
    def can_answer(self) -> bool:
        """True while a request of the peer's can still be answered (Sta6, Sta8)."""
        state = self._ul.state
        return state is _ESTABLISHED or state is _AWAITING_LOCAL_RELEASE_RESPONSE

    @property
    def is_closed(self) -> bool:
        """True once the machine is back in Sta1 (the transport must be closed)."""
        return self._ul.is_closed

    @property
    def receiving(self) -> bool:
        """True while part of a PDU or of a DIMSE message from the peer has arrived and the
        rest has not: the peer is still sending (the driver uses it to acknowledge at once,
        see :func:`asyncdicom.transport.quickack`)."""
        ops = self.ops
        return self._ul.receiving_pdu or (ops is not None and not ops.idle)

    @property
    def peer_max_pdu_length(self) -> int:
        """The peer's Maximum Length (0: unlimited or unknown)."""
        return self._ul.peer_max_pdu_length

    @property
    def on_transition(self) -> TransitionObserver | None:
        """Called after every Upper Layer transition (for observers)."""
        return self._ul.on_transition

    @on_transition.setter
    def on_transition(self, observer: TransitionObserver | None) -> None:
        self._ul.on_transition = observer

    @property
    def outstanding(self) -> int:
        """How many operations of ours are outstanding."""
        return len(self.ops.invoked) if self.ops is not None else 0

    @property
    def performing(self) -> int:
        """How many of the peer's operations we are performing."""
        return self.ops.performing if self.ops is not None else 0

    @property
    def fragment_size(self) -> int:
        """The PDV payload size for this peer; raises ValueError for a peer maximum too small."""
        size = self._fragment_size
        if size == 0:
            size = self._fragment_size = dimse.fragment_size(self._ul.peer_max_pdu_length)
        return size

    # ------------------------------------------------------------------ outputs

    def next_event(self) -> CoreEvent | NeedData:
        """The next event, or :data:`~.events.NEED_DATA` when none is queued."""
        if self._events:
            return self._events.popleft()
        return NEED_DATA

    def timer_deadline(self) -> float | None:
        """The earliest running deadline (in the clock of ``now``), ``None`` if none runs."""
        deadline = self._ul._artim_deadline
        earliest = deadline if deadline is not None else math.inf
        if self._acse_deadline < earliest:
            earliest = self._acse_deadline
        if self._linger_deadline < earliest:
            earliest = self._linger_deadline
        if self._network_deadline < earliest:
            earliest = self._network_deadline
        bank = self._bank
        if bank is not None and self._bank_mark + bank < earliest:
            earliest = self._bank_mark + bank
        if self._ops_dirty:
            self._refresh_ops_deadline()
        if self._ops_deadline < earliest:
            earliest = self._ops_deadline
        return None if earliest == math.inf else earliest

    # ------------------------------------------------------------------ transport inputs

    def start(self, now: float, *, request: AssociateRQ | None = None) -> None:
        """The transport connection is open.  Requestor: ``request`` is the A-ASSOCIATE-RQ to
        send (Evt1, Evt2; the ACSE timeout starts).  Acceptor: ARTIM starts (Evt5)."""
        if self._role is Role.REQUESTOR:
            if request is None:
                raise LocalProtocolError("the requestor starts with its A-ASSOCIATE-RQ")
            self.request = request
            self._ul.send(request, now=now)
            self._ul.connection_made(now=now)
            if self.config.acse is not None:
                self._acse_deadline = now + self.config.acse
        else:
            self._ul.connection_made(now=now)
        if self.config.network is not None:
            self._network_deadline = now + self.config.network

    def reading(self, now: float) -> None:
        """The driver is about to wait for bytes: the idle and progress clocks count from here
        (needed only while :attr:`wants_read_time`)."""
        if self.config.network is not None and self.abort_cause is None:
            self._network_deadline = now + self.config.network
        if self._bank is not None:
            self._bank_mark = now

    def receive_data(self, data: bytes | memoryview | None, now: float) -> None:
        """Bytes from the peer, or ``None``: the transport closed (Evt17)."""
        bank = self._bank
        if bank is not None and data:
            rate = self.config.min_receive_rate
            dimse_timeout = self.config.dimse
            assert dimse_timeout is not None
            earned = len(data) / rate if rate is not None else math.inf
            self._bank = min(dimse_timeout, bank - (now - self._bank_mark) + earned)
            self._bank_mark = now
        if data is None and self._lost is None and not self._ended():
            self._lost = (AbortKind.CONNECTION_LOST, "the peer closed the connection", None)
        ul = self._ul
        ul.receive_data(data, now=now)
        if ul._events:
            self._pump(now)
        cfg = self.config
        if cfg.network is not None and data and self.abort_cause is None:
            self._network_deadline = now + cfg.network
        # the receive-progress bank runs while a PDU or a message is in progress
        ops = self.ops
        if ops is not None and cfg.dimse is not None:
            if (not ops.idle or ul.receiving_pdu) and not ul.is_closed:
                if self._bank is None:
                    self._bank = cfg.dimse
                    self._bank_mark = now
                self.wants_read_time = True
            elif self._bank is not None:
                self._bank = None
                self.wants_read_time = cfg.network is not None

    def connection_lost(
        self,
        detail: str,
        now: float,
        error: BaseException | None = None,
        *,
        kind: AbortKind = AbortKind.CONNECTION_LOST,
    ) -> None:
        """The transport broke (reset, failed write) or the driver gave up on it (``kind``
        :attr:`AbortKind.WRITE_TIMEOUT`): the abort cause says ``detail``."""
        if self._lost is None and not self._ended():
            self._lost = (kind, detail, error)
        self._ul.receive_data(None, now=now)
        self._pump(now)

    def _ended(self) -> bool:
        return self.abort_cause is not None or self.rejection is not None or self.released

    # ------------------------------------------------------------------ establishment

    def accept(self, ac: AssociateAC, negotiated: NegotiatedAssociation, now: float) -> None:
        """Acceptor: send the A-ASSOCIATE-AC (Evt7); raises LocalProtocolError if the state
        does not allow it (the association is already over)."""
        self._ul.send(ac, now=now)
        self._established(negotiated)

    def reject(self, rj: AssociateRJ, now: float) -> None:
        """Acceptor: send the A-ASSOCIATE-RJ (Evt8)."""
        self._ul.send(rj, now=now)
        self.rejection = rj

    def _established(self, negotiated: NegotiatedAssociation) -> None:
        self.negotiated = negotiated
        self._acse_deadline = math.inf
        self.ops = DIMSEOperations(
            {c.context_id: c.abstract_syntax for c in negotiated.accepted_contexts},
            max_invoked=negotiated.max_operations_invoked,
            max_performed=negotiated.max_operations_performed,
            max_command_length=self.config.max_command_length,
        )
        self._events.append(Established(negotiated))

    def context(self, context_id: int) -> PresentationContext:
        """The accepted context with this ID."""
        assert self.negotiated is not None
        ctx = self.negotiated.context_by_id(context_id)
        assert ctx is not None
        return ctx

    # ------------------------------------------------------------------ operations

    def _ops_or_raise(self) -> DIMSEOperations:
        ops = self.ops
        if ops is None:
            raise LocalProtocolError("the association is not established")
        return ops

    def next_message_id(self) -> int:
        """A Message ID no outstanding operation of ours uses."""
        return self._ops_or_raise().next_message_id()

    def invoke(self, context_id: int, request: Request) -> Invocation:
        """Record a new operation of ours (see :meth:`DIMSEOperations.invoke`); its DIMSE
        deadline starts once its request has been queued completely."""
        return self._ops_or_raise().invoke(context_id, request)

    def forget(self, message_id: int) -> None:
        """Drop an operation whose request could not be sent completely."""
        ops = self.ops
        if ops is not None:
            ops.forget(message_id)
            self._ops_dirty = True
        if self._sending is not None and self._sending.request.message_id == message_id:
            self._sending = None

    def cancel(self, message_id: int) -> CCancelRQ:
        """The C-CANCEL-RQ for our operation (raises LocalProtocolError if it has none)."""
        return self._ops_or_raise().cancel(message_id)

    def abandon(self, message_id: int, now: float) -> None:
        """We gave the operation up: its responses are dropped, and it must end within the
        DIMSE timeout from now."""
        ops = self.ops
        if ops is None:
            return
        invocation = ops.invoked.get(message_id)
        if invocation is None:
            return
        ops.abandon(message_id)
        timeout = self.config.dimse
        invocation.deadline = None if timeout is None else now + timeout
        self._ops_dirty = True

    def respond(self, message_id: int, response: Response) -> None:
        """Record a response to the peer's operation (see :meth:`DIMSEOperations.respond`)."""
        ops = self.ops
        if ops is None:
            raise LocalProtocolError("the association is not established")
        ops.respond(message_id, response)

    def finish(self, message_id: int) -> None:
        """End the peer's operation without (further) response."""
        if self.ops is not None:
            self.ops.finish(message_id)

    # ------------------------------------------------------------------ sending messages

    def send_command(
        self, context_id: int, message: Message, now: float, command: bytes | None = None
    ) -> None:
        """Queue a DIMSE message's command set (``command``: already encoded).  A request of
        ours without a data set starts its DIMSE deadline here; one with a data set when its
        last fragment is queued (:meth:`send_data`)."""
        size = self._fragment_size or self.fragment_size
        data = dimse.encode_command(message) if command is None else command
        ul = self._ul
        if len(data) <= size:  # the fast path: one PDV, command and last bits set
            ul.send_pdata(context_id, 0x03, data, now=now)
        else:
            for header, payload in dimse.pdv_fragments(data, size, command=True):
                ul.send_pdata(context_id, header, payload, now=now)
        ops = self.ops
        if ops is not None and ops.invoked:
            message_id: int = getattr(message, "message_id", 0)
            invocation = ops.invoked.get(message_id)
            if invocation is not None and invocation.request is message:
                if message.has_dataset:
                    self._sending = invocation
                else:
                    self._arm(invocation, now)

    def send_data(
        self, context_id: int, data: bytes | bytearray | memoryview, *, last: bool, now: float
    ) -> int:
        """Queue data-set fragments (a non-last piece must have an even length); the number of
        bytes queued."""
        size = self.fragment_size
        ul = self._ul
        queued = 0
        for header, payload in dimse.pdv_fragments(data, size, command=False, last=last):
            ul.send_pdata(context_id, header, payload, now=now)
            queued += len(payload)
        if last and self._sending is not None:
            self._arm(self._sending, now)
            self._sending = None
        return queued

    def _arm(self, invocation: Invocation, now: float) -> None:
        invocation.sent = True
        timeout = self.config.dimse
        if timeout is not None and not invocation.abandoned:
            invocation.deadline = now + timeout
            if invocation.deadline < self._ops_deadline:
                self._ops_deadline = invocation.deadline

    def _refresh_ops_deadline(self) -> None:
        self._ops_dirty = False
        earliest = math.inf
        if self.ops is not None:
            for invocation in self.ops.invoked.values():
                deadline = invocation.deadline
                if deadline is not None and deadline < earliest:
                    earliest = deadline
        self._ops_deadline = earliest

    # ------------------------------------------------------------------ release and abort

    def release(self, now: float) -> None:
        """Send A-RELEASE-RQ (Evt11); the ACSE timeout bounds the wait for the RP."""
        self._ul.send(ReleaseRQ(), now=now)
        if self.config.acse is not None:
            self._acse_deadline = now + self.config.acse

    def release_response(self, now: float) -> None:
        """Answer the peer's A-RELEASE-RQ (Evt14), after :class:`ReleaseRequested`."""
        self._ul.send(ReleaseRP(), now=now)
        self.released = True

    def abort(
        self,
        now: float,
        *,
        kind: AbortKind = AbortKind.USER,
        detail: str = "",
        error: BaseException | None = None,
        linger: float | None = None,
    ) -> bool:
        """Send A-ABORT (Evt15): source 0 for the user's and timeouts, source 2 with the
        error's reason for :attr:`AbortKind.PROTOCOL`.  Events not yet taken that the abort
        makes moot (requests, fragments, responses, a release request) are dropped.  The peer
        then has ``linger`` seconds (at most ARTIM; default per kind, see ``ABORT_LINGER``) to
        close the connection before :class:`ConnectionClosed` tells the driver to.  False when
        the association is already over (nothing sent)."""
        events = self._events
        if events:
            kept = [e for e in events if not isinstance(e, _MOOT_AFTER_ABORT)]
            if len(kept) != len(events):
                events.clear()
                events.extend(kept)
        return self._abort(now, kind, detail, error, linger)

    def _abort(
        self,
        now: float,
        kind: AbortKind,
        detail: str,
        error: BaseException | None,
        linger: float | None,
        user_source: bool = False,
    ) -> bool:
        if kind is AbortKind.PROTOCOL and isinstance(error, ProtocolError) and user_source is False:
            pdu = Abort(2, int(error.abort_reason))
        else:
            pdu = Abort(0, 0)
        if linger is None:
            linger = _LINGER.get(kind, 0.0)
        try:
            self._ul.send(pdu, now=now)
        except LocalProtocolError:
            # Already over.  In Sta13 (waiting for the peer to close) the wait is shortened
            # to the linger asked for.
            if self._ul.state is State.AWAITING_TRANSPORT_CLOSE and linger is not None:
                self._linger(now, linger)
            return False
        self._acse_deadline = math.inf
        self._set_cause(AbortCause(kind, pdu.source, pdu.reason, True, detail, error))
        if linger is not None:
            self._linger(now, linger)
        return True

    def _linger(self, now: float, linger: float) -> None:
        if linger >= self.config.artim:
            return  # ARTIM (Sta13) bounds the wait
        if linger <= 0:
            self._close_now(now)
        elif now + linger < self._linger_deadline:
            self._linger_deadline = now + linger

    def _close_now(self, now: float) -> None:
        """Our A-ABORT is queued and the peer is not to be waited for: the transport closes
        (Evt17 in Sta13, AR-5)."""
        self._linger_deadline = math.inf
        if not self._ul.is_closed:
            self._ul.receive_data(None, now=now)
            self._pump(now)

    def _set_cause(self, cause: AbortCause) -> None:
        if self.abort_cause is not None:
            return
        self.abort_cause = cause
        self._bank = None
        self._network_deadline = math.inf
        self._acse_deadline = math.inf
        self._ops_deadline = math.inf
        self._incoming = None
        self._sending = None
        if self.ops is not None:
            for invocation in self.ops.invoked.values():
                invocation.deadline = None
        self._events.append(Aborted(cause))

    # ------------------------------------------------------------------ timers

    def handle_timer(self, now: float) -> None:
        """Act on every deadline that ``now`` has reached."""
        ul = self._ul
        artim = ul._artim_deadline
        if artim is not None and now >= artim:
            ul.handle_timer(now=now)
            self._pump(now)
            return
        if now >= self._linger_deadline:
            self._close_now(now)
            return
        cfg = self.config
        if now >= self._acse_deadline:
            self._acse_deadline = math.inf
            what = "A-RELEASE-RP" if self.ops is not None else "A-ASSOCIATE-AC/RJ"
            self.abort(now, kind=AbortKind.ACSE_TIMEOUT, detail=f"no {what} within {cfg.acse} s")
            return
        if now >= self._network_deadline:
            self._network_deadline = math.inf
            self.abort(now, kind=AbortKind.NETWORK_TIMEOUT, detail="network timeout")
            return
        bank = self._bank
        if bank is not None and now >= self._bank_mark + bank:
            self._bank = None
            rate = cfg.min_receive_rate
            detail = "DIMSE timeout: a PDU or message in progress stopped arriving" + (
                f" or came slower than {rate:g} bytes/s" if rate is not None else ""
            )
            self.abort(now, kind=AbortKind.RECEIVE_TIMEOUT, detail=detail)
            return
        if self._ops_dirty:
            self._refresh_ops_deadline()
        if now >= self._ops_deadline and self.ops is not None:
            for invocation in self.ops.invoked.values():
                if invocation.deadline is not None and now >= invocation.deadline:
                    if invocation.abandoned:
                        self.abort(
                            now,
                            kind=AbortKind.ABANDONED_TIMEOUT,
                            detail=f"the peer did not end a cancelled {invocation.request.NAME} "
                            f"within {cfg.dimse} s",
                        )
                    else:
                        self.abort(
                            now,
                            kind=AbortKind.DIMSE_TIMEOUT,
                            detail=f"no DIMSE response within {cfg.dimse} s",
                        )
                    return
            self._ops_dirty = True  # (a stale cache: recomputed at the next look)

    # ------------------------------------------------------------------ the pump

    def _pump(self, now: float) -> None:
        """Turn the Upper Layer's indications into core events."""
        ul_events = self._ul._events
        events = self._events
        while ul_events:
            event = ul_events.popleft()
            if type(event) is DataReceived:
                ops = self.ops
                if ops is None:
                    continue
                try:
                    op_events = ops.receive(event.pdu)
                except ProtocolError as exc:
                    self._abort(now, AbortKind.PROTOCOL, str(exc), exc, None)
                    continue
                for op_event in op_events:
                    if isinstance(op_event, FragmentReceived):
                        if op_event.response:
                            self._response_fragment(op_event, now)
                        else:
                            events.append(op_event)
                    elif isinstance(op_event, ResponseReceived):
                        self._response(op_event, now)
                    else:  # RequestReceived, CancelReceived
                        events.append(op_event)
                    if self.abort_cause is not None:
                        break
            elif isinstance(event, AssociationAborted):
                self._on_aborted(event)
            elif isinstance(event, AssociationAccepted):
                self._on_accepted(event.accept, now)
            elif isinstance(event, AssociationRejected):
                self.rejection = event.reject
                self._acse_deadline = math.inf
                events.append(event)
            elif isinstance(event, AssociationRefused):
                self.rejection = event.reject
                events.append(event)
            elif isinstance(event, ReleaseRequested):
                if event.collision and self._role is Role.ACCEPTOR:
                    continue  # Sta10: answer after the peer's RP (AR-10, then AR-4)
                events.append(ReleaseRequested(collision=event.collision))
            elif isinstance(event, ReleaseConfirmed):
                self.released = True
                self._acse_deadline = math.inf
                events.append(event)
                if self._ul.state is State.COLLISION_ACCEPTOR_AWAITING_LOCAL_RESPONSE:
                    events.append(ReleaseRequested(collision=True))
            elif isinstance(event, ConnectionClosed):
                self._linger_deadline = math.inf
                self._acse_deadline = math.inf
                self._network_deadline = math.inf
                self._bank = None
                events.append(event)
            elif isinstance(event, AssociationRequested):
                events.append(event)

    def _on_accepted(self, ac: AssociateAC, now: float) -> None:
        assert self.request is not None
        try:
            negotiated = process_associate_ac(self.request, ac)
        except ProtocolError as exc:
            # the requestor's own A-ABORT (source 0): its user asked for an association the
            # AC does not give
            self._abort(
                now, AbortKind.PROTOCOL, f"invalid A-ASSOCIATE-AC: {exc}", exc, ABORT_LINGER, True
            )
            return
        self._established(negotiated)

    def _on_aborted(self, event: AssociationAborted) -> None:
        if not event.local:
            cause = AbortCause(AbortKind.PEER, event.source, event.reason, False)
        elif event.error is not None:
            cause = AbortCause(
                AbortKind.PROTOCOL, event.source, event.reason, True, str(event.error), event.error
            )
        else:  # AA-4: the transport went away
            kind, detail, error = self._lost or (
                AbortKind.CONNECTION_LOST,
                "the peer closed the connection",
                None,
            )
            cause = AbortCause(kind, event.source, event.reason, True, detail, error)
        self._set_cause(cause)

    def _response(self, event: ResponseReceived, now: float) -> None:
        if event.request_context_id is not None and not self._warned_context:
            self._warned_context = True
            self._events.append(
                ResponseOnOtherContext(
                    event.message,
                    event.context_id,
                    event.request_context_id,
                )
            )
        if event.message.has_dataset:
            self._incoming = _Incoming(event)
            return
        self._deliver(
            event.context_id,
            event.message,
            event.message_id,
            event.final,
            None,
            event.abandoned,
            now,
        )

    def _response_fragment(self, event: FragmentReceived, now: float) -> None:
        incoming = self._incoming
        if incoming is None:
            return
        if not incoming.abandoned:
            incoming.size += len(event.data)
            limit = self.config.max_dataset_in_memory
            if incoming.size > limit:
                error = DIMSEError(
                    f"response data set larger than {limit} bytes (max_dataset_in_memory)"
                )
                self.abort(now, kind=AbortKind.PROTOCOL, detail=str(error), error=error)
                return
            incoming.parts.append(bytes(event.data))
        if event.last:
            self._incoming = None
            data = None if incoming.abandoned else b"".join(incoming.parts)
            self._deliver(
                incoming.context_id,
                incoming.message,
                incoming.message_id,
                incoming.final,
                data,
                incoming.abandoned,
                now,
            )

    def _deliver(
        self,
        context_id: int,
        message: ResponseMessage,
        message_id: int,
        final: bool,
        dataset: bytes | None,
        abandoned: bool,
        now: float,
    ) -> None:
        if final:
            self._ops_dirty = True
        elif not abandoned and self.ops is not None:
            invocation = self.ops.invoked.get(message_id)
            timeout = self.config.dimse
            if invocation is not None and timeout is not None:
                invocation.deadline = now + timeout  # the next response is due in time
                self._ops_dirty = True
        self._events.append(
            ResponseComplete(context_id, message, message_id, final, dataset, abandoned)
        )
