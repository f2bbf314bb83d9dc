"""DIMSE status codes and their classification (PS3.7 Annex C; service-specific codes PS3.4).

:class:`Status` names the codes of PS3.7 Annex C and the common service-specific ones of PS3.4.
Several service-specific codes share a value with a different meaning per service (0xB000 is
"coercion of data elements" for C-STORE and "sub-operations complete with failures" for C-GET and
C-MOVE); the enum gives the value one name plus aliases, and :func:`describe` mentions both
meanings.

:func:`category` classifies any 16-bit value by the rules of PS3.7 Annex C:

=========  ===========================================================
Success    0x0000
Pending    0xFF00, 0xFF01
Cancel     0xFE00
Warning    0x0001, 0xBxxx, 0x0107, 0x0116
Failure    0xAxxx, 0xCxxx, 0x01xx (other than 0x0107 and 0x0116), 0x02xx
=========  ===========================================================

A value outside every class (0x0002, 0xFF02, 0xD000, ...) is not defined by the standard; it is
classified as FAILURE, because treating an unknown status as success, or as pending (which would
keep an operation waiting for more responses), is the dangerous mistake.
"""

from __future__ import annotations

from enum import Enum, IntEnum

__all__ = [
    "ERROR_COMMENT_LIMIT",
    "PENDING_STATUSES",
    "Status",
    "StatusCategory",
    "category",
    "describe",
    "fit_error_comment",
    "is_final",
    "is_pending",
]


class StatusCategory(Enum):
    """The classes of status codes (PS3.7 Annex C)."""

    SUCCESS = "Success"
    PENDING = "Pending"
    CANCEL = "Cancel"
    WARNING = "Warning"
    FAILURE = "Failure"


class Status(IntEnum):
    """Named status codes (PS3.7 Annex C general codes; PS3.4 service-specific codes)."""

    # General codes, PS3.7 C.1 - C.5
    SUCCESS = 0x0000
    WARNING = 0x0001
    NO_SUCH_ATTRIBUTE = 0x0105
    INVALID_ATTRIBUTE_VALUE = 0x0106
    ATTRIBUTE_LIST_ERROR = 0x0107
    PROCESSING_FAILURE = 0x0110
    DUPLICATE_SOP_INSTANCE = 0x0111
    NO_SUCH_SOP_INSTANCE = 0x0112
    NO_SUCH_EVENT_TYPE = 0x0113
    NO_SUCH_ARGUMENT = 0x0114
    INVALID_ARGUMENT_VALUE = 0x0115
    ATTRIBUTE_VALUE_OUT_OF_RANGE = 0x0116
    INVALID_SOP_INSTANCE = 0x0117
    NO_SUCH_SOP_CLASS = 0x0118
    CLASS_INSTANCE_CONFLICT = 0x0119
    MISSING_ATTRIBUTE = 0x0120
    MISSING_ATTRIBUTE_VALUE = 0x0121
    SOP_CLASS_NOT_SUPPORTED = 0x0122
    NO_SUCH_ACTION = 0x0123
    NOT_AUTHORIZED = 0x0124
    DUPLICATE_INVOCATION = 0x0210
    UNRECOGNIZED_OPERATION = 0x0211
    MISTYPED_ARGUMENT = 0x0212
    RESOURCE_LIMITATION = 0x0213
    CANCEL = 0xFE00
    PENDING = 0xFF00
    PENDING_WARNING = 0xFF01

    # Service-specific codes, PS3.4 (Storage B.2.3, Query/Retrieve C.4)
    OUT_OF_RESOURCES = 0xA700
    OUT_OF_RESOURCES_MATCHES = 0xA701
    OUT_OF_RESOURCES_SUB_OPERATIONS = 0xA702
    MOVE_DESTINATION_UNKNOWN = 0xA801
    DATA_SET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
    IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS = 0xA900  # the C-FIND/C-GET/C-MOVE name of 0xA900
    NO_FRAMES_FOUND = 0xAA00
    UNABLE_TO_CREATE_NEW_OBJECT = 0xAA01
    UNABLE_TO_EXTRACT_FRAMES = 0xAA02
    TIME_BASED_REQUEST_FOR_NON_TIME_BASED_INSTANCE = 0xAA03
    INVALID_FRAME_REQUEST = 0xAA04
    COERCION_OF_DATA_ELEMENTS = 0xB000
    SUB_OPERATIONS_COMPLETE_WITH_FAILURES = 0xB000  # the C-GET/C-MOVE name of 0xB000
    ELEMENTS_DISCARDED = 0xB006
    DATA_SET_DOES_NOT_MATCH_SOP_CLASS_WARNING = 0xB007
    UNABLE_TO_PROCESS = 0xC000


