"""Query/Retrieve service class, GET and MOVE (PS3.4 C.4.2, C.4.3; C-GET and C-MOVE, PS3.7 9.1.3,
9.1.4).

SCU: :meth:`RetrieveSCU.move` asks the SCP to send the matching instances to another AE (a
*move destination* it knows by AE title); :meth:`RetrieveSCU.get` has them sent back on the same
association, as C-STORE-RQs that this side answers (the storage SOP classes must have been
proposed with the SCP role: :func:`asyncdicom.presets.retrieve_contexts`)::

    async with assoc.move(query, destination="STORESCP", model="study") as retrieval:
        async for progress in retrieval:       # each Pending C-MOVE-RSP
            print(retrieval.completed, "of", retrieval.completed + retrieval.remaining)
    print(retrieval.status, retrieval.failed_instances)

    async with assoc.get(query, store="incoming/") as retrieval:
        await retrieval.wait()

Leaving the block before the final response sends C-CANCEL-RQ and reads the remaining
responses.  A final Failure (0xA801 destination unknown, 0xA702 every sub-operation failed,
0xA900, 0xC000, ...) raises :class:`RetrieveFailed`; Success, Warning (0xB000: some
sub-operations failed or warned) and Cancel (0xFE00) do not.

SCP: a handler registered for C-GET or C-MOVE (``@ae.on("C-MOVE", sop_class=...)``; a plain
generator runs in a worker thread) yields the instances to send: paths of DICOM files, pydicom
Datasets or :class:`~asyncdicom.storage.Part10Source` objects.  It may instead yield a
final status (``0xC000``, ``(0xA900, error_dataset)``, a response) to refuse the request.  A
handler that is not a generator returns its instances (a list) or such a status.  The
framework reads them all (a C-CANCEL-RQ stops the handler between two items; a plain
generator is advanced in batches in a worker thread), reads each file's
header, then performs the sub-operations and counts them (:func:`run_retrieve`):

* C-MOVE: looks the Move Destination up in the AE's table (``ae.move_destinations``, AE title ->
  ``(host, port)``; an unknown title is answered 0xA801), opens an association to it proposing
  exactly the SOP classes and transfer syntaxes the instances need (at most 128 presentation
  contexts per association: more are sent over several associations, one after the other), with
  an asynchronous operations window of :data:`MOVE_WINDOW`, so that several C-STOREs are
  outstanding when the destination grants it; each C-STORE-RQ carries the Move Originator AE
  Title and Message ID.
* C-GET: sends the C-STORE-RQs on the requesting association, in the contexts where the SCU
  accepted the SCP role, as many at once as the association's window allows.
* A Pending response (0xFF00) with the four counts follows each sub-operation; the final
  response is Success (0x0000) when every sub-operation succeeded, Warning (0xB000) when some
  failed or warned, Failure 0xA702 when all failed, or Cancel (0xFE00) when a C-CANCEL-RQ came
  (no new sub-operation starts, the outstanding ones finish, the counts are those reached).  Its
  identifier carries the Failed SOP Instance UID List (0008,0058) when any failed.

Defaults of :data:`QR_GET_SERVICE` and :data:`QR_MOVE_SERVICE`: not accepted unless configured
(:func:`asyncdicom.presets.qr_supported`); no handler: 0xC000.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

import anyio

from ..association import BaseAssociation, DIMSEResponse, Operation
from ..errors import DICOMError, NoAcceptedContext, RetrieveFailed
from ..log import get_logger
from ..protocol import messages, uids
from ..protocol.messages import Priority
from ..protocol.negotiation import ContextRequest, PresentationContext
from ..protocol.status import Status, StatusCategory
from .base import HandlerCall, Service, make_response
from .query_retrieve import OperationResults, identifier_context
from .request import ServiceRequest
from .storage import store

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

    from ..storage.writer import DuplicatePolicy, Layout, StoredFile

__all__ = [
    "GET_MODELS",
    "MOVE_MODELS",
    "MOVE_WINDOW",
    "QR_GET_SERVICE",
    "QR_MOVE_SERVICE",
    "MoveAssociator",
    "Retrieval",
    "RetrieveFailed",
    "RetrieveSCU",
    "retrieve_model_uid",
    "run_retrieve",
    "sop_classes_to_retrieve",
    "syntaxes_to_retrieve",
]

#: the Query/Retrieve information models by short name -> their GET SOP Class UID
GET_MODELS: dict[str, str] = {
    "patient": uids.PATIENT_ROOT_QR_GET,
    "study": uids.STUDY_ROOT_QR_GET,
    "patient-study": uids.PATIENT_STUDY_ONLY_QR_GET,
}
#: ... and their MOVE SOP Class UID
MOVE_MODELS: dict[str, str] = {
    "patient": uids.PATIENT_ROOT_QR_MOVE,
    "study": uids.STUDY_ROOT_QR_MOVE,
    "patient-study": uids.PATIENT_STUDY_ONLY_QR_MOVE,
}

#: C-STORE sub-operations a C-MOVE keeps outstanding on the destination's association at most
#: (proposed as the asynchronous operations window; a destination that does not grant one
#: gets one at a time)
MOVE_WINDOW = 8
#: ... and a C-GET on the requesting association (within the window the SCU granted)
GET_WINDOW = 8

#: Failed SOP Instance UID List (0008,0058)
FAILED_SOP_INSTANCE_UID_LIST = 0x00080058

#: how many file headers are read per worker-thread call
_HEADER_BATCH = 64
#: how many items of a plain-generator handler are taken per worker-thread call
_ITEM_BATCH = 256


def retrieve_model_uid(model: str, operation: Literal["get", "move"]) -> str:
    """The GET or MOVE SOP Class UID of ``model`` (``"patient"``, ``"study"``,
    ``"patient-study"``, or one of the UIDs itself); ValueError otherwise."""
    table = GET_MODELS if operation == "get" else MOVE_MODELS
    if model in table:
        return table[model]
    if model in table.values():
        return model
    raise ValueError(
        f"unknown Query/Retrieve model {model!r} for {operation.upper()} "
        f"(one of {', '.join(table)}, or its UID)"
    )


# ---------------------------------------------------------------------- SCP: defaults


_NO_HANDLER_COMMENT = "no {command} handler is registered for this model"


def _exception_status(message: messages.Message, exc: BaseException) -> int:
    if isinstance(exc, MemoryError):
        return int(Status.OUT_OF_RESOURCES_MATCHES)
    return int(Status.UNABLE_TO_PROCESS)


# ---------------------------------------------------------------------- SCP: the engine


class MoveAssociator(Protocol):
    """What the C-MOVE engine needs from the AE that owns the association (an
    :class:`asyncdicom.AE` fits): its table of move destinations and a way to open an
    association."""

    @property
    def move_destinations(self) -> Mapping[str, tuple[str, int]]:
        """Move Destination AE title -> (host, port)."""

    def associate(
        self,
        host: str,
        port: int,
        *,
        called_aet: str = ...,
        contexts: Iterable[Any] = ...,
        async_ops_window: tuple[int, int] | None = None,
    ) -> AbstractAsyncContextManager[BaseAssociation]:
        """Open an association (released when the block ends)."""


@dataclass
class _Counts:
    """Where a retrieve stands."""

    total: int
    completed: int = 0
    failed: int = 0
    warning: int = 0
    failed_uids: list[str] = field(default_factory=list)
    #: SOP Instance UIDs whose sub-operation started
    started: set[str] = field(default_factory=set)
    comment: str | None = None

    @property
    def done(self) -> int:
        return self.completed + self.failed + self.warning

    @property
    def remaining(self) -> int:
        return self.total - self.done

    def fail(self, uid: str | None) -> None:
        self.failed += 1
        if uid:
            self.failed_uids.append(uid)


@dataclass(frozen=True, slots=True)
class _Instance:
    """One instance to send: what to pass to :func:`store`, and its UIDs."""

    source: Any  # Part10Source or Dataset
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str | None  # None: a Dataset without its own encoding


def _describe(item: Any) -> _Instance:
    """The :class:`_Instance` of a handler's item (reads a file's header: run in a thread)."""
    from pydicom.dataset import Dataset

    from ..errors import InvalidDataset
    from ..storage.reader import Part10Source, read_part10_for_send
    from .storage import sop_uids

    if isinstance(item, (str, os.PathLike)):
        item = read_part10_for_send(Path(item))
    if isinstance(item, Part10Source):
        return _Instance(item, item.sop_class_uid, item.sop_instance_uid, item.transfer_syntax_uid)
    if isinstance(item, Dataset):
        sop_class, sop_instance = sop_uids(item)
        meta = getattr(item, "file_meta", None)
        ts = str(getattr(meta, "TransferSyntaxUID", "") or "") if meta is not None else ""
        return _Instance(item, sop_class, sop_instance, ts or None)
    raise InvalidDataset(
        f"a retrieve handler yielded {type(item).__name__}: expected a path, a Dataset or a "
        "Part10Source"
    )


def _describe_batch(items: list[Any]) -> list[_Instance | BaseException]:
    out: list[_Instance | BaseException] = []
    for item in items:
        try:
            out.append(_describe(item))
        except Exception as exc:
            out.append(exc)
    return out


def _batches(
    instances: list[_Instance], limit: int = 128, *, allow_lossy: bool = False
) -> list[tuple[list[ContextRequest], list[_Instance]]]:
    """Split ``instances`` into association-sized batches of at most ``limit`` contexts, by
    the proposal policy of :func:`asyncdicom.storage.contexts.context_groups` (that of
    ``storescu``)."""
    from ..storage.contexts import context_groups

    groups = context_groups(
        ((i.sop_class_uid, i.transfer_syntax_uid) for i in instances), allow_lossy=allow_lossy
    )
    batches: list[tuple[list[ContextRequest], set[str]]] = []
    for group in groups:
        if not batches or len(batches[-1][0]) + len(group) > limit:
            batches.append(([], set()))
        batches[-1][0].extend(group)
        batches[-1][1].add(group[0].abstract_syntax)
    return [
        (contexts, [i for i in instances if i.sop_class_uid in classes])
        for contexts, classes in batches
    ]


async def run_retrieve(call: HandlerCall) -> None:
    """Serve one C-GET or C-MOVE request with its handler (see the module docstring): the
    responder of :data:`QR_GET_SERVICE` and :data:`QR_MOVE_SERVICE`."""
    request = call.request
    association = request.association
    message = request.message
    log = association.log
    # 1. the handler's items (a C-CANCEL stops it between two of them)
    items, final = await call.collect(_ITEM_BATCH)
    if final is not None:
        if final == int(Status.CANCEL):
            await _send_final(call, _Counts(total=len(items)), cancelled=True)
        else:
            await call.send(final, final=True)
        return

    # 2. where the instances go
    counts = _Counts(total=len(items))
    destination: tuple[str, int] | None = None
    owner: Any = association.ae
    if isinstance(message, messages.CMoveRQ):
        title = (message.move_destination or "").strip(" ")
        table: Mapping[str, tuple[str, int]] = getattr(owner, "move_destinations", {}) or {}
        destination = table.get(title)
        if destination is None:
            log.warning("move_destination_unknown", destination=title)
            response = make_response(
                message,
                int(Status.MOVE_DESTINATION_UNKNOWN),
                error_comment=f"unknown move destination {title!r}",
            )
            await call.respond(response)
            return

    # 3. each item's header (files are read in worker threads, a batch at a time)
    instances: list[_Instance] = []
    for start in range(0, len(items), _HEADER_BATCH):
        batch = items[start : start + _HEADER_BATCH]
        for item, described in zip(
            batch, await anyio.to_thread.run_sync(_describe_batch, batch), strict=True
        ):
            if isinstance(described, BaseException):
                log.warning("retrieve_item_unreadable", item=str(item)[:200], error=str(described))
                counts.fail(None)
                counts.comment = "an instance could not be read"
            else:
                instances.append(described)
    del items

    # 4. the sub-operations
    if instances:
        if destination is None:
            window = _window(association, GET_WINDOW)
            await _send_all(call, association, instances, counts, window, None)
        else:
            assert isinstance(message, messages.CMoveRQ)
            await _move(call, owner, destination, instances, counts)
    if association.is_closed:
        return
    await _send_final(call, counts, cancelled=request.cancel_requested)


def _window(association: BaseAssociation, cap: int) -> int:
    negotiated = association.negotiated
    allowed = negotiated.max_operations_invoked if negotiated is not None else 1
    return cap if allowed == 0 else max(1, min(cap, allowed))


async def _move(
    call: HandlerCall,
    owner: MoveAssociator,
    destination: tuple[str, int],
    instances: list[_Instance],
    counts: _Counts,
) -> None:
    request = call.request
    message = request.message
    assert isinstance(message, messages.CMoveRQ)
    title = message.move_destination.strip(" ")
    host, port = destination
    log = request.association.log
    config = getattr(owner, "config", None)
    allow_lossy = bool(getattr(config, "retrieve_allow_lossy", False))
    for contexts, batch in _batches(instances, allow_lossy=allow_lossy):
        if request.cancel_requested or request.association.is_closed:
            return
        try:
            async with owner.associate(
                host,
                port,
                called_aet=title,
                contexts=contexts,
                async_ops_window=(MOVE_WINDOW, 1),
            ) as sub:
                log.info(
                    "move_association_open",
                    destination=title,
                    address=f"{host}:{port}",
                    instances=len(batch),
                )
                window = _window(sub, MOVE_WINDOW)
                await _send_all(call, sub, batch, counts, window, (message, request.association))
        except DICOMError as exc:
            # could not associate, or the association broke: what was not sent failed
            log.warning("move_association_failed", destination=title, error=str(exc))
            long = f"move destination {title}: {exc}"
            counts.comment = long if len(long) <= 64 else f"{title}: {exc}"
            for inst in batch:
                if inst.sop_instance_uid not in counts.started:
                    counts.fail(inst.sop_instance_uid)


async def _send_all(
    call: HandlerCall,
    target: BaseAssociation,
    instances: list[_Instance],
    counts: _Counts,
    window: int,
    move: tuple[messages.CMoveRQ, BaseAssociation] | None,
) -> None:
    """The C-STORE sub-operations of ``instances`` on ``target``, ``window`` at a time; a
    Pending response after each.  Stops starting new ones on C-CANCEL.  A conversion to a lossy
    syntax only with the AE's ``retrieve_allow_lossy``."""
    request = call.request
    log = request.association.log
    origin = request.association
    slots = anyio.Semaphore(window)
    originator = (origin.peer_ae_title, move[0].message_id) if move is not None else None
    config = getattr(getattr(origin, "ae", None), "config", None)
    allow_lossy = bool(getattr(config, "retrieve_allow_lossy", False))
    # the association lost under sub-operations in flight: raised once they all ended (raising
    # from each would give the caller an exception group, not the DICOMError it handles)
    lost: list[DICOMError] = []

    async def one(inst: _Instance) -> None:
        try:
            try:
                response = await store(
                    target,
                    inst.source,
                    priority=int(getattr(request.message, "priority", 0) or 0),
                    move_originator_aet=originator[0] if originator else None,
                    move_originator_message_id=originator[1] if originator else None,
                    allow_lossy=allow_lossy,
                )
            except DICOMError as exc:
                log.warning(
                    "sub_operation_failed", sop_instance_uid=inst.sop_instance_uid, error=str(exc)
                )
                counts.fail(inst.sop_instance_uid)
                if counts.comment is None:
                    counts.comment = _sub_operation_comment(exc)
                if target.is_closed:
                    lost.append(exc)
                    return
            else:
                cat = response.category
                if cat is StatusCategory.SUCCESS:
                    counts.completed += 1
                elif cat is StatusCategory.WARNING:
                    counts.warning += 1
                else:
                    log.warning(
                        "sub_operation_failed",
                        sop_instance_uid=inst.sop_instance_uid,
                        status=f"{response.status:#06x}",
                    )
                    counts.fail(inst.sop_instance_uid)
            if not origin.is_closed and not request.cancel_requested:
                await _send_pending(call, counts)
        finally:
            slots.release()

    async with anyio.create_task_group() as tg:
        for inst in instances:
            await slots.acquire()
            if request.cancel_requested or origin.is_closed or target.is_closed:
                slots.release()
                break
            counts.started.add(inst.sop_instance_uid)
            tg.start_soon(one, inst)
    if lost:
        raise lost[0]


