"""The ``asyncdicom`` command, run as a subprocess (``python -m asyncdicom``).

Peers are in-process AEs: the test's event loop serves them while the subprocess runs (it is
awaited with :func:`anyio.run_process`, which does not block the loop).  Exit statuses follow
the CLI contract: 0 full success, 1 an operation failed, 2 usage error.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import sys
from pathlib import Path
from subprocess import PIPE, CompletedProcess
from typing import Any

import anyio
import pydicom
import pytest

from asyncdicom import AE
from asyncdicom.protocol import uids
from asyncdicom.storage.synthetic import write_ct_files

pytestmark = pytest.mark.anyio

CLI = [sys.executable, "-m", "asyncdicom"]
#: wide, colourless output for rich; no user configuration leaking in
ENV = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1", "PYTHONWARNINGS": "ignore"}
GUARD = 60.0


async def run_cli(*args: str, cwd: Path) -> CompletedProcess[bytes]:
    with anyio.fail_after(GUARD):
        return await anyio.run_process([*CLI, *args], cwd=cwd, env=ENV, check=False)


def out(result: CompletedProcess[bytes]) -> str:
    return result.stdout.decode()


def err(result: CompletedProcess[bytes]) -> str:
    return result.stderr.decode()


def free_port() -> int:
    """A port nobody listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def storage_scp(folder: Path, received: list[str] | None = None) -> AE:
    scp = AE("STORESCP", accept_any_storage=True)

    @scp.on_store
    async def on_store(request: Any) -> int:
        await request.save_to(folder)
        if received is not None:
            received.append(request.message.affected_sop_instance_uid)
        return 0x0000

    return scp


def dataset_bytes(path: Path) -> bytes:
    """The data set of a Part 10 file, after its File Meta Information."""
    from asyncdicom.storage.files import read_part10_for_send

    return read_part10_for_send(path).read_bytes()


# --------------------------------------------------------------------------- echoscu


async def test_echoscu_repeat(tmp_path: Path, anyio_backend: str) -> None:
    scp = AE("ECHOSCP")
    calls: list[str] = []

    @scp.on_echo
    async def on_echo(request: Any) -> int:
        calls.append(request.association.calling_ae_title)
        return 0x0000

    async with scp.server() as server:
        # the CLI runs on the same backend as this test's loop (both are covered)
        result = await run_cli(
            "echoscu", "127.0.0.1", str(server.port), "--called-aet", "ECHOSCP",
            "--aet", "CLI-SCU", "--repeat", "3", "--backend", anyio_backend,
            cwd=tmp_path,
        )  # fmt: skip
    assert result.returncode == 0, err(result)
    assert "3/3" in out(result)
    assert calls == ["CLI-SCU"] * 3


async def test_echoscu_closed_port_is_one_line_error(tmp_path: Path) -> None:
    result = await run_cli("echoscu", "127.0.0.1", str(free_port()), cwd=tmp_path)
    assert result.returncode == 1
    lines = err(result).strip().splitlines()
    assert len(lines) == 1, err(result)
    assert lines[0].startswith("asyncdicom: error:") and "connect" in lines[0]
    assert "Traceback" not in err(result)


async def test_echoscu_called_ae_rejected(tmp_path: Path) -> None:
    scp = AE("ECHOSCP", require_called_ae_title=True)
    async with scp.server() as server:
        result = await run_cli(
            "echoscu", "127.0.0.1", str(server.port), "--called-aet", "WRONG", cwd=tmp_path
        )
    assert result.returncode == 1
    assert "Traceback" not in err(result)
    assert "rejected" in err(result) and "called AE title not recognized" in err(result)


async def test_echoscu_verbose_logs_to_stderr(tmp_path: Path) -> None:
    async with AE("ECHOSCP").server() as server:
        result = await run_cli(
            "echoscu", "127.0.0.1", str(server.port), "-v", "--backend", "trio", cwd=tmp_path
        )
    assert result.returncode == 0, err(result)
    assert "association_accepted" in err(result)
    assert "1/1" in out(result)


async def test_echoscu_log_json(tmp_path: Path) -> None:
    async with AE("ECHOSCP").server() as server:
        result = await run_cli(
            "echoscu", "127.0.0.1", str(server.port), "-v", "--log-json", cwd=tmp_path
        )
    assert result.returncode == 0, err(result)
    lines = [line for line in err(result).splitlines() if line.strip()]
    assert lines, "no log lines on stderr"
    records = [json.loads(line) for line in lines]  # every line is one JSON object
    events = {r["event"] for r in records}
    assert "association_accepted" in events
    assert all(r["level"] in ("info", "warning", "error", "debug") for r in records)


# --------------------------------------------------------------------------- storescu


async def test_storescu_counts_sent_and_failed(tmp_path: Path) -> None:
    source = tmp_path / "in"
    files = write_ct_files(source, 4, 4000)
    (source / "notes.txt").write_text("not DICOM at all\n")
    received_dir = tmp_path / "out"
    received: list[str] = []
    async with storage_scp(received_dir, received).server() as server:
        result = await run_cli(
            "storescu", "127.0.0.1", str(server.port), str(source),
            "--called-aet", "STORESCP", "--concurrency", "2",
            cwd=tmp_path,
        )  # fmt: skip
    assert result.returncode == 1, (out(result), err(result))
    assert re.search(r"\bsent 4, failed 1\b", out(result)), out(result)
    assert "notes.txt" in err(result) and "Traceback" not in err(result)
    assert sorted(received) == sorted(p.stem for p in files)
    assert sorted(p.name for p in received_dir.iterdir()) == sorted(p.name for p in files)


