"""The association handed to applications, the peer's requests, and establishment."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Protocol

import anyio
from anyio.abc import ByteStream
from anyio.streams.memory import MemoryObjectReceiveStream

from .. import errors
from ..config import AEConfig
from ..hooks import HookEvent, Hooks
from ..protocol import dimse, messages
from ..protocol.association import AbortKind
from ..protocol.errors import LocalProtocolError
from ..protocol.negotiation import NegotiatedAssociation, PresentationContext
from ..protocol.pdu import AssociateAC, AssociateRJ, AssociateRQ
from ..protocol.status import is_pending
from ..protocol.upper_layer import Role
from ..transport import tls_alert
from .dimse import DatasetSource, DIMSELayer

__all__ = ["BaseAssociation", "Dispatcher", "IncomingRequest", "Owner"]


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
        """Acceptor: answer the peer's A-ASSOCIATE-RQ (``association.accept``/``reject``)."""


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
        """The data set's bytes as they arrive, fragment by fragment (each at most one PDU).

        Raises:
            RuntimeError: the data set was already read.
            AssociationError: the association ended before the data set was complete.
        """
        if self._data is None:
            return
        if self._consumed:
            raise RuntimeError("the data set of this request was already read")
        self._consumed = True
        data = self._data
        with data:
            while True:
                # what is queued already is taken without a trip through the event loop (an
                # ``async for`` over the stream takes one per fragment); waits when it is empty
                try:
                    fragment = data.receive_nowait()
                except anyio.WouldBlock:
                    try:
                        fragment = await data.receive()
                    except anyio.EndOfStream:
                        break
                except anyio.EndOfStream:
                    break
                yield fragment
        if not self._data_complete:
            # the stream ended without the last fragment: the association went away
            self.association._raise_if_gone()
            raise errors.AssociationError("the association ended before the data set was complete")

    async def read(self) -> bytes:
        """The whole data set as bytes (held in memory: prefer :meth:`chunks` for big ones).

        Raises:
            AssociationAborted: the data set is larger than ``AEConfig.max_dataset_in_memory``
                (the association was aborted: A-ABORT, source 2).
            AssociationError: the association ended before the data set was complete.
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
        arrived (PS3.7: a response never overtakes its request).

        Raises:
            ValueError: the response cannot be encoded (nothing was sent).
            AssociationError: the response does not answer this request, or the association
                is gone.
        """
        if not self._complete.is_set():
            await self._complete.wait()
        association = self.association
        # encoded first: a value that cannot be encoded (ValueError) changes nothing
        command = dimse.encode_command(response)
        try:
            association._core.respond(self.message_id, response)
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

    def _data_ended(self, complete: bool) -> None:
        self._data_complete = complete
        self._complete.set()

    def _close_data(self) -> None:
        if self._data is not None:
            self._data.close()


