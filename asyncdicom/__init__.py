"""asyncdicom: DICOM networking (PS3.8 Upper Layer and PS3.7 DIMSE) on async I/O.

The async API (:class:`AE`, :class:`Association`) runs on asyncio and trio through anyio; the
sans-IO protocol core is :mod:`asyncdicom.protocol`.
"""

from __future__ import annotations

__version__ = "0.1.0"

from .ae import AE, AEConfig, ContextRequest, IdentityDecision, Server, SupportedContext, Timeouts
from .association import Association, ServiceRequest
from .hooks import HookEvent

__all__ = [
    "AE",
    "AEConfig",
    "Association",
    "ContextRequest",
    "HookEvent",
    "IdentityDecision",
    "Server",
    "ServiceRequest",
    "SupportedContext",
    "Timeouts",
    "__version__",
]
