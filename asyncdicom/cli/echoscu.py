"""``asyncdicom echoscu``: C-ECHO to a peer.

Prints one summary line on stdout (``C-ECHO 3/3 succeeded with HOST:PORT in 0.012 s``); with
``-v`` also one line per C-ECHO (its status and round-trip time) before it.  A response other
than Success is an error line on stderr and makes the exit status 1.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from ..protocol import uids
from ..protocol.status import describe
from .apps import APPS
from .argtypes import positive_int
from .options import add_common, add_scu
from .output import err, format_address
from .scu import associate

__all__ = ["add_parser", "run"]


def add_parser(sub: Any) -> None:
    """Add the ``echoscu`` sub-command to ``sub``."""
    p = sub.add_parser(
        "echoscu",
        help=APPS["echoscu"],
        description="Send C-ECHO requests (Verification SOP Class) to a peer.",
    )
    add_scu(p)
    p.add_argument(
        "--repeat",
        type=positive_int,
        default=1,
        metavar="N",
        help="C-ECHO requests to send, one after the other on one association",
    )
    add_common(p)
    p.set_defaults(func=run)


async def run(args: argparse.Namespace) -> int:
    """Associate, send ``--repeat`` C-ECHOs, release; 0 if every response was Success."""
    peer = format_address(args.host, args.port)
    started = time.perf_counter()
    failures = 0
    async with associate(args, [uids.VERIFICATION]) as assoc:
        for n in range(1, args.repeat + 1):
            sent = time.perf_counter()
            status = (await assoc.echo()).status
            rtt = (time.perf_counter() - sent) * 1000
            if status != 0x0000:
                failures += 1
                err(f"C-ECHO {n}/{args.repeat} to {peer}: status {describe(status)}")
            elif args.verbose:
                print(
                    f"C-ECHO {n}/{args.repeat}: status 0x0000 (success) in {rtt:.1f} ms", flush=True
                )
    elapsed = time.perf_counter() - started
    print(f"C-ECHO {args.repeat - failures}/{args.repeat} succeeded with {peer} in {elapsed:.3f} s")
    return 0 if failures == 0 else 1
