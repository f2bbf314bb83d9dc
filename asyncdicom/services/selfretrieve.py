"""Retrieving to ourselves: a C-MOVE whose Move Destination is our own listening AE (or a
C-GET), awaited as one operation that yields the instances themselves as they arrive.

::

    scu = AE("MYAE", accept_any_storage=True)
    async with scu.server(port=11113):                  # the PACS knows MYAE at that port
        async with scu.associate(host, port, called_aet="PACS",
                                 contexts=presets.retrieve_contexts("move")) as assoc:
            async with assoc.retrieve(query) as instances:
                async for instance in instances:
                    ds = instance.dataset()             # decoded when asked
            print(instances.status, instances.completed, instances.arrived)

With ``via="move"`` (the default) the instances travel on associations the move SCP opens to
us.  Each incoming C-STORE is matched to the retrieve that asked for it (PS3.7 9.1.4, 9.3.1.1):

* by its Move Originator Application Entity Title and Move Originator Message ID, which equal
  our calling AE title and our C-MOVE-RQ's Message ID (a subscription of a
  :class:`~asyncdicom.correlation.Correlator` keyed by them);
* or, for a C-STORE that carries neither (some SCPs do not send them) or names the SCP itself
  as the originator (pynetdicom's qrscp does), by the association it arrives on -- one the
  move SCP (calling AE title = the AE title we called, or ``peer_aet``) opened while our
  C-MOVE was in progress -- and, when the request named its SOP Instance UIDs (IMAGE level),
  by the instance's being one of them.

A C-STORE that matches no retrieve goes to the AE's own C-STORE handler, as if nothing were
intercepting.  With ``via="get"`` the instances come as C-STOREs on the association itself.

The iteration ends when the final C-MOVE (C-GET) response has come **and** as many instances
have arrived as its sub-operations completed (Number of Completed plus Warning
Sub-operations): the final response travels on our association and may overtake the last
C-STORE on the other one.  The wait for those stragglers is bounded (``arrival_timeout``):
past it, :class:`~asyncdicom.errors.RetrieveIncomplete` says how many are missing.  A final
Failure raises :class:`~asyncdicom.errors.RetrieveFailed` once the instances that did arrive
were yielded.

Backpressure: at most ``buffer`` instances wait for the consumer; beyond, the C-STORE
responses wait (within the peer's DIMSE timeout), so a slow consumer slows the SCP down
rather than filling memory.  Leaving the block early (``break``, an exception) sends
C-CANCEL-RQ and reads the final response: the association stays usable.  C-STOREs that still
come for a retrieve that was left, before its final response, are refused (0xA700) unless
``store`` saved them first (then they are answered Success and stay in the folder); after the
final response they are any C-STORE (the AE's handler).
"""

from __future__ import annotations

import os
import weakref
from collections.abc import AsyncIterator, Hashable
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import anyio

from ..association import BaseAssociation, DIMSEResponse
from ..correlation import Correlator, Subscription
from ..errors import RetrieveFailed, RetrieveIncomplete
from ..hooks import HookEvent
from ..protocol import messages
from ..protocol.messages import Priority
from ..protocol.status import Status
from ..protocol.upper_layer import Role
from .base import is_async_callable
from .retrieve import Retrieval, RetrieveSCU

if TYPE_CHECKING:
    from collections.abc import Iterator

    from pydicom.dataset import Dataset

    from ..storage.writer import DuplicatePolicy, Layout, StoredFile

__all__ = [
    "DEFAULT_ARRIVAL_TIMEOUT",
    "RetrieveIncomplete",
    "RetrieveToSelfSCU",
    "RetrievedInstance",
    "RetrievedInstances",
]

#: seconds to wait, after the final response, for instances still on their way
DEFAULT_ARRIVAL_TIMEOUT = 60.0

#: the status a C-STORE gets when its retrieve was left before it arrived (PS3.4 B.2.3:
#: Refused, Out of Resources)
_REFUSED = 0xA700


