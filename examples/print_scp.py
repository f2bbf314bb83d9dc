"""A print server for the Basic Grayscale Print Management Meta SOP Class (PS3.4 Annex H) that
files each printed film's images instead of putting them on film.

    python examples/print_scp.py PORT OUTPUT_DIR [asyncio|trio]

Listens on 127.0.0.1 until interrupted (Ctrl-C); PORT 0 takes any free port. Prints
"listening on 127.0.0.1:PORT ..." once it accepts connections, and "printed FILM_BOX_UID: N
images" per film. Each printed film is a folder ``OUTPUT_DIR/<film box UID>/`` holding one
Secondary Capture file per image box that has an image (``<position>.dcm``).

It is written on the public service model only: the meta SOP class is one ``Service`` that
negotiates the meta UID and dispatches on its four component SOP classes, the film session and
its boxes live in the service's state for the association (gone when the association ends, as
PS3.4 H.4.1 wants), and ``PrintServer`` is a component that an AE installs.

| SOP class | Operations |
|---|---|
| Basic Film Session | N-CREATE, N-SET, N-DELETE, N-ACTION (print every film box) |
| Basic Film Box | N-CREATE (creates its image boxes), N-SET, N-DELETE, N-ACTION (print) |
| Basic Grayscale Image Box | N-SET (the image: Basic Grayscale Image Sequence) |
| Printer | N-GET (status NORMAL) |
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from asyncdicom import AE, Service, ServiceRequest, Status
from asyncdicom.errors import DICOMError
from asyncdicom.protocol import messages
from asyncdicom.services import make_response

BASIC_GRAYSCALE_PRINT_META = "1.2.840.10008.5.1.1.9"
BASIC_FILM_SESSION = "1.2.840.10008.5.1.1.1"
BASIC_FILM_BOX = "1.2.840.10008.5.1.1.2"
BASIC_GRAYSCALE_IMAGE_BOX = "1.2.840.10008.5.1.1.4"
PRINTER = "1.2.840.10008.5.1.1.16"
PRINTER_INSTANCE = "1.2.840.10008.5.1.1.17"  # the well-known Printer SOP instance
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"

# PS3.7 Annex C statuses used below
NO_SUCH_OBJECT_INSTANCE = 0x0112
INVALID_ATTRIBUTE_VALUE = 0x0106
NO_SUCH_ACTION = 0x0123


@dataclass
class FilmBox:
    uid: str
    attributes: Dataset
    #: image box SOP Instance UID -> its image (None until N-SET gives one), in position order
    image_boxes: dict[str, Dataset | None] = field(default_factory=dict)


@dataclass
class FilmSession:
    """What one association prints: its film session and the boxes below it (PS3.4 H.4)."""

    uid: str | None = None
    attributes: Dataset = field(default_factory=Dataset)
    film_boxes: dict[str, FilmBox] = field(default_factory=dict)

    def image_box(self, uid: str) -> FilmBox | None:
        return next((f for f in self.film_boxes.values() if uid in f.image_boxes), None)


#: the meta SOP class as data: negotiated as one context, dispatched on its components, with a
#: film session per association
PRINT_SERVICE = Service(
    name="Basic Grayscale Print Management",
    commands=(
        messages.NCreateRQ,
        messages.NSetRQ,
        messages.NActionRQ,
        messages.NDeleteRQ,
        messages.NGetRQ,
    ),
    sop_classes=frozenset({BASIC_FILM_SESSION, BASIC_FILM_BOX, BASIC_GRAYSCALE_IMAGE_BOX, PRINTER}),
    abstract_syntaxes=frozenset({BASIC_GRAYSCALE_PRINT_META}),
    accept_by_default=True,
    no_handler_status=int(Status.UNRECOGNIZED_OPERATION),
    no_handler_comment="{command} is not supported on this SOP class",
    association_state=FilmSession,
)


def _uid(message: Any) -> str:
    return str(
        getattr(message, "affected_sop_instance_uid", None)
        or getattr(message, "requested_sop_instance_uid", None)
        or ""
    )


class PrintServer:
    """The component: ``ae.install(PrintServer(folder))``."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        #: (film box UID, files written) per printed film
        self.printed: list[tuple[str, list[Path]]] = []

    def install(self, ae: AE) -> None:
        ae.add_service(PRINT_SERVICE)
        handlers = {
            ("N-CREATE", BASIC_FILM_SESSION): self.create_session,
            ("N-SET", BASIC_FILM_SESSION): self.set_session,
            ("N-DELETE", BASIC_FILM_SESSION): self.delete_session,
            ("N-ACTION", BASIC_FILM_SESSION): self.print_session,
            ("N-CREATE", BASIC_FILM_BOX): self.create_film_box,
            ("N-SET", BASIC_FILM_BOX): self.set_film_box,
            ("N-DELETE", BASIC_FILM_BOX): self.delete_film_box,
            ("N-ACTION", BASIC_FILM_BOX): self.print_film_box,
            ("N-SET", BASIC_GRAYSCALE_IMAGE_BOX): self.set_image_box,
            ("N-GET", PRINTER): self.get_printer,
        }
        for (command, sop_class), handler in handlers.items():
            ae.set_handler(command, handler, sop_class=sop_class)

    # -- film session

    async def create_session(self, request: ServiceRequest) -> Any:
        session: FilmSession = request.state
        if session.uid is not None:  # one film session per association (PS3.4 H.4.1.2.1)
            return make_response(request.message, int(Status.DUPLICATE_SOP_INSTANCE))
        session.uid = _uid(request.message) or generate_uid()
        if request.has_dataset:
            session.attributes = await request.dataset()
        return make_response(request.message, 0, affected_sop_instance_uid=session.uid)

    async def set_session(self, request: ServiceRequest) -> Any:
        session: FilmSession = request.state
        if session.uid is None or _uid(request.message) != session.uid:
            return NO_SUCH_OBJECT_INSTANCE
        session.attributes.update(await request.dataset())
        return Status.SUCCESS

    async def delete_session(self, request: ServiceRequest) -> Any:
        session: FilmSession = request.state
        if session.uid is None or _uid(request.message) != session.uid:
            return NO_SUCH_OBJECT_INSTANCE
        session.uid, session.attributes, session.film_boxes = None, Dataset(), {}
        return Status.SUCCESS

    async def print_session(self, request: ServiceRequest) -> Any:
        session: FilmSession = request.state
        if session.uid is None or _uid(request.message) != session.uid:
            return NO_SUCH_OBJECT_INSTANCE
        for film in list(session.film_boxes.values()):
            await self.print_film(request, film)
        return Status.SUCCESS

    # -- film box

    async def create_film_box(self, request: ServiceRequest) -> Any:
        session: FilmSession = request.state
        attributes = await request.dataset()
        if session.uid is None:
            return make_response(
                request.message, int(Status.PROCESSING_FAILURE), error_comment="no film session"
            )
        found = re.fullmatch(r"STANDARD\\(\d+),(\d+)", str(attributes.get("ImageDisplayFormat")))
        if found is None:
            return make_response(
                request.message,
                INVALID_ATTRIBUTE_VALUE,
                error_comment="only STANDARD image display formats are supported",
            )
        film = FilmBox(_uid(request.message) or generate_uid(), attributes)
        boxes = int(found[1]) * int(found[2])
        film.image_boxes = {generate_uid(): None for _ in range(boxes)}
        session.film_boxes[film.uid] = film
        reply = Dataset()
        reply.update(attributes)
        refs = []
        for uid in film.image_boxes:
            ref = Dataset()
            ref.ReferencedSOPClassUID = BASIC_GRAYSCALE_IMAGE_BOX
            ref.ReferencedSOPInstanceUID = uid
            refs.append(ref)
        reply.ReferencedImageBoxSequence = refs
        response = make_response(request.message, 0, affected_sop_instance_uid=film.uid)
        return response, reply

    async def set_film_box(self, request: ServiceRequest) -> Any:
        film = request.state.film_boxes.get(_uid(request.message))
        if film is None:
            return NO_SUCH_OBJECT_INSTANCE
        film.attributes.update(await request.dataset())
        return Status.SUCCESS

    async def delete_film_box(self, request: ServiceRequest) -> Any:
        if request.state.film_boxes.pop(_uid(request.message), None) is None:
            return NO_SUCH_OBJECT_INSTANCE
        return Status.SUCCESS

    async def print_film_box(self, request: ServiceRequest) -> Any:
        film = request.state.film_boxes.get(_uid(request.message))
        if film is None:
            return NO_SUCH_OBJECT_INSTANCE
        await self.print_film(request, film)
        return Status.SUCCESS

    # -- image box, printer

    async def set_image_box(self, request: ServiceRequest) -> Any:
        uid = _uid(request.message)
        film = request.state.image_box(uid)
        if film is None:
            return NO_SUCH_OBJECT_INSTANCE
        changes = await request.dataset()
        images = changes.get("BasicGrayscaleImageSequence")
        if not images:
            return make_response(
                request.message,
                int(Status.MISSING_ATTRIBUTE),
                error_comment="no Basic Grayscale Image Sequence",
            )
        film.image_boxes[uid] = images[0]
        return Status.SUCCESS

    async def get_printer(self, request: ServiceRequest) -> Any:
        if _uid(request.message) != PRINTER_INSTANCE:
            return NO_SUCH_OBJECT_INSTANCE
        printer = Dataset()
        printer.PrinterStatus = "NORMAL"
        printer.PrinterStatusInfo = "NORMAL"
        printer.PrinterName = "FILES"
        return Status.SUCCESS, printer

    # -- "printing": filing the film's images

    async def print_film(self, request: ServiceRequest, film: FilmBox) -> None:
        folder = self.folder / film.uid
        images = [(n, image) for n, image in enumerate(film.image_boxes.values(), 1) if image]
        paths = await anyio.to_thread.run_sync(_write_film, folder, images)
        self.printed.append((film.uid, paths))
        print(f"printed {film.uid}: {len(paths)} images", flush=True)


