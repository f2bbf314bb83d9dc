"""``asyncdicom findscu`` as a subprocess against an in-process C-FIND SCP, both backends:
matches as lines and as JSON, the query it sends, exit statuses, usage errors."""

from __future__ import annotations

import json
import shlex
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from subprocess import PIPE
from typing import Any

import anyio
import pytest
from pydicom.dataset import Dataset

from asyncdicom import AE, presets, uids
from tests.cli_main import run_main
from tests.test_cli import CLI, ENV, GUARD, err, free_port, out, run_cli

pytestmark = pytest.mark.anyio

MWL_FIND = uids.MODALITY_WORKLIST_FIND
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


def _findscu_usage(port: int, *args: str, backend: str, cwd: Path) -> Any:
    """``_findscu`` for a command-line error: in this process (see tests/cli_main.py)."""
    return run_main(
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
def test_findscu_usage_errors(
    tmp_path: Path, anyio_backend: str, args: list[str], message: str
) -> None:
    result = _findscu_usage(free_port(), *args, backend=anyio_backend, cwd=tmp_path)
    assert result.returncode == 2, err(result)
    assert message in err(result)
    assert "Traceback" not in err(result)


# --------------------------------------------------------------------------- --model mwl


def _worklist_scp(queries: list[Dataset]) -> AE:
    from asyncdicom.worklist import Worklist
    from tests.test_worklist import ITEMS

    worklist = Worklist(items=ITEMS)
    scp = AE("WLSCP")
    worklist.install(scp)
    answer = scp.handlers.get("C-FIND", uids.MODALITY_WORKLIST_FIND)
    assert answer is not None

    def find(request: Any) -> Any:  # records the query, then lets the worklist answer
        queries.append(request.decode())
        yield from answer(request)

    scp.on("C-FIND", sop_class=uids.MODALITY_WORKLIST_FIND)(find)
    return scp


async def test_findscu_worklist_query(tmp_path: Path, anyio_backend: str) -> None:
    queries: list[Dataset] = []
    scp = _worklist_scp(queries)
    async with scp.server() as server:
        result = await _findscu(
            server.port, "--model", "mwl", "-k", "PatientName=DOE*", "-k", "AccessionNumber",
            "-k", "ScheduledProcedureStepSequence[0].Modality=CT",
            "-k", "(0040,0100)[0].(0040,0001)",
            "-k", "ScheduledProcedureStepSequence.ScheduledProcedureStepStartDate=20240301-",
            backend=anyio_backend, cwd=tmp_path,
        )  # fmt: skip
    assert result.returncode == 0, err(result)
    lines = [dict(p.split("=", 1) for p in shlex.split(line)) for line in out(result).splitlines()]
    assert lines == [
        {
            "SpecificCharacterSet": "ISO_IR 100",
            "AccessionNumber": "A1",
            "PatientName": "DOE^JOHN",
            "ScheduledProcedureStepSequence[0].ScheduledStationAETitle": "CT1",
            "ScheduledProcedureStepSequence[0].Modality": "CT",
            "ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartDate": "20240301",
        }
    ]
    (query,) = queries
    assert "QueryRetrieveLevel" not in query
    (step,) = query.ScheduledProcedureStepSequence
    assert step.Modality == "CT" and step.ScheduledStationAETitle == ""
    assert step.ScheduledProcedureStepStartDate == "20240301-"


async def test_findscu_worklist_json(tmp_path: Path, anyio_backend: str) -> None:
    scp = _worklist_scp([])
    async with scp.server() as server:
        result = await _findscu(
            server.port, "--model", "mwl", "-k", "ScheduledProcedureStepSequence",
            "-k", "PatientID=ID-A2", "--json", backend=anyio_backend, cwd=tmp_path,
        )  # fmt: skip
    assert result.returncode == 0, err(result)
    (match,) = [json.loads(line) for line in out(result).splitlines()]
    (step,) = match["00400100"]["Value"]  # an empty sequence key returns the whole sequence
    assert step["00080060"]["Value"] == ["MR"] and step["00400001"]["Value"] == ["MR1"]


async def test_findscu_worklist_failure_is_one_line(tmp_path: Path, anyio_backend: str) -> None:
    scp = _worklist_scp([])
    async with scp.server() as server:
        result = await _findscu(
            server.port, "--model", "mwl",
            "-k", "(0040,0100).ScheduledProcedureStepStartDate=20240302-20240301",
            backend=anyio_backend, cwd=tmp_path,
        )  # fmt: skip
    assert result.returncode == 1
    lines = err(result).strip().splitlines()
    assert len(lines) == 1 and "0xC000" in lines[0] and "reversed DA range" in lines[0], lines


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "mwl", "--level", "STUDY"], "the mwl model (Modality Worklist) has no"),
        (["--model", "mwl", "-k", "PatientName.Modality=CT"], "'PatientName' is not a sequence"),
        (["--model", "mwl", "-k", "ScheduledProcedureStepSequence[1].Modality"], "one item, [0]"),
        (["--model", "mwl", "-k", "ScheduledProcedureStepSequence.NoSuchKey"], "unknown key"),
    ],
)
def test_findscu_worklist_usage_errors(
    tmp_path: Path, anyio_backend: str, args: list[str], message: str
) -> None:
    result = _findscu_usage(free_port(), *args, backend=anyio_backend, cwd=tmp_path)
    assert result.returncode == 2, err(result)
    assert message in err(result)
    assert "Traceback" not in err(result)


