"""asyncdicom: DICOM networking (PS3.8 Upper Layer and PS3.7 DIMSE) on async I/O.

The async API (:class:`AE`, :class:`Association`) runs on asyncio and trio through anyio; the
sans-IO protocol core is :mod:`asyncdicom.protocol`.  Every exception is in
:mod:`asyncdicom.errors`; what services and dispatchers are built from (the extension API) is in
:mod:`asyncdicom.lowlevel`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

if TYPE_CHECKING:
    from . import presets
    from .ae import AE, Server
    from .association import DIMSEResponse, Operation
    from .config import AEConfig, Timeouts
    from .hooks import HookEvent
    from .inbox import Inbox, IncomingInstance, Notification, Notifications
    from .protocol import uids
    from .protocol.messages import Priority
    from .protocol.negotiation import ContextRequest, IdentityDecision, SupportedContext
    from .protocol.status import Status, StatusCategory
    from .services import (
        Association,
        FindResults,
        HandlerRegistry,
        QueryFailed,
        Retrieval,
        RetrieveFailed,
        Service,
        ServiceRequest,
    )
    from .storage.contexts import TooManyPresentationContexts, contexts_for_files

#: public name -> the module it lives in: imported on first use, so that ``import asyncdicom``
#: (and every command of the CLI) pays only for what it touches (pydicom, the services, TLS)
_LAZY = {
    "AE": ".ae",
    "AEConfig": ".config",
    "Association": ".services",
    "ContextRequest": ".protocol.negotiation",
    "DIMSEResponse": ".association",
    "FindResults": ".services",
    "HandlerRegistry": ".services",
    "HookEvent": ".hooks",
    "IdentityDecision": ".protocol.negotiation",
    "Inbox": ".inbox",
    "IncomingInstance": ".inbox",
    "Notification": ".inbox",
    "Notifications": ".inbox",
    "Operation": ".association",
    "Priority": ".protocol.messages",
    "QueryFailed": ".services",
    "Retrieval": ".services",
    "RetrieveFailed": ".services",
    "Server": ".ae",
    "Service": ".services",
    "ServiceRequest": ".services",
    "Status": ".protocol.status",
    "StatusCategory": ".protocol.status",
    "SupportedContext": ".protocol.negotiation",
    "Timeouts": ".config",
    "TooManyPresentationContexts": ".storage.contexts",
    "contexts_for_files": ".storage.contexts",
}
_LAZY_MODULES = {"presets": ".presets", "uids": ".protocol.uids"}

__all__ = [
    "AE",
    "AEConfig",
    "Association",
    "ContextRequest",
    "DIMSEResponse",
    "FindResults",
    "HandlerRegistry",
    "HookEvent",
    "IdentityDecision",
    "Inbox",
    "IncomingInstance",
    "Notification",
    "Notifications",
    "Operation",
    "Priority",
    "QueryFailed",
    "Retrieval",
    "RetrieveFailed",
    "Server",
    "Service",
    "ServiceRequest",
    "Status",
    "StatusCategory",
    "SupportedContext",
    "Timeouts",
    "TooManyPresentationContexts",
    "__version__",
    "contexts_for_files",
    "presets",
    "uids",
]


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is not None:
        value = getattr(importlib.import_module(module, __name__), name)
        globals()[name] = value  # the next look-up is a plain attribute
        return value
    module = _LAZY_MODULES.get(name)
    if module is not None:
        value = importlib.import_module(module, __name__)
        globals()[name] = value
        return value
    # moved to the extension API; the old name works for one release
    if name == "IncomingRequest":
        import warnings

        from .lowlevel import IncomingRequest

        warnings.warn(
            "asyncdicom.IncomingRequest is deprecated: use asyncdicom.lowlevel.IncomingRequest "
            "(handlers receive an asyncdicom.ServiceRequest)",
            DeprecationWarning,
            stacklevel=2,
        )
        return IncomingRequest
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
