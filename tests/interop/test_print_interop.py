"""The print server of ``examples/print_scp.py`` (Basic Grayscale Print Management Meta SOP
Class, PS3.4 Annex H), run as a user runs it (a subprocess, both backends), printed to by
pynetdicom (``tests/harness/pynetdicom_print_scu.py``): the film's images are filed."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from subprocess import PIPE
from typing import Any

import anyio
import pytest
from pydicom import dcmread
from test_cli import ENV, GUARD

from tests.harness.launch import python_script

pytestmark = [pytest.mark.interop, pytest.mark.anyio]

ROOT = Path(__file__).resolve().parents[2]
PRINT_SCP = ROOT / "examples" / "print_scp.py"
HARNESS = ROOT / "tests" / "harness" / "pynetdicom_print_scu.py"

#: two images for a STANDARD\1,2 film, written by hand: (rows, columns, pixels)
IMAGES = [
    (2, 2, bytes([0x00, 0x10, 0x20, 0x30])),
    (2, 3, bytes([0xFF, 0xEE, 0xDD, 0xCC, 0xBB, 0xAA])),
]


@pytest.mark.requires_peer("pynetdicom")
async def test_pynetdicom_prints_to_the_example(tmp_path: Path, anyio_backend: str) -> None:
    spec = tmp_path / "spec.json"
    spec.write_text(
        json.dumps({"format": "STANDARD\\1,2", "images": [[r, c, p.hex()] for r, c, p in IMAGES]})
    )
    output = tmp_path / "films"
    command = [*python_script(PRINT_SCP), "0", str(output), anyio_backend]
    with anyio.fail_after(GUARD):
        async with await anyio.open_process(command, env=ENV, stdout=PIPE, stderr=PIPE) as scp:
            assert scp.stdout is not None and scp.stderr is not None
            out = b""
            while b"\n" not in out:
                out += await scp.stdout.receive()
            assert out.startswith(b"listening on 127.0.0.1:"), out
            port = out.split(b"127.0.0.1:")[1].split()[0].decode()
            done = await anyio.run_process(
                [
                    *python_script(HARNESS),
                    "127.0.0.1",
                    port,
                    str(spec),
                    "--called-aet",
                    "PRINTSCP",
                ],
                env=ENV,
                check=False,
            )
            scp.send_signal(signal.SIGINT)
            assert await scp.wait() == 0
            async for chunk in scp.stdout:
                out += chunk
            stderr = b"".join([chunk async for chunk in scp.stderr])
    assert done.stdout.strip(), (done.returncode, done.stderr.decode())
    result: dict[str, Any] = json.loads(done.stdout)
    assert done.returncode == 0, (result, done.stderr.decode())
    assert result["printer"] == [0x0000, "NORMAL"]
    assert result["session"][0] == 0x0000
    film_status, film_uid, boxes = result["film_box"]
    assert (film_status, boxes) == (0x0000, 2)  # STANDARD\1,2: two image boxes
    assert result["image_boxes"] == [0x0000, 0x0000]
    assert result["unknown_image_box"] == 0x0112  # No such SOP Instance
    assert result["print"] == 0x0000
    assert (result["delete_film_box"], result["delete_session"]) == (0x0000, 0x0000)
    assert f"printed {film_uid}: 2 images".encode() in out
    assert b"Traceback" not in stderr, stderr.decode()
    files = sorted((output / film_uid).iterdir())
    assert [f.name for f in files] == ["1.dcm", "2.dcm"]
    for path, (rows, columns, pixels) in zip(files, IMAGES, strict=True):
        ds = dcmread(path)
        assert (ds.Rows, ds.Columns, ds.PhotometricInterpretation) == (rows, columns, "MONOCHROME2")
        assert ds.PixelData == pixels
        assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7"  # Secondary Capture