class RetrievedInstance:
    """One instance a retrieve to ourselves received (see :mod:`.selfretrieve`).

    :attr:`file` is the Part 10 file when the retrieve saved to a folder (``store=``), else
    ``None`` and :attr:`data` holds the data set as received (in :attr:`transfer_syntax_uid`).
    :meth:`dataset` decodes it on first call.  The other attributes identify the
    sub-operation: the C-STORE-RQ's Message ID, the AE that sent it and the Move Originator
    fields it carried (``None`` when absent, and for a C-GET).
    """

    __slots__ = (
        "_dataset",
        "calling_ae_title",
        "data",
        "file",
        "message_id",
        "move_originator_aet",
        "move_originator_message_id",
        "sop_class_uid",
        "sop_instance_uid",
        "transfer_syntax_uid",
    )

    def __init__(
        self,
        *,
        sop_class_uid: str,
        sop_instance_uid: str,
        transfer_syntax_uid: str,
        message_id: int,
        calling_ae_title: str,
        move_originator_aet: str | None,
        move_originator_message_id: int | None,
        file: StoredFile | None = None,
        data: bytes | None = None,
    ) -> None:
        #: Affected SOP Class UID and Affected SOP Instance UID of the C-STORE-RQ
        self.sop_class_uid = sop_class_uid
        self.sop_instance_uid = sop_instance_uid
        #: the transfer syntax of the presentation context it arrived in
        self.transfer_syntax_uid = transfer_syntax_uid
        #: the C-STORE-RQ's Message ID (on the association it arrived on)
        self.message_id = message_id
        #: the AE that sent it (the move SCP's title; for a C-GET, the SCP we called)
        self.calling_ae_title = calling_ae_title
        #: Move Originator Application Entity Title and Message ID (PS3.7 9.3.1.1)
        self.move_originator_aet = move_originator_aet
        self.move_originator_message_id = move_originator_message_id
        #: the file it was saved to (``store=``), else ``None``
        self.file = file
        #: the data set as received, when it was not saved to a file
        self.data = data
        self._dataset: Dataset | None = None

    def dataset(self) -> Dataset:
        """The data set, decoded with pydicom on the first call (from :attr:`file`, or from
        :attr:`data`); later calls return the same object.

        Raises:
            InvalidDicomFile: the file cannot be read.
            InvalidDataset: the data cannot be decoded.
        """
        if self._dataset is None:
            if self.file is not None:
                from pydicom import dcmread

                from ..errors import InvalidDicomFile

                try:
                    self._dataset = dcmread(self.file)
                except Exception as exc:
                    raise InvalidDicomFile(f"{self.file}: {exc}") from exc
            else:
                from ..storage.codec import decode_dataset

                self._dataset = decode_dataset(self.data or b"", self.transfer_syntax_uid)
        return self._dataset

    def __repr__(self) -> str:
        where = f" file={str(self.file)!r}" if self.file is not None else ""
        return f"<RetrievedInstance {self.sop_instance_uid}{where}>"


