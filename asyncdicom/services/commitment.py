"""Storage Commitment Push Model (PS3.4 Annex J): N-ACTION to ask, N-EVENT-REPORT to answer.

**SCU.** ``result = await assoc.commit(instances, timeout=600)`` sends N-ACTION-RQ (Action Type
1, a new Transaction UID, the Referenced SOP Sequence) and waits for the N-EVENT-REPORT-RQ that
carries the same Transaction UID, whichever association brings it: this one, or one that the
SCP opens to this AE later (the AE must then be listening, and accept the Storage Commitment
SOP class with the SCU role: :func:`asyncdicom.presets.storage_commitment_scu_supported`).
Reports are matched to their requests by Transaction UID through the AE's
:attr:`~asyncdicom.AE.commitments` correlator, so any number of commitments may be in flight.
The :class:`CommitmentResult` lists the committed instances and the failed ones with their
Failure Reason; a report that does not come in time raises :class:`CommitmentTimeout`, a
refused N-ACTION :class:`CommitmentRefused`.

Every AE answers the N-EVENT-REPORTs of this SOP class with :func:`receive_report` unless the
application registers its own handler: a report is answered Success when its Transaction UID
is awaited or a notification stream (``ae.notifications()``) takes it, 0x0115 (invalid argument
value) when neither does (it resolves nobody's wait), 0x0113
for an event type other than 1 and 2, 0x0115 when it cannot be read.

**SCP.** :class:`CommitmentSCP` answers N-ACTION: it checks the request (0x0123 for an action
type other than 1, 0x0115 for a malformed Action Information), answers Success at once, then
asks the application's ``check`` which instances it holds, and reports (Event Type 1 when all
are committed, 2 when some failed; never before the N-ACTION-RSP) on the requesting association
if that is still open, else on a new association to the requestor's address, found by AE title
in ``peers``, proposing the SCP role for itself (PS3.7 D.3.3.4).  A requestor that wants to
leave before the report comes waits for it with :func:`awaiting_report` on its listening AE.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, Iterable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import anyio
from anyio.abc import TaskGroup

if TYPE_CHECKING:
    from pydicom.dataset import Dataset


from ..association import BaseAssociation, DIMSEResponse
from ..correlation import Correlator, Pending
from ..errors import (
    AssociationError,
    CommitmentRefused,
    CommitmentTimeout,
    DICOMError,
    NoAcceptedContext,
    TransportError,
)
from ..log import get_logger
from ..protocol import messages, uids
from ..protocol.negotiation import ContextRequest
from ..protocol.status import Status
from .base import Service, call, make_response
from .incoming import incoming_of
from .normalized import NormalizedSCU

__all__ = [
    "STORAGE_COMMITMENT",
    "STORAGE_COMMITMENT_INSTANCE",
    "STORAGE_COMMITMENT_SERVICE",
    "CommitmentRefused",
    "CommitmentResult",
    "CommitmentSCP",
    "CommitmentSCU",
    "CommitmentTimeout",
    "awaiting_report",
    "commitment_request",
    "parse_report",
    "receive_report",
]

STORAGE_COMMITMENT = uids.STORAGE_COMMITMENT_PUSH_MODEL
STORAGE_COMMITMENT_INSTANCE = uids.STORAGE_COMMITMENT_PUSH_MODEL_INSTANCE

#: Failure Reason (0008,1197) values (PS3.4 J.3.3.1.3)
PROCESSING_FAILURE = 0x0110
NO_SUCH_OBJECT_INSTANCE = 0x0112
RESOURCE_LIMITATION = 0x0213
REFERENCED_SOP_CLASS_NOT_SUPPORTED = 0x0122
CLASS_INSTANCE_CONFLICT = 0x0119
DUPLICATE_TRANSACTION_UID = 0x0131

_INVALID_ARGUMENT_VALUE = 0x0115
_NO_SUCH_EVENT_TYPE = 0x0113
_NO_SUCH_ACTION = 0x0123


# ---------------------------------------------------------------------- results


@dataclass(frozen=True)
class CommitmentResult:
    """The outcome of one storage commitment request (the N-EVENT-REPORT that answered it)."""

    transaction_uid: str
    #: (SOP Class UID, SOP Instance UID) of each instance the SCP committed to
    committed: tuple[tuple[str, str], ...]
    #: (SOP Class UID, SOP Instance UID, Failure Reason) of each instance it did not
    failed: tuple[tuple[str, str, int], ...]
    #: 1: all committed; 2: failures exist
    event_type: int
    #: the AE title of the peer on whose association the report came
    reported_by: str = ""
    #: Retrieve AE Title (0008,0054), if the report gave one
    retrieve_ae_title: str | None = None
    #: the report's Event Information
    information: Dataset | None = field(default=None, compare=False, repr=False)

    @property
    def ok(self) -> bool:
        """True when every instance was committed."""
        return not self.failed


def _key(transaction_uid: str) -> tuple[str, str]:
    return ("storage-commitment", transaction_uid)


_fallback: Correlator[CommitmentResult] = Correlator(max_early=0)


def _correlator(ae: Any) -> Correlator[CommitmentResult]:
    """The requests of ``ae`` awaiting their report: the service's shared state."""
    service_state = getattr(ae, "service_state", None)
    found = service_state(STORAGE_COMMITMENT_SERVICE) if service_state is not None else None
    return found if isinstance(found, Correlator) else _fallback


