"""``asyncdicom getscu``: C-GET (Query/Retrieve GET): retrieve instances and write them as files.

The identifier is built from ``--level`` and the ``-k KEY[=VALUE]`` keys, as for ``findscu``.
The association proposes the model's GET SOP class (and its FIND SOP class), and one storage
context with the SCP role per ``--sop-class`` (by default
:data:`asyncdicom.presets.COMMON_STORAGE`) listing every transfer syntax (the SCP accepts one of
them per SOP class).  The SCP sends the instances back on the same association as C-STORE-RQs;
each one is written to ``--output-dir`` (default: the current folder, as DCMTK's ``getscu``)
with the ``--layout`` and ``--on-duplicate`` of ``storescp``.

Progress, summary, Ctrl-C and the exit status: :mod:`asyncdicom.cli.retrieve_app`.
"""

from __future__ import annotations

import argparse
import functools
from pathlib import Path
from typing import Any

from ..storage.names import is_valid_uid
from .apps import APPS
from .argtypes import folder as folder_type
from .options import add_common, add_scu
from .output import err, notice, plural, uid_name
from .retrieve_app import MAX_CONTEXTS, add_identifier_options, finish, identifier, retrieve
from .scu import associate
from .server import prepare_folder
from .storescp import add_file_options

__all__ = ["add_parser", "run", "sop_class"]


def sop_class(text: str) -> str:
    """An argparse type: a SOP Class UID (``1.2.840.10008.5.1.4.1.1.2``) or pydicom's keyword
    for one (``CTImageStorage``)."""
    value = text.strip()
    if is_valid_uid(value):
        return value
    import pydicom.uid

    found = getattr(pydicom.uid, value, None)
    if isinstance(found, pydicom.uid.UID) and found.type == "SOP Class":
        return str(found)
    raise argparse.ArgumentTypeError(
        f"{text!r} is neither a UID (digits and dots, at most 64 characters) nor the keyword "
        "of a SOP class (e.g. CTImageStorage)"
    )


def add_parser(sub: Any) -> None:
    """Add the ``getscu`` sub-command to ``sub``."""
    p = sub.add_parser(
        "getscu",
        help=APPS["getscu"],
        description="Send a C-GET request (Query/Retrieve GET) to a peer and write the "
        "instances it sends back as files.",
    )
    add_scu(p)
    add_identifier_options(p, "C-GET")
    p.add_argument(
        "--output-dir",
        type=folder_type,
        default=".",
        metavar="DIR",
        help="write the instances received here (created if needed; must be writable)",
    )
    add_file_options(p)
    p.add_argument(
        "--sop-class",
        dest="sop_classes",
        action="append",
        type=sop_class,
        metavar="UID",
        help="a storage SOP class to receive (UID or keyword, repeatable; default: the "
        "common storage classes of asyncdicom.presets.COMMON_STORAGE)",
    )
    p.add_argument(
        "--discover",
        action="store_true",
        help="before the C-GET, list the SOP classes of the instances to retrieve, and the "
        "transfer syntaxes the archive holds them in (Available Transfer Syntax UID), with "
        "C-FIND queries down to the IMAGE level (on an association of their own), and propose "
        "those pairs; where they do not fit in 128 contexts, the uncompressed syntaxes only "
        "(the archive converts)",
    )
    add_common(p)
    p.set_defaults(func=run)


async def _discover(args: argparse.Namespace, query: Any) -> dict[str, set[str]] | None:
    """The SOP classes the C-GET will bring and the transfer syntaxes reported for each, from
    C-FIND queries; None (after one error line) when they cannot be listed."""
    from ..services.query_retrieve import QueryFailed, find_model_uid
    from ..services.retrieve import syntaxes_to_retrieve

    try:
        async with associate(args, [find_model_uid(args.model)]) as assoc:
            found = await syntaxes_to_retrieve(assoc, query, model=args.model)
    except (QueryFailed, ValueError) as exc:
        err(f"getscu: --discover: the SOP classes could not be listed: {exc}")
        return None
    return {uid: found[uid] for uid in sorted(found)}


async def _update_dicomdir(folder: Path, received: list[Any]) -> int | None:
    """``--layout media``: add the instances received to ``folder/DICOMDIR`` (and any earlier
    one it does not list); how many it lists, None (after a warning) if it was not written."""
    import anyio

    from ..storage.dicomdir import update_dicomdir

    def problem(path: Path, reason: str) -> None:
        notice(f"getscu: DICOMDIR: {path}: {reason}", "dicomdir_problem", path=str(path))

    try:
        return await anyio.to_thread.run_sync(
            functools.partial(update_dicomdir, folder, received, recover=True, on_error=problem)
        )
    except OSError as exc:
        problem(folder / "DICOMDIR", f"not written: {exc.strerror or exc}")
        return None


async def run(args: argparse.Namespace) -> int:
    """Associate, send one C-GET, write what comes back, release; 0 if the final status was
    Success, 1 otherwise, 130 after Ctrl-C (2 for an unusable ``--output-dir`` or too many
    ``--sop-class``)."""
    from .. import presets

    folder: Path = args.output_dir
    query = identifier(args)
    storage = list(dict.fromkeys(args.sop_classes or presets.COMMON_STORAGE))
    found: dict[str, set[str]] | None = None
    if args.discover:
        found = await _discover(args, query)
        if found is None:
            return 1
        if args.verbose:
            notice(
                f"getscu: --discover found {len(found)} SOP class(es): "
                + ", ".join(uid_name(uid) for uid in found),
                "sop_classes_discovered",
                sop_classes=list(found),
                transfer_syntaxes={uid: sorted(ts) for uid, ts in found.items()},
            )
        for uid in args.sop_classes or []:
            found.setdefault(uid, set())
        storage = list(found)
    try:
        if found is not None:
            contexts = presets.retrieve_contexts_for_syntaxes(found, model=args.model)
        else:
            contexts = presets.retrieve_contexts("get", model=args.model, storage=storage)
    except ValueError:
        err(
            f"argument --sop-class: {len(storage)} storage SOP classes do not fit in one "
            f"association: with the C-GET and C-FIND contexts an association proposes "
            f"{MAX_CONTEXTS} presentation contexts at most, so {MAX_CONTEXTS - 2} SOP classes"
        )
        return 2
    await prepare_folder(folder, "--output-dir")
    outcome = await retrieve(
        args,
        "C-GET",
        contexts,
        lambda assoc: assoc.get(
            query,
            store=folder,
            model=args.model,
            on_duplicate=args.on_duplicate,
            layout=args.layout,
        ),
    )
    received = outcome.retrieval.received if outcome.retrieval is not None else []
    # --on-duplicate ignore keeps the file already there: nothing is written for that one
    dropped = sum(1 for stored in received if stored.duplicate == "ignore")
    extra = f"{plural(len(received) - dropped, 'file')} written to {folder}"
    if dropped:
        extra += f", {dropped} not written (a file of that name was there: --on-duplicate ignore)"
    not_written = outcome.retrieval.receive_errors if outcome.retrieval is not None else 0
    if not_written:
        extra += f", {not_written} could not be written"
    if args.layout == "media":
        listed = await _update_dicomdir(folder, received)
        if listed is not None:
            extra += f"; {folder / 'DICOMDIR'} lists {plural(listed, 'instance')}"
    return finish(outcome, args, "C-GET", extra)
