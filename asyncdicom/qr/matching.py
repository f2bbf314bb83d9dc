"""C-FIND matching without I/O (PS3.4 Annex C).

:func:`parse_query` validates a C-FIND request identifier for an information model and compiles
its keys; the resulting :class:`Query` matches stored records (pydicom Datasets) with
:meth:`Query.matches`, builds the response identifier with :meth:`Query.response`, and
:func:`sql_filter` turns it into a WHERE fragment for an index holding the usual keys (the
keys it cannot express are listed, for the caller to check with ``Query.matches(only=...)``).

Matching rules, PS3.4 C.2.2.2:

* **Universal**: a zero-length key (or one made only of ``*``) matches every record, including
  records without the attribute.
* **Single value**: exact and case-sensitive, after removing the padding PS3.5 declares not
  significant (leading and trailing spaces for AE, CS, DS, IS, LO, SH; trailing spaces for the
  other string VRs; trailing NULs for UI).  IS and DS compare as numbers.  Person Names compare
  case-insensitively when ``pn_case_insensitive`` is set; the default is case-sensitive, as
  DCMTK's dcmqrscp.
* **Wild card** (``*`` any run, ``?`` one character) for AE, CS, LO, LT, PN, SH, ST, UC, UR, UT.
* **Range** for DA, TM, DT: ``A-B``, ``A-``, ``-B``.  A partial time or datetime stands for the
  whole period it names: ``-10`` includes 10:59:59.999999, and the single value ``1015`` matches
  every time from 10:15:00 to 10:15:59.999999.  A DT with a UTC offset is compared in UTC; one
  without is compared as written.
* **List of UID**: backslash-separated UIDs, any of which may match.  A backslash-separated key
  of another non-text VR (``CT\\MR`` for Modalities in Study) is matched the same way: any key
  value against any stored value.
* **Sequence**: the key's single item lists item keys; a stored sequence matches when one of its
  items matches all of them.  A key sequence with no item, or an empty item, is universal.

A record without a value for a key matches only universal matching.  Keys whose value the
standard gives no meaning (a malformed date range, a non-numeric Instance Number) raise
:class:`UnableToProcess` at :func:`parse_query`, not in the middle of matching.
"""

from __future__ import annotations

import calendar
import copy
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence

from ..errors import IdentifierMismatch, ModelNotSupported, QueryError, UnableToProcess
from ..protocol import uids

__all__ = [
    "INDEX_COLUMNS",
    "LEVELS",
    "MODELS",
    "WORKLIST_MODEL",
    "IdentifierMismatch",
    "ModelNotSupported",
    "Query",
    "QueryError",
    "SqlColumn",
    "SqlFilter",
    "UnableToProcess",
    "index_value",
    "match_value",
    "parse_query",
    "parse_worklist_query",
    "sql_filter",
]

# ---------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------
# Models and levels
# ---------------------------------------------------------------------------------------------

QUERY_RETRIEVE_LEVEL = 0x00080052
SPECIFIC_CHARACTER_SET = 0x00080005
TIMEZONE_OFFSET_FROM_UTC = 0x00080201

#: the unique key of each Query/Retrieve level (PS3.4 C.6.1.1 and C.6.2.1)
LEVELS: dict[str, int] = {
    "PATIENT": 0x00100020,  # Patient ID
    "STUDY": 0x0020000D,  # Study Instance UID
    "SERIES": 0x0020000E,  # Series Instance UID
    "IMAGE": 0x00080018,  # SOP Instance UID
}

#: the levels of each information model, top down
MODELS: dict[str, tuple[str, ...]] = {
    "patient": ("PATIENT", "STUDY", "SERIES", "IMAGE"),
    "study": ("STUDY", "SERIES", "IMAGE"),
    "patient-study": ("PATIENT", "STUDY"),
}

