"""Sans-IO core of asyncdicom: PDUs, the PS3.8 state machine, negotiation and DIMSE framing.

Nothing in this package performs I/O or reads a clock: bytes go in, events come out, and time is
passed in as ``now``.
"""

from __future__ import annotations

from .codec import PDUFramer, decode_pdu, encode_pdata, encode_pdu
from .dimse import (
    CommandReceived,
    DatasetFragment,
    MessageAssembler,
    decode_command,
    encode_command,
)
from .errors import LocalProtocolError, ProtocolError
from .negotiation import (
    AcceptorConfig,
    ContextRequest,
    NegotiatedAssociation,
    PresentationContext,
    RequestorConfig,
    SupportedContext,
    build_associate_rq,
    negotiate,
    process_associate_ac,
)
from .pdu import PDU
from .status import Status, StatusCategory
from .upper_layer import Role, UpperLayer

__all__ = [
    "PDU",
    "AcceptorConfig",
    "CommandReceived",
    "ContextRequest",
    "DatasetFragment",
    "LocalProtocolError",
    "MessageAssembler",
    "NegotiatedAssociation",
    "PDUFramer",
    "PresentationContext",
    "ProtocolError",
    "RequestorConfig",
    "Role",
    "Status",
    "StatusCategory",
    "SupportedContext",
    "UpperLayer",
    "build_associate_rq",
    "decode_command",
    "decode_pdu",
    "encode_command",
    "encode_pdata",
    "encode_pdu",
    "negotiate",
    "process_associate_ac",
]
