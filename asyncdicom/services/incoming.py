"""Where an AE's incoming C-STOREs and unclaimed N-EVENT-REPORTs go before its handlers.

:class:`Incoming` is the dispatch point of one AE (``AE.incoming``; the
:class:`~asyncdicom.services.dispatch.ServiceDispatcher` holds it).  Subscribers attach to it
for as long as they want to receive:

* a **store subscriber** (:class:`StoreSubscriber`: an :class:`~asyncdicom.inbox.Inbox`, and
  later a retrieve that awaits its own instances) is asked, most recently attached first,
  whether it claims a C-STORE-RQ from its command and its association (:meth:`claims`: cheap
  and synchronous); one that filters on the data set itself (``needs_study``) is asked again
  with the Study Instance UID read from the head of the data set as it arrives.  The first
  that claims serves the request in place of a handler (:meth:`StoreSubscriber.receive`
  returns what a handler returns).  Handlers of the association itself (a C-GET's) come
  first; when nobody claims, the AE's handlers serve the request as they do without
  subscribers.
* a **notification subscriber** (:class:`NotificationSubscriber`: an
  :class:`~asyncdicom.inbox.Notifications` stream) gets the N-EVENT-REPORTs nobody awaits by
  key: those of a SOP class without a handler (which would otherwise be answered by default),
  and storage commitment reports whose Transaction UID no task awaits
  (:func:`~asyncdicom.services.commitment.receive_report` offers them with
  :meth:`Incoming.offer_notification`).  A report one of them takes is answered Success.

Without subscribers the dispatcher pays one attribute test per request.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any, Protocol

import anyio

from ..association import IncomingRequest
from ..protocol import messages
from ..protocol.status import Status
from .base import is_async_callable, make_response
from .request import ServiceRequest

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

__all__ = [
    "HEAD_LIMIT",
    "Incoming",
    "NotificationSubscriber",
    "StoreSubscriber",
    "incoming_of",
]

#: the most bytes of a data set read ahead to find its Study Instance UID (for a subscriber
#: that filters on the study); a data set whose Study Instance UID comes later has none
HEAD_LIMIT = 1 << 20

#: ``fallback(request)``: the handler that serves a C-STORE nobody claims (or ``None``)
Fallback = Callable[[IncomingRequest], Callable[..., Any] | None]


class StoreSubscriber(Protocol):
    """What attaches to :class:`Incoming` to receive C-STOREs."""

    #: True when :meth:`claims_study` must see the Study Instance UID before claiming
    needs_study: bool

    def claims(self, request: ServiceRequest) -> bool:
        """Whether the C-STORE-RQ ``request`` is for this subscriber, from its command and
        its association (synchronous, called for every C-STORE while attached)."""

    def claims_study(self, study_instance_uid: str | None) -> bool:
        """Whether an instance of that study (``None``: unknown) is for this subscriber."""

    async def receive(self, request: ServiceRequest) -> Any:
        """Serve the claimed request: read its data set and return the C-STORE's answer, in
        any form a handler returns (a status, a response)."""


class NotificationSubscriber(Protocol):
    """What attaches to :class:`Incoming` to receive N-EVENT-REPORTs nobody awaits."""

    def claims_report(self, message: messages.NEventReportRQ) -> bool:
        """Whether the report is for this subscriber (SOP class, event type)."""

    async def deliver(
        self, request: ServiceRequest, information: Dataset | None, parsed: Any = None
    ) -> bool:
        """Take the report (``parsed``: what its service made of it, a
        :class:`~asyncdicom.services.CommitmentResult` say); False when it cannot (full and
        not drained in time, closed)."""


class Incoming:
    """The incoming-store and notification dispatch point of one AE (see the module
    docstring)."""

    __slots__ = ("_first", "_notifications", "_stores", "active")

    def __init__(self) -> None:
        self._stores: list[StoreSubscriber] = []
        #: subscribers asked before every other (a retrieve awaiting its own instances)
        self._first: list[StoreSubscriber] = []
        self._notifications: list[NotificationSubscriber] = []
        #: some subscriber is attached (the dispatcher's one test per request)
        self.active = False

    def _update(self) -> None:
        self.active = bool(self._stores or self._first or self._notifications)

    def attach_store(self, subscriber: StoreSubscriber, *, first: bool = False) -> None:
        """Offer C-STOREs to ``subscriber`` (before those attached earlier).  ``first``: before
        every subscriber attached without it, whenever they attach (a retrieve to ourselves
        claims only its own instances, which an inbox without filters would claim too)."""
        (self._first if first else self._stores).append(subscriber)
        self._update()

    def detach_store(self, subscriber: StoreSubscriber) -> None:
        """Offer ``subscriber`` nothing more (requests it claimed already go on)."""
        for attached in (self._first, self._stores):
            if subscriber in attached:
                attached.remove(subscriber)
        self._update()

    def attach_notifications(self, subscriber: NotificationSubscriber) -> None:
        """Offer unclaimed N-EVENT-REPORTs to ``subscriber`` (before those attached
        earlier)."""
        self._notifications.append(subscriber)
        self._update()

    def detach_notifications(self, subscriber: NotificationSubscriber) -> None:
        """Offer ``subscriber`` nothing more."""
        if subscriber in self._notifications:
            self._notifications.remove(subscriber)
        self._update()

    # -- C-STORE

    def store_handler(
        self, request: ServiceRequest, fallback: Fallback
    ) -> Callable[[ServiceRequest], Any] | None:
        """The handler that serves the C-STORE ``request`` through the subscribers that may
        claim it, or ``None`` when none can (the AE's handlers then serve it)."""
        if not isinstance(request.message, messages.CStoreRQ):
            return None
        candidates = [
            s for s in (*reversed(self._first), *reversed(self._stores)) if s.claims(request)
        ]
        if not candidates:
            return None
        if not any(s.needs_study for s in candidates):
            return candidates[0].receive

        async def choose(request: ServiceRequest) -> Any:
            head, rest, study = await _read_head(request)
            replay = _Replayed(request, head, rest)
            try:
                for subscriber in candidates:
                    if not subscriber.needs_study or subscriber.claims_study(study):
                        return await subscriber.receive(replay)
                handler = fallback(replay)
                if handler is None:
                    return default_store_answer(replay)
                if is_async_callable(handler):
                    return await handler(replay)
                replay.data = await replay.read()
                return await anyio.to_thread.run_sync(handler, replay)
            finally:
                if replay.data_unread:
                    await replay.discard()

        return choose

    # -- N-EVENT-REPORT

    def claims_report(self, message: messages.Message) -> bool:
        """Some notification subscriber takes this N-EVENT-REPORT-RQ."""
        return isinstance(message, messages.NEventReportRQ) and any(
            s.claims_report(message) for s in self._notifications
        )

    def notification_handler(
        self,
        request: ServiceRequest,
        default: Callable[[messages.RequestMessage], messages.ResponseMessage],
    ) -> Callable[..., Any] | None:
        """The handler of an N-EVENT-REPORT that has no other (``None``: no subscriber
        claims it); ``default`` answers it when the subscriber cannot take it after all."""
        if not self.claims_report(request.message):
            return None

        async def deliver(request: ServiceRequest) -> Any:
            information = await request.dataset() if request.has_dataset else None
            if await self.offer_notification(request, information):
                return int(Status.SUCCESS)
            return default(request.message)  # closed or full meanwhile: as without it

        return deliver

    async def offer_notification(
        self, request: ServiceRequest, information: Dataset | None, parsed: Any = None
    ) -> bool:
        """Hand an N-EVENT-REPORT nobody awaits to the first subscriber that claims it; True
        if one took it."""
        message = request.message
        assert isinstance(message, messages.NEventReportRQ)
        for subscriber in reversed(self._notifications):
            if subscriber.claims_report(message) and await subscriber.deliver(
                request, information, parsed
            ):
                return True
        return False


def incoming_of(request: Any) -> Incoming | None:
    """The :class:`Incoming` of the AE serving ``request`` (``None`` when it has none)."""
    found = getattr(getattr(request, "store", None), "incoming", None)
    return found if isinstance(found, Incoming) else None


def default_store_answer(request: IncomingRequest) -> messages.ResponseMessage:
    """The answer to a C-STORE that no subscriber and no handler serves (0x0122)."""
    return make_response(request.message, int(Status.SOP_CLASS_NOT_SUPPORTED))


# ---------------------------------------------------------------------- the head of a data set


async def _read_head(
    request: ServiceRequest,
) -> tuple[list[bytes], AsyncIterator[memoryview] | None, str | None]:
    """Read fragments until the Study Instance UID is known (or :data:`HEAD_LIMIT` bytes):
    the fragments read, the iterator of the rest (``None`` once it ended) and the UID.  The
    fragments are walked as they come (:class:`~asyncdicom.storage.structure.StructureCheck`,
    which inflates a deflated data set); a data set that breaks its structure this early has
    no study here, and the one who serves it finds out why."""
    from ..errors import InvalidDataset
    from ..storage.structure import StructureCheck

    chunks = request.chunks()
    iterator = chunks.__aiter__()
    head: list[bytes] = []
    size = 0
    check = StructureCheck(request.context.transfer_syntax or "")
    while size < HEAD_LIMIT:
        try:
            fragment = await iterator.__anext__()
        except StopAsyncIteration:
            return head, None, check.study_uid()[1]
        head.append(bytes(fragment))
        size += len(fragment)
        try:
            check.feed(fragment)
        except InvalidDataset:
            return head, iterator, None
        known, study = check.study_uid()
        if known:
            return head, iterator, study
    return head, iterator, None


class _Replayed(ServiceRequest):
    """A C-STORE whose head was read already: the same request, its data set given again
    from the start (the head, then the rest as it arrives)."""

    def __init__(
        self,
        original: ServiceRequest,
        head: list[bytes],
        rest: AsyncIterator[memoryview] | None,
    ) -> None:
        super().__init__(original.association, original.context, original.message, None)
        self.store = original.store
        self._original = original
        self._head = head
        self._rest = rest
        self._started = False

    @property
    def has_dataset(self) -> bool:
        return True

    @property
    def data_unread(self) -> bool:
        return not self._started

    async def chunks(self) -> AsyncIterator[memoryview]:
        if self._started:
            raise RuntimeError("the data set of this request was already read")
        self._started = True
        head, self._head = self._head, []
        for piece in head:
            yield memoryview(piece)
        if self._rest is not None:
            async for fragment in self._rest:
                yield fragment

    async def respond(self, response: Any, dataset: Any = None) -> None:
        await self._original.respond(response, dataset)
        self.answered = self._original.answered
