"""The peer's side of DIMSE: its requests (answered at once or run by the dispatcher in tasks
of their own), their data sets streamed to the handlers, its C-CANCELs, and the responses to
our operations, each event handed over through the handler table."""

from __future__ import annotations

from typing import Any, Protocol

import anyio
from anyio.abc import ByteStream
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from ..hooks import HookEvent
from ..protocol import dimse, messages
from ..protocol.association import (
    AbortKind,
    CancelReceived,
    FragmentReceived,
    RequestReceived,
    ResponseComplete,
)
from ..protocol.errors import DIMSEError
from ..protocol.negotiation import PresentationContext
from ..protocol.upper_layer import Role
from .engine import FastLock, OwnerLike
from .lifecycle import Lifecycle
from .responses import DIMSEResponse

__all__ = ["PeerRequest", "Receiving", "RequestServer"]

#: data-set fragments buffered between the reader and a handler (each <= one PDU)
_HANDLER_QUEUE = 32


class PeerRequest(Protocol):
    """What the DIMSE layer needs of a request object (``IncomingRequest``)."""

    message_id: int
    answered: bool

    def _cancel(self) -> None: ...

    def _data_ended(self, complete: bool) -> None: ...

    def _close_data(self) -> None: ...


class RequestServer(Protocol):
    """What the DIMSE layer needs of its dispatcher (see ``association.Dispatcher``)."""

    def answer_now(
        self, association: Any, context: PresentationContext, message: messages.RequestMessage
    ) -> messages.ResponseMessage | None: ...

    def new_request(
        self,
        association: Any,
        context: PresentationContext,
        message: messages.RequestMessage,
        data: MemoryObjectReceiveStream[memoryview] | None,
    ) -> PeerRequest: ...

    async def serve(self, request: Any) -> None: ...


class Receiving(Lifecycle):
    """Requests, C-CANCELs and responses from the peer."""

    def __init__(
        self, ae: OwnerLike, stream: ByteStream, role: Role, dispatcher: RequestServer
    ) -> None:
        super().__init__(ae, stream, role)
        self.dispatcher = dispatcher
        self._message_lock: anyio.Lock | FastLock = anyio.Lock(fast_acquire=True)
        self._invoke_slots: anyio.Semaphore | None = None
        self._performing: dict[int, PeerRequest] = {}
        #: the request whose data set is arriving, and the stream feeding its handler
        self._incoming_request: PeerRequest | None = None
        self._incoming_send: MemoryObjectSendStream[memoryview] | None = None
        self._incoming_dropped = False

    def _use_loop_clock(self) -> None:
        super()._use_loop_clock()
        if isinstance(self._write_lock, FastLock) and not self._message_lock.locked():
            self._message_lock = FastLock()  # asyncio: see FastLock

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

    def _received(self, message: messages.Message, context_id: int) -> None:
        if self._tracing:
            self._trace("dimse_received", message, context_id)
        if self.hooks.wants(HookEvent.DIMSE_RECEIVED):
            self.hooks.emit(HookEvent.DIMSE_RECEIVED, self, message=message)

    async def _on_request(self, event: RequestReceived) -> None:
        message = event.message
        core = self._core
        if not core.can_answer:
            # The association ended while requests it had sent were still in our input.
            return
        if self._tracing:
            self._trace("dimse_received", message, event.context_id)
        if self.hooks.wants(HookEvent.DIMSE_RECEIVED):
            self.hooks.emit(HookEvent.DIMSE_RECEIVED, self, message=message)
        context = core.context(event.context_id)
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
                core.respond(event.message_id, response)
                core.send_command(event.context_id, response, self._now(), command)
                if self._tracing:
                    self._trace("dimse_sent", response, event.context_id)
                if self.hooks.wants(HookEvent.DIMSE_SENT):
                    self.hooks.emit(HookEvent.DIMSE_SENT, self, message=response)
                await self._flush()
                return
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
        send = self._incoming_send
        if send is not None and not self._incoming_dropped:
            try:
                # without a trip through the event loop while the handler's queue has room
                # (``send`` always takes one); the reader waits only when the handler lags
                try:
                    send.send_nowait(event.data)
                except anyio.WouldBlock:
                    await send.send(event.data)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                # the handler finished without reading everything: drop the rest
                self._incoming_dropped = True
        if event.last:
            request = self._incoming_request
            if request is not None:
                request._data_ended(True)
                self._incoming_request = None
            if send is not None:
                send.close()
            self._incoming_send = None

    def _end_incoming(self) -> None:
        if self._incoming_send is not None:
            self._incoming_send.close()
            self._incoming_send = None
        if self._incoming_request is not None:
            self._incoming_request._data_ended(False)
            self._incoming_request = None

    async def _on_response(self, event: ResponseComplete) -> None:
        self._received(event.message, event.context_id)
        waiter = self._waiters.get(event.message_id)
        if waiter is None:
            return
        waiter.put(
            DIMSEResponse(event.message, event.dataset, self._core.context(event.context_id))
        )
        if event.final:
            self._waiters.pop(event.message_id, None)
            waiter.close()

    async def _on_cancel(self, event: CancelReceived) -> None:
        if event.message is not None:
            self._received(event.message, event.context_id)
        request = self._performing.get(event.message_id) if event.known else None
        if request is None:
            # it already ended (the C-CANCEL crossed its final response), or never existed
            self.log.debug(
                "c_cancel_ignored",
                message_id=event.message_id,
                reason="operation ended" if event.late else "no such operation",
            )
            return
        self.log.info("c_cancel_received", message_id=event.message_id)
        request._cancel()

    async def _serve_request(self, request: PeerRequest) -> None:
        """Run the dispatcher for one request of the peer's; clean up whatever happens."""
        try:
            try:
                await self.dispatcher.serve(request)
            except Exception as exc:
                if not self.is_closed:
                    self.log.exception("request_failed", error=str(exc))
            finally:
                request._close_data()
                if not request.answered:
                    # no final response was sent: the operation ends here all the same
                    self._core.finish(request.message_id)
        finally:
            self._performing.pop(request.message_id, None)
            self._handlers_active -= 1
            if self._handlers_active == 0:
                self._handlers_idle.set()

    async def _abort_oversized(self, detail: str) -> None:
        """A peer sent more than a limit allows: A-ABORT (provider) and close at once."""
        await self._abort(AbortKind.PROTOCOL, detail, linger=0, error=DIMSEError(detail))


Receiving._handlers = {
    **Lifecycle._handlers,
    RequestReceived: Receiving._on_request,
    FragmentReceived: Receiving._on_fragment,
    ResponseComplete: Receiving._on_response,
    CancelReceived: Receiving._on_cancel,
}
