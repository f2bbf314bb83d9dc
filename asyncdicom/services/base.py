"""The service layer: what a service declares, where handlers are registered, how they run.

A **service** (:class:`Service`) is data: the DIMSE requests it serves, the SOP classes it
covers (a list or a rule such as "every storage SOP class"), the roles it takes by default, the
status it answers when no handler is registered, and the status a handler's exception maps to.
Its SCU helpers are methods of a mixin of :class:`~asyncdicom.association.BaseAssociation`
(``echo()``, ``store()``); see ``docs/dev/adding-a-service.md``.

**Handlers** are registered per (DIMSE request, SOP class), with a fallback per request that
serves every SOP class (:class:`HandlerRegistry`), on the AE and optionally on one association
(checked first).  One rule for every form (:func:`call`):

* ``async def handler(request)`` runs on the event loop and returns the response: a status
  (``int`` / :class:`~asyncdicom.protocol.status.Status`), ``(status, dataset)``, a complete
  response message (alone or as ``(response, dataset)``), or ``None`` for Success;
* a plain ``def handler(request)`` runs in a worker thread (``anyio.to_thread``) after the
  request's data set, if any, has been read into ``request.data``; it returns the same;
* an ``async def`` *generator* (or a plain generator, iterated in a worker thread) serves
  multi-response operations (C-FIND, C-GET, C-MOVE): each ``yield`` of a data set (or of
  ``(Status.PENDING, dataset)``) is sent at once as a Pending response; the final response
  follows when the generator ends (Success, or the final status it yields).  A C-CANCEL-RQ for
  the operation cancels the handler's scope at its current ``await``/``yield`` and the framework
  answers Cancel (0xFE00).

:class:`~asyncdicom.services.dispatch.ServiceDispatcher` is the
:class:`~asyncdicom.association.Dispatcher` the AE hands to every association; it is the only
place that runs handlers.  A service whose handlers' results are not its responses declares a
:data:`Responder`; work that must follow the final response is registered with
:meth:`ServiceRequest.after_response <asyncdicom.services.ServiceRequest.after_response>`.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import anyio

from ..protocol import messages
from ..protocol.status import Status, fit_error_comment

if TYPE_CHECKING:
    from ..association import IncomingRequest

__all__ = [
    "COMMANDS",
    "Component",
    "Handler",
    "HandlerCall",
    "HandlerRegistry",
    "Responder",
    "Service",
    "call",
    "is_async_callable",
    "make_response",
    "request_type",
]

F = TypeVar("F", bound=Callable[..., Any])

#: request classes by their DIMSE name without "-RQ" ("C-ECHO", "N-ACTION", ...)
COMMANDS: dict[str, type[messages.Message]] = {
    cls.NAME.removesuffix("-RQ"): cls
    for cls in messages.MESSAGE_TYPES.values()
    if not cls.COMMAND_FIELD & 0x8000 and cls is not messages.CCancelRQ
}


def request_type(command: str | type[messages.Message]) -> type[messages.Message]:
    """The request class for ``command``: a class such as ``messages.NActionRQ`` or a name
    such as ``"N-ACTION"`` (case-insensitive, with or without ``-RQ``).

    Raises:
        ValueError: ``command`` names no DIMSE request.
    """
    if isinstance(command, str):
        key = command.upper().removesuffix("-RQ")
        try:
            return COMMANDS[key]
        except KeyError:
            raise ValueError(
                f"unknown DIMSE command {command!r} (one of {', '.join(sorted(COMMANDS))})"
            ) from None
    if command not in COMMANDS.values():
        raise ValueError(f"{command!r} is not a DIMSE request class")
    return command


# ---------------------------------------------------------------------- services


def _processing_failure(message: messages.Message, exc: BaseException) -> int:
    return int(Status.PROCESSING_FAILURE)


#: a handler: ``handler(request)`` in one of the four forms of the module docstring
Handler = Callable[..., Any]


class HandlerCall(Protocol):
    """One request with a handler, as a :data:`Responder` sees it: the engine
    (:class:`~asyncdicom.services.dispatch.ServiceDispatcher`) has found the handler and runs
    it here by the one rule, with its exceptions mapped to the service's status."""

    @property
    def request(self) -> IncomingRequest:
        """The request being served (a :class:`~asyncdicom.services.ServiceRequest`)."""

    @property
    def handler(self) -> Handler:
        """Its handler."""

    @property
    def service(self) -> Service | None:
        """The service that serves it (``None``: no service covers it)."""

    async def collect(self, batch: int) -> tuple[list[Any], Any]:
        """Every item of the handler (any of the four forms: a handler that is not a generator
        returns a list of items, or a status), read until it ends or yields a final status;
        returns ``(items, final)`` where ``final`` is that status, Cancel (0xFE00) when a
        C-CANCEL-RQ stopped the handler, the service's status for a handler that raised, or
        ``None``.  A plain generator is advanced ``batch`` items per worker-thread call."""

    async def send(self, result: Any, *, final: bool) -> None:
        """Turn a handler's result (a status, ``(status, dataset)``, a response, ...) into a
        response and send it."""

    async def respond(self, response: messages.ResponseMessage, dataset: Any = None) -> None:
        """Send ``response`` with ``dataset`` (a pydicom Dataset, or bytes already encoded in
        the context's transfer syntax)."""


