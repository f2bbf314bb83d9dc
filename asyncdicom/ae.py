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

Handlers are registered per (DIMSE command, SOP class) with a fallback per command
(``ae.on("N-ACTION", sop_class=...)``); services plug in with :meth:`AE.add_service`.  Every
callback follows one rule: ``async def`` runs on the event loop, a plain function in a worker
thread (hook callbacks, which only observe, excepted: see :mod:`asyncdicom.hooks`).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import socket
import ssl
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, TypeVar, overload

import anyio
from anyio.abc import ByteStream, TaskStatus

from . import transport
from .association import BaseAssociation
from .config import DEFAULT_TRANSFER_SYNTAXES, AEConfig, Timeouts
from .correlation import Correlator
from .hooks import HookEvent, Hooks
from .log import get_logger
from .protocol import messages, uids
from .protocol.errors import (
    ACSE_PROTOCOL_VERSION_NOT_SUPPORTED,
    PRESENTATION_LOCAL_LIMIT_EXCEEDED,
    RejectReason,
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
from .refusal import Refusal, RefusalRule
from .services import (
    DEFAULT_SERVICES,
    QR_MOVE_SERVICE,
    STORAGE_COMMITMENT_SERVICE,
    Association,
    Component,
    HandlerRegistry,
    Service,
)
from .services.base import call
from .services.commitment import CommitmentResult
from .services.dispatch import ServiceDispatcher
from .services.incoming import Incoming
from .users import Lockout, LockoutAttempt, identity_user_name

if TYPE_CHECKING:
    from .inbox import AnswerMode, Inbox, NotificationAnswer, Notifications

__all__ = [
    "AE",
    "AEConfig",
    "AssociationLimits",
    "ContextRequest",
    "IdentityDecision",
    "Refusal",
    "RefusalRule",
    "Server",
    "SupportedContext",
    "Timeouts",
]

#: decides on a requestor's user identity: ``(rq, item) -> IdentityDecision`` (async or plain)
IdentityHandler = Callable[
    [AssociateRQ, UserIdentityRQSubItem], Awaitable[IdentityDecision] | IdentityDecision
]
#: answers a SOP Class Extended Negotiation item: ``item -> bytes | None`` (async or plain)
ExtendedNegotiationCallback = Callable[
    [SOPClassExtendedNegotiationSubItem], Awaitable[bytes | None] | bytes | None
]

#: told of a failed TLS handshake on the acceptor: ``(peer_host, peer_port, error)``
TLSFailureCallback = Callable[[str, int, str], object]

F = TypeVar("F", bound=Callable[..., Any])

#: the longest a refusal by lock-out is held back (to take as long as a real check)
_MAX_LOCKOUT_DELAY = 2.0


#: A-ASSOCIATE-RJ (source, reason) -> the rule of :func:`asyncdicom.protocol.negotiation.negotiate`
_NEGOTIATION_RULES = {
    (int(RejectSource.SERVICE_PROVIDER_ACSE), ACSE_PROTOCOL_VERSION_NOT_SUPPORTED): (
        RefusalRule.PROTOCOL_VERSION
    ),
    (int(RejectSource.SERVICE_USER), int(RejectReason.USER_APPLICATION_CONTEXT_NOT_SUPPORTED)): (
        RefusalRule.APPLICATION_CONTEXT
    ),
    (int(RejectSource.SERVICE_USER), int(RejectReason.USER_CALLED_AE_NOT_RECOGNIZED)): (
        RefusalRule.CALLED_AE_TITLE
    ),
    (int(RejectSource.SERVICE_USER), int(RejectReason.USER_CALLING_AE_NOT_RECOGNIZED)): (
        RefusalRule.CALLING_AE_TITLE
    ),
    (int(RejectSource.SERVICE_USER), int(RejectReason.USER_NO_REASON)): RefusalRule.USER_IDENTITY,
}


class AssociationLimits(Protocol):
    """Where ``max_associations`` and ``max_associations_per_calling_ae`` are counted when
    several processes serve one port (:mod:`asyncdicom.workers`); without one, an AE counts
    its own associations."""

    def refusal(
        self, ae: AE, active: Sequence[BaseAssociation], calling: str, *, reserve: bool
    ) -> Refusal | None:
        """Why an association from ``calling`` is over a limit (``None``: it is not), given
        this process's ``active`` associations; with ``reserve``, count it from now on."""


class Server:
    """A running acceptor: its bound port, live associations, and a way to stop it."""

    def __init__(
        self,
        ae: AE,
        port: int,
        cancel_scope: anyio.CancelScope,
        listener: transport.Listener | None = None,
    ) -> None:
        self.ae = ae
        self.port = port
        self._scope = cancel_scope
        self._listener = listener

    async def stop_listening(self) -> None:
        """Accept no more connections; the open associations go on (the server's task ends
        when the last one does)."""
        if self._listener is not None:
            await self._listener.aclose()

    @property
    def associations(self) -> frozenset[BaseAssociation]:
        """The associations this server accepted that are still open."""
        return frozenset(a for a in self.ae._associations if a.role is Role.ACCEPTOR)

    def close(self) -> None:
        """Stop listening and abort nothing: open associations are cancelled with the server."""
        self._scope.cancel()


class AE:
    """A DICOM application entity, requestor and/or acceptor.

    Configuration is an :class:`AEConfig` (give one, or its fields as keyword arguments).
    Handlers are registered per (DIMSE request, SOP class) with a per-request fallback; the
    same handlers serve requests arriving on associations this AE accepted *and* on
    associations it requested (C-GET's C-STOREs, N-EVENT-REPORTs).  An association may have
    handlers of its own (``assoc.on(...)``), which come first.
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
        #: handlers by (request, SOP class)
        self.handlers = HandlerRegistry()
        #: the services this AE has (their defaults answer requests without a handler)
        self.services: list[Service] = list(DEFAULT_SERVICES)
        self._dispatcher = ServiceDispatcher(self.handlers, self.services)
        self._identity_handler: IdentityHandler | None = None
        #: throttles failed User Identity checks (see :meth:`on_user_identity`); ``None``: off
        self.identity_lockout: Lockout | None = None
        #: how long an identity check takes, smoothed (a lock-out refusal takes as long)
        self._identity_check_time = 0.0
        #: why this AE refused an association, for :meth:`refusal`
        self._refusals: weakref.WeakKeyDictionary[BaseAssociation, Refusal] = (
            weakref.WeakKeyDictionary()
        )
        #: called with ``(peer_host, peer_port, error)`` when a TLS handshake of the acceptor
        #: fails (no association exists yet, so no hook sees it); plain functions, run inline,
        #: whose exceptions are logged
        self.tls_failure_callbacks: list[TLSFailureCallback] = []
        self._extended_negotiation: ExtendedNegotiationCallback | None = None
        self._associations: set[BaseAssociation] = set()
        #: connections that ended because of an unexpected error in asyncdicom itself (each is
        #: logged; the server goes on serving the others)
        self.internal_errors = 0
        #: counts the limits with other processes serving the same port (see
        #: :mod:`asyncdicom.workers`); ``None``: this AE's own associations are counted
        self.association_limits: AssociationLimits | None = None
        self.log = get_logger(ae=self.config.ae_title)

    @property
    def ae_title(self) -> str:
        """This AE's title."""
        return self.config.ae_title

    # ------------------------------------------------------------------ handlers

    def install(self, *components: Component) -> None:
        """Install components on this AE (an :class:`~asyncdicom.archive.Archive`, a
        :class:`~asyncdicom.worklist.Worklist`, an :class:`~asyncdicom.services.MPPSSCP`, a
        :class:`~asyncdicom.services.CommitmentSCP`, an :class:`~asyncdicom.audit.AuditLog`,
        an application's own): each registers its handlers, services and hooks with
        ``component.install(ae)``."""
        for component in components:
            component.install(self)

    def add_service(self, service: Service) -> None:
        """Plug in a service: its defaults answer its requests when no handler is
        registered, and with ``accept_by_default`` the acceptor accepts its SOP classes and
        abstract syntaxes."""
        if service not in self.services:
            self.services.append(service)

    def service_state(self, service: Service) -> Any:
        """The state ``service`` shares among this AE's associations (its ``shared_state``),
        made on first use.

        Raises:
            LookupError: the service keeps no shared state.
        """
        return self._dispatcher.shared_state(service)

    @property
    def move_destinations(self) -> dict[str, tuple[str, int]]:
        """C-MOVE SCP: where each Move Destination AE title is (host, port); a C-MOVE to a
        title not listed is answered 0xA801 (the C-MOVE service's shared state)."""
        table: dict[str, tuple[str, int]] = self.service_state(QR_MOVE_SERVICE)
        return table

    @property
    def commitments(self) -> Correlator[CommitmentResult]:
        """Storage Commitment SCU: the requests awaiting their report, by Transaction UID (the
        service's shared state); the N-EVENT-REPORT handler the service brings delivers to it
        (register another and the reports are yours)."""
        correlator: Correlator[CommitmentResult] = self.service_state(STORAGE_COMMITMENT_SERVICE)
        return correlator

    def set_handler(
        self,
        command: str | type[messages.Message],
        handler: Callable[..., Any] | None,
        *,
        sop_class: str | None = None,
    ) -> None:
        """Handle ``command`` (a request class such as ``messages.NActionRQ`` or a name such
        as ``"N-ACTION"``) with ``handler``, for ``sop_class`` only or, with ``None``, for
        every SOP class that has no handler of its own.  ``handler=None`` unregisters."""
        self.handlers.set(command, handler, sop_class=sop_class)

    def handler_for(
        self, command: str | type[messages.Message], sop_class: str | None = None
    ) -> Callable[..., Any] | None:
        """The handler that serves ``command`` on ``sop_class``, if any."""
        return self.handlers.get(command, sop_class)

    def on(
        self, command: str | type[messages.Message], *, sop_class: str | None = None
    ) -> Callable[[F], F]:
        """Decorator: ``@ae.on("N-ACTION", sop_class=UID)`` handles that request (see the
        handler forms in :mod:`asyncdicom.services.base`)."""
        return self.handlers.on(command, sop_class=sop_class)

    @overload
    def on_echo(self, handler: F, /) -> F: ...
    @overload
    def on_echo(
        self, handler: None = None, /, *, sop_class: str | None = None
    ) -> Callable[[F], F]: ...
    def on_echo(self, handler: Any = None, /, *, sop_class: str | None = None) -> Any:
        """Decorator (bare or with ``sop_class=``): handle C-ECHO-RQ (the default answers
        0x0000)."""
        return self._decorate(messages.CEchoRQ, handler, sop_class)

    @overload
    def on_store(self, handler: F, /) -> F: ...
    @overload
    def on_store(
        self, handler: None = None, /, *, sop_class: str | None = None
    ) -> Callable[[F], F]: ...
    def on_store(self, handler: Any = None, /, *, sop_class: str | None = None) -> Any:
        """Decorator (bare or with ``sop_class=``): handle C-STORE-RQ.  Which storage SOP
        classes the acceptor accepts is configuration (``accept_any_storage``,
        ``supported_contexts``), not a consequence of registering a handler."""
        return self._decorate(messages.CStoreRQ, handler, sop_class)

    def _decorate(
        self, command: type[messages.Message], handler: Any, sop_class: str | None
    ) -> Any:
        if handler is None:
            return self.on(command, sop_class=sop_class)
        self.set_handler(command, handler, sop_class=sop_class)
        return handler

    def on_user_identity(
        self, handler: IdentityHandler, /, *, lockout: Lockout | None = None
    ) -> IdentityHandler:
        """Decorator: decide on A-ASSOCIATE-RQ user identity (PS3.7 D.3.3.7), async or plain.
        Without one, user identity items are ignored (accepted without a positive response);
        a handler that raises rejects the association.

        ``lockout`` (a :class:`~asyncdicom.users.Lockout`, also settable as
        :attr:`identity_lockout`) throttles password guessing: after repeated refusals for a
        user name or from a peer address, attempts are refused without calling ``handler``,
        with the same A-ASSOCIATE-RJ (1, 1, 1) as a refusal by it."""
        self._identity_handler = handler
        if lockout is not None:
            self.identity_lockout = lockout
        return handler

    def refusal(self, association: BaseAssociation) -> Refusal | None:
        """Why this AE, as acceptor, refused ``association`` (``None`` if it did not): known
        from the moment the A-ASSOCIATE-RJ is sent, so an ``ASSOCIATION_REJECTED`` hook can
        ask.  Also for an RQ the protocol layer refused before the AE saw it (rule
        :attr:`RefusalRule.PROTOCOL_VERSION`)."""
        return self._refusals.get(association) or association.provider_refusal

    def on_extended_negotiation(self, handler: F) -> F:
        """Decorator: answer SOP Class Extended Negotiation items (PS3.7 D.3.3.5), async or
        plain: return the service-class application information to send back, or ``None``.
        Takes precedence over ``AEConfig.extended_negotiation_handler``."""
        self._extended_negotiation = handler
        return handler

    # ------------------------------------------------------------------ streams

    @property
    def incoming(self) -> Incoming:
        """Where this AE's C-STOREs and unclaimed N-EVENT-REPORTs go before its handlers:
        the dispatch point inboxes and notification streams attach to
        (:mod:`asyncdicom.services.incoming`)."""
        return self._dispatcher.incoming

    def inbox(
        self,
        folder: str | os.PathLike[str],
        *,
        calling_ae: str | Iterable[str] | None = None,
        called_ae: str | Iterable[str] | None = None,
        sop_class: str | Iterable[str] | None = None,
        study: str | Iterable[str] | None = None,
        answer: AnswerMode = "saved",
        max_queued: int = 10_000,
        timeout: float | None = None,
    ) -> Inbox:
        """The C-STOREs this AE receives, as an async iterator, for the duration of an
        ``async with`` block: ``async with ae.inbox("spool") as inbox: async for instance in
        inbox: ...`` (see :mod:`asyncdicom.inbox`).

        Instances are spooled to ``folder`` (durably) and yielded as
        :class:`~asyncdicom.inbox.IncomingInstance` records; the filters (each one value or
        several) select by calling AE title, called AE title, SOP class and Study Instance
        UID.  ``answer`` is ``"saved"`` (Success once the instance is durably spooled) or
        ``"verdict"`` (the consumer decides); ``max_queued`` bounds the queue, ``timeout``
        (default: the DIMSE timeout) how long a C-STORE's answer may wait for room or for
        the verdict, from the moment its data set is saved, before it is refused with 0xA700.

        Raises:
            ValueError: an unknown ``answer`` or a ``max_queued`` below 1.
        """
        from .inbox import Inbox

        return Inbox(
            self.incoming,
            folder,
            calling_ae=calling_ae,
            called_ae=called_ae,
            sop_class=sop_class,
            study=study,
            answer=answer,
            max_queued=max_queued,
            timeout=self.config.timeouts.dimse if timeout is None else timeout,
        )

    def notifications(
        self,
        *,
        sop_class: str | Iterable[str] | None = None,
        event_type: int | Iterable[int] | None = None,
        max_queued: int = 1000,
        timeout: float | None = None,
        answer: NotificationAnswer = "queued",
    ) -> Notifications:
        """The N-EVENT-REPORTs nobody awaits (storage commitment reports of an unknown
        Transaction UID, those of SOP classes without a handler), by SOP class and event
        type, as an async iterator of :class:`~asyncdicom.inbox.Notification` for the
        duration of an ``async with`` block.

        A report is answered Success once queued (``answer="queued"``; reports still queued
        when the block ends are dropped) or once the consumer has taken it
        (``answer="taken"``; a report not taken is answered as without the stream, so none
        answered Success is dropped).  ``timeout`` (default: the DIMSE timeout) bounds the
        wait for room in a full queue and, with ``"taken"``, for the consumer; after it the
        report is answered as without the stream.

        Raises:
            ValueError: ``answer`` is neither ``"queued"`` nor ``"taken"``.
        """
        from .inbox import Notifications

        return Notifications(
            self.incoming,
            sop_class=None if sop_class is None else _strings(sop_class),
            event_type=None if event_type is None else _ints(event_type),
            max_queued=max_queued,
            timeout=self.config.timeouts.dimse if timeout is None else timeout,
            answer=answer,
        )

    def on_hook(self, event: HookEvent) -> Callable[[F], F]:
        """Decorator: observe ``event`` (see :mod:`asyncdicom.hooks`)."""

        def register(callback: F) -> F:
            self.hooks.add(event, callback)
            return callback

        return register

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
        ssl_context: ssl.SSLContext | None = None,
    ) -> AsyncIterator[Association]:
        """Open an association to ``host:port`` and release it when the block ends.

        ``contexts`` are SOP class UIDs (proposed with Explicit and Implicit VR Little Endian),
        ``(uid, [transfer syntaxes])`` pairs, or :class:`ContextRequest` objects (which can also
        propose SCP/SCU roles).  ``user_identity``, ``async_ops_window`` and the extended
        negotiation items go into the A-ASSOCIATE-RQ's user information (PS3.7 Annex D.3.3).
        ``ssl_context`` (default: ``AEConfig.client_ssl_contexts`` for ``called_aet``, else
        ``AEConfig.client_ssl_context``) runs the association over TLS (PS3.15 Annex B), e.g.
        :func:`asyncdicom.transport.client_context`; the handshake is bounded by
        ``Timeouts.tls_handshake``.

        An exception inside the block aborts the association instead.  Raises
        :class:`~asyncdicom.errors.AssociationRejected`, ``AssociationAborted``,
        ``ACSETimeout``, ``TransportError`` / ``ConnectTimeout`` /
        :class:`~asyncdicom.transport.TLSError`.
        """
        rq = self._build_rq(
            called_aet,
            contexts,
            user_identity,
            async_ops_window,
            extended_negotiation,
            common_extended_negotiation,
        )
        config = self.config
        timeout = config.timeouts.connect
        if ssl_context is None:
            ssl_context = config.client_ssl_contexts.get(
                called_aet.strip(" "), config.client_ssl_context
            )
        stream = await transport.connect(
            host,
            port,
            bind=bind,
            timeout=timeout,
            ssl_context=ssl_context,
            handshake_timeout=self.config.timeouts.tls_handshake,
        )
        async with self._associate_on(stream, rq, called_aet, f"{host}:{port}") as assoc:
            yield assoc

    @asynccontextmanager
    async def associate_over(
        self,
        stream: ByteStream,
        *,
        called_aet: str = "ANY-SCP",
        contexts: Iterable[str | ContextRequest | tuple[str, Sequence[str]]] = (uids.VERIFICATION,),
        user_identity: UserIdentityRQSubItem | None = None,
        async_ops_window: tuple[int, int] | None = None,
        extended_negotiation: Sequence[SOPClassExtendedNegotiationSubItem] = (),
        common_extended_negotiation: Sequence[SOPClassCommonExtendedNegotiationSubItem] = (),
    ) -> AsyncIterator[Association]:
        """As :meth:`associate`, over a byte stream that is already open (a TLS stream, an
        in-memory pipe as :mod:`asyncdicom.testing` uses, ...)."""
        rq = self._build_rq(
            called_aet,
            contexts,
            user_identity,
            async_ops_window,
            extended_negotiation,
            common_extended_negotiation,
        )
        async with self._associate_on(stream, rq, called_aet, "the peer") as assoc:
            yield assoc

    def _build_rq(
        self,
        called_aet: str,
        contexts: Iterable[str | ContextRequest | tuple[str, Sequence[str]]],
        user_identity: UserIdentityRQSubItem | None,
        async_ops_window: tuple[int, int] | None,
        extended_negotiation: Sequence[SOPClassExtendedNegotiationSubItem],
        common_extended_negotiation: Sequence[SOPClassCommonExtendedNegotiationSubItem],
    ) -> AssociateRQ:
        """The A-ASSOCIATE-RQ for :meth:`associate` / :meth:`associate_over`."""
        cfg = self.config
        _check_ae_title(called_aet)
        return build_associate_rq(
            RequestorConfig(
                calling_ae_title=cfg.ae_title,
                called_ae_title=called_aet,
                max_pdu_length=cfg.max_pdu_length,
                implementation_class_uid=cfg.implementation_class_uid,
                implementation_version_name=cfg.implementation_version_name,
                async_ops_window=async_ops_window or cfg.async_ops_window,
                user_identity=user_identity or cfg.user_identity,
                extended_negotiation=tuple(extended_negotiation),
                common_extended_negotiation=tuple(common_extended_negotiation),
            ),
            self._context_requests(contexts),
        )

    @asynccontextmanager
    async def _associate_on(
        self, stream: ByteStream, rq: AssociateRQ, called_aet: str, where: str
    ) -> AsyncIterator[Association]:
        assoc = Association(self, stream, Role.REQUESTOR, dispatcher=self._dispatcher)
        assoc.log = assoc.log.bind(called_aet=called_aet)
        async with assoc.open(rq, where=where):
            self._associations.add(assoc)
            try:
                yield assoc
            finally:
                self._associations.discard(assoc)

    # ------------------------------------------------------------------ acceptor

    def _acceptor_config(
        self, extended_negotiation: ExtendedNegotiationHandler | None = None
    ) -> AcceptorConfig:
        cfg = self.config
        supported = list(cfg.supported_contexts)
        configured = {s.abstract_syntax for s in supported}
        # services accepted by default (Verification, private services) add their SOP classes
        for service in self.services:
            if not service.accept_by_default:
                continue
            for uid in sorted((service.sop_classes | service.abstract_syntaxes) - configured):
                supported.append(
                    SupportedContext(
                        uid,
                        service.transfer_syntaxes or DEFAULT_TRANSFER_SYNTAXES,
                        scu_role_allowed=service.scu_role,
                        scp_role_allowed=service.scp_role,
                    )
                )
                configured.add(uid)
        return AcceptorConfig(
            ae_title=cfg.ae_title,
            supported=tuple(supported),
            accept_any_storage=cfg.accept_any_storage,
            storage_transfer_syntaxes=cfg.storage_transfer_syntaxes,
            is_storage_sop_class=uids.is_storage_sop_class,
            require_called_ae_title=cfg.require_called_ae_title,
            allowed_calling_ae_titles=cfg.allowed_calling_ae_titles,
            require_user_identity=cfg.require_user_identity,
            max_pdu_length=cfg.max_pdu_length,
            implementation_class_uid=cfg.implementation_class_uid,
            implementation_version_name=cfg.implementation_version_name,
            async_ops_window=cfg.async_ops_window or (16, 16),
            extended_negotiation_handler=extended_negotiation or cfg.extended_negotiation_handler,
        )

    def active_associations(self) -> list[BaseAssociation]:
        """This AE's associations still in use, both roles: what ``max_associations``
        counts (one released, aborted or closed is not, even before its transport is gone)."""
        return [
            a
            for a in self._associations
            if not (a.released or a.abort_info is not None or a.is_closed)
        ]

    async def _over_limit(
        self, assoc: BaseAssociation, rq: AssociateRQ, *, reserve: bool = False
    ) -> bool:
        """Acceptor: reject ``rq`` (transient, source 3, reason 2: local limit exceeded) when
        ``max_associations`` or ``max_associations_per_calling_ae`` is reached; True if so.
        ``reserve``: the association is accepted unless refused here (shared limits count it
        from now on)."""
        # Count only associations still in use: one that is released (A-RELEASE-RP already
        # queued), aborted or closed frees its slot at once, not when its transport is finally
        # closed, so a peer that releases and at once reconnects is not refused.
        active = self.active_associations()
        cfg = self.config
        calling = rq.calling_ae_title.strip(" ")
        per_ae = cfg.max_associations_per_calling_ae
        shared = self.association_limits
        if shared is not None:
            refusal = shared.refusal(self, active, calling, reserve=reserve)
            if refusal is None:
                return False
        elif len(active) >= cfg.max_associations:
            refusal = Refusal(
                RefusalRule.MAX_ASSOCIATIONS,
                f"{len(active)} associations open, the limit is {cfg.max_associations}",
            )
        elif per_ae is not None and (
            sum(1 for a in active if a.role is Role.ACCEPTOR and a.calling_ae_title == calling)
            >= per_ae
        ):
            refusal = Refusal(
                RefusalRule.MAX_ASSOCIATIONS_PER_CALLING_AE,
                f"{calling!r} has {per_ae} associations open, the limit per calling AE title",
            )
        else:
            return False
        rj = AssociateRJ(
            int(RejectResult.REJECTED_TRANSIENT),
            int(RejectSource.SERVICE_PROVIDER_PRESENTATION),
            PRESENTATION_LOCAL_LIMIT_EXCEEDED,
        )
        await self._refuse(assoc, rq, rj, refusal)
        return True

    async def _refuse(
        self, assoc: BaseAssociation, rq: AssociateRQ, rj: AssociateRJ, refusal: Refusal
    ) -> None:
        """Acceptor: send ``rj``, remembering why (:meth:`refusal`, for the hooks), and log it
        as one warning."""
        self._refusals[assoc] = refusal
        await assoc.reject(rj)
        if assoc.rejection is not rj:  # aborted or closed meanwhile: nothing was refused
            self._refusals.pop(assoc, None)
            return
        item = rq.user_information.user_identity_rq
        assoc.log_rejection(
            rj,
            refusal,
            user=identity_user_name(item) if item is not None else None,
            identity_type=item.identity_type if item is not None else None,
        )

    async def _check_identity(
        self, assoc: BaseAssociation, rq: AssociateRQ, item: UserIdentityRQSubItem
    ) -> tuple[IdentityDecision, tuple[str, ...]]:
        """Acceptor: the identity handler's decision, through the lock-out if there is one;
        and what is locked out (``()`` when the handler decided)."""
        assert self._identity_handler is not None
        lockout = self.identity_lockout
        user = identity_user_name(item)
        attempt: LockoutAttempt | None = None
        if lockout is not None:
            attempt = await lockout.admit(user, assoc.peer_host)
            if attempt is None:
                locked = lockout.locked_by(user, assoc.peer_host) or ("address",)
                # answer no sooner than a real check would: the peer cannot tell
                await anyio.sleep(self._identity_check_time)
                return IdentityDecision(accepted=False), locked
        outcome: bool | None = None
        started = anyio.current_time()
        try:
            try:
                decision: IdentityDecision = await call(self._identity_handler, rq, item)
            except Exception as exc:
                assoc.log.exception("identity_handler_failed", error=str(exc))
                decision = IdentityDecision(accepted=False)
            outcome = bool(decision.accepted)
            elapsed = min(anyio.current_time() - started, _MAX_LOCKOUT_DELAY)
            self._identity_check_time += (elapsed - self._identity_check_time) / 4
            return decision, ()
        finally:
            if lockout is not None and attempt is not None:
                now_locked = lockout.finish(attempt, accepted=outcome)
                if now_locked:
                    assoc.log.warning(
                        "identity_lockout_started",
                        locked=list(now_locked),
                        user=user,
                        failures=lockout.max_failures,
                        window=lockout.window,
                        duration=lockout.duration,
                    )

    async def _on_association_requested(self, assoc: BaseAssociation, rq: AssociateRQ) -> None:
        """Acceptor: answer an A-ASSOCIATE-RQ (limits, identity, negotiation)."""
        self.hooks.emit(HookEvent.ASSOCIATION_REQUESTED, assoc, request=rq)
        assoc.log = assoc.log.bind(calling_aet=rq.calling_ae_title, called_aet=rq.called_ae_title)
        if await self._over_limit(assoc, rq):
            return
        identity: IdentityDecision | None = None
        locked: tuple[str, ...] = ()
        item = rq.user_information.user_identity_rq
        if item is not None and self._identity_handler is not None:
            identity, locked = await self._check_identity(assoc, rq, item)
        ext_neg: ExtendedNegotiationHandler | None = None
        if self._extended_negotiation is not None:
            # negotiate() is pure and synchronous: ask the (maybe async) callback first
            answers: dict[int, bytes | None] = {}
            for ext in rq.user_information.extended_negotiations:
                try:
                    answers[id(ext)] = await call(self._extended_negotiation, ext)
                except Exception as exc:
                    assoc.log.exception("extended_negotiation_failed", error=str(exc))
                    answers[id(ext)] = None
            ext_neg = lambda ext: answers.get(id(ext))  # noqa: E731
        result = negotiate(rq, self._acceptor_config(ext_neg), identity)
        if isinstance(result, Accepted):
            # the limits again: other requests may have been accepted while the callbacks
            # above were awaited (nothing is awaited from here to the add)
            if await self._over_limit(assoc, rq, reserve=True):
                return
            self._associations.add(assoc)
            await assoc.accept(result.ac, result.association)
            return
        rj = result.rj
        rule = _NEGOTIATION_RULES.get((rj.source, rj.reason), RefusalRule.OTHER)
        detail = result.detail
        if rule is RefusalRule.USER_IDENTITY and locked:
            rule = RefusalRule.LOCKED_OUT
            what = " and ".join(
                f"user {identity_user_name(item)!r}"
                if kind == "user" and item is not None
                else f"address {assoc.peer_host}"
                for kind in locked
            )
            detail = f"locked out after repeated failed identity checks ({what})"
        await self._refuse(assoc, rq, rj, Refusal(rule, detail))

    async def serve_stream(self, stream: ByteStream) -> None:
        """Act as acceptor on one byte stream that is already open, until it closes."""
        await self._handle_connection(stream)

    async def _handle_connection(self, stream: ByteStream) -> None:
        transport.set_nodelay(stream)
        assoc = Association(self, stream, Role.ACCEPTOR, dispatcher=self._dispatcher)
        self.hooks.emit(HookEvent.CONNECTION_OPENED, assoc)
        assoc.log.debug("connection_opened")
        try:
            await assoc.serve()
        except Exception as exc:  # one connection's bug must not stop the server
            self.internal_errors += 1
            AE.total_internal_errors += 1
            assoc.log.exception("connection_failed", error=repr(exc))
            await transport.close_quietly(stream)
        finally:
            self._associations.discard(assoc)

    async def _handle_tls_connection(self, context: ssl.SSLContext, stream: ByteStream) -> None:
        """Acceptor over TLS: the handshake runs here, in the connection's own task and within
        ``Timeouts.tls_handshake``, so a silent or non-TLS peer holds up nobody else."""
        transport.set_nodelay(stream)
        host, port = transport.peer_address(stream)  # unknown once a failed handshake closed it
        try:
            tls = await transport.start_tls(
                stream, context, server_side=True, timeout=self.config.timeouts.tls_handshake
            )
        except transport.TLSError as exc:
            self.log.warning("tls_handshake_failed", error=str(exc), peer=f"{host}:{port}")
            for callback in tuple(self.tls_failure_callbacks):
                try:
                    callback(host, port, str(exc))
                except Exception as failure:
                    self.log.exception("tls_failure_callback_failed", error=str(failure))
            return
        await self._handle_connection(tls)

    async def serve(
        self,
        host: str | None = "0.0.0.0",
        port: int = 11112,
        *,
        ssl_context: ssl.SSLContext | None = None,
        sock: socket.socket | None = None,
        task_status: TaskStatus[Server] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Accept associations on ``host:port`` until cancelled.

        Use ``server = await task_group.start(ae.serve, host, port)`` to run it in the
        background: the :class:`Server` it reports knows the bound port (useful with port 0).
        With ``ssl_context`` (default: ``AEConfig.server_ssl_context``; e.g. from
        :func:`asyncdicom.transport.server_context`) every connection must open with a TLS
        handshake (PS3.15 Annex B), done per connection within ``Timeouts.tls_handshake``;
        a connection whose handshake fails or times out is closed and logged.
        With ``sock`` (a TCP socket bound and listening already, which the server then owns)
        it accepts on that socket and ``host``/``port`` are not used; several processes
        serving one port do so (:func:`asyncdicom.workers.serve_workers`).

        Raises:
            TransportError: cannot listen on ``host:port`` (or accept on ``sock``).
        """
        if sock is None:
            listener = await transport.listen(host, port)
        else:
            listener = await transport.listen_socket(sock)
        bound = listener.port
        self.log.info("listening", host=host, port=bound)
        try:
            async with anyio.create_task_group() as tg:
                task_status.started(Server(self, bound, tg.cancel_scope, listener))
                context = ssl_context or self.config.server_ssl_context
                if context is None:
                    await listener.serve(self._handle_connection, tg)
                else:
                    await listener.serve(
                        functools.partial(self._handle_tls_connection, context), tg
                    )
        finally:
            with anyio.CancelScope(shield=True):
                await listener.aclose()

    @asynccontextmanager
    async def server(
        self,
        host: str | None = "127.0.0.1",
        port: int = 0,
        *,
        ssl_context: ssl.SSLContext | None = None,
    ) -> AsyncIterator[Server]:
        """Run :meth:`serve` in the background for the duration of the block (over TLS with
        ``ssl_context``, as :meth:`serve`)."""
        failure: BaseException | None = None
        async with anyio.create_task_group() as tg:
            try:
                srv: Server = await tg.start(
                    functools.partial(self.serve, ssl_context=ssl_context), host, port
                )
            except BaseException as exc:
                # could not listen (port taken, address not local...): raise the error
                # itself, not a group around it
                failure = exc
            else:
                try:
                    yield srv
                except BaseException as exc:
                    failure = exc
            tg.cancel_scope.cancel()
        if failure is not None:
            raise failure


def _strings(value: str | Iterable[str]) -> frozenset[str]:
    return frozenset({value} if isinstance(value, str) else value)


def _ints(value: int | Iterable[int]) -> frozenset[int]:
    return frozenset({value} if isinstance(value, int) else value)


def _check_ae_title(title: str) -> None:
    """AE VR (PS3.5): 1-16 characters of ISO 646 without backslash or control characters."""
    stripped = title.strip(" ")
    if not stripped or len(title) > 16:
        raise ValueError(f"AE title must have 1 to 16 characters: {title!r}")
    if any(not (0x20 <= ord(ch) < 0x7F) or ch == "\\" for ch in title):
        raise ValueError(f"AE title has characters outside ISO 646 / backslash: {title!r}")