def _instance_uids(item: Any) -> tuple[str, str]:
    """(SOP Class UID, SOP Instance UID) of a pair, a Dataset or a DICOM file."""
    from pydicom.dataset import Dataset

    if isinstance(item, (tuple, list)) and len(item) == 2:
        return str(item[0]), str(item[1])
    if isinstance(item, Dataset):
        from .storage import sop_uids

        return sop_uids(item)
    if isinstance(item, (str, os.PathLike)):
        from ..storage.reader import read_part10_for_send

        source = read_part10_for_send(Path(item))
        return source.sop_class_uid, source.sop_instance_uid
    raise TypeError(
        f"an instance to commit is a (SOP Class UID, SOP Instance UID) pair, a Dataset or a "
        f"file path, not {type(item).__name__}"
    )


def commitment_request(transaction_uid: str, instances: Iterable[tuple[str, str]]) -> Dataset:
    """The Action Information of a storage commitment request (PS3.4 J.3.2.1)."""
    from pydicom.dataset import Dataset

    ds = Dataset()
    ds.TransactionUID = transaction_uid
    items = []
    for sop_class, sop_instance in instances:
        item = Dataset()
        item.ReferencedSOPClassUID = sop_class
        item.ReferencedSOPInstanceUID = sop_instance
        items.append(item)
    ds.ReferencedSOPSequence = items
    return ds


def _references(ds: Dataset, keyword: str, *, reasons: bool = False) -> list[tuple[Any, ...]]:
    out: list[tuple[Any, ...]] = []
    for item in ds.get(keyword) or []:
        sop_class = str(item.get("ReferencedSOPClassUID", "") or "")
        sop_instance = str(item.get("ReferencedSOPInstanceUID", "") or "")
        if reasons:
            reason = item.get("FailureReason")
            out.append((sop_class, sop_instance, int(reason) if reason is not None else 0x0110))
        else:
            out.append((sop_class, sop_instance))
    return out


def parse_report(event_type: int, ds: Dataset, reported_by: str = "") -> CommitmentResult:
    """A :class:`CommitmentResult` from an N-EVENT-REPORT's Event Information (ValueError
    when it has no Transaction UID)."""
    transaction = str(ds.get("TransactionUID", "") or "").strip("\0 ")
    if not transaction:
        raise ValueError("the report has no Transaction UID (0008,1195)")
    retrieve = ds.get("RetrieveAETitle")
    return CommitmentResult(
        transaction_uid=transaction,
        committed=tuple((c, i) for c, i in _references(ds, "ReferencedSOPSequence")),
        failed=tuple((c, i, r) for c, i, r in _references(ds, "FailedSOPSequence", reasons=True)),
        event_type=event_type,
        reported_by=reported_by,
        retrieve_ae_title=str(retrieve).strip() if retrieve else None,
        information=ds,
    )


# ---------------------------------------------------------------------- SCU


async def receive_report(request: Any) -> messages.Message | int:
    """The N-EVENT-REPORT handler every AE has for Storage Commitment (see the module
    docstring): hands the result to the task awaiting its Transaction UID."""
    from pydicom.dataset import Dataset

    message = request.message
    association = request.association
    event_type = int(message.event_type_id)
    if event_type not in (1, 2):
        if request.has_dataset:
            await request.discard()
        return make_response(
            message, _NO_SUCH_EVENT_TYPE, error_comment=f"event type {event_type} is not 1 or 2"
        )
    try:
        information = await request.dataset() if request.has_dataset else Dataset()
        result = parse_report(event_type, information, association.peer_ae_title)
    except DICOMError:
        raise  # the association failed while the report was being read
    except Exception as exc:  # an unreadable or incomplete Event Information
        association.log.warning("commitment_report_invalid", error=str(exc))
        return make_response(message, _INVALID_ARGUMENT_VALUE, error_comment=str(exc))
    if not await _correlator(association.ae).deliver_anywhere(_key(result.transaction_uid), result):
        incoming = incoming_of(request)
        if incoming is not None and await incoming.offer_notification(request, information, result):
            # nobody awaits it, a notification stream takes it (ae.notifications())
            return int(Status.SUCCESS)
        association.log.warning(
            "commitment_report_unexpected", transaction_uid=result.transaction_uid
        )
        return make_response(
            message,
            _INVALID_ARGUMENT_VALUE,
            error_comment="no request awaits this Transaction UID",
        )
    association.log.info(
        "commitment_report_received",
        transaction_uid=result.transaction_uid,
        committed=len(result.committed),
        failed=len(result.failed),
    )
    return int(Status.SUCCESS)