def _write_film(folder: Path, images: list[tuple[int, Dataset]]) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for position, image in images:
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID = SECONDARY_CAPTURE
        ds.SOPInstanceUID = generate_uid()
        ds.StudyInstanceUID = ds.SeriesInstanceUID = generate_uid()
        ds.Modality = "OT"
        ds.ConversionType = "WSD"
        ds.InstanceNumber = position
        ds.update(image)
        path = folder / f"{position}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


async def serve(port: int, output_dir: Path) -> None:
    scp = AE("PRINTSCP")
    scp.install(PrintServer(output_dir))
    async with scp.server("127.0.0.1", port) as server:
        print(
            f"listening on 127.0.0.1:{server.port} as PRINTSCP, filing to {output_dir}", flush=True
        )
        await anyio.sleep_forever()


def port_number(text: str) -> int:
    port = int(text)  # argparse turns the ValueError into a usage error
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port must be 0-65535, got {port}")
    return port


def main() -> int:
    parser = argparse.ArgumentParser(description="A print server that files its films.")
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
        while len(getattr(exc, "exceptions", ())) == 1:
            exc = exc.exceptions[0]  # type: ignore[attr-defined]
        if not isinstance(exc, (DICOMError, OSError)):  # a bug: show the traceback
            raise
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)  # e.g. the port is taken
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
