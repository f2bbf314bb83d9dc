"""The anyio driver: one :class:`BaseAssociation` pumps one sans-IO :class:`UpperLayer`.

The driver knows the DICOM Upper Layer and DIMSE *operations* (requests and their responses),
never a specific service: what to do with a request from the peer is decided by the
:class:`Dispatcher` it is given, and the service helpers (``echo()``, ``store()``, ...) are
added by :mod:`asyncdicom.services` on top of the generic primitives here.

Shape of a running association (PS3.8 section 9 for the machine, PS3.7 for DIMSE):

* a **reader task** receives bytes, feeds the upper layer, and hands P-DATA to the sans-IO
  :class:`~asyncdicom.protocol.operations.DIMSEOperations`, which owns Message IDs, the
  operations window both ways, response matching and C-CANCEL routing.  The reader acts on what
  it reports: a *response* goes to the task awaiting that operation; a *request* from the peer
  is answered at once when the dispatcher has a ready answer (C-ECHO), otherwise it runs in a
  task of its own, its data set streamed to it through a bounded memory stream (a slow disk
  slows the peer down through TCP back-pressure instead of filling memory); a *C-CANCEL*
  cancels the scope of the operation it names;
* a **write lock** serialises writes to the transport; a **message lock** keeps the fragments of
  one DIMSE message together (PS3.8 Annex E: messages are never interleaved);
* timers are cancel-scope deadlines, never polling: the reader's receive carries the earliest of
  the ARTIM deadline (read from the upper layer), the network-idle deadline and the deadline of
  a message in progress; ACSE and DIMSE timeouts wrap the awaits that they bound.  An idle
  association sleeps in ``receive()``.

Operations we invoke (:meth:`BaseAssociation.invoke`, :meth:`BaseAssociation.request`): leaving one
before its final response sends C-CANCEL-RQ where the service has one (C-FIND, C-GET, C-MOVE)
and keeps matching the peer's late responses; the association stays usable, and is aborted only
if the peer does not finish the operation within the DIMSE timeout.  A request whose own
message was cut half-way (cancelled while its data set was being sent) cannot be finished: that
aborts the association.  Any exception escaping ``async with ae.associate(...)`` aborts the
association (A-ABORT); leaving it normally releases it.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections import deque
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import anyio
from anyio.abc import ByteStream, TaskGroup
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from . import errors
from ._readsize import ReadSizer
from .config import AEConfig
from .hooks import HookEvent, Hooks
from .log import get_logger
from .protocol import dimse, messages
from .protocol.errors import BadProtocolVersion, DIMSEError, LocalProtocolError, ProtocolError
from .protocol.events import (
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
)
from .protocol.fsm import State
from .protocol.negotiation import NegotiatedAssociation, PresentationContext
from .protocol.operations import (
    CancelReceived,
    DIMSEOperations,
    FragmentReceived,
    RequestReceived,
    ResponseReceived,
)
from .protocol.pdu import Abort, AssociateRJ, AssociateRQ, ReleaseRP, ReleaseRQ
from .protocol.status import StatusCategory, category, is_pending
from .protocol.upper_layer import Role, UpperLayer
from .refusal import Refusal, RefusalRule
from .transport import close_forcefully, close_quietly, peer_address, tls_alert

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

__all__ = [
    "BaseAssociation",
    "DIMSEResponse",
    "Dispatcher",
    "IncomingRequest",
    "Operation",
    "Owner",
]

#: the stdlib logger behind every association's structlog logger; DIMSE messages are traced
#: at DEBUG only when it is enabled (a cheap, cached check on the hot path)
_TRACE = logging.getLogger("asyncdicom")

#: flush queued P-DATA to the transport once this much is buffered
_FLUSH_THRESHOLD = 256 * 1024
#: data-set fragments buffered between the reader and a handler (each <= one PDU)
_HANDLER_QUEUE = 32
#: the states in which a request from the peer can still be answered (P-DATA allowed, PS3.8
#: Table 9-10: Sta6, and Sta8 after the peer's A-RELEASE-RQ); compared by identity, on the
#: hot path (an Enum's hash is a Python-level call)
_ESTABLISHED = State.ESTABLISHED
_AWAITING_LOCAL_RELEASE_RESPONSE = State.AWAITING_LOCAL_RELEASE_RESPONSE
#: after a local A-ABORT, how long the peer may take to close the connection (state 13)
ABORT_LINGER = 1.0

_assoc_ids = itertools.count(1)

#: what send_message() accepts as a data set
DatasetSource = bytes | bytearray | memoryview | Iterable[bytes] | AsyncIterator[bytes]


# ---------------------------------------------------------------------- what the driver is given


class Owner(Protocol):
    """What an association needs from the application entity that owns it (an
    :class:`asyncdicom.AE` fits)."""

    @property
    def config(self) -> AEConfig:
        """The frozen configuration (timeouts, PDU sizes, ...)."""

    @property
    def hooks(self) -> Hooks:
        """Observers of connection, association, PDU and DIMSE events."""

    async def _on_association_requested(
        self, association: BaseAssociation, rq: AssociateRQ
    ) -> None:
        """Acceptor: answer the peer's A-ASSOCIATE-RQ (``association._accept``/``_reject``)."""


class Dispatcher(Protocol):
    """Serves the requests the peer sends; the driver is given one (see
    :class:`asyncdicom.services.ServiceDispatcher`) and knows nothing of what it does."""

    def answer_now(
        self,
        association: BaseAssociation,
        context: PresentationContext,
        message: messages.RequestMessage,
    ) -> messages.ResponseMessage | None:
        """For a request without a data set: its response when no code needs to run (C-ECHO
        with no handler), sent at once from the reader without a task; else ``None``."""

    def new_request(
        self,
        association: BaseAssociation,
        context: PresentationContext,
        message: messages.RequestMessage,
        data: MemoryObjectReceiveStream[memoryview] | None,
    ) -> IncomingRequest:
        """The object that represents the request to its handler (an :class:`IncomingRequest`
        or a subclass)."""

    async def serve(self, request: IncomingRequest) -> None:
        """Run the request to its end and send its response(s) with
        :meth:`IncomingRequest.respond`.  Runs in a task of its own."""


# ---------------------------------------------------------------------- operations of the peer


