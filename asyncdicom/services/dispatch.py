"""Running handlers: :class:`ServiceDispatcher`, the driver's
:class:`~asyncdicom.association.Dispatcher` for every association of an AE, and the
:class:`ServiceRequest` that handlers receive (see :mod:`asyncdicom.services.base` for the
handler forms and the one sync-or-async rule)."""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Generator
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio

from ..association import BaseAssociation, DatasetSource, IncomingRequest
from ..errors import StorageError
from ..log import get_logger
from ..protocol import messages
from ..protocol.negotiation import PresentationContext
from ..protocol.operations import CANCELLABLE
from ..protocol.status import Status, is_pending
from .base import HandlerRegistry, Service, is_async_callable, make_response

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

    from ..storage.writer import DuplicatePolicy, Layout, StoredFile

__all__ = ["ServiceDispatcher", "ServiceRequest"]

# ---------------------------------------------------------------------- requests


class ServiceRequest(IncomingRequest):
    """A request from the peer as a handler sees it: the generic
    :class:`~asyncdicom.association.IncomingRequest` plus DICOM conveniences.

    ``message`` is the request, ``context`` its presentation context, ``association`` the
    association it came on, ``sop_class_uid`` the SOP class it is about.  A data set is read
    once: :meth:`dataset` (decoded with pydicom), :meth:`read` (bytes), :meth:`chunks`
    (streamed), :meth:`save_to` (C-STORE to a Part 10 file, streamed and atomic).
    """

    async def dataset(self) -> Dataset:
        """The data set (identifier) decoded with pydicom in the context's transfer syntax.

        Up to ``AEConfig.max_dataset_in_memory`` bytes it is read into memory.  A bigger one
        streams to an anonymous temporary file instead (in ``AEConfig.spool_directory``, the
        system's temporary folder by default; written in worker threads) and is decoded from
        there with its large values (over 64 KiB: pixel data, say) read from the file only
        when accessed; the file is gone as soon as the returned Dataset is.  Memory stays
        bounded whatever the peer sends.
        """
        from ..storage.codec import decode_dataset, decode_spooled_dataset

        association = self.association
        config = association.config
        limit = config.max_dataset_in_memory
        syntax = self.context.transfer_syntax or ""
        parts: list[bytes] = []
        size = 0
        spool: Any = None
        try:
            async for chunk in self.chunks():
                if spool is None:
                    size += len(chunk)
                    parts.append(bytes(chunk))
                    if size <= limit:
                        continue
                    spool = await anyio.to_thread.run_sync(_new_spool, config.spool_directory)
                    held = b"".join(parts)
                    parts.clear()
                    await anyio.to_thread.run_sync(spool.write, held)
                    del held
                else:
                    # the fragment is a view of received bytes nobody else writes: safe to
                    # hand to the thread as it is
                    await anyio.to_thread.run_sync(spool.write, chunk)
            if spool is None:
                return decode_dataset(b"".join(parts), syntax)
            dataset: Dataset = await anyio.to_thread.run_sync(
                decode_spooled_dataset, spool, syntax, config.spool_directory
            )
            spool = None  # now owned by the data set (its deferred values read from it)
            return dataset
        finally:
            if spool is not None:
                spool.close()

    def decode(self) -> Dataset:
        """For plain-function (threaded) handlers: :attr:`data` decoded with pydicom."""
        from ..storage.codec import decode_dataset

        return decode_dataset(self.data or b"", self.context.transfer_syntax or "")

    async def save_to(
        self,
        folder: str | Path,
        *,
        on_duplicate: DuplicatePolicy = "unique",
        layout: Layout = "flat",
    ) -> StoredFile:
        """C-STORE: write the instance to ``folder`` as a Part 10 file, atomically (see
        :func:`~asyncdicom.services.storage.save_request` for ``on_duplicate`` and
        ``layout``).  The returned path's ``header()`` reads the stored data set without its
        pixel data."""
        from .storage import save_request

        return await save_request(self, folder, on_duplicate=on_duplicate, layout=layout)


def _new_spool(directory: str | None) -> Any:
    """An anonymous temporary file (no name on disk: it disappears when closed)."""
    import tempfile

    # not a with-block: on success the file is handed to the data set
    return tempfile.TemporaryFile(dir=directory)


def _encode(dataset: Any, context: PresentationContext) -> DatasetSource:
    if isinstance(dataset, (bytes, bytearray, memoryview)):
        return dataset
    from ..storage.codec import encode_dataset

    return encode_dataset(dataset, context.transfer_syntax or "")


# ---------------------------------------------------------------------- the dispatcher


