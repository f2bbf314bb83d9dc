"""The association's life as the core reports it: establishment, release, abort, close.

Each core event has one handler, found through a table (:attr:`Engine._handlers`), never an
``isinstance`` ladder; the DIMSE layer adds the handlers of its own events.
"""

from __future__ import annotations

from typing import Any

import anyio

from .. import errors
from ..hooks import HookEvent
from ..protocol.association import (
    AbortCause,
    Aborted,
    AbortKind,
    AssociationRefused,
    AssociationRejected,
    AssociationRequested,
    ConnectionClosed,
    Established,
    ReleaseConfirmed,
    ReleaseRequested,
    ResponseOnOtherContext,
)
from ..protocol.errors import BadProtocolVersion, LocalProtocolError
from ..protocol.pdu import AssociateRJ
from ..protocol.upper_layer import Role
from ..refusal import Refusal, RefusalRule
from ..transport import close_quietly
from .engine import ABORT_LINGER, Engine

__all__ = ["Lifecycle", "failure"]


def failure(cause: AbortCause) -> errors.AssociationError:
    """The exception that callers see for an association ended by ``cause``."""
    kind = cause.kind
    if kind is AbortKind.CONNECTION_LOST:
        return errors.ConnectionLost(cause.detail)
    timeout = _TIMEOUT_ERRORS.get(kind)
    if timeout is not None:
        return timeout(f"association aborted: {cause.detail}")
    return errors.AssociationAborted(
        cause.source, cause.reason, local=cause.local, detail=cause.detail
    )


_TIMEOUT_ERRORS: dict[AbortKind, type[errors.AssociationError]] = {
    AbortKind.ACSE_TIMEOUT: errors.ACSETimeout,
    AbortKind.DIMSE_TIMEOUT: errors.DIMSETimeout,
    AbortKind.RECEIVE_TIMEOUT: errors.DIMSETimeout,
    AbortKind.WRITE_TIMEOUT: errors.DIMSETimeout,
    AbortKind.NETWORK_TIMEOUT: errors.NetworkTimeout,
}