class RetrievedInstances:
    """A retrieve to ourselves in progress: an async iterator of :class:`RetrievedInstance`
    (see :mod:`.selfretrieve` for when it ends), with the retrieve's counts.

    While it runs, :attr:`arrived` counts the instances received (:attr:`yielded` those handed
    out); :attr:`completed`, :attr:`failed`, :attr:`warning` and :attr:`remaining` are the
    sub-operation counts of the latest C-MOVE/C-GET response.  Once the block is left,
    :attr:`final` is the final response (also after an early exit: the response to the
    C-CANCEL-RQ), :attr:`status` its status, :attr:`cancel_sent` whether C-CANCEL-RQ went.
    """

    def __init__(
        self,
        via: Literal["move", "get"],
        subscription: Subscription[RetrievedInstance],
        *,
        store: Path | None,
        on_duplicate: DuplicatePolicy,
        layout: Layout,
        expected_uids: frozenset[str] | None,
        arrival_timeout: float,
        log: Any,
    ) -> None:
        #: ``"move"`` or ``"get"``
        self.via = via
        #: instances received so far (buffered or handed out)
        self.arrived = 0
        #: instances handed out by the iteration
        self.yielded = 0
        #: the SOP Instance UIDs the request named (IMAGE level), else ``None``
        self.expected_uids = expected_uids
        self._subscription = subscription
        self._store = store
        self._on_duplicate = on_duplicate
        self._layout = layout
        self._arrival_timeout = arrival_timeout
        self._log = log
        self._uids_arrived: set[str] = set()
        self._retrieval: Retrieval | None = None
        self._error: BaseException | None = None
        self._responses_done = False
        self._deadline: float | None = None

    # ------------------------------------------------------------------ counts

    @property
    def retrieval(self) -> Retrieval:
        """The underlying C-MOVE/C-GET (:class:`~asyncdicom.Retrieval`), its counts up to
        date (a final response read when the block was left early counted too)."""
        retrieval = self._retrieval
        if retrieval is None:
            raise RuntimeError("the retrieve has not started")
        final = retrieval.operation.final
        if final is not None:
            retrieval._count(final)
        return retrieval

    @property
    def message_id(self) -> int:
        """The C-MOVE-RQ's (C-GET-RQ's) Message ID."""
        return self.retrieval.operation.message_id

    @property
    def final(self) -> DIMSEResponse | None:
        """The final response, once it came."""
        return self.retrieval.final

    @property
    def status(self) -> int | None:
        """The final response's status (``None`` before it came)."""
        return self.retrieval.status

    @property
    def cancel_sent(self) -> bool:
        """C-CANCEL-RQ was sent (the block was left before the final response)."""
        return self.retrieval.operation.cancel_sent

    @property
    def completed(self) -> int | None:
        """Number of Completed Sub-operations of the latest response."""
        return self.retrieval.completed

    @property
    def failed(self) -> int | None:
        """Number of Failed Sub-operations of the latest response."""
        return self.retrieval.failed

    @property
    def warning(self) -> int | None:
        """Number of Warning Sub-operations of the latest response."""
        return self.retrieval.warning

    @property
    def remaining(self) -> int | None:
        """Number of Remaining Sub-operations of the latest response."""
        return self.retrieval.remaining

    @property
    def failed_instances(self) -> list[str]:
        """The Failed SOP Instance UID List of the final response."""
        return self.retrieval.failed_instances

    @property
    def expected(self) -> int | None:
        """How many instances the final response says were sent: its completed plus warning
        sub-operations (``None`` before it came)."""
        final = self.retrieval.operation.final
        if final is None:
            return None
        msg: Any = final.message
        return int(msg.number_of_completed_suboperations or 0) + int(
            msg.number_of_warning_suboperations or 0
        )

    # ------------------------------------------------------------------ iteration

    def __aiter__(self) -> RetrievedInstances:
        return self

    async def __anext__(self) -> RetrievedInstance:
        subscription = self._subscription
        while True:
            try:
                instance = subscription.get_nowait()
            except anyio.WouldBlock:
                pass
            else:
                self.yielded += 1
                return instance
            if self._error is not None:
                raise self._error
            timeout = float("inf")
            if self._responses_done:
                expected = self.expected or 0
                if self.arrived >= expected:
                    raise StopAsyncIteration
                now = anyio.current_time()
                if self._deadline is None:
                    self._deadline = now + self._arrival_timeout
                timeout = self._deadline - now
                if timeout <= 0:
                    missing = sorted((self.expected_uids or frozenset()) - self._uids_arrived)
                    self._log.warning(
                        "retrieve_instances_missing", expected=expected, arrived=self.arrived
                    )
                    self._error = RetrieveIncomplete(
                        f"C-{self.via.upper()}",
                        expected,
                        self.arrived,
                        self._arrival_timeout,
                        missing,
                    )
                    raise self._error
            with anyio.move_on_after(timeout):
                await subscription.changed()

    async def _read_responses(self, retrieval: Retrieval) -> None:
        """Read the C-MOVE/C-GET responses (a task beside the consumer); a failure is raised
        by the iteration once the instances that arrived were handed out."""
        try:
            async for _ in retrieval:
                self._subscription.notify()
        except (RetrieveFailed, Exception) as exc:
            self._error = exc
        finally:
            self._responses_done = True
            self._subscription.notify()

    # ------------------------------------------------------------------ the C-STOREs

    def wants(self, uid: str) -> bool:
        """Whether an instance without Move Originator fields may belong to this retrieve."""
        return self.expected_uids is None or uid in self.expected_uids

    async def receive(self, request: Any) -> int:
        """The C-STORE handler of this retrieve: save or read the instance, hand it to the
        consumer (waiting while :attr:`buffer` are queued), answer the sub-operation."""
        message: messages.CStoreRQ = request.message
        if self._subscription.closed and self._store is None:
            return _REFUSED  # left: nobody will take it (a saved one is answered Success)
        file: StoredFile | None = None
        data: bytes | None = None
        if self._store is not None:
            try:
                file = await request.save_to(
                    self._store, on_duplicate=self._on_duplicate, layout=self._layout
                )
            except OSError as exc:
                self._log.warning("retrieve_store_failed", error=str(exc))
                return int(Status.OUT_OF_RESOURCES)
        else:
            data = await request.read()
        association = request.association
        instance = RetrievedInstance(
            sop_class_uid=message.affected_sop_class_uid,
            sop_instance_uid=message.affected_sop_instance_uid,
            transfer_syntax_uid=request.context.transfer_syntax or "",
            message_id=message.message_id,
            calling_ae_title=association.peer_ae_title,
            move_originator_aet=(message.move_originator_aet or "").strip(" ") or None,
            move_originator_message_id=message.move_originator_message_id,
            file=file,
            data=data,
        )
        if not await self._subscription.put(instance):
            # left meanwhile: a saved instance is stored all the same
            return int(Status.SUCCESS) if file is not None else _REFUSED
        self.arrived += 1
        self._uids_arrived.add(instance.sop_instance_uid)
        return int(Status.SUCCESS)