_MODEL_UIDS: dict[str, str] = {
    uids.PATIENT_ROOT_QR_FIND: "patient",
    uids.PATIENT_ROOT_QR_GET: "patient",
    uids.PATIENT_ROOT_QR_MOVE: "patient",
    uids.STUDY_ROOT_QR_FIND: "study",
    uids.STUDY_ROOT_QR_GET: "study",
    uids.STUDY_ROOT_QR_MOVE: "study",
    uids.PATIENT_STUDY_ONLY_QR_FIND: "patient-study",
    uids.PATIENT_STUDY_ONLY_QR_GET: "patient-study",
    uids.PATIENT_STUDY_ONLY_QR_MOVE: "patient-study",
}

#: elements of an identifier that are never matched (PS3.4 C.2.2.2, C.4.1.1.3.1)
_NOT_MATCHED = frozenset({QUERY_RETRIEVE_LEVEL, SPECIFIC_CHARACTER_SET, TIMEZONE_OFFSET_FROM_UTC})

# ---------------------------------------------------------------------------------------------
# Values
# ---------------------------------------------------------------------------------------------

_STRIP_BOTH = frozenset({"AE", "CS", "DS", "IS", "LO", "SH"})
_TEXT_VRS = frozenset({"LT", "ST", "UT", "UR"})  # one value; a backslash is a character
_WILDCARD_VRS = frozenset({"AE", "CS", "LO", "LT", "PN", "SH", "ST", "UC", "UR", "UT"})
_DATE_VRS = frozenset({"DA", "TM", "DT"})


def _vr_of(tag: int, vr: str | None) -> str:
    if vr and vr not in ("UN",) and " or " not in vr:
        return vr
    try:
        known = dictionary_VR(tag)
    except KeyError:
        return vr if vr and " or " not in vr else "UN"
    return known.split(" or ")[0] if known else "UN"


def _normalize(vr: str, text: str) -> str:
    if vr == "UI":
        return text.rstrip("\0 ")
    if vr in _STRIP_BOTH:
        return text.strip(" ")
    return text.rstrip(" ")