class ServiceDispatcher:
    """Runs the handlers of an AE for the requests its associations receive (the
    :class:`~asyncdicom.association.Dispatcher` of every association of the AE).

    ``handlers`` is the AE's registry; an association with a ``handlers`` attribute of its own
    (:class:`~asyncdicom.Association`) is looked at first.  ``services`` give
    the defaults: the answer without a handler, and the status of a handler's exception.
    """

    def __init__(self, handlers: HandlerRegistry, services: list[Service]) -> None:
        self.handlers = handlers
        #: shared with the owner: services added later count
        self.services = services
        # (request class, SOP class) -> service; cleared when the service list changes
        self._service_cache: dict[tuple[type, str], Service | None] = {}
        self._cached_count = 0
        # (request class, SOP class) -> how to answer at once without a handler, or None when
        # a handler is registered; valid for one (handler registry version, service count)
        self._quick: dict[
            tuple[type, str],
            Callable[[messages.RequestMessage], messages.ResponseMessage] | None,
        ]
        self._quick = {}
        self._quick_key = (-1, -1)
        self.log = get_logger()

    def service_for(self, message: messages.Message, sop_class: str) -> Service | None:
        """The service that serves ``message`` on ``sop_class`` (the last registered wins)."""
        key = (type(message), sop_class)
        cache = self._service_cache
        if self._cached_count != len(self.services):  # services are only ever added
            cache.clear()
            self._cached_count = len(self.services)
        elif key in cache:
            return cache[key]
        found = None
        for service in reversed(self.services):
            if service.serves(message, sop_class):
                found = service
                break
        if len(cache) < 4096:  # bounded whatever SOP classes peers send
            cache[key] = found
        return found

    def handler_for(
        self, association: BaseAssociation, message: messages.Message, sop_class: str
    ) -> Callable[..., Any] | None:
        """The handler for ``message``: the association's own, else the AE's."""
        local: HandlerRegistry | None = getattr(association, "handlers", None)
        cls = type(message)
        if local:
            found = local.get(cls, sop_class)
            if found is not None:
                return found
        return self.handlers.get(cls, sop_class)

    def default_response(
        self, message: messages.RequestMessage, sop_class: str
    ) -> messages.ResponseMessage:
        """The answer to ``message`` when no handler is registered."""
        service = self.service_for(message, sop_class)
        if service is not None:
            return service.default_response(message)
        return make_response(message, int(Status.UNRECOGNIZED_OPERATION))

    # -- the Dispatcher protocol

    def answer_now(
        self,
        association: BaseAssociation,
        context: PresentationContext,
        message: messages.RequestMessage,
    ) -> messages.ResponseMessage | None:
        sop_class = messages.sop_class_uid(message)
        local: HandlerRegistry | None = getattr(association, "handlers", None)
        if local is not None and local._handlers:  # handlers of its own: look them up
            if self.handler_for(association, message, sop_class) is not None:
                return None
            return self.default_response(message, sop_class)
        # The AE's handlers only: the decision per (request class, SOP class) is cached, so
        # that a C-ECHO answered by default costs one lookup (it is the hot path of a busy
        # SCP's health checks).
        version = (self.handlers.version, len(self.services))
        if version != self._quick_key:
            self._quick.clear()
            self._quick_key = version
        key = (type(message), sop_class)
        try:
            answer = self._quick[key]
        except KeyError:
            answer = self._quick_answer(message, sop_class)
            if len(self._quick) < 4096:  # bounded whatever SOP classes peers send
                self._quick[key] = answer
        return None if answer is None else answer(message)

    def _quick_answer(
        self, message: messages.RequestMessage, sop_class: str
    ) -> Callable[[messages.RequestMessage], messages.ResponseMessage] | None:
        if self.handlers.get(type(message), sop_class) is not None:
            return None
        service = self.service_for(message, sop_class)
        if service is not None:
            return service.default_response
        return partial(make_response, status=int(Status.UNRECOGNIZED_OPERATION))

    def new_request(
        self,
        association: BaseAssociation,
        context: PresentationContext,
        message: messages.RequestMessage,
        data: Any,
    ) -> ServiceRequest:
        return ServiceRequest(association, context, message, data)

    async def serve(self, request: IncomingRequest) -> None:
        """Run the handler for ``request`` and send its response(s)."""
        association = request.association
        message = request.message
        sop_class = request.sop_class_uid
        handler = self.handler_for(association, message, sop_class)
        if handler is None:
            if request.has_dataset:
                await request.discard()
            await self.respond(request, self.default_response(message, sop_class))
            return
        service = self.service_for(message, sop_class)
        if service is not None and service.runner is not None:
            await service.runner(self, request, handler)
            return
        if inspect.isasyncgenfunction(handler) or inspect.isgeneratorfunction(handler):
            await self.serve_generator(request, handler, sop_class)
            return
        result: Any
        try:
            if is_async_callable(handler):
                result = await handler(request)
            else:
                if request.has_dataset:
                    request.data = await request.read()
                result = await anyio.to_thread.run_sync(handler, request)
        except Exception as exc:
            if association.is_closed:
                return
            result = self.handler_failed(request, handler, exc, sop_class)
        if request.data_unread:
            await request.discard()
        await self.send_result(request, result, final=True)

    def handler_failed(
        self, request: IncomingRequest, handler: Any, exc: BaseException, sop_class: str
    ) -> int:
        """Log a handler's exception (a ``request_refused`` warning for a
        :class:`~asyncdicom.errors.StorageError`, a ``handler_failed`` error with its
        traceback otherwise); return the status the service maps it to."""
        message = request.message
        log = request.association.log
        handler_name = getattr(handler, "__qualname__", repr(handler))
        error = f"{type(exc).__name__}: {exc}"
        if isinstance(exc, StorageError):
            # a data set that cannot be used (one the peer cut short, say), found by the
            # library's own checks: expected, a warning without traceback
            log.warning("request_refused", message=message.NAME, handler=handler_name, error=error)
        else:
            log.error(
                "handler_failed",
                message=message.NAME,
                handler=handler_name,
                error=error,
                exc_info=exc,
            )
        service = self.service_for(message, sop_class)
        if service is not None:
            return service.exception_status(message, exc)
        return int(Status.PROCESSING_FAILURE)

    async def serve_generator(
        self, request: IncomingRequest, handler: Callable[..., Any], sop_class: str
    ) -> None:
        """Multi-response: each yielded item is a Pending response; C-CANCEL stops it.

        Only the handler's own work runs in the scope that a C-CANCEL-RQ cancels; sending a
        Pending response does not, so that a cancel never cuts a message in half.
        """
        association = request.association
        cancellable = type(request.message) in CANCELLABLE
        final: Any = None
        items = _Items(handler, request)
        try:
            while True:
                with anyio.CancelScope() as scope:
                    if cancellable:
                        request.cancel_scope = scope
                        if request.cancel_requested:
                            scope.cancel()
                    item = await items.next()
                request.cancel_scope = None
                if scope.cancelled_caught:
                    final = int(Status.CANCEL)
                    break
                if item is _Items._DONE:
                    break
                if _is_final(item):
                    final = item
                    break
                await self.send_result(request, item, final=False)
                # A handler whose results never wait for I/O would otherwise keep the event
                # loop to itself: let the reader (a C-CANCEL may be waiting) and the other
                # associations run between two results.
                await anyio.lowlevel.checkpoint()
                if cancellable and request.cancel_requested:
                    final = int(Status.CANCEL)
                    break
        except Exception as exc:
            if association.is_closed:
                return
            final = self.handler_failed(request, handler, exc, sop_class)
        finally:
            request.cancel_scope = None
            await items.aclose()
        if request.data_unread:
            await request.discard()
        await self.send_result(request, final, final=True)

    async def send_result(self, request: IncomingRequest, result: Any, *, final: bool) -> None:
        """Turn what a handler returned or yielded into a response and send it.

        A final result that makes no valid response (a Pending status, a response of another
        type, a value that is not a status, a data set that cannot be encoded) is logged and
        answered with Processing Failure (0x0110), so the peer is never left waiting; a bad
        Pending result raises, and the generator's loop ends the operation the same way.
        """
        if request.association.is_closed:
            return
        try:
            response, encoded = _to_response(request, result, final=final)
        except _BadResult as exc:
            if not final:
                raise
            request.association.log.error(
                "handler_result_invalid", message=request.message.NAME, error=str(exc)
            )
            response = make_response(request.message, int(Status.PROCESSING_FAILURE))
            encoded = None
        await self.respond(request, response, encoded)

    async def respond(
        self,
        request: IncomingRequest,
        response: messages.ResponseMessage,
        dataset: DatasetSource | None = None,
    ) -> None:
        """Send ``response`` (and its data set) for ``request``; a response whose echoed UIDs
        cannot be encoded is sent without them."""
        try:
            await request.respond(response, dataset)
        except ValueError:
            # The request's UIDs, echoed into the response, cannot be encoded (a peer may send,
            # say, a backslash in a UI value, which our decoder lets through).  They are U(=)
            # in every response (PS3.7 9.3, 10.3): answer without them rather than not at all.
            uid_fields = {"affected_sop_class_uid", "affected_sop_instance_uid"}
            cleared: dict[str, Any] = {
                f.name: None for f in dataclasses.fields(response) if f.name in uid_fields
            }
            fixed = dataclasses.replace(response, **cleared)
            if fixed == response:
                raise
            await request.respond(fixed, dataset)


