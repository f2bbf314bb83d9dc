"""Transcoding on send against DCMTK: every compressed sample pydicom ships that its handlers
decode, sent by our ``storescu`` and retrieved from our ``qrscp`` by DCMTK ``getscu`` and
``movescu``, to DCMTK peers that accept only the uncompressed syntaxes (their default).

The expected pixel values are DCMTK's own decompression of the same file (``dcmdjpeg``,
``dcmdjpls``, ``dcmdrle``); for JPEG 2000, which this DCMTK cannot decode, pydicom's
``pixel_array`` of the original.  JPEG Extended (12-bit, lossy) has no decoder here that
computes the IJG code's values: it is compared within 1 (the IDCT accuracy ISO 10918-2 allows).
"""

from __future__ import annotations

import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from subprocess import PIPE
from typing import Any

import anyio
import numpy as np
import pydicom
import pytest
from harness.peers import DcmtkStoreSCP, dcmtk_env, find_dcmtk_program
from harness.requirements import require
from pydicom.uid import generate_uid
from samples import all_samples
from test_cli import CLI, ENV, GUARD, StoreSCPProcess, run_cli

from asyncdicom.protocol import uids

pytestmark = [pytest.mark.interop, pytest.mark.anyio]

#: DCMTK's decompressor per transfer syntax
DCMTK_DECODER = {
    uids.JPEG_BASELINE_8BIT: "dcmdjpeg",
    uids.JPEG_EXTENDED_12BIT: "dcmdjpeg",
    uids.JPEG_LOSSLESS: "dcmdjpeg",
    uids.JPEG_LOSSLESS_SV1: "dcmdjpeg",
    uids.JPEG_LS_LOSSLESS: "dcmdjpls",
    uids.JPEG_LS_NEAR_LOSSLESS: "dcmdjpls",
    uids.RLE_LOSSLESS: "dcmdrle",
}
LOSSY = {
    uids.JPEG_BASELINE_8BIT,
    uids.JPEG_EXTENDED_12BIT,
    uids.JPEG_LS_NEAR_LOSSLESS,
    uids.JPEG_2000,
}
STUDY = "1.2.826.0.1.3680043.8.498.21.1"


@dataclass
class Case:
    name: str
    path: Path  # the copy sent (a SOP Instance UID of its own)
    uid: str
    syntax: str
    reference: Any  # the expected pixel array
    reference_by: str
    tolerance: int = 0


@pytest.fixture(scope="module")
def cases(tmp_path_factory: pytest.TempPathFactory) -> list[Case]:
    """Copies of the compressed samples pydicom decodes (each with its own SOP Instance UID,
    all in one study), and the pixels DCMTK (else pydicom) decodes from them."""
    require("dcmtk")
    folder = tmp_path_factory.mktemp("compressed")
    decoded = tmp_path_factory.mktemp("dcmtk-decoded")
    found: list[Case] = []
    for path in all_samples():
        try:
            ds = pydicom.dcmread(path)
            syntax = str(ds.file_meta.TransferSyntaxUID)
        except Exception:
            continue
        if syntax not in uids.COMPRESSED_TRANSFER_SYNTAXES or "PixelData" not in ds:
            continue
        if syntax == uids.DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN:
            continue
        try:
            ds.pixel_array  # noqa: B018 - pydicom's handlers decode it
        except Exception:
            continue
        uid = generate_uid(entropy_srcs=["asyncdicom transcoding", path.name])
        ds.SOPInstanceUID = uid
        ds.file_meta.MediaStorageSOPInstanceUID = uid
        ds.StudyInstanceUID = STUDY
        ds.PatientID = "TRANSCODE"
        ds.SeriesInstanceUID = generate_uid(entropy_srcs=["series", path.name])
        copy = folder / f"{path.stem}.dcm"
        try:
            ds.save_as(copy, enforce_file_format=True)
        except TypeError:
            # SC_rgb_jpeg.dcm: an element with a VR of two spaces, which no writer can write
            # again (DCMTK refuses to read it); not a transcoding case
            copy.unlink(missing_ok=True)
            continue
        tool = DCMTK_DECODER.get(syntax)
        reference, by = None, "pydicom"
        if tool is not None:
            out = decoded / copy.name
            result = subprocess.run(
                [find_dcmtk_program(tool) or tool, str(copy), str(out)],
                capture_output=True,
                env=dcmtk_env(),
                check=False,
            )
            if result.returncode == 0:
                reference, by = pydicom.dcmread(out).pixel_array, tool
        if reference is None:
            reference = pydicom.dcmread(copy).pixel_array
        tolerance = 1 if syntax == uids.JPEG_EXTENDED_12BIT else 0
        found.append(Case(path.name, copy, uid, syntax, reference, by, tolerance))
    assert len(found) >= 30, [c.name for c in found]
    # every compressed syntax pydicom ships a decodable sample of
    assert {c.syntax for c in found} >= {
        uids.JPEG_BASELINE_8BIT,
        uids.JPEG_EXTENDED_12BIT,
        uids.JPEG_LOSSLESS_SV1,
        uids.JPEG_LS_LOSSLESS,
        uids.JPEG_LS_NEAR_LOSSLESS,
        uids.JPEG_2000_LOSSLESS,
        uids.JPEG_2000,
        uids.RLE_LOSSLESS,
    }
    return found