def _sub_operation_comment(exc: DICOMError) -> str:
    """The Error Comment of a failed sub-operation, short enough for an LO: "no accepted
    context for <SOP Class UID>" without the transfer syntax details."""
    text = str(exc)
    if isinstance(exc, NoAcceptedContext):
        text = text.split(" in transfer syntax ", 1)[0].split(" (", 1)[0]
    return text


async def _send_pending(call: HandlerCall, counts: _Counts) -> None:
    response = make_response(
        call.request.message,
        int(Status.PENDING),
        number_of_remaining_suboperations=counts.remaining,
        number_of_completed_suboperations=counts.completed,
        number_of_failed_suboperations=counts.failed,
        number_of_warning_suboperations=counts.warning,
    )
    await call.respond(response)


async def _send_final(call: HandlerCall, counts: _Counts, *, cancelled: bool) -> None:
    from pydicom.dataset import Dataset

    if cancelled:
        status = int(Status.CANCEL)
    elif counts.failed == 0 and counts.warning == 0:
        status = int(Status.SUCCESS)
    elif counts.completed == 0 and counts.warning == 0:
        status = int(Status.OUT_OF_RESOURCES_SUB_OPERATIONS)
    else:
        status = int(Status.SUB_OPERATIONS_COMPLETE_WITH_FAILURES)
    identifier: Dataset | None = None
    if counts.failed_uids:
        identifier = Dataset()
        identifier.FailedSOPInstanceUIDList = list(counts.failed_uids)
    fields: dict[str, Any] = {
        "number_of_completed_suboperations": counts.completed,
        "number_of_failed_suboperations": counts.failed,
        "number_of_warning_suboperations": counts.warning,
        "has_dataset": identifier is not None,
    }
    if cancelled:
        fields["number_of_remaining_suboperations"] = counts.remaining
    if status != int(Status.SUCCESS) and counts.comment:
        fields["error_comment"] = counts.comment
    response = make_response(call.request.message, status, **fields)
    await call.respond(response, identifier)