# Meanings of exact codes.  Where services disagree, both meanings are given.
_MEANINGS: dict[int, str] = {
    0x0000: "success",
    0x0001: "warning (service-specific meaning, e.g. requested optional attributes not supported)",
    0x0105: "no such attribute",
    0x0106: "invalid attribute value",
    0x0107: "attribute list error",
    0x0110: "processing failure",
    0x0111: "duplicate SOP instance",
    0x0112: "no such SOP instance",
    0x0113: "no such event type",
    0x0114: "no such argument",
    0x0115: "invalid argument value",
    0x0116: "attribute value out of range",
    0x0117: "invalid SOP instance",
    0x0118: "no such SOP class",
    0x0119: "class-instance conflict",
    0x0120: "missing attribute",
    0x0121: "missing attribute value",
    0x0122: "refused: SOP class not supported",
    0x0123: "no such action",
    0x0124: "refused: not authorized",
    0x0210: "duplicate invocation",
    0x0211: "unrecognized operation",
    0x0212: "mistyped argument",
    0x0213: "resource limitation",
    0xFE00: "operation terminated by cancel",
    0xFF00: "pending: matches or sub-operations are continuing",
    0xFF01: "pending: matches are continuing, one or more optional keys were not supported",
    0xA700: "refused: out of resources",
    0xA701: "refused: out of resources, unable to calculate number of matches",
    0xA702: "refused: out of resources, unable to perform sub-operations",
    0xA801: "refused: move destination unknown",
    0xA900: "error: data set or identifier does not match SOP class",
    0xAA00: "failed: none of the frames requested were found in the SOP instance",
    0xAA01: "failed: unable to create new object for this SOP class",
    0xAA02: "failed: unable to extract frames",
    0xAA03: "failed: time-based request received for a non-time-based original SOP instance",
    0xAA04: "failed: invalid request",
    0xB000: (
        "warning: coercion of data elements (C-STORE) / sub-operations complete, "
        "one or more failures or warnings (C-GET, C-MOVE)"
    ),
    0xB006: "warning: elements discarded",
    0xB007: "warning: data set does not match SOP class",
}

# Meanings of code ranges, by the high byte (checked after the exact codes).
_RANGE_MEANINGS: dict[int, str] = {
    0xA7: "refused: out of resources",
    0xA9: "error: data set does not match SOP class",
}

#: the Pending statuses (PS3.7 C.4.2): more responses to the same request follow
PENDING_STATUSES = frozenset({0xFF00, 0xFF01})
_PENDING = PENDING_STATUSES
_EXTRA_WARNINGS = frozenset({0x0001, 0x0107, 0x0116})


#: the longest Error Comment (0000,0902): VR LO, 64 characters (PS3.5 Table 6.2-1)
ERROR_COMMENT_LIMIT = 64


def fit_error_comment(text: str, limit: int = ERROR_COMMENT_LIMIT) -> str:
    """``text`` as an Error Comment: unchanged when it fits ``limit`` characters, else cut at
    the last word that fits, with ``...`` (never in the middle of a word, unless a single
    word is longer than the limit)."""
    text = " ".join(text.split())
    if len(text) <= limit:
        return text
    room = limit - 3
    cut = text.rfind(" ", 0, room + 1)
    head = text[:cut] if cut > 0 else text[:room]
    return head.rstrip(" ,;:-(") + "..."


def category(status: int) -> StatusCategory:
    """Classify a status value (PS3.7 Annex C); see the module docstring for the rules.

    Raises :class:`ValueError` for values that do not fit in 16 bits.
    """
    if not 0 <= status <= 0xFFFF:
        raise ValueError(f"status {status!r} is not a 16-bit value")
    if status == 0x0000:
        return StatusCategory.SUCCESS
    if status in _PENDING:
        return StatusCategory.PENDING
    if status == 0xFE00:
        return StatusCategory.CANCEL
    if status in _EXTRA_WARNINGS or status & 0xF000 == 0xB000:
        return StatusCategory.WARNING
    # 0xAxxx, 0xCxxx, 0x01xx, 0x02xx and anything undefined: failure (see module docstring).
    return StatusCategory.FAILURE


def is_pending(status: int) -> bool:
    """True for Pending (0xFF00, 0xFF01): more responses follow (PS3.7 9.1.2.1); cheaper than
    :func:`category` and never raises."""
    return status in PENDING_STATUSES


def is_final(status: int) -> bool:
    """True unless *status* is Pending, i.e. the response ends its operation (PS3.7 9.1.2.1)."""
    return category(status) is not StatusCategory.PENDING


#: the meanings a code has for one command only (PS3.4 B.2.3, C.4.1.1.4, C.4.2.1.5,
#: C.4.3.1.4): (code, command) -> meaning
_COMMAND_MEANINGS: dict[tuple[int, str], str] = {
    (0xB000, "C-STORE"): "warning: coercion of data elements",
    (0xB000, "C-GET"): "warning: sub-operations complete, one or more failures or warnings",
    (0xB000, "C-MOVE"): "warning: sub-operations complete, one or more failures or warnings",
    (0xA900, "C-STORE"): "error: data set does not match SOP class",
    (0xA900, "C-FIND"): "error: identifier does not match SOP class",
    (0xA900, "C-GET"): "error: identifier does not match SOP class",
    (0xA900, "C-MOVE"): "error: identifier does not match SOP class",
}


def describe(status: int, command: str | None = None) -> str:
    """A human-readable description such as ``"0x0112 Failure: no such SOP instance"``.

    ``command`` (``"C-GET"``, or a message name such as ``"C-MOVE-RSP"``) picks the meaning
    a code has for that command where it has several (0xB000 is coercion of data elements for
    C-STORE, sub-operations complete with failures or warnings for C-GET and C-MOVE);
    without it every meaning is given."""
    cat = category(status)
    meaning = None
    if command is not None:
        name = command.upper().removesuffix("-RSP").removesuffix("-RQ")
        meaning = _COMMAND_MEANINGS.get((status, name))
    if meaning is None:
        meaning = _MEANINGS.get(status)
    if meaning is None:
        meaning = _RANGE_MEANINGS.get(status >> 8)
    if meaning is None:
        high = status >> 12
        if high == 0xC:
            meaning = "error: cannot understand / unable to process"
        elif high == 0xA:
            meaning = "failure (service-specific code)"
        elif high == 0xB:
            meaning = "warning (service-specific code)"
        elif 0x0100 <= status <= 0x02FF:
            meaning = "failure (unassigned general code)"
        else:
            meaning = "code not defined by PS3.7, treated as failure"
    return f"0x{status:04X} {cat.value}: {meaning}"
