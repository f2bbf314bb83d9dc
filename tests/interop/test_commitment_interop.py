"""Storage Commitment Push Model against other implementations, on 127.0.0.1, both backends:

* pynetdicom as the commitment SCU (``tests/harness/pynetdicom_commitment_scu.py``) against
  ``asyncdicom qrscp``: the report comes on the requesting association;
* ``asyncdicom stgcmtscu --listen-port`` against Orthanc 1.10 as the commitment SCP: Orthanc
  reports on a new association it opens to the modality registered under our AE title.

Each time 3 instances the SCP stores and 1 it does not: 3 committed, 1 failed with 0x0112 (no
such object instance).
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import anyio
import pytest
from harness.orthanc import OrthancModality, OrthancPeer
from pydicom import dcmread
from test_cli import ENV, GUARD, err, free_port, out, run_cli
from test_cli_qrscp import app

from asyncdicom.storage.synthetic import write_ct_files
from tests.harness.launch import python_script

pytestmark = [pytest.mark.interop, pytest.mark.anyio]

HARNESS = Path(__file__).resolve().parents[1] / "harness" / "pynetdicom_commitment_scu.py"


def _uids(path: Path) -> tuple[str, str]:
    ds = dcmread(path, stop_before_pixels=True)
    return str(ds.SOPClassUID), str(ds.SOPInstanceUID)


@pytest.mark.requires_peer("pynetdicom")
async def test_pynetdicom_scu_against_qrscp(tmp_path: Path, anyio_backend: str) -> None:
    files = write_ct_files(tmp_path / "src", 4, 2000, seed=21)
    (tmp_path / "src" / files[3].name).rename(tmp_path / "unknown.dcm")
    refs = [_uids(f) for f in files[:3]] + [_uids(tmp_path / "unknown.dcm")]
    with anyio.fail_after(GUARD * 3):
        async with app(tmp_path, anyio_backend, "qrscp", "--storage", "archive") as scp:
            port = str(scp.port)  # type: ignore[attr-defined]
            sent = await run_cli(
                "storescu", "127.0.0.1", port, "src", "--backend", anyio_backend, cwd=tmp_path
            )
            assert sent.returncode == 0, err(sent)
            command = [
                *python_script(HARNESS), "127.0.0.1", port, "--called-aet", "QRSCP",
                "--timeout", "30", *(arg for c, i in refs for arg in ("-i", f"{c}={i}")),
            ]  # fmt: skip
            done = await anyio.run_process(command, env=ENV, check=False)
            assert await scp.stop() == 0
    report: dict[str, Any] = json.loads(done.stdout)
    assert done.returncode == 0, (report, done.stderr.decode())
    assert report["action_status"] == 0
    assert report["event_type"] == 2
    assert report["report_transaction_uid"] == report["transaction_uid"]
    assert sorted(map(tuple, report["committed"])) == sorted(refs[:3])
    assert report["failed"] == [[*refs[3], 0x0112]]
    assert "Traceback" not in scp.stderr.decode()


async def _blocking(fn: Any, *args: Any) -> Any:
    return await anyio.to_thread.run_sync(functools.partial(fn, *args))


@pytest.mark.requires_peer("orthanc")
async def test_stgcmtscu_against_orthanc(
    orthanc: OrthancPeer, tmp_path: Path, anyio_backend: str
) -> None:
    files = write_ct_files(tmp_path / "src", 4, 2000, seed=22)
    for path in files[:3]:
        await _blocking(orthanc.upload, path)
    listen = free_port()
    await _blocking(
        orthanc.add_modality, "stgcmtscu", OrthancModality(aet="STGCMTSCU", port=listen)
    )
    unknown_uid = _uids(files[3])[1]
    with anyio.fail_after(GUARD * 2):
        result = await run_cli(
            "stgcmtscu", orthanc.host, str(orthanc.port), "src", "--called-aet", orthanc.aet,
            "--aet", "STGCMTSCU", "--listen-port", str(listen), "--listen-host", "127.0.0.1",
            "--timeout", "30", "--backend", anyio_backend, cwd=tmp_path,
        )  # fmt: skip
    assert result.returncode == 1, (out(result), err(result), orthanc.log_text()[-3000:])
    lines = err(result).splitlines()
    assert f"STGCMTSCU listening on 127.0.0.1:{listen}" in lines[0]
    assert lines[1:] == [
        f"asyncdicom: error: src/{files[3].name}: not committed: 0x0112 (no such object "
        f"instance) (SOP Instance UID {unknown_uid})"
    ], lines
    assert out(result).startswith("committed 3 of 4 instances, failed 1; ")
    assert f"reported by {orthanc.aet}" in out(result)
