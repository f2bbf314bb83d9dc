"""``asyncdicom qrscp`` (the archive app, run as a subprocess on both backends) against other
implementations' Query/Retrieve SCUs: DCMTK ``findscu``, ``getscu`` and ``movescu`` (moving to
a DCMTK ``storescp``), and pynetdicom's SCU (``tests/harness/pynetdicom_qr_scu.py``) doing
C-FIND, C-GET and C-MOVE.  The instances are stored into the archive first with DCMTK
``storescu``; everything listens on 127.0.0.1.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from subprocess import PIPE

import anyio
import pytest
from harness.peers import (
    DcmtkStoreSCP,
    assert_instances_match,
    dcmtk_env,
    find_dcmtk_program,
    storescu_command,
)
from pydicom import dcmread
from test_cli import CLI, ENV, GUARD, StoreSCPProcess

from asyncdicom.storage.synthetic import write_ct_files
from tests.harness.launch import python_script

pytestmark = [pytest.mark.interop, pytest.mark.anyio]

PYNETDICOM_QR_SCU = Path(__file__).resolve().parents[1] / "harness" / "pynetdicom_qr_scu.py"


@asynccontextmanager
async def qrscp(
    storage: Path, backend: str, destination: DcmtkStoreSCP
) -> AsyncIterator[StoreSCPProcess]:
    """``asyncdicom qrscp`` on 127.0.0.1 (a free port, read from its "listening on" line) with
    ``destination`` as move destination STORESCP; SIGTERM when the block ends."""
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
    # (reached only when the block succeeded)
    assert code == 0, app.stderr.decode()
    assert b"Traceback" not in app.stderr, app.stderr.decode()


def _tool(name: str) -> str:
    path = find_dcmtk_program(name)
    if path is None:
        pytest.fail(f"DCMTK {name} not found (it comes with storescp: apt-get install dcmtk)")
    return path


async def _run(command: list[str]) -> tuple[int, str]:
    with anyio.fail_after(GUARD):
        result = await anyio.run_process(command, env=dcmtk_env(), check=False)
    return result.returncode, result.stdout.decode() + result.stderr.decode()


async def _fill(app: StoreSCPProcess, files: list[Path]) -> None:
    """Store ``files`` into the archive with DCMTK storescu."""
    port = app.port  # type: ignore[attr-defined]
    command = storescu_command("127.0.0.1", port, files, called_aet="QRSCP", required_only=True)
    code, log = await _run(command)
    assert code == 0, log


async def _dcmtk(program: str, app: StoreSCPProcess, *args: str) -> tuple[int, str]:
    port = app.port  # type: ignore[attr-defined]
    return await _run([_tool(program), "-v", "-aec", "QRSCP", *args, "127.0.0.1", str(port)])


def _archive(tmp_path: Path) -> tuple[list[Path], list[Path]]:
    """Two studies of one patient (3 and 2 instances)."""
    first = write_ct_files(tmp_path / "src1", 3, 3000, patient_id="QRSCP1", seed=1)
    second = write_ct_files(tmp_path / "src2", 2, 3000, patient_id="QRSCP1", seed=7)
    return first, second


def _study(files: list[Path]) -> str:
    return str(dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)


def _series(files: list[Path]) -> str:
    return str(dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID)


@pytest.mark.requires_peer("dcmtk")
async def test_dcmtk_scus_against_qrscp(
    tmp_path: Path, anyio_backend: str, dcmtk_storescp: DcmtkStoreSCP
) -> None:
    first, second = _archive(tmp_path)
    found = tmp_path / "found"
    got = tmp_path / "got"
    for folder in (found / "studies", found / "images", got):
        folder.mkdir(parents=True)
    async with qrscp(tmp_path / "archive", anyio_backend, dcmtk_storescp) as app:
        await _fill(app, first + second)
        # C-FIND, study level: both studies of the patient
        code, log = await _dcmtk(
            "findscu", app, "-S", "-X", "-od", str(found / "studies"),
            "-k", "QueryRetrieveLevel=STUDY", "-k", "PatientID=QRSCP1", "-k", "StudyInstanceUID",
        )  # fmt: skip
        assert code == 0, log
        studies = [dcmread(p).StudyInstanceUID for p in (found / "studies").glob("rsp*.dcm")]
        assert sorted(studies) == sorted([_study(first), _study(second)])
        # C-FIND, image level (Patient Root): the instances of the first study
        code, log = await _dcmtk(
            "findscu", app, "-P", "-X", "-od", str(found / "images"),
            "-k", "QueryRetrieveLevel=IMAGE", "-k", "PatientID=QRSCP1",
            "-k", f"StudyInstanceUID={_study(first)}",
            "-k", f"SeriesInstanceUID={_series(first)}", "-k", "SOPInstanceUID",
        )  # fmt: skip
        assert code == 0, log
        images = [dcmread(p).SOPInstanceUID for p in (found / "images").glob("rsp*.dcm")]
        assert sorted(images) == sorted(p.stem for p in first)
        # C-MOVE of the first study to storescp
        code, log = await _dcmtk(
            "movescu", app, "-S", "-aem", dcmtk_storescp.aet, "-k", "QueryRetrieveLevel=STUDY",
            "-k", f"StudyInstanceUID={_study(first)}",
        )  # fmt: skip
        assert code == 0, log
        assert "Received Final Move Response (Success)" in log, log
        assert log.count("(Pending)") == 3, log
        assert_instances_match(dcmtk_storescp.received_files(), first)
        # C-GET of the second study
        code, log = await _dcmtk(
            "getscu", app, "-S", "-od", str(got), "-k", "QueryRetrieveLevel=STUDY",
            "-k", f"StudyInstanceUID={_study(second)}",
        )  # fmt: skip
        assert code == 0, log
        assert "Number of Completed Suboperations : 2" in log, log
        assert "Number of Failed Suboperations    : 0" in log, log
        assert_instances_match(sorted(got.iterdir()), second)
        # C-MOVE to an AE qrscp does not know
        code, log = await _dcmtk(
            "movescu", app, "-S", "-aem", "NOWHERE", "-k", "QueryRetrieveLevel=STUDY",
            "-k", f"StudyInstanceUID={_study(first)}",
        )  # fmt: skip
        assert "Refused: MoveDestinationUnknown" in log, log
        assert len(dcmtk_storescp.received_files()) == 3


async def _pynetdicom(operation: str, app: StoreSCPProcess, *args: str) -> dict[str, object]:
    port = app.port  # type: ignore[attr-defined]
    with anyio.fail_after(GUARD):
        result = await anyio.run_process(
            [*python_script(PYNETDICOM_QR_SCU), operation, "127.0.0.1", str(port),
             "--called-aet", "QRSCP", "--timeout", "30", *args],
            check=False,
        )  # fmt: skip
    assert result.returncode == 0, (result.stdout.decode(), result.stderr.decode())
    report: dict[str, object] = json.loads(result.stdout)
    return report


@pytest.mark.requires_peer("dcmtk", "pynetdicom")
async def test_pynetdicom_scu_against_qrscp(
    tmp_path: Path, anyio_backend: str, dcmtk_storescp: DcmtkStoreSCP
) -> None:
    first, second = _archive(tmp_path)
    got = tmp_path / "got"
    async with qrscp(tmp_path / "archive", anyio_backend, dcmtk_storescp) as app:
        await _fill(app, first + second)
        find = await _pynetdicom(
            "find", app, "--model", "patient", "-k", "QueryRetrieveLevel=STUDY",
            "-k", "PatientID=QRSCP1", "-k", "StudyInstanceUID",
        )  # fmt: skip
        move = await _pynetdicom(
            "move", app, "-k", "QueryRetrieveLevel=SERIES",
            "-k", f"StudyInstanceUID={_study(first)}", "-k", f"SeriesInstanceUID={_series(first)}",
            "--destination", dcmtk_storescp.aet,
        )  # fmt: skip
        get = await _pynetdicom(
            "get", app, "-k", "QueryRetrieveLevel=STUDY",
            "-k", f"StudyInstanceUID={_study(second)}", "--output-dir", str(got),
        )  # fmt: skip
    responses = find["responses"]
    assert isinstance(responses, list)
    assert [r["status"] for r in responses] == [0xFF00, 0xFF00, 0x0000]
    assert sorted(r["identifier"]["StudyInstanceUID"] for r in responses[:-1]) == sorted(
        [_study(first), _study(second)]
    )
    moved = move["responses"]
    assert isinstance(moved, list)
    assert moved[-1]["status"] == 0x0000 and moved[-1]["completed"] == 3, moved
    assert_instances_match(dcmtk_storescp.received_files(), first)
    gotten = get["responses"]
    assert isinstance(gotten, list)
    assert gotten[-1]["status"] == 0x0000 and gotten[-1]["completed"] == 2, gotten
    assert sorted(get["received"]) == sorted(p.stem for p in second)  # type: ignore[type-var]
    assert_instances_match(sorted(got.glob("*.dcm")), second)
