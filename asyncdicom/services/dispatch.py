"""The handler engine: :class:`ServiceDispatcher`, the driver's
:class:`~asyncdicom.association.Dispatcher` for every association of an AE, and the one place
where handlers run (see :mod:`asyncdicom.services.base` for the handler forms).

For a request it finds the handler (the association's, the AE's, else the one its service
brings) and the service; without a handler it answers with the service's default.  With one,
it runs it by its form -- ``async def`` on the event loop, a plain function in a worker
thread, an async generator, a plain generator advanced in a worker thread -- and turns what
it returns or yields into responses; a C-CANCEL-RQ cancels the handler at its current
``await`` and is answered Cancel; an exception is logged and answered with the service's
status.  A service whose handlers' results are not its responses (C-GET, C-MOVE) declares a
:data:`~asyncdicom.services.base.Responder`, which gets the same building blocks through a
:class:`~asyncdicom.services.base.HandlerCall`.  After the final response, the request's
:meth:`~asyncdicom.services.ServiceRequest.after_response` actions run.  Service state per
association lives here too, and is dropped when the association's connection closes.
"""

from __future__ import annotations

import dataclasses
import inspect
import weakref
from collections.abc import Callable, Generator, Iterator
from contextlib import contextmanager
from functools import partial
from typing import Any

import anyio

from ..association import BaseAssociation, DatasetSource, IncomingRequest
from ..errors import StorageError
from ..hooks import HookEvent, Hooks
from ..log import get_logger
from ..protocol import messages
from ..protocol.negotiation import PresentationContext
from ..protocol.operations import CANCELLABLE
from ..protocol.status import Status, is_pending
from .base import Handler, HandlerRegistry, Service, call, is_async_callable, make_response
from .incoming import Incoming
from .request import ServiceRequest, encode_for

__all__ = ["ServiceDispatcher", "ServiceRequest"]