# ---------------------------------------------------------------------- the AE's side


@dataclass(frozen=True, slots=True)
class _Move:
    """A C-MOVE to ourselves in progress, as the incoming C-STOREs are matched to it."""

    instances: RetrievedInstances
    #: the move SCP's AE title: the calling AE title of the associations it opens
    peer_aet: str


class _Inbound:
    """Per AE: the C-MOVEs to ourselves in progress, and the subscriber of the AE's incoming
    C-STOREs (``ae.incoming``, asked before any inbox) that claims their instances; the
    C-STOREs that are not theirs go on to the inboxes and the AE's own handlers."""

    #: a StoreSubscriber that claims from the command and the association alone
    needs_study = False

    def __init__(self, ae: Any) -> None:
        self._ae = weakref.ref(ae)
        #: the instances of each C-MOVE, keyed by ("C-MOVE", originator AE, Message ID)
        self.correlator: Correlator[RetrievedInstance] = Correlator(max_early=0)
        self.moves: dict[Hashable, _Move] = {}
        #: associations opened by a move SCP during a move: the moves they may serve
        self.bound: weakref.WeakKeyDictionary[BaseAssociation, list[Hashable]] = (
            weakref.WeakKeyDictionary()
        )
        self._hooked = False

    @contextmanager
    def expect(self, key: Hashable, move: _Move) -> Iterator[None]:
        """Route the C-STOREs of ``move`` to it for the duration of the block."""
        ae = self._ae()
        assert ae is not None
        if not self._hooked:
            ae.hooks.add(HookEvent.ASSOCIATION_ACCEPTED, self._accepted)
            self._hooked = True
        if not self.moves:
            ae.incoming.attach_store(self, first=True)
        self.moves[key] = move
        try:
            yield
        finally:
            del self.moves[key]
            if not self.moves:
                ae.incoming.detach_store(self)

    def _accepted(self, event: HookEvent, association: Any, **data: Any) -> None:
        if association.role is not Role.ACCEPTOR or not self.moves:
            return
        calling = association.calling_ae_title.strip(" ")
        keys = [key for key, move in self.moves.items() if move.peer_aet == calling]
        if keys:
            self.bound[association] = keys

    # -- StoreSubscriber

    def claims(self, request: Any) -> bool:
        return self.match(request.association, request.message) is not None

    def claims_study(self, study_instance_uid: str | None) -> bool:
        return True

    async def receive(self, request: Any) -> Any:
        instances = self.match(request.association, request.message)
        if instances is None:  # its move ended between the claim and now
            return await _ae_handler(request)
        return await instances.receive(request)

    def match(self, association: Any, message: messages.CStoreRQ) -> RetrievedInstances | None:
        """The retrieve an incoming C-STORE belongs to, if any."""
        originator = (message.move_originator_aet or "").strip(" ")
        message_id = message.move_originator_message_id
        if originator and message_id is not None:
            # the move's subscription, also once the consumer left (until the final
            # response): its late C-STOREs are answered by it, not by the AE's handler
            move = self.moves.get(("C-MOVE", originator, message_id))
            if move is not None:
                return move.instances
            # Some SCPs (pynetdicom's qrscp 2.x) name themselves as the Move Originator: such
            # a C-STORE is matched as one without the fields.  One naming a third AE is that
            # AE's move, not ours.
            if originator != association.calling_ae_title.strip(" "):
                return None
        for bound in self.bound.get(association, ()):
            move = self.moves.get(bound)
            if move is not None and move.instances.wants(message.affected_sop_instance_uid):
                return move.instances
        return None