class IncomingRequest:
    """A DIMSE request received from the peer (an operation we perform).

    ``message`` is the request (e.g. :class:`~asyncdicom.protocol.messages.CStoreRQ`),
    ``context`` the presentation context it arrived on (its ``transfer_syntax`` is the data set's
    encoding).  A data set, if the request has one, is read **once**, as a stream with
    :meth:`chunks` or whole with :meth:`read`; one that nobody reads is discarded.

    :attr:`cancel_requested` turns True when the peer sends C-CANCEL-RQ for it; the
    :attr:`cancel_scope` (if the serving code set one) is cancelled at that moment, and
    :meth:`wait_cancelled` returns.
    """

    def __init__(
        self,
        association: BaseAssociation,
        context: PresentationContext,
        message: messages.RequestMessage,
        data: MemoryObjectReceiveStream[memoryview] | None,
    ) -> None:
        self.association = association
        self.context = context
        self.message = message
        self.message_id: int = message.message_id
        self._data = data
        self._consumed = False
        self._data_complete = data is None
        self._complete = anyio.Event()
        if data is None:
            self._complete.set()
        #: for plain-function (threaded) handlers: the data set bytes, read before the call
        self.data: bytes | None = None
        #: the peer sent C-CANCEL-RQ for this operation
        self.cancel_requested = False
        #: cancelled when a C-CANCEL-RQ for this operation arrives
        self.cancel_scope: anyio.CancelScope | None = None
        #: a final response has been sent
        self.answered = False
        self._cancelled: anyio.Event | None = None  # made by the first wait_cancelled()

    @property
    def has_dataset(self) -> bool:
        """True when the request carries a data set."""
        return self._data is not None

    @property
    def sop_class_uid(self) -> str:
        """The SOP class the request is about (Affected or Requested SOP Class UID)."""
        return messages.sop_class_uid(self.message)

    async def chunks(self) -> AsyncIterator[memoryview]:
        """The data set's bytes as they arrive, fragment by fragment (each at most one PDU)."""
        if self._data is None:
            return
        if self._consumed:
            raise RuntimeError("the data set of this request was already read")
        self._consumed = True
        async with self._data:
            async for fragment in self._data:
                yield fragment
        if not self._data_complete:
            # the stream ended without the last fragment: the association went away
            self.association._raise_if_gone()
            raise errors.AssociationError("the association ended before the data set was complete")

    async def read(self) -> bytes:
        """The whole data set as bytes (held in memory: prefer :meth:`chunks` for big ones).

        A data set larger than ``AEConfig.max_dataset_in_memory`` aborts the association
        (A-ABORT, source 2) and raises :class:`~asyncdicom.errors.AssociationAborted`.
        """
        association = self.association
        limit = association.config.max_dataset_in_memory
        parts: list[bytes] = []
        size = 0
        async for chunk in self.chunks():
            size += len(chunk)
            if size > limit:
                parts.clear()
                await association._abort_oversized(
                    f"request data set larger than {limit} bytes (max_dataset_in_memory)"
                )
                association._raise_if_gone()
                raise errors.AssociationError("request data set too large")
            parts.append(bytes(chunk))
        return b"".join(parts)

    @property
    def data_unread(self) -> bool:
        """The request has a data set that nobody has started to read (what serving code
        drops with :meth:`discard` once the handler is done)."""
        return self._data is not None and not self._consumed

    async def discard(self) -> None:
        """Read and drop the data set."""
        async for _ in self.chunks():
            pass

    async def respond(
        self, response: messages.ResponseMessage, dataset: DatasetSource | None = None
    ) -> None:
        """Send a response (Pending or final) to this request, after the whole request has
        arrived (PS3.7: a response never overtakes its request)."""
        if not self._complete.is_set():
            await self._complete.wait()
        association = self.association
        # encoded first: a value that cannot be encoded (ValueError) changes nothing
        command = dimse.encode_command(response)
        try:
            association._ops_or_raise().respond(self.message_id, response)
        except LocalProtocolError as exc:
            raise errors.AssociationError(str(exc)) from exc
        if not is_pending(response.status):
            self.answered = True
        await association.send_message(self.context, response, dataset, _command=command)

    async def wait_cancelled(self) -> None:
        """Return once the peer has sent C-CANCEL-RQ for this operation (at once if it has),
        e.g. in a task beside the handler's work, to stop it::

            async with anyio.create_task_group() as tg:
                async def stop_on_cancel() -> None:
                    await request.wait_cancelled()
                    tg.cancel_scope.cancel()
                tg.start_soon(stop_on_cancel)
                ...  # the work

        Waits forever if no C-CANCEL-RQ comes (wrap it in a scope that the work's end cancels).
        """
        if self.cancel_requested:
            return
        if self._cancelled is None:
            self._cancelled = anyio.Event()
        await self._cancelled.wait()

    def _cancel(self) -> None:
        self.cancel_requested = True
        if self.cancel_scope is not None:
            self.cancel_scope.cancel()
        if self._cancelled is not None:
            self._cancelled.set()


# ---------------------------------------------------------------------- operations we invoke


@dataclass(frozen=True, slots=True)
class DIMSEResponse:
    """One response to a request we invoked: the message and its data set bytes, if any.

    ``status`` and :attr:`category` classify it (success, warning, failure, cancel, pending;
    PS3.7 Annex C); :attr:`error_comment` and :attr:`offending_element` are the peer's
    explanation of a failure, when it gave one.  ``dataset`` holds the encoded identifier or
    data set in ``context.transfer_syntax``; :meth:`decode` decodes it with pydicom.
    """

    message: messages.ResponseMessage
    dataset: bytes | None = None
    context: PresentationContext | None = None

    @property
    def status(self) -> int:
        """The Status (0000,0900) value."""
        return int(self.message.status)

    @property
    def category(self) -> StatusCategory:
        """Success, warning, failure, cancel or pending (PS3.7 Annex C)."""
        return category(self.status)

    @property
    def is_pending(self) -> bool:
        """True for a Pending response: more follow."""
        return is_pending(self.status)

    @property
    def ok(self) -> bool:
        """True for Success and Warning statuses: the operation did what was asked."""
        return self.category in (StatusCategory.SUCCESS, StatusCategory.WARNING)

    @property
    def error_comment(self) -> str | None:
        """Error Comment (0000,0902), if the peer sent one."""
        return getattr(self.message, "error_comment", None)

    @property
    def offending_element(self) -> tuple[int, ...] | None:
        """Offending Element (0000,0901) tags, if the peer sent them."""
        return getattr(self.message, "offending_element", None)

    def decode(self) -> Dataset | None:
        """The data set (identifier) decoded with pydicom, or ``None`` if there is none.

        Raises:
            InvalidDicomFile: the bytes cannot be decoded.
            UnsupportedTransferSyntax: the context's transfer syntax is unknown.
        """
        if self.dataset is None:
            return None
        from .storage.codec import decode_dataset

        ts = self.context.transfer_syntax if self.context is not None else None
        return decode_dataset(self.dataset, ts or "")

    def __str__(self) -> str:
        from .protocol.status import describe

        text = f"{self.message.NAME} {describe(self.status)}"
        if self.error_comment:
            text += f" ({self.error_comment})"
        return text


class _Waiter:
    """Where the reader puts the responses to one outstanding operation of ours (lighter than
    a memory stream: one deque and one event)."""

    __slots__ = ("abandoned", "closed", "event", "responses", "slot")

    def __init__(self, slot: anyio.Semaphore | None) -> None:
        self.responses: deque[DIMSEResponse] = deque()
        self.event = anyio.Event()
        self.closed = False
        self.abandoned = False
        #: the window slot this operation holds, released with its final response
        self.slot = slot

    def put(self, response: DIMSEResponse) -> None:
        if not self.abandoned:
            self.responses.append(response)
        self.event.set()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.slot is not None:
            self.slot.release()
            self.slot = None
        self.event.set()

    async def next_response(self) -> DIMSEResponse | None:
        """The next response, or None once closed with nothing left."""
        while True:
            if self.responses:
                return self.responses.popleft()
            if self.closed:
                return None
            self.event = anyio.Event()
            await self.event.wait()

    async def wait_closed(self) -> None:
        while not self.closed:
            self.event = anyio.Event()
            await self.event.wait()


class Operation:
    """An operation we invoked: iterate over its responses with ``async for`` (Pending ones,
    then the final one); :attr:`final` holds the final response once it has arrived.

    Obtained from :meth:`BaseAssociation.invoke`; leaving that block before the final response
    cancels the operation (C-CANCEL-RQ where the service has one) and waits for the final
    response, within the DIMSE timeout.
    """

    def __init__(
        self,
        association: BaseAssociation,
        context: PresentationContext,
        request: messages.RequestMessage,
        waiter: _Waiter,
    ) -> None:
        self.association = association
        self.context = context
        self.request = request
        self.message_id: int = request.message_id
        self._waiter = waiter
        #: the final response, once received
        self.final: DIMSEResponse | None = None
        #: C-CANCEL-RQ was sent for this operation
        self.cancel_sent = False

    def __aiter__(self) -> Operation:
        return self

    async def __anext__(self) -> DIMSEResponse:
        if self.final is not None:
            raise StopAsyncIteration
        response = await self.association._next_response(self._waiter)
        if not response.is_pending:
            self.final = response
        return response

    async def result(self) -> DIMSEResponse:
        """Wait for the final response (Pending ones are skipped) and return it."""
        async for _ in self:
            pass
        assert self.final is not None
        return self.final

    async def cancel(self) -> None:
        """Send C-CANCEL-RQ for this operation (once; nothing for operations that have no
        cancel, or that already ended).  Responses keep coming until the final one."""
        if self.cancel_sent or self.final is not None or self._waiter.closed:
            return
        self.cancel_sent = await self.association._send_cancel(self.context, self.message_id)


