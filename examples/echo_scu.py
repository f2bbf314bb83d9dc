"""Verify a DICOM peer with C-ECHO.

    python examples/echo_scu.py HOST PORT [CALLED_AET] [asyncio|trio]

Exits with status 0 if the peer answered Success (0x0000), 1 if it answered anything else or
could not be reached (one line on stderr says why), 2 if the arguments are wrong.
"""

from __future__ import annotations

import argparse
import sys

import anyio

from asyncdicom import AE
from asyncdicom.errors import DICOMError
from asyncdicom.protocol import uids


async def echo(host: str, port: int, called_aet: str) -> int:
    ae = AE("ECHOSCU")
    async with ae.associate(
        host, port, called_aet=called_aet, contexts=[uids.VERIFICATION]
    ) as assoc:
        response = await assoc.echo()  # a DIMSEResponse: .status, .category, .ok, ...
    print(f"C-ECHO to {called_aet}@{host}:{port}: {response}")
    return response.status


def port_number(text: str) -> int:
    port = int(text)  # argparse turns the ValueError into a usage error
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port must be 1-65535, got {port}")
    return port


def ae_title(text: str) -> str:
    if not 1 <= len(text.strip(" ")) <= 16 or len(text) > 16 or not text.isprintable():
        raise argparse.ArgumentTypeError(f"an AE title has 1-16 printable characters: {text!r}")
    if "\\" in text:
        raise argparse.ArgumentTypeError(f"an AE title has no backslash: {text!r}")
    return text


def main() -> int:
    parser = argparse.ArgumentParser(description="Verify a DICOM peer with C-ECHO.")
    parser.add_argument("host")
    parser.add_argument("port", type=port_number)
    parser.add_argument("called_aet", nargs="?", default="ANY-SCP", type=ae_title)
    parser.add_argument("backend", nargs="?", default="asyncio", choices=["asyncio", "trio"])
    args = parser.parse_args()
    try:
        status = anyio.run(echo, args.host, args.port, args.called_aet, backend=args.backend)
    except (DICOMError, OSError) as exc:
        # refused or unreachable, rejected, aborted, timed out: one line, no traceback
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{parser.prog}: interrupted", file=sys.stderr)
        return 130
    return 0 if status == 0x0000 else 1


if __name__ == "__main__":
    sys.exit(main())