async def _ae_handler(request: Any) -> Any:
    """Serve a C-STORE as the AE would without interception: its handler for the SOP class,
    else the storage service's default."""
    association = request.association
    sop_class = request.sop_class_uid
    handler = association.ae.handlers.get(messages.CStoreRQ, sop_class)
    dispatcher: Any = request.store
    if handler is None and dispatcher is not None:
        service = dispatcher.service_for(request.message, sop_class)
        handler = None if service is None else service.default_handler(messages.CStoreRQ)
        if handler is None:
            return dispatcher.default_response(request.message, sop_class)
    if handler is None:
        return int(Status.SOP_CLASS_NOT_SUPPORTED)
    if is_async_callable(handler):
        return await handler(request)
    if request.has_dataset:
        request.data = await request.read()
    return await anyio.to_thread.run_sync(handler, request)


_INBOUND: weakref.WeakKeyDictionary[Any, _Inbound] = weakref.WeakKeyDictionary()


def _inbound(ae: Any) -> _Inbound:
    found = _INBOUND.get(ae)
    if found is None:
        found = _INBOUND[ae] = _Inbound(ae)
    return found


def _requested_uids(identifier: Any) -> frozenset[str] | None:
    """The SOP Instance UIDs an IMAGE-level request names, else ``None``."""
    if isinstance(identifier, (bytes, bytearray, memoryview)):
        return None
    level = str(identifier.get("QueryRetrieveLevel", "") or "").strip().upper()
    value = identifier.get("SOPInstanceUID")
    if level != "IMAGE" or not value:
        return None
    values = [value] if isinstance(value, str) else list(value)
    found = frozenset(str(v).strip("\0 ") for v in values if str(v).strip("\0 "))
    return found or None


# ---------------------------------------------------------------------- SCU