#: Storage Commitment Push Model: N-ACTION (to the SCP) and N-EVENT-REPORT (to the SCU).  Not
#: accepted unless configured (:func:`asyncdicom.presets.storage_commitment_scu_supported` for
#: an SCU that receives reports on its own associations, ``..._scp_supported`` for an SCP).
#: It brings :func:`receive_report` as the N-EVENT-REPORT handler, and keeps the requests
#: awaiting their report as the AE's shared state (``AE.commitments``)
STORAGE_COMMITMENT_SERVICE = Service(
    name="Storage Commitment Push Model",
    commands=(messages.NActionRQ, messages.NEventReportRQ),
    sop_classes=frozenset({STORAGE_COMMITMENT}),
    no_handler_status=int(Status.PROCESSING_FAILURE),
    no_handler_comment="this AE does not perform storage commitment",
    default_handlers=((messages.NEventReportRQ, receive_report),),
    shared_state=lambda: Correlator[CommitmentResult](max_early=0),
)


def awaiting_report(
    ae: Any, transaction_uid: str
) -> AbstractContextManager[Pending[CommitmentResult]]:
    """Wait for the report of ``transaction_uid`` on any association of ``ae``::

        with awaiting_report(ae, uid) as pending:
            await assoc.n_action(STORAGE_COMMITMENT, STORAGE_COMMITMENT_INSTANCE, 1,
                                 commitment_request(uid, instances))
            ...                                    # e.g. release the association
            result = await pending.wait(timeout)   # TimeoutError if it does not come

    For requestors that leave before the report comes (it then comes on an association the
    SCP opens: ``ae`` must be serving); :meth:`CommitmentSCU.commit` does all of this on one
    association.  KeyError if the Transaction UID is awaited already."""
    return _correlator(ae).expect(_key(transaction_uid))


class CommitmentSCU(NormalizedSCU):
    """The Storage Commitment SCU helper of an association."""

    async def commit(
        self,
        instances: Iterable[tuple[str, str] | Dataset | str | os.PathLike[str]],
        *,
        timeout: float | None = 600.0,
        transaction_uid: str | None = None,
    ) -> CommitmentResult:
        """Ask the SCP to commit to ``instances`` ((SOP Class UID, SOP Instance UID) pairs,
        Datasets or file paths, whose headers are read in a worker thread) and wait, at most
        ``timeout`` seconds after its N-ACTION-RSP, for its report, on this association or any
        other the peer opens to this AE (see the module docstring).

        Raises:
            CommitmentRefused: the N-ACTION failed.
            CommitmentTimeout: no report came in time (the association stays usable).
            NoAcceptedContext: the Storage Commitment SOP class was not accepted.
            ValueError: the list of instances is empty.
            InvalidDicomFile: a file is not DICOM (``OSError`` if it cannot be read).
            AssociationError: the association failed meanwhile.
        """
        from pydicom.uid import generate_uid

        items = list(instances)
        if any(isinstance(item, (str, os.PathLike)) for item in items):
            refs = await anyio.to_thread.run_sync(lambda: [_instance_uids(i) for i in items])
        else:
            refs = [_instance_uids(item) for item in items]
        if not refs:
            raise ValueError("no instances to commit")
        transaction = transaction_uid or generate_uid()
        with awaiting_report(self.ae, transaction) as pending:
            response = await self.n_action(
                STORAGE_COMMITMENT,
                STORAGE_COMMITMENT_INSTANCE,
                1,
                commitment_request(transaction, refs),
            )
            if not response.ok:
                raise CommitmentRefused(response)
            self.log.info("commitment_requested", transaction_uid=transaction, instances=len(refs))
            try:
                return await pending.wait(timeout)
            except TimeoutError:
                self.log.info("commitment_timeout", transaction_uid=transaction, timeout=timeout)
                raise CommitmentTimeout(transaction, timeout) from None