# ---------------------------------------------------------------------- the association


class BaseAssociation:
    """One DICOM association over one transport stream (either role): the driver.

    The AE hands out :class:`asyncdicom.Association`, this class with every service's SCU
    helpers (``echo()``, ``store()``, ...) mixed in (:mod:`asyncdicom.services`); obtain one
    with :meth:`asyncdicom.AE.associate` (requestor) or in a handler from
    ``request.association`` (acceptor).  This class offers the generic DIMSE primitives
    (:meth:`invoke`, :meth:`request`, :meth:`send_message`) that the services build on.
    Called ``Association`` before; that name still works here, with a
    :class:`DeprecationWarning`, for one release.
    """

    def __init__(
        self, ae: Owner, stream: ByteStream, role: Role, *, dispatcher: Dispatcher
    ) -> None:
        #: the application entity this association belongs to
        self.ae = ae
        self.config: AEConfig = ae.config
        self.hooks: Hooks = ae.hooks
        self.dispatcher = dispatcher
        self.role = role
        self.id = next(_assoc_ids)
        self.peer_host, self.peer_port = peer_address(stream)
        self._stream = stream
        cfg = self.config
        self._ul = UpperLayer(
            role,
            artim_timeout=cfg.timeouts.artim,
            max_pdu_length=cfg.max_pdu_length,
        )
        self._hooks_version = -1
        self._sync_hooks()
        self.negotiated: NegotiatedAssociation | None = None
        #: requestor: the A-ASSOCIATE-RQ we sent (to interpret the AC against)
        self._request: AssociateRQ | None = None
        self.log = get_logger(assoc_id=self.id, peer=f"{self.peer_host}:{self.peer_port}")
        self._tg: TaskGroup | None = None
        # fast_acquire: an uncontended lock costs no trip through the event loop
        self._write_lock = anyio.Lock(fast_acquire=True)
        self._message_lock = anyio.Lock(fast_acquire=True)
        self._reader_scope: anyio.CancelScope | None = None
        self._reader_unbounded = False
        self._artim_watch = False
        self._network_deadline = math.inf
        self._message_deadline = math.inf
        self._cached_fragment_size = 0
        #: the write in progress, for the write watchdog: a count of writes started, and
        #: whether one is under way
        self._write_serial = 0
        self._writing = False
        self._write_watch = False
        #: set when a write was interrupted: part of a PDU may be on the wire, nothing more
        #: can be sent (not even an A-ABORT), the transport is closed
        self._torn = False
        # outcome
        self._established = anyio.Event()
        self._closed = anyio.Event()
        self.rejection: AssociateRJ | None = None
        self.abort_info: AssociationAborted | None = None
        self._abort_detail = ""
        #: the exception class that waiters see after an abort we caused by a timeout
        self._abort_error: type[errors.AssociationError] | None = None
        #: why the transport went away without a release or abort (peer closed, reset)
        self._lost: str | None = None
        #: the TLS alert that broke the connection, if one did (see tls_alert)
        self._lost_to_tls: str | None = None
        #: why the upper layer itself refused the A-ASSOCIATE-RQ, if it did (see AE.refusal)
        self.provider_refusal: Refusal | None = None
        #: DIMSE messages are logged at DEBUG (refreshed by the reader and by each send)
        self._tracing = False
        self.released = False
        # DIMSE: the sans-IO bookkeeping (created once the association is established), the
        # waiters of our operations, and the peer's operations being performed
        self._ops: DIMSEOperations | None = None
        self._waiters: dict[int, _Waiter] = {}
        self._invoke_slots: anyio.Semaphore | None = None
        self._performing: dict[int, IncomingRequest] = {}
        #: the response whose data set is arriving: (waiter, response, parts, size)
        self._incoming_response: tuple[_Waiter | None, DIMSEResponse, list[bytes], int] | None = (
            None
        )
        #: the request whose data set is arriving, and the stream feeding its handler
        self._incoming_request: IncomingRequest | None = None
        self._incoming_send: MemoryObjectSendStream[memoryview] | None = None
        self._incoming_dropped = False
        self._handlers_active = 0
        self._handlers_idle = anyio.Event()
        self._handlers_idle.set()

    # ------------------------------------------------------------------ public properties

    @property
    def is_established(self) -> bool:
        """True while the association can carry DIMSE messages (accepted, and neither aborted
        nor closed)."""
        return (
            self._established.is_set()
            and self.negotiated is not None
            and self.abort_info is None
            and not self._closed.is_set()
        )

    @property
    def is_closed(self) -> bool:
        """True once the transport is closed (released, rejected or aborted)."""
        return self._closed.is_set()

    @property
    def accepted_contexts(self) -> tuple[PresentationContext, ...]:
        """The accepted presentation contexts (empty before negotiation)."""
        return self.negotiated.accepted_contexts if self.negotiated else ()

    @property
    def calling_ae_title(self) -> str:
        """The requestor's AE title."""
        return self.negotiated.calling_ae_title if self.negotiated else ""

    @property
    def called_ae_title(self) -> str:
        """The acceptor's AE title as the requestor called it."""
        return self.negotiated.called_ae_title if self.negotiated else ""

    @property
    def peer_ae_title(self) -> str:
        """The other side's AE title."""
        if self.role is Role.REQUESTOR:
            return self.called_ae_title
        return self.calling_ae_title

    @property
    def outstanding(self) -> int:
        """How many operations of ours are outstanding (sent, final response not yet in)."""
        return self._ops.outstanding if self._ops is not None else 0

    @property
    def performing(self) -> int:
        """How many of the peer's operations we are performing right now."""
        return len(self._ops.performed) if self._ops is not None else 0

    def __repr__(self) -> str:
        return (
            f"<Association #{self.id} {self.role.name.lower()} peer={self.peer_ae_title!r} "
            f"{self.peer_host}:{self.peer_port} state={self._ul.state.name}>"
        )

    # ------------------------------------------------------------------ running

    def _now(self) -> float:
        return anyio.current_time()

    async def _run_reader(self, *, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
        """Receive, feed the upper layer, act on its events; ends when the transport closes.

        A receive is bounded by a cancel scope only while a deadline exists (ARTIM running,
        a network timeout configured, or a PDU or message in progress), so an idle
        association costs no timer at all.  Processing of what was received is never inside
        that scope: a deadline cannot cut a message in half, and the time we spend
        processing is never held against the peer.

        A PDU or message in progress must keep coming (slowloris): the time the reader may
        wait is a bank of at most ``Timeouts.dimse`` seconds, which each wait draws on and
        each byte received refills by ``1 / Timeouts.min_receive_rate`` seconds.  A peer
        sending at least that rate never runs out; one trickling a byte every few seconds
        is aborted once the bank is empty.
        """
        task_status.started()
        timeouts = self.config.timeouts
        network_timeout = timeouts.network
        dimse_timeout = timeouts.dimse
        rate = timeouts.min_receive_rate
        # seconds earned per byte received while a transfer is in progress
        per_byte = 1.0 / rate if rate is not None else math.inf
        # seconds the reader may still wait for the transfer in progress (None: no transfer)
        bank: float | None = None
        ul = self._ul
        stream = self._stream
        # how much to ask for per receive (trio reads that much from the socket at once)
        sizer = ReadSizer()
        size = sizer.size
        try:
            while not self._closed.is_set():
                if self.hooks.version != self._hooks_version:
                    self._sync_hooks()
                # DIMSE tracing at DEBUG: looked up once per receive, not per message
                self._tracing = _TRACE.isEnabledFor(logging.DEBUG)
                # A PDU or a message that has started must keep coming (see above): its
                # grace is the DIMSE timeout.  The clock is read only when a deadline needs
                # it: an idle association costs nothing.
                ops = self._ops
                grace = (
                    dimse_timeout
                    if ops is not None and (not ops.idle or ul.receiving_pdu)
                    else None
                )
                if grace is not None or network_timeout is not None:
                    now = self._now()
                    if network_timeout is not None:
                        self._network_deadline = now + network_timeout
                if grace is not None:
                    if bank is None:
                        bank = grace
                    self._message_deadline = now + bank
                elif bank is not None:
                    bank = None
                    self._message_deadline = math.inf
                deadline = self._deadline()
                data: bytes | None
                try:
                    if deadline == math.inf:
                        self._reader_unbounded = True
                        try:
                            data = await stream.receive(size)
                        finally:
                            self._reader_unbounded = False
                    else:
                        with anyio.CancelScope(deadline=deadline) as scope:
                            self._reader_scope = scope
                            data = await stream.receive(size)
                        self._reader_scope = None
                        if scope.cancelled_caught:
                            await self._on_deadline()
                            continue
                except (anyio.EndOfStream, anyio.BrokenResourceError, OSError) as exc:
                    self._connection_lost(exc)
                    data = None
                except anyio.ClosedResourceError:
                    data = None
                received = self._now()
                if data is not None:
                    size = sizer.update(len(data))
                    if bank is not None:
                        assert dimse_timeout is not None
                        bank = min(dimse_timeout, bank - (received - now) + len(data) * per_byte)
                if data is not None and self.hooks.wants(HookEvent.PDU_RECEIVED):
                    self.hooks.emit(HookEvent.PDU_RECEIVED, self, data=data)
                ul.receive_data(data, now=received)
                await self._process_events()
                if data is None:
                    break
        finally:
            await self._finish()

    def _deadline(self) -> float:
        artim = self._ul.timer_deadline()
        return min(
            artim if artim is not None else math.inf,
            self._network_deadline,
            self._message_deadline,
        )

    def _update_deadline(self) -> None:
        """After an input from outside the reader: move the reader's deadline, or, if the
        reader waits without one, start a one-off task for the ARTIM timer."""
        scope = self._reader_scope
        if scope is not None:
            scope.deadline = self._deadline()
        elif (
            self._reader_unbounded
            and not self._artim_watch
            and self._ul.timer_deadline() is not None
            and self._tg is not None
        ):
            self._artim_watch = True
            self._tg.start_soon(self._watch_artim)

    async def _watch_artim(self) -> None:
        try:
            while (deadline := self._ul.timer_deadline()) is not None:
                await anyio.sleep_until(deadline)
                if self._ul.timer_deadline() is not None:
                    self._ul.handle_timer(now=self._now())
                    await self._process_events()
        finally:
            self._artim_watch = False

    async def _on_deadline(self) -> None:
        now = self._now()
        artim = self._ul.timer_deadline()
        if artim is not None and now >= artim:
            self.log.info("artim_expired", state=self._ul.state.name)
            self._ul.handle_timer(now=now)
        elif now >= self._network_deadline:
            self.log.warning("network_timeout", timeout=self.config.timeouts.network)
            self._abort_detail = "network timeout"
            self._abort_error = errors.NetworkTimeout
            self._network_deadline = math.inf
            self._send_abort_now()
        elif now >= self._message_deadline:
            timeouts = self.config.timeouts
            self.log.warning(
                "dimse_timeout_mid_message",
                timeout=timeouts.dimse,
                min_receive_rate=timeouts.min_receive_rate,
            )
            rate = timeouts.min_receive_rate
            self._abort_detail = "DIMSE timeout: a PDU or message in progress stopped arriving" + (
                f" or came slower than {rate:g} bytes/s" if rate is not None else ""
            )
            self._abort_error = errors.DIMSETimeout
            self._message_deadline = math.inf
            self._send_abort_now()
        await self._process_events()
        if self._abort_error is not None and not self._closed.is_set():
            # a silent peer will not close the connection either: do not wait ARTIM for it
            await close_quietly(self._stream)

    def _send_abort_now(self) -> None:
        """A-ABORT request (Evt15); records the abort so that waiters raise it."""
        try:
            self._ul.send(Abort(0, 0), now=self._now())
        except LocalProtocolError:
            return
        if self.abort_info is None:
            self.log.info("association_aborted", local=True, detail=self._abort_detail or None)
            self.abort_info = AssociationAborted(0, 0, local=True)
            self.hooks.emit(HookEvent.ASSOCIATION_ABORTED, self, abort=self.abort_info)

    async def _flush(self) -> None:
        """Write whatever the upper layer has queued.

        Bytes are taken from the upper layer in the order they were queued and written under
        a FIFO lock, so concurrent flushes keep the wire order.
        """
        data = self._ul.data_to_send()
        if not data or self._torn:
            return
        if self.hooks.wants(HookEvent.PDU_SENT):
            self.hooks.emit(HookEvent.PDU_SENT, self, data=data)
        lost = False
        async with self._write_lock:
            if self._torn:
                return
            # what the write watchdog looks at (no timer per PDU: see _watch_writes); the
            # watchdog runs only while an established association is writing (before that
            # only a few kilobytes are ever written: the kernel's buffer takes them at once)
            self._write_serial += 1
            self._writing = True
            if not self._write_watch and self._ops is not None:
                self._start_write_watch()
            try:
                await self._stream.send(data)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError) as exc:
                if not self._torn:
                    self.log.info("transport_send_failed", error=str(exc))
                self._connection_lost(exc)
                self._ul.receive_data(None, now=self._now())
                lost = True
            except anyio.get_cancelled_exc_class():
                # A write cancelled half-way (trio can stop mid-buffer) leaves an unknown part
                # of a PDU on the wire: the byte stream cannot be trusted any more, so close
                # the transport at once; the peer sees the connection drop (A-P-ABORT).
                self._torn = True
                self.log.info("write_interrupted")
                with anyio.CancelScope(shield=True):
                    await close_quietly(self._stream)
                    self._ul.receive_data(None, now=self._now())
                raise
            finally:
                self._writing = False
        if lost:
            # act on the loss now (A-P-ABORT indication, waiters woken), not when the reader
            # next wakes up: a sender must see "connection lost", not a state-machine refusal
            await self._process_events()
            return
        self._update_deadline()

    def _start_write_watch(self) -> None:
        timeout = self.config.timeouts.write
        tg = self._tg
        if timeout is None or tg is None or self._closed.is_set():
            return
        self._write_watch = True
        try:
            tg.start_soon(self._watch_writes, timeout)
        except RuntimeError:  # the association's task group has ended
            self._write_watch = False

    async def _watch_writes(self, timeout: float) -> None:
        """The write timeout, without a timer per PDU sent: every quarter of ``timeout`` look
        at the write in progress; the same one seen in progress five times in a row has taken
        at least ``timeout`` (and less than 1.25 times it): the peer stopped reading, or reads
        too slowly to take one PDU in that time.  No A-ABORT can get through a full window,
        so the connection is dropped (the peer sees A-P-ABORT) and the writer is woken.

        The watchdog ends at the first look that finds no write in progress (the next write
        starts it again), so an idle association has none: no task, no timer."""
        interval = timeout / 4
        seen = -1
        count = 0
        closed = self._closed
        try:
            while True:
                with anyio.move_on_after(interval):
                    await closed.wait()
                if closed.is_set() or not self._writing:
                    return
                if self._write_serial == seen:
                    count += 1
                    if count >= 4:
                        self._write_stalled(timeout)
                        await close_forcefully(self._stream)
                        return
                else:
                    seen = self._write_serial
                    count = 0
        finally:
            self._write_watch = False

    def _write_stalled(self, timeout: float) -> None:
        """A write took longer than the write timeout: records why the association ends."""
        self.log.warning("write_stalled", timeout=timeout)
        self._torn = True
        if self.abort_info is None and self._abort_error is None:
            self._abort_detail = (
                f"a PDU could not be sent in {timeout:g} s: the peer stopped reading or "
                "reads too slowly (write timeout)"
            )
            self._abort_error = errors.DIMSETimeout

    def _connection_lost(self, exc: BaseException | None) -> None:
        """Note why the transport went away, if nobody ended the association first."""
        if self.abort_info is not None or self.rejection is not None or self.released:
            return
        if self._lost is None:
            if exc is None or isinstance(exc, anyio.EndOfStream):
                self._lost = "the peer closed the connection"
            else:
                cause = exc.__cause__ if exc.__cause__ is not None else exc
                text = str(cause) or type(cause).__name__
                self._lost = f"the connection to the peer broke ({text})"
                self._lost_to_tls = tls_alert(exc)
            self._abort_detail = self._abort_detail or self._lost

    async def _process_events(self) -> None:
        """Drain the upper layer's events (called after every input)."""
        while True:
            event = self._ul.next_event()
            if event is NEED_DATA:
                break
            if isinstance(event, DataReceived):
                ops = self._ops
                if ops is None:  # the FSM delivers P-DATA only once established
                    continue
                try:
                    op_events = ops.receive(event.pdu)
                except ProtocolError as exc:
                    await self._protocol_abort(exc)
                    continue
                for op_event in op_events:
                    if isinstance(op_event, FragmentReceived):
                        await self._on_fragment(op_event)
                    elif isinstance(op_event, RequestReceived):
                        await self._on_request(op_event)
                    elif isinstance(op_event, ResponseReceived):
                        self._on_response(op_event)
                    else:
                        self._on_cancel(op_event)
            elif isinstance(event, AssociationRequested):
                await self.ae._on_association_requested(self, event.request)
            elif isinstance(event, AssociationAccepted):
                self._on_accepted(event)
            elif isinstance(event, AssociationRejected):
                self.rejection = event.reject
                self.hooks.emit(HookEvent.ASSOCIATION_REJECTED, self, reject=event.reject)
                self._established.set()
            elif isinstance(event, AssociationRefused):
                self._on_refused_by_provider(event)
            elif isinstance(event, ReleaseRequested):
                self._on_release_requested(event)
            elif isinstance(event, ReleaseConfirmed):
                self._on_release_confirmed()
            elif isinstance(event, AssociationAborted):
                self.abort_info = event
                self.log.info(
                    "association_aborted",
                    source=event.source,
                    reason=event.reason,
                    local=event.local,
                    error=str(event.error) if event.error else None,
                    detail=self._lost or self._abort_detail or None,
                )
                self.hooks.emit(HookEvent.ASSOCIATION_ABORTED, self, abort=event)
                # establishment (if under way) is over; waiters learn of the abort now
                self._established.set()
                self._wake_waiters()
            elif isinstance(event, ConnectionClosed):
                await self._flush()
                self._closed.set()
        await self._flush()

    def _on_refused_by_provider(self, event: AssociationRefused) -> None:
        """Acceptor: the upper layer rejected an A-ASSOCIATE-RQ it could not accept (a
        protocol version without version 1); the RJ is on its way. Logged like the AE's own
        refusals; ``AE.refusal()`` tells the ``ASSOCIATION_REJECTED`` hooks the rule."""
        self.rejection = event.reject
        rule = (
            RefusalRule.PROTOCOL_VERSION
            if isinstance(event.error, BadProtocolVersion)
            else RefusalRule.OTHER
        )
        self.provider_refusal = Refusal(rule, str(event.error))
        self._log_rejection(event.reject, self.provider_refusal, user=None, identity_type=None)
        self.hooks.emit(HookEvent.ASSOCIATION_REJECTED, self, reject=event.reject)

    def _log_rejection(self, rj: AssociateRJ, refusal: Refusal, **identity: Any) -> None:
        """The one ``association_rejected`` warning of a refused A-ASSOCIATE-RQ (``identity``:
        the ``user`` and ``identity_type`` it asked with)."""
        self.log.warning(
            "association_rejected",
            rule=refusal.rule.value,
            detail=refusal.detail,
            result=rj.result,
            source=rj.source,
            reason=rj.reason,
            reason_text=str(errors.AssociationRejected(rj.result, rj.source, rj.reason)),
            **identity,
        )

    async def _protocol_abort(self, exc: ProtocolError) -> None:
        """A DIMSE-level protocol error from the peer: A-ABORT (provider) and close."""
        self.log.warning("dimse_protocol_error", error=str(exc))
        self._abort_detail = str(exc)
        try:
            self._ul.send(Abort(2, int(exc.abort_reason)), now=self._now())
        except LocalProtocolError:
            return
        self.abort_info = AssociationAborted(2, int(exc.abort_reason), local=True, error=exc)
        self.hooks.emit(HookEvent.ASSOCIATION_ABORTED, self, abort=self.abort_info)
        self._wake_waiters()

    def _wake_waiters(self) -> None:
        """The association is over (aborted): every operation of ours waiting for a response
        learns it now, not when the peer finally closes the connection (PS3.8 state 13 may
        last the ARTIM timeout)."""
        for waiter in list(self._waiters.values()):
            waiter.close()
        self._waiters.clear()

    async def _abort_oversized(self, detail: str) -> None:
        """A peer sent more than a limit allows: A-ABORT (provider) and close at once."""
        with anyio.CancelScope(shield=True):
            if self._closed.is_set():
                return
            await self._protocol_abort(DIMSEError(detail))
            await self._process_events()
            await close_quietly(self._stream)

    async def _finish(self) -> None:
        """The transport is gone or going: wake every waiter, close the stream."""
        self._closed.set()
        self._established.set()
        self._wake_waiters()
        if self._incoming_send is not None:
            self._incoming_send.close()
            self._incoming_send = None
        if self._incoming_request is not None:
            self._incoming_request._complete.set()
            self._incoming_request = None
        await close_quietly(self._stream)
        if self.released:
            self.log.info("association_released")
            self.hooks.emit(HookEvent.ASSOCIATION_RELEASED, self)
        self.hooks.emit(HookEvent.CONNECTION_CLOSED, self)
        self.log.debug("connection_closed")

    def _sync_hooks(self) -> None:
        """Observe state transitions only while someone listens (a hook added after the
        association started counts from the next input or message on)."""
        hooks = self.hooks
        if hooks.version != self._hooks_version:
            self._hooks_version = hooks.version
            wanted = hooks.wants(HookEvent.STATE_TRANSITION)
            self._ul.on_transition = self._on_transition if wanted else None

    def _on_transition(self, old: Any, event: Any, action: Any, new: Any) -> None:
        self.hooks.emit(
            HookEvent.STATE_TRANSITION,
            self,
            old_state=old,
            fsm_event=event,
            action=action,
            new_state=new,
        )

    # ------------------------------------------------------------------ establishment

    def _on_accepted(self, event: AssociationAccepted) -> None:
        """Requestor: A-ASSOCIATE-AC received; compute what was agreed."""
        from .protocol.negotiation import process_associate_ac

        assert self._request is not None
        try:
            self.negotiated = process_associate_ac(self._request, event.accept)
        except ProtocolError as exc:
            self._abort_detail = f"invalid A-ASSOCIATE-AC: {exc}"
            self.log.warning("invalid_associate_ac", error=str(exc))
            self._send_abort_now()
            self.abort_info = AssociationAborted(0, 0, local=True, error=exc)
            self._established.set()
            return
        self._setup_window()
        self.log = self.log.bind(peer_ae=self.peer_ae_title)
        self.log.info("association_accepted", contexts=len(self.accepted_contexts))
        self.hooks.emit(
            HookEvent.ASSOCIATION_ACCEPTED, self, refused=self.negotiated.refused_contexts
        )
        self._established.set()

    def _setup_window(self) -> None:
        """Once negotiated: the DIMSE bookkeeping with the agreed contexts and window."""
        negotiated = self.negotiated
        assert negotiated is not None
        invoked = negotiated.max_operations_invoked
        self._ops = DIMSEOperations(
            (c.context_id for c in negotiated.accepted_contexts),
            max_invoked=invoked,
            max_performed=negotiated.max_operations_performed,
            max_command_length=self.config.max_command_set_length,
        )
        # ours wait for a free slot; the peer's are checked by DIMSEOperations
        self._invoke_slots = anyio.Semaphore(invoked, fast_acquire=True) if invoked else None

    async def _accept(self, ac: Any, negotiated: NegotiatedAssociation) -> None:
        """Acceptor: send A-ASSOCIATE-AC."""
        try:
            self._ul.send(ac, now=self._now())
        except LocalProtocolError as exc:
            # Usually a PDU that arrived right behind the A-ASSOCIATE-RQ (in the same read)
            # already aborted the association (Sta13) or the peer closed it: nothing left to
            # accept.  Otherwise the answer itself could not be sent: abort, never leave the
            # peer waiting.
            await self._unsendable_answer("A-ASSOCIATE-AC", exc)
            return
        self.negotiated = negotiated
        self._setup_window()
        self.log = self.log.bind(peer_ae=self.peer_ae_title)
        # which contexts were refused and why, and which fell back to the default roles
        refused = negotiated.refused_contexts
        notes = {
            "refused": [c.describe() for c in refused],
            "default_roles": [c.describe() for c in negotiated.default_role_contexts],
        }
        self.log.info(
            "association_accepted",
            contexts=len(self.accepted_contexts),
            **{key: value for key, value in notes.items() if value},
        )
        self._established.set()
        self.hooks.emit(HookEvent.ASSOCIATION_ACCEPTED, self, refused=refused)

    async def _reject(self, rj: AssociateRJ) -> None:
        """Acceptor: send A-ASSOCIATE-RJ."""
        try:
            self._ul.send(rj, now=self._now())
        except LocalProtocolError as exc:
            await self._unsendable_answer("A-ASSOCIATE-RJ", exc)  # as in _accept
            return
        self.rejection = rj
        self.hooks.emit(HookEvent.ASSOCIATION_REJECTED, self, reject=rj)

    async def _unsendable_answer(self, what: str, exc: LocalProtocolError) -> None:
        """The answer to an A-ASSOCIATE-RQ was refused by the upper layer: nothing to do if
        the association is already over, else A-ABORT (it cannot stay unanswered)."""
        if self._ul.state is not State.AWAITING_LOCAL_ASSOCIATE_RESPONSE:
            return
        self.log.error("associate_answer_unsendable", pdu=what, error=str(exc))
        self._abort_detail = f"the {what} could not be sent: {exc}"
        self._send_abort_now()
        await self._process_events()

    # ------------------------------------------------------------------ release / abort

    def _on_release_requested(self, event: ReleaseRequested) -> None:
        if event.collision and self.role is Role.ACCEPTOR:
            # Sta10: wait for the peer's RP (AR-10), then answer (AR-4); see _on_release_confirmed
            return
        assert self._tg is not None
        self._tg.start_soon(self._answer_release)

    async def _answer_release(self) -> None:
        # Answer only after our own in-flight handlers have sent their responses.
        await self._handlers_idle.wait()
        try:
            self._ul.send(ReleaseRP(), now=self._now())
        except LocalProtocolError:
            return
        self.released = True
        await self._process_events()

    def _on_release_confirmed(self) -> None:
        self.released = True
        if (
            self.role is Role.ACCEPTOR
            and self._ul.state is State.COLLISION_ACCEPTOR_AWAITING_LOCAL_RESPONSE
        ):
            # collision, acceptor side (Sta12): now send our RP (AR-4)
            assert self._tg is not None
            self._tg.start_soon(self._answer_release)

    async def release(self) -> None:
        """Release the association (A-RELEASE) and wait for the peer's confirmation.

        If no A-RELEASE-RP arrives within the ACSE timeout the association is aborted and
        :class:`~asyncdicom.errors.ACSETimeout` raised.
        """
        if self._closed.is_set():
            return
        try:
            self._ul.send(ReleaseRQ(), now=self._now())
        except LocalProtocolError:
            return
        await self._flush()
        timeout = self.config.timeouts.acse
        with anyio.move_on_after(timeout) as scope:
            await self._closed.wait()
        if scope.cancelled_caught:
            await self.abort(linger=0)
            raise errors.ACSETimeout(f"no A-RELEASE-RP within {timeout} s")
        self.released = self.released or self.abort_info is None

    async def abort(self, *, linger: float = ABORT_LINGER) -> None:
        """Abort the association (A-ABORT, source service-user) and close the transport.

        After the A-ABORT the peer is given ``linger`` seconds (at most the ARTIM timeout) to
        close the connection, so that the A-ABORT is read before the connection goes; then the
        transport is closed from this side.  PS3.8 leaves the ARTIM value to the
        implementation: this is a short ARTIM for state 13.  ``linger=0`` closes at once (the
        peer has stopped answering anyway: an ACSE or DIMSE timeout).
        """
        with anyio.CancelScope(shield=True):
            if self._closed.is_set():
                return
            self._abort_detail = self._abort_detail or "aborted by the local user"
            self._send_abort_now()
            await self._process_events()
            await self._close_after_abort(linger)

    async def _close_after_abort(self, linger: float = ABORT_LINGER) -> None:
        """After an A-ABORT we sent: give the peer ``linger`` seconds (at most ARTIM) to close
        the connection, then close it from this side."""
        with anyio.CancelScope(shield=True):
            wait = min(linger, self.config.timeouts.artim)
            if wait > 0:
                with anyio.move_on_after(wait):
                    await self._closed.wait()
            if not self._closed.is_set():
                # the reader sees the stream closed (Evt17: AR-5 in Sta13) and finishes
                await close_quietly(self._stream)
                await self._closed.wait()

    async def wait_closed(self) -> None:
        """Wait until the transport is closed."""
        await self._closed.wait()

    def _raise_if_gone(self) -> None:
        if self.abort_info is not None:
            if self._abort_error is not None:
                raise self._abort_error(f"association aborted: {self._abort_detail}")
            if self._lost is not None:
                raise errors.ConnectionLost(self._lost)
            a = self.abort_info
            raise errors.AssociationAborted(
                a.source, a.reason, local=a.local, detail=self._abort_detail
            )
        if self._closed.is_set() or not self._established.is_set():
            raise errors.AssociationError("the association is not established")

    # ------------------------------------------------------------------ DIMSE: receiving
    def _ops_or_raise(self) -> DIMSEOperations:
        ops = self._ops
        if ops is None:
            raise errors.AssociationError("the association is not established")
        return ops

    # ------------------------------------------------------------------ DIMSE: receiving

    def _context(self, context_id: int) -> PresentationContext:
        """The accepted context with this ID (DIMSEOperations checked that it is accepted)."""
        assert self.negotiated is not None
        ctx = self.negotiated.context_by_id(context_id)
        assert ctx is not None
        return ctx

    def _trace(self, what: str, message: messages.Message, context_id: int) -> None:
        """One DEBUG line per DIMSE message (``-vv`` in the apps)."""
        fields: dict[str, Any] = {"message": message.NAME, "context_id": context_id}
        for name in ("message_id", "message_id_being_responded_to", "status"):
            value = getattr(message, name, None)
            if value is not None:
                fields[name] = f"0x{value:04X}" if name == "status" else value
        uid = getattr(message, "affected_sop_instance_uid", None)
        if uid:
            fields["sop_instance_uid"] = uid
        self.log.debug(what, **fields)

    async def _on_request(self, event: RequestReceived) -> None:
        message = event.message
        state = self._ul.state
        if state is not _ESTABLISHED and state is not _AWAITING_LOCAL_RELEASE_RESPONSE:
            # The association ended (the peer closed, reset or aborted) while requests it had
            # sent before were still waiting in our input: nobody is left to answer.
            return
        if self._tracing:
            self._trace("dimse_received", message, event.context_id)
        if self.hooks.wants(HookEvent.DIMSE_RECEIVED):
            self.hooks.emit(HookEvent.DIMSE_RECEIVED, self, message=message)
        context = self._context(event.context_id)
        if not message.has_dataset and not self._message_lock.locked():
            # Nothing to run (C-ECHO's default, or an operation nobody handles): answer at
            # once from the reader, without a task.  Only when no message of ours is being
            # sent, so the reader never waits behind our own long transfer.
            response = self.dispatcher.answer_now(self, context, message)
            command = None
            if response is not None:
                try:  # noqa: SIM105 (contextlib.suppress costs more on this hot path)
                    command = dimse.encode_command(response)
                except ValueError:
                    pass  # left to the dispatcher's task, below
            if response is not None and command is not None:
                ops = self._ops
                assert ops is not None
                ops.respond(event.message_id, response)
                if not self._queue_one_pdu_message(context, response, command):
                    await self.send_message(context, response, _command=command)
                await self._flush()
                return
            # (a response that cannot be encoded is left to the dispatcher's task, which
            # knows how to answer without the offending values)
        # A request from the peer: serve it in its own task.
        data_recv: MemoryObjectReceiveStream[memoryview] | None = None
        if message.has_dataset:
            send, data_recv = anyio.create_memory_object_stream[memoryview](_HANDLER_QUEUE)
            self._incoming_send = send
            self._incoming_dropped = False
        request = self.dispatcher.new_request(self, context, message, data_recv)
        if data_recv is not None:
            self._incoming_request = request
        self._performing[request.message_id] = request
        self._handlers_active += 1
        self._handlers_idle = anyio.Event()
        assert self._tg is not None
        self._tg.start_soon(self._serve_request, request)

    async def _on_fragment(self, event: FragmentReceived) -> None:
        if event.response:
            incoming = self._incoming_response
            if incoming is None:  # cannot happen: DIMSEOperations routed it here
                return
            waiter, response, parts, size = incoming
            size += len(event.data)
            limit = self.config.max_dataset_in_memory
            if size > limit:
                await self._protocol_abort(
                    DIMSEError(
                        f"response data set larger than {limit} bytes (max_dataset_in_memory)"
                    )
                )
                return
            parts.append(bytes(event.data))
            if event.last:
                self._incoming_response = None
                full = DIMSEResponse(response.message, b"".join(parts), response.context)
                self._deliver(waiter, full)
            else:
                self._incoming_response = (waiter, response, parts, size)
            return
        send = self._incoming_send
        if send is not None and not self._incoming_dropped:
            try:
                await send.send(event.data)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                # the handler finished without reading everything: drop the rest
                self._incoming_dropped = True
        if event.last:
            request = self._incoming_request
            if request is not None:
                request._data_complete = True
                request._complete.set()
                self._incoming_request = None
            if send is not None:
                send.close()
            self._incoming_send = None

    def _on_response(self, event: ResponseReceived) -> None:
        message = event.message
        if self._tracing:
            self._trace("dimse_received", message, event.context_id)
        if self.hooks.wants(HookEvent.DIMSE_RECEIVED):
            self.hooks.emit(HookEvent.DIMSE_RECEIVED, self, message=message)
        waiter = self._waiters.get(event.message_id)
        response = DIMSEResponse(message, None, self._context(event.context_id))
        if message.has_dataset:
            self._incoming_response = (waiter, response, [], 0)
        else:
            self._deliver(waiter, response)

    def _deliver(self, waiter: _Waiter | None, response: DIMSEResponse) -> None:
        if waiter is None:
            return
        waiter.put(response)
        if not response.is_pending:
            self._waiters.pop(response.message.message_id_being_responded_to, None)
            waiter.close()

    def _on_cancel(self, event: CancelReceived) -> None:
        message = event.message
        if message is not None:
            if self._tracing:
                self._trace("dimse_received", message, event.context_id)
            if self.hooks.wants(HookEvent.DIMSE_RECEIVED):
                self.hooks.emit(HookEvent.DIMSE_RECEIVED, self, message=message)
        request = self._performing.get(event.message_id) if event.known else None
        if request is None:
            # it already ended (the C-CANCEL crossed its final response): nothing to do
            self.log.debug("c_cancel_ignored", message_id=event.message_id)
            return
        self.log.info("c_cancel_received", message_id=event.message_id)
        request._cancel()

    async def _serve_request(self, request: IncomingRequest) -> None:
        """Run the dispatcher for one request of the peer's; clean up whatever happens."""
        try:
            try:
                await self.dispatcher.serve(request)
            except Exception as exc:
                if not self.is_closed:
                    self.log.exception("request_failed", error=str(exc))
            finally:
                if request._data is not None:
                    request._data.close()
                if not request.answered and self._ops is not None:
                    # no final response was sent: the operation ends here all the same
                    self._ops.finish(request.message_id)
        finally:
            self._performing.pop(request.message_id, None)
            self._handlers_active -= 1
            if self._handlers_active == 0:
                self._handlers_idle.set()

    # ------------------------------------------------------------------ DIMSE: sending

    def find_context(
        self,
        abstract_syntax: str,
        transfer_syntaxes: Iterable[str] | None = None,
        *,
        role: str = "scu",
    ) -> PresentationContext | None:
        """An accepted context for ``abstract_syntax`` in which this side may act as ``role``
        ("scu" or "scp"), preferring the transfer syntaxes in the order given."""
        candidates = [
            c
            for c in self.accepted_contexts
            if c.abstract_syntax == abstract_syntax
            and (c.scu_role if role == "scu" else c.scp_role)
        ]
        if transfer_syntaxes is None:
            return candidates[0] if candidates else None
        for ts in transfer_syntaxes:
            for c in candidates:
                if c.transfer_syntax == ts:
                    return c
        return None

    def next_message_id(self) -> int:
        """A Message ID not used by any outstanding request of ours."""
        try:
            return self._ops_or_raise().next_message_id()
        except LocalProtocolError as exc:
            raise errors.AssociationError(str(exc)) from exc

    async def send_message(
        self,
        context: PresentationContext,
        message: messages.Message,
        dataset: DatasetSource | None = None,
        *,
        _command: bytes | None = None,
    ) -> None:
        """Send one DIMSE message (command set, then data set fragments) on ``context``.

        Low level: no bookkeeping (use :meth:`invoke` / :meth:`request` for requests and
        :meth:`IncomingRequest.respond` for responses).  A message cut off half-way (cancelled,
        or the data set source failed) leaves the peer unable to read the next one: the
        association is then aborted.
        """
        self._raise_if_gone()
        if self.hooks.version != self._hooks_version:
            self._sync_hooks()
        try:
            size = self._fragment_size()
        except ValueError as exc:  # the peer announced a maximum too small to carry anything
            raise errors.AssociationError(str(exc)) from exc
        command = dimse.encode_command(message) if _command is None else _command
        async with self._message_lock:
            self._raise_if_gone()
            cid = context.context_id
            started = finished = False
            try:
                now = self._now()
                if len(command) <= size:  # the usual case: one PDV, command and last bits set
                    self._ul.send_pdata(cid, 0x03, command, now=now)
                else:
                    for hdr, payload in dimse.pdv_fragments(command, size, command=True):
                        self._ul.send_pdata(cid, hdr, payload, now=now)
                started = True
                if _TRACE.isEnabledFor(logging.DEBUG):
                    self._trace("dimse_sent", message, cid)
                if self.hooks.wants(HookEvent.DIMSE_SENT):
                    self.hooks.emit(HookEvent.DIMSE_SENT, self, message=message)
                if dataset is None:
                    finished = True
                    await self._flush()
                    return
                if isinstance(dataset, (bytes, bytearray, memoryview)):
                    await self._send_data(cid, memoryview(dataset), size, last=True)
                else:
                    # a stream of chunks: hold back the last chunk so that the final PDV
                    # carries the "last fragment" bit
                    previous: bytes | None = None
                    if isinstance(dataset, AsyncIterator):
                        async for chunk in dataset:
                            if previous is not None:
                                await self._send_data(cid, memoryview(previous), size, last=False)
                            previous = chunk
                    else:
                        for chunk in dataset:
                            if previous is not None:
                                await self._send_data(cid, memoryview(previous), size, last=False)
                            previous = chunk
                    await self._send_data(cid, memoryview(previous or b""), size, last=True)
                finished = True
                await self._flush()
            except LocalProtocolError as exc:
                await self._process_events()  # e.g. the transport was lost meanwhile
                self._raise_if_gone()
                raise errors.AssociationError(f"cannot send now: {exc}") from exc
            finally:
                if started and not finished and not self._closed.is_set():
                    # half a message is on its way: nothing valid can follow it
                    self.log.info("message_interrupted", message=message.NAME)
                    self._abort_detail = f"sending {message.NAME} was interrupted"
                    with anyio.CancelScope(shield=True):
                        await self.abort()

    def _queue_one_pdu_message(
        self, context: PresentationContext, message: messages.Message, command: bytes
    ) -> bool:
        """Queue a message without a data set whose command set fits one PDV, at once.

        Nothing awaits between the check and the queueing, so it cannot land inside another
        message's fragments; the caller flushes.  False (nothing queued) if it does not fit.
        """
        if len(command) > self._fragment_size():
            return False
        self._ul.send_pdata(context.context_id, 0x03, command, now=self._now())
        if self._tracing:
            self._trace("dimse_sent", message, context.context_id)
        if self.hooks.wants(HookEvent.DIMSE_SENT):
            self.hooks.emit(HookEvent.DIMSE_SENT, self, message=message)
        return True

    def _fragment_size(self) -> int:
        size = self._cached_fragment_size
        if size == 0:
            # raises ValueError for a peer maximum too small to carry anything
            size = self._cached_fragment_size = dimse.fragment_size(self._ul.peer_max_pdu_length)
        return size

    async def _send_data(self, cid: int, data: memoryview, size: int, *, last: bool) -> None:
        queued = 0
        for hdr, payload in dimse.pdv_fragments(data, size, command=False, last=last):
            self._ul.send_pdata(cid, hdr, payload, now=self._now())
            queued += len(payload)
            if queued >= _FLUSH_THRESHOLD:
                await self._flush()
                self._raise_if_gone()
                queued = 0
        if queued:
            await self._flush()
            self._raise_if_gone()

    async def _send_cancel(self, context: PresentationContext, message_id: int) -> bool:
        """Send C-CANCEL-RQ for our operation ``message_id``; False (nothing sent) if the
        operation has no cancel or already ended."""
        try:
            cancel = self._ops_or_raise().cancel(message_id)
        except LocalProtocolError:
            return False
        await self.send_message(context, cancel)
        return True

    # ------------------------------------------------------------------ invoking operations

    async def _start(
        self,
        context: PresentationContext,
        message: messages.RequestMessage,
        dataset: DatasetSource | None,
    ) -> _Waiter:
        """Take a window slot, record the operation, send the request; its waiter."""
        self._raise_if_gone()
        slots = self._invoke_slots
        if slots is not None:
            await slots.acquire()
        waiter = _Waiter(slots)
        try:
            ops = self._ops_or_raise()
            msg_id = message.message_id
            try:
                ops.invoke(context.context_id, message)
            except LocalProtocolError as exc:
                raise errors.AssociationError(str(exc)) from exc
            self._waiters[msg_id] = waiter
            try:
                await self.send_message(context, message, dataset)
            except BaseException:
                # not (completely) sent: the peer does not know of it (if half of it went out,
                # send_message aborted the association)
                ops.forget(msg_id)
                self._waiters.pop(msg_id, None)
                raise
        except BaseException:
            waiter.close()  # gives the slot back
            raise
        return waiter

    async def _next_response(self, waiter: _Waiter) -> DIMSEResponse:
        """The next response to an operation of ours, within the DIMSE timeout."""
        if waiter.responses:  # already here: no timer needed
            return waiter.responses.popleft()
        timeout = self.config.timeouts.dimse
        if timeout is None:
            response = await waiter.next_response()
        else:
            with anyio.move_on_after(timeout) as scope:
                response = await waiter.next_response()
            if scope.cancelled_caught:
                self._abort_detail = f"no DIMSE response within {timeout} s"
                await self.abort()
                raise errors.DIMSETimeout(f"no DIMSE response within {timeout} s")
        if response is None:
            self._raise_if_gone()
            raise errors.AssociationError("association closed before the response")
        return response

    async def _give_up(self, operation: Operation) -> None:
        """An operation left before its final response: cancel it where possible and let a
        watcher drop its late responses; the association stays usable unless the peer does not
        finish the operation within the DIMSE timeout."""
        waiter = operation._waiter
        if waiter.closed or self._closed.is_set():
            return
        with anyio.CancelScope(shield=True):
            try:
                await operation.cancel()
            except errors.DICOMError:
                return
        waiter.abandoned = True
        waiter.responses.clear()
        if self._ops is not None:
            self._ops.abandon(operation.message_id)
        if self._tg is not None and not waiter.closed:
            self._tg.start_soon(self._watch_abandoned, waiter, operation.request.NAME)

    async def _watch_abandoned(self, waiter: _Waiter, name: str) -> None:
        timeout = self.config.timeouts.dimse
        with anyio.move_on_after(math.inf if timeout is None else timeout):
            await waiter.wait_closed()
            return
        if not self._closed.is_set():
            self.log.warning("abandoned_operation_timeout", message=name, timeout=timeout)
            self._abort_detail = f"the peer did not end a cancelled {name} within {timeout} s"
            await self.abort(linger=0)

    @asynccontextmanager
    async def invoke(
        self,
        context: PresentationContext,
        message: messages.RequestMessage,
        dataset: DatasetSource | None = None,
    ) -> AsyncIterator[Operation]:
        """Invoke a DIMSE operation and iterate over its responses::

            async with assoc.invoke(context, rq, identifier) as op:
                async for response in op:   # Pending ones, then the final one
                    ...

        ``message.message_id`` must come from :meth:`next_message_id`.  The request waits for
        a free slot of the negotiated asynchronous operations window.  Each response must come
        within the DIMSE timeout, else the association is aborted and
        :class:`~asyncdicom.errors.DIMSETimeout` raised.

        Leaving the block before the final response cancels the operation: C-CANCEL-RQ for
        C-FIND, C-GET and C-MOVE, then the remaining responses are read up to the final one
        (:attr:`Operation.final`), so the association stays usable.  When the block is left
        by a cancellation or an exception, the late responses are dropped in the background
        instead; the association is aborted only if the peer does not finish the operation
        within the DIMSE timeout.
        """
        waiter = await self._start(context, message, dataset)
        operation = Operation(self, context, message, waiter)
        try:
            yield operation
        except BaseException:
            await self._give_up(operation)
            raise
        if operation.final is None and not waiter.closed:
            await operation.cancel()
            await operation.result()

    async def request(
        self,
        context: PresentationContext,
        message: messages.RequestMessage,
        dataset: DatasetSource | None = None,
    ) -> DIMSEResponse:
        """Invoke an operation and return its final response (Pending ones are skipped): the
        primitive for C-ECHO, C-STORE and the DIMSE-N services.  As :meth:`invoke` otherwise;
        cancelled while waiting, the response is dropped when it comes."""
        waiter = await self._start(context, message, dataset)
        try:
            while True:
                response = await self._next_response(waiter)
                if not response.is_pending:
                    return response
        except BaseException:
            if not waiter.closed:
                await self._give_up(Operation(self, context, message, waiter))
            raise


def __getattr__(name: str) -> object:
    # the driver class's old name, now that ``Association`` is the one the AE hands out
    if name == "Association":
        import warnings

        warnings.warn(
            "asyncdicom.association.Association is now asyncdicom.lowlevel.BaseAssociation "
            "(asyncdicom.Association is the association the AE hands out)",
            DeprecationWarning,
            stacklevel=2,
        )
        return BaseAssociation
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
