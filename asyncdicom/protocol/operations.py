"""DIMSE operation bookkeeping, sans-IO (PS3.7 sections 9.1, 10.1 and Annex D.3.3.3).

:class:`DIMSEOperations` sits on top of :class:`~asyncdicom.protocol.dimse.MessageAssembler`
for one established association and owns every rule about *operations* (a request and its
responses), in both directions:

* **Message IDs** of the requests we invoke: allocated so that no two outstanding requests of
  ours share one (PS3.7 9.1.1.1.1: unique "among the operations outstanding").
* **Outstanding operations** in both directions, bounded by the negotiated asynchronous
  operations window (PS3.7 D.3.3.3): ``max_invoked`` for ours, ``max_performed`` for the
  peer's (0 = unlimited; without a negotiated window both are 1).  Invoking beyond our limit is a
  :class:`~asyncdicom.protocol.errors.LocalProtocolError`; a peer that invokes beyond its limit
  has broken the negotiation: :class:`~asyncdicom.protocol.errors.DIMSEError` (A-ABORT).
* **Matching responses** to our requests by Message ID Being Responded To, **pending vs
  final** (Pending statuses 0xFF00/0xFF01 keep a C-FIND, C-GET or C-MOVE open, anything else
  ends it).  A response to no outstanding request, of the wrong type, or Pending for a request
  that has no Pending responses is a protocol error.  A response on another presentation
  context than its request's is accepted when both contexts carry the same abstract syntax
  (some peers answer on any context of the SOP class; DCMTK accepts it too) and reported with
  ``request_context_id``; for another abstract syntax, or when the abstract syntaxes are not
  known, it is a protocol error.
* **C-CANCEL routing** (PS3.7 9.3.2.3 ff.): a received C-CANCEL-RQ is reported for the
  operation it names, if we are performing it and it can be cancelled (a late C-CANCEL that
  crosses the final response is normal and reported with ``known=False``, as is one for an
  operation without a cancel or on another presentation context);
  :meth:`DIMSEOperations.cancel` builds ours and refuses it for operations that cannot be
  cancelled.
* **Data-set routing**: every data-set fragment is reported together with the operation it
  belongs to (the message whose command set preceded it, on the same presentation context), and
  a message on a presentation context that was not accepted is a protocol error.

Each operation is one object in each direction (:class:`Invocation` for ours,
:class:`PeerOperation` for the peer's), and a bounded memory of the Message IDs that ended
recently (h2 keeps one of closed streams) tells a C-CANCEL that crossed the final response
(``late``) from one naming an operation that never existed.

Operations we gave up on locally (cancelled before their final response) stay outstanding until
that final response comes: the window slot is still taken on the peer's side, and its late
responses must still match (:meth:`DIMSEOperations.abandon`).

Nothing here does I/O, reads a clock, or imports an async library.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from .dimse import _IDLE as _ASSEMBLER_IDLE
from .dimse import CommandReceived, MessageAssembler
from .errors import DIMSEError, LocalProtocolError
from .messages import (
    CCancelRQ,
    CFindRQ,
    CGetRQ,
    CMoveRQ,
    Message,
    Request,
    RequestMessage,
    Response,
    ResponseMessage,
)
from .pdu import PDataTF
from .status import PENDING_STATUSES, is_pending

__all__ = [
    "CANCELLABLE",
    "CancelReceived",
    "DIMSEOperations",
    "FragmentReceived",
    "Invocation",
    "OperationEvent",
    "PeerOperation",
    "RequestReceived",
    "ResponseReceived",
    "is_pending",
]

#: requests that C-CANCEL-RQ applies to (PS3.7 9.3.2.3, 9.3.3.3, 9.3.4.3); they are also the
#: only ones whose responses may be Pending (PS3.7 9.1.2 - 9.1.4)
CANCELLABLE: frozenset[type[Request]] = frozenset({CFindRQ, CGetRQ, CMoveRQ})
_MULTI_RESPONSE_FIELDS = frozenset(cls.COMMAND_FIELD for cls in CANCELLABLE)


@dataclass(frozen=True, slots=True)
class RequestReceived:
    """The peer invoked an operation: its command set is complete.

    If ``message.has_dataset``, :class:`FragmentReceived` events with the same
    ``message_id`` follow.
    """

    context_id: int
    message: RequestMessage

    @property
    def message_id(self) -> int:
        """The request's Message ID (the key to answer it with)."""
        return self.message.message_id