class _Gone(Exception):
    """The association closed while a handler failed: nobody is left to answer."""


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
        # service state per association (by service name), dropped when it closes
        self._states: weakref.WeakKeyDictionary[BaseAssociation, dict[str, Any]] = (
            weakref.WeakKeyDictionary()
        )
        self._shared: dict[str, Any] = {}
        self._hooks: Hooks | None = None
        #: where C-STOREs and unclaimed N-EVENT-REPORTs go before the AE's handlers (inboxes,
        #: notification streams: :mod:`asyncdicom.services.incoming`)
        self.incoming = Incoming()

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
        """The handler for ``message``: the association's own, else the AE's, else the one
        its service brings."""
        local: HandlerRegistry | None = getattr(association, "handlers", None)
        cls = type(message)
        if local:
            found = local.get(cls, sop_class)
            if found is not None:
                return found
        found = self.handlers.get(cls, sop_class)
        if found is not None:
            return found
        service = self.service_for(message, sop_class)
        return None if service is None else service.default_handler(cls)

    def default_response(
        self, message: messages.RequestMessage, sop_class: str
    ) -> messages.ResponseMessage:
        """The answer to ``message`` when no handler is registered."""
        service = self.service_for(message, sop_class)
        if service is not None:
            return service.default_response(message)
        return make_response(message, int(Status.UNRECOGNIZED_OPERATION))

    # -- service state

    def shared_state(self, service: Service) -> Any:
        """The state of ``service`` shared by every association (by its ``name``), made by
        its ``shared_state`` factory on first use.

        Raises:
            LookupError: the service declares no ``shared_state``.
        """
        try:
            return self._shared[service.name]
        except KeyError:
            pass
        if service.shared_state is None:
            raise LookupError(f"the {service.name} service keeps no shared state")
        state = self._shared[service.name] = service.shared_state()
        return state

    def association_state(self, association: BaseAssociation, service: Service) -> Any:
        """The state of ``service`` for ``association``, made by its ``association_state``
        factory on first use and dropped when the association's connection closes.

        Raises:
            LookupError: the service declares no ``association_state``.
        """
        states = self._states.get(association)
        if states is not None and service.name in states:
            return states[service.name]
        if service.association_state is None:
            raise LookupError(f"the {service.name} service keeps no state per association")
        state = service.association_state()
        if association.is_closed:
            return state  # nothing to keep it for
        if states is None:
            states = self._states[association] = {}
            self._watch(association.hooks)
        states[service.name] = state
        return state

    def state_for(self, association: BaseAssociation, message: Any, sop_class: str) -> Any:
        """:meth:`association_state` of the service that serves ``message`` on ``sop_class``
        (what :attr:`ServiceRequest.state` asks)."""
        service = self.service_for(message, sop_class)
        if service is None:
            raise LookupError(f"no service serves {message.NAME} on {sop_class}")
        return self.association_state(association, service)

    def _watch(self, hooks: Hooks) -> None:
        if self._hooks is not hooks:
            hooks.add(HookEvent.CONNECTION_CLOSED, self._association_closed)
            self._hooks = hooks

    def _association_closed(self, event: HookEvent, association: Any, **data: Any) -> None:
        self._states.pop(association, None)

    # -- the Dispatcher protocol

    def answer_now(
        self,
        association: BaseAssociation,
        context: PresentationContext,
        message: messages.RequestMessage,
    ) -> messages.ResponseMessage | None:
        sop_class = messages.sop_class_uid(message)
        if self.incoming.active and self.incoming.claims_report(message):
            return None  # a notification stream takes it
        local: HandlerRegistry | None = getattr(association, "handlers", None)
        if local:  # handlers of its own: look them up
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
            if service.default_handler(type(message)) is not None:
                return None
            return service.default_response
        return partial(make_response, status=int(Status.UNRECOGNIZED_OPERATION))

    def new_request(
        self,
        association: BaseAssociation,
        context: PresentationContext,
        message: messages.RequestMessage,
        data: Any,
    ) -> ServiceRequest:
        request = ServiceRequest(association, context, message, data)
        request.store = self
        return request

    async def serve(self, request: IncomingRequest) -> None:
        """Run the handler for ``request`` and send its response(s); then the request's
        :meth:`~ServiceRequest.after_response` actions."""
        try:
            await self._serve(request)
        except _Gone:
            pass
        finally:
            if isinstance(request, ServiceRequest):
                request.run_after_response()

    async def _serve(self, request: IncomingRequest) -> None:
        message = request.message
        sop_class = request.sop_class_uid
        handler = None
        incoming = self.incoming
        if incoming.active and isinstance(request, ServiceRequest):
            handler = self._subscriber_handler(request, sop_class)
        if handler is None:
            handler = self.handler_for(request.association, message, sop_class)
        if handler is None and incoming.active and isinstance(request, ServiceRequest):
            handler = incoming.notification_handler(
                request, lambda m: self.default_response(m, sop_class)
            )
        if handler is None:
            if request.has_dataset:
                await request.discard()
            await self.respond(request, self.default_response(message, sop_class))
            return
        service = self.service_for(message, sop_class)
        exchange = _Call(self, request, handler, service)
        if service is not None and service.responder is not None:
            await service.responder(exchange)
        elif inspect.isasyncgenfunction(handler) or inspect.isgeneratorfunction(handler):
            await exchange.respond_each()
        else:
            await exchange.respond_once()

    def _subscriber_handler(
        self, request: ServiceRequest, sop_class: str
    ) -> Callable[..., Any] | None:
        """A C-STORE claimed by a subscriber of :attr:`incoming` (the association's own
        handlers come first; the AE's serve what nobody claims)."""
        association = request.association
        local: HandlerRegistry | None = getattr(association, "handlers", None)
        if local and local.get(type(request.message), sop_class) is not None:
            return None
        return self.incoming.store_handler(
            request, lambda r: self.handler_for(association, r.message, sop_class)
        )

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

    async def send_result(self, request: IncomingRequest, result: Any, *, final: bool) -> None:
        """Turn what a handler returned or yielded into a response and send it.

        A final result that makes no valid response (a Pending status, a response of another
        type, a value that is not a status, a data set or a field that cannot be encoded) is
        logged and answered with Processing Failure (0x0110), so the peer is never left
        waiting; a bad Pending result raises, and the generator's loop ends the operation the
        same way.
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
        try:
            await self.respond(request, response, encoded)
        except ValueError as exc:
            # a field the handler set cannot be encoded (a backslash in an Error Comment, say):
            # nothing was sent, the peer still waits for an answer
            if not final:
                raise
            request.association.log.error(
                "handler_result_invalid", message=request.message.NAME, error=str(exc)
            )
            await self.respond(
                request, make_response(request.message, int(Status.PROCESSING_FAILURE))
            )

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


# ---------------------------------------------------------------------- one request


class _Call:
    """One request with its handler: the engine's work for it (the
    :class:`~asyncdicom.services.base.HandlerCall` a responder gets)."""

    __slots__ = ("dispatcher", "handler", "request", "service")

    def __init__(
        self,
        dispatcher: ServiceDispatcher,
        request: IncomingRequest,
        handler: Handler,
        service: Service | None,
    ) -> None:
        self.dispatcher = dispatcher
        self.request: Any = request
        self.handler = handler
        self.service = service

    def _failed(self, exc: Exception) -> int:
        """The status for the handler's exception (raises :class:`_Gone` when nobody is left
        to answer)."""
        request = self.request
        if request.association.is_closed:
            raise _Gone from exc
        return self.dispatcher.handler_failed(request, self.handler, exc, request.sop_class_uid)

    @contextmanager
    def _cancellable(self) -> Iterator[anyio.CancelScope]:
        """A scope that a C-CANCEL-RQ for the request cancels (for the operations that have
        one): only the handler's own work runs in it, never the sending of a response, so
        that a cancel never cuts a message in half."""
        request = self.request
        with anyio.CancelScope() as scope:
            if type(request.message) in CANCELLABLE:
                request.cancel_scope = scope
                if request.cancel_requested:
                    scope.cancel()
            try:
                yield scope
            finally:
                request.cancel_scope = None

    async def _finish(self, final: Any) -> None:
        if self.request.data_unread:
            await self.request.discard()
        await self.send(final, final=True)

    async def respond_once(self) -> None:
        """A handler that returns its one response (``async def`` or plain)."""
        request = self.request
        handler = self.handler
        result: Any
        try:
            if is_async_callable(handler):
                result = await handler(request)
            else:
                if request.has_dataset:
                    request.data = await request.read()
                result = await anyio.to_thread.run_sync(handler, request)
        except Exception as exc:
            result = self._failed(exc)
        await self._finish(result)

    async def respond_each(self) -> None:
        """A generator handler: each yielded item is a Pending response, the end (or a final
        status yielded) the final one; C-CANCEL stops it."""
        request = self.request
        final: Any = None
        items = _Items(self.handler, request)
        try:
            while True:
                with self._cancellable() as scope:
                    item = await items.next()
                if scope.cancelled_caught:
                    final = int(Status.CANCEL)
                    break
                if item is _DONE:
                    break
                if _is_final(item):
                    final = item
                    break
                await self.send(item, final=False)
                # A handler whose results never wait for I/O would otherwise keep the event
                # loop to itself: let the reader (a C-CANCEL may be waiting) and the other
                # associations run between two results.
                await anyio.lowlevel.checkpoint()
                if type(request.message) in CANCELLABLE and request.cancel_requested:
                    final = int(Status.CANCEL)
                    break
        except Exception as exc:
            final = self._failed(exc)
        finally:
            await items.aclose()
        await self._finish(final)

    async def collect(self, batch: int) -> tuple[list[Any], Any]:
        handler = self.handler
        if not (inspect.isasyncgenfunction(handler) or inspect.isgeneratorfunction(handler)):
            handler = _as_generator(handler)
        items = _Items(handler, self.request)
        collected: list[Any] = []
        final: Any = None
        try:
            with self._cancellable() as scope:
                while final is None:
                    got = await items.next_batch(batch)
                    if not got:
                        break
                    if _is_final(got[-1]):
                        final = got.pop()
                    collected.extend(got)
                    await anyio.lowlevel.checkpoint()  # a C-CANCEL can get in between
            if scope.cancelled_caught:
                final = int(Status.CANCEL)
        except Exception as exc:
            final = self._failed(exc)
        finally:
            await items.aclose()
        if self.request.data_unread:
            await self.request.discard()
        return collected, final

    async def send(self, result: Any, *, final: bool) -> None:
        await self.dispatcher.send_result(self.request, result, final=final)

    async def respond(self, response: messages.ResponseMessage, dataset: Any = None) -> None:
        encoded = None if dataset is None else encode_for(dataset, self.request.context)
        await self.dispatcher.respond(self.request, response, encoded)


# ---------------------------------------------------------------------- handler items


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


def _as_generator(handler: Handler) -> Handler:
    """A handler that returns its items (a list, any iterable) or a status, as an async
    generator (a plain function is called in a worker thread, by the one rule)."""

    async def items(request: Any) -> Any:
        if request.has_dataset and not is_async_callable(handler):
            request.data = await request.read()
        result = await call(handler, request)
        if result is None:
            return
        if isinstance(result, (int, tuple, messages.Response)) or _is_final(result):
            yield result
            return
        for item in result:
            yield item

    return items


_DONE: Any = object()


class _Items:
    """The items of a generator handler: an async generator, or a plain generator iterated in
    a worker thread (one ``next`` per item, or a batch per call)."""

    def __init__(self, handler: Handler, request: IncomingRequest) -> None:
        self._handler = handler
        self._request = request
        self._agen: Any = None
        self._gen: Generator[Any, None, None] | None = None

    async def _start(self) -> None:
        if inspect.isasyncgenfunction(self._handler):
            self._agen = self._handler(self._request)
        else:
            request = self._request
            if request.has_dataset:
                request.data = await request.read()
            self._gen = await anyio.to_thread.run_sync(self._handler, request)

    async def next(self) -> Any:
        """The next item, or ``_DONE``."""
        if self._agen is None and self._gen is None:
            await self._start()
        if self._agen is not None:
            try:
                return await self._agen.__anext__()
            except StopAsyncIteration:
                return _DONE
        gen = self._gen
        assert gen is not None
        return await anyio.to_thread.run_sync(next, gen, _DONE)

    async def next_batch(self, limit: int) -> list[Any]:
        """Up to ``limit`` items, ``[]`` once the generator is exhausted; a final status is
        the last item of its batch.  A plain generator is advanced in one worker-thread call
        per batch (an async generator gives one item at a time)."""
        if self._agen is None and self._gen is None:
            await self._start()
        if self._agen is not None:
            item = await self.next()
            return [] if item is _DONE else [item]
        gen = self._gen
        assert gen is not None

        def pull() -> list[Any]:
            batch: list[Any] = []
            while len(batch) < limit:
                item = next(gen, _DONE)
                if item is _DONE:
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
        encoded = encode_for(dataset, request.context) if dataset is not None else None
    except (ValueError, TypeError, AttributeError, KeyError) as exc:
        raise _BadResult(f"{type(exc).__name__}: {exc}") from exc
    return response, encoded
