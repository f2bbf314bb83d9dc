"""asyncdicom: DICOM networking (PS3.8 Upper Layer and PS3.7 DIMSE) on async I/O.

The async API (:class:`AE`, :class:`Association`) runs on asyncio and trio through anyio; the
sans-IO protocol core is :mod:`asyncdicom.protocol`.
"""

from __future__ import annotations

__version__ = "0.1.0"

from . import presets
from .ae import AE, Server
from .association import DIMSEResponse, IncomingRequest, Operation
from .config import AEConfig, Timeouts
from .hooks import HookEvent
from .protocol import uids
from .protocol.messages import Priority
from .protocol.negotiation import ContextRequest, IdentityDecision, SupportedContext
from .protocol.status import Status, StatusCategory
from .services import (
    FindResults,
    HandlerRegistry,
    QueryFailed,
    Retrieval,
    RetrieveFailed,
    Service,
    ServiceRequest,
)
from .services import ServiceAssociation as Association
from .storage.contexts import TooManyPresentationContexts, contexts_for_files

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
    "IncomingRequest",
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
