"""Every public exception of asyncdicom, in one module.

All derive from :class:`DICOMError`, so that ``except DICOMError`` catches whatever the
library raises; where a standard base helps (``except ValueError`` around a parser, ``except
TimeoutError`` around a wait, ``except OSError`` around file work) the class derives from it as
well.  The classes are defined here, apart from the sans-IO protocol errors, which live in
:mod:`asyncdicom.protocol.errors` (the core imports nothing above it) and are re-exported.
The modules that raise an exception re-export it too (``from asyncdicom.qr.matching import
QueryError`` names the same class as ``from asyncdicom.errors import QueryError``).

The tree::

    DICOMError
    ├── LocalProtocolError                    the caller broke a rule of the state machine
    ├── ProtocolError                         malformed or unexpected bytes from the peer
    │   ├── TruncatedPDU
    │   ├── UnrecognizedPDU
    │   ├── UnexpectedPDU
    │   ├── InvalidPDU
    │   ├── InvalidItem
    │   ├── InvalidParameterValue
    │   ├── BadProtocolVersion
    │   ├── PDUTooLarge
    │   └── DIMSEError
    ├── TransportError                        the TCP or TLS connection
    │   ├── TLSError
    │   ├── ConnectTimeout (TimeoutError)
    │   └── ConnectionLost (also an AssociationAborted)
    ├── AssociationError                      the association cannot be used any more
    │   ├── AssociationRejected
    │   ├── AssociationAborted
    │   │   └── ConnectionLost
    │   ├── ACSETimeout (TimeoutError)
    │   ├── DIMSETimeout (TimeoutError)
    │   └── NetworkTimeout (TimeoutError)
    ├── NoAcceptedContext                     no accepted presentation context fits
    ├── TooManyPresentationContexts (ValueError)
    ├── StorageError                          a file or data set cannot be read or written
    │   ├── InvalidDicomFile
    │   ├── InvalidDataset (ValueError)
    │   │   ├── EmptyDataSet                  a C-STORE-RQ without a data set
    │   │   └── DataSetMismatch               its SOP UIDs are not the request's
    │   ├── TranscodeError
    │   │   └── UnsupportedTransferSyntax
    │   └── UIDPatchError (ValueError)
    ├── QueryFailed                           the SCP ended our C-FIND with a failure
    ├── RetrieveFailed                        ... our C-GET or C-MOVE
    ├── RetrieveIncomplete (TimeoutError)     instances of a retrieve to ourselves never came
    ├── CommitmentRefused                     ... our Storage Commitment N-ACTION
    ├── CommitmentTimeout (TimeoutError)      no commitment report in time
    ├── QueryError (ValueError)               an identifier an SCP cannot answer
    │   ├── IdentifierMismatch
    │   ├── UnableToProcess
    │   └── ModelNotSupported
    ├── IndexDatabaseError                    the Query/Retrieve index cannot be used
    │   └── SchemaVersionError
    ├── SlowPath                              a C-FIND response to build with pydicom
    ├── UsersFileError (ValueError)           a users file cannot be read or parsed
    ├── AuditLogError (OSError)               the audit log cannot be appended to
    ├── WorkerFailed (RuntimeError)           a load-test worker process could not run
    ├── BenchResultError (ValueError)         a file is not a load-test result
    │   └── IncompatibleRuns                  load-test results that do not add up to one
    ├── WorkerDied (RuntimeError)             a server worker process ended unasked
    ├── RulesError (ValueError)               a router's destination or rules file is wrong
    ├── QueueBusy                             another router holds the queue folder
    └── InboxBusy                             another inbox has the folder open
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from .protocol.errors import (
    BadProtocolVersion,
    DICOMError,
    DIMSEError,
    InvalidItem,
    InvalidParameterValue,
    InvalidPDU,
    LocalProtocolError,
    PDUTooLarge,
    ProtocolError,
    TruncatedPDU,
    UnexpectedPDU,
    UnrecognizedPDU,
)
from .protocol.messages import ResponseMessage
from .protocol.status import Status, fit_error_comment

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

__all__ = [
    "ACSETimeout",
    "AssociationAborted",
    "AssociationError",
    "AssociationRejected",
    "AuditLogError",
    "BadProtocolVersion",
    "BenchResultError",
    "CommitmentRefused",
    "CommitmentTimeout",
    "ConnectTimeout",
    "ConnectionLost",
    "DICOMError",
    "DIMSEError",
    "DIMSETimeout",
    "DataSetMismatch",
    "EmptyDataSet",
    "IdentifierMismatch",
    "InboxBusy",
    "IncompatibleRuns",
    "IndexDatabaseError",
    "InvalidDataset",
    "InvalidDicomFile",
    "InvalidItem",
    "InvalidPDU",
    "InvalidParameterValue",
    "LocalProtocolError",
    "ModelNotSupported",
    "NetworkTimeout",
    "NoAcceptedContext",
    "PDUTooLarge",
    "ProtocolError",
    "QueryError",
    "QueryFailed",
    "QueueBusy",
    "RetrieveFailed",
    "RetrieveIncomplete",
    "RulesError",
    "SchemaVersionError",
    "SlowPath",
    "StorageError",
    "TLSError",
    "TooManyPresentationContexts",
    "TranscodeError",
    "TransportError",
    "TruncatedPDU",
    "UIDPatchError",
    "UnableToProcess",
    "UnexpectedPDU",
    "UnrecognizedPDU",
    "UnsupportedTransferSyntax",
    "UsersFileError",
    "WorkerDied",
    "WorkerFailed",
]


class TransportError(DICOMError):
    """The TCP (or TLS) connection could not be opened or broke."""


class TLSError(TransportError):
    """The TLS handshake failed or timed out, or a TLS context could not be built (a missing
    or unreadable certificate, key or CA file)."""


class ConnectTimeout(TransportError, TimeoutError):
    """The TCP connection was not established within the connect timeout."""


class AssociationError(DICOMError):
    """An association could not be used any more."""


class AssociationRejected(AssociationError):
    """The peer answered A-ASSOCIATE-RQ with A-ASSOCIATE-RJ (PS3.8 Table 9-21)."""

    def __init__(self, result: int, source: int, reason: int) -> None:
        self.result = result
        self.source = source
        self.reason = reason
        kind = {1: "permanent", 2: "transient"}.get(result, f"result {result}")
        who = {
            1: "service-user",
            2: "service-provider (ACSE)",
            3: "service-provider (presentation)",
        }
        super().__init__(
            f"association rejected ({kind}) by {who.get(source, f'source {source}')}, "
            f"reason {reason}: {_reject_reason_text(source, reason)}"
        )


def _reject_reason_text(source: int, reason: int) -> str:
    table = {
        (1, 1): "no reason given",
        (1, 2): "application context name not supported",
        (1, 3): "calling AE title not recognized",
        (1, 7): "called AE title not recognized",
        (2, 1): "no reason given",
        (2, 2): "protocol version not supported",
        (3, 1): "temporary congestion",
        (3, 2): "local limit exceeded",
    }
    return table.get((source, reason), "reserved")


class AssociationAborted(AssociationError):
    """The association was aborted: by the peer (A-ABORT / A-P-ABORT PDU), by this side's
    provider after a protocol error or timeout, or because the transport was lost."""

    def __init__(self, source: int, reason: int, *, local: bool, detail: str = "") -> None:
        self.source = source
        self.reason = reason
        self.local = local
        who = "locally" if local else "by the peer"
        kind = "A-ABORT" if source == 0 else "A-P-ABORT"
        text = f"association aborted {who} ({kind}, source {source}, reason {reason}"
        meaning = _ABORT_REASONS.get(reason) if source == 2 else None
        text += f": {meaning})" if meaning else ")"
        super().__init__(f"{text}: {detail}" if detail else text)


#: PS3.8 Table 9-26: A-ABORT reasons when the source is the service provider (2)
_ABORT_REASONS = {
    0: "reason not specified",
    1: "unrecognized PDU",
    2: "unexpected PDU",
    4: "unrecognized PDU parameter",
    5: "unexpected PDU parameter",
    6: "invalid PDU parameter value",
}


class ConnectionLost(AssociationAborted, TransportError):
    """The connection closed or broke without an A-RELEASE or A-ABORT (PS3.8 A-P-ABORT
    indication after the transport was lost): the peer went away."""

    def __init__(self, detail: str) -> None:
        DICOMError.__init__(self, detail)
        self.source = 2
        self.reason = 0
        self.local = True


class ACSETimeout(AssociationError, TimeoutError):
    """No A-ASSOCIATE-AC/RJ or A-RELEASE-RP arrived in time; the association was aborted."""


class DIMSETimeout(AssociationError, TimeoutError):
    """No DIMSE response arrived in time; the association was aborted."""


class NetworkTimeout(AssociationError, TimeoutError):
    """Nothing was received for longer than the network timeout; the association was aborted."""


class NoAcceptedContext(DICOMError):
    """No accepted presentation context fits the requested SOP class / transfer syntax."""


class StorageError(DICOMError):
    """A DICOM file or data set cannot be read, written or converted: the base of the errors of
    :mod:`asyncdicom.storage` (``InvalidDicomFile``, ``InvalidDataset``, ``TranscodeError``).

    ``store()`` finds such a problem before it sends anything, so the association stays usable;
    only a big file that changes on disk while it is being streamed aborts the association."""


class InvalidDicomFile(StorageError):
    """The file (or byte string) is not a DICOM data set we can read."""


class InvalidDataset(StorageError, ValueError):
    """A data set lacks what the operation needs, e.g. a C-STORE of a data set without SOP
    Class UID (0008,0016) or SOP Instance UID (0008,0018)."""


class EmptyDataSet(InvalidDataset):
    """A C-STORE-RQ without a data set, or with an empty one: nothing is stored (a handler
    that lets it through answers 0xC000, Cannot Understand)."""


class DataSetMismatch(InvalidDataset):
    """The data set's SOP Class UID or SOP Instance UID is not the one of its C-STORE-RQ
    (PS3.3 C.12.1.1.1: they shall be equal): nothing is stored (a handler that lets it
    through answers 0xA900, Data Set does not match SOP Class, as DCMTK's storescp does)."""


class TranscodeError(StorageError):
    """A data set cannot be converted to the requested transfer syntax."""


class UnsupportedTransferSyntax(TranscodeError):
    """The transfer syntax is unknown or cannot be encoded/decoded here."""


class UIDPatchError(StorageError, ValueError):
    """The data set's UIDs cannot be replaced in its encoded bytes."""


class TooManyPresentationContexts(DICOMError, ValueError):
    """The files need more presentation contexts than one association can carry (128).

    ``needed`` is how many they need.
    """

    def __init__(self, needed: int) -> None:
        self.needed = needed
        super().__init__(
            f"{needed} presentation contexts needed (one per SOP class and transfer syntax, "
            f"plus one conversion fallback per SOP class with uncompressed files): more than "
            f"the {_MAX_PRESENTATION_CONTEXTS} one association can carry; send the files in "
            "several batches"
        )


#: presentation context IDs are the odd numbers 1-255 (PS3.8 9.3.2.2)
_MAX_PRESENTATION_CONTEXTS = 128


# --------------------------------------------------------------------------- failed operations


class PeerResponse(Protocol):
    """What an exception carrying the peer's final response exposes of it: the
    :class:`~asyncdicom.association.DIMSEResponse` of the operation fits (the exceptions are
    defined below the driver, so they name it through this protocol)."""

    @property
    def message(self) -> ResponseMessage:
        """The response message (command set)."""
        ...

    @property
    def dataset(self) -> bytes | None:
        """Its encoded data set, if it had one."""
        ...

    @property
    def status(self) -> int:
        """Its Status (0000,0900)."""
        ...

    @property
    def error_comment(self) -> str | None:
        """Its Error Comment (0000,0902), if the peer sent one."""
        ...

    def decode(self) -> Dataset | None:
        """Its data set decoded, or ``None`` if it has none."""
        ...


class QueryFailed(DICOMError):
    """The SCP ended a C-FIND with a Failure status; ``response`` is its final response."""

    def __init__(self, response: PeerResponse) -> None:
        super().__init__(f"C-FIND failed: {response}")
        self.response = response


class RetrieveFailed(DICOMError):
    """The SCP ended a C-GET or C-MOVE with a Failure status; ``response`` is its final
    response (``failed_instances`` the Failed SOP Instance UID List it carried)."""

    def __init__(self, response: PeerResponse, failed_instances: list[str]) -> None:
        name = response.message.NAME.removesuffix("-RSP")
        super().__init__(f"{name} failed: {response}")
        self.response = response
        self.failed_instances = failed_instances


class RetrieveIncomplete(DICOMError, TimeoutError):
    """A retrieve to ourselves (:meth:`asyncdicom.Association.retrieve`) got its final
    response, but fewer instances arrived than its sub-operations completed, and the rest did
    not come within the wait.  ``expected`` is the number of completed (and warning)
    sub-operations, ``arrived`` how many instances came, ``missing`` the SOP Instance UIDs
    asked for that never came (when the request named them; else empty)."""

    def __init__(
        self, operation: str, expected: int, arrived: int, timeout: float, missing: list[str]
    ) -> None:
        detail = f" (missing: {', '.join(missing[:5])}{', ...' if len(missing) > 5 else ''})"
        super().__init__(
            f"{operation}: the SCP completed {expected} sub-operations but {arrived} instances "
            f"arrived within {timeout:g} s of the final response" + (detail if missing else "")
        )
        self.expected = expected
        self.arrived = arrived
        self.missing = missing


class CommitmentTimeout(DICOMError, TimeoutError):
    """No N-EVENT-REPORT came for the transaction in time."""

    def __init__(self, transaction_uid: str, timeout: float | None) -> None:
        super().__init__(
            f"no storage commitment report for transaction {transaction_uid} within {timeout} s"
        )
        self.transaction_uid = transaction_uid


class CommitmentRefused(DICOMError):
    """The SCP answered the N-ACTION with a failure status; ``response`` is its N-ACTION-RSP."""

    def __init__(self, response: PeerResponse) -> None:
        super().__init__(f"storage commitment request refused: {response}")
        self.response = response


# --------------------------------------------------------------------------- SCP side


class QueryError(DICOMError, ValueError):
    """A C-FIND identifier the SCP cannot answer; ``status`` is the failure status to send
    (PS3.4 Table C.4-1), ``tag`` the offending element when there is one, for Offending
    Element (0000,0901), and ``error_comment`` a short text for Error Comment (0000,0902)."""

    status: int = int(Status.UNABLE_TO_PROCESS)

    def __init__(self, message: str, *, tag: int | None = None) -> None:
        super().__init__(message)
        self.tag = tag

    @property
    def error_comment(self) -> str:
        """The message, cut at a word to the 64 characters an Error Comment (LO) holds."""
        return fit_error_comment(str(self))


class IdentifierMismatch(QueryError):
    """The identifier does not fit the information model: Query/Retrieve Level missing, unknown
    or not a level of the model, or a unique key of a level above missing or not single.
    Answered with 0xA900, Identifier Does Not Match SOP Class."""

    status = int(Status.IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS)


class UnableToProcess(QueryError):
    """A key value with no meaning for matching (a malformed or reversed date range, a
    non-numeric IS, a list of dates).  Answered with 0xC000, Unable to process."""

    status = int(Status.UNABLE_TO_PROCESS)


class ModelNotSupported(QueryError):
    """Not a Query/Retrieve information model (name or FIND/GET/MOVE SOP Class UID).
    Answered with 0x0122, SOP Class Not Supported."""

    status = int(Status.SOP_CLASS_NOT_SUPPORTED)


class IndexDatabaseError(DICOMError):
    """The index cannot be used: not an SQLite database, a PostgreSQL database that cannot be
    reached (or its driver is not installed), or not an index of this module."""


class SchemaVersionError(IndexDatabaseError):
    """The index was written with a schema version this module does not know
    (``found``), typically by a newer release."""

    def __init__(self, message: str, *, found: int) -> None:
        super().__init__(message)
        self.found = found


class SlowPath(DICOMError):
    """:class:`asyncdicom.qr.wire.ResponseEncoder` cannot copy this C-FIND response byte
    for byte: build it with pydicom (``Query.response``) instead.  Not a failure."""


# --------------------------------------------------------------------------- configuration files


class UsersFileError(DICOMError, ValueError):
    """A users file that cannot be read or has a line that is not ``USER:HASH``."""


class AuditLogError(DICOMError, OSError):
    """The audit log file cannot be opened for appending."""


class WorkerFailed(DICOMError, RuntimeError):
    """A load-test worker process could not run its share (its error line, or how it
    ended); see :func:`asyncdicom.loadtest.run_in_processes`."""


class BenchResultError(DICOMError, ValueError):
    """A file given as a load-test result is not one (not JSON, or not the shape ``bench
    --json`` writes); see :func:`asyncdicom.loadtest.read_result`."""


class IncompatibleRuns(BenchResultError):
    """Load-test results that cannot be merged into one: different operations, open and
    closed loop mixed, or runs whose time windows do not overlap; see
    :func:`asyncdicom.loadtest.merge_runs`."""


class WorkerDied(DICOMError, RuntimeError):
    """A worker process of a multi-process server could not start, or ended without being
    asked to (the server then stops); see :func:`asyncdicom.workers.serve_workers`."""


# --------------------------------------------------------------------------- the router


class RulesError(DICOMError, ValueError):
    """A router destination (``AET@HOST:PORT``) or rules file that cannot be used; the
    message names the line (see :mod:`asyncdicom.router.rules`)."""


class QueueBusy(DICOMError):
    """Another router process holds the queue folder (see :mod:`asyncdicom.router.queue`)."""


class InboxBusy(DICOMError):
    """Another inbox, in this process or another, has the folder open (see
    :meth:`asyncdicom.AE.inbox`): two would hand out and remove each other's instances."""