@dataclass(frozen=True, slots=True)
class ResponseReceived:
    """A response to one of our requests; ``final`` is False for Pending statuses.

    ``abandoned`` is True when we had given the operation up (:meth:`DIMSEOperations.abandon`):
    nobody waits for it any more.  If ``message.has_dataset``, :class:`FragmentReceived` events
    follow.
    """

    context_id: int
    message: ResponseMessage
    final: bool
    abandoned: bool = False
    #: the context of the request when the response came on another one carrying the same
    #: abstract syntax (``None``: on the request's own context)
    request_context_id: int | None = None

    @property
    def message_id(self) -> int:
        """The Message ID of our request that this answers."""
        return self.message.message_id_being_responded_to


@dataclass(frozen=True, slots=True)
class CancelReceived:
    """The peer sent C-CANCEL-RQ for ``message_id``; ``known`` is False when we are not
    performing such an operation.  ``late`` tells why: True when the operation ended recently
    (the C-CANCEL crossed its final response, which is normal), False when no operation of the
    peer's with that Message ID is remembered (or it cannot be cancelled)."""

    context_id: int
    message_id: int
    known: bool
    #: the C-CANCEL-RQ itself (for observers: traces, hooks)
    message: Message | None = field(default=None, compare=False)
    late: bool = field(default=False, compare=False)


@dataclass(frozen=True, slots=True)
class FragmentReceived:
    """One data-set fragment of the message identified by ``message_id`` (a request of the
    peer's when ``response`` is False, else a response to ours); a zero-copy view of the PDU.
    ``last`` ends that message's data set."""

    context_id: int
    message_id: int
    response: bool
    data: memoryview
    last: bool


OperationEvent = RequestReceived | ResponseReceived | CancelReceived | FragmentReceived


@dataclass(slots=True)
class Invocation:
    """One operation we invoked and whose final response has not arrived."""

    context_id: int
    request: Request
    #: C-CANCEL-RQ sent for it
    cancel_requested: bool = False
    #: we gave it up: its responses are still matched, then dropped
    abandoned: bool = False
    #: number of Pending responses received so far
    pending_responses: int = 0
    #: when the peer must have answered (the DIMSE timeout, in the clock of ``now``; set by
    #: the composed association, ``None``: no deadline running)
    deadline: float | None = None
    #: the request's data set has been sent completely (or it has none)
    sent: bool = False


@dataclass(slots=True)
class PeerOperation:
    """One operation of the peer's that we are performing (request received, final response
    not yet sent)."""

    context_id: int
    #: the request's Command Field
    command_field: int
    #: the peer sent C-CANCEL-RQ for it
    cancel_requested: bool = False


#: how many ended Message IDs are remembered in each direction (classifies late messages)
RECENTLY_ENDED = 64


