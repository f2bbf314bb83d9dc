"""``asyncdicom stgcmtscu`` run as a subprocess, on both backends, against an in-process Storage
Commitment SCP (asyncdicom.services.commitment.CommitmentSCP): committed and failed instances,
the report on the same association and on a new one (``--listen-port``), a report that does not
come in time, files that are not DICOM, usage errors.  (Against ``asyncdicom qrscp``: see
tests/test_cli_qrscp.py.)"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from pydicom import dcmread
from test_cli import err, free_port, out, run_cli

from asyncdicom import AE, presets
from asyncdicom.services.commitment import CommitmentSCP
from asyncdicom.storage.synthetic import write_ct_files
from tests.cli_main import run_main

pytestmark = [pytest.mark.anyio, pytest.mark.filterwarnings("ignore::UserWarning")]

GUARD = 60.0


def uids_of(files: list[Path]) -> list[str]:
    return [str(dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files]


def holding(stored: set[str]) -> Callable[[list[tuple[str, str]]], dict[str, int]]:
    def check(references: list[tuple[str, str]]) -> dict[str, int]:
        return {uid: 0x0112 for _cls, uid in references if uid not in stored}

    return check


@asynccontextmanager
async def commitment_scp(check: Any, **options: Any) -> AsyncIterator[tuple[int, CommitmentSCP]]:
    """A Storage Commitment SCP (AE title COMMIT-SCP) on 127.0.0.1: (port, the CommitmentSCP)."""
    ae = AE("COMMIT-SCP", supported_contexts=presets.storage_commitment_scp_supported())
    async with CommitmentSCP(ae, check, **options) as scp, ae.server("127.0.0.1", 0) as server:
        yield server.port, scp
        scp.stop(cancel=True)


def stgcmtscu(port: int, backend: str, *args: str) -> list[str]:
    return [
        "stgcmtscu", "127.0.0.1", str(port), "--called-aet", "COMMIT-SCP", "--aet", "STGCMTSCU",
        "--backend", backend, *args,
    ]  # fmt: skip


async def test_three_committed_one_failed(tmp_path: Path, anyio_backend: str) -> None:
    files = write_ct_files(tmp_path / "src", 4, 1000, seed=3)
    uids = uids_of(files)
    with anyio.fail_after(GUARD):
        async with commitment_scp(holding(set(uids[:3]))) as (port, scp):
            result = await run_cli(*stgcmtscu(port, anyio_backend, "src"), cwd=tmp_path)
    assert result.returncode == 1, (out(result), err(result))
    lines = err(result).splitlines()
    assert lines == [
        f"asyncdicom: error: {files[3].relative_to(tmp_path)}: not committed: 0x0112 "
        f"(no such object instance) (SOP Instance UID {uids[3]})"
    ], lines
    assert out(result).startswith("committed 3 of 4 instances, failed 1; transaction ")
    assert "reported by COMMIT-SCP" in out(result)
    assert [how for _t, _e, how in scp.reports] == ["same"]


async def test_all_committed_exits_0(tmp_path: Path, anyio_backend: str) -> None:
    files = write_ct_files(tmp_path / "src", 2, 1000, seed=4)
    with anyio.fail_after(GUARD):
        async with commitment_scp(holding(set(uids_of(files)))) as (port, _scp):
            result = await run_cli(
                *stgcmtscu(port, anyio_backend, str(files[0]), str(files[1])), cwd=tmp_path
            )
    assert result.returncode == 0, (out(result), err(result))
    assert err(result) == ""
    assert out(result).startswith("committed 2 of 2 instances, failed 0; ")


async def test_report_on_a_new_association(tmp_path: Path, anyio_backend: str) -> None:
    files = write_ct_files(tmp_path / "src", 3, 1000, seed=5)
    listen = free_port()
    peers = {"STGCMTSCU": ("127.0.0.1", listen)}
    with anyio.fail_after(GUARD):
        async with commitment_scp(
            holding(set(uids_of(files))), peers=peers, always_new_association=True
        ) as (port, scp):
            result = await run_cli(
                *stgcmtscu(port, anyio_backend, "src", "--listen-port", str(listen),
                           "--listen-host", "127.0.0.1"),
                cwd=tmp_path,
            )  # fmt: skip
    assert result.returncode == 0, (out(result), err(result))
    assert f"STGCMTSCU listening on 127.0.0.1:{listen}" in err(result)
    assert out(result).startswith("committed 3 of 3 instances, failed 0; ")
    assert [how for _t, _e, how in scp.reports] == ["new"]


async def test_no_report_in_time_is_one_line_and_exit_1(tmp_path: Path, anyio_backend: str) -> None:
    write_ct_files(tmp_path / "src", 1, 1000, seed=6)
    never = anyio.Event()

    async def check(references: list[tuple[str, str]]) -> Mapping[str, int]:
        await never.wait()
        return {}

    with anyio.fail_after(GUARD):
        async with commitment_scp(check) as (port, _scp):
            started = time.monotonic()
            result = await run_cli(
                *stgcmtscu(port, anyio_backend, "src", "--timeout", "0.5"), cwd=tmp_path
            )
            elapsed = time.monotonic() - started
    assert result.returncode == 1, (out(result), err(result))
    assert err(result).splitlines() == [
        "asyncdicom: error: no storage commitment report from 127.0.0.1:"
        f"{port} within 0.5 s (--timeout) (if the peer reports on a new association, give "
        "--listen-port)"
    ]
    assert out(result) == ""
    assert elapsed < 20, elapsed


async def test_a_file_that_is_not_dicom_fails_the_run(tmp_path: Path, anyio_backend: str) -> None:
    files = write_ct_files(tmp_path / "src", 2, 1000, seed=7)
    (tmp_path / "src" / "notes.txt").write_text("not DICOM")
    with anyio.fail_after(GUARD):
        async with commitment_scp(holding(set(uids_of(files)))) as (port, _scp):
            result = await run_cli(*stgcmtscu(port, anyio_backend, "src"), cwd=tmp_path)
    assert result.returncode == 1, (out(result), err(result))
    assert err(result).splitlines() == [
        "asyncdicom: error: src/notes.txt: not a DICOM file (no DICM prefix)"
    ]
    assert out(result).startswith("committed 2 of 2 instances, failed 0; ")


async def test_refused_request_is_one_line(tmp_path: Path, anyio_backend: str) -> None:
    write_ct_files(tmp_path / "src", 1, 1000, seed=8)
    ae = AE("COMMIT-SCP", supported_contexts=presets.storage_commitment_scp_supported())
    with anyio.fail_after(GUARD):
        async with ae.server("127.0.0.1", 0) as server:  # no CommitmentSCP: 0x0110
            result = await run_cli(*stgcmtscu(server.port, anyio_backend, "src"), cwd=tmp_path)
    assert result.returncode == 1
    (line,) = err(result).splitlines()
    assert line.startswith(
        f"asyncdicom: error: 127.0.0.1:{server.port} refused the storage commitment request: "
        "N-ACTION-RSP 0x0110"
    ), line


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["127.0.0.1", "104", "x.dcm"], "the following arguments are required: --called-aet"),
        (["127.0.0.1", "104", "--called-aet", "C"], "the following arguments are required: FILE"),
        (["127.0.0.1", "104", "x.dcm", "--called-aet", "C", "--timeout", "0"], "--timeout"),
        (["127.0.0.1", "104", "x.dcm", "--called-aet", "C", "--listen-port", "70000"], "1..65535"),
    ],
)
def test_usage_errors_exit_2(tmp_path: Path, args: list[str], message: str) -> None:
    result = run_main("stgcmtscu", *args, cwd=tmp_path)
    assert result.returncode == 2, err(result)
    assert message in err(result).splitlines()[-1], err(result)


async def test_missing_file_is_one_line(tmp_path: Path) -> None:
    result = await run_cli(
        "stgcmtscu", "127.0.0.1", "104", "nothing.dcm", "--called-aet", "C", cwd=tmp_path
    )
    assert result.returncode == 1
    assert err(result).splitlines() == ["asyncdicom: error: no such file or folder: nothing.dcm"]
