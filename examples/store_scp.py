"""A minimal Storage SCP: every instance received is saved as a Part 10 file.

    python examples/store_scp.py PORT OUTPUT_DIR [asyncio|trio]

Listens on 127.0.0.1 until interrupted (Ctrl-C); PORT 0 takes any free port. Also answers
C-ECHO. Prints "listening on 127.0.0.1:PORT ..." once it accepts connections. A folder it
cannot create or a port it cannot listen on is one line on stderr and a non-zero exit status
(2 and 1).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import anyio

from asyncdicom import AE, ServiceRequest
from asyncdicom.errors import DICOMError


async def serve(port: int, output_dir: Path) -> None:
    scp = AE("STORESCP", accept_any_storage=True)

    @scp.on_store
    async def on_store(request: ServiceRequest) -> int:
        # Streamed to a temporary file, renamed once complete. An OSError raised here (disk
        # full...) is answered with 0xA700 by the library.
        path = await request.save_to(output_dir)
        print(f"stored {path.name} from {request.association.calling_ae_title}", flush=True)
        return 0x0000

    async with scp.server("127.0.0.1", port) as server:
        print(
            f"listening on 127.0.0.1:{server.port} as STORESCP, writing to {output_dir}",
            flush=True,
        )
        await anyio.sleep_forever()


def port_number(text: str) -> int:
    port = int(text)  # argparse turns the ValueError into a usage error
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port must be 0-65535, got {port}")
    return port


def main() -> int:
    parser = argparse.ArgumentParser(description="A minimal DICOM Storage SCP.")
    parser.add_argument("port", type=port_number)
    parser.add_argument("output_dir", type=Path)
    parser.add_argument("backend", nargs="?", default="asyncio", choices=["asyncio", "trio"])
    args = parser.parse_args()
    try:
        args.output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        print(f"{parser.prog}: error: cannot use {args.output_dir}: {exc}", file=sys.stderr)
        return 2
    try:
        anyio.run(serve, args.port, args.output_dir, backend=args.backend)
    except KeyboardInterrupt:  # Ctrl-C is the way to stop it
        pass
    except Exception as exc:
        error = first_error(exc)
        if not isinstance(error, (DICOMError, OSError)):  # a bug: show the traceback
            raise
        print(f"{parser.prog}: error: {error}", file=sys.stderr)  # e.g. the port is taken
        return 1
    return 0


def first_error(exc: BaseException) -> BaseException:
    """The error itself, out of the exception groups that task groups wrap it in."""
    while len(getattr(exc, "exceptions", ())) == 1:
        exc = exc.exceptions[0]  # type: ignore[attr-defined]
    return exc


if __name__ == "__main__":
    sys.exit(main())