class BaseAssociation(DIMSELayer):
    """One DICOM association over one transport stream (either role).

    Obtain one with :meth:`asyncdicom.AE.associate` (requestor) or in a handler from
    ``request.association`` (acceptor).  This class offers the generic DIMSE primitives
    (:meth:`invoke`, :meth:`request`, :meth:`send_message`); the service methods
    (``echo()``, ``store()``, ...) come from :mod:`asyncdicom.services`, whose
    :class:`~asyncdicom.services.ServiceAssociation` is what the AE hands out.
    """

    def __init__(
        self, ae: Owner, stream: ByteStream, role: Role, *, dispatcher: Dispatcher
    ) -> None:
        super().__init__(ae, stream, role, dispatcher)
        self.ae: Owner = ae
        self.dispatcher: Dispatcher = dispatcher

    async def accept(self, ac: AssociateAC, negotiated: NegotiatedAssociation) -> None:
        """Acceptor: send the A-ASSOCIATE-AC for ``negotiated`` (what the AE decided)."""
        try:
            self._core.accept(ac, negotiated, self._now())
        except LocalProtocolError as exc:
            # Usually a PDU that arrived right behind the A-ASSOCIATE-RQ (in the same read)
            # already aborted the association or the peer closed it: nothing left to accept.
            await self._unsendable_answer("A-ASSOCIATE-AC", exc)
            return
        await self._process_events()

    async def reject(self, rj: AssociateRJ) -> None:
        """Acceptor: send the A-ASSOCIATE-RJ ``rj``."""
        try:
            self._core.reject(rj, self._now())
        except LocalProtocolError as exc:
            await self._unsendable_answer("A-ASSOCIATE-RJ", exc)
            return
        self.hooks.emit(HookEvent.ASSOCIATION_REJECTED, self, reject=rj)

    async def _unsendable_answer(self, what: str, exc: LocalProtocolError) -> None:
        """The answer to an A-ASSOCIATE-RQ was refused: nothing to do if the association is
        already over, else A-ABORT (it cannot stay unanswered)."""
        if self._core.abort_cause is not None or self._core.is_closed:
            return
        self.log.error("associate_answer_unsendable", pdu=what, error=str(exc))
        self._core.abort(self._now(), detail=f"the {what} could not be sent: {exc}")
        await self._process_events()

    @asynccontextmanager
    async def open(self, request: AssociateRQ, *, where: str) -> AsyncIterator[BaseAssociation]:
        """Requestor: send ``request`` over the open stream, wait for the answer, hand the
        established association to the block, release it when the block ends (abort it if
        the block raises) and wait until the transport is closed.

        Raises:
            AssociationRejected: the peer rejected the association.
            ACSETimeout: no answer within the ACSE timeout.
            TLSError: the peer refused our TLS session after the handshake.
            ConnectionLost: the connection closed or broke.
            AssociationAborted: the association was aborted (e.g. an A-ASSOCIATE-AC we
                cannot accept, or the peer's A-ABORT).
        """
        self.hooks.emit(HookEvent.CONNECTION_OPENED, self)
        failure: BaseException | None = None
        async with anyio.create_task_group() as tg:
            self._tg = tg
            self._use_loop_clock()
            self._core.start(self._now(), request=request)  # Evt1, Evt2: the RQ is queued
            self.hooks.emit(HookEvent.ASSOCIATION_REQUESTED, self, request=request)
            await tg.start(self._run_reader)
            await self._flush()
            await self._established.wait()
            failure = self._establishment_failure(where)
            cause = self._core.abort_cause
            if cause is not None and cause.local and not self.is_closed:
                # we aborted (an A-ASSOCIATE-AC we cannot accept, a malformed answer): the
                # peer gets a moment to close, not the whole ARTIM timeout
                await self.abort()
            if failure is None:
                try:
                    yield self
                except BaseException as exc:
                    failure = exc
                    await self.abort()
                else:
                    if not self.is_closed:
                        try:
                            await self.release()
                        except errors.DICOMError as exc:
                            failure = exc
            await self.wait_closed()
            tg.cancel_scope.cancel()
        if failure is not None:
            raise failure

    def _establishment_failure(self, where: str) -> errors.DICOMError | None:
        """Why establishment failed, as the exception to raise (``None``: established)."""
        core = self._core
        cause = core.abort_cause
        if cause is None and core.rejection is None and core.negotiated is not None:
            return None
        if cause is not None and cause.kind is AbortKind.ACSE_TIMEOUT:
            return errors.ACSETimeout(
                f"no A-ASSOCIATE-AC/RJ from {where} within {self.config.timeouts.acse} s"
            )
        if core.rejection is not None:
            rj = core.rejection
            return errors.AssociationRejected(rj.result, rj.source, rj.reason)
        if cause is not None and cause.kind is AbortKind.CONNECTION_LOST:
            # TLS 1.3: the client's handshake ends before the server has checked its
            # certificate; the server's refusal is an alert on the first read
            alert = tls_alert(cause.error) if cause.error is not None else None
            if alert is not None and core.negotiated is None:
                return errors.TLSError(f"TLS with {where} failed after the handshake: {alert}")
            if core.negotiated is not None:
                return errors.ConnectionLost(cause.detail)
            return errors.ConnectionLost(
                f"{cause.detail} during association establishment ({where})"
            )
        return errors.AssociationAborted(
            cause.source if cause else 2,
            cause.reason if cause else 0,
            local=cause.local if cause else True,
            detail=(cause.detail if cause else "") or "during association establishment",
        )

    async def serve(self) -> None:
        """Acceptor: run the association on the open stream until the transport closes
        (ARTIM starts now); handlers still running then are cancelled."""
        async with anyio.create_task_group() as tg:
            self._tg = tg
            self._use_loop_clock()
            self._core.start(self._now())  # Evt5: ARTIM starts
            await self._run_reader()
            tg.cancel_scope.cancel()  # handlers still running have nobody to answer
