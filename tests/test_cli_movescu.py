"""``asyncdicom movescu`` as a subprocess against an in-process Query/Retrieve SCP (a C-MOVE
handler yielding files the test wrote) and an in-process move destination, both backends:
instances arrive, failure and warning statuses, an unknown destination, usage errors, and
Ctrl-C cancelling a long C-MOVE."""

from __future__ import annotations

import re
import signal
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from subprocess import PIPE
from typing import Any

import anyio
import pytest
from pydicom.dataset import Dataset

from asyncdicom import AE, presets
from asyncdicom.storage.synthetic import write_ct_files
from tests.cli_main import run_main
from tests.test_cli import CLI, ENV, GUARD, err, free_port, out, run_cli, storage_scp

pytestmark = pytest.mark.anyio


def qr_scp(
    items: Sequence[Any],
    *,
    operation: str = "C-MOVE",
    status: Any = None,
    identifiers: list[Dataset] | None = None,
) -> AE:
    """A Query/Retrieve SCP whose ``operation`` handler yields ``items`` (paths, data sets),
    then ``status`` if given (a final status instead of the framework's)."""
    scp = AE(
        "QRSCP",
        supported_contexts=presets.qr_supported() + presets.storage_supported(scu_role=True),
        accept_any_storage=True,
    )

    @scp.on(operation)
    async def retrieve(request: Any) -> AsyncIterator[Any]:
        identifier = await request.dataset()
        if identifiers is not None:
            identifiers.append(identifier)
        for item in items:
            yield item
        if status is not None:
            yield status

    return scp


def uid_of(path: Path) -> str:
    return path.stem  # write_ct_files names each file <SOP Instance UID>.dcm


async def _movescu(port: int, *args: str, backend: str, cwd: Path) -> Any:
    return await run_cli(
        "movescu", "127.0.0.1", str(port), "--called-aet", "QRSCP", "--backend", backend,
        *args, cwd=cwd,
    )  # fmt: skip


def _movescu_usage(port: int, *args: str, backend: str, cwd: Path) -> Any:
    """``_movescu`` for a command-line error: in this process (see tests/cli_main.py)."""
    return run_main(
        "movescu", "127.0.0.1", str(port), "--called-aet", "QRSCP", "--backend", backend,
        *args, cwd=cwd,
    )  # fmt: skip


async def test_movescu_sends_the_instances_to_the_destination(
    tmp_path: Path, anyio_backend: str
) -> None:
    files = write_ct_files(tmp_path / "src", 3, 2000)
    received: list[str] = []
    identifiers: list[Dataset] = []
    qr = qr_scp(files, identifiers=identifiers)
    async with storage_scp(tmp_path / "dest", received).server() as dest, qr.server() as server:
        qr.move_destinations["STORESCP"] = ("127.0.0.1", dest.port)
        result = await _movescu(
            server.port, "--move-dest", "STORESCP", "--level", "study",
            "-k", "StudyInstanceUID=1.2.3.4", "-v", backend=anyio_backend, cwd=tmp_path,
        )  # fmt: skip
    assert result.returncode == 0, (out(result), err(result))
    assert sorted(received) == sorted(uid_of(f) for f in files)
    lines = out(result).splitlines()
    assert lines[-1] == (
        "C-MOVE to STORESCP: completed 3, failed 0, warning 0; status 0x0000 Success: success"
    )
    # -v: one line per Pending response, each with counts that add up to the 3 instances
    progress = [line for line in lines if line.startswith("C-MOVE: remaining")]
    assert progress, lines
    for line in progress:
        counts = [int(n) for n in re.findall(r"\d+", line)]
        assert sum(counts) == 3, line
    (identifier,) = identifiers
    assert identifier.QueryRetrieveLevel == "STUDY"
    assert identifier.StudyInstanceUID == "1.2.3.4"
    assert "Traceback" not in err(result)


async def test_movescu_unknown_destination_is_a801(tmp_path: Path, anyio_backend: str) -> None:
    files = write_ct_files(tmp_path / "src", 1, 100)
    async with qr_scp(files).server() as server:
        result = await _movescu(
            server.port, "--move-dest", "NOWHERE", "--level", "STUDY",
            backend=anyio_backend, cwd=tmp_path,
        )  # fmt: skip
    assert result.returncode == 1
    (summary,) = out(result).splitlines()
    assert summary.startswith(
        "C-MOVE to NOWHERE: completed 0, failed 0, warning 0; "
        "status 0xA801 Failure: refused: move destination unknown"
    ), summary
    (line,) = err(result).splitlines()
    assert line.startswith(
        f"asyncdicom: error: C-MOVE to NOWHERE via 127.0.0.1:{server.port} ended with status "
        "0xA801 Failure: refused: move destination unknown"
    ), line
    assert "no address for the AE title 'NOWHERE' (--move-dest)" in line


