"""``asyncdicom findscu``: C-FIND (Query/Retrieve, or Modality Worklist) to a peer.

Builds the query identifier from ``--level`` and the ``-k KEY[=VALUE]`` keys, sends it on the
chosen information model and prints one line per match on stdout: ``KEYWORD=VALUE`` pairs
(values quoted as a shell would need them), or with ``--json`` one JSON object per line (the
DICOM JSON model, PS3.18 F.2).  A summary line goes to stderr.  Exit status 0 only when the
final status is Success.  Ctrl-C sends C-CANCEL-RQ (:func:`~.scu.cancel_on_ctrl_c`, as getscu
and movescu): the matches up to the final response are printed, then an ``interrupted:``
summary, and the exit status is 130.

``--model mwl`` queries the Modality Worklist Information Model (PS3.4 K.6.1), which has no
levels (no ``--level``); its keys are mostly in the Scheduled Procedure Step Sequence, given
as ``-k SEQUENCE.KEY=VALUE`` (``-k ScheduledProcedureStepSequence.Modality=CT``; the DCMTK
form ``(0040,0100)[0].(0008,0060)=CT`` works too).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import shlex
from collections.abc import Callable
from typing import Any

from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.tag import Tag

from ..protocol.status import describe
from ..services.query_retrieve import QUERY_MODELS, FindResults, QueryFailed, find_model_uid
from .apps import APPS
from .argtypes import quoted
from .options import add_common, add_scu
from .output import UsageError, err, format_address, notice
from .scu import associate, cancel_on_ctrl_c

__all__ = ["add_key_option", "add_parser", "parse_key", "run"]

LEVELS = ("PATIENT", "STUDY", "SERIES", "IMAGE")

_TAG = re.compile(r"\(?([0-9A-Fa-f]{4}),?([0-9A-Fa-f]{4})\)?")
_INTEGER_VRS = {"US", "UL", "SS", "SL", "SV", "UV"}
_FLOAT_VRS = {"FL", "FD"}


def _decimal(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(text)
    return value


#: the VRs whose values are numbers written as text (PS3.5 6.2): checked, and sent as typed
_NUMBER_STRING_VRS: dict[str, Callable[[str], object]] = {"IS": int, "DS": _decimal}
_ITEM_INDEX = re.compile(r"\[\d+\]$")


def _tag_vr(key: str) -> tuple[int, str]:
    if not key:
        raise argparse.ArgumentTypeError(
            "empty key: give KEY[=VALUE], KEY a DICOM keyword or gggg,eeee"
        )
    found = _TAG.fullmatch(key)
    tag = int(found.group(1) + found.group(2), 16) if found else tag_for_keyword(key)
    if tag is None:
        raise argparse.ArgumentTypeError(
            f"unknown key {quoted(key)} (a DICOM keyword or gggg,eeee)"
        )
    try:
        vr = dictionary_VR(tag)
    except KeyError:
        raise argparse.ArgumentTypeError(f"{quoted(key)} is not in the DICOM dictionary") from None
    return tag, vr.split(" or ")[0]


def parse_key(text: str) -> tuple[int, str, Any]:
    """``KEY[=VALUE]`` -> (tag, VR, value): KEY is a keyword (``PatientName``) or a tag
    (``0010,0010``, ``(0010,0010)``, ``00100010``); no value means universal matching (an
    empty value; an empty sequence for a sequence key).  A key inside the item of a sequence
    key is ``SEQUENCE.KEY`` (or ``SEQUENCE[0].KEY``; a query's sequence holds one item),
    nested as deep as needed: it gives (the sequence's tag, ``"SQ"``, [an item holding the
    key]), which :func:`build_query` merges with the sequence's other item keys.  Raises
    :class:`argparse.ArgumentTypeError` for an unknown key or a value its VR cannot hold."""
    key, has_value, value = text.partition("=")
    key = key.strip()
    head, dot, rest = key.partition(".")
    if dot:
        head = head.strip()
        if head.endswith("[0]"):
            head = head[:-3]
        elif _ITEM_INDEX.search(head):
            raise argparse.ArgumentTypeError(
                f"{quoted(key)}: a query's sequence key holds one item, [0]"
            )
        tag, vr = _tag_vr(head)
        if vr != "SQ":
            raise argparse.ArgumentTypeError(f"{quoted(head)} is not a sequence: {quoted(key)}")
        inner = parse_key(rest + (f"={value}" if has_value else ""))
        item = Dataset()
        _put(item, *inner)
        return tag, vr, [item]
    tag, vr = _tag_vr(key)
    if vr == "SQ":
        if has_value and value:
            raise argparse.ArgumentTypeError(f"the sequence key {quoted(key)} takes no value")
        return tag, vr, []
    if not value:
        return tag, vr, None
    parts = value.split("\\")
    try:
        if vr in _NUMBER_STRING_VRS:
            for part in parts:
                _NUMBER_STRING_VRS[vr](part.strip())
            return tag, vr, value
        if vr in _INTEGER_VRS:
            converted: list[Any] = [int(p) for p in parts]
        elif vr in _FLOAT_VRS:
            converted = [float(p) for p in parts]
        else:
            return tag, vr, value
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{key}={quoted(value)}: not a number for VR {vr}"
        ) from None
    return tag, vr, converted[0] if len(converted) == 1 else converted


def add_key_option(p: argparse.ArgumentParser, help: str) -> None:
    """``-k KEY[=VALUE]`` (repeatable, :func:`parse_key`) into ``args.keys``."""
    p.add_argument(
        "-k",
        "--key",
        dest="keys",
        action="append",
        type=parse_key,
        metavar="KEY[=VALUE]",
        help=help,
    )


def add_parser(sub: Any) -> None:
    """Add the ``findscu`` sub-command to ``sub``."""
    p = sub.add_parser(
        "findscu",
        help=APPS["findscu"],
        description="Send a C-FIND request (Query/Retrieve FIND) to a peer and print the matches.",
    )
    add_scu(p)
    p.add_argument(
        "--model",
        choices=tuple(QUERY_MODELS),
        default="study",
        help="information model: Query/Retrieve (patient root, study root, patient/study "
        "only) or mwl, the Modality Worklist",
    )
    p.add_argument(
        "--level",
        type=str.upper,
        choices=LEVELS,
        help="Query/Retrieve Level (0008,0052) of the query (required; none for --model mwl)",
    )
    add_key_option(
        p,
        "a query key: keyword or gggg,eeee, with its matching value (none: return it); "
        "SEQUENCE.KEY for a key in a sequence's item",
    )
    p.add_argument("--json", action="store_true", help="print each match as a JSON line")
    add_common(p)
    p.set_defaults(func=run)


def _put(ds: Dataset, tag: int, vr: str, value: Any) -> None:
    """Add one key to ``ds``: a later key replaces an earlier one with the same tag, except
    that the item keys of a sequence key are merged into its one item."""
    old = ds.get(tag)
    if vr == "SQ" and old is not None and old.VR == "SQ" and old.value:
        if value:
            for elem in value[0]:
                _put(old.value[0], int(elem.tag), elem.VR, elem.value)
        return
    ds[tag] = DataElement(tag, vr, value)


def build_query(level: str | None, keys: list[tuple[int, str, Any]]) -> Dataset:
    """The identifier: Query/Retrieve Level (none when ``level`` is None, as for the
    worklist model) and the keys, in the order given (a later key replaces an earlier one with
    the same tag; the item keys of a sequence are merged)."""
    ds = Dataset()
    if level is not None:
        ds.QueryRetrieveLevel = level
    for tag, vr, value in keys:
        _put(ds, tag, vr, value)
    return ds


def _pairs(ds: Dataset, prefix: str) -> list[str]:
    pairs = []
    for elem in ds:
        name = keyword_for_tag(elem.tag) or f"{Tag(elem.tag).group:04X},{Tag(elem.tag).element:04X}"
        name = prefix + name
        if elem.VR == "SQ":
            if not elem.value:
                pairs.append(f"{name}=")
            for i, item in enumerate(elem.value or []):
                pairs.extend(_pairs(item, f"{name}[{i}]."))
            continue
        if elem.value is None:
            value = ""
        elif elem.VM > 1:
            value = "\\".join(str(v) for v in elem.value)
        else:
            value = str(elem.value)
        pairs.append(f"{name}={value}")
    return pairs


def format_match(ds: Dataset) -> str:
    """One line for a match: ``KEYWORD=VALUE`` pairs, each quoted as a shell would need; the
    attributes in a sequence's items as ``SEQUENCE[i].KEYWORD=VALUE`` (an empty sequence as
    ``SEQUENCE=``)."""
    return " ".join(shlex.quote(pair) for pair in _pairs(ds, ""))


async def run(args: argparse.Namespace) -> int:
    """Associate, send one C-FIND, print the matches, release; 0 if the final status was
    Success, 1 otherwise, 130 after Ctrl-C (which sends C-CANCEL-RQ, as getscu and movescu
    do: the matches up to the peer's final response are printed, then the summary)."""
    if args.model == "mwl" and args.level is not None:
        raise UsageError(
            "argument --level: the mwl model (Modality Worklist) has no Query/Retrieve Level"
        )
    if args.model != "mwl" and args.level is None:
        raise UsageError("the following arguments are required: --level (with every model but mwl)")
    peer = format_address(args.host, args.port)
    query = build_query(args.level, args.keys or [])
    failed: QueryFailed | None = None
    results: FindResults | None = None
    async with cancel_on_ctrl_c("C-FIND") as interrupt:
        async with associate(args, [find_model_uid(args.model)]) as assoc:
            async with assoc.find(query, model=args.model) as results:
                interrupt.operation = results
                try:
                    async for match in results:
                        if args.json:
                            print(json.dumps(match.to_json_dict()), flush=True)
                        else:
                            print(format_match(match), flush=True)
                except QueryFailed as exc:
                    failed = exc
    count = 0 if results is None else results.count
    status = None if results is None else results.status
    if interrupt.interrupted:
        said = "no final response" if status is None else f"status {describe(status)}"
        notice(
            f"interrupted: C-FIND: {count} match(es) from {peer}, {said}",
            "find_interrupted",
            matches=count,
            status=status,
        )
        return 130
    assert results is not None and status is not None
    if failed is not None or status != 0x0000:
        comment = results.final.error_comment if results.final is not None else None
        err(
            f"C-FIND to {peer}: status {describe(status)}"
            + (f" ({comment})" if comment else "")
            + f" after {count} match(es)"
        )
        return 1
    notice(
        f"C-FIND: {count} match(es) from {peer}, status {describe(status)}",
        "find_done",
        matches=count,
        status=status,
    )
    return 0
