"""``asyncdicom storescp``: receive C-STORE and write Part 10 files."""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path
from typing import Any

import anyio

from ..ae import AE, Timeouts
from .common import add_common

__all__ = ["add_parser", "run"]


def add_parser(sub: Any) -> None:
    """Add the ``storescp`` sub-command to ``sub``."""
    p = sub.add_parser("storescp", help="receive DICOM files with C-STORE")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--host", default="0.0.0.0", help="address to listen on ('::' for IPv6)")
    p.add_argument("--aet", default="STORESCP")
    out = p.add_mutually_exclusive_group(required=True)
    out.add_argument("--output-dir", metavar="DIR", help="write received files here")
    out.add_argument("--ignore", action="store_true", help="receive and discard")
    p.add_argument("--max-associations", type=int, default=1000, metavar="N")
    p.add_argument(
        "--acse-timeout",
        type=float,
        default=30.0,
        metavar="S",
        help="association negotiation timeout, also the ARTIM timer",
    )
    p.add_argument(
        "--dimse-timeout",
        type=float,
        default=60.0,
        metavar="S",
        help="abort when a message in progress stops arriving for this long",
    )
    p.add_argument(
        "--network-timeout",
        type=float,
        default=None,
        metavar="S",
        help="abort an association silent for this long",
    )
    p.add_argument("--max-pdu", type=int, default=262144, metavar="BYTES")
    add_common(p)
    p.set_defaults(func=run)


def storescp_ae(args: argparse.Namespace) -> AE:
    ae = AE(
        args.aet,
        max_pdu_length=args.max_pdu,
        max_associations=args.max_associations,
        accept_any_storage=True,
        timeouts=Timeouts(
            acse=args.acse_timeout,
            dimse=args.dimse_timeout,
            network=args.network_timeout,
            artim=args.acse_timeout,
        ),
    )
    output = None if args.ignore else Path(args.output_dir)
    if output is not None:
        output.mkdir(parents=True, exist_ok=True)

    @ae.on_store
    async def on_store(request: Any) -> int:
        if output is None:
            await request.discard()
        else:
            await request.save_to(output)
        return 0x0000

    return ae


async def run(args: argparse.Namespace) -> int:
    ae = storescp_ae(args)
    async with anyio.create_task_group() as tg:
        server = await tg.start(ae.serve, args.host, args.port)
        print(
            f"storescp: {ae.ae_title} listening on {args.host}:{server.port}",
            file=sys.stderr,
            flush=True,
        )
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for _ in signals:
                break
        tg.cancel_scope.cancel()
    return 0
