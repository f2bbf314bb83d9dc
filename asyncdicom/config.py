"""Configuration of an application entity: frozen dataclasses, validated when built.

Used by the driver (:mod:`asyncdicom.association`), the services and :class:`asyncdicom.AE`;
it depends on nothing above the protocol core.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field

from .protocol import uids
from .protocol.negotiation import ExtendedNegotiationHandler, SupportedContext
from .protocol.pdu import UserIdentityRQSubItem

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
    * ``dimse``: waiting for each DIMSE response, and, once a PDU or a message has started
      arriving, the longest pause allowed inside it (a peer stalling mid-transfer is
      aborted); not the pause between messages.
    * ``min_receive_rate`` (bytes per second, not seconds): once a PDU or a message has
      started arriving it must keep coming at this average rate, so that a peer trickling a
      byte every few seconds cannot hold an association slot forever.  Each byte received
      earns ``1 / min_receive_rate`` seconds of waiting, banked up to ``dimse`` seconds (the
      time we spend processing is not counted); when the bank runs out the association is
      aborted (:class:`~asyncdicom.errors.DIMSETimeout`).  ``None``: only ``dimse`` bounds
      each pause.  Applies only while ``dimse`` is set.
    * ``write``: sending one PDU may take at most this long; a peer that stops reading (its
      receive window stays full) or reads too slowly to take one PDU in this time has its
      connection closed, so that a slow reader cannot hold an association forever.  Checked
      by a watchdog every quarter of this time while the association is writing, so the cut
      comes between 1 and 1.25 times this value.  ``None``: no bound.
    * ``network``: nothing received for this long aborts an established association.
    * ``artim``: PS3.8 ARTIM timer: how long an accepted connection may stay silent before its
      A-ASSOCIATE-RQ, and how long we wait for the peer to close after a reject, release
      response or abort.
    * ``tls_handshake``: the TLS handshake of each connection (with TLS only), apart from
      ``connect`` and ``artim``: a peer that connects and never completes it is closed.
    """

    connect: float | None = 30.0
    acse: float | None = 30.0
    dimse: float | None = 60.0
    min_receive_rate: float | None = 1024.0
    write: float | None = 60.0
    network: float | None = None
    artim: float = 30.0
    tls_handshake: float | None = 10.0

    def __post_init__(self) -> None:
        if self.min_receive_rate is not None and not self.min_receive_rate > 0:
            raise ValueError(
                f"min_receive_rate must be > 0 bytes per second or None, "
                f"not {self.min_receive_rate!r}"
            )
        if self.write is not None and not self.write > 0:
            raise ValueError(f"write must be > 0 seconds or None, not {self.write!r}")


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
    #: acceptor: at most this many associations at once from one calling AE title (None: no
    #: limit besides ``max_associations``); one more is rejected transient, source 3, reason 2
    max_associations_per_calling_ae: int | None = None
    #: acceptor: reject (permanent, source 1, reason 7) an RQ whose Called AE Title is not ours
    require_called_ae_title: bool = False
    #: acceptor: when not None, only these calling AE titles (others: permanent, 1, reason 3);
    #: an empty set admits nobody (only None switches the check off)
    allowed_calling_ae_titles: frozenset[str] | None = None
    #: acceptor: reject (permanent, source 1, reason 1) an RQ without a User Identity sub-item;
    #: the identity itself is checked by the ``AE.on_user_identity`` handler
    require_user_identity: bool = False
    #: requestor: the User Identity sub-item sent when ``associate`` is given none
    user_identity: UserIdentityRQSubItem | None = None
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
    #: C-GET/C-MOVE SCP: a sub-operation may compress an instance lossily (a new SOP Instance
    #: UID, Lossy Image Compression "01") when the destination accepts only lossy transfer
    #: syntaxes for its SOP class; without it that sub-operation fails, with the reason
    retrieve_allow_lossy: bool = False
    #: requestor: TLS for :meth:`AE.associate` when it is not given ``ssl_context`` (None:
    #: plain TCP); see :func:`asyncdicom.transport.client_context`
    client_ssl_context: ssl.SSLContext | None = None
    #: requestor: TLS per called AE title, before ``client_ssl_context``: an association
    #: to an AE title listed here uses its context (e.g. only some C-MOVE destinations
    #: over TLS); keys are AE titles without padding
    client_ssl_contexts: Mapping[str, ssl.SSLContext] = field(default_factory=dict)
    #: acceptor: TLS for :meth:`AE.serve` / :meth:`AE.server` when they are not given
    #: ``ssl_context`` (None: plain TCP); see :func:`asyncdicom.transport.server_context`
    server_ssl_context: ssl.SSLContext | None = None
    #: the largest data set held in memory, received or read: a response's data set (C-FIND
    #: identifier, N-GET attribute list) and a request's data set read whole (C-FIND, N-SET,
    #: N-ACTION, ... identifiers); more aborts the association (A-ABORT source 2). A C-STORE
    #: data set saved with ``save_to`` or read with ``chunks()`` streams and is not limited
    max_dataset_in_memory: int = 64 * 1024 * 1024
    #: where a request's data set bigger than ``max_dataset_in_memory`` is spooled when a
    #: handler asks for it decoded (``request.dataset()``): anonymous temporary files, gone
    #: with the data set (None: the system's temporary folder)
    spool_directory: str | None = None
    #: the largest command set accepted from the peer, however many PDVs carry it (a longer
    #: one is aborted); a command set is a few hundred bytes, 64 KiB leaves room for long
    #: Error Comments and Attribute Identifier Lists
    max_command_set_length: int = 64 * 1024

    def __post_init__(self) -> None:
        # We buffer one whole PDU while decoding it, so what we announce is also the memory a
        # peer may make us hold per association: it must be finite (0 would mean unlimited).
        if not MIN_MAX_PDU_LENGTH <= self.max_pdu_length <= MAX_MAX_PDU_LENGTH:
            raise ValueError(
                f"max_pdu_length must be {MIN_MAX_PDU_LENGTH}..{MAX_MAX_PDU_LENGTH} bytes, "
                f"not {self.max_pdu_length} (0, unlimited, is not offered: memory stays bounded)"
            )
        if self.max_dataset_in_memory < 1024:
            raise ValueError("max_dataset_in_memory must be at least 1024 bytes")
        if self.max_command_set_length < 1024:
            raise ValueError("max_command_set_length must be at least 1024 bytes")
        if self.max_associations < 1:
            raise ValueError("max_associations must be at least 1")
        if self.max_associations_per_calling_ae is not None and (
            self.max_associations_per_calling_ae < 1
        ):
            raise ValueError("max_associations_per_calling_ae must be at least 1 (or None)")
        if isinstance(self.allowed_calling_ae_titles, str):
            raise TypeError("allowed_calling_ae_titles is a set of AE titles, not one string")
