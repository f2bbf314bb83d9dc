"""The scripts in examples/, run as a user runs them: as subprocesses, on both backends.

Every failure a user can provoke (a closed port, a rejection, a port already taken, a folder
that cannot be created, a bad argument) is one line on stderr and a non-zero exit status,
never a traceback. Peers are in-process AEs served by the test's event loop while the example
runs (:func:`anyio.run_process` does not block it).
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path
from subprocess import CompletedProcess
from typing import Any

import anyio
import anyio.abc
import pydicom
import pydicom.data
import pytest
from test_cli import free_port

from asyncdicom import AE, ServiceRequest
from asyncdicom.protocol import uids
from asyncdicom.storage.synthetic import make_ct_instance
from tests.harness.launch import python_script

pytestmark = pytest.mark.anyio

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
ECHO_SCU = EXAMPLES / "echo_scu.py"
STORE_SCP = EXAMPLES / "store_scp.py"
CT_SMALL = Path(pydicom.data.__file__).parent / "test_files" / "CT_small.dcm"
ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONWARNINGS": "ignore"}
GUARD = 60.0


async def run_example(script: Path, *args: str, cwd: Path) -> CompletedProcess[bytes]:
    with anyio.fail_after(GUARD):
        return await anyio.run_process(python_script(script, *args), cwd=cwd, env=ENV, check=False)


def one_error_line(result: CompletedProcess[bytes], script: Path) -> str:
    """The single line a failing example writes to stderr (checked to be just that)."""
    stderr = result.stderr.decode()
    assert "Traceback" not in stderr, stderr
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith(f"{script.name}: error: "), stderr
    return lines[0]


# --------------------------------------------------------------------------- echo_scu.py


async def test_echo_scu_against_a_live_scp(tmp_path: Path, anyio_backend: str) -> None:
    scp = AE("ECHOSCP")
    callers: list[str] = []

    @scp.on_echo
    async def on_echo(request: ServiceRequest) -> int:
        callers.append(request.association.calling_ae_title)
        return 0x0000

    async with scp.server("127.0.0.1", 0) as server:
        result = await run_example(
            ECHO_SCU, "127.0.0.1", str(server.port), "ECHOSCP", anyio_backend, cwd=tmp_path
        )
    assert result.returncode == 0, result.stderr.decode()
    assert result.stderr == b""
    lines = result.stdout.decode().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        f"C-ECHO to ECHOSCP@127.0.0.1:{server.port}: C-ECHO-RSP 0x0000"
    ), lines
    assert callers == ["ECHOSCU"]


async def test_echo_scu_exits_1_on_a_failure_status(tmp_path: Path, anyio_backend: str) -> None:
    scp = AE("ECHOSCP")

    @scp.on_echo
    async def on_echo(request: ServiceRequest) -> int:
        return 0x0110  # Processing failure

    async with scp.server("127.0.0.1", 0) as server:
        result = await run_example(
            ECHO_SCU, "127.0.0.1", str(server.port), "ECHOSCP", anyio_backend, cwd=tmp_path
        )
    assert result.returncode == 1
    assert "0x0110" in result.stdout.decode()


async def test_echo_scu_closed_port_is_one_line(tmp_path: Path, anyio_backend: str) -> None:
    port = free_port()
    result = await run_example(
        ECHO_SCU, "127.0.0.1", str(port), "ANY-SCP", anyio_backend, cwd=tmp_path
    )
    assert result.returncode == 1
    assert f"127.0.0.1:{port}" in one_error_line(result, ECHO_SCU)
    assert result.stdout == b""


async def test_echo_scu_rejected_association_is_one_line(
    tmp_path: Path, anyio_backend: str
) -> None:
    scp = AE("ECHOSCP", require_called_ae_title=True)
    async with scp.server("127.0.0.1", 0) as server:
        result = await run_example(
            ECHO_SCU, "127.0.0.1", str(server.port), "SOMEONE-ELSE", anyio_backend, cwd=tmp_path
        )
    assert result.returncode == 1
    assert "rejected" in one_error_line(result, ECHO_SCU)


@pytest.mark.parametrize(
    "args",
    [
        ["127.0.0.1", "99999"],
        ["127.0.0.1", "-5"],
        ["127.0.0.1", "abc"],
        ["127.0.0.1", "104", "AN-AE-TITLE-TOO-LONG"],
        ["127.0.0.1", "104", "ANY-SCP", "curio"],
        ["127.0.0.1"],
    ],
    ids=["port-too-big", "port-negative", "port-not-a-number", "long-aet", "backend", "missing"],
)
def test_echo_scu_bad_arguments_are_usage_errors(tmp_path: Path, args: list[str]) -> None:
    assert_usage_error(ECHO_SCU, args, tmp_path)


def assert_usage_error(script: Path, args: list[str], cwd: Path) -> None:
    """``script args`` exits 2 with argparse's one error line and no traceback."""
    result = subprocess.run(
        python_script(script, *args),
        cwd=cwd,
        env=ENV,
        capture_output=True,
        timeout=GUARD,
    )
    stderr = result.stderr.decode()
    assert result.returncode == 2, stderr
    assert "Traceback" not in stderr
    assert stderr.splitlines()[-1].startswith(f"{script.name}: error: "), stderr