class Component(Protocol):
    """Something an application installs on an AE with :meth:`~asyncdicom.AE.install` (an
    archive, a worklist, an MPPS SCP, a Storage Commitment SCP, an audit log): it registers
    its handlers, services and hooks there."""

    def install(self, ae: Any) -> None:
        """Register on ``ae`` (an :class:`~asyncdicom.AE`)."""


#: how a service whose handlers' results are not its responses serves a request that has a
#: handler (C-GET and C-MOVE: the handler names instances, the responder sends them); it sends
#: every response, the final one last
Responder = Callable[[HandlerCall], Awaitable[None]]


@dataclass(frozen=True)
class Service:
    """A DIMSE service class, as data (see the module docstring).

    * ``commands``: the request classes it serves (``messages.CStoreRQ``, ...).
    * ``sop_classes`` / ``rule``: the SOP classes it dispatches on: a fixed set, or a predicate
      on a SOP Class UID (both may be given; either matching is enough).
    * ``abstract_syntaxes``: what it negotiates apart from ``sop_classes``: the UIDs of meta
      SOP classes (a Print Management meta SOP class is negotiated as one presentation
      context, and its requests name the component SOP classes it dispatches on).
    * ``transfer_syntaxes``: what the acceptor accepts for its SOP classes.
    * ``scp_role`` / ``scu_role``: the roles this AE may take as *acceptor* by default
      (PS3.7 D.3.3.4; SCU for services whose acceptor invokes, e.g. a C-GET's C-STOREs).
    * ``accept_by_default``: whether an AE that has the service accepts its (listed) SOP
      classes and abstract syntaxes without further configuration.
    * ``no_handler_status`` / ``no_handler_comment``: the response when no handler is
      registered, with that Error Comment (``{command}`` in it stands for the request's name,
      e.g. ``C-MOVE``); ``no_handler_response`` may build the whole response instead.
    * ``exception_status``: the status a handler's exception maps to.
    * ``responder``: how a request with a handler is served when the handler's results are
      not the responses themselves (see :data:`Responder`); ``None``: the generic forms.
    * ``default_handlers``: ``(request class, handler)`` pairs the service brings, used when
      the application registered none (Storage Commitment's report receiver).
    * ``association_state``: a factory of the service's state for one association, created
      on first use (:attr:`~asyncdicom.services.ServiceRequest.state`) and dropped when the
      association ends.
    * ``shared_state``: a factory of the service's state for one AE, shared by every
      association (:meth:`~asyncdicom.AE.service_state`); services of the same ``name``
      share it.
    """

    name: str
    commands: tuple[type[messages.Message], ...]
    sop_classes: frozenset[str] = frozenset()
    rule: Callable[[str], bool] | None = None
    abstract_syntaxes: frozenset[str] = frozenset()
    transfer_syntaxes: tuple[str, ...] = ()
    scp_role: bool = True
    scu_role: bool = False
    accept_by_default: bool = False
    no_handler_status: int = int(Status.UNRECOGNIZED_OPERATION)
    no_handler_comment: str | None = None
    no_handler_response: Callable[[messages.RequestMessage], messages.ResponseMessage] | None = None
    exception_status: Callable[[messages.Message, BaseException], int] = _processing_failure
    responder: Responder | None = None
    default_handlers: tuple[tuple[type[messages.Message], Handler], ...] = ()
    association_state: Callable[[], Any] | None = None
    shared_state: Callable[[], Any] | None = None

    def covers(self, sop_class_uid: str) -> bool:
        """True when this service serves ``sop_class_uid``."""
        if sop_class_uid in self.sop_classes:
            return True
        return self.rule is not None and self.rule(sop_class_uid)

    def serves(self, message: messages.Message, sop_class_uid: str) -> bool:
        """True when ``message`` (a request) on ``sop_class_uid`` belongs to this service."""
        return type(message) in self.commands and self.covers(sop_class_uid)

    def default_handler(self, command: type[messages.Message]) -> Handler | None:
        """The handler this service brings for ``command``, if any."""
        for cls, handler in self.default_handlers:
            if cls is command:
                return handler
        return None

    def default_response(self, message: messages.RequestMessage) -> messages.ResponseMessage:
        """The response to ``message`` when no handler is registered."""
        if self.no_handler_response is not None:
            return self.no_handler_response(message)
        if self.no_handler_comment is None:
            return make_response(message, self.no_handler_status)
        comment = self.no_handler_comment.replace("{command}", message.NAME.removesuffix("-RQ"))
        return make_response(message, self.no_handler_status, error_comment=comment)


