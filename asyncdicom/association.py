"""The anyio driver: one :class:`Association` pumps one sans-IO :class:`UpperLayer`.

Shape of a running association (PS3.8 section 9 for the machine, PS3.7 for DIMSE):

* a **reader task** receives bytes, feeds the upper layer, and acts on the events it yields:
  P-DATA goes through the DIMSE :class:`MessageAssembler`; a *response* is handed to the task
  that awaits it (matched on Message ID Being Responded To); a *request* from the peer starts a
  handler task, and its data set is streamed to the handler through a bounded memory stream, so
  a slow disk slows the peer down (TCP back-pressure) instead of filling memory;
* a **write lock** serialises writes to the transport; a **message lock** keeps the fragments of
  one DIMSE message together (PS3.8 Annex E: messages are never interleaved);
* timers are cancel-scope deadlines, never polling: the reader's receive carries the earliest of
  the ARTIM deadline (read from the upper layer) and the network-idle deadline; ACSE and DIMSE
  timeouts wrap the awaits that they bound.  An idle association sleeps in ``receive()``.

Abort semantics: any exception escaping ``async with ae.associate(...)`` aborts the association
(A-ABORT), leaving it normally releases it.  Cancelling a task that awaits a response aborts too,
because the peer's late answer could no longer be matched reliably.
"""

from __future__ import annotations

import itertools
import math
from collections import deque
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
from anyio.abc import ByteStream, TaskGroup
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from . import errors
from .hooks import HookEvent
from .log import get_logger
from .protocol import dimse, messages
from .protocol.errors import LocalProtocolError, ProtocolError
from .protocol.events import (
    NEED_DATA,
    AssociationAborted,
    AssociationAccepted,
    AssociationRejected,
    AssociationRequested,
    ConnectionClosed,
    DataReceived,
    ReleaseConfirmed,
    ReleaseRequested,
)
from .protocol.negotiation import NegotiatedAssociation, PresentationContext
from .protocol.pdu import Abort, AssociateRJ, AssociateRQ, ReleaseRP, ReleaseRQ
from .protocol.upper_layer import Role, UpperLayer
from .services.dispatch import default_response
from .transport import close_quietly, peer_address

if TYPE_CHECKING:
    from .ae import AE

__all__ = ["Association", "DIMSEResponse", "ServiceRequest"]

#: bytes asked of the transport per receive call
_RECEIVE_SIZE = 256 * 1024
#: flush queued P-DATA to the transport once this much is buffered
_FLUSH_THRESHOLD = 256 * 1024
#: data-set fragments buffered between the reader and a handler (each <= one PDU)
_HANDLER_QUEUE = 32
#: cap on a response's data set (C-FIND identifiers, N-GET attribute lists) held in memory
_MAX_RESPONSE_DATASET = 64 * 1024 * 1024

_assoc_ids = itertools.count(1)


@dataclass(frozen=True, slots=True)
class DIMSEResponse:
    """One response to a request we invoked: the message and its data set bytes, if any."""

    message: messages.Message
    dataset: bytes | None


class ServiceRequest:
    """A DIMSE request received from the peer, handed to a service handler.

    ``message`` is the request (e.g. :class:`~asyncdicom.protocol.messages.CStoreRQ`),
    ``context`` the presentation context it arrived on (its ``transfer_syntax`` is the data set's
    encoding).  A data set, if the request has one, is read **once**, either as a stream with
    :meth:`chunks` or whole with :meth:`read` / :meth:`dataset`, or saved with
    :meth:`save_to` (C-STORE).  A handler that reads nothing simply discards it.
    """

    def __init__(
        self,
        association: Association,
        context: PresentationContext,
        message: messages.Message,
        data: MemoryObjectReceiveStream[memoryview] | None,
    ) -> None:
        self.association = association
        self.context = context
        self.message = message
        self._data = data
        self._consumed = False
        self._data_complete = data is None
        #: for plain-function (threaded) handlers: the data set bytes, read before the call
        self.data: bytes | None = None

    @property
    def has_dataset(self) -> bool:
        """True when the request carries a data set."""
        return self._data is not None

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
        """The whole data set as bytes (held in memory: prefer :meth:`chunks` for big ones)."""
        parts = [bytes(c) async for c in self.chunks()]
        return b"".join(parts)

    async def dataset(self) -> Any:
        """The data set decoded with pydicom in the context's transfer syntax."""
        from .storage.files import decode_dataset

        data = await self.read()
        return decode_dataset(data, self.context.transfer_syntax or "")

    async def discard(self) -> None:
        """Read and drop the data set."""
        async for _ in self.chunks():
            pass

    def decode(self) -> Any:
        """For threaded handlers: :attr:`data` decoded with pydicom."""
        from .storage.files import decode_dataset

        return decode_dataset(self.data or b"", self.context.transfer_syntax or "")

    async def save_to(self, folder: str | Path) -> Path:
        """C-STORE: write the instance to ``folder`` as a Part 10 file, atomically."""
        from .services.storage import save_request

        return await save_request(self, folder)


