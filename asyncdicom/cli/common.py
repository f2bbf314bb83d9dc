"""Shared pieces of the command-line apps: options, AE construction, error lines."""

from __future__ import annotations

import argparse
import sys

from ..ae import AE, Timeouts
from ..protocol.status import StatusCategory, category

__all__ = ["CLIError", "add_common", "add_scu", "err", "ok", "scu_ae"]


class CLIError(Exception):
    """A failure to report as one line and exit status 1."""


# --------------------------------------------------------------------------- helpers


def add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv)")
    p.add_argument("--log-json", action="store_true", help="log as JSON lines on stderr")
    p.add_argument(
        "--backend",
        choices=("asyncio", "trio"),
        default="asyncio",
        help="async library to run on (default asyncio)",
    )


def add_scu(p: argparse.ArgumentParser) -> None:
    p.add_argument("host", help="peer host name or address (IPv4 or IPv6)")
    p.add_argument("port", type=int, help="peer TCP port")
    p.add_argument("--aet", default="ASYNCDICOM", help="our (calling) AE title")
    p.add_argument("--called-aet", default="ANY-SCP", help="the peer's (called) AE title")
    p.add_argument("--bind", default=None, help="local address to connect from")
    p.add_argument("--max-pdu", type=int, default=262144, help="largest PDU we accept")
    p.add_argument("--acse-timeout", type=float, default=30.0, metavar="S")
    p.add_argument("--dimse-timeout", type=float, default=60.0, metavar="S")
    p.add_argument("--connect-timeout", type=float, default=30.0, metavar="S")


def scu_ae(args: argparse.Namespace) -> AE:
    return AE(
        args.aet,
        max_pdu_length=args.max_pdu,
        timeouts=Timeouts(
            connect=args.connect_timeout, acse=args.acse_timeout, dimse=args.dimse_timeout
        ),
    )


def ok(status: int) -> bool:
    return category(status) in (StatusCategory.SUCCESS, StatusCategory.WARNING)


def err(text: str) -> None:
    print(f"asyncdicom: error: {text}", file=sys.stderr)
