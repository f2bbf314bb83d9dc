"""Interop with PixelMed (Debian's ``pixelmed-apps``): its C-GET client
(``com.pixelmed.network.GetSOPClassSCU``, driven by ``tests/harness/PixelmedGet.java``)
retrieving from ``asyncdicom qrscp``, on both backends.

PixelMed proposes several presentation contexts for each storage SOP class (one with every
uncompressed transfer syntax, one per transfer syntax). Our qrscp sends each C-STORE
sub-operation on one of them; PixelMed answers on another context carrying the same SOP class
(PS3.7 9.3 says the request's). DCMTK accepts that; so must we: the instance was stored, and
aborting loses the rest of the retrieve.
"""

from __future__ import annotations

import os
import re
import signal
import sys
from pathlib import Path
from subprocess import PIPE

import anyio
import pytest
from harness.peers import assert_instances_match, pixelmed_get_command
from pydicom import dcmread

from asyncdicom.storage.synthetic import write_ct_files

pytestmark = [pytest.mark.interop, pytest.mark.anyio, pytest.mark.requires_peer("pixelmed")]

GUARD = 120.0
CLI = [sys.executable, "-m", "asyncdicom"]
ENV = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1", "PYTHONWARNINGS": "ignore"}
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"


async def _listening_port(process: anyio.abc.Process, seen: bytearray) -> int:
    """Read the app's stderr until its "listening on 127.0.0.1:PORT" line."""
    pattern = re.compile(rb"listening on 127\.0\.0\.1:(\d+)")
    assert process.stderr is not None
    with anyio.fail_after(GUARD):
        while not (match := pattern.search(seen)):
            try:
                seen += await process.stderr.receive()
            except anyio.EndOfStream:
                pytest.fail(f"qrscp exited before listening: {bytes(seen)!r}")
    return int(match.group(1))


async def test_pixelmed_get_from_qrscp_answering_on_another_context(
    anyio_backend: str, tmp_path: Path
) -> None:
    files = write_ct_files(tmp_path / "source", 3, 3000, patient_id="PIXELMED1", seed=11)
    study = str(dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    received = tmp_path / "received"
    received.mkdir()
    args = [
        *CLI, "qrscp", "--port", "0", "--host", "127.0.0.1", "--aet", "QRSCP",
        "--storage", os.fspath(tmp_path / "archive"), "--backend", anyio_backend,
    ]  # fmt: skip
    stderr = bytearray()
    async with await anyio.open_process(args, env=ENV, stdout=PIPE, stderr=PIPE) as process:
        try:
            port = await _listening_port(process, stderr)
            with anyio.fail_after(GUARD):
                store = await anyio.run_process(
                    [*CLI, "storescu", "127.0.0.1", str(port), *map(os.fspath, files),
                     "--called-aet", "QRSCP", "--backend", anyio_backend],
                    env=ENV, check=False,
                )  # fmt: skip
            assert store.returncode == 0, store.stderr.decode()
            command = pixelmed_get_command(
                "127.0.0.1", port, "QRSCP", received, study, [CT_IMAGE_STORAGE]
            )
            with anyio.fail_after(GUARD):
                get = await anyio.run_process(command, cwd=tmp_path, check=False)
        finally:
            process.send_signal(signal.SIGTERM)
            with anyio.fail_after(GUARD):
                assert process.stderr is not None
                async for chunk in process.stderr:
                    stderr += chunk
                code = await process.wait()
    output = get.stdout.decode("utf-8", "replace") + get.stderr.decode("utf-8", "replace")
    log = stderr.decode("utf-8", "replace")
    assert get.returncode == 0, output + log
    assert output.count("RECEIVED ") == len(files), output
    assert "DONE" in output, output
    assert_instances_match(sorted(p for p in received.iterdir() if p.is_file()), files)
    assert code == 0, log
    assert "Traceback" not in log, log