#: C-GET on the Patient Root, Study Root and Patient/Study Only GET SOP classes.
QR_GET_SERVICE = Service(
    name="Query/Retrieve GET",
    commands=(messages.CGetRQ,),
    sop_classes=frozenset(GET_MODELS.values()),
    no_handler_status=int(Status.UNABLE_TO_PROCESS),
    no_handler_comment=_NO_HANDLER_COMMENT,
    exception_status=_exception_status,
    responder=run_retrieve,
)

#: C-MOVE on the Patient Root, Study Root and Patient/Study Only MOVE SOP classes.
QR_MOVE_SERVICE = Service(
    name="Query/Retrieve MOVE",
    commands=(messages.CMoveRQ,),
    sop_classes=frozenset(MOVE_MODELS.values()),
    no_handler_status=int(Status.UNABLE_TO_PROCESS),
    no_handler_comment=_NO_HANDLER_COMMENT,
    exception_status=_exception_status,
    responder=run_retrieve,
    # the move destinations: AE title -> (host, port) (``AE.move_destinations``)
    shared_state=dict,
)


# ---------------------------------------------------------------------- SCU


class Retrieval(OperationResults):
    """A C-GET or C-MOVE in progress: an async iterator of its Pending responses, with the
    sub-operation counts of the latest response (:attr:`remaining`, :attr:`completed`,
    :attr:`failed`, :attr:`warning`).

    Once the iteration ends, :attr:`final` is the final response; :attr:`failed_instances`
    the Failed SOP Instance UID List it carried.  A Failure raises :class:`RetrieveFailed`
    from the iteration (and from :meth:`wait`).  For a C-GET into a folder, :attr:`received`
    lists the files written.
    """

    def __init__(self, operation: Operation) -> None:
        super().__init__(operation)
        #: the latest sub-operation counts (None until a response carried them)
        self.remaining: int | None = None
        self.completed: int | None = None
        self.failed: int | None = None
        self.warning: int | None = None
        #: the Failed SOP Instance UID List (0008,0058) of the final response
        self.failed_instances: list[str] = []
        #: C-GET into a folder: the files written
        self.received: list[StoredFile] = []
        #: C-GET: C-STORE-RQs received that could not be stored
        self.receive_errors = 0

    def _count(self, response: DIMSEResponse) -> None:
        msg: Any = response.message
        for name in ("remaining", "completed", "failed", "warning"):
            value = getattr(msg, f"number_of_{name}_suboperations", None)
            if value is not None:
                setattr(self, name, int(value))
        if (
            not response.is_pending
            and msg.number_of_remaining_suboperations is None
            and self.remaining is not None
        ):
            self.remaining = 0  # a final response other than Cancel: nothing remains

    def __aiter__(self) -> Retrieval:
        return self

    async def __anext__(self) -> DIMSEResponse:
        response = await self.operation.__anext__()
        self._count(response)
        if response.is_pending:
            return response
        if response.dataset is not None:
            try:
                identifier = response.decode()
                value = identifier and identifier.get("FailedSOPInstanceUIDList")
            except Exception:  # an identifier we cannot read: the status still counts
                value = None
            if value:
                values = [value] if isinstance(value, str) else list(value)
                self.failed_instances = [str(v) for v in values]
        if response.category is StatusCategory.FAILURE:
            raise RetrieveFailed(response, self.failed_instances)
        raise StopAsyncIteration

    async def wait(self) -> DIMSEResponse:
        """Read the responses up to the final one and return it (raises
        :class:`RetrieveFailed` on a Failure)."""
        async for _ in self:
            pass
        assert self.operation.final is not None
        return self.operation.final


