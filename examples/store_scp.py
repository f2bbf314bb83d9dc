"""A minimal Storage SCP: every instance received is saved as a Part 10 file.

    python examples/store_scp.py PORT OUTPUT_DIR [asyncio|trio]

Listens on 127.0.0.1 until interrupted (Ctrl-C). Also answers C-ECHO.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import anyio

from asyncdicom import AE, ServiceRequest


async def serve(port: int, output_dir: Path) -> None:
    output_dir.mkdir(parents=True, exist_ok=True)
    scp = AE("STORESCP", accept_any_storage=True)

    @scp.on_store
    async def on_store(request: ServiceRequest) -> int:
        # Streamed to a temporary file, renamed once complete. An OSError raised here (disk
        # full...) is answered with 0xA700 by the library.
        path = await request.save_to(output_dir)
        print(f"stored {path.name} from {request.association.calling_ae_title}")
        return 0x0000

    print(f"listening on 127.0.0.1:{port} as STORESCP, writing to {output_dir}")
    await scp.serve("127.0.0.1", port)


def main() -> int:
    if len(sys.argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    port, output_dir = int(sys.argv[1]), Path(sys.argv[2])
    backend = sys.argv[3] if len(sys.argv) > 3 else "asyncio"
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C is the way to stop it
        anyio.run(serve, port, output_dir, backend=backend)
    return 0


if __name__ == "__main__":
    sys.exit(main())
