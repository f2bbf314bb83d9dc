"""The application entity: configuration, handlers, and the two ways to get an association.

>>> ae = AE("MYSCU")
>>> async with ae.associate("127.0.0.1", 11112, called_aet="PACS",
...                         contexts=[VERIFICATION, CT_IMAGE_STORAGE]) as assoc:
...     await assoc.echo()

>>> scp = AE("STORESCP", accept_any_storage=True)
>>> @scp.on_store
... async def on_store(request):
...     await request.save_to("/data/incoming")
...     return 0x0000
>>> await scp.serve("0.0.0.0", 11112)
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, ClassVar

import anyio
from anyio.abc import ByteStream, TaskStatus

from . import errors, transport
from .association import Association, ServiceRequest
from .hooks import HookEvent, Hooks
from .log import get_logger
from .protocol import messages, uids
from .protocol.errors import (
    PRESENTATION_LOCAL_LIMIT_EXCEEDED,
    RejectResult,
    RejectSource,
)
from .protocol.negotiation import (
    Accepted,
    AcceptorConfig,
    ContextRequest,
    ExtendedNegotiationHandler,
    IdentityDecision,
    RequestorConfig,
    SupportedContext,
    build_associate_rq,
    negotiate,
)
from .protocol.pdu import (
    AssociateRJ,
    AssociateRQ,
    SOPClassCommonExtendedNegotiationSubItem,
    SOPClassExtendedNegotiationSubItem,
    UserIdentityRQSubItem,
)
from .protocol.upper_layer import Role

__all__ = [
    "AE",
    "AEConfig",
    "ContextRequest",
    "IdentityDecision",
    "Server",
    "SupportedContext",
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
    ``async_ops_window`` is (max invoked, max performed); ``None`` proposes no window, i.e.
    synchronous operation, which every peer understands.
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


IdentityHandler = Callable[[AssociateRQ, UserIdentityRQSubItem], Awaitable[IdentityDecision]]


class Server:
    """A running acceptor: its bound port, live associations, and a way to stop it."""

    def __init__(self, ae: AE, port: int, cancel_scope: anyio.CancelScope) -> None:
        self.ae = ae
        self.port = port
        self._scope = cancel_scope

    @property
    def associations(self) -> frozenset[Association]:
        """The associations currently open on this AE."""
        return frozenset(self.ae._associations)

    def close(self) -> None:
        """Stop listening and abort nothing: open associations are cancelled with the server."""
        self._scope.cancel()


class AE:
    """A DICOM application entity, requestor and/or acceptor.

    Configuration is an :class:`AEConfig` (give one, or its fields as keyword arguments).
    Handlers are registered per DIMSE request type; the same handlers serve requests arriving
    on associations this AE accepted *and* on associations it requested (C-GET's C-STOREs,
    N-EVENT-REPORTs).
    """

    #: process-wide count of :attr:`internal_errors` (the test suite asserts it stays 0)
    total_internal_errors: ClassVar[int] = 0

    def __init__(
        self, ae_title: str | None = None, *, config: AEConfig | None = None, **overrides: Any
    ) -> None:
        base = config or AEConfig()
        if ae_title is not None:
            overrides["ae_title"] = ae_title
        if "timeouts" in overrides and isinstance(overrides["timeouts"], dict):
            overrides["timeouts"] = Timeouts(**overrides["timeouts"])
        self.config: AEConfig = dataclasses.replace(base, **overrides)
        _check_ae_title(self.config.ae_title)
        self.hooks = Hooks()
        self._handlers: dict[type, Callable[..., Any]] = {}
        self._identity_handler: IdentityHandler | None = None
        self._associations: set[Association] = set()
        #: connections that ended because of an unexpected error in asyncdicom itself (each is
        #: logged; the server goes on serving the others)
        self.internal_errors = 0
        self.log = get_logger(ae=self.config.ae_title)

    @property
    def ae_title(self) -> str:
        """This AE's title."""
        return self.config.ae_title

    # ------------------------------------------------------------------ handlers

    def set_handler(self, request_type: type, handler: Callable[..., Any] | None) -> None:
        """Handle requests of ``request_type`` (e.g. ``messages.CStoreRQ``) with ``handler``."""
        if handler is None:
            self._handlers.pop(request_type, None)
        else:
            self._handlers[request_type] = handler

    def handler_for(self, request_type: type) -> Callable[..., Any] | None:
        """The handler registered for ``request_type``, if any."""
        return self._handlers.get(request_type)

    def on_echo(self, handler: Callable[[ServiceRequest], Any]) -> Callable[[ServiceRequest], Any]:
        """Decorator: handle C-ECHO-RQ (the default answers 0x0000)."""
        self.set_handler(messages.CEchoRQ, handler)
        return handler

    def on_store(self, handler: Callable[[ServiceRequest], Any]) -> Callable[[ServiceRequest], Any]:
        """Decorator: handle C-STORE-RQ.  Registering one makes the acceptor accept storage
        SOP classes if ``accept_any_storage`` is set or contexts were configured."""
        self.set_handler(messages.CStoreRQ, handler)
        return handler

    def on_user_identity(self, handler: IdentityHandler) -> IdentityHandler:
        """Decorator: decide on A-ASSOCIATE-RQ user identity (PS3.7 D.3.3.7).  Without one,
        user identity items are ignored (accepted without a positive response)."""
        self._identity_handler = handler
        return handler

    def _on_cancel(self, association: Association, message: messages.Message) -> None:
        association.log.info("c_cancel_received", message=repr(message))

    # ------------------------------------------------------------------ requestor

    def _context_requests(
        self, contexts: Iterable[str | ContextRequest | tuple[str, Sequence[str]]]
    ) -> list[ContextRequest]:
        out: list[ContextRequest] = []
        for c in contexts:
            if isinstance(c, ContextRequest):
                out.append(c)
            elif isinstance(c, str):
                out.append(ContextRequest(c, DEFAULT_TRANSFER_SYNTAXES))
            else:
                uid, tss = c
                out.append(ContextRequest(uid, tuple(tss)))
        return out

    @asynccontextmanager
    async def associate(
        self,
        host: str,
        port: int,
        *,
        called_aet: str = "ANY-SCP",
        contexts: Iterable[str | ContextRequest | tuple[str, Sequence[str]]] = (uids.VERIFICATION,),
        bind: str | None = None,
        user_identity: UserIdentityRQSubItem | None = None,
        async_ops_window: tuple[int, int] | None = None,
        extended_negotiation: Sequence[SOPClassExtendedNegotiationSubItem] = (),
        common_extended_negotiation: Sequence[SOPClassCommonExtendedNegotiationSubItem] = (),
    ) -> AsyncIterator[Association]:
        """Open an association to ``host:port`` and release it when the block ends.

        ``contexts`` are SOP class UIDs (proposed with Explicit and Implicit VR Little Endian),
        ``(uid, [transfer syntaxes])`` pairs, or :class:`ContextRequest` objects (which can also
        propose SCP/SCU roles).  ``user_identity``, ``async_ops_window`` and the extended
        negotiation items go into the A-ASSOCIATE-RQ's user information (PS3.7 Annex D.3.3).

        An exception inside the block aborts the association instead.  Raises
        :class:`~asyncdicom.errors.AssociationRejected`, ``AssociationAborted``,
        ``ACSETimeout``, ``TransportError`` / ``ConnectTimeout``.
        """
        cfg = self.config
        _check_ae_title(called_aet)
        rq = build_associate_rq(
            RequestorConfig(
                calling_ae_title=cfg.ae_title,
                called_ae_title=called_aet,
                max_pdu_length=cfg.max_pdu_length,
                implementation_class_uid=cfg.implementation_class_uid,
                implementation_version_name=cfg.implementation_version_name,
                async_ops_window=async_ops_window or cfg.async_ops_window,
                user_identity=user_identity,
                extended_negotiation=tuple(extended_negotiation),
                common_extended_negotiation=tuple(common_extended_negotiation),
            ),
            self._context_requests(contexts),
        )
        stream = await transport.connect(host, port, bind=bind, timeout=cfg.timeouts.connect)
        assoc = Association(self, stream, Role.REQUESTOR)
        assoc._request = rq
        assoc.log = assoc.log.bind(called_aet=called_aet)
        self.hooks.emit(HookEvent.CONNECTION_OPENED, assoc)
        failure: BaseException | None = None
        async with anyio.create_task_group() as tg:
            assoc._tg = tg
            now = anyio.current_time()
            assoc._ul.send(rq, now=now)  # Evt1 -> Sta4 (the connection is already up)
            assoc._ul.connection_made(now=now)  # Evt2 -> AE-2: the RQ is queued
            self.hooks.emit(HookEvent.ASSOCIATION_REQUESTED, assoc, request=rq)
            await tg.start(assoc._run_reader)
            await assoc._flush()
            with anyio.move_on_after(cfg.timeouts.acse) as scope:
                await assoc._established.wait()
            if scope.cancelled_caught:
                failure = errors.ACSETimeout(
                    f"no A-ASSOCIATE-AC/RJ from {host}:{port} within {cfg.timeouts.acse} s"
                )
                await assoc.abort()
            elif assoc.rejection is not None:
                rj = assoc.rejection
                failure = errors.AssociationRejected(rj.result, rj.source, rj.reason)
            elif assoc.negotiated is None or assoc.abort_info is not None:
                a = assoc.abort_info
                failure = errors.AssociationAborted(
                    a.source if a else 2,
                    a.reason if a else 0,
                    local=a.local if a else True,
                    detail=assoc._abort_detail or "during association establishment",
                )
            if failure is None:
                self._associations.add(assoc)
                try:
                    yield assoc
                except BaseException as exc:
                    failure = exc
                    await assoc.abort()
                else:
                    if not assoc.is_closed:
                        try:
                            await assoc.release()
                        except errors.DICOMError as exc:
                            failure = exc
                finally:
                    self._associations.discard(assoc)
            await assoc.wait_closed()
            tg.cancel_scope.cancel()
        if failure is not None:
            raise failure

    # ------------------------------------------------------------------ acceptor

    def _acceptor_config(self) -> AcceptorConfig:
        cfg = self.config
        supported = list(cfg.supported_contexts)
        if not any(s.abstract_syntax == uids.VERIFICATION for s in supported):
            supported.append(SupportedContext(uids.VERIFICATION, DEFAULT_TRANSFER_SYNTAXES))
        return AcceptorConfig(
            ae_title=cfg.ae_title,
            supported=tuple(supported),
            accept_any_storage=cfg.accept_any_storage,
            storage_transfer_syntaxes=cfg.storage_transfer_syntaxes,
            is_storage_sop_class=uids.is_storage_sop_class,
            require_called_ae_title=cfg.require_called_ae_title,
            allowed_calling_ae_titles=cfg.allowed_calling_ae_titles,
            max_pdu_length=cfg.max_pdu_length,
            implementation_class_uid=cfg.implementation_class_uid,
            implementation_version_name=cfg.implementation_version_name,
            async_ops_window=cfg.async_ops_window or (16, 16),
            extended_negotiation_handler=cfg.extended_negotiation_handler,
        )

    async def _on_association_requested(self, assoc: Association, rq: AssociateRQ) -> None:
        """Acceptor: answer an A-ASSOCIATE-RQ (limits, identity, negotiation)."""
        self.hooks.emit(HookEvent.ASSOCIATION_REQUESTED, assoc, request=rq)
        assoc.log = assoc.log.bind(calling_aet=rq.calling_ae_title, called_aet=rq.called_ae_title)
        # Count only associations still in use: one that is released (A-RELEASE-RP already
        # queued), aborted or closed frees its slot at once, not when its transport is finally
        # closed, so a peer that releases and at once reconnects is not refused.
        active = sum(
            1
            for a in self._associations
            if not (a.released or a.abort_info is not None or a.is_closed)
        )
        if active >= self.config.max_associations:
            assoc.log.warning("association_limit", limit=self.config.max_associations)
            await assoc._reject(
                AssociateRJ(
                    int(RejectResult.REJECTED_TRANSIENT),
                    int(RejectSource.SERVICE_PROVIDER_PRESENTATION),
                    PRESENTATION_LOCAL_LIMIT_EXCEEDED,
                )
            )
            return
        identity: IdentityDecision | None = None
        item = rq.user_information.user_identity_rq
        if item is not None and self._identity_handler is not None:
            try:
                identity = await self._identity_handler(rq, item)
            except Exception as exc:
                assoc.log.exception("identity_handler_failed", error=str(exc))
                identity = IdentityDecision(accepted=False)
        result = negotiate(rq, self._acceptor_config(), identity)
        if isinstance(result, Accepted):
            self._associations.add(assoc)
            await assoc._accept(result.ac, result.association)
        else:
            await assoc._reject(result.rj)

    async def _handle_connection(self, stream: ByteStream) -> None:
        transport.set_nodelay(stream)
        assoc = Association(self, stream, Role.ACCEPTOR)
        self.hooks.emit(HookEvent.CONNECTION_OPENED, assoc)
        assoc.log.debug("connection_opened")
        try:
            async with anyio.create_task_group() as tg:
                assoc._tg = tg
                assoc._ul.connection_made(now=anyio.current_time())  # Evt5: ARTIM starts
                await assoc._run_reader()
                tg.cancel_scope.cancel()  # handlers still running have nobody to answer
        except Exception as exc:  # one connection's bug must not stop the server
            self.internal_errors += 1
            AE.total_internal_errors += 1
            assoc.log.exception("connection_failed", error=repr(exc))
            await transport.close_quietly(stream)
        finally:
            self._associations.discard(assoc)

    async def serve(
        self,
        host: str | None = "0.0.0.0",
        port: int = 11112,
        *,
        task_status: TaskStatus[Server] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Accept associations on ``host:port`` until cancelled.

        Use ``server = await task_group.start(ae.serve, host, port)`` to run it in the
        background: the :class:`Server` it reports knows the bound port (useful with port 0).
        """
        listener = await transport.listen(host, port)
        bound = listener.port
        self.log.info("listening", host=host, port=bound)
        try:
            async with anyio.create_task_group() as tg:
                task_status.started(Server(self, bound, tg.cancel_scope))
                await listener.serve(self._handle_connection, tg)
        finally:
            with anyio.CancelScope(shield=True):
                await listener.aclose()

    @asynccontextmanager
    async def server(self, host: str | None = "127.0.0.1", port: int = 0) -> AsyncIterator[Server]:
        """Run :meth:`serve` in the background for the duration of the block."""
        failure: BaseException | None = None
        async with anyio.create_task_group() as tg:
            srv: Server = await tg.start(self.serve, host, port)
            try:
                yield srv
            except BaseException as exc:
                failure = exc
            tg.cancel_scope.cancel()
        if failure is not None:
            raise failure


def _check_ae_title(title: str) -> None:
    """AE VR (PS3.5): 1-16 characters of ISO 646 without backslash or control characters."""
    stripped = title.strip(" ")
    if not stripped or len(title) > 16:
        raise ValueError(f"AE title must have 1 to 16 characters: {title!r}")
    if any(not (0x20 <= ord(ch) < 0x7F) or ch == "\\" for ch in title):
        raise ValueError(f"AE title has characters outside ISO 646 / backslash: {title!r}")