# --------------------------------------------------------------------------- store_scp.py


async def _read_line(stream: anyio.abc.ByteReceiveStream, buffer: bytearray) -> str:
    """The next line the process writes (the guard fails the test if none comes)."""
    with anyio.fail_after(GUARD):
        while b"\n" not in buffer:
            buffer += await stream.receive()
    line, _, rest = bytes(buffer).partition(b"\n")
    buffer[:] = rest
    return line.decode()


async def _read_all(stream: anyio.abc.ByteReceiveStream) -> str:
    data = bytearray()
    while True:
        try:
            data += await stream.receive()
        except anyio.EndOfStream:
            return data.decode()


async def test_store_scp_stores_answers_echo_and_stops_on_ctrl_c(
    tmp_path: Path, anyio_backend: str
) -> None:
    output = tmp_path / "incoming"
    uid = str(pydicom.dcmread(CT_SMALL, stop_before_pixels=True).SOPInstanceUID)
    command = python_script(STORE_SCP, "0", str(output), anyio_backend)
    async with await anyio.open_process(command, cwd=tmp_path, env=ENV) as process:
        assert process.stdout is not None and process.stderr is not None
        pending = bytearray()
        try:
            ready = await _read_line(process.stdout, pending)
            assert ready.startswith("listening on 127.0.0.1:"), ready
            port = int(ready.split("127.0.0.1:")[1].split()[0])
            contexts: list[Any] = [uids.VERIFICATION, uids.CT_IMAGE_STORAGE]
            with anyio.fail_after(GUARD):
                async with AE("STORESCU").associate(
                    "127.0.0.1", port, called_aet="STORESCP", contexts=contexts
                ) as assoc:
                    assert (await assoc.echo()).status == 0x0000
                    assert (await assoc.store(CT_SMALL)).status == 0x0000
            assert await _read_line(process.stdout, pending) == f"stored {uid}.dcm from STORESCU"
            # the other example against this one
            echo = await run_example(
                ECHO_SCU, "127.0.0.1", str(port), "STORESCP", anyio_backend, cwd=tmp_path
            )
            assert echo.returncode == 0, echo.stderr.decode()
        finally:
            process.send_signal(signal.SIGINT)  # Ctrl-C
            with anyio.fail_after(GUARD):
                status = await process.wait()
                stderr = await _read_all(process.stderr)
    assert status == 0, stderr
    assert stderr == "", stderr
    assert pydicom.dcmread(output / f"{uid}.dcm").SOPInstanceUID == uid


