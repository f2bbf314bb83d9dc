"""Observability hooks: callbacks for connection, association, PDU and DIMSE events.

Register with ``ae.hooks.add(HookEvent.ASSOCIATION_ACCEPTED, callback)``.  A callback is a plain
function ``callback(event, association, **data)``; it runs inline in the association's task, so
it must be quick (hand heavy work to a task or a memory stream).  Emitting costs a dictionary
lookup when nobody listens; the per-PDU events are only computed when someone does.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import Enum
from typing import Any

from .log import get_logger

__all__ = ["HookCallback", "HookEvent", "Hooks"]


class HookEvent(Enum):
    """What a hook callback can observe."""

    CONNECTION_OPENED = "connection_opened"
    CONNECTION_CLOSED = "connection_closed"
    ASSOCIATION_REQUESTED = "association_requested"  # data: request (AssociateRQ)
    # data: refused (the PresentationContexts not accepted, each with its .reason)
    ASSOCIATION_ACCEPTED = "association_accepted"
    ASSOCIATION_REJECTED = "association_rejected"  # data: reject (AssociateRJ)
    ASSOCIATION_RELEASED = "association_released"
    # acceptor: an A-RELEASE-RQ is answered (emitted as the A-RELEASE-RP goes out, before the
    # connection closes: the association no longer counts against the limits)
    RELEASE_ANSWERED = "release_answered"
    ASSOCIATION_ABORTED = "association_aborted"  # data: abort (protocol AbortCause)
    PDU_SENT = "pdu_sent"  # data: data (bytes written)
    PDU_RECEIVED = "pdu_received"  # data: data (bytes read)
    STATE_TRANSITION = "state_transition"  # data: old_state, fsm_event, action, new_state
    DIMSE_SENT = "dimse_sent"  # data: message
    DIMSE_RECEIVED = "dimse_received"  # data: message

    # Members are singletons compared by identity: the identity hash (a C slot) serves them
    # as dictionary keys as well as Enum's hash of the name, a Python call made several
    # times per message by Hooks.wants
    __hash__ = object.__hash__


HookCallback = Callable[..., Any]


class Hooks:
    """A registry of hook callbacks, one list per :class:`HookEvent`."""

    def __init__(self) -> None:
        self._listeners: dict[HookEvent, list[HookCallback]] = {}
        #: changes whenever a callback is added or removed (lets a user of the registry cache
        #: what it asked of :meth:`wants`)
        self.version = 0
        self._log = get_logger()

    def add(self, event: HookEvent, callback: HookCallback) -> None:
        """Call ``callback(event, association, **data)`` whenever ``event`` happens."""
        self._listeners.setdefault(event, []).append(callback)
        self.version += 1

    def remove(self, event: HookEvent, callback: HookCallback) -> None:
        """Stop calling ``callback`` for ``event``."""
        callbacks = self._listeners.get(event, [])
        if callback in callbacks:
            callbacks.remove(callback)
        if not callbacks:
            self._listeners.pop(event, None)
        self.version += 1

    def wants(self, event: HookEvent) -> bool:
        """True when at least one callback listens to ``event`` (cheap; guard costly data)."""
        return event in self._listeners

    def emit(self, event: HookEvent, association: Any, **data: Any) -> None:
        """Call the callbacks of ``event``; a failing callback is logged, never propagated."""
        callbacks = self._listeners.get(event)
        if not callbacks:
            return
        for callback in tuple(callbacks):
            try:
                callback(event, association, **data)
            except Exception as exc:
                self._log.exception("hook_failed", hook=event.value, error=str(exc))
