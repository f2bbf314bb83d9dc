"""Sans-IO core of asyncdicom: PDUs, the PS3.8 state machine, negotiation and DIMSE framing.

Nothing in this package performs I/O or reads a clock: bytes go in, events come out, and time is
passed in as ``now``.
"""

from __future__ import annotations

from .errors import LocalProtocolError, ProtocolError
from .pdu import PDU

__all__ = ["PDU", "LocalProtocolError", "ProtocolError"]
