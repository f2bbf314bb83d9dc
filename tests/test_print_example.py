"""The print server of ``examples/print_scp.py`` in memory, with asyncdicom as the print SCU
through the meta SOP class context (``abstract_syntax=``): the film session lives for one
association, the SCP chooses UIDs, and what the example does not serve gets the service's
answer."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest
from pydicom.dataset import Dataset

from asyncdicom import AE
from asyncdicom.testing import associated

pytestmark = pytest.mark.anyio

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "print_scp.py"


def load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("print_scp", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # (dataclasses look their module up)
    spec.loader.exec_module(module)
    return module


P = load()
META = P.BASIC_GRAYSCALE_PRINT_META


def film_box(session_uid: str, display_format: str = "STANDARD\\2,2") -> Dataset:
    ds = Dataset()
    ds.ImageDisplayFormat = display_format
    ref = Dataset()
    ref.ReferencedSOPClassUID = P.BASIC_FILM_SESSION
    ref.ReferencedSOPInstanceUID = session_uid
    ds.ReferencedFilmSessionSequence = [ref]
    return ds


def image(value: int) -> Dataset:
    item = Dataset()
    item.SamplesPerPixel = 1
    item.PhotometricInterpretation = "MONOCHROME2"
    item.Rows = item.Columns = 1
    item.BitsAllocated = item.BitsStored = 8
    item.HighBit = 7
    item.PixelRepresentation = 0
    item.PixelData = bytes([value, 0])  # padded to even length
    changes = Dataset()
    changes.BasicGrayscaleImageSequence = [item]
    return changes


async def test_a_film_printed_through_the_meta_context(tmp_path: Path) -> None:
    scp = AE("PRINTSCP")
    server = P.PrintServer(tmp_path)
    scp.install(server)
    async with associated(scp, contexts=[META]) as assoc:
        assert assoc.find_context(P.BASIC_FILM_SESSION) is None
        session = await assoc.n_create(P.BASIC_FILM_SESSION, Dataset(), abstract_syntax=META)
        assert session.status == 0x0000
        session_uid = session.message.affected_sop_instance_uid  # type: ignore[union-attr]
        assert session_uid  # chosen by the SCP
        again = await assoc.n_create(P.BASIC_FILM_SESSION, Dataset(), abstract_syntax=META)
        assert again.status == 0x0111  # one film session per association
        film = await assoc.n_create(P.BASIC_FILM_BOX, film_box(session_uid), abstract_syntax=META)
        assert film.status == 0x0000
        film_uid = film.message.affected_sop_instance_uid  # type: ignore[union-attr]
        boxes = [i.ReferencedSOPInstanceUID for i in film.decode().ReferencedImageBoxSequence]
        assert len(boxes) == 4  # STANDARD\2,2
        for value, box in zip((7, 9), boxes[1:3], strict=True):
            rsp = await assoc.n_set(
                P.BASIC_GRAYSCALE_IMAGE_BOX, box, image(value), abstract_syntax=META
            )
            assert rsp.status == 0x0000
        printed = await assoc.n_action(P.BASIC_FILM_SESSION, session_uid, 1, abstract_syntax=META)
        assert printed.status == 0x0000
    assert [(uid, [p.name for p in paths]) for uid, paths in server.printed] == [
        (film_uid, ["2.dcm", "3.dcm"])  # the image boxes that have an image, by position
    ]


async def test_the_film_session_ends_with_its_association(tmp_path: Path) -> None:
    scp = AE("PRINTSCP")
    scp.install(P.PrintServer(tmp_path))
    async with associated(scp, contexts=[META]) as first:
        rsp = await first.n_create(P.BASIC_FILM_SESSION, Dataset(), abstract_syntax=META)
        session_uid = str(rsp.message.affected_sop_instance_uid)  # type: ignore[union-attr]
        async with associated(scp, contexts=[META]) as second:
            # another association has a film session of its own, or none
            rsp = await second.n_action(P.BASIC_FILM_SESSION, session_uid, 1, abstract_syntax=META)
            assert rsp.status == 0x0112
            rsp = await second.n_create(
                P.BASIC_FILM_BOX, film_box(session_uid), abstract_syntax=META
            )
            assert rsp.status == 0x0110
        rsp = await first.n_create(P.BASIC_FILM_BOX, film_box(session_uid), abstract_syntax=META)
        assert rsp.status == 0x0000
    assert not scp._dispatcher._states  # dropped when the associations ended


async def test_what_the_example_does_not_serve(tmp_path: Path) -> None:
    scp = AE("PRINTSCP")
    scp.install(P.PrintServer(tmp_path))
    async with associated(scp, contexts=[META]) as assoc:
        printer = await assoc.n_get(
            P.PRINTER, P.PRINTER_INSTANCE, ["PrinterStatus"], abstract_syntax=META
        )
        assert printer.status == 0x0000 and printer.decode().PrinterStatus == "NORMAL"
        rsp = await assoc.n_set(P.PRINTER, P.PRINTER_INSTANCE, Dataset(), abstract_syntax=META)
        assert rsp.status == 0x0211  # Unrecognized operation: no handler
        assert rsp.message.error_comment == "N-SET is not supported on this SOP class"  # type: ignore[union-attr]
        session = await assoc.n_create(P.BASIC_FILM_SESSION, Dataset(), abstract_syntax=META)
        uid = str(session.message.affected_sop_instance_uid)  # type: ignore[union-attr]
        rsp = await assoc.n_create(P.BASIC_FILM_BOX, film_box(uid, "ROW\\2"), abstract_syntax=META)
        assert rsp.status == 0x0106
