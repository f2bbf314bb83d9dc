"""pynetdicom as a Basic Grayscale Print Management SCU (PS3.4 Annex H), for interop tests.

Usage::

    python tests/harness/pynetdicom_print_scu.py HOST PORT SPEC.json [--aet A] [--called-aet C]

One association proposing only the Basic Grayscale Print Management Meta SOP Class; every
request goes on it through pynetdicom's ``meta_uid``: N-GET of the Printer, N-CREATE of a film
session, N-CREATE of a film box with the Image Display
Format of the spec, N-SET of each image box with the spec's images (8-bit MONOCHROME2), an
N-SET of an image box that does not exist, N-ACTION print of the film box, N-DELETE of the film
box and the session; release.

``SPEC.json``: ``{"format": "STANDARD\\\\1,2", "images": [[rows, columns, "hex pixels"], ...]}``.
Prints one JSON object with each status and what the SCP returned; exit 0 when associated.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from pydicom.dataset import Dataset
from pydicom.tag import Tag
from pydicom.uid import generate_uid
from pynetdicom import AE

META = "1.2.840.10008.5.1.1.9"
FILM_SESSION = "1.2.840.10008.5.1.1.1"
FILM_BOX = "1.2.840.10008.5.1.1.2"
IMAGE_BOX = "1.2.840.10008.5.1.1.4"
PRINTER = "1.2.840.10008.5.1.1.16"
PRINTER_INSTANCE = "1.2.840.10008.5.1.1.17"


def status(ds: Dataset | None) -> int | None:
    return int(ds.Status) if ds is not None and "Status" in ds else None


def image(rows: int, columns: int, pixels: str) -> Dataset:
    item = Dataset()
    item.SamplesPerPixel = 1
    item.PhotometricInterpretation = "MONOCHROME2"
    item.Rows = rows
    item.Columns = columns
    item.BitsAllocated = 8
    item.BitsStored = 8
    item.HighBit = 7
    item.PixelRepresentation = 0
    item.PixelData = bytes.fromhex(pixels)
    return item


def run(args: argparse.Namespace) -> dict[str, Any]:
    with open(args.spec, encoding="utf-8") as f:
        spec = json.load(f)
    ae = AE(ae_title=args.aet)
    ae.add_requested_context(META)
    assoc = ae.associate(args.host, args.port, ae_title=args.called_aet)
    if not assoc.is_established:
        return {"error": "not associated"}
    out: dict[str, Any] = {}
    try:
        rsp, attrs = assoc.send_n_get(
            [Tag("PrinterStatus")], PRINTER, PRINTER_INSTANCE, meta_uid=META
        )
        out["printer"] = [status(rsp), str(attrs.PrinterStatus) if attrs else None]

        session = Dataset()
        session.NumberOfCopies = 1
        session.PrintPriority = "MED"
        session.MediumType = "PAPER"
        # pynetdicom does not return the Affected SOP Instance UID of an N-CREATE-RSP: the
        # SOP Instance UIDs are chosen here
        session_uid = generate_uid()
        rsp, _attrs = assoc.send_n_create(session, FILM_SESSION, session_uid, meta_uid=META)
        out["session"] = [status(rsp), session_uid]

        film = Dataset()
        film.ImageDisplayFormat = spec["format"]
        film.FilmOrientation = "PORTRAIT"
        film.FilmSizeID = "8INX10IN"
        ref = Dataset()
        ref.ReferencedSOPClassUID = FILM_SESSION
        ref.ReferencedSOPInstanceUID = session_uid
        film.ReferencedFilmSessionSequence = [ref]
        film_uid = generate_uid()
        rsp, attrs = assoc.send_n_create(film, FILM_BOX, film_uid, meta_uid=META)
        boxes = [str(i.ReferencedSOPInstanceUID) for i in attrs.ReferencedImageBoxSequence]
        out["film_box"] = [status(rsp), film_uid, len(boxes)]

        out["image_boxes"] = []
        for position, (box, (rows, columns, pixels)) in enumerate(
            zip(boxes, spec["images"], strict=False), 1
        ):
            changes = Dataset()
            changes.ImageBoxPosition = position
            changes.BasicGrayscaleImageSequence = [image(rows, columns, pixels)]
            rsp, _attrs = assoc.send_n_set(changes, IMAGE_BOX, box, meta_uid=META)
            out["image_boxes"].append(status(rsp))
        unknown = Dataset()
        unknown.ImageBoxPosition = 1
        rsp, _attrs = assoc.send_n_set(unknown, IMAGE_BOX, "1.2.3.4.5.6.7", meta_uid=META)
        out["unknown_image_box"] = status(rsp)

        rsp, _attrs = assoc.send_n_action(None, 1, FILM_BOX, film_uid, meta_uid=META)
        out["print"] = status(rsp)
        out["delete_film_box"] = status(assoc.send_n_delete(FILM_BOX, film_uid, meta_uid=META))
        out["delete_session"] = status(
            assoc.send_n_delete(FILM_SESSION, session_uid, meta_uid=META)
        )
    finally:
        assoc.release()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("host")
    parser.add_argument("port", type=int)
    parser.add_argument("spec")
    parser.add_argument("--aet", default="PYNETDICOM")
    parser.add_argument("--called-aet", default="ANY-SCP")
    args = parser.parse_args(argv)
    result = run(args)
    print(json.dumps(result))
    return 2 if "error" in result else 0


if __name__ == "__main__":
    from pynetdicom_race import close_reactor_race  # run as a script: tests/harness first

    close_reactor_race()
    sys.exit(main())
