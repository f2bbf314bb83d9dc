"""``asyncdicom getscu`` as a subprocess against an in-process Query/Retrieve SCP (a C-GET
handler yielding files the test wrote), both backends: the files arrive in the output folder
(the current folder by default), the storage classes proposed (``--sop-class``), failure and
warning statuses, usage errors, and Ctrl-C."""

from __future__ import annotations

import re
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from subprocess import PIPE
from typing import Any

import anyio
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from asyncdicom import AE, presets
from asyncdicom.protocol import uids
from asyncdicom.storage.synthetic import write_ct_files
from tests.cli_main import run_main
from tests.test_cli import CLI, ENV, GUARD, dataset_bytes, err, free_port, out, run_cli
from tests.test_cli_movescu import qr_scp, uid_of

pytestmark = pytest.mark.anyio


def get_scp(items: list[Any], **kwargs: Any) -> AE:
    return qr_scp(items, operation="C-GET", **kwargs)


def write_sc_file(folder: Path) -> Path:
    """A Secondary Capture instance (a synthetic CT relabelled), named by its UID."""
    (ct,) = write_ct_files(folder / "ct", 1, 64, seed=5)
    ds = pydicom.dcmread(ct)
    uid = generate_uid(prefix=None)
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = uids.SECONDARY_CAPTURE_IMAGE_STORAGE
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = uid
    path = folder / f"{uid}.dcm"
    ds.save_as(path, enforce_file_format=True)
    ct.unlink()
    return path


async def _getscu(port: int, *args: str, backend: str, cwd: Path) -> Any:
    return await run_cli(
        "getscu", "127.0.0.1", str(port), "--called-aet", "QRSCP", "--backend", backend,
        *args, cwd=cwd,
    )  # fmt: skip


def _getscu_usage(port: int, *args: str, backend: str, cwd: Path) -> Any:
    """``_getscu`` for a command-line error: in this process (see tests/cli_main.py)."""
    return run_main(
        "getscu", "127.0.0.1", str(port), "--called-aet", "QRSCP", "--backend", backend,
        *args, cwd=cwd,
    )  # fmt: skip


async def test_getscu_writes_the_instances_in_the_current_folder(
    tmp_path: Path, anyio_backend: str
) -> None:
    """Without --output-dir the files go to the current folder, as DCMTK's getscu does."""
    files = write_ct_files(tmp_path / "src", 3, 3000)
    identifiers: list[Dataset] = []
    work = tmp_path / "work"
    work.mkdir()
    async with get_scp(files, identifiers=identifiers).server() as server:
        result = await _getscu(
            server.port, "--level", "SERIES", "-k", "StudyInstanceUID=1.2.3",
            "-k", "SeriesInstanceUID=1.2.3.4", backend=anyio_backend, cwd=work,
        )  # fmt: skip
    assert result.returncode == 0, (out(result), err(result))
    assert out(result).splitlines() == [
        "C-GET: completed 3, failed 0, warning 0; status 0x0000 Success: success; "
        "3 files written to ."
    ]
    assert sorted(p.name for p in work.iterdir()) == sorted(f.name for f in files)
    for f in files:
        assert dataset_bytes(work / f.name) == dataset_bytes(f)
    (identifier,) = identifiers
    assert identifier.QueryRetrieveLevel == "SERIES"
    assert identifier.SeriesInstanceUID == "1.2.3.4"
    assert err(result) == ""


async def test_getscu_output_dir_sorted_layout(tmp_path: Path, anyio_backend: str) -> None:
    files = write_ct_files(tmp_path / "src", 2, 100, patient_id="PAT-1")
    meta = pydicom.dcmread(files[0], stop_before_pixels=True)
    async with get_scp(files).server() as server:
        result = await _getscu(
            server.port, "--level", "STUDY", "--output-dir", "in/coming", "--layout", "sorted",
            "-v", backend=anyio_backend, cwd=tmp_path,
        )  # fmt: skip
    assert result.returncode == 0, (out(result), err(result))
    series = tmp_path / "in/coming" / "PAT-1" / meta.StudyInstanceUID / meta.SeriesInstanceUID
    assert sorted(p.name for p in series.iterdir()) == sorted(f.name for f in files)
    lines = out(result).splitlines()
    assert lines[-1].endswith("; 2 files written to in/coming"), lines
    assert any(line.startswith("C-GET: remaining ") for line in lines[:-1]), lines