class RetrieveToSelfSCU(RetrieveSCU):
    """The retrieve-to-ourselves helper of an association (:meth:`retrieve`)."""

    @asynccontextmanager
    async def retrieve(
        self,
        identifier: Dataset | bytes,
        *,
        via: Literal["move", "get"] = "move",
        model: str = "study",
        store: str | os.PathLike[str] | None = None,
        destination: str | None = None,
        peer_aet: str | None = None,
        arrival_timeout: float = DEFAULT_ARRIVAL_TIMEOUT,
        buffer: int = 16,
        priority: int = Priority.MEDIUM,
        on_duplicate: DuplicatePolicy = "unique",
        layout: Layout = "flat",
    ) -> AsyncIterator[RetrievedInstances]:
        """Retrieve the instances matching ``identifier`` to ourselves and yield each as it
        arrives: ``async with assoc.retrieve(query) as instances: async for i in instances``.

        ``via="move"`` (default) sends a C-MOVE-RQ whose Move Destination is ``destination``
        (default: this AE's title; the SCP must know it, with the host and port where this AE
        serves) and takes the C-STOREs arriving on the associations the SCP opens to this AE,
        which must be serving (:meth:`asyncdicom.AE.serve`) and accepting the storage SOP
        classes; ``peer_aet`` (default: the AE title called on this association) is the
        move SCP's calling AE title, used to match C-STOREs that carry no Move Originator
        fields.  ``via="get"`` sends a C-GET-RQ (the storage contexts proposed with the SCP
        role, :func:`asyncdicom.presets.retrieve_contexts`).  ``model`` is the Query/Retrieve
        model (``"study"``, ``"patient"``, ``"patient-study"`` or a UID).

        Each instance is kept in memory (:attr:`RetrievedInstance.data`, at most
        ``AEConfig.max_dataset_in_memory`` bytes), or with ``store`` saved to that folder
        first (``on_duplicate``, ``layout`` as for ``save_to``).  At most ``buffer`` wait for
        the consumer.  The iteration ends once the final response came and every completed
        sub-operation's instance arrived, waiting at most ``arrival_timeout`` seconds after
        the final response.  Leaving the block early sends C-CANCEL-RQ and reads the final
        response; the association stays usable.

        Raises:
            ValueError: ``model`` is not a Query/Retrieve model, ``destination`` is not an AE
                title, or ``buffer`` is below 1.
            NoAcceptedContext: the model's MOVE (GET) context was not accepted.
            RetrieveFailed: (from the iteration) the final status is a Failure.
            RetrieveIncomplete: (from the iteration) instances never came.
            AssociationError: the association failed meanwhile (aborted, timed out, lost).
        """
        folder = None if store is None else Path(store)
        log = self.log
        if via == "get":
            subscription: Subscription[RetrievedInstance] = Subscription(
                ("C-GET", id(self)), buffer
            )
            instances = RetrievedInstances(
                "get",
                subscription,
                store=folder,
                on_duplicate=on_duplicate,
                layout=layout,
                expected_uids=_requested_uids(identifier),
                arrival_timeout=arrival_timeout,
                log=log,
            )
            try:
                async with self.get(
                    identifier, store=instances.receive, model=model, priority=priority
                ) as retrieval:
                    async with _consumer(instances, retrieval):
                        yield instances
            finally:
                subscription.close()
            return
        if via != "move":
            raise ValueError(f"via must be 'move' or 'get', not {via!r}")
        ae: Any = self.ae
        context, rq, data = self._move_request(
            identifier, destination or ae.ae_title, model, priority
        )
        inbound = _inbound(ae)
        key = ("C-MOVE", self.calling_ae_title.strip(" "), rq.message_id)
        with inbound.correlator.subscribe(key, capacity=buffer) as subscription:
            instances = RetrievedInstances(
                "move",
                subscription,
                store=folder,
                on_duplicate=on_duplicate,
                layout=layout,
                expected_uids=_requested_uids(identifier),
                arrival_timeout=arrival_timeout,
                log=log.bind(move_message_id=rq.message_id),
            )
            peer = (peer_aet or self.called_ae_title).strip(" ")
            with inbound.expect(key, _Move(instances, peer)):
                async with self.invoke(context, rq, data) as operation:
                    async with _consumer(instances, Retrieval(operation)):
                        yield instances


@asynccontextmanager
async def _consumer(
    instances: RetrievedInstances, retrieval: Retrieval
) -> AsyncIterator[RetrievedInstances]:
    """Read ``retrieval``'s responses beside the block; when the block ends, stop taking
    instances (a C-STORE still waiting is refused) before the operation is cancelled."""
    instances._retrieval = retrieval
    failure: BaseException | None = None
    async with anyio.create_task_group() as tg:
        tg.start_soon(instances._read_responses, retrieval)
        try:
            yield instances
        except BaseException as exc:
            failure = exc
        instances._subscription.close()
        tg.cancel_scope.cancel()
    if failure is not None:
        raise failure