#: where C-GET puts what it receives: a folder, or a C-STORE handler (``async def
#: handler(request)``, its result as an ``ae.on("C-STORE")`` handler's)
StoreTarget = str | os.PathLike[str] | Callable[[ServiceRequest], Awaitable[object]]


class RetrieveSCU(BaseAssociation):
    """The Query/Retrieve retrieve helpers of an association (C-GET, C-MOVE)."""

    @asynccontextmanager
    async def move(
        self,
        identifier: Dataset | bytes,
        *,
        destination: str,
        model: str = "study",
        priority: int = Priority.MEDIUM,
    ) -> AsyncIterator[Retrieval]:
        """C-MOVE (PS3.7 9.1.4): have the SCP send the instances matching ``identifier`` (a
        Dataset with Query/Retrieve Level and the unique keys) to the AE ``destination``.

        ``async with assoc.move(ds, destination="STORESCP") as r: async for _ in r: ...``;
        leaving the block early sends C-CANCEL-RQ.

        Raises:
            ValueError: ``model`` is not a Query/Retrieve MOVE model, or ``destination`` is
                not a valid AE title.
            NoAcceptedContext: the model's MOVE context was not accepted.
            RetrieveFailed: (from the iteration) the final status is a Failure.
            AssociationError: the association failed meanwhile (aborted, timed out, lost).
        """
        context, rq, data = self._move_request(identifier, destination, model, priority)
        async with self.invoke(context, rq, data) as operation:
            yield Retrieval(operation)

    def _move_request(
        self, identifier: Dataset | bytes, destination: str, model: str, priority: int
    ) -> tuple[PresentationContext, messages.CMoveRQ, bytes]:
        """The context, C-MOVE-RQ (with its Message ID) and encoded identifier of
        :meth:`move` (a caller that must know the Message ID before the request goes out
        invokes them itself)."""
        from ..protocol.negotiation import _check_ae_title

        _check_ae_title("move destination", destination)
        sop_class = retrieve_model_uid(model, "move")
        context, data = identifier_context(self, identifier, sop_class, f"{model} MOVE model")
        rq = messages.CMoveRQ(
            message_id=self.next_message_id(),
            affected_sop_class_uid=sop_class,
            move_destination=destination,
            priority=priority,
        )
        return context, rq, data

    @asynccontextmanager
    async def get(
        self,
        identifier: Dataset | bytes,
        *,
        store: StoreTarget,
        model: str = "study",
        priority: int = Priority.MEDIUM,
        on_duplicate: DuplicatePolicy = "unique",
        layout: Layout = "flat",
    ) -> AsyncIterator[Retrieval]:
        """C-GET (PS3.7 9.1.3): have the SCP send the instances matching ``identifier`` back
        on this association.  ``store`` is a folder (each instance is written there as a Part
        10 file, see :meth:`~asyncdicom.services.ServiceRequest.save_to` for
        ``on_duplicate`` and ``layout``) or a C-STORE handler (``async def
        handler(request)`` returning a status, as for ``ae.on("C-STORE")``).

        The storage SOP classes must have been proposed with the SCP role
        (:func:`asyncdicom.presets.retrieve_contexts`).  Leaving the block early sends
        C-CANCEL-RQ.

        Raises:
            ValueError: ``model`` is not a Query/Retrieve GET model.
            NoAcceptedContext: the model's GET context was not accepted.
            RetrieveFailed: (from the iteration) the final status is a Failure.
            AssociationError: the association failed meanwhile (aborted, timed out, lost).
        """
        sop_class = retrieve_model_uid(model, "get")
        context, data = identifier_context(self, identifier, sop_class, f"{model} GET model")
        handlers = getattr(self, "handlers", None)
        if handlers is None:
            raise TypeError("C-GET needs an association with handlers of its own")
        retrieval: Retrieval | None = None
        if callable(store):
            handler: Callable[..., Awaitable[Any]] = store
        else:
            folder = Path(store)

            async def handler(request: Any) -> int:
                try:
                    stored = await request.save_to(folder, on_duplicate=on_duplicate, layout=layout)
                except OSError as exc:
                    get_logger().warning("get_store_failed", error=str(exc))
                    if retrieval is not None:
                        retrieval.receive_errors += 1
                    return int(Status.OUT_OF_RESOURCES)
                if retrieval is not None:
                    retrieval.received.append(stored)
                return int(Status.SUCCESS)

        previous = handlers.get(messages.CStoreRQ)
        handlers.set(messages.CStoreRQ, handler)
        try:
            rq = messages.CGetRQ(
                message_id=self.next_message_id(),
                affected_sop_class_uid=sop_class,
                priority=priority,
            )
            async with self.invoke(context, rq, data) as operation:
                retrieval = Retrieval(operation)
                yield retrieval
        finally:
            handlers.set(messages.CStoreRQ, previous)