class Lifecycle(Engine):
    """Handlers of the association-level events; release and abort."""

    _invoke_slots: anyio.Semaphore | None = None

    def _raise_if_gone(self) -> None:
        cause = self._core.abort_cause
        if cause is not None:
            raise failure(cause)
        if self._closed.is_set() or not self._established.is_set():
            raise errors.AssociationError("the association is not established")

    async def _on_requested(self, event: AssociationRequested) -> None:
        await self.ae._on_association_requested(self, event.request)

    async def _on_established(self, event: Established) -> None:
        invoked = event.negotiated.max_operations_invoked
        # ours wait for a free slot; the peer's are checked by the core
        self._invoke_slots = anyio.Semaphore(invoked, fast_acquire=True) if invoked else None
        self.log = self.log.bind(peer_ae=self.peer_ae_title)
        # the acceptor says which contexts it refused and why, and which fell back to the
        # default roles (the requestor learns it from the A-ASSOCIATE-AC and the hook)
        negotiated = event.negotiated
        refused = negotiated.refused_contexts
        notes: dict[str, list[str]] = {}
        if self.role is Role.ACCEPTOR:
            notes = {
                "refused": [c.describe() for c in refused],
                "default_roles": [c.describe() for c in negotiated.default_role_contexts],
            }
        self.log.info(
            "association_accepted",
            contexts=len(self.accepted_contexts),
            **{key: value for key, value in notes.items() if value},
        )
        self._established.set()
        self.hooks.emit(HookEvent.ASSOCIATION_ACCEPTED, self, refused=refused)

    async def _on_rejected(self, event: AssociationRejected) -> None:
        self.hooks.emit(HookEvent.ASSOCIATION_REJECTED, self, reject=event.reject)
        self._established.set()

    async def _on_refused(self, event: AssociationRefused) -> None:
        """Acceptor: the core rejected an A-ASSOCIATE-RQ it could not accept (a protocol
        version without version 1); logged like the AE's own refusals."""
        rule = (
            RefusalRule.PROTOCOL_VERSION
            if isinstance(event.error, BadProtocolVersion)
            else RefusalRule.OTHER
        )
        self.provider_refusal = Refusal(rule, str(event.error))
        self.log_rejection(event.reject, self.provider_refusal, user=None, identity_type=None)
        self.hooks.emit(HookEvent.ASSOCIATION_REJECTED, self, reject=event.reject)

    async def _on_release_requested(self, event: ReleaseRequested) -> None:
        assert self._tg is not None
        self._tg.start_soon(self._answer_release)

    async def _answer_release(self) -> None:
        # Answer only after our own in-flight handlers have sent their responses.
        await self._handlers_idle.wait()
        try:
            self._core.release_response(self._now())
        except LocalProtocolError:
            return
        self.hooks.emit(HookEvent.RELEASE_ANSWERED, self)
        await self._process_events()

    async def _on_release_confirmed(self, event: ReleaseConfirmed) -> None:
        pass

    async def _on_aborted(self, event: Aborted) -> None:
        cause = event.cause
        self.log.info(
            "association_aborted",
            source=cause.source,
            reason=cause.reason,
            local=cause.local,
            kind=cause.kind.value,
            detail=cause.detail or None,
        )
        self.hooks.emit(HookEvent.ASSOCIATION_ABORTED, self, abort=cause)
        # establishment (if under way) is over; waiters learn of the abort now
        self._established.set()
        self._wake_waiters()

    async def _on_connection_closed(self, event: ConnectionClosed) -> None:
        await self._flush()
        self._closed.set()
        await close_quietly(self._stream)

    async def _on_other_context(self, event: ResponseOnOtherContext) -> None:
        self.log.warning(
            "response_on_other_context",
            message=event.message.NAME,
            context_id=event.context_id,
            request_context_id=event.request_context_id,
            detail="accepted: both contexts carry the same abstract syntax (warned once)",
        )

    async def release(self) -> None:
        """Release the association (A-RELEASE) and wait for the peer's confirmation.

        Raises:
            ACSETimeout: no A-RELEASE-RP came within the ACSE timeout (the association was
                aborted).
        """
        if self._closed.is_set():
            return
        try:
            self._core.release(self._now())
        except LocalProtocolError:
            return
        await self._flush()
        await self._closed.wait()
        cause = self._core.abort_cause
        if cause is not None and cause.kind is AbortKind.ACSE_TIMEOUT:
            raise errors.ACSETimeout(cause.detail)

    async def abort(self, *, linger: float = ABORT_LINGER) -> None:
        """Abort the association (A-ABORT, source service-user) and close the transport.

        After the A-ABORT the peer is given ``linger`` seconds (at most the ARTIM timeout) to
        close the connection, so that the A-ABORT is read before the connection goes; then the
        transport is closed from this side.  ``linger=0`` closes at once.
        """
        await self._abort(AbortKind.USER, "aborted by the local user", linger=linger)

    async def _abort(
        self,
        kind: AbortKind,
        detail: str,
        *,
        linger: float | None = None,
        error: BaseException | None = None,
    ) -> None:
        with anyio.CancelScope(shield=True):
            if self._closed.is_set():
                return
            self._core.abort(self._now(), kind=kind, detail=detail, error=error, linger=linger)
            await self._process_events()
            self._update_deadline()
            await self._closed.wait()

    def log_rejection(self, rj: AssociateRJ, refusal: Refusal, **identity: Any) -> None:
        """The one ``association_rejected`` warning of a refused A-ASSOCIATE-RQ (``identity``:
        the ``user`` and ``identity_type`` it asked with)."""
        self.log.warning(
            "association_rejected",
            rule=refusal.rule.value,
            detail=refusal.detail,
            result=rj.result,
            source=rj.source,
            reason=rj.reason,
            reason_text=str(errors.AssociationRejected(rj.result, rj.source, rj.reason)),
            **identity,
        )


Lifecycle._handlers = {
    AssociationRequested: Lifecycle._on_requested,
    Established: Lifecycle._on_established,
    AssociationRejected: Lifecycle._on_rejected,
    AssociationRefused: Lifecycle._on_refused,
    ReleaseRequested: Lifecycle._on_release_requested,
    ReleaseConfirmed: Lifecycle._on_release_confirmed,
    Aborted: Lifecycle._on_aborted,
    ConnectionClosed: Lifecycle._on_connection_closed,
    ResponseOnOtherContext: Lifecycle._on_other_context,
}