class Association:
    """One DICOM association over one transport stream (either role).

    Obtain one with :meth:`asyncdicom.AE.associate` (requestor) or in a handler from
    ``request.association`` (acceptor).  Service methods (:meth:`echo`, :meth:`store`, ...)
    come from :mod:`asyncdicom.services` and are available on every association whose
    negotiation accepted the matching presentation context.
    """

    def __init__(self, ae: AE, stream: ByteStream, role: Role) -> None:
        self.ae = ae
        self.role = role
        self.id = next(_assoc_ids)
        self.peer_host, self.peer_port = peer_address(stream)
        self._stream = stream
        cfg = ae.config
        self._ul = UpperLayer(
            role,
            artim_timeout=cfg.timeouts.artim,
            max_pdu_length=cfg.max_pdu_length,
        )
        if ae.hooks.wants(HookEvent.STATE_TRANSITION):
            self._ul.on_transition = self._on_transition
        self._assembler = dimse.MessageAssembler()
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
        #: set when a write was interrupted: part of a PDU may be on the wire, nothing more
        #: can be sent (not even an A-ABORT), the transport is closed
        self._torn = False
        # outcome
        self._established = anyio.Event()
        self._closed = anyio.Event()
        self.rejection: AssociateRJ | None = None
        self.abort_info: AssociationAborted | None = None
        self._abort_detail = ""
        self.released = False
        # DIMSE bookkeeping
        self._message_ids = itertools.cycle(range(1, 65536))
        self._pending: dict[int, _Waiter] = {}
        self._invoke_limit: anyio.Semaphore | None = None
        self._incoming_response: tuple[int, messages.Message, list[bytes], int] | None = None
        self._incoming_request: MemoryObjectSendStream[memoryview] | None = None
        self._incoming_request_obj: ServiceRequest | None = None
        self._incoming_complete: anyio.Event | None = None
        self._incoming_dropped = False
        self._handlers_active = 0
        self._handlers_idle = anyio.Event()
        self._handlers_idle.set()

    # ------------------------------------------------------------------ public properties

    @property
    def is_established(self) -> bool:
        """True while the association can carry DIMSE messages."""
        return self._established.is_set() and not self._closed.is_set()

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
        or a network timeout configured), so an idle association costs no timer at all.
        Processing of what was received is never inside that scope: a deadline cannot cut a
        message in half.
        """
        task_status.started()
        network_timeout = self.ae.config.timeouts.network
        dimse_timeout = self.ae.config.timeouts.dimse
        assembler = self._assembler
        stream = self._stream
        try:
            while not self._closed.is_set():
                if network_timeout is not None:
                    self._network_deadline = self._now() + network_timeout
                # A message that has started must keep coming: the next fragment is due
                # within the DIMSE timeout (a peer stalling mid-transfer is aborted).
                if dimse_timeout is not None and not assembler.idle:
                    self._message_deadline = self._now() + dimse_timeout
                else:
                    self._message_deadline = math.inf
                deadline = self._deadline()
                data: bytes | None
                try:
                    if deadline == math.inf:
                        self._reader_unbounded = True
                        try:
                            data = await stream.receive(_RECEIVE_SIZE)
                        finally:
                            self._reader_unbounded = False
                    else:
                        with anyio.CancelScope(deadline=deadline) as scope:
                            self._reader_scope = scope
                            data = await stream.receive(_RECEIVE_SIZE)
                        self._reader_scope = None
                        if scope.cancelled_caught:
                            await self._on_deadline()
                            continue
                except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                    data = None
                except anyio.ClosedResourceError:
                    data = None
                if data is not None and self.ae.hooks.wants(HookEvent.PDU_RECEIVED):
                    self.ae.hooks.emit(HookEvent.PDU_RECEIVED, self, data=data)
                self._ul.receive_data(data, now=self._now())
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
            self.log.warning("network_timeout", timeout=self.ae.config.timeouts.network)
            self._abort_detail = "network timeout"
            self._network_deadline = math.inf
            self._send_abort_now()
        elif now >= self._message_deadline:
            self.log.warning("dimse_timeout_mid_message", timeout=self.ae.config.timeouts.dimse)
            self._abort_detail = "DIMSE timeout: a message in progress stopped arriving"
            self._message_deadline = math.inf
            self._send_abort_now()
        await self._process_events()

    def _send_abort_now(self) -> None:
        """A-ABORT request (Evt15); records the abort so that waiters raise it."""
        try:
            self._ul.send(Abort(0, 0), now=self._now())
        except LocalProtocolError:
            return
        if self.abort_info is None:
            self.abort_info = AssociationAborted(0, 0, local=True)
            self.ae.hooks.emit(HookEvent.ASSOCIATION_ABORTED, self, abort=self.abort_info)

    async def _flush(self) -> None:
        """Write whatever the upper layer has queued.

        Bytes are taken from the upper layer in the order they were queued and written under
        a FIFO lock, so concurrent flushes keep the wire order.
        """
        data = self._ul.data_to_send()
        if not data or self._torn:
            return
        if self.ae.hooks.wants(HookEvent.PDU_SENT):
            self.ae.hooks.emit(HookEvent.PDU_SENT, self, data=data)
        async with self._write_lock:
            if self._torn:
                return
            try:
                await self._stream.send(data)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError) as exc:
                self.log.info("transport_send_failed", error=str(exc))
                self._ul.receive_data(None, now=self._now())
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
        self._update_deadline()

    async def _process_events(self) -> None:
        """Drain the upper layer's events (called after every input)."""
        while True:
            event = self._ul.next_event()
            if event is NEED_DATA:
                break
            if isinstance(event, DataReceived):
                try:
                    dimse_events = self._assembler.receive(event.pdu)
                except ProtocolError as exc:
                    await self._protocol_abort(exc)
                    continue
                for dev in dimse_events:
                    await self._on_dimse_event(dev)
            elif isinstance(event, AssociationRequested):
                await self.ae._on_association_requested(self, event.request)
            elif isinstance(event, AssociationAccepted):
                self._on_accepted(event)
            elif isinstance(event, AssociationRejected):
                self.rejection = event.reject
                self.ae.hooks.emit(HookEvent.ASSOCIATION_REJECTED, self, reject=event.reject)
                self._established.set()
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
                )
                self.ae.hooks.emit(HookEvent.ASSOCIATION_ABORTED, self, abort=event)
            elif isinstance(event, ConnectionClosed):
                await self._flush()
                self._closed.set()
        await self._flush()

    async def _protocol_abort(self, exc: ProtocolError) -> None:
        """A DIMSE-level protocol error from the peer: A-ABORT (provider) and close."""
        self.log.warning("dimse_protocol_error", error=str(exc))
        self._abort_detail = str(exc)
        try:
            self._ul.send(Abort(2, int(exc.abort_reason)), now=self._now())
        except LocalProtocolError:
            return
        self.abort_info = AssociationAborted(2, int(exc.abort_reason), local=True, error=exc)
        self.ae.hooks.emit(HookEvent.ASSOCIATION_ABORTED, self, abort=self.abort_info)

    async def _finish(self) -> None:
        """The transport is gone or going: wake every waiter, close the stream."""
        self._closed.set()
        self._established.set()
        for waiter in list(self._pending.values()):
            waiter.close()
        self._pending.clear()
        if self._incoming_request is not None:
            self._incoming_request.close()
            self._incoming_request = None
        if self._incoming_complete is not None:
            self._incoming_complete.set()
        await close_quietly(self._stream)
        if self.released:
            self.ae.hooks.emit(HookEvent.ASSOCIATION_RELEASED, self)
        self.ae.hooks.emit(HookEvent.CONNECTION_CLOSED, self)
        self.log.debug("connection_closed")

    def _on_transition(self, old: Any, event: Any, action: Any, new: Any) -> None:
        self.ae.hooks.emit(
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
        self.ae.hooks.emit(HookEvent.ASSOCIATION_ACCEPTED, self)
        self._established.set()

    def _setup_window(self) -> None:
        assert self.negotiated is not None
        invoked = self.negotiated.max_operations_invoked
        self._invoke_limit = anyio.Semaphore(invoked if invoked > 0 else 65535, fast_acquire=True)

    async def _accept(self, ac: Any, negotiated: NegotiatedAssociation) -> None:
        """Acceptor: send A-ASSOCIATE-AC."""
        try:
            self._ul.send(ac, now=self._now())
        except LocalProtocolError:
            # A PDU that arrived right behind the A-ASSOCIATE-RQ (in the same read) already
            # aborted the association (Sta13) or the peer closed it: nothing left to accept.
            return
        self.negotiated = negotiated
        self._setup_window()
        self.log = self.log.bind(peer_ae=self.peer_ae_title)
        self.log.info("association_accepted", contexts=len(self.accepted_contexts))
        self._established.set()
        self.ae.hooks.emit(HookEvent.ASSOCIATION_ACCEPTED, self)

    async def _reject(self, rj: AssociateRJ) -> None:
        """Acceptor: send A-ASSOCIATE-RJ."""
        try:
            self._ul.send(rj, now=self._now())
        except LocalProtocolError:
            return  # already aborted or closed, as in _accept
        self.rejection = rj
        self.log.info("association_rejected", result=rj.result, source=rj.source, reason=rj.reason)
        self.ae.hooks.emit(HookEvent.ASSOCIATION_REJECTED, self, reject=rj)

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
        if self.role is Role.ACCEPTOR and self._ul.state.value == 12:
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
        timeout = self.ae.config.timeouts.acse
        with anyio.move_on_after(timeout) as scope:
            await self._closed.wait()
        if scope.cancelled_caught:
            await self.abort()
            raise errors.ACSETimeout(f"no A-RELEASE-RP within {timeout} s")
        self.released = self.released or self.abort_info is None

    async def abort(self) -> None:
        """Abort the association (A-ABORT, source service-user) and close the transport."""
        with anyio.CancelScope(shield=True):
            if self._closed.is_set():
                return
            self._abort_detail = self._abort_detail or "aborted by the local user"
            self._send_abort_now()
            await self._process_events()
            # ARTIM (started by AA-1) bounds how long we wait for the peer to close
            await self._closed.wait()

    async def wait_closed(self) -> None:
        """Wait until the transport is closed."""
        await self._closed.wait()

    def _raise_if_gone(self) -> None:
        if self.abort_info is not None:
            a = self.abort_info
            raise errors.AssociationAborted(
                a.source, a.reason, local=a.local, detail=self._abort_detail
            )
        if self._closed.is_set() or not self._established.is_set():
            raise errors.AssociationError("the association is not established")

    # ------------------------------------------------------------------ DIMSE: receiving

    async def _on_dimse_event(self, event: dimse.DIMSEEvent) -> None:
        if isinstance(event, dimse.CommandReceived):
            await self._on_command(event.context_id, event.message)
        else:
            await self._on_fragment(event.data, event.last)

    async def _on_command(self, context_id: int, message: messages.Message) -> None:
        if self.ae.hooks.wants(HookEvent.DIMSE_RECEIVED):
            self.ae.hooks.emit(HookEvent.DIMSE_RECEIVED, self, message=message)
        context = self._context(context_id)
        if context is None:
            await self._protocol_abort(
                _dimse_error(f"message on presentation context {context_id}, not accepted")
            )
            return
        if message.is_response:
            await self._on_response(message)
            return
        if (
            not message.has_dataset
            and not self._message_lock.locked()
            and self.ae.handler_for(type(message)) is None
            and not isinstance(message, messages.CCancelRQ)
        ):
            # No handler to run (C-ECHO's default, or an operation nobody handles): answer
            # at once from the reader, without a task.  Only when no message of ours is being
            # sent, so the reader never waits behind our own long transfer.
            response = default_response(message)
            if not self._queue_one_pdu_message(context, response):
                await self.send_message(context, response)
            await self._flush()
            return
        # A request from the peer: run its handler in its own task.
        data_recv: MemoryObjectReceiveStream[memoryview] | None = None
        if message.has_dataset:
            send, data_recv = anyio.create_memory_object_stream[memoryview](_HANDLER_QUEUE)
            self._incoming_request = send
            self._incoming_complete = anyio.Event()
            self._incoming_dropped = False
            complete = self._incoming_complete
        else:
            complete = None
        request = ServiceRequest(self, context, message, data_recv)
        if data_recv is not None:
            self._incoming_request_obj = request
        self._handlers_active += 1
        self._handlers_idle = anyio.Event()
        assert self._tg is not None
        self._tg.start_soon(self._serve_request, request, complete)

    async def _on_fragment(self, data: memoryview, last: bool) -> None:
        if self._incoming_response is not None:
            msg_id, msg, parts, size = self._incoming_response
            size += len(data)
            if size > _MAX_RESPONSE_DATASET:
                await self._protocol_abort(_dimse_error("response data set too large"))
                return
            parts.append(bytes(data))
            if last:
                self._incoming_response = None
                self._deliver(msg_id, DIMSEResponse(msg, b"".join(parts)))
            else:
                self._incoming_response = (msg_id, msg, parts, size)
            return
        send = self._incoming_request
        if send is not None and not self._incoming_dropped:
            try:
                await send.send(data)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                # the handler finished without reading everything: drop the rest
                self._incoming_dropped = True
        if last:
            if self._incoming_request_obj is not None:
                self._incoming_request_obj._data_complete = True
                self._incoming_request_obj = None
            if send is not None:
                send.close()
            self._incoming_request = None
            if self._incoming_complete is not None:
                self._incoming_complete.set()
                self._incoming_complete = None

    async def _on_response(self, message: messages.Message) -> None:
        msg_id = getattr(message, "message_id_being_responded_to", None)
        if msg_id is None or msg_id not in self._pending:
            await self._protocol_abort(_dimse_error(f"response to unknown Message ID {msg_id}"))
            return
        if message.has_dataset:
            self._incoming_response = (msg_id, message, [], 0)
        else:
            self._deliver(msg_id, DIMSEResponse(message, None))

    def _deliver(self, msg_id: int, response: DIMSEResponse) -> None:
        waiter = self._pending.get(msg_id)
        if waiter is None:
            return
        waiter.put(response)
        if not _is_pending_status(getattr(response.message, "status", 0)):
            self._pending.pop(msg_id, None)
            waiter.close()

    async def _serve_request(self, request: ServiceRequest, complete: anyio.Event | None) -> None:
        """Run the handler for one incoming request and send its response(s)."""
        from .services import dispatch

        try:
            try:
                await dispatch.serve(self, request, complete)
            except Exception as exc:
                self.log.exception("handler_failed", error=str(exc))
            finally:
                if request._data is not None:
                    request._data.close()
        finally:
            self._handlers_active -= 1
            if self._handlers_active == 0:
                self._handlers_idle.set()

    # ------------------------------------------------------------------ DIMSE: sending

    def _context(self, context_id: int) -> PresentationContext | None:
        """The accepted presentation context with this ID (a dict lookup), else None."""
        if self.negotiated is None:
            return None
        ctx = self.negotiated.context_by_id(context_id)
        return ctx if ctx is not None and ctx.accepted else None

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
        for _ in range(65536):
            mid = next(self._message_ids)
            if mid not in self._pending:
                return mid
        raise errors.AssociationError("no free Message ID")

    async def send_message(
        self,
        context: PresentationContext,
        message: messages.Message,
        dataset: bytes | memoryview | Iterable[bytes] | AsyncIterator[bytes] | None = None,
    ) -> None:
        """Send one DIMSE message (command set, then data set fragments) on ``context``."""
        self._raise_if_gone()
        try:
            size = self._fragment_size()
        except ValueError as exc:  # the peer announced a maximum too small to carry anything
            raise errors.AssociationError(str(exc)) from exc
        command = dimse.encode_command(message)
        async with self._message_lock:
            self._raise_if_gone()
            cid = context.context_id
            now = self._now()
            try:
                if len(command) <= size:  # the usual case: one PDV, command and last bits set
                    self._ul.send_pdata(cid, 0x03, command, now=now)
                else:
                    for hdr, payload in _fragments(command, size, command=True):
                        self._ul.send_pdata(cid, hdr, payload, now=now)
                if self.ae.hooks.wants(HookEvent.DIMSE_SENT):
                    self.ae.hooks.emit(HookEvent.DIMSE_SENT, self, message=message)
                if dataset is None:
                    await self._flush()
                    return
                if isinstance(dataset, (bytes, bytearray, memoryview)):
                    await self._send_data(cid, memoryview(dataset), size, last=True)
                    await self._flush()
                    return
                # a stream of chunks: hold back the last chunk so that the final PDV carries
                # the "last fragment" bit
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
                await self._flush()
            except LocalProtocolError as exc:
                self._raise_if_gone()
                raise errors.AssociationError(f"cannot send now: {exc}") from exc

    def _queue_one_pdu_message(
        self, context: PresentationContext, message: messages.Message
    ) -> bool:
        """Queue a message without a data set whose command set fits one PDV, at once.

        Nothing awaits between the check and the queueing, so it cannot land inside another
        message's fragments; the caller flushes.  False (nothing queued) if it does not fit.
        """
        command = dimse.encode_command(message)
        if len(command) > self._fragment_size():
            return False
        self._ul.send_pdata(context.context_id, 0x03, command, now=self._now())
        if self.ae.hooks.wants(HookEvent.DIMSE_SENT):
            self.ae.hooks.emit(HookEvent.DIMSE_SENT, self, message=message)
        return True

    def _fragment_size(self) -> int:
        size = self._cached_fragment_size
        if size == 0:
            # raises ValueError for a peer maximum too small to carry anything
            size = self._cached_fragment_size = dimse.fragment_size(self._ul.peer_max_pdu_length)
        return size

    async def _send_data(self, cid: int, data: memoryview, size: int, *, last: bool) -> None:
        queued = 0
        for hdr, payload in _fragments(data, size, command=False, last=last):
            self._ul.send_pdata(cid, hdr, payload, now=self._now())
            queued += len(payload)
            if queued >= _FLUSH_THRESHOLD:
                await self._flush()
                self._raise_if_gone()
                queued = 0
        if queued:
            await self._flush()
            self._raise_if_gone()

    def _register(self, message: messages.Message) -> tuple[int, _Waiter]:
        self._raise_if_gone()
        msg_id: int = message.message_id  # type: ignore[union-attr]
        if msg_id in self._pending:
            raise errors.AssociationError(f"Message ID {msg_id} is already outstanding")
        waiter = _Waiter()
        self._pending[msg_id] = waiter
        return msg_id, waiter

    async def _next_response(self, waiter: _Waiter) -> DIMSEResponse:
        """The next response to a request of ours, within the DIMSE timeout."""
        if waiter.responses:  # already here: no timer needed
            return waiter.responses.popleft()
        timeout = self.ae.config.timeouts.dimse
        if timeout is None:
            response = await waiter.get()
        else:
            with anyio.move_on_after(timeout) as scope:
                response = await waiter.get()
            if scope.cancelled_caught:
                await self.abort()
                raise errors.DIMSETimeout(f"no DIMSE response within {timeout} s")
        if response is None:
            self._raise_if_gone()
            raise errors.AssociationError("association closed before the response")
        return response

    async def _abandon(self, msg_id: int, completed: bool) -> None:
        self._pending.pop(msg_id, None)
        if not completed and not self._closed.is_set():
            # abandoned mid-operation (cancelled or an error): the peer's later responses
            # could not be matched any more
            await self.abort()

    async def request(
        self,
        context: PresentationContext,
        message: messages.Message,
        dataset: bytes | memoryview | Iterable[bytes] | AsyncIterator[bytes] | None = None,
    ) -> AsyncIterator[DIMSEResponse]:
        """Invoke a DIMSE request and yield its responses (pending ones, then the final one).

        ``message.message_id`` must come from :meth:`next_message_id`.  Each response must
        arrive within the DIMSE timeout, else the association is aborted and
        :class:`~asyncdicom.errors.DIMSETimeout` raised.  Leaving the iteration early (or
        being cancelled) before the final response aborts the association.
        """
        assert self._invoke_limit is not None
        async with self._invoke_limit:
            msg_id, waiter = self._register(message)
            completed = False
            try:
                await self.send_message(context, message, dataset)
                while True:
                    response = await self._next_response(waiter)
                    final = not _is_pending_status(getattr(response.message, "status", 0))
                    completed = final
                    yield response
                    if final:
                        return
            finally:
                with anyio.CancelScope(shield=True):
                    await self._abandon(msg_id, completed)

    async def request_one(
        self,
        context: PresentationContext,
        message: messages.Message,
        dataset: bytes | memoryview | Iterable[bytes] | AsyncIterator[bytes] | None = None,
    ) -> DIMSEResponse:
        """Invoke a request that has exactly one response (C-ECHO, C-STORE, DIMSE-N) and
        return it; as :meth:`request` otherwise."""
        assert self._invoke_limit is not None
        async with self._invoke_limit:
            msg_id, waiter = self._register(message)
            completed = False
            try:
                await self.send_message(context, message, dataset)
                while True:
                    response = await self._next_response(waiter)
                    if not _is_pending_status(getattr(response.message, "status", 0)):
                        completed = True
                        return response
            finally:
                if completed:
                    self._pending.pop(msg_id, None)
                else:
                    with anyio.CancelScope(shield=True):
                        await self._abandon(msg_id, completed)

    # ------------------------------------------------------------------ services (SCU)

    async def echo(self) -> int:
        """C-ECHO (Verification, PS3.7 9.1.5): returns the response status (0x0000 = success)."""
        from .services.verification import echo

        return await echo(self)

    async def store(
        self,
        dataset_or_path: Any,
        *,
        priority: int = 0,
        move_originator_aet: str | None = None,
        move_originator_message_id: int | None = None,
    ) -> int:
        """C-STORE (Storage, PS3.7 9.1.1): send a pydicom Dataset or a Part 10 file.

        A file is sent without decoding when an accepted context has its transfer syntax, and
        transcoded between the uncompressed syntaxes when it must.  Returns the status.
        """
        from .services.storage import store

        return await store(
            self,
            dataset_or_path,
            priority=priority,
            move_originator_aet=move_originator_aet,
            move_originator_message_id=move_originator_message_id,
        )


class _Waiter:
    """Where the reader puts the responses to one outstanding request (lighter than a
    memory stream: one deque and one event)."""

    __slots__ = ("closed", "event", "responses")

    def __init__(self) -> None:
        self.responses: deque[DIMSEResponse] = deque()
        self.event = anyio.Event()
        self.closed = False

    def put(self, response: DIMSEResponse) -> None:
        self.responses.append(response)
        self.event.set()

    def close(self) -> None:
        self.closed = True
        self.event.set()

    async def get(self) -> DIMSEResponse | None:
        """The next response, or None once closed with nothing left."""
        while True:
            if self.responses:
                return self.responses.popleft()
            if self.closed:
                return None
            self.event = anyio.Event()
            await self.event.wait()


def _is_pending_status(status: int | None) -> bool:
    return status in (0xFF00, 0xFF01)


def _dimse_error(text: str) -> ProtocolError:
    from .protocol.errors import DIMSEError

    return DIMSEError(text)


def _fragments(
    data: bytes | memoryview, size: int, *, command: bool, last: bool = True
) -> Iterable[tuple[int, memoryview]]:
    """(message control header, payload) per PDV of at most ``size`` bytes (from
    :func:`~asyncdicom.protocol.dimse.fragment_size`), one PDV per PDU (PS3.8 Annex E.2).
    Payloads are memoryview slices: nothing is copied here."""
    view = memoryview(data)
    base = 0x01 if command else 0x00
    n = len(view)
    if n == 0:
        return [(base | (0x02 if last else 0x00), view)]
    out = []
    for start in range(0, n, size):
        end = min(start + size, n)
        hdr = base | (0x02 if (last and end == n) else 0x00)
        out.append((hdr, view[start:end]))
    return out