async def test_store_scp_port_in_use_is_one_line(tmp_path: Path, anyio_backend: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = await run_example(
            STORE_SCP, str(port), str(tmp_path / "out"), anyio_backend, cwd=tmp_path
        )
    assert result.returncode == 1
    assert f"127.0.0.1:{port}" in one_error_line(result, STORE_SCP)
    assert result.stdout == b""


async def test_store_scp_unusable_folder_is_one_line(tmp_path: Path, anyio_backend: str) -> None:
    (tmp_path / "a-file").write_text("not a folder")
    folder = tmp_path / "a-file" / "incoming"
    result = await run_example(STORE_SCP, "0", str(folder), anyio_backend, cwd=tmp_path)
    assert result.returncode == 2
    assert str(folder) in one_error_line(result, STORE_SCP)
    assert result.stdout == b""


@pytest.mark.parametrize("args", [["99999", "out"], ["abc", "out"], ["0"], ["0", "out", "curio"]])
def test_store_scp_bad_arguments_are_usage_errors(tmp_path: Path, args: list[str]) -> None:
    assert_usage_error(STORE_SCP, args, tmp_path)
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- embed_*.py


@pytest.mark.parametrize("script", ["embed_asyncio.py", "embed_trio.py"])
async def test_an_scp_embedded_in_an_existing_program(
    tmp_path: Path, anyio_backend: str, script: str
) -> None:
    """The embedding examples (an asyncio program, a trio program): instances sent to the SCP
    become jobs on the program's own queue or channel, one line each, the files kept; Ctrl-C
    ends the program with status 0. The example picks its loop; the sender here runs on
    both backends."""
    folder = tmp_path / "data"
    sent = [make_ct_instance(512, patient_id="EMBED", seed=n) for n in range(3)]
    command = python_script(EXAMPLES / script, "0", str(folder))
    async with await anyio.open_process(command, cwd=tmp_path, env=ENV) as process:
        assert process.stdout is not None and process.stderr is not None
        pending = bytearray()
        try:
            ready = await _read_line(process.stdout, pending)
            assert ready.startswith("listening on 127.0.0.1:"), ready
            port = int(ready.rsplit(":", 1)[1])
            with anyio.fail_after(GUARD):
                async with AE("SENDER").associate(
                    "127.0.0.1", port, called_aet="EMBEDDED", contexts=[uids.CT_IMAGE_STORAGE]
                ) as assoc:
                    for ds in sent:
                        assert (await assoc.store(ds)).status == 0x0000
            lines = [await _read_line(process.stdout, pending) for _ in sent]
        finally:
            process.send_signal(signal.SIGINT)  # Ctrl-C
            with anyio.fail_after(GUARD):
                status = await process.wait()
                stderr = await _read_all(process.stderr)
    assert status == 0, stderr
    assert "Traceback" not in stderr, stderr
    assert lines == [f"received {ds.SOPInstanceUID} from SENDER (CT)" for ds in sent]
    done = folder / "done"
    assert sorted(p.name for p in done.iterdir()) == sorted(
        f"{ds.SOPInstanceUID}.dcm" for ds in sent
    )
    for ds in sent:
        assert pydicom.dcmread(done / f"{ds.SOPInstanceUID}.dcm").PatientID == "EMBED"


# --------------------------------------------------------------------------- web_retrieve.py


async def test_a_web_endpoint_retrieves_a_study_to_itself(
    tmp_path: Path, anyio_backend: str
) -> None:
    """examples/web_retrieve.py: Starlette served by uvicorn (uvloop); its HTTP endpoint
    retrieves a study from our Q/R SCP to its own AE (C-MOVE to itself) and answers with what
    arrived. An unknown study gives an empty list."""
    import json
    import urllib.error
    import urllib.request

    from asyncdicom.archive import Archive, qrscp_config
    from asyncdicom.storage.synthetic import write_ct_files

    files = write_ct_files(tmp_path / "source", 12, 256, patient_id="WEB")
    qr = AE(config=qrscp_config("QRSCP"))

    def get(url: str) -> tuple[int, Any]:
        try:
            with urllib.request.urlopen(url, timeout=GUARD) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    async with Archive(tmp_path / "archive") as archive:
        archive.install(qr)
        async with qr.server("127.0.0.1", 0) as server:
            async with AE("LOADER").associate(
                "127.0.0.1", server.port, called_aet="QRSCP", contexts=[uids.CT_IMAGE_STORAGE]
            ) as assoc:
                for path in files:
                    assert (await assoc.store(path)).status == 0x0000
            command = [
                *python_script(EXAMPLES / "web_retrieve.py"),
                "--pacs", f"QRSCP@127.0.0.1:{server.port}", "--aet", "WEBAPP",
                "--dicom-port", "0", "--http-port", "0",
            ]  # fmt: skip
            async with await anyio.open_process(command, cwd=tmp_path, env=ENV) as process:
                assert process.stdout is not None and process.stderr is not None
                pending = bytearray()
                try:
                    ready = await _read_line(process.stdout, pending)
                    found = re.search(r":(\d+) \(HTTP\) and 127.0.0.1:(\d+) \(DICOM", ready)
                    assert found, ready
                    http_port, dicom_port = int(found[1]), int(found[2])
                    qr.move_destinations["WEBAPP"] = ("127.0.0.1", dicom_port)
                    study = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
                    base = f"http://127.0.0.1:{http_port}/studies/"
                    with anyio.fail_after(GUARD):
                        code, body = await anyio.to_thread.run_sync(get, base + study)
                        empty_code, empty = await anyio.to_thread.run_sync(get, base + "1.2.3.4")
                finally:
                    process.send_signal(signal.SIGINT)
                    with anyio.fail_after(GUARD):
                        await process.wait()
                        stderr = await _read_all(process.stderr)
    assert "Traceback" not in stderr, stderr
    assert code == 200, body
    assert body["status"] == "0x0000" and body["completed"] == len(files)
    expected = {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in files}
    assert {i["sop_instance_uid"] for i in body["instances"]} == expected
    assert {i["modality"] for i in body["instances"]} == {"CT"}
    assert empty_code == 200 and empty["instances"] == [] and empty["completed"] == 0


# --------------------------------------------------------------------------- docs/retrieve.md


async def test_the_retrieve_guide_snippet_runs_against_our_qrscp(
    tmp_path: Path, anyio_backend: str
) -> None:
    """docs/retrieve.md's program, with our Q/R SCP (an Archive holding a study with an SR
    among its instances) as the PACS: the PACS's address, the study and the listening port
    replaced, nothing else. It prints each instance until the SR, cancels, and the status."""
    from asyncdicom.archive import Archive, qrscp_config
    from asyncdicom.storage.synthetic import write_ct_files

    text = (EXAMPLES.parent / "docs" / "retrieve.md").read_text()
    snippet = re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)[0]
    study = "1.2.826.0.1.3680043.10.999.77"
    files = write_ct_files(tmp_path / "source", 6, 256, patient_id="GUIDE")
    sr_uid = "1.2.826.0.1.3680043.10.999.77.99"
    for n, path in enumerate(files):
        ds = pydicom.dcmread(path)
        ds.StudyInstanceUID = study
        ds.InstanceNumber = n + 1
        if n == 3:  # the fourth one arrives as an SR: the loop leaves there
            ds.Modality = "SR"
            ds.SOPInstanceUID = sr_uid
            ds.file_meta.MediaStorageSOPInstanceUID = sr_uid
        ds.save_as(path)
    qr = AE(config=qrscp_config("PACS"))
    my_port = free_port()
    async with Archive(tmp_path / "archive") as archive:
        archive.install(qr)
        async with qr.server("127.0.0.1", 0) as server:
            async with AE("LOADER").associate(
                "127.0.0.1", server.port, called_aet="PACS", contexts=[uids.CT_IMAGE_STORAGE]
            ) as assoc:
                for path in files:
                    assert (await assoc.store(path)).status == 0x0000
            qr.move_destinations["MYAE"] = ("127.0.0.1", my_port)
            source = (
                snippet.replace('"pacs.example", 104', f'"127.0.0.1", {server.port}')
                .replace('"0.0.0.0", 11113', f'"127.0.0.1", {my_port}')
                .replace('"1.2.840.113619.2.55.3.604688119"', f'"{study}"')
            )
            script = tmp_path / "guide.py"
            script.write_text(source)
            result = await run_example(script, cwd=tmp_path)
    assert result.returncode == 0, result.stderr.decode()
    lines = result.stdout.decode().splitlines()
    shown, last = lines[:-1], lines[-1].split()
    assert shown[-1].split()[1:] == ["SR", "4"], shown  # the loop left at the SR
    assert all(line.split()[1] == "CT" for line in shown[:-1]), shown
    assert all(Path(line.split()[0]).is_file() for line in shown), shown  # store="incoming"
    # the status is Cancel (0xFE00), or Success when the SCP had completed every
    # sub-operation before the C-CANCEL reached it (its C-STOREs travel on another
    # association and may all have arrived while the loop was still printing); what
    # arrived is at least what was shown and at most what was completed
    status, arrived, of, completed = last[0], int(last[1]), last[2], int(last[3])
    assert of == "of", lines
    if status == "0":
        assert completed == len(files), lines
    else:
        assert status == "65024", lines
    assert len(shown) <= arrived <= completed <= len(files), lines


