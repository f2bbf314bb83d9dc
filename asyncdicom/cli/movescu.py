"""``asyncdicom movescu``: C-MOVE (Query/Retrieve MOVE): have a peer send instances to an AE.

The identifier is built from ``--level`` and the ``-k KEY[=VALUE]`` keys, as for ``findscu``.
The association proposes the model's MOVE SOP class (and its FIND SOP class).  The peer sends
the instances to the AE named by ``--move-dest``, which it must know (AE title -> address in its
configuration; otherwise it answers 0xA801, move destination unknown).  ``movescu`` receives
nothing itself: run a Storage SCP (e.g. ``asyncdicom storescp``) as the destination.

Progress, summary, Ctrl-C and the exit status: :mod:`asyncdicom.cli.retrieve_app`.
"""

from __future__ import annotations

import argparse
from typing import Any

from .apps import APPS
from .argtypes import ae_title
from .options import add_common, add_scu
from .retrieve_app import add_identifier_options, finish, identifier, retrieve

__all__ = ["add_parser", "run"]


def add_parser(sub: Any) -> None:
    """Add the ``movescu`` sub-command to ``sub``."""
    p = sub.add_parser(
        "movescu",
        help=APPS["movescu"],
        description="Send a C-MOVE request (Query/Retrieve MOVE) to a peer: it sends the "
        "instances to the move destination AE.",
    )
    add_scu(p)
    add_identifier_options(p, "C-MOVE")
    p.add_argument(
        "--move-dest",
        type=ae_title,
        required=True,
        metavar="AET",
        help="AE title of the move destination (the peer must know its address)",
    )
    add_common(p)
    p.set_defaults(func=run)


async def run(args: argparse.Namespace) -> int:
    """Associate, send one C-MOVE, follow its progress, release; 0 if the final status was
    Success, 1 otherwise, 130 after Ctrl-C."""
    from .. import presets

    contexts = presets.retrieve_contexts("move", model=args.model)
    query = identifier(args)
    outcome = await retrieve(
        args,
        "C-MOVE",
        contexts,
        lambda assoc: assoc.move(query, destination=args.move_dest, model=args.model),
    )
    return finish(
        outcome,
        args,
        f"C-MOVE to {args.move_dest}",
        hint=f"the peer has no address for the AE title {args.move_dest!r} (--move-dest): "
        "add it to the peer's move destinations",
    )