# ---------------------------------------------------------------------- handlers


class HandlerRegistry:
    """Handlers by (request class, SOP class UID); SOP class ``None`` is the fallback for
    every SOP class of that request."""

    __slots__ = ("_handlers", "version")

    def __init__(self) -> None:
        self._handlers: dict[tuple[type[messages.Message], str | None], Callable[..., Any]] = {}
        #: changes with every registration (lets a dispatcher cache its lookups)
        self.version = 0

    def __bool__(self) -> bool:
        return bool(self._handlers)

    def set(
        self,
        command: str | type[messages.Message],
        handler: Callable[..., Any] | None,
        *,
        sop_class: str | None = None,
    ) -> None:
        """Register ``handler`` (``None`` removes the registration)."""
        key = (request_type(command), sop_class)
        if handler is None:
            self._handlers.pop(key, None)
        else:
            self._handlers[key] = handler
        self.version += 1

    def get(
        self, command: str | type[messages.Message], sop_class: str | None = None
    ) -> Callable[..., Any] | None:
        """The handler for ``command`` on ``sop_class``: the one registered for that SOP
        class, else the command's fallback, else ``None``."""
        handlers = self._handlers
        if not handlers:
            return None
        cls = command if isinstance(command, type) else request_type(command)
        if sop_class is not None:
            found = handlers.get((cls, sop_class))
            if found is not None:
                return found
        return handlers.get((cls, None))

    def on(
        self, command: str | type[messages.Message], *, sop_class: str | None = None
    ) -> Callable[[F], F]:
        """Decorator form of :meth:`set`."""

        def register(handler: F) -> F:
            self.set(command, handler, sop_class=sop_class)
            return handler

        return register


def is_async_callable(fn: Any) -> bool:
    """True for ``async def`` functions (and callables whose ``__call__`` is one)."""
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
        getattr(fn, "__call__", None)  # noqa: B004
    )


async def call(fn: Callable[..., Any], *args: Any) -> Any:
    """Call a user callback by asyncdicom's one rule: ``async def`` is awaited on the event
    loop, a plain function runs in a worker thread.

    Raises:
        Exception: whatever the callback raises, unchanged.
    """
    if is_async_callable(fn):
        return await fn(*args)
    return await anyio.to_thread.run_sync(lambda: fn(*args))


# ---------------------------------------------------------------------- responses

_FIELD_NAMES: dict[type, frozenset[str]] = {}


def _field_names(cls: type) -> frozenset[str]:
    names = _FIELD_NAMES.get(cls)
    if names is None:
        names = _FIELD_NAMES[cls] = frozenset(f.name for f in dataclasses.fields(cls))
    return names


def make_response(
    request: messages.RequestMessage, status: int, **fields: Any
) -> messages.ResponseMessage:
    """The response message matching ``request`` with ``status`` (PS3.7 per-service tables).

    Copies Message ID Being Responded To, and the Affected SOP Class/Instance UID from the
    request's affected or requested UIDs where the response has such fields; ``fields`` set
    or override the others (``error_comment``, ``has_dataset``, sub-operation counts, ...).
    An ``error_comment`` longer than an LO holds is cut at a word (:func:`fit_error_comment`).
    """
    rsp_type = messages.MESSAGE_TYPES[request.COMMAND_FIELD | 0x8000]
    names = _field_names(rsp_type)
    kwargs: dict[str, Any] = {
        "message_id_being_responded_to": request.message_id,
        "status": int(status),
    }
    sop_class = messages.sop_class_uid(request)
    sop_instance = getattr(request, "affected_sop_instance_uid", None) or getattr(
        request, "requested_sop_instance_uid", None
    )
    if "affected_sop_class_uid" in names and sop_class:
        kwargs["affected_sop_class_uid"] = sop_class
    if "affected_sop_instance_uid" in names and sop_instance:
        kwargs["affected_sop_instance_uid"] = sop_instance
    for name in ("event_type_id", "action_type_id"):
        if name in names and getattr(request, name, None) is not None:
            kwargs[name] = getattr(request, name)
    if "has_dataset" in names:
        kwargs["has_dataset"] = False
    kwargs.update(fields)
    if kwargs.get("error_comment"):
        kwargs["error_comment"] = fit_error_comment(kwargs["error_comment"])
    response = rsp_type(**{k: v for k, v in kwargs.items() if k in names})
    assert isinstance(response, messages.Response)
    return response
