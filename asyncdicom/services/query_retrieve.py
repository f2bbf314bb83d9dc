"""Query/Retrieve service class, FIND (PS3.4 Annex C; C-FIND, PS3.7 9.1.2).

SCU: :meth:`QueryRetrieveSCU.find` sends a C-FIND-RQ with a query identifier on one of the
information models (Patient Root, Study Root, Patient/Study Only) and yields the identifier of
each Pending response as a pydicom Dataset, as it arrives::

    async with assoc.find(query, model="study") as results:
        async for identifier in results:
            print(identifier.StudyInstanceUID)
    print(results.final)  # the final C-FIND-RSP

Leaving the ``async with`` block before the final response sends C-CANCEL-RQ and reads the
remaining responses (the association stays usable); ``results.final`` is then the SCP's answer
to the cancel, normally Cancel (0xFE00).  A final Failure status raises :class:`QueryFailed`
at the end of the iteration (its ``response`` is the final response); Success, Warning and
Cancel do not raise.

SCP: a handler registered for C-FIND (``@ae.on("C-FIND", sop_class=...)``) is a generator,
async or plain, that yields one identifier (a Dataset) per match; the framework sends each one
as a Pending response (0xFF00; yield ``(0xFF01, identifier)`` to say that optional keys were
not supported, PS3.4 C.4.1.1.4) and Success when the generator ends.  Matching is the
handler's business: the framework does none.  C-CANCEL-RQ stops the generator between two
matches and the framework answers Cancel (0xFE00).

Defaults of :data:`QR_FIND_SERVICE`: the FIND SOP classes are *not* accepted unless the
application configures them (``AEConfig.supported_contexts``, for instance
:func:`asyncdicom.presets.qr_find_supported`), as DCMTK's SCPs accept only the SOP classes
they are configured for.  A C-FIND on an accepted context with no handler registered is
answered 0xC000 (Unable to process) with an Error Comment; a handler's exception maps to
0xA700 (Out of resources) for ``MemoryError`` and to 0xC000 otherwise (PS3.4 C.4.1.1.4).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pydicom.dataset import Dataset


from ..association import BaseAssociation, DIMSEResponse, Operation
from ..errors import NoAcceptedContext, QueryFailed
from ..protocol import messages
from ..protocol.messages import Priority
from ..protocol.negotiation import PresentationContext
from ..protocol.status import Status, StatusCategory
from ..protocol.uids import (
    MODALITY_WORKLIST_FIND,
    PATIENT_ROOT_QR_FIND,
    PATIENT_STUDY_ONLY_QR_FIND,
    STUDY_ROOT_QR_FIND,
)
from .base import Service

__all__ = [
    "FIND_MODELS",
    "MWL_FIND_SERVICE",
    "QR_FIND_SERVICE",
    "QUERY_MODELS",
    "FindResults",
    "QueryFailed",
    "QueryRetrieveSCU",
    "find_model_uid",
]

#: the Query/Retrieve information models by short name -> their FIND SOP Class UID
FIND_MODELS: dict[str, str] = {
    "patient": PATIENT_ROOT_QR_FIND,
    "study": STUDY_ROOT_QR_FIND,
    "patient-study": PATIENT_STUDY_ONLY_QR_FIND,  # retired, still met in the field
}


#: every model ``find()`` queries: the Query/Retrieve models of :data:`FIND_MODELS` and the
#: Modality Worklist Information Model (``"mwl"``, PS3.4 K.6.1), which has no levels
QUERY_MODELS: dict[str, str] = {**FIND_MODELS, "mwl": MODALITY_WORKLIST_FIND}


def find_model_uid(model: str) -> str:
    """The FIND SOP Class UID of ``model``: ``"patient"``, ``"study"``, ``"patient-study"``,
    ``"mwl"`` (Modality Worklist), or one of those UIDs itself; ValueError otherwise."""
    if model in QUERY_MODELS:
        return QUERY_MODELS[model]
    if model in QUERY_MODELS.values():
        return model
    raise ValueError(
        f"unknown Query/Retrieve model {model!r} (one of {', '.join(QUERY_MODELS)}, or its UID)"
    )


_NO_HANDLER_COMMENT = "no C-FIND handler is registered for this model"


def _find_exception_status(message: messages.Message, exc: BaseException) -> int:
    # PS3.4 C.4.1.1.4: A700 refused, out of resources; Cxxx failed, unable to process
    if isinstance(exc, MemoryError):
        return int(Status.OUT_OF_RESOURCES)
    return int(Status.UNABLE_TO_PROCESS)


#: C-FIND on the Patient Root, Study Root and Patient/Study Only (retired) FIND SOP classes.
#: Not accepted by default: list them in ``AEConfig.supported_contexts``
#: (:func:`asyncdicom.presets.qr_find_supported`).  Without a handler: 0xC000.
QR_FIND_SERVICE = Service(
    name="Query/Retrieve FIND",
    commands=(messages.CFindRQ,),
    sop_classes=frozenset(FIND_MODELS.values()),
    accept_by_default=False,
    no_handler_status=int(Status.UNABLE_TO_PROCESS),
    no_handler_comment=_NO_HANDLER_COMMENT,
    exception_status=_find_exception_status,
)

#: C-FIND on the Modality Worklist Information Model (PS3.4 K.6.1), with the statuses and
#: defaults of :data:`QR_FIND_SERVICE`.  Not accepted unless configured
#: (:func:`asyncdicom.presets.worklist_supported`, or :meth:`asyncdicom.worklist.Worklist.install`)
MWL_FIND_SERVICE = Service(
    name="Modality Worklist FIND",
    commands=(messages.CFindRQ,),
    sop_classes=frozenset({MODALITY_WORKLIST_FIND}),
    accept_by_default=False,
    no_handler_status=int(Status.UNABLE_TO_PROCESS),
    no_handler_comment=_NO_HANDLER_COMMENT,
    exception_status=_find_exception_status,
)


class OperationResults:
    """What the SCU helpers of multi-response operations (:class:`FindResults`,
    :class:`~asyncdicom.services.retrieve.Retrieval`) tell of their operation."""

    def __init__(self, operation: Operation) -> None:
        self.operation = operation

    @property
    def final(self) -> DIMSEResponse | None:
        """The final response, once received."""
        return self.operation.final

    @property
    def status(self) -> int | None:
        """The final status, once received."""
        return None if self.operation.final is None else self.operation.final.status

    @property
    def ok(self) -> bool:
        """True once a final Success or Warning has been received."""
        return self.operation.final is not None and self.operation.final.ok

    @property
    def cancelled(self) -> bool:
        """True when C-CANCEL-RQ was sent."""
        return self.operation.cancel_sent

    async def cancel(self) -> None:
        """Send C-CANCEL-RQ now; the responses go on up to the final one."""
        await self.operation.cancel()


def identifier_context(
    association: BaseAssociation, identifier: Dataset | bytes, sop_class: str, what: str
) -> tuple[PresentationContext, bytes]:
    """An accepted context of ``sop_class`` and ``identifier`` encoded in its transfer syntax
    (bytes are taken as encoded already); ``NoAcceptedContext`` names ``what``."""
    context = association.find_context(sop_class)
    if context is None:
        raise NoAcceptedContext(f"no accepted presentation context for the {what} ({sop_class})")
    if isinstance(identifier, (bytes, bytearray, memoryview)):
        return context, bytes(identifier)
    from ..storage.codec import encode_dataset

    return context, encode_dataset(identifier, context.transfer_syntax or "")


class FindResults(OperationResults):
    """The matches of one C-FIND, as an async iterator of pydicom Datasets (the identifiers of
    the Pending responses, in order of arrival).

    Once the iteration ends, :attr:`final` is the final C-FIND-RSP (:attr:`status`,
    :attr:`ok`); a Failure raises :class:`QueryFailed` from the iteration.  :attr:`count` is
    the number of matches received, :attr:`pending` the Pending responses themselves.
    """

    def __init__(self, operation: Operation) -> None:
        super().__init__(operation)
        #: matches received so far
        self.count = 0
        #: the last Pending response (its status tells 0xFF00 from 0xFF01)
        self.last_pending: DIMSEResponse | None = None

    def __aiter__(self) -> FindResults:
        return self

    async def __anext__(self) -> Dataset:
        while True:
            response = await self.operation.__anext__()
            if not response.is_pending:
                if response.category is StatusCategory.FAILURE:
                    raise QueryFailed(response)
                raise StopAsyncIteration
            self.last_pending = response
            if response.dataset is None:  # a Pending response must carry one; skip it
                continue
            self.count += 1
            identifier = response.decode()
            assert identifier is not None  # the response has a data set
            return identifier


class QueryRetrieveSCU(BaseAssociation):
    """The Query/Retrieve SCU helpers of an association (C-FIND)."""

    @asynccontextmanager
    async def find(
        self,
        identifier: Dataset | bytes,
        *,
        model: str = "study",
        priority: int = Priority.MEDIUM,
    ) -> AsyncIterator[FindResults]:
        """C-FIND (PS3.7 9.1.2): query with ``identifier`` (the keys; a Dataset with Query/
        Retrieve Level, or bytes already encoded in the context's transfer syntax) on
        ``model`` (``"study"``, ``"patient"``, ``"patient-study"``, ``"mwl"`` for the
        Modality Worklist, whose identifier has no Query/Retrieve Level, or the SOP Class
        UID).

        ``async with assoc.find(ds) as results: async for match in results: ...``; leaving
        the block early sends C-CANCEL-RQ and reads the remaining responses.

        Raises:
            ValueError: ``model`` is not a Query/Retrieve FIND model.
            NoAcceptedContext: the model was not accepted.
            QueryFailed: (from the iteration) the final status is a Failure.
            AssociationError: the association failed meanwhile (aborted, timed out, lost).
        """
        sop_class = find_model_uid(model)
        what = (
            "Modality Worklist FIND model"
            if sop_class == MODALITY_WORKLIST_FIND
            else f"{model} Query/Retrieve FIND model"
        )
        context, data = identifier_context(self, identifier, sop_class, what)
        rq = messages.CFindRQ(
            message_id=self.next_message_id(),
            affected_sop_class_uid=sop_class,
            priority=priority,
        )
        async with self.invoke(context, rq, data) as operation:
            yield FindResults(operation)
