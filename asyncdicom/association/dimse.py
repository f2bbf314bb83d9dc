"""DIMSE over the shell: sending messages and invoking operations.

Operations we invoke (:meth:`DIMSELayer.invoke`, :meth:`DIMSELayer.request`): leaving one
before its final response sends C-CANCEL-RQ where the service has one (C-FIND, C-GET, C-MOVE)
and keeps matching the peer's late responses; the association stays usable, and is aborted only
if the peer does not finish the operation within the DIMSE timeout (the core's deadline).  A
request whose own message was cut half-way (cancelled while its data set was being sent)
cannot be finished: that aborts the association.  Messages are cut into PDVs by the core;
what is queued is written about every 256 KiB, so a big data set never sits whole in a queue.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager

import anyio
import anyio.lowlevel

from .. import errors
from ..hooks import HookEvent
from ..protocol import dimse, messages
from ..protocol.association import (
    AbortKind,
)
from ..protocol.errors import LocalProtocolError
from ..protocol.negotiation import PresentationContext
from .engine import TRACE
from .receiving import Receiving
from .responses import DIMSEResponse, Waiter

__all__ = ["DIMSELayer", "DatasetSource", "Operation"]

#: flush queued P-DATA to the transport once about this much is queued
_FLUSH_THRESHOLD = 256 * 1024
#: what send_message() accepts as a data set
DatasetSource = bytes | bytearray | memoryview | Iterable[bytes] | AsyncIterator[bytes]


class Operation:
    """An operation we invoked: iterate over its responses with ``async for`` (Pending ones,
    then the final one); :attr:`final` holds the final response once it has arrived.

    Obtained from :meth:`DIMSELayer.invoke`; leaving that block before the final response
    cancels the operation (C-CANCEL-RQ where the service has one) and waits for the final
    response, within the DIMSE timeout.
    """

    def __init__(
        self,
        association: DIMSELayer,
        context: PresentationContext,
        request: messages.RequestMessage,
        waiter: Waiter,
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


class DIMSELayer(Receiving):
    """DIMSE messages and operations of one association (both directions)."""

    # ------------------------------------------------------------------ sending

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
        """A Message ID not used by any outstanding request of ours.

        Raises:
            AssociationError: the association is not established, or every ID is in use.
        """
        try:
            return self._core.next_message_id()
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
        ``IncomingRequest.respond`` for responses).  A message cut off half-way (cancelled,
        or the data set source failed) leaves the peer unable to read the next one: the
        association is then aborted.

        Raises:
            AssociationError: the association is gone or cannot send now (its subclasses
                say why: aborted, connection lost, timeout).
        """
        self._raise_if_gone()
        if self.hooks.version != self._hooks_version:
            self._sync_hooks()
        core = self._core
        try:
            size = core.fragment_size
        except ValueError as exc:  # the peer announced a maximum too small to carry anything
            raise errors.AssociationError(str(exc)) from exc
        command = dimse.encode_command(message) if _command is None else _command
        async with self._message_lock:
            self._raise_if_gone()
            cid = context.context_id
            started = finished = False
            try:
                core.send_command(cid, message, self._now(), command)
                started = True
                if TRACE.isEnabledFor(10):
                    self._trace("dimse_sent", message, cid)
                if self.hooks.wants(HookEvent.DIMSE_SENT):
                    self.hooks.emit(HookEvent.DIMSE_SENT, self, message=message)
                if dataset is None:
                    finished = True
                    await self._flush()
                    return
                step = size * max(1, _FLUSH_THRESHOLD // size)
                if isinstance(dataset, (bytes, bytearray, memoryview)):
                    await self._send_data(cid, memoryview(dataset), step, last=True)
                else:
                    # a stream of chunks: hold back the last chunk so that the final PDV
                    # carries the "last fragment" bit
                    previous: bytes | None = None
                    if isinstance(dataset, AsyncIterator):
                        async for chunk in dataset:
                            if previous is not None:
                                await self._send_data(cid, memoryview(previous), step, last=False)
                            previous = chunk
                    else:
                        for chunk in dataset:
                            if previous is not None:
                                await self._send_data(cid, memoryview(previous), step, last=False)
                            previous = chunk
                    await self._send_data(cid, memoryview(previous or b""), step, last=True)
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
                    with anyio.CancelScope(shield=True):
                        await self._abort(AbortKind.USER, f"sending {message.NAME} was interrupted")

    async def _send_data(self, cid: int, data: memoryview, step: int, *, last: bool) -> None:
        """Queue ``data`` as data-set fragments, writing every ``step`` bytes (a multiple of
        the fragment size, so the fragments are those of one call)."""
        core = self._core
        total = len(data)
        # A data set is where a sender gets cancelled (a store given up half-way): check
        # before queueing each step, as anyio's lock did on every write (the write lock on
        # asyncio does not), so that the association is aborted cleanly between two PDUs
        # instead of the whole data set going out
        checkpoint_if_cancelled = anyio.lowlevel.checkpoint_if_cancelled
        if total <= step:
            await checkpoint_if_cancelled()
            if core.send_data(cid, data, last=last, now=self._now()):
                await self._flush()
                self._raise_if_gone()
            return
        for offset in range(0, total, step):
            end = offset + step
            await checkpoint_if_cancelled()
            core.send_data(cid, data[offset:end], last=last and end >= total, now=self._now())
            await self._flush()
            self._raise_if_gone()

    async def _send_cancel(self, context: PresentationContext, message_id: int) -> bool:
        """Send C-CANCEL-RQ for our operation ``message_id``; False (nothing sent) if the
        operation has no cancel or already ended."""
        try:
            cancel = self._core.cancel(message_id)
        except LocalProtocolError:
            return False
        await self.send_message(context, cancel)
        return True

    # ------------------------------------------------------------------ invoking

    async def _start(
        self,
        context: PresentationContext,
        message: messages.RequestMessage,
        dataset: DatasetSource | None,
    ) -> Waiter:
        """Take a window slot, record the operation, send the request; its waiter."""
        self._raise_if_gone()
        slots = self._invoke_slots
        if slots is not None:
            await slots.acquire()
        waiter = Waiter(slots)
        try:
            msg_id: int = message.message_id
            try:
                self._core.invoke(context.context_id, message)
            except LocalProtocolError as exc:
                raise errors.AssociationError(str(exc)) from exc
            self._waiters[msg_id] = waiter
            try:
                await self.send_message(context, message, dataset)
            except BaseException:
                # not (completely) sent: the peer does not know of it (if half of it went out,
                # send_message aborted the association)
                self._core.forget(msg_id)
                self._waiters.pop(msg_id, None)
                raise
        except BaseException:
            waiter.close()  # gives the slot back
            raise
        return waiter

    async def _next_response(self, waiter: Waiter) -> DIMSEResponse:
        """The next response to an operation of ours (the core's DIMSE deadline bounds the
        wait: it aborts, and the waiter is woken)."""
        if waiter.responses:  # already here
            return waiter.responses.popleft()
        response = await waiter.next_response()
        if response is None:
            self._raise_if_gone()
            raise errors.AssociationError("association closed before the response")
        return response

    async def _give_up(self, operation: Operation) -> None:
        """An operation left before its final response: cancel it where possible and drop its
        late responses; the core aborts if the peer does not end it within the DIMSE timeout."""
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
        if not waiter.closed:
            self._core.abandon(operation.message_id, self._now())
            self._update_deadline()

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
        a free slot of the negotiated asynchronous operations window.  Leaving the block
        before the final response cancels the operation: C-CANCEL-RQ for C-FIND, C-GET and
        C-MOVE, then the remaining responses are read up to the final one; when the block is
        left by a cancellation or an exception, they are dropped instead.

        Raises:
            DIMSETimeout: a response did not come within the DIMSE timeout (the association
                was aborted).
            AssociationError: the association is gone (or its subclasses: why).
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
        cancelled while waiting, the response is dropped when it comes.

        Raises:
            DIMSETimeout: no response within the DIMSE timeout (the association was aborted).
            AssociationError: the association is gone (or its subclasses: why).
        """
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
