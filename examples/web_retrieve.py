"""An HTTP service that fetches a study from a PACS and says what arrived: asyncdicom inside a
Starlette application served by uvicorn (with uvloop where it is installed).

    python examples/web_retrieve.py --pacs PACS@127.0.0.1:11112 --aet WEBAPP \\
        --dicom-port 11113 --http-port 8000

``GET /studies/{StudyInstanceUID}`` asks the PACS for the study with a C-MOVE to this
application's own AE (the PACS must know WEBAPP at this host and ``--dicom-port``), awaits
every instance as it arrives on the association the PACS opens, and answers with JSON: the
instances (SOP Instance UID, modality, instance number) and the C-MOVE's counts. The AE
listens for as long as the web application runs (Starlette's lifespan). Prints
"listening on ..." once both ports accept connections.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from pydicom.dataset import Dataset
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from asyncdicom import AE, presets
from asyncdicom.errors import DICOMError


def build_app(aet: str, dicom_port: int, pacs: tuple[str, str, int]) -> Starlette:
    """The web application; its lifespan serves ``aet`` on ``dicom_port``."""
    me = AE(aet, accept_any_storage=True)
    pacs_aet, pacs_host, pacs_port = pacs

    async def study(request: Request) -> JSONResponse:
        query = Dataset()
        query.QueryRetrieveLevel = "STUDY"
        query.StudyInstanceUID = request.path_params["uid"]
        found: list[dict[str, Any]] = []
        try:
            async with me.associate(
                pacs_host,
                pacs_port,
                called_aet=pacs_aet,
                contexts=presets.retrieve_contexts("move"),
            ) as assoc:
                async with assoc.retrieve(query) as instances:
                    async for instance in instances:
                        ds = instance.dataset()
                        found.append(
                            {
                                "sop_instance_uid": instance.sop_instance_uid,
                                "modality": str(ds.get("Modality", "")),
                                "instance_number": int(ds.get("InstanceNumber") or 0),
                            }
                        )
        except DICOMError as exc:  # refused, failed, the PACS unreachable, ...
            return JSONResponse({"error": str(exc), "instances": found}, status_code=502)
        return JSONResponse(
            {
                "status": f"0x{instances.status:04X}",
                "completed": instances.completed,
                "failed": instances.failed,
                "instances": sorted(found, key=lambda i: i["instance_number"]),
            }
        )

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with me.server("127.0.0.1", dicom_port) as server:
            app.state.dicom_port = server.port  # the one bound, when dicom_port is 0
            yield

    return Starlette(routes=[Route("/studies/{uid}", study)], lifespan=lifespan)


def pacs_address(text: str) -> tuple[str, str, int]:
    """``AET@HOST:PORT``."""
    try:
        aet, address = text.split("@", 1)
        host, port = address.rsplit(":", 1)
        return aet, host, int(port)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected AET@HOST:PORT, got {text!r}") from None


async def serve(args: argparse.Namespace) -> None:
    import socket

    import uvicorn

    # the HTTP socket is bound here so that port 0 works and the port is known up front
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", args.http_port))
    app = build_app(args.aet, args.dicom_port, args.pacs)
    config = uvicorn.Config(app, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)

    async def announce() -> None:
        while not server.started:  # an example: polling is plain enough here
            await asyncio.sleep(0.05)
        dicom_port = app.state.dicom_port
        print(
            f"listening on 127.0.0.1:{sock.getsockname()[1]} (HTTP) "
            f"and 127.0.0.1:{dicom_port} (DICOM, {args.aet})",
            flush=True,
        )

    task = asyncio.create_task(announce())
    try:
        await server.serve(sockets=[sock])
    finally:
        task.cancel()


def main() -> int:
    parser = argparse.ArgumentParser(description="Fetch studies from a PACS over HTTP.")
    parser.add_argument("--pacs", type=pacs_address, required=True, help="AET@HOST:PORT")
    parser.add_argument("--aet", default="WEBAPP")
    parser.add_argument("--dicom-port", type=int, default=11113)
    parser.add_argument("--http-port", type=int, default=8000)
    args = parser.parse_args()
    try:
        import uvloop
    except ImportError:  # asyncio's own loop then
        run = asyncio.run
    else:
        run = uvloop.run
    # uvicorn shuts down gracefully on Ctrl-C, then lets it through: a normal way to stop
    with contextlib.suppress(KeyboardInterrupt):
        run(serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