def _is_final(item: Any) -> bool:
    """A yielded item that ends the operation: a final status or response."""
    if isinstance(item, messages.Response):
        return not is_pending(item.status)
    if isinstance(item, tuple) and item:
        head = item[0]
        if isinstance(head, messages.Response):
            return not is_pending(head.status)
        return not is_pending(int(head))
    if isinstance(item, int):
        return not is_pending(item)
    return False


class _Items:
    """The items of a generator handler: an async generator, or a plain generator iterated in
    a worker thread (one ``next`` per item)."""

    _DONE: Any = object()

    def __init__(self, handler: Callable[..., Any], request: IncomingRequest) -> None:
        self._handler = handler
        self._request = request
        self._agen: Any = None
        self._gen: Generator[Any, None, None] | None = None

    async def next(self) -> Any:
        """The next item, or ``_Items._DONE``."""
        if self._agen is None and self._gen is None:
            if inspect.isasyncgenfunction(self._handler):
                self._agen = self._handler(self._request)
            else:
                request = self._request
                if request.has_dataset:
                    request.data = await request.read()
                self._gen = await anyio.to_thread.run_sync(self._handler, request)
        if self._agen is not None:
            try:
                return await self._agen.__anext__()
            except StopAsyncIteration:
                return self._DONE
        gen = self._gen
        return await anyio.to_thread.run_sync(lambda: next(gen, self._DONE))  # type: ignore[arg-type]

    async def next_batch(self, limit: int) -> list[Any]:
        """Up to ``limit`` items, ``[]`` once the generator is exhausted; a final status is
        the last item of its batch.  A plain generator is advanced in one worker-thread call
        per batch (an async generator gives one item at a time)."""
        batch: list[Any] = []
        if self._agen is None and self._gen is None:  # the first call creates the generator
            first = await self.next()
            if first is self._DONE:
                return []
            if self._agen is not None or _is_final(first):
                return [first]
            batch.append(first)
        elif self._agen is not None:
            item = await self.next()
            return [] if item is self._DONE else [item]
        gen = self._gen
        assert gen is not None
        done = self._DONE

        def pull() -> list[Any]:
            while len(batch) < limit:
                item = next(gen, done)
                if item is done:
                    break
                batch.append(item)
                if _is_final(item):
                    break
            return batch

        return await anyio.to_thread.run_sync(pull)

    async def aclose(self) -> None:
        """Close the generator (its ``finally`` blocks run)."""
        with anyio.CancelScope(shield=True):
            if self._agen is not None:
                await self._agen.aclose()
            elif self._gen is not None:
                await anyio.to_thread.run_sync(self._gen.close)


