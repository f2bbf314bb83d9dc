"""Typed errors of the sans-IO protocol core.

Two families, after h11's split between what *we* did wrong and what the *peer* did wrong:

* :class:`LocalProtocolError` -- the local user asked for something the standard does not allow
  in the current state (for example a P-DATA request before the association is established).
  Nothing is sent and the state does not change; the caller has a bug.
* :class:`ProtocolError` (and its subclasses) -- bytes received from the peer are malformed or
  unexpected.  Each subclass knows how the standard wants the peer told:
  :attr:`ProtocolError.abort_reason` is the A-ABORT provider reason (PS3.8 Table 9-26) and
  :attr:`ProtocolError.reject` the A-ASSOCIATE-RJ (result, source, reason) triple (PS3.8
  Table 9-21) to use when the problem is found in an A-ASSOCIATE-RQ and the association can
  still be rejected rather than aborted.

Nothing else may escape :func:`asyncdicom.protocol.decode_pdu` or the framer: a decoder that
hits an ``IndexError`` or ``struct.error`` on peer data has a bug.

Both derive from :class:`DICOMError`, the base of every asyncdicom exception; it is defined
here, in the lowest layer, so that the sans-IO core needs nothing above it.
:mod:`asyncdicom.errors` names all of them, with the tree of the package's exceptions.
"""

from __future__ import annotations

from enum import IntEnum

__all__ = [
    "AbortReason",
    "AbortSource",
    "BadProtocolVersion",
    "DICOMError",
    "DIMSEError",
    "InvalidItem",
    "InvalidPDU",
    "InvalidParameterValue",
    "LocalProtocolError",
    "PDUTooLarge",
    "ProtocolError",
    "RejectReason",
    "RejectResult",
    "RejectSource",
    "TruncatedPDU",
    "UnexpectedPDU",
    "UnrecognizedPDU",
]


class AbortSource(IntEnum):
    """A-ABORT PDU *source* field (PS3.8 Table 9-26)."""

    SERVICE_USER = 0
    RESERVED = 1
    SERVICE_PROVIDER = 2


class AbortReason(IntEnum):
    """A-ABORT PDU *reason/diag.* field when the source is the service-provider (Table 9-26)."""

    NOT_SPECIFIED = 0
    UNRECOGNIZED_PDU = 1
    UNEXPECTED_PDU = 2
    RESERVED = 3
    UNRECOGNIZED_PDU_PARAMETER = 4
    UNEXPECTED_PDU_PARAMETER = 5
    INVALID_PDU_PARAMETER_VALUE = 6


class RejectResult(IntEnum):
    """A-ASSOCIATE-RJ *result* field (PS3.8 Table 9-21)."""

    REJECTED_PERMANENT = 1
    REJECTED_TRANSIENT = 2


class RejectSource(IntEnum):
    """A-ASSOCIATE-RJ *source* field (PS3.8 Table 9-21)."""

    SERVICE_USER = 1
    SERVICE_PROVIDER_ACSE = 2
    SERVICE_PROVIDER_PRESENTATION = 3


class RejectReason(IntEnum):
    """A-ASSOCIATE-RJ *reason/diag.* values (PS3.8 Table 9-21).

    The meaning of a value depends on the source, so the names carry the source as a prefix.
    """

    # source 1: service-user
    USER_NO_REASON = 1
    USER_APPLICATION_CONTEXT_NOT_SUPPORTED = 2
    USER_CALLING_AE_NOT_RECOGNIZED = 3
    USER_CALLED_AE_NOT_RECOGNIZED = 7
    # source 2: service-provider (ACSE related function); values overlap with source 1,
    # so these are plain module constants below rather than enum members.


#: Source 2 (ACSE) reasons.
ACSE_NO_REASON = 1
ACSE_PROTOCOL_VERSION_NOT_SUPPORTED = 2
#: Source 3 (presentation) reasons.
PRESENTATION_TEMPORARY_CONGESTION = 1
PRESENTATION_LOCAL_LIMIT_EXCEEDED = 2


class DICOMError(Exception):
    """Base class of every asyncdicom exception (also importable from
    :mod:`asyncdicom.errors`)."""


class LocalProtocolError(DICOMError):
    """The local user asked for something not allowed in the current state (a caller bug)."""


class ProtocolError(DICOMError):
    """Bytes from the peer are malformed or unexpected (PS3.8 event Evt19).

    :attr:`abort_reason` is the provider reason to put in the A-ABORT PDU that answers it.
    :attr:`reject` is ``(result, source, reason)`` for an A-ASSOCIATE-RJ when the error is found
    while decoding an A-ASSOCIATE-RQ, or ``None`` when an A-ABORT is the right answer.
    """

    abort_reason: AbortReason = AbortReason.NOT_SPECIFIED
    reject: tuple[int, int, int] | None = None

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class TruncatedPDU(ProtocolError):
    """A PDU, item or field ends before the length it declares (or has bytes left over)."""

    abort_reason = AbortReason.INVALID_PDU_PARAMETER_VALUE


class UnrecognizedPDU(ProtocolError):
    """The PDU type byte is not one of the seven PDU types."""

    abort_reason = AbortReason.UNRECOGNIZED_PDU


class UnexpectedPDU(ProtocolError):
    """A well-formed PDU arrived in a state that does not expect it."""

    abort_reason = AbortReason.UNEXPECTED_PDU


class InvalidPDU(ProtocolError):
    """A PDU's fixed fields are wrong (for example a release PDU whose length is not 4)."""

    abort_reason = AbortReason.INVALID_PDU_PARAMETER_VALUE


class InvalidItem(ProtocolError):
    """A variable item or sub-item is malformed: overruns its parent, empty where a value is
    required, repeated where only one is allowed, or missing where one is required."""

    abort_reason = AbortReason.INVALID_PDU_PARAMETER_VALUE


class InvalidParameterValue(ProtocolError):
    """A field holds a value the standard forbids (non-ASCII AE title, bad UID, even context ID)."""

    abort_reason = AbortReason.INVALID_PDU_PARAMETER_VALUE


class BadProtocolVersion(ProtocolError):
    """The A-ASSOCIATE-RQ does not offer protocol version 1 (bit 0 of the version field)."""

    abort_reason = AbortReason.INVALID_PDU_PARAMETER_VALUE
    reject = (
        int(RejectResult.REJECTED_PERMANENT),
        int(RejectSource.SERVICE_PROVIDER_ACSE),
        ACSE_PROTOCOL_VERSION_NOT_SUPPORTED,
    )


class PDUTooLarge(ProtocolError):
    """A PDU header declares a length above the local maximum; refused before buffering it."""

    abort_reason = AbortReason.INVALID_PDU_PARAMETER_VALUE


class DIMSEError(ProtocolError):
    """A DIMSE message is malformed: bad command set, fragments out of order, wrong context."""

    abort_reason = AbortReason.UNEXPECTED_PDU_PARAMETER
