"""Modality Worklist and MPPS interop: ``asyncdicom qrscp --worklist`` (a subprocess, both
backends) queried by DCMTK ``findscu -W``, and by pynetdicom (C-FIND on the worklist model,
then MPPS N-CREATE, N-SET to COMPLETED and a refused N-SET, in
``tests/harness/pynetdicom_mwl_mpps_scu.py``).  Everything listens on 127.0.0.1."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from subprocess import PIPE

import anyio
import pytest
from harness.peers import dcmtk_env, find_dcmtk_program
from pydicom import dcmread
from test_cli import CLI, ENV, GUARD, StoreSCPProcess
from test_worklist import ITEMS, save

from tests.harness.launch import python_script

pytestmark = [pytest.mark.interop, pytest.mark.anyio]

HARNESS = Path(__file__).resolve().parents[1] / "harness" / "pynetdicom_mwl_mpps_scu.py"
MPPS_UID = "1.2.826.0.1.3680043.10.9.79.1"


@asynccontextmanager
async def qrscp(tmp_path: Path, backend: str) -> AsyncIterator[int]:
    """``asyncdicom qrscp --worklist`` serving the worklist items ``ITEMS`` as .wl files;
    yields its port; SIGTERM when the block ends."""
    worklist = tmp_path / "worklist"
    for item in ITEMS:
        save(worklist / f"{item.AccessionNumber}.wl", item)
    args = [
        *CLI, "qrscp", "--port", "0", "--host", "127.0.0.1", "--aet", "QRSCP",
        "--storage", str(tmp_path / "archive"), "--worklist", str(worklist),
        "--backend", backend,
    ]  # fmt: skip
    async with await anyio.open_process(args, env=ENV, stdout=PIPE, stderr=PIPE) as process:
        app = StoreSCPProcess(process)
        try:
            yield await app.wait_listening()
        finally:
            code = await app.stop() if process.returncode is None else process.returncode
    assert code == 0, app.stderr.decode()
    assert b"Traceback" not in app.stderr, app.stderr.decode()


@pytest.mark.requires_peer("dcmtk")
async def test_dcmtk_findscu_worklist(
    tmp_path: Path, anyio_backend: str, require_dcmtk: None
) -> None:
    findscu = find_dcmtk_program("findscu")
    assert findscu is not None
    out = tmp_path / "found"
    out.mkdir()
    async with qrscp(tmp_path, anyio_backend) as port:
        command = [
            findscu, "-W", "-aec", "QRSCP", "-X", "-od", str(out),
            "-k", "AccessionNumber", "-k", "PatientName",
            "-k", "ScheduledProcedureStepSequence[0].Modality=CT",
            "-k", "ScheduledProcedureStepSequence[0].ScheduledStationAETitle",
            "-k", "ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartDate=20240301-",
            "127.0.0.1", str(port),
        ]  # fmt: skip
        with anyio.fail_after(GUARD):
            result = await anyio.run_process(command, env=dcmtk_env(), check=False)
        # a reversed date range: DCMTK reports the failure status
        bad = [
            findscu, "-v", "-W", "-aec", "QRSCP", "-k",
            "ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartDate=20240302-20240301",
            "127.0.0.1", str(port),
        ]  # fmt: skip
        with anyio.fail_after(GUARD):
            refused = await anyio.run_process(bad, env=dcmtk_env(), check=False)
    log = result.stdout.decode() + result.stderr.decode()
    assert result.returncode == 0, log
    found = [dcmread(p) for p in sorted(out.glob("rsp*.dcm"))]
    assert sorted(str(ds.AccessionNumber) for ds in found) == ["A1", "A3"], log
    for ds in found:
        (step,) = ds.ScheduledProcedureStepSequence
        assert step.Modality == "CT" and step.ScheduledStationAETitle in ("CT1", "CT2")
        assert "PatientID" not in ds and "QueryRetrieveLevel" not in ds  # requested keys only
    refused_log = refused.stdout.decode() + refused.stderr.decode()
    assert "Received Final Find Response (Failed: UnableToProcess)" in refused_log, refused_log


@pytest.mark.requires_peer("pynetdicom")
async def test_pynetdicom_worklist_and_mpps(
    tmp_path: Path, anyio_backend: str, require_pynetdicom: None
) -> None:
    async with qrscp(tmp_path, anyio_backend) as port:
        command = [
            *python_script(HARNESS), "127.0.0.1", str(port), "--called-aet", "QRSCP",
            "--modality", "MR", "--mpps-uid", MPPS_UID, "--timeout", "30",
        ]  # fmt: skip
        with anyio.fail_after(GUARD):
            result = await anyio.run_process(command, check=False)
    report = json.loads(result.stdout.decode().strip().splitlines()[-1])
    assert result.returncode == 0, (report, result.stderr.decode())
    assert report["find_statuses"] == [0xFF00, 0x0000]
    assert report["matches"] == [
        {"accession": "A2", "patient": "DOE^JANE", "station": "MR1", "modality": "MR"}
    ]
    assert report["create"]["status"] == 0x0000
    assert report["complete"]["status"] == 0x0000
    assert report["again"]["status"] == 0x0110
    assert report["again"]["error_id"] == 0xA710
    assert report["again"]["error_comment"] == (
        "Performed Procedure Step Object may no longer be updated"
    )
    assert report["unknown"]["status"] == 0x0112
    stored = dcmread(tmp_path / "archive" / "mpps" / f"{MPPS_UID}.mpps")
    assert stored.PerformedProcedureStepStatus == "COMPLETED"