async def test_qrscp_worklist_and_mpps(tmp_path: Path, anyio_backend: str) -> None:
    """``qrscp --worklist DIR`` answers ``findscu --model mwl`` from the folder's files, and
    serves MPPS, keeping the steps in STORAGE/mpps across a restart."""
    from asyncdicom.services.mpps import MPPS
    from tests.test_cli import StoreSCPProcess, app_process
    from tests.test_worklist import ITEMS, save

    folder = tmp_path / "worklist"
    for item in ITEMS:
        save(folder / f"{item.AccessionNumber}.wl", item)
    storage = tmp_path / "archive"
    step = Dataset()
    step.PerformedProcedureStepStatus = "IN PROGRESS"
    uid = "1.2.826.0.1.3680043.10.9.78.1"
    args = ["qrscp", "--port", "0", "--host", "127.0.0.1", "--storage", str(storage)]
    for worklist in (["--worklist", str(folder)], []):
        async with app_process(
            *args, *worklist, "--backend", anyio_backend, cwd=tmp_path
        ) as process:
            app = StoreSCPProcess(process)
            port = await app.wait_listening()
            if worklist:
                result = await _findscu(
                    port, "--model", "mwl", "-k", "ScheduledProcedureStepSequence.Modality=CT",
                    "-k", "AccessionNumber", backend=anyio_backend, cwd=tmp_path,
                )  # fmt: skip
                assert result.returncode == 0, err(result)
                matches = [
                    dict(p.split("=", 1) for p in shlex.split(line))
                    for line in out(result).splitlines()
                ]
                assert [m["AccessionNumber"] for m in matches] == ["A1", "A3"]
            with anyio.fail_after(60):
                async with AE("MODALITY").associate(
                    "127.0.0.1", port, called_aet="QRSCP", contexts=[MPPS, MWL_FIND]
                ) as assoc:
                    if worklist:
                        assert (await assoc.n_create(MPPS, step, sop_instance=uid)).status == 0
                    else:  # after the restart: the step is known, and no worklist is served
                        done = Dataset()
                        done.PerformedProcedureStepStatus = "COMPLETED"
                        assert (await assoc.n_set(MPPS, uid, done)).status == 0
                        rsp = await assoc.n_set(MPPS, uid, done)
                        assert rsp.status == 0x0110 and rsp.message.error_id == 0xA710
                        assert assoc.find_context(MWL_FIND) is None
            code = await app.stop()
        assert code == 0, app.stderr.decode()
        assert b"Traceback" not in app.stderr
    assert (storage / "mpps" / f"{uid}.mpps").is_file()


async def test_findscu_ctrl_c_cancels_the_query(tmp_path: Path, anyio_backend: str) -> None:
    """SIGINT during a C-FIND: findscu sends C-CANCEL-RQ (it aborted without one), prints the
    matches up to the peer's final response (Cancel) and an "interrupted" summary, as getscu
    and movescu do, and exits with 130."""
    three = anyio.Event()
    let_go = anyio.Event()
    scp = AE("QRSCP", supported_contexts=presets.qr_find_supported())

    @scp.on("C-FIND")
    async def find(request: Any) -> AsyncIterator[Any]:
        for n in range(1, 20):
            ds = Dataset()
            ds.QueryRetrieveLevel = "STUDY"
            ds.StudyInstanceUID = f"1.2.3.{n}"
            yield ds
            if n == 3:
                three.set()
                await let_go.wait()  # a slow archive from the 4th match on

    stdout = stderr = b""
    try:
        async with scp.server() as server:
            args = [
                *CLI, "findscu", "127.0.0.1", str(server.port), "--called-aet", "QRSCP",
                "--level", "STUDY", "-k", "StudyInstanceUID", "--backend", anyio_backend,
            ]  # fmt: skip
            async with await anyio.open_process(
                args, cwd=tmp_path, env=ENV, stdout=PIPE, stderr=PIPE
            ) as process:
                try:
                    with anyio.fail_after(GUARD):
                        assert process.stdout is not None and process.stderr is not None
                        await three.wait()
                        while stdout.count(b"\n") < 3:  # findscu printed the three matches
                            stdout += await process.stdout.receive()
                        process.send_signal(signal.SIGINT)
                        while b"C-CANCEL sent" not in stderr:
                            stderr += await process.stderr.receive()
                        let_go.set()
                        code = await process.wait()
                        stdout += b"".join([c async for c in process.stdout])
                        stderr += b"".join([c async for c in process.stderr])
                except BaseException:
                    process.kill()
                    raise
    finally:
        let_go.set()
    text = stderr.decode()
    assert code == 130, (stdout, text)
    lines = stdout.decode().splitlines()
    assert 3 <= len(lines) < 19, lines
    assert lines[:3] == [f"QueryRetrieveLevel=STUDY StudyInstanceUID=1.2.3.{n}" for n in (1, 2, 3)]
    summary = text.splitlines()[-1]
    assert summary == (
        f"interrupted: C-FIND: {len(lines)} match(es) from 127.0.0.1:{server.port}, "
        "status 0xFE00 Cancel: operation terminated by cancel"
    ), text
    assert "Traceback" not in text