_LEVEL_KEYS = (
    ("PATIENT", "PatientID"),
    ("STUDY", "StudyInstanceUID"),
    ("SERIES", "SeriesInstanceUID"),
    ("IMAGE", "SOPInstanceUID"),
)


async def sop_classes_to_retrieve(
    association: Any, identifier: Dataset, *, model: str = "study", limit: int = 1000
) -> set[str]:
    """The SOP Class UIDs of the instances a C-GET with ``identifier`` would retrieve, found
    with C-FIND queries on the same model (level by level down to IMAGE, asking for SOP Class
    UID (0008,0016)), so that a C-GET can propose exactly the storage contexts it needs.

    Needs the model's FIND context on ``association`` (:func:`asyncdicom.presets.retrieve_contexts`
    proposes it).  At most ``limit`` queries are made (ValueError beyond: the retrieval is too
    wide to discover this way).  Raises ``QueryFailed`` when a query fails.
    """
    return set(await syntaxes_to_retrieve(association, identifier, model=model, limit=limit))


async def syntaxes_to_retrieve(
    association: Any, identifier: Dataset, *, model: str = "study", limit: int = 1000
) -> dict[str, set[str]]:
    """As :func:`sop_classes_to_retrieve`, with the transfer syntaxes each SOP class is held
    in: the IMAGE-level queries also ask for Available Transfer Syntax UID (0008,3002), PS3.4
    C.6.1.1.5.  SOP Class UID -> the syntaxes reported (an empty set when the archive reports
    none).

    Raises:
        QueryFailed: a query failed.
        ValueError: the level is not one of the model's, or more than ``limit`` queries.
    """
    from pydicom.dataset import Dataset

    levels = [name for name, _ in _LEVEL_KEYS]
    if model in ("study", uids.STUDY_ROOT_QR_FIND):
        levels.remove("PATIENT")
    start = str(identifier.get("QueryRetrieveLevel", "") or "").strip().upper()
    if start not in levels:
        raise ValueError(f"Query/Retrieve Level {start!r} is not one of {', '.join(levels)}")
    found: dict[str, set[str]] = {}
    queries = 0
    # (level to query next, the unique keys fixed so far)
    todo: list[tuple[str, dict[str, str]]] = []
    fixed: dict[str, str] = {}
    for name in levels[: levels.index(start)]:
        value = identifier.get(dict(_LEVEL_KEYS)[name])
        if value:
            fixed[dict(_LEVEL_KEYS)[name]] = str(value)
    start_key = dict(_LEVEL_KEYS)[start]
    raw = identifier.get(start_key)
    values = [] if not raw else [raw] if isinstance(raw, str) else [str(v) for v in raw]
    if start == "IMAGE":
        todo.append(("IMAGE", fixed | ({start_key: "\\".join(values)} if values else {})))
    else:
        nxt = levels[levels.index(start) + 1]
        for value in values or [""]:
            todo.append((nxt, fixed | ({start_key: value} if value else {})))
    while todo:
        level, keys = todo.pop()
        queries += 1
        if queries > limit:
            raise ValueError(f"more than {limit} queries to list the instances' SOP classes")
        query = Dataset()
        query.QueryRetrieveLevel = level
        for key, value in keys.items():
            setattr(query, key, value)
        key = dict(_LEVEL_KEYS)[level]
        if key not in keys:
            setattr(query, key, "")
        if level == "IMAGE":
            query.SOPClassUID = ""
            query.AvailableTransferSyntaxUID = ""
        async with association.find(query, model=model) as results:
            async for match in results:
                if level == "IMAGE":
                    value = str(match.get("SOPClassUID", "") or "").strip("\0 ")
                    if value:
                        syntaxes = found.setdefault(value, set())
                        syntax = str(match.get("AvailableTransferSyntaxUID", "") or "")
                        if syntax.strip("\0 "):
                            syntaxes.add(syntax.strip("\0 "))
                else:
                    child = str(match.get(key, "") or "").strip("\0 ")
                    if child:
                        nxt = levels[levels.index(level) + 1]
                        todo.append((nxt, {**keys, key: child}))
    return found