async def test_getscu_failed_sub_operations_are_listed(tmp_path: Path, anyio_backend: str) -> None:
    """Only the SOP classes of --sop-class are proposed: an instance of another class cannot
    be sent, the peer counts it as failed (Warning 0xB000), its UID is listed, exit status 1."""
    cts = write_ct_files(tmp_path / "src", 2, 100)
    sc = write_sc_file(tmp_path / "src")
    async with get_scp([cts[0], sc, cts[1]]).server() as server:
        result = await _getscu(
            server.port, "--level", "STUDY", "--output-dir", "out",
            "--sop-class", "CTImageStorage", backend=anyio_backend, cwd=tmp_path,
        )  # fmt: skip
    assert result.returncode == 1, (out(result), err(result))
    summary, *failed = out(result).splitlines()
    expected = (
        "C-GET: completed 2, failed 1, warning 0; status 0xB000 Warning: warning: "
        "sub-operations complete, one or more failures or warnings (no accepted context for "
        f"{uids.SECONDARY_CAPTURE_IMAGE_STORAGE}); "
    )
    assert summary.startswith(expected), summary
    assert summary.endswith("; 2 files written to out"), summary
    assert failed == [f"failed SOP Instance UID {uid_of(sc)}"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(f.name for f in cts)
    (line,) = err(result).splitlines()
    assert "ended with status 0xB000 Warning" in line and "1 sub-operation(s) failed" in line


async def test_getscu_every_sub_operation_failed_is_a702(
    tmp_path: Path, anyio_backend: str
) -> None:
    files = write_ct_files(tmp_path / "src", 2, 100)
    async with get_scp(files).server() as server:
        result = await _getscu(
            server.port, "--level", "STUDY", "--output-dir", "out",
            "--sop-class", uids.SECONDARY_CAPTURE_IMAGE_STORAGE,
            backend=anyio_backend, cwd=tmp_path,
        )  # fmt: skip
    assert result.returncode == 1
    summary, *failed = out(result).splitlines()
    assert summary.startswith(
        "C-GET: completed 0, failed 2, warning 0; status 0xA702 Failure: refused: out of "
        "resources, unable to perform sub-operations"
    ), summary
    assert sorted(failed) == sorted(f"failed SOP Instance UID {uid_of(f)}" for f in files)
    assert list((tmp_path / "out").iterdir()) == []
    assert "ended with status 0xA702 Failure" in err(result)


@pytest.mark.parametrize(
    ("status", "meaning"),
    [
        (0xC000, "0xC000 Failure: error: cannot understand / unable to process"),
        (0x0122, "0x0122 Failure: refused: SOP class not supported"),
    ],
)
async def test_getscu_handler_failure_is_described(
    tmp_path: Path, anyio_backend: str, status: int, meaning: str
) -> None:
    async with get_scp([], status=status).server() as server:
        result = await _getscu(
            server.port, "--level", "STUDY", "--output-dir", "out",
            backend=anyio_backend, cwd=tmp_path,
        )  # fmt: skip
    assert result.returncode == 1
    assert f"status {meaning}" in out(result)
    (line,) = err(result).splitlines()
    assert line.startswith(f"asyncdicom: error: C-GET via 127.0.0.1:{server.port} ended with ")
    assert f"ended with status {meaning}" in line, line


async def test_getscu_model_not_accepted_is_one_line(tmp_path: Path, anyio_backend: str) -> None:
    scp = AE("QRSCP", supported_contexts=presets.qr_find_supported())  # FIND only
    async with scp.server() as server:
        result = await _getscu(
            server.port, "--level", "STUDY", "--output-dir", "out",
            backend=anyio_backend, cwd=tmp_path,
        )  # fmt: skip
    assert result.returncode == 1
    lines = err(result).strip().splitlines()
    assert len(lines) == 1 and "no accepted presentation context" in lines[0], lines


def _many_classes(n: int) -> list[str]:
    return [arg for i in range(n) for arg in ("--sop-class", f"1.2.3.{i}")]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--sop-class", "CTImage"], "argument --sop-class: 'CTImage' is neither a UID"),
        (["--sop-class", "1.2..3"], "argument --sop-class: '1.2..3' is neither a UID"),
        (["--sop-class", "ImplicitVRLittleEndian"], "is neither a UID"),
        (
            _many_classes(127),
            "argument --sop-class: 127 storage SOP classes do not fit in one association",
        ),
        (["--output-dir", ""], "argument --output-dir: the folder name is empty"),
        (["--output-dir", "afile/sub"], "argument --output-dir: cannot create the folder"),
        (["--output-dir", "afile"], "argument --output-dir: 'afile' is not a folder"),
        (["--layout", "nested"], "argument --layout: invalid choice"),
        (["--on-duplicate", "skip"], "argument --on-duplicate: invalid choice"),
    ],
)
def test_getscu_usage_errors(
    tmp_path: Path, anyio_backend: str, args: list[str], message: str
) -> None:
    (tmp_path / "afile").write_text("a file, not a folder\n")
    result = _getscu_usage(
        free_port(), "--level", "STUDY", *args, backend=anyio_backend, cwd=tmp_path
    )
    assert result.returncode == 2, err(result)
    assert message in err(result), err(result)
    assert "Traceback" not in err(result)