def _check_received(files: list[Path], cases: list[Case]) -> None:
    """Every case arrived once, uncompressed, with the reference's pixels, the same SOP
    Instance UID, and Lossy Image Compression "01" when the source was lossy."""
    by_uid = {c.uid: c for c in cases}
    seen: set[str] = set()
    problems: list[str] = []
    for path in files:
        ds = pydicom.dcmread(path)
        case = by_uid[str(ds.SOPInstanceUID)]
        seen.add(case.uid)
        if ds.file_meta.TransferSyntaxUID not in uids.UNCOMPRESSED_TRANSFER_SYNTAXES:
            problems.append(f"{case.name}: arrived in {ds.file_meta.TransferSyntaxUID}")
            continue
        pixels = ds.pixel_array
        if pixels.shape != case.reference.shape:
            problems.append(f"{case.name}: shape {pixels.shape}, {case.reference.shape} expected")
            continue
        diff = int(np.abs(pixels.astype(np.int64) - case.reference.astype(np.int64)).max())
        if diff > case.tolerance:
            problems.append(f"{case.name}: differs from {case.reference_by} by up to {diff}")
        if case.syntax in LOSSY and ds.get("LossyImageCompression") != "01":
            problems.append(f"{case.name}: lossy source without Lossy Image Compression 01")
    missing = sorted(c.name for c in cases if c.uid not in seen)
    assert not problems and not missing, (problems, missing)


@pytest.mark.requires_peer("dcmtk")
async def test_storescu_decompresses_for_dcmtk_storescp(
    tmp_path: Path, anyio_backend: str, cases: list[Case], dcmtk_storescp_factory: Any
) -> None:
    scp: DcmtkStoreSCP = dcmtk_storescp_factory(
        output_dir=tmp_path / "received", accept_all_transfer_syntaxes=False
    )
    folder = cases[0].path.parent
    result = await run_cli(
        "storescu", "127.0.0.1", str(scp.port), str(folder), "--called-aet", scp.aet,
        "--backend", anyio_backend, cwd=tmp_path,
    )  # fmt: skip
    output = result.stdout.decode() + result.stderr.decode()
    assert result.returncode == 0, output
    assert output.startswith(f"sent {len(cases)}, failed 0;"), output
    _check_received(scp.received_files(), cases)


@asynccontextmanager
async def _qrscp(
    storage: Path, backend: str, destination: DcmtkStoreSCP
) -> AsyncIterator[StoreSCPProcess]:
    args = [
        *CLI, "qrscp", "--port", "0", "--host", "127.0.0.1", "--aet", "QRSCP",
        "--storage", str(storage), "--backend", backend,
        "--move-destination", f"{destination.aet}={destination.host}:{destination.port}",
    ]  # fmt: skip
    async with await anyio.open_process(args, env=ENV, stdout=PIPE, stderr=PIPE) as process:
        app = StoreSCPProcess(process)
        try:
            app.port = await app.wait_listening()  # type: ignore[attr-defined]
            yield app
        finally:
            code = await app.stop() if process.returncode is None else process.returncode
    assert code == 0, app.stderr.decode()
    assert b"Traceback" not in app.stderr, app.stderr.decode()


async def _dcmtk(program: str, port: int, *args: str) -> tuple[int, str]:
    tool = find_dcmtk_program(program) or program
    command = [tool, "-v", "-aec", "QRSCP", *args, "127.0.0.1", str(port)]
    with anyio.fail_after(GUARD):
        result = await anyio.run_process(command, env=dcmtk_env(), check=False)
    return result.returncode, result.stdout.decode() + result.stderr.decode()


@pytest.mark.requires_peer("dcmtk")
async def test_qrscp_decompresses_for_dcmtk_getscu_and_movescu(
    tmp_path: Path, anyio_backend: str, cases: list[Case], dcmtk_storescp_factory: Any
) -> None:
    """The archive holds compressed instances, two of each syntax (copied in: it indexes them
    on start); getscu and movescu (to a storescp) propose only the uncompressed syntaxes."""
    per_syntax: dict[str, list[Case]] = {}
    for case in cases:
        per_syntax.setdefault(case.syntax, []).append(case)
    cases = [c for group in per_syntax.values() for c in group[:2]]
    storage = tmp_path / "archive"
    storage.mkdir()
    for case in cases:
        (storage / case.path.name).write_bytes(case.path.read_bytes())
    scp: DcmtkStoreSCP = dcmtk_storescp_factory(
        output_dir=tmp_path / "moved", accept_all_transfer_syntaxes=False
    )
    got = tmp_path / "got"
    got.mkdir()
    n = len(cases)
    async with _qrscp(storage, anyio_backend, scp) as app:
        port = app.port  # type: ignore[attr-defined]
        keys = ["-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={STUDY}"]
        code, log = await _dcmtk("getscu", port, "-S", "-od", str(got), *keys)
        assert code == 0, log
        assert f"Number of Completed Suboperations : {n}" in log, log
        assert "Number of Failed Suboperations    : 0" in log, log
        code, log = await _dcmtk("movescu", port, "-S", "-aem", scp.aet, *keys)
        assert code == 0, log
        assert "Received Final Move Response (Success)" in log, log
    _check_received(sorted(got.iterdir()), cases)
    _check_received(scp.received_files(), cases)
