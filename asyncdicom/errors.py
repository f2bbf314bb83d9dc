"""Exceptions of asyncdicom's async API.

Protocol-level errors (malformed bytes from a peer, local misuse of the state machine) live in
:mod:`asyncdicom.protocol.errors`; the ones here are what an application awaiting an association
or a DIMSE operation sees.
"""

from __future__ import annotations

__all__ = [
    "ACSETimeout",
    "AssociationAborted",
    "AssociationError",
    "AssociationRejected",
    "ConnectTimeout",
    "ConnectionLost",
    "DICOMError",
    "DIMSETimeout",
    "NetworkTimeout",
    "NoAcceptedContext",
    "StorageError",
    "TLSError",
    "TransportError",
]


class DICOMError(Exception):
    """Base class of every asyncdicom exception."""


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