class DIMSEOperations:
    """The DIMSE operations of one association: invoked and performed, by Message ID.

    ``accepted_contexts`` are the IDs of the accepted presentation contexts; ``max_invoked`` and
    ``max_performed`` the negotiated window from this side's point of view (0 = unlimited).
    """

    __slots__ = (
        "_accepted",
        "_assembler",
        "_current",
        "_ended_invoked",
        "_ended_performed",
        "_ids",
        "_peer",
        "_syntaxes",
        "invoked",
        "max_invoked",
        "max_performed",
    )

    def __init__(
        self,
        accepted_contexts: Iterable[int] | Mapping[int, str],
        *,
        max_invoked: int = 1,
        max_performed: int = 1,
        max_command_length: int = 65536,
    ) -> None:
        if max_invoked < 0 or max_performed < 0:
            raise ValueError("window sizes are >= 0 (0 = unlimited)")
        #: abstract syntax of each accepted context, when given (a response on another
        #: context of the same abstract syntax is then accepted)
        self._syntaxes: Mapping[int, str] = (
            dict(accepted_contexts) if isinstance(accepted_contexts, Mapping) else {}
        )
        self._accepted = frozenset(accepted_contexts)
        self._assembler = MessageAssembler(max_command_length)
        self.max_invoked = max_invoked
        self.max_performed = max_performed
        #: our outstanding operations, by Message ID
        self.invoked: dict[int, Invocation] = {}
        #: the peer's operations we are performing (request received, final response not yet
        #: sent), by Message ID
        self._peer: dict[int, PeerOperation] = {}
        #: Message IDs that ended recently (oldest first), ours and the peer's
        self._ended_invoked: OrderedDict[int, None] = OrderedDict()
        self._ended_performed: OrderedDict[int, None] = OrderedDict()
        self._ids = itertools.cycle(range(1, 65536))
        #: (message ID, is response) of the message whose data set is arriving
        self._current: tuple[int, bool] = (0, False)

    # ------------------------------------------------------------------ state

    @property
    def idle(self) -> bool:
        """True between messages (nothing partially received)."""
        return self._assembler._state == _ASSEMBLER_IDLE

    @property
    def can_invoke(self) -> bool:
        """True when the window allows one more operation of ours."""
        return self.max_invoked == 0 or len(self.invoked) < self.max_invoked

    @property
    def performed(self) -> dict[int, int]:
        """The peer's operations being performed: Message ID to presentation context ID."""
        return {mid: op.context_id for mid, op in self._peer.items()}

    @property
    def performing(self) -> int:
        """How many operations of the peer's we are performing."""
        return len(self._peer)

    def peer_operation(self, message_id: int) -> PeerOperation | None:
        """The peer's operation ``message_id`` while we perform it."""
        return self._peer.get(message_id)

    def ended_recently(self, message_id: int, *, ours: bool) -> bool:
        """True when an operation with this Message ID ended recently (ours or the peer's)."""
        return message_id in (self._ended_invoked if ours else self._ended_performed)

    @staticmethod
    def _remember(ended: OrderedDict[int, None], message_id: int) -> None:
        ended[message_id] = None
        ended.move_to_end(message_id)
        if len(ended) > RECENTLY_ENDED:
            ended.popitem(last=False)

    @property
    def outstanding(self) -> int:
        """How many operations of ours are outstanding (abandoned ones included)."""
        return len(self.invoked)

    # ------------------------------------------------------------------ invoking

    def next_message_id(self) -> int:
        """A Message ID that no outstanding operation of ours uses."""
        invoked = self.invoked
        for _ in range(65535):
            mid = next(self._ids)
            if mid not in invoked:
                return mid
        raise LocalProtocolError("every Message ID is in use by an outstanding operation")

    def invoke(self, context_id: int, request: Request) -> Invocation:
        """Record that we are sending ``request`` (a new operation) on ``context_id``.

        Raises :class:`LocalProtocolError` if the context is not accepted, the Message ID is
        outstanding already, or the window is full (wait for an operation to end first).
        """
        if isinstance(request, CCancelRQ):
            raise LocalProtocolError("C-CANCEL-RQ is not an operation: use cancel()")
        if context_id not in self._accepted:
            raise LocalProtocolError(f"presentation context {context_id} was not accepted")
        msg_id = request.message_id
        if msg_id in self.invoked:
            raise LocalProtocolError(f"Message ID {msg_id} is already outstanding")
        if not self.can_invoke:
            raise LocalProtocolError(
                f"the asynchronous operations window allows {self.max_invoked} outstanding "
                "operation(s)"
            )
        invocation = Invocation(context_id, request)
        self.invoked[msg_id] = invocation
        return invocation

    def cancel(self, message_id: int) -> CCancelRQ:
        """The C-CANCEL-RQ to send (on the operation's context) for our operation
        ``message_id``; raises :class:`LocalProtocolError` if it is not outstanding or is not a
        C-FIND, C-GET or C-MOVE."""
        invocation = self.invoked.get(message_id)
        if invocation is None:
            raise LocalProtocolError(f"no outstanding operation with Message ID {message_id}")
        if type(invocation.request) not in CANCELLABLE:
            raise LocalProtocolError(f"{invocation.request.NAME} cannot be cancelled")
        invocation.cancel_requested = True
        return CCancelRQ(message_id_being_responded_to=message_id)

    def abandon(self, message_id: int) -> None:
        """We no longer want the responses to ``message_id``: they are still matched (the peer
        has not finished it) and reported with ``abandoned=True`` until the final one."""
        invocation = self.invoked.get(message_id)
        if invocation is not None:
            invocation.abandoned = True

    def forget(self, message_id: int) -> None:
        """Drop ``message_id`` from the outstanding operations (after sending it failed: the
        peer never received a complete request)."""
        self.invoked.pop(message_id, None)

    # ------------------------------------------------------------------ performing

    def respond(self, message_id: int, response: Response) -> None:
        """Record that we are sending ``response`` to the peer's operation ``message_id``; a
        final (non-Pending) response ends it.  Raises :class:`LocalProtocolError` if we are not
        performing such an operation, or the response does not answer it."""
        op = self._peer.get(message_id)
        if op is None:
            raise LocalProtocolError(f"no operation of the peer with Message ID {message_id}")
        field = op.command_field
        answered = getattr(response, "message_id_being_responded_to", None)
        if answered != message_id:
            raise LocalProtocolError(
                f"response to Message ID {answered} sent for operation {message_id}"
            )
        if field | 0x8000 != response.COMMAND_FIELD:
            raise LocalProtocolError(f"{response.NAME} does not answer a {_name(field)}")
        if response.status not in PENDING_STATUSES:  # (is_pending, inlined: hot path)
            del self._peer[message_id]
            ended = self._ended_performed  # (_remember, inlined: hot path)
            if message_id in ended:
                ended.move_to_end(message_id)
            ended[message_id] = None
            if len(ended) > RECENTLY_ENDED:
                ended.popitem(last=False)
        elif field not in _MULTI_RESPONSE_FIELDS:
            raise LocalProtocolError(f"a {_name(field)} has no Pending responses")

    def finish(self, message_id: int) -> None:
        """End the peer's operation ``message_id`` without a response (the association is
        going away, or the operation is one that is never answered)."""
        if self._peer.pop(message_id, None) is not None:
            self._remember(self._ended_performed, message_id)

    # ------------------------------------------------------------------ input

    def receive(self, pdu: PDataTF) -> list[OperationEvent]:
        """Process one P-DATA-TF PDU from the peer.

        Raises :class:`DIMSEError` for what the peer must not do: fragments out of order (see
        :class:`MessageAssembler`), a message on a context that was not accepted, a response to
        no outstanding operation, a request whose Message ID is already being performed, or one
        operation more than the negotiated window allows.
        """
        out: list[OperationEvent] = []
        for event in self._assembler.receive(pdu):
            if isinstance(event, CommandReceived):
                out.append(self._on_command(event.context_id, event.message))
            else:
                msg_id, is_response = self._current
                out.append(
                    FragmentReceived(event.context_id, msg_id, is_response, event.data, event.last)
                )
        return out

    def _on_command(self, context_id: int, message: Message) -> OperationEvent:
        if context_id not in self._accepted:
            raise DIMSEError(
                f"{message.NAME} on presentation context {context_id}, which was not accepted"
            )
        if isinstance(message, Response):
            msg_id = message.message_id_being_responded_to
            invocation = self.invoked.get(msg_id)
            if invocation is None:
                if msg_id in self._ended_invoked:
                    raise DIMSEError(
                        f"{message.NAME} to Message ID {msg_id}, whose final response already came"
                    )
                raise DIMSEError(f"{message.NAME} to Message ID {msg_id}, which is not outstanding")
            request = invocation.request
            if message.COMMAND_FIELD != request.COMMAND_FIELD | 0x8000:
                raise DIMSEError(f"{message.NAME} in answer to {request.NAME} {msg_id}")
            moved_from: int | None = None
            if context_id != invocation.context_id:
                # PS3.7 9.3/10.3: a response travels on its request's presentation context.
                # Tolerated for a context of the same abstract syntax (the data set, if any,
                # is in the transfer syntax of the context it came on).
                syntax = self._syntaxes.get(context_id)
                if syntax is None or syntax != self._syntaxes.get(invocation.context_id):
                    raise DIMSEError(
                        f"{message.NAME} to Message ID {msg_id} on presentation context "
                        f"{context_id}, its request went on {invocation.context_id}"
                    )
                moved_from = invocation.context_id
            status = message.status
            final = status not in PENDING_STATUSES
            if not final and request.COMMAND_FIELD not in _MULTI_RESPONSE_FIELDS:
                raise DIMSEError(f"Pending status {status:#06x} in a {message.NAME}")
            if final:
                del self.invoked[msg_id]
                self._remember(self._ended_invoked, msg_id)
            else:
                invocation.pending_responses += 1
            self._current = (msg_id, True)
            if moved_from is not None:
                return ResponseReceived(
                    context_id, message, final, invocation.abandoned, moved_from
                )
            return ResponseReceived(context_id, message, final, invocation.abandoned)
        if isinstance(message, CCancelRQ):
            if message.has_dataset:
                raise DIMSEError("C-CANCEL-RQ announcing a data set (it never has one)")
            target = message.message_id_being_responded_to
            op = self._peer.get(target)
            known = (
                op is not None
                and op.context_id == context_id
                and op.command_field in _MULTI_RESPONSE_FIELDS
            )
            if known:
                assert op is not None
                op.cancel_requested = True
                return CancelReceived(context_id, target, True, message)
            late = op is None and target in self._ended_performed
            return CancelReceived(context_id, target, False, message, late)
        msg_id = message.message_id
        performed = self._peer
        if msg_id in performed:
            raise DIMSEError(f"{message.NAME} with Message ID {msg_id}, which is still in progress")
        if self.max_performed and len(performed) >= self.max_performed:
            raise DIMSEError(
                f"{message.NAME} beyond the negotiated asynchronous operations window "
                f"({self.max_performed} outstanding operation(s) of the peer at most)"
            )
        performed[msg_id] = PeerOperation(context_id, message.COMMAND_FIELD)
        self._current = (msg_id, False)
        return RequestReceived(context_id, message)


def _name(command_field: int) -> str:
    from .messages import MESSAGE_TYPES

    cls = MESSAGE_TYPES.get(command_field)
    return cls.NAME if cls is not None else f"command {command_field:#06x}"