def _as_text(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode("latin-1")
    return str(value)


def _texts(value: object, vr: str) -> list[str]:
    """The non-empty values of an element value, padding removed."""
    if value is None or value == "" or value == b"":
        return []
    if isinstance(value, (list, tuple, MultiValue)):
        items = [_as_text(v) for v in value if v is not None]
    else:
        items = [_as_text(value)]
    if vr not in _TEXT_VRS:
        items = [part for item in items for part in item.split("\\")]
    return [n for n in (_normalize(vr, item) for item in items) if n]


def _fold(text: str) -> str:
    # lower() keeps the length of the usual Latin, Greek and Cyrillic names, so that "?" still
    # stands for one character after folding
    return text.lower()


_TM = re.compile(r"(\d{2})(\d{2})?(\d{2})?(?:\.(\d{1,6}))?")
_DT = re.compile(
    r"(\d{4})(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\d{2})?(?:\.(\d{1,6}))?([+-]\d{4})?", re.ASCII
)


def _canon_da(text: str, upper: bool) -> str | None:
    if len(text) != 8 or not text.isascii() or not text.isdigit():
        return None
    try:
        datetime(int(text[:4]), int(text[4:6]), int(text[6:8]))
    except ValueError:
        return None
    return text


def _canon_tm(text: str, upper: bool) -> str | None:
    m = _TM.fullmatch(text)
    if m is None or not text.isascii():
        return None
    hh, mm, ss, frac = m.groups()
    if frac is not None and ss is None:
        return None
    fill = "9" if upper else "0"
    hour = int(hh)
    minute = int(mm) if mm is not None else (59 if upper else 0)
    second = int(ss) if ss is not None else (59 if upper else 0)
    if hour > 23 or minute > 59 or second > 60:
        return None
    micro = (frac or "").ljust(6, fill)
    return f"{hour:02d}{minute:02d}{second:02d}.{micro}"


def _canon_dt(text: str, upper: bool) -> str | None:
    m = _DT.fullmatch(text)
    if m is None:
        return None
    year, month, day, hour, minute, second, frac, offset = m.groups()
    if frac is not None and second is None:
        return None
    try:
        y = int(year)
        mo = int(month) if month else (12 if upper else 1)
        d = int(day) if day else (calendar.monthrange(y, mo)[1] if upper else 1)
        h = int(hour) if hour else (23 if upper else 0)
        mi = int(minute) if minute else (59 if upper else 0)
        s = int(second) if second else (59 if upper else 0)
        s = min(s, 59)  # a leap second compares as the last second of its minute
        micro = int((frac or "").ljust(6, "9" if upper else "0"))
        value = datetime(y, mo, d, h, mi, s, micro)
        if offset:
            sign = -1 if offset[0] == "-" else 1
            hours, minutes = int(offset[1:3]), int(offset[3:5])
            if hours > 14 or minutes > 59:
                return None
            value -= sign * timedelta(hours=hours, minutes=minutes)
    except (ValueError, OverflowError):
        return None
    return (
        f"{value.year:04d}{value.month:02d}{value.day:02d}"
        f"{value.hour:02d}{value.minute:02d}{value.second:02d}.{value.microsecond:06d}"
    )


_CANON = {"DA": _canon_da, "TM": _canon_tm, "DT": _canon_dt}


def _parse_int(text: str) -> int | None:
    try:
        return int(text, 10)
    except ValueError:
        return None


def _parse_float(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def index_value(vr: str, value: object, *, fold: bool = False) -> str | int | None:
    """The value an index column holds for a stored element value, so that the SQL of
    :func:`sql_filter` agrees with :meth:`Query.matches`.

    Absent or empty values give None (store NULL).  DA, TM and DT give their canonical
    comparable form (``YYYYMMDD``, ``HHMMSS.ffffff``, ``YYYYMMDDHHMMSS.ffffff`` in UTC when an
    offset is given; None when malformed); IS gives an int; other VRs the padding-free text,
    several values joined with a backslash (a multi-valued column).  ``fold=True`` gives the
    case-folded text of a Person Name column used for case-insensitive matching.
    """
    texts = _texts(value, vr)
    if not texts:
        return None
    if vr in _CANON:
        return _CANON[vr](texts[0], False)
    if vr == "IS":
        return _parse_int(texts[0])
    joined = "\\".join(texts)
    return _fold(joined) if fold else joined


# ---------------------------------------------------------------------------------------------
# Wild card matching: iterative, linear backtracking (no regex: a hostile "*a*a*a*...b" must
# not cost exponential time)
# ---------------------------------------------------------------------------------------------


def _wildcard(pattern: str, text: str) -> bool:
    p = t = 0
    star = -1
    mark = 0
    np, nt = len(pattern), len(text)
    while t < nt:
        if p < np and pattern[p] != "*" and (pattern[p] == "?" or pattern[p] == text[t]):
            p += 1
            t += 1
        elif p < np and pattern[p] == "*":
            star = p
            mark = t
            p += 1
        elif star >= 0:
            p = star + 1
            mark += 1
            t = mark
        else:
            return False
    while p < np and pattern[p] == "*":
        p += 1
    return p == np


# ---------------------------------------------------------------------------------------------
# Compiled keys
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Key:
    tag: int
    vr: str
    kind: str  # "universal", "values", "range", "sequence"
    singles: tuple[str, ...] = ()  # exact alternatives (folded for case-insensitive PN)
    patterns: tuple[str, ...] = ()  # wild card alternatives
    low: str | None = None  # range bounds, canonical form; None = open
    high: str | None = None
    items: tuple[_Key, ...] = ()  # sequence item keys
    fold: bool = False


def _split_range(vr: str, text: str) -> tuple[str, str] | None:
    """(low, high) texts of a range key, or None when ``text`` is a single value."""
    canon = _CANON[vr]
    if vr == "DT" and canon(text, False) is not None:
        return None  # a single value, its "-" (if any) an offset
    candidates = [i for i, ch in enumerate(text) if ch == "-"]
    for i in candidates:
        left, right = text[:i], text[i + 1 :]
        if (left or right) and all(part == "" or canon(part, False) for part in (left, right)):
            return left, right
    if candidates:
        raise UnableToProcess(f"malformed {vr} range {text[:40]!r}")
    return None


def _compile_range(tag: int, vr: str, text: str) -> _Key:
    canon = _CANON[vr]
    parts = _split_range(vr, text)
    if parts is None:
        low, high = canon(text, False), canon(text, True)
        if low is None or high is None:
            raise UnableToProcess(f"malformed {vr} value {text[:40]!r}", tag=tag)
    else:
        low = canon(parts[0], False) if parts[0] else None
        high = canon(parts[1], True) if parts[1] else None
        if low is not None and high is not None and low > high:
            raise UnableToProcess(f"reversed {vr} range {text[:40]!r}", tag=tag)
    return _Key(tag, vr, "range", low=low, high=high)


def _compile(elem: DataElement, pn_case_insensitive: bool) -> _Key:
    tag = int(elem.tag)
    vr = _vr_of(tag, elem.VR)
    if vr == "SQ":
        value = elem.value
        items: list[Dataset] = list(value) if value else []
        if len(items) > 1:
            raise UnableToProcess("a sequence key holds more than one item", tag=tag)
        if not items or len(items[0]) == 0:
            return _Key(tag, vr, "universal")
        keys = tuple(_compile(e, pn_case_insensitive) for e in items[0] if _matched(e))
        return _Key(tag, vr, "sequence", items=keys)
    texts = _texts(elem.value, vr)
    if not texts or all(set(t) == {"*"} for t in texts):
        return _Key(tag, vr, "universal")
    if vr in _DATE_VRS:
        if len(texts) > 1:
            raise UnableToProcess(f"a {vr} key holds more than one value", tag=tag)
        try:
            return _compile_range(tag, vr, texts[0])
        except UnableToProcess as exc:
            raise UnableToProcess(str(exc), tag=tag) from None
    if vr == "IS" and any(_parse_int(t) is None for t in texts):
        raise UnableToProcess(f"not an integer string: {texts[0][:40]!r}", tag=tag)
    if vr == "DS" and any(_parse_float(t) is None for t in texts):
        raise UnableToProcess(f"not a decimal string: {texts[0][:40]!r}", tag=tag)
    fold = vr == "PN" and pn_case_insensitive
    if fold:
        texts = [_fold(t) for t in texts]
    singles: list[str] = []
    patterns: list[str] = []
    for t in texts:
        if vr in _WILDCARD_VRS and ("*" in t or "?" in t):
            patterns.append(t)
        else:
            singles.append(t)
    return _Key(tag, vr, "values", singles=tuple(singles), patterns=tuple(patterns), fold=fold)


def _matched(elem: DataElement) -> bool:
    tag = int(elem.tag)
    return tag not in _NOT_MATCHED and (tag & 0xFFFF) != 0


def _match_key(key: _Key, stored: DataElement | None) -> bool:
    if key.kind == "universal":
        return True
    if stored is None:
        return False
    if key.kind == "sequence":
        items = stored.value if stored.VR == "SQ" and stored.value else []
        return any(_match_item(key.items, item) for item in items)
    texts = _texts(stored.value, key.vr)
    if key.kind == "range":
        canon = _CANON[key.vr]
        for text in texts:
            value = canon(text, False)
            if value is None:
                continue
            if (key.low is None or value >= key.low) and (key.high is None or value <= key.high):
                return True
        return False
    if key.fold:
        texts = [_fold(t) for t in texts]
    if key.vr == "IS" or key.vr == "DS":
        parse = _parse_int if key.vr == "IS" else _parse_float
        wanted = {parse(s) for s in key.singles}
        return any((n := parse(t)) is not None and n in wanted for t in texts)
    for text in texts:
        if text in key.singles or any(_wildcard(p, text) for p in key.patterns):
            return True
    return False


def _match_item(keys: Iterable[_Key], record: Dataset) -> bool:
    return all(_match_key(key, record.get(key.tag)) for key in keys)


def match_value(
    key: DataElement, stored: DataElement | None, *, pn_case_insensitive: bool = False
) -> bool:
    """Whether the stored element matches one key of a C-FIND identifier (PS3.4 C.2.2.2).

    ``stored`` is None when the record lacks the attribute.  Raises :class:`UnableToProcess`
    for a key value with no meaning for matching.
    """
    return _match_key(_compile(key, pn_case_insensitive), stored)


# ---------------------------------------------------------------------------------------------
# Queries
# ---------------------------------------------------------------------------------------------


def _model_name(model: str) -> str:
    if model in MODELS:
        return model
    if model in _MODEL_UIDS:
        return _MODEL_UIDS[model]
    raise ModelNotSupported(f"not a Query/Retrieve information model: {model[:64]!r}")


@dataclass(frozen=True)
class Query:
    """A validated C-FIND identifier, compiled for matching (made by :func:`parse_query`)."""

    #: "patient", "study", "patient-study", or "mwl" (:func:`parse_worklist_query`)
    model: str
    #: "PATIENT", "STUDY", "SERIES" or "IMAGE"; empty for a worklist query (no levels)
    level: str
    #: the request identifier as received
    identifier: Dataset
    #: the unique keys of the levels above ``level``: tag -> value
    above: Mapping[int, str]
    pn_case_insensitive: bool
    _keys: tuple[_Key, ...]
    #: the unique keys of levels below ``level`` given with a value (a Series Instance UID in
    #: a STUDY query): not used for matching (PS3.4 C.4.1.1.3.1: the keys of a query are those
    #: of its level and above); a C-FIND says so with Pending 0xFF01, a C-GET or C-MOVE
    #: refuses them (it would send more than was asked for)
    ignored: tuple[int, ...] = ()

    @property
    def keys(self) -> tuple[int, ...]:
        """The tags of the keys that take part in matching (universal ones included)."""
        return tuple(key.tag for key in self._keys)

    def matches(self, record: Dataset, *, only: Iterable[int] | None = None) -> bool:
        """Whether ``record`` (the attributes of one entity at the query level, those of the
        levels above included) matches every key, or only the keys whose tags are in ``only``
        (the ``residual`` of :func:`sql_filter`)."""
        keys = self._keys
        if only is not None:
            wanted = {int(t) for t in only}
            keys = tuple(k for k in keys if k.tag in wanted)
        return _match_item(keys, record)

    def response(self, record: Dataset) -> Dataset:
        """The response identifier for a matching ``record``: every key of the request, with
        the record's value (zero length when it has none), Query/Retrieve Level, and the
        record's Specific Character Set (the request's when the record has none), since the
        values are the record's.  A sequence key with item keys returns the matching items,
        each with the requested item keys only.  A worklist query (no level) returns no
        Query/Retrieve Level."""
        out = _response(self.identifier, self._keys, record)
        if self.level:
            out.add_new(QUERY_RETRIEVE_LEVEL, "CS", self.level)
        charset = record.get(SPECIFIC_CHARACTER_SET) or self.identifier.get(SPECIFIC_CHARACTER_SET)
        if charset is not None and charset.value:
            out.add(_copy(charset))
        return out


def _response(request: Dataset, keys: tuple[_Key, ...], record: Dataset) -> Dataset:
    by_tag = {key.tag: key for key in keys}
    out = Dataset()
    for elem in request:
        tag = int(elem.tag)
        if tag in _NOT_MATCHED:
            continue
        stored = record.get(tag)
        key = by_tag.get(tag)
        if stored is None or stored.value is None:
            vr = _vr_of(tag, elem.VR)
            out.add_new(tag, vr, [] if vr == "SQ" else None)
        elif key is not None and key.kind == "sequence" and stored.VR == "SQ":
            item_request = elem.value[0]
            items = [
                _response(item_request, key.items, item)
                for item in (stored.value or [])
                if _match_item(key.items, item)
            ]
            out.add_new(tag, "SQ", Sequence(items))
        else:
            out.add(_copy(stored))
    return out


def _same(item: object) -> object:
    return item


def _copy(elem: DataElement) -> DataElement:
    """A copy of a record's element for a response: the value is shared when immutable (a
    string, a number, a person name), copied when it is a list, deep-copied for a sequence.
    (Deep-copying every element was most of the cost of a C-FIND response.)"""
    value = elem.value
    if isinstance(value, Sequence):
        return copy.deepcopy(elem)
    if isinstance(value, MultiValue):
        value = MultiValue(_same, value)
    return DataElement(elem.tag, elem.VR, value)


def parse_query(identifier: Dataset, model: str, *, pn_case_insensitive: bool = False) -> Query:
    """Validate a C-FIND request identifier for ``model`` and compile its keys.

    ``model`` is ``"patient"``, ``"study"``, ``"patient-study"``, or a FIND, GET or MOVE SOP
    Class UID of one of them.  Hierarchical query (relational queries off): Query/Retrieve
    Level (0008,0052) must name a level of the model, and the unique key of every level above
    it must be present with one value, without wild cards.

    Raises :class:`IdentifierMismatch` (0xA900) for those, :class:`UnableToProcess` (0xC000)
    for a key value with no meaning for matching, :class:`ModelNotSupported` (0x0122) for an
    unknown model.
    """
    name = _model_name(model)
    levels = MODELS[name]
    level_elem = identifier.get(QUERY_RETRIEVE_LEVEL)
    if level_elem is None:
        raise IdentifierMismatch("Query/Retrieve Level is missing", tag=QUERY_RETRIEVE_LEVEL)
    level_texts = _texts(level_elem.value, "CS")
    if len(level_texts) != 1:
        raise IdentifierMismatch(
            "Query/Retrieve Level must hold one value", tag=QUERY_RETRIEVE_LEVEL
        )
    level = level_texts[0]
    if level not in LEVELS:
        raise IdentifierMismatch(
            f"unknown Query/Retrieve Level {level[:16]!r}", tag=QUERY_RETRIEVE_LEVEL
        )
    if level not in levels:
        raise IdentifierMismatch(
            f"level {level} is not part of the {name} model", tag=QUERY_RETRIEVE_LEVEL
        )
    above: dict[int, str] = {}
    for upper in levels[: levels.index(level)]:
        tag = LEVELS[upper]
        elem = identifier.get(tag)
        vr = _vr_of(tag, elem.VR if elem is not None else None)
        texts = _texts(elem.value, vr) if elem is not None else []
        # PS3.4 C.4.1.2.1: one value for the unique key of each level above, so neither an
        # empty value nor "*" (for a UID "*" is no wild card, and no UID either)
        if len(texts) != 1 or "*" in texts[0] or "?" in texts[0]:
            raise IdentifierMismatch(
                f"the {level} level needs one {_UNIQUE_KEY_NAMES[tag]} (no wild card)",
                tag=tag,
            )
        above[tag] = texts[0]
    lower = {LEVELS[below] for below in _ALL_LEVELS[_ALL_LEVELS.index(level) + 1 :]}
    ignored = tuple(
        int(elem.tag)
        for elem in identifier
        if int(elem.tag) in lower and _texts(elem.value, _vr_of(int(elem.tag), elem.VR))
    )
    keys = tuple(
        _compile(elem, pn_case_insensitive)
        for elem in identifier
        if _matched(elem) and int(elem.tag) not in ignored
    )
    return Query(name, level, identifier, above, pn_case_insensitive, keys, ignored)


_ALL_LEVELS = ("PATIENT", "STUDY", "SERIES", "IMAGE")
_UNIQUE_KEY_NAMES = {
    0x00100020: "Patient ID",
    0x0020000D: "Study Instance UID",
    0x0020000E: "Series Instance UID",
    0x00080018: "SOP Instance UID",
}


#: the model name of :func:`parse_worklist_query`'s queries
WORKLIST_MODEL = "mwl"


def _check_worklist_vrs(identifier: Dataset) -> None:
    """A key whose VR contradicts the dictionary in the way that matters for matching (a
    sequence sent as a value, a value sent as a sequence) cannot be a key of the model."""
    for elem in identifier:
        tag = int(elem.tag)
        if not _matched(elem):
            continue
        try:
            known = dictionary_VR(tag)
        except KeyError:
            continue  # a private or unknown key: matched by its own VR
        if (known == "SQ") != (elem.VR == "SQ"):
            what = "a sequence" if known == "SQ" else "not a sequence"
            raise IdentifierMismatch(f"key ({tag >> 16:04X},{tag & 0xFFFF:04X}) is {what}", tag=tag)
        if elem.VR == "SQ" and elem.value:
            for item in elem.value:
                _check_worklist_vrs(item)


def parse_worklist_query(identifier: Dataset, *, pn_case_insensitive: bool = False) -> Query:
    """Validate a C-FIND request identifier of the Modality Worklist Information Model
    (PS3.4 K.6.1) and compile its keys.

    The model has no levels: every key of the identifier is matched against the worklist
    item, with the rules of PS3.4 C.2.2.2 listed in the module docstring.  The usual keys are
    the Scheduled Procedure Step Sequence (0040,0100) with its item keys (Scheduled Station
    AE Title, Modality, Scheduled Procedure Step Start Date and Time, which are ranges,
    Scheduled Performing Physician's Name, ...) and the top-level Patient's Name, Patient ID,
    Accession Number, Requested Procedure ID and so on.  A sequence key matches an item when
    one of the item's sequence items matches every item key, and the response returns only
    the matching sequence items, each with the requested item keys.  Start Date and Start
    Time are matched independently (combined date-time matching needs the extended
    negotiation this matcher does not offer, PS3.4 C.2.2.2.5).  A Query/Retrieve Level, if
    the identifier carries one, is ignored.

    Raises :class:`IdentifierMismatch` (0xA900) for a key that is a sequence where the model
    has a value or the reverse, :class:`UnableToProcess` (0xC000) for a key value with no
    meaning for matching (a malformed or reversed date range, a sequence key with more than
    one item).
    """
    _check_worklist_vrs(identifier)
    keys = tuple(_compile(elem, pn_case_insensitive) for elem in identifier if _matched(elem))
    return Query(WORKLIST_MODEL, "", identifier, {}, pn_case_insensitive, keys)


# ---------------------------------------------------------------------------------------------
# SQL
# ---------------------------------------------------------------------------------------------

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?")


@dataclass(frozen=True)
class SqlColumn:
    """Where an index keeps one key: the column ``name`` (``table.column`` allowed) holds
    :func:`index_value` of the attribute; ``multi_valued`` says it may hold several values
    joined with a backslash; ``folded`` names a column holding ``index_value(...,
    fold=True)``, used for case-insensitive Person Name matching."""

    name: str
    vr: str
    multi_valued: bool = False
    folded: str | None = None


#: the keys of the qrscp index, by tag
INDEX_COLUMNS: dict[int, SqlColumn] = {
    0x00100020: SqlColumn("patient_id", "LO"),
    0x00100010: SqlColumn("patient_name", "PN", folded="patient_name_folded"),
    0x0020000D: SqlColumn("study_instance_uid", "UI"),
    0x00080020: SqlColumn("study_date", "DA"),
    0x00080030: SqlColumn("study_time", "TM"),
    0x00080050: SqlColumn("accession_number", "SH"),
    0x00081030: SqlColumn("study_description", "LO"),
    0x00080061: SqlColumn("modalities_in_study", "CS", multi_valued=True),
    0x00080060: SqlColumn("modality", "CS"),
    0x0020000E: SqlColumn("series_instance_uid", "UI"),
    0x00200011: SqlColumn("series_number", "IS"),
    0x00080018: SqlColumn("sop_instance_uid", "UI"),
    0x00080016: SqlColumn("sop_class_uid", "UI"),
    0x00200013: SqlColumn("instance_number", "IS"),
}


@dataclass(frozen=True)
class SqlFilter:
    """A WHERE fragment with ``?`` placeholders (sqlite3's paramstyle), its parameters, and
    the tags of the keys it leaves out, to check with ``query.matches(record, only=residual)``.

    LIKE must compare case-sensitively, as in PostgreSQL; on SQLite run
    ``PRAGMA case_sensitive_like = ON`` on the connection."""

    where: str
    params: tuple[str | int, ...]
    residual: tuple[int, ...]


def _like_literal(text: str) -> str:
    return "".join("!" + ch if ch in "!%_" else ch for ch in text)


def _like(pattern: str) -> str:
    out = []
    for ch in pattern:
        if ch in "!%_":
            out.append("!" + ch)
        elif ch == "*":
            out.append("%")
        elif ch == "?":
            out.append("_")
        else:
            out.append(ch)
    return "".join(out)


def _key_sql(key: _Key, column: SqlColumn, max_list: int) -> tuple[str, list[str | int]] | None:
    if key.kind == "sequence" or column.vr != key.vr or key.vr == "DS":
        return None
    name = column.folded if key.fold else column.name
    if name is None or not _IDENTIFIER.fullmatch(name):
        return None
    if key.kind == "range":
        if column.multi_valued:
            return None
        clauses: list[str] = []
        params: list[str | int] = []
        if key.low is not None:
            clauses.append(f"{name} >= ?")
            params.append(key.low)
        if key.high is not None:
            clauses.append(f"{name} <= ?")
            params.append(key.high)
        return " AND ".join(clauses), params
    singles: list[str | int] = (
        [int(s) for s in key.singles] if key.vr == "IS" else list(key.singles)
    )
    if len(singles) + len(key.patterns) > max_list:
        return None
    alternatives: list[str] = []
    params = []
    if column.multi_valued:
        if key.patterns or key.vr == "IS":
            return None  # a pattern could span two stored values
        for s in singles:
            alternatives.append(f"('\\' || {name} || '\\') LIKE ? ESCAPE '!'")
            params.append("%\\" + _like_literal(str(s)) + "\\%")
    else:
        if len(singles) == 1:
            alternatives.append(f"{name} = ?")
        elif singles:
            alternatives.append(f"{name} IN ({', '.join('?' * len(singles))})")
        params.extend(singles)
        for pattern in key.patterns:
            alternatives.append(f"{name} LIKE ? ESCAPE '!'")
            params.append(_like(pattern))
    return " OR ".join(alternatives), params


def sql_filter(
    query: Query,
    columns: Mapping[int, SqlColumn] = INDEX_COLUMNS,
    *,
    max_list: int = 500,
) -> SqlFilter:
    """Translate the keys of ``query`` held in ``columns`` into a portable WHERE fragment.

    Single values become ``=``, lists of values ``IN (...)``, wild cards ``LIKE ... ESCAPE``
    (``%``, ``_`` and the escape character in values are escaped), ranges ``>=`` / ``<=`` on
    the canonical forms of :func:`index_value`.  Universal keys add nothing.  Keys without a
    column, sequence keys, wild cards on multi-valued columns, and lists longer than
    ``max_list`` are left to Python: their tags are in ``residual``.  Values are always
    parameters; column names must be plain identifiers.
    """
    clauses: list[str] = []
    params: list[str | int] = []
    residual: list[int] = []
    for key in query._keys:
        if key.kind == "universal":
            continue
        column = columns.get(key.tag)
        sql = _key_sql(key, column, max_list) if column is not None else None
        if sql is None:
            residual.append(key.tag)
            continue
        clauses.append(f"({sql[0]})")
        params.extend(sql[1])
    return SqlFilter(" AND ".join(clauses) or "1 = 1", tuple(params), tuple(residual))
