"""Events that :class:`asyncdicom.protocol.UpperLayer` hands to its user.

They are the PS3.8 *indications* and *confirmations* (section 7), as frozen dataclasses.  What
the user asks of the upper layer (the *request* and *response* primitives) is expressed by the
PDU dataclasses themselves, passed to ``UpperLayer.send``:

==========================  ====================================  =========
user primitive              pass to ``UpperLayer.send``           event
==========================  ====================================  =========
A-ASSOCIATE request         :class:`~.pdu.AssociateRQ`            Evt1
A-ASSOCIATE response (acc)  :class:`~.pdu.AssociateAC`            Evt7
A-ASSOCIATE response (rej)  :class:`~.pdu.AssociateRJ`            Evt8
P-DATA request              :class:`~.pdu.PDataTF`                Evt9
A-RELEASE request           :class:`~.pdu.ReleaseRQ`              Evt11
A-RELEASE response          :class:`~.pdu.ReleaseRP`              Evt14
A-ABORT request             :class:`~.pdu.Abort`                  Evt15
==========================  ====================================  =========
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from .pdu import AssociateAC, AssociateRJ, AssociateRQ, PDataTF

__all__ = [
    "NEED_DATA",
    "AssociationAborted",
    "AssociationAccepted",
    "AssociationRefused",
    "AssociationRejected",
    "AssociationRequested",
    "ConnectionClosed",
    "DataReceived",
    "NeedData",
    "ReleaseConfirmed",
    "ReleaseRequested",
    "UpperLayerEvent",
]


class NeedData(Enum):
    """Sentinel type returned by ``next_event()`` when more bytes are needed."""

    NEED_DATA = "NEED_DATA"


#: ``UpperLayer.next_event()`` returns this when it needs more bytes from the peer.
NEED_DATA = NeedData.NEED_DATA


@dataclass(frozen=True, slots=True)
class AssociationRequested:
    """A-ASSOCIATE indication (acceptor, AE-6 into Sta3): the peer's request to answer."""

    request: AssociateRQ


@dataclass(frozen=True, slots=True)
class AssociationAccepted:
    """A-ASSOCIATE confirmation, accepted (requestor, AE-3 into Sta6)."""

    accept: AssociateAC


@dataclass(frozen=True, slots=True)
class AssociationRejected:
    """A-ASSOCIATE confirmation, rejected (requestor, AE-4 into Sta1)."""

    reject: AssociateRJ


@dataclass(frozen=True, slots=True)
class AssociationRefused:
    """The service-provider itself rejected a received A-ASSOCIATE-RQ (acceptor, AE-6's "not
    acceptable" branch into Sta13), e.g. for a protocol version without version 1.

    The A-ASSOCIATE-RJ is already queued to send; PS3.8 has no indication for this, the event
    only lets the user log or audit the refusal.  ``error`` is why (a
    :class:`~.errors.ProtocolError` whose ``reject`` gave the RJ's fields).
    """

    reject: AssociateRJ
    error: Exception


@dataclass(frozen=True, slots=True)
class DataReceived:
    """P-DATA indication (DT-2, AR-6): one received P-DATA-TF PDU."""

    pdu: PDataTF


@dataclass(frozen=True, slots=True)
class ReleaseRequested:
    """A-RELEASE indication (AR-2, or AR-8 on a release collision).

    The user answers with ``send(ReleaseRP())``.  ``collision`` is True for AR-8.
    """

    collision: bool = False


@dataclass(frozen=True, slots=True)
class ReleaseConfirmed:
    """A-RELEASE confirmation (AR-3, or AR-10 on a collision)."""


@dataclass(frozen=True, slots=True)
class AssociationAborted:
    """A-ABORT or A-P-ABORT indication (AA-3, AA-4, AA-8).

    ``source`` / ``reason`` are the A-ABORT PDU's fields (source 0 service-user, 2 provider).
    ``local`` is True when this side's provider aborted (AA-8 after a protocol error, AA-4 after
    the transport was lost) rather than the peer.  ``error`` carries the protocol error that
    caused an AA-8, if any.
    """

    source: int
    reason: int
    local: bool
    error: Exception | None = None


@dataclass(frozen=True, slots=True)
class ConnectionClosed:
    """The association is gone and the transport must be closed now (the state is Sta1)."""


UpperLayerEvent = (
    AssociationRequested
    | AssociationAccepted
    | AssociationRejected
    | AssociationRefused
    | DataReceived
    | ReleaseRequested
    | ReleaseConfirmed
    | AssociationAborted
    | ConnectionClosed
)