@pytest.mark.parametrize(
    ("status", "meaning"),
    [
        (0xA900, "0xA900 Failure: error: identifier does not match SOP class"),
        (0xC000, "0xC000 Failure: error: cannot understand / unable to process"),
    ],
)
async def test_movescu_handler_failure_is_described(
    tmp_path: Path, anyio_backend: str, status: int, meaning: str
) -> None:
    async with qr_scp([], status=status).server() as server:
        result = await _movescu(
            server.port, "--move-dest", "STORESCP", "--level", "STUDY",
            backend=anyio_backend, cwd=tmp_path,
        )  # fmt: skip
    assert result.returncode == 1
    assert f"status {meaning}" in out(result)
    (line,) = err(result).splitlines()
    assert f"ended with status {meaning}" in line, line


async def test_movescu_failed_sub_operations_are_listed(tmp_path: Path, anyio_backend: str) -> None:
    """Some sub-operations fail at the destination: Warning 0xB000, the failed SOP Instance
    UIDs listed, exit status 1."""
    files = write_ct_files(tmp_path / "src", 5, 100)
    refused = {uid_of(files[1]), uid_of(files[3])}
    dest = AE("STORESCP", accept_any_storage=True)

    @dest.on_store
    async def on_store(request: Any) -> int:
        await request.discard()
        return 0xA700 if request.message.affected_sop_instance_uid in refused else 0x0000

    qr = qr_scp(files)
    async with dest.server() as destination, qr.server() as server:
        qr.move_destinations["STORESCP"] = ("127.0.0.1", destination.port)
        result = await _movescu(
            server.port, "--move-dest", "STORESCP", "--level", "STUDY",
            backend=anyio_backend, cwd=tmp_path,
        )  # fmt: skip
    assert result.returncode == 1, err(result)
    summary, *failed = out(result).splitlines()
    assert summary.startswith(
        "C-MOVE to STORESCP: completed 3, failed 2, warning 0; status 0xB000 Warning: warning: "
        "sub-operations complete, one or more failures or warnings"
    ), summary
    assert "coercion" not in summary  # the C-STORE meaning of 0xB000
    assert sorted(failed) == sorted(f"failed SOP Instance UID {uid}" for uid in refused)
    (line,) = err(result).splitlines()
    assert "ended with status 0xB000 Warning" in line and "2 sub-operation(s) failed" in line


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--level", "STUDY"], "the following arguments are required: --move-dest"),
        (["--level", "STUDY", "--move-dest", "A\\B"], "argument --move-dest: 'A\\B'"),
        (["--level", "STUDY", "--move-dest", " "], "argument --move-dest: an AE title must"),
        (["--move-dest", "STORESCP"], "the following arguments are required: --level"),
        (["--move-dest", "X", "--level", "STUDY", "-k", "Nope=1"], "unknown key 'Nope'"),
        (["--move-dest", "X", "--level", "STUDY", "--model", "worklist"], "invalid choice"),
    ],
)
def test_movescu_usage_errors(
    tmp_path: Path, anyio_backend: str, args: list[str], message: str
) -> None:
    result = _movescu_usage(free_port(), *args, backend=anyio_backend, cwd=tmp_path)
    assert result.returncode == 2, err(result)
    assert message in err(result)
    assert "Traceback" not in err(result)


async def test_movescu_ctrl_c_cancels_the_move(tmp_path: Path, anyio_backend: str) -> None:
    """A long C-MOVE to a slow destination, interrupted with SIGINT: movescu sends C-CANCEL-RQ,
    the SCP starts no more sub-operations and answers Cancel with the counts reached, movescu
    prints them and exits with 130."""
    total = 40
    files = write_ct_files(tmp_path / "src", total, 64)
    stored: list[str] = []
    third = anyio.Event()
    let_go = anyio.Event()
    dest = AE("STORESCP", accept_any_storage=True)

    @dest.on_store
    async def on_store(request: Any) -> int:
        stored.append(request.message.affected_sop_instance_uid)
        if len(stored) == 3:
            third.set()
        if len(stored) >= 3:
            await let_go.wait()  # the destination is slow from the 3rd instance on
        await request.discard()
        return 0x0000

    qr = qr_scp(files)
    stderr = b""
    try:
        async with dest.server() as destination, qr.server() as server:
            qr.move_destinations["STORESCP"] = ("127.0.0.1", destination.port)
            args = [
                *CLI, "movescu", "127.0.0.1", str(server.port), "--called-aet", "QRSCP",
                "--move-dest", "STORESCP", "--level", "STUDY", "--backend", anyio_backend,
            ]  # fmt: skip
            async with await anyio.open_process(
                args, cwd=tmp_path, env=ENV, stdout=PIPE, stderr=PIPE
            ) as process:
                try:
                    with anyio.fail_after(GUARD):
                        await third.wait()
                        process.send_signal(signal.SIGINT)
                        assert process.stdout is not None and process.stderr is not None
                        # movescu says so once the C-CANCEL-RQ is written: the SCP has it
                        # before the destination answers again
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
    found = re.fullmatch(
        r"interrupted: C-MOVE to STORESCP: completed (\d+), failed 0, warning 0, "
        r"remaining (\d+); status 0xFE00 Cancel: operation terminated by cancel",
        summary,
    )
    assert found, summary
    completed, remaining = int(found.group(1)), int(found.group(2))
    assert completed == len(stored) >= 3
    assert remaining > 0 and completed + remaining == total
    assert b"Traceback" not in stderr
