"""Verify a DICOM peer with C-ECHO.

    python examples/echo_scu.py HOST PORT [CALLED_AET] [asyncio|trio]

Exits with status 0 if the peer answered Success (0x0000).
"""

from __future__ import annotations

import sys

import anyio

from asyncdicom import AE
from asyncdicom.protocol import uids


async def echo(host: str, port: int, called_aet: str) -> int:
    ae = AE("ECHOSCU")
    async with ae.associate(
        host, port, called_aet=called_aet, contexts=[uids.VERIFICATION]
    ) as assoc:
        response = await assoc.echo()  # a DIMSEResponse: .status, .category, .ok, ...
    print(f"C-ECHO to {called_aet}@{host}:{port}: {response}")
    return response.status


def main() -> int:
    if len(sys.argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    host, port = sys.argv[1], int(sys.argv[2])
    called_aet = sys.argv[3] if len(sys.argv) > 3 else "ANY-SCP"
    backend = sys.argv[4] if len(sys.argv) > 4 else "asyncio"
    status = anyio.run(echo, host, port, called_aet, backend=backend)
    return 0 if status == 0x0000 else 1


if __name__ == "__main__":
    sys.exit(main())