class _BadResult(Exception):
    """A handler's result that makes no valid response."""


def _to_response(
    request: IncomingRequest, result: Any, *, final: bool
) -> tuple[messages.ResponseMessage, DatasetSource | None]:
    """The response (and encoded data set) for a handler's result; raises :class:`_BadResult`."""
    message = request.message
    dataset: Any = None
    try:
        response: Any
        if isinstance(result, tuple) and result and isinstance(result[0], messages.Response):
            # (a complete response, its data set): e.g. an Error Comment and an Attribute List
            response, dataset = result[0], result[1]
            if response.COMMAND_FIELD != message.COMMAND_FIELD | 0x8000:
                raise ValueError(f"{response.NAME} does not answer a {message.NAME}")
            if dataset is not None and not getattr(response, "has_dataset", True):
                response = dataclasses.replace(response, has_dataset=True)
        elif isinstance(result, messages.Response):
            response = result
            if response.COMMAND_FIELD != message.COMMAND_FIELD | 0x8000:
                raise ValueError(f"{response.NAME} does not answer a {message.NAME}")
        else:
            if result is None:
                status = 0x0000 if final else 0xFF00
            elif isinstance(result, tuple):
                status, dataset = int(result[0]), result[1]
            elif isinstance(result, int):
                status = int(result)
            else:  # a data set alone: a Pending result
                status, dataset = 0xFF00, result
            response = make_response(message, status, has_dataset=dataset is not None)
        if is_pending(response.status):
            if final:
                raise ValueError(f"a final response with the Pending status {response.status:#06x}")
            if type(message) not in CANCELLABLE:
                raise ValueError(f"a {message.NAME} has no Pending responses")
        encoded = _encode(dataset, request.context) if dataset is not None else None
    except (ValueError, TypeError, AttributeError, KeyError) as exc:
        raise _BadResult(f"{type(exc).__name__}: {exc}") from exc
    return response, encoded