async def test_getscu_126_classes_fit(tmp_path: Path) -> None:
    """126 storage classes plus the GET and FIND contexts are the 128 an association holds:
    not a usage error (the peer is just not there)."""
    result = await _getscu(
        free_port(), "--level", "STUDY", *_many_classes(126), backend="asyncio", cwd=tmp_path
    )
    assert result.returncode == 1, err(result)
    assert "connection refused" in err(result)


async def test_getscu_ctrl_c_cancels(tmp_path: Path, anyio_backend: str) -> None:
    """Ctrl-C while the SCP is still gathering the instances: C-CANCEL-RQ, final Cancel, the
    counts printed, exit status 130."""
    files = write_ct_files(tmp_path / "src", 2, 64)
    gathering = anyio.Event()
    let_go = anyio.Event()
    scp = AE(
        "QRSCP",
        supported_contexts=presets.qr_supported() + presets.storage_supported(scu_role=True),
    )

    @scp.on("C-GET")
    async def on_get(request: Any) -> AsyncIterator[Any]:
        yield files[0]
        gathering.set()
        await let_go.wait()  # a slow database: the rest comes late
        yield files[1]

    stderr = b""
    try:
        async with scp.server() as server:
            args = [
                *CLI, "getscu", "127.0.0.1", str(server.port), "--called-aet", "QRSCP",
                "--level", "STUDY", "--output-dir", "out", "--backend", anyio_backend,
            ]  # fmt: skip
            async with await anyio.open_process(
                args, cwd=tmp_path, env=ENV, stdout=PIPE, stderr=PIPE
            ) as process:
                try:
                    with anyio.fail_after(GUARD):
                        await gathering.wait()
                        process.send_signal(signal.SIGINT)
                        assert process.stdout is not None and process.stderr is not None
                        while b"C-CANCEL sent" not in stderr:
                            stderr += await process.stderr.receive()
                        let_go.set()
                        code = await process.wait()
                        stdout = b"".join([c async for c in process.stdout]).decode()
                        stderr += b"".join([c async for c in process.stderr])
                except BaseException:
                    process.kill()
                    raise
    finally:
        let_go.set()
    assert code == 130, (stdout, stderr.decode())
    (summary,) = stdout.splitlines()
    assert re.fullmatch(
        r"interrupted: C-GET: completed 0, failed 0, warning 0(, remaining \d+)?; "
        r"status 0xFE00 Cancel: operation terminated by cancel; 0 files written to out",
        summary,
    ), summary
    assert b"Traceback" not in stderr