# ---------------------------------------------------------------------- SCP

#: ``check(references)`` -> failed instances: {SOP Instance UID: Failure Reason}; a plain
#: function runs in a worker thread
CheckFunction = Callable[[list[tuple[str, str]]], Mapping[str, int] | Awaitable[Mapping[str, int]]]

#: what closes an association under a report (the report then goes on a new association)
_GONE = (AssociationError, TransportError, NoAcceptedContext)


class CommitmentSCP:
    """Storage Commitment SCP on an AE (see the module docstring)::

        async with CommitmentSCP(ae, check, peers={"MODALITY": ("10.0.0.9", 104)}):
            await ae.serve(...)

    ``check(references)`` receives the (SOP Class UID, SOP Instance UID) pairs of a request
    and returns the failed ones as {SOP Instance UID: Failure Reason} (0x0112 no such object
    instance, 0x0119 class/instance conflict, ...); an empty mapping commits every one.  An
    exception in ``check`` fails every instance with 0x0110 (processing failure).
    ``peers`` maps requestor AE titles to their address, for reports on a new association;
    ``always_new_association`` sends every report that way (IHE practice), else the
    requesting association is used while it is open.

    The AE must accept the SOP class (:func:`asyncdicom.presets.storage_commitment_scp_supported`).
    Instead of ``async with``, :meth:`start` runs the reports in a task group of the caller's
    (:class:`asyncdicom.archive.Archive` does) and :meth:`stop` ends them.
    """

    def __init__(
        self,
        ae: Any,
        check: CheckFunction,
        *,
        peers: Mapping[str, tuple[str, int]] | None = None,
        always_new_association: bool = False,
    ) -> None:
        self.ae = ae
        self.check = check
        self.peers: dict[str, tuple[str, int]] = dict(peers or {})
        self.always_new_association = always_new_association
        self._tg: TaskGroup | None = None
        self._own_tg: TaskGroup | None = None
        self._active: set[str] = set()
        self._scopes: set[anyio.CancelScope] = set()
        self.log = get_logger()
        #: reports sent (for tests and monitoring): (transaction UID, event type, "same"/"new")
        self.reports: list[tuple[str, int, str]] = []
        #: reports that could not be delivered: (transaction UID, reason)
        self.undelivered: list[tuple[str, str]] = []

    def start(self, task_group: TaskGroup | None) -> None:
        """Answer N-ACTION on :attr:`ae`, with the reports running in ``task_group`` (``None``:
        requests are refused with 0x0110 until ``start`` is called again with one)."""
        self._tg = task_group
        self.ae.on("N-ACTION", sop_class=STORAGE_COMMITMENT)(self._on_action)

    def install(self, ae: Any) -> None:
        """Answer N-ACTION on ``ae`` (``ae.install(scp)``), with the reports in the task group
        given to :meth:`start` last (``None``: requests are refused with 0x0110 until
        :meth:`start` gives one; ``async with`` does)."""
        if ae is not self.ae:
            self.stop()
            self.ae = ae
        self.start(self._tg)

    def stop(self, *, cancel: bool = False) -> None:
        """Stop answering N-ACTION (requests are then refused with 0x0110); with ``cancel``,
        also cancel the reports in progress."""
        if self.ae.handlers.get("N-ACTION", STORAGE_COMMITMENT) == self._on_action:
            self.ae.handlers.set("N-ACTION", None, sop_class=STORAGE_COMMITMENT)
        self._tg = None
        if cancel:
            for scope in self._scopes:
                scope.cancel()

    async def __aenter__(self) -> CommitmentSCP:
        tg = anyio.create_task_group()
        await tg.__aenter__()
        self._own_tg = tg
        self.start(tg)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        tg, self._own_tg = self._own_tg, None
        self.stop(cancel=exc is not None)
        assert tg is not None
        # without an exception, the reports in progress finish (each is bounded by the AE's
        # timeouts)
        return await tg.__aexit__(exc_type, exc, tb)

    async def _on_action(self, request: Any) -> Any:
        message = request.message
        action = int(message.action_type_id)
        if action != 1:
            if request.has_dataset:
                await request.discard()
            return make_response(
                message, _NO_SUCH_ACTION, error_comment=f"action type {action} is not 1"
            )
        try:
            if not request.has_dataset:
                raise ValueError("no Action Information")
            information = await request.dataset()
            transaction = str(information.get("TransactionUID", "") or "").strip("\0 ")
            refs = [(c, i) for c, i in _references(information, "ReferencedSOPSequence")]
            if not transaction or not refs or any(not c or not i for c, i in refs):
                raise ValueError("Transaction UID or Referenced SOP Sequence missing or empty")
        except DICOMError:
            raise
        except Exception as exc:
            request.association.log.warning("commitment_request_invalid", error=str(exc))
            return make_response(message, _INVALID_ARGUMENT_VALUE, error_comment=str(exc))
        tg = self._tg
        if tg is None or transaction in self._active:
            return make_response(
                message,
                int(Status.PROCESSING_FAILURE),
                error_comment="storage commitment is not running"
                if tg is None
                else "this Transaction UID is in progress already",
            )
        self._active.add(transaction)
        origin = request.association
        origin.log.info(
            "commitment_request_received", transaction_uid=transaction, instances=len(refs)
        )

        # the report must not overtake the N-ACTION-RSP; if that cannot be sent, the report
        # goes on a new association
        request.after_response(lambda: tg.start_soon(self._report, origin, transaction, refs))
        return int(Status.SUCCESS)

    async def _report(
        self, origin: BaseAssociation, transaction: str, refs: list[tuple[str, str]]
    ) -> None:
        log = origin.log.bind(transaction_uid=transaction)
        scope = anyio.CancelScope()
        self._scopes.add(scope)
        try:
            with scope:
                try:
                    failed = dict(await call(self.check, refs))
                except Exception as exc:
                    log.error("commitment_check_failed", error=str(exc), exc_info=exc)
                    failed = {i: PROCESSING_FAILURE for _c, i in refs}
                event_type, information = self._event(transaction, refs, failed)
                if not self.always_new_association and origin.is_established:
                    try:
                        response = await self._send(origin, event_type, information)
                    except _GONE as exc:
                        log.info("commitment_report_same_association_failed", error=str(exc))
                    else:
                        self._sent(transaction, event_type, "same", response, log)
                        return
                await self._report_on_new_association(
                    origin, transaction, event_type, information, log
                )
        except Exception as exc:
            reason = f"{type(exc).__name__}: {exc}"
            log.error("commitment_report_failed", error=reason)
            self.undelivered.append((transaction, reason))
        finally:
            self._scopes.discard(scope)
            self._active.discard(transaction)

    def _sent(
        self, transaction: str, event_type: int, how: str, response: DIMSEResponse, log: Any
    ) -> None:
        self.reports.append((transaction, event_type, how))
        if response.ok:
            log.info("commitment_report_sent", event_type=event_type, association=how)
        else:
            # delivered; what the requestor does with it is its business (it may have given up)
            log.warning("commitment_report_refused", association=how, response=str(response))

    @staticmethod
    def _event(
        transaction: str, refs: list[tuple[str, str]], failed: Mapping[str, int]
    ) -> tuple[int, Dataset]:
        from pydicom.dataset import Dataset

        ds = Dataset()
        ds.TransactionUID = transaction
        done, bad = [], []
        for sop_class, sop_instance in refs:
            item = Dataset()
            item.ReferencedSOPClassUID = sop_class
            item.ReferencedSOPInstanceUID = sop_instance
            if sop_instance in failed:
                item.FailureReason = int(failed[sop_instance])
                bad.append(item)
            else:
                done.append(item)
        if done:
            ds.ReferencedSOPSequence = done
        if bad:
            ds.FailedSOPSequence = bad
        return (2 if bad else 1), ds

    @staticmethod
    async def _send(association: Any, event_type: int, information: Dataset) -> DIMSEResponse:
        response: DIMSEResponse = await association.n_event_report(
            STORAGE_COMMITMENT, STORAGE_COMMITMENT_INSTANCE, event_type, information
        )
        return response

    async def _report_on_new_association(
        self,
        origin: BaseAssociation,
        transaction: str,
        event_type: int,
        information: Dataset,
        log: Any,
    ) -> None:
        title = origin.peer_ae_title
        address = self.peers.get(title)
        if address is None:
            raise DICOMError(
                f"the requestor {title!r} has left and its address is unknown (configure it "
                "as a peer to report on a new association)"
            )
        host, port = address
        context = ContextRequest(
            STORAGE_COMMITMENT,
            (uids.EXPLICIT_VR_LITTLE_ENDIAN, uids.IMPLICIT_VR_LITTLE_ENDIAN),
            scu_role=False,
            scp_role=True,
        )
        async with self.ae.associate(host, port, called_aet=title, contexts=[context]) as assoc:
            response = await self._send(assoc, event_type, information)
            # recorded before the release: the requestor has the report already
            self._sent(transaction, event_type, "new", response, log)
