"""Configuration of an application entity: frozen dataclasses, validated when built.

Used by the driver (:mod:`asyncdicom.association`), the services and :class:`asyncdicom.AE`;
it depends on nothing above the protocol core.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .protocol import uids
from .protocol.negotiation import ExtendedNegotiationHandler, SupportedContext

__all__ = [
    "DEFAULT_TRANSFER_SYNTAXES",
    "MAX_MAX_PDU_LENGTH",
    "MIN_MAX_PDU_LENGTH",
    "AEConfig",
    "Timeouts",
]

#: transfer syntaxes proposed for a SOP class given as a bare UID
DEFAULT_TRANSFER_SYNTAXES: tuple[str, ...] = (
    uids.EXPLICIT_VR_LITTLE_ENDIAN,
    uids.IMPLICIT_VR_LITTLE_ENDIAN,
)


#: bounds of the maximum PDU length we announce (PS3.8 Annex D.1)
MIN_MAX_PDU_LENGTH = 1024
MAX_MAX_PDU_LENGTH = 128 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Timeouts in seconds (``None`` = wait forever).

    * ``connect``: TCP connection establishment.
    * ``acse``: waiting for A-ASSOCIATE-AC/RJ or A-RELEASE-RP.
    * ``dimse``: waiting for each DIMSE response, and for the next fragment of a message that
      has started arriving (a peer stalling mid-transfer is aborted); not the pause between
      messages.
    * ``network``: nothing received for this long aborts an established association.
    * ``artim``: PS3.8 ARTIM timer: how long an accepted connection may stay silent before its
      A-ASSOCIATE-RQ, and how long we wait for the peer to close after a reject, release
      response or abort.
    """

    connect: float | None = 30.0
    acse: float | None = 30.0
    dimse: float | None = 60.0
    network: float | None = None
    artim: float = 30.0


@dataclass(frozen=True, slots=True)
class AEConfig:
    """Frozen configuration of an :class:`AE`.

    ``max_pdu_length`` is the largest P-DATA-TF we accept (announced in A-ASSOCIATE).
    ``async_ops_window`` is (max invoked, max performed), 0 meaning unlimited: as requestor it
    is proposed in the A-ASSOCIATE-RQ (``None``: no proposal, i.e. synchronous operation, which
    every peer understands); as acceptor it is what we grant at most (``None``: (16, 16)).
    """

    ae_title: str = "ASYNCDICOM"
    max_pdu_length: int = 262144
    timeouts: Timeouts = field(default_factory=Timeouts)
    implementation_class_uid: str = uids.IMPLEMENTATION_CLASS_UID
    implementation_version_name: str | None = uids.IMPLEMENTATION_VERSION_NAME
    max_associations: int = 1000
    require_called_ae_title: bool = False
    allowed_calling_ae_titles: frozenset[str] | None = None
    async_ops_window: tuple[int, int] | None = None
    accept_any_storage: bool = False
    storage_transfer_syntaxes: tuple[str, ...] = uids.ALL_TRANSFER_SYNTAXES
    supported_contexts: tuple[SupportedContext, ...] = ()
    #: acceptor: answers SOP Class Extended Negotiation items (PS3.7 D.3.3.5); return the
    #: service-class application information to send back, or None to not answer
    extended_negotiation_handler: ExtendedNegotiationHandler | None = None
    #: C-STORE SCP: run every file operation of ``save_to`` in a worker thread (for slow or
    #: network file systems); by default only full 1 MiB writes do, and creating, small
    #: writes and renaming run in the event loop's thread, which is faster on a local disk
    file_io_in_threads: bool = False

    def __post_init__(self) -> None:
        # We buffer one whole PDU while decoding it, so what we announce is also the memory a
        # peer may make us hold per association: it must be finite (0 would mean unlimited).
        if not MIN_MAX_PDU_LENGTH <= self.max_pdu_length <= MAX_MAX_PDU_LENGTH:
            raise ValueError(
                f"max_pdu_length must be {MIN_MAX_PDU_LENGTH}..{MAX_MAX_PDU_LENGTH} bytes, "
                f"not {self.max_pdu_length} (0, unlimited, is not offered: memory stays bounded)"
            )
        if self.max_associations < 1:
            raise ValueError("max_associations must be at least 1")