async def test_getscu_discover_proposes_the_classes_and_syntaxes_found(
    tmp_path: Path, anyio_backend: str
) -> None:
    """A study holding an RLE-compressed MR and a CT: with the common classes the MR's context
    gets whichever compressed syntax the SCP prefers, and the archive decompresses the RLE
    instance (lossless: pixel-identical); --discover finds the two classes and their syntaxes
    (Available Transfer Syntax UID) with C-FIND and proposes each pair: the MR comes as
    stored."""
    from samples import sample

    from asyncdicom.archive import Archive, qrscp_config

    rle = pydicom.dcmread(sample("MR_small_RLE.dcm"))
    (ct_path,) = write_ct_files(tmp_path / "src", 1, 64, seed=9)
    ct = pydicom.dcmread(ct_path)
    for ds in (rle, ct):  # one patient, one study
        ds.PatientID = "DISCOVER"
        ds.StudyInstanceUID = "1.2.826.0.1.3680043.10.1234.77"
    rle.SeriesInstanceUID = "1.2.826.0.1.3680043.10.1234.77.1"
    ct.SeriesInstanceUID = "1.2.826.0.1.3680043.10.1234.77.2"
    scp = AE(config=qrscp_config("QRSCP"))
    keys = ("--level", "STUDY", "-k", "StudyInstanceUID=1.2.826.0.1.3680043.10.1234.77")
    async with Archive(tmp_path / "archive") as archive:
        archive.install(scp)
        async with scp.server() as server:
            contexts = [
                (uids.MR_IMAGE_STORAGE, [uids.RLE_LOSSLESS]),
                (uids.CT_IMAGE_STORAGE, [uids.EXPLICIT_VR_LITTLE_ENDIAN]),
            ]
            async with AE("LOADER").associate(
                "127.0.0.1", server.port, called_aet="QRSCP", contexts=contexts
            ) as assoc:
                for ds in (rle, ct):
                    assert (await assoc.store(ds)).status == 0
            plain = await _getscu(
                server.port, *keys, "--output-dir", str(tmp_path / "plain"),
                backend=anyio_backend, cwd=tmp_path,
            )  # fmt: skip
            found = await _getscu(
                server.port, *keys, "--discover", "-v", "--output-dir", str(tmp_path / "found"),
                backend=anyio_backend, cwd=tmp_path,
            )  # fmt: skip
    assert plain.returncode == 0, (out(plain), err(plain))
    assert "completed 2, failed 0" in out(plain)
    mr = pydicom.dcmread(tmp_path / "plain" / f"{rle.SOPInstanceUID}.dcm")
    assert mr.file_meta.TransferSyntaxUID in uids.UNCOMPRESSED_TRANSFER_SYNTAXES
    assert (mr.pixel_array == rle.pixel_array).all()
    assert found.returncode == 0, (out(found), err(found))
    assert "completed 2, failed 0" in out(found)
    assert "--discover found 2 SOP class(es)" in err(found)
    syntaxes = sorted(
        str(pydicom.dcmread(p).file_meta.TransferSyntaxUID) for p in (tmp_path / "found").iterdir()
    )
    assert uids.RLE_LOSSLESS in syntaxes


async def test_getscu_discover_needs_find(tmp_path: Path, anyio_backend: str) -> None:
    files = write_ct_files(tmp_path / "src", 1, 64)
    async with get_scp(files).server() as server:  # no C-FIND handler: 0xC000
        result = await _getscu(
            server.port, "--level", "STUDY", "-k", "StudyInstanceUID=1.2.3", "--discover",
            backend=anyio_backend, cwd=tmp_path,
        )  # fmt: skip
    assert result.returncode == 1
    assert "--discover: the SOP classes could not be listed" in err(result)


@pytest.mark.parametrize(("policy", "written"), [("ignore", 0), ("overwrite", 3), ("unique", 3)])
async def test_getscu_counts_only_the_files_it_wrote(
    tmp_path: Path, anyio_backend: str, policy: str, written: int
) -> None:
    """The instances are in the output folder already: with --on-duplicate ignore none is
    written (it said "3 files written"), the summary says why; the other policies write all."""
    files = write_ct_files(tmp_path / "src", 3, 64)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    for f in files:
        (out_dir / f.name).write_bytes(b"already here")
    async with get_scp(files).server() as server:
        result = await _getscu(
            server.port, "--level", "STUDY", "--output-dir", "out", "--on-duplicate", policy,
            backend=anyio_backend, cwd=tmp_path,
        )  # fmt: skip
    assert result.returncode == 0, (out(result), err(result))
    (summary,) = out(result).splitlines()
    assert summary.startswith("C-GET: completed 3, failed 0, warning 0; status 0x0000"), summary
    if policy == "ignore":
        assert summary.endswith(
            "; 0 files written to out, 3 not written (a file of that name was there: "
            "--on-duplicate ignore)"
        ), summary
        assert all((out_dir / f.name).read_bytes() == b"already here" for f in files)
    else:
        assert summary.endswith(f"; {written} files written to out"), summary
    on_disk = sum(1 for p in out_dir.iterdir() if p.read_bytes() != b"already here")
    assert on_disk == written
