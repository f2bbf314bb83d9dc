"""``asyncdicom echoscu``: C-ECHO to a peer."""

from __future__ import annotations

import argparse
import time
from typing import Any

from ..protocol import uids
from .common import add_common, add_scu, err, scu_ae

__all__ = ["add_parser", "run"]


def add_parser(sub: Any) -> None:
    """Add the ``echoscu`` sub-command to ``sub``."""
    p = sub.add_parser("echoscu", help="send C-ECHO (verification)")
    add_scu(p)
    p.add_argument("--repeat", type=int, default=1, metavar="N", help="C-ECHOs to send")
    add_common(p)
    p.set_defaults(func=run)


async def run(args: argparse.Namespace) -> int:
    ae = scu_ae(args)
    started = time.perf_counter()
    failures = 0
    async with ae.associate(
        args.host,
        args.port,
        called_aet=args.called_aet,
        contexts=[uids.VERIFICATION],
        bind=args.bind,
    ) as assoc:
        for _ in range(args.repeat):
            status = (await assoc.echo()).status
            if status != 0x0000:
                failures += 1
                err(f"C-ECHO status 0x{status:04X}")
    elapsed = time.perf_counter() - started
    print(
        f"C-ECHO {args.repeat - failures}/{args.repeat} succeeded with {args.host}:{args.port}"
        f" in {elapsed:.3f} s"
    )
    return 0 if failures == 0 else 1