# --------------------------------------------------------------------------- the tutorial

TUTORIAL = Path(__file__).resolve().parents[1] / "docs" / "tutorial.md"


def _tutorial_blocks() -> list[str]:
    """The ```python blocks of docs/tutorial.md, as written."""
    return re.findall(r"```python\n(.*?)```", TUTORIAL.read_text(), flags=re.DOTALL)


def test_the_tutorial_shows_the_examples_it_runs() -> None:
    """docs/tutorial.md's programs are examples/tutorial_*.py, word for word (the tests below
    run the files), and each is at most 50 lines as the tutorial promises."""
    blocks = _tutorial_blocks()
    for name in ("tutorial_gateway.py",):
        source = (EXAMPLES / name).read_text()
        assert source in blocks, f"docs/tutorial.md does not show examples/{name} as it is"
        assert len(source.splitlines()) <= 50, name


async def test_the_tutorial_gateway_checks_stores_and_forwards(
    tmp_path: Path, anyio_backend: str
) -> None:
    folder = tmp_path / "gateway"
    review = AE("REVIEW", accept_any_storage=True)
    forwarded: list[str] = []

    @review.on_store
    async def on_store(request: ServiceRequest) -> int:
        forwarded.append(request.message.affected_sop_instance_uid)
        return 0x0000

    study_uid = "1.2.826.0.1.3680043.10.999.42"
    good = [
        make_ct_instance(256, patient_id="P1", seed=n, study_instance_uid=study_uid)
        for n in range(2)
    ]
    anonymous = make_ct_instance(256, patient_id="", seed=9)
    async with review.server("127.0.0.1", 0) as server:
        review_at = f"REVIEW@127.0.0.1:{server.port}"
        command = [
            *python_script(EXAMPLES / "tutorial_gateway.py"),
            "0",
            str(folder),
            review_at,
        ]
        async with await anyio.open_process(command, cwd=tmp_path, env=ENV) as process:
            assert process.stdout is not None and process.stderr is not None
            pending = bytearray()
            try:
                ready = await _read_line(process.stdout, pending)
                assert ready.startswith("listening on 127.0.0.1:"), ready
                port = int(ready.rsplit(":", 1)[1])
                with anyio.fail_after(GUARD):
                    async with AE("MODALITY").associate(
                        "127.0.0.1", port, called_aet="GATEWAY", contexts=[uids.CT_IMAGE_STORAGE]
                    ) as assoc:
                        for ds in [good[0], anonymous, good[1]]:
                            assert (await assoc.store(ds)).status == 0x0000
                lines = [await _read_line(process.stdout, pending) for _ in range(3)]
            finally:
                process.send_signal(signal.SIGINT)
                with anyio.fail_after(GUARD):
                    status = await process.wait()
                    stderr = await _read_all(process.stderr)
    assert status == 0 and "Traceback" not in stderr, stderr
    assert lines == [
        f"forwarded {good[0].SOPInstanceUID}: 0x0000",
        f"quarantined {anonymous.SOPInstanceUID}",
        f"forwarded {good[1].SOPInstanceUID}: 0x0000",
    ]
    assert forwarded == [ds.SOPInstanceUID for ds in good]
    study = folder / "archive" / good[0].StudyInstanceUID
    assert sorted(p.name for p in study.iterdir()) == sorted(
        f"{ds.SOPInstanceUID}.dcm" for ds in good
    )
    assert [p.name for p in (folder / "quarantine").iterdir()] == [
        f"{anonymous.SOPInstanceUID}.dcm"
    ]


# --------------------------------------------------------------------------- pytest-asyncio


def test_the_pytest_asyncio_example_passes_beside_anyios_plugin() -> None:
    """examples/testing_with_pytest_asyncio: a user's application tested with pytest-asyncio
    and asyncdicom.testing, run as its README says; its anyio-marked test shows both plugins
    in one session (the example's own asserts are what can fail here).  Not per backend: it
    is one subprocess, whose tests choose their own loops."""
    folder = EXAMPLES / "testing_with_pytest_asyncio"
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rA"],
        cwd=folder,
        env={**ENV, "PYTHONDONTWRITEBYTECODE": "1"},
        capture_output=True,
        timeout=GUARD,
        check=False,
    )
    out = result.stdout.decode()
    assert result.returncode == 0, out + result.stderr.decode()
    for name in (
        "test_instances_are_sorted_by_modality",
        "test_an_instance_without_patient_id_is_refused_and_not_kept",
        "test_verification_is_answered",
        "test_anyio_marked_tests_run_beside_them[asyncio]",
    ):
        assert f"PASSED test_triage.py::{name}" in out, out
