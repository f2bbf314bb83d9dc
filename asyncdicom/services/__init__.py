"""DIMSE services, each a plug-in on the generic driver (see ``docs/dev/adding-a-service.md``).

:class:`Association` (also :class:`asyncdicom.Association`) is the association an
:class:`~asyncdicom.AE` hands out: the driver's generic primitives plus every service's SCU
helpers, and per-association handlers.  :data:`DEFAULT_SERVICES` are the services an AE has
unless told otherwise.  What a new service or dispatcher is built from (``call``,
``request_type``, ``ServiceDispatcher``, ...) is in :mod:`asyncdicom.lowlevel`; those names
still work from here, with a :class:`DeprecationWarning`, for one release, and so does
``ServiceAssociation`` (now :class:`Association`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from ..protocol import messages
from .availability import (
    INSTANCE_AVAILABILITY_NOTIFICATION,
    INSTANCE_AVAILABILITY_SERVICE,
    AvailabilityReceiver,
    AvailabilitySCU,
)
from .base import (
    Component,
    Handler,
    HandlerRegistry,
    Service,
    make_response,
)
from .commitment import (
    STORAGE_COMMITMENT_SERVICE,
    CommitmentRefused,
    CommitmentResult,
    CommitmentSCP,
    CommitmentSCU,
    CommitmentTimeout,
)
from .mpps import MPPS_SERVICE, MPPSSCP
from .query_retrieve import (
    MWL_FIND_SERVICE,
    QR_FIND_SERVICE,
    FindResults,
    QueryFailed,
    QueryRetrieveSCU,
)
from .request import ServiceRequest
from .retrieve import QR_GET_SERVICE, QR_MOVE_SERVICE, Retrieval, RetrieveFailed
from .selfretrieve import RetrievedInstance, RetrievedInstances, RetrieveToSelfSCU
from .storage import STORAGE_SERVICE, StorageSCU
from .verification import VERIFICATION_SERVICE, VerificationSCU

__all__ = [
    "DEFAULT_SERVICES",
    "INSTANCE_AVAILABILITY_NOTIFICATION",
    "INSTANCE_AVAILABILITY_SERVICE",
    "MPPSSCP",
    "MPPS_SERVICE",
    "MWL_FIND_SERVICE",
    "QR_FIND_SERVICE",
    "QR_GET_SERVICE",
    "QR_MOVE_SERVICE",
    "STORAGE_COMMITMENT_SERVICE",
    "STORAGE_SERVICE",
    "VERIFICATION_SERVICE",
    "Association",
    "AvailabilityReceiver",
    "AvailabilitySCU",
    "CommitmentRefused",
    "CommitmentResult",
    "CommitmentSCP",
    "CommitmentTimeout",
    "Component",
    "FindResults",
    "Handler",
    "HandlerRegistry",
    "QueryFailed",
    "Retrieval",
    "RetrieveFailed",
    "RetrievedInstance",
    "RetrievedInstances",
    "Service",
    "ServiceRequest",
    "make_response",
]

F = TypeVar("F", bound=Callable[..., Any])

#: the services every AE has by default
DEFAULT_SERVICES: tuple[Service, ...] = (
    VERIFICATION_SERVICE,
    STORAGE_SERVICE,
    QR_FIND_SERVICE,
    QR_GET_SERVICE,
    QR_MOVE_SERVICE,
    STORAGE_COMMITMENT_SERVICE,
    MWL_FIND_SERVICE,
    MPPS_SERVICE,
    INSTANCE_AVAILABILITY_SERVICE,
)


class Association(
    VerificationSCU,
    StorageSCU,
    QueryRetrieveSCU,
    RetrieveToSelfSCU,
    CommitmentSCU,
    AvailabilitySCU,
):
    """An association with every service's SCU helpers (``echo()``, ``store()``, ``find()``,
    ``get()``, ``move()``, ``retrieve()``, ``commit()``, ``notify_availability()``, the
    DIMSE-N ``n_get()`` ... ``n_event_report()``) and handlers of its own, which take
    precedence over the AE's for requests arriving on it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: handlers for requests arriving on this association only
        self.handlers = HandlerRegistry()

    def on(
        self, command: str | type[messages.Message], *, sop_class: str | None = None
    ) -> Callable[[F], F]:
        """Decorator: handle ``command`` (e.g. ``"C-STORE"``) on this association only."""
        return self.handlers.on(command, sop_class=sop_class)


#: the old names of what moved to :mod:`asyncdicom.lowlevel` (the extension API)
_LOWLEVEL = frozenset({"ServiceDispatcher", "call", "is_async_callable", "request_type"})


def __getattr__(name: str) -> object:
    import warnings

    if name == "ServiceAssociation":
        warnings.warn(
            "asyncdicom.services.ServiceAssociation is now asyncdicom.Association",
            DeprecationWarning,
            stacklevel=2,
        )
        return Association
    if name in _LOWLEVEL:
        from . import base, dispatch

        warnings.warn(
            f"asyncdicom.services.{name} is deprecated: use asyncdicom.lowlevel.{name}",
            DeprecationWarning,
            stacklevel=2,
        )
        value: object = getattr(dispatch if name == "ServiceDispatcher" else base, name)
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
