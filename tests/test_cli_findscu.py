"""``asyncdicom findscu`` as a subprocess against an in-process C-FIND SCP, both backends:
matches as lines and as JSON, the query it sends, exit statuses, usage errors."""

from __future__ import annotations

import json
import shlex
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset

from asyncdicom import AE, presets
from tests.test_cli import err, free_port, out, run_cli

pytestmark = pytest.mark.anyio

STUDIES = [("1.2.3.1", "DOE^JOHN", "CT\\PT"), ("1.2.3.2", "DOE^JANE", "MR")]


def _find_scp(queries: list[Dataset], *, status: int = 0x0000) -> AE:
    scp = AE("QRSCP", supported_contexts=presets.qr_find_supported())

    @scp.on("C-FIND")
    async def find(request: Any) -> AsyncIterator[Any]:
        query = await request.dataset()
        queries.append(query)
        for uid, name, modalities in STUDIES:
            ds = Dataset()
            ds.QueryRetrieveLevel = "STUDY"
            ds.StudyInstanceUID = uid
            ds.PatientName = name
            ds.ModalitiesInStudy = modalities.split("\\")
            yield ds
        if status:
            yield status

    return scp


async def _findscu(port: int, *args: str, backend: str, cwd: Path) -> Any:
    return await run_cli(
        "findscu", "127.0.0.1", str(port), "--called-aet", "QRSCP", "--backend", backend,
        *args, cwd=cwd,
    )  # fmt: skip


async def test_findscu_prints_one_line_per_match(tmp_path: Path, anyio_backend: str) -> None:
    queries: list[Dataset] = []
    scp = _find_scp(queries)
    async with scp.server() as server:
        result = await _findscu(
            server.port, "--level", "study", "-k", "PatientName=DOE*", "-k", "StudyInstanceUID",
            "-k", "0008,0061", "-k", "(0008,0020)=20240101-20241231",
            backend=anyio_backend, cwd=tmp_path,
        )  # fmt: skip
    assert result.returncode == 0, err(result)
    lines = out(result).splitlines()
    assert [dict(p.split("=", 1) for p in shlex.split(line)) for line in lines] == [
        {
            "QueryRetrieveLevel": "STUDY",
            "StudyInstanceUID": uid,
            "PatientName": name,
            "ModalitiesInStudy": modalities,
        }
        for uid, name, modalities in STUDIES
    ]
    assert "2 match(es)" in err(result)
    (query,) = queries
    assert query.QueryRetrieveLevel == "STUDY"
    assert str(query.PatientName) == "DOE*"
    assert query.StudyInstanceUID == "" and query.ModalitiesInStudy == ""
    assert query.StudyDate == "20240101-20241231"


async def test_findscu_json_lines_on_the_patient_model(tmp_path: Path, anyio_backend: str) -> None:
    queries: list[Dataset] = []
    scp = _find_scp(queries)
    async with scp.server() as server:
        result = await _findscu(
            server.port, "--model", "patient", "--level", "PATIENT", "-k", "PatientID=X1",
            "--json", backend=anyio_backend, cwd=tmp_path,
        )  # fmt: skip
    assert result.returncode == 0, err(result)
    objects = [json.loads(line) for line in out(result).splitlines()]
    assert [o["0020000D"]["Value"] for o in objects] == [["1.2.3.1"], ["1.2.3.2"]]
    assert objects[0]["00100010"]["Value"] == [{"Alphabetic": "DOE^JOHN"}]
    assert objects[0]["00080061"]["Value"] == ["CT", "PT"]
    assert queries[0].QueryRetrieveLevel == "PATIENT" and queries[0].PatientID == "X1"


async def test_findscu_failure_status_exits_1(tmp_path: Path, anyio_backend: str) -> None:
    scp = _find_scp([], status=0xC001)
    async with scp.server() as server:
        result = await _findscu(
            server.port, "--level", "STUDY", backend=anyio_backend, cwd=tmp_path
        )
    assert result.returncode == 1
    assert len(out(result).splitlines()) == 2  # the matches before the failure are printed
    assert err(result).strip() == (
        f"asyncdicom: error: C-FIND to 127.0.0.1:{server.port}: status 0xC001 Failure: "
        "error: cannot understand / unable to process after 2 match(es)"
    )
    assert "Traceback" not in err(result)


async def test_findscu_warning_status_exits_1(tmp_path: Path, anyio_backend: str) -> None:
    """Exit 0 only for a final Success: a Warning final status is reported and exits 1."""
    scp = _find_scp([], status=0xB000)
    async with scp.server() as server:
        result = await _findscu(
            server.port, "--level", "STUDY", backend=anyio_backend, cwd=tmp_path
        )
    assert result.returncode == 1
    assert "0xB000" in err(result) and "Traceback" not in err(result)


async def test_findscu_model_not_accepted_is_one_line(tmp_path: Path, anyio_backend: str) -> None:
    scp = AE("QRSCP")  # accepts no FIND model
    async with scp.server() as server:
        result = await _findscu(
            server.port, "--level", "STUDY", backend=anyio_backend, cwd=tmp_path
        )
    assert result.returncode == 1
    lines = err(result).strip().splitlines()
    assert len(lines) == 1 and "no accepted presentation context" in lines[0], lines


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--level", "STUDY", "-k", "NoSuchKeyword"], "unknown key 'NoSuchKeyword'"),
        (["--level", "STUDY", "-k", "Rows=x"], "not a number for VR US"),
        (["--level", "STUDY", "-k", "ReferencedStudySequence=1"], "takes no value"),
        (["--level", "FRAME"], "invalid choice"),
        (["-k", "PatientID"], "the following arguments are required: --level"),
        (["--level", "STUDY", "--model", "worklist"], "invalid choice"),
    ],
)
async def test_findscu_usage_errors(
    tmp_path: Path, anyio_backend: str, args: list[str], message: str
) -> None:
    result = await _findscu(free_port(), *args, backend=anyio_backend, cwd=tmp_path)
    assert result.returncode == 2, err(result)
    assert message in err(result)
    assert "Traceback" not in err(result)