async def test_storescu_valid_files_arrive(tmp_path: Path) -> None:
    source = tmp_path / "in"
    files = write_ct_files(source, 3, 20_000, seed=4)
    received_dir = tmp_path / "out"
    async with storage_scp(received_dir).server() as server:
        result = await run_cli(
            "storescu", "127.0.0.1", str(server.port), *map(str, files),
            "--called-aet", "STORESCP", "--concurrency", "2",
            cwd=tmp_path,
        )  # fmt: skip
    assert result.returncode == 0, (out(result), err(result))
    assert re.search(r"\bsent 3, failed 0\b", out(result)), out(result)
    for f in files:
        got = received_dir / f.name
        assert dataset_bytes(got) == dataset_bytes(f)
        assert pydicom.dcmread(got).SOPInstanceUID == f.stem


# --------------------------------------------------------------------------- storescp


class StoreSCPProcess:
    """``asyncdicom storescp`` in a subprocess; knows its port once it said it listens."""

    def __init__(self, process: Any) -> None:
        self.process = process
        self.stderr = b""

    async def wait_listening(self) -> int:
        """Read stderr as it comes until the "listening on HOST:PORT" line; return PORT."""
        pattern = re.compile(rb"listening on 127\.0\.0\.1:(\d+)")
        with anyio.fail_after(GUARD):
            while not (match := pattern.search(self.stderr)):
                try:
                    self.stderr += await self.process.stderr.receive()
                except anyio.EndOfStream:
                    pytest.fail(f"storescp exited before listening: {self.stderr!r}")
        return int(match.group(1))

    async def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        with anyio.fail_after(GUARD):
            async for chunk in self.process.stderr:
                self.stderr += chunk
            return int(await self.process.wait())


async def _storescp_round_trip(tmp_path: Path, *output: str) -> tuple[Path, int, bytes]:
    source = write_ct_files(tmp_path / "src", 1, 50_000, seed=8)[0]
    args = [*CLI, "storescp", "--port", "0", "--host", "127.0.0.1", "--aet", "STORESCP", *output]
    async with await anyio.open_process(
        args, cwd=tmp_path / "cwd", env=ENV, stdout=PIPE, stderr=PIPE
    ) as process:
        scp = StoreSCPProcess(process)
        port = await scp.wait_listening()
        scu = AE("SCU")
        contexts = [(uids.CT_IMAGE_STORAGE, [uids.EXPLICIT_VR_LITTLE_ENDIAN])]
        with anyio.fail_after(GUARD):
            async with scu.associate(
                "127.0.0.1", port, called_aet="STORESCP", contexts=contexts
            ) as assoc:
                assert (await assoc.store(source)).status == 0x0000
        code = await scp.stop()
    return source, code, scp.stderr


async def test_storescp_output_dir(tmp_path: Path) -> None:
    (tmp_path / "cwd").mkdir()
    source, code, stderr = await _storescp_round_trip(tmp_path, "--output-dir", "incoming")
    assert code == 0, stderr
    assert b"Traceback" not in stderr
    written = tmp_path / "cwd" / "incoming" / source.name
    assert [p.name for p in written.parent.iterdir()] == [source.name]
    assert dataset_bytes(written) == dataset_bytes(source)
    assert pydicom.dcmread(written).file_meta.MediaStorageSOPInstanceUID == source.stem


async def test_storescp_ignore(tmp_path: Path) -> None:
    (tmp_path / "cwd").mkdir()
    _source, code, stderr = await _storescp_round_trip(tmp_path, "--ignore")
    assert code == 0, stderr
    assert list((tmp_path / "cwd").iterdir()) == [], "--ignore wrote something"


# --------------------------------------------------------------------------- usage


@pytest.mark.parametrize(
    "args",
    [
        ["echoscu"],
        ["echoscu", "127.0.0.1"],
        ["storescu", "127.0.0.1", "104"],
        ["storescp", "--output-dir", "x"],
        ["storescp", "--port", "11112"],
        ["storescp", "--port", "11112", "--output-dir", "x", "--ignore"],
        ["echoscu", "127.0.0.1", "104", "--backend", "curio"],
        [],
    ],
    ids=lambda a: " ".join(a) or "no-command",
)
async def test_usage_errors_exit_2(args: list[str], tmp_path: Path) -> None:
    result = await run_cli(*args, cwd=tmp_path)
    assert result.returncode == 2, (out(result), err(result))
    assert "usage:" in err(result)
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- demo


async def test_demo(tmp_path: Path, anyio_backend: str) -> None:
    result = await run_cli("demo", "--backend", anyio_backend, cwd=tmp_path)
    assert result.returncode == 0, (out(result), err(result))
    text = out(result)
    assert f"demo ({anyio_backend})" in text
    assert "C-ECHO" in text and text.count("C-STORE") >= 3
    assert "all good" in text


async def test_storescp_listens_with_a_timeout_configuration(tmp_path: Path) -> None:
    """storescp passes its timeouts on: ARTIM (= --acse-timeout) closes a silent connection."""
    (tmp_path / "cwd").mkdir()
    args = [*CLI, "storescp", "--port", "0", "--host", "127.0.0.1", "--ignore"]
    async with await anyio.open_process(
        [*args, "--acse-timeout", "0.3"], cwd=tmp_path / "cwd", env=ENV, stdout=PIPE, stderr=PIPE
    ) as process:
        scp = StoreSCPProcess(process)
        port = await scp.wait_listening()
        with anyio.fail_after(GUARD):
            async with await anyio.connect_tcp("127.0.0.1", port) as stream:
                with pytest.raises((anyio.EndOfStream, anyio.BrokenResourceError)):
                    await stream.receive()
        assert await scp.stop() == 0
