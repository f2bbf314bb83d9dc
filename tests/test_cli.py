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
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from subprocess import PIPE, CompletedProcess
from typing import Any

import anyio
import pydicom
import pytest

from asyncdicom import AE
from asyncdicom.cli.output import format_address
from asyncdicom.protocol import uids
from asyncdicom.protocol.codec import decode_pdu, encode_pdu
from asyncdicom.protocol.negotiation import Accepted, AcceptorConfig, SupportedContext, negotiate
from asyncdicom.protocol.pdu import Abort
from asyncdicom.storage.synthetic import write_ct_files
from tests.cli_main import run_main
from tests.harness.launch import CLI as CLI
from tests.harness.launch import REAL_CLI as REAL_CLI

pytestmark = pytest.mark.anyio

# CLI: ``python -m asyncdicom`` through the tests' app server; REAL_CLI: a fresh interpreter
# (tests/harness/launch.py)
#: wide, colourless output for rich; no user configuration leaking in
ENV = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1", "PYTHONWARNINGS": "ignore"}
GUARD = 60.0


async def run_cli(*args: str, cwd: Path) -> CompletedProcess[bytes]:
    with anyio.fail_after(GUARD):
        return await anyio.run_process([*CLI, *args], cwd=cwd, env=ENV, check=False)


@asynccontextmanager
async def app_process(*args: str, cwd: Path) -> AsyncIterator[Any]:
    """``asyncdicom ARGS`` as a running subprocess (stdout and stderr piped), killed if the
    body fails: leaving ``anyio.open_process`` otherwise waits for the process to exit."""
    async with await anyio.open_process(
        [*CLI, *args], cwd=cwd, env=ENV, stdout=PIPE, stderr=PIPE
    ) as process:
        try:
            yield process
        except BaseException:
            process.kill()
            raise


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
    from asyncdicom.storage.reader import read_part10_for_send

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


async def test_echoscu_closed_port_is_one_line_error(tmp_path: Path, anyio_backend: str) -> None:
    port = free_port()
    result = await run_cli(
        "echoscu", "127.0.0.1", str(port), "--backend", anyio_backend, cwd=tmp_path
    )
    assert result.returncode == 1
    assert err(result).splitlines() == [
        f"asyncdicom: error: connection refused by 127.0.0.1:{port}"
    ]


async def test_echoscu_closed_ipv6_port_is_bracketed(tmp_path: Path, anyio_backend: str) -> None:
    if not socket.has_ipv6:
        pytest.fail("this machine has no IPv6 support; the test needs ::1")
    with socket.socket(socket.AF_INET6) as s:
        s.bind(("::1", 0))
        port = int(s.getsockname()[1])  # bound, not listening: connections are refused
        result = await run_cli(
            "echoscu", "::1", str(port), "--backend", anyio_backend, cwd=tmp_path
        )
    assert result.returncode == 1
    assert err(result).splitlines() == [f"asyncdicom: error: connection refused by [::1]:{port}"]


async def test_echoscu_unresolvable_peer_is_named(tmp_path: Path) -> None:
    result = await run_cli("echoscu", "peer.invalid", "104", cwd=tmp_path)
    assert result.returncode == 1
    lines = err(result).splitlines()
    assert len(lines) == 1, err(result)
    assert lines[0].startswith("asyncdicom: error: cannot resolve the peer host 'peer.invalid'")


@pytest.mark.parametrize(
    ("bind", "problem"),
    [("local.invalid", "cannot resolve"), ("192.0.2.1", "cannot use")],
    ids=["unresolvable", "not-local"],
)
async def test_echoscu_bad_bind_address_is_a_usage_error(
    tmp_path: Path, bind: str, problem: str
) -> None:
    """A --bind address that does not resolve, or is not this machine's (192.0.2.0/24 is
    reserved for documentation), is our option's fault, not the peer's: usage error."""
    async with AE("ECHOSCP").server() as server:
        result = await run_cli(
            "echoscu", "127.0.0.1", str(server.port), "--bind", bind, cwd=tmp_path
        )
    assert result.returncode == 2, err(result)
    last = err(result).strip().splitlines()[-1]
    assert last.startswith("asyncdicom echoscu: error: argument --bind:"), last
    assert f"{problem} the local address {bind!r}" in last
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


async def test_echoscu_verbose_prints_each_echo(tmp_path: Path, anyio_backend: str) -> None:
    """A summary line by default; -v adds one line per C-ECHO before it (docs/cli.md)."""
    async with AE("ECHOSCP").server() as server:
        quiet = await run_cli(
            "echoscu", "127.0.0.1", str(server.port), "--repeat", "3",
            "--backend", anyio_backend, cwd=tmp_path,
        )  # fmt: skip
        verbose = await run_cli(
            "echoscu", "127.0.0.1", str(server.port), "--repeat", "3", "-v",
            "--backend", anyio_backend, cwd=tmp_path,
        )  # fmt: skip
    summary = re.compile(rf"C-ECHO 3/3 succeeded with 127\.0\.0\.1:{server.port} in [\d.]+ s")
    assert quiet.returncode == 0, err(quiet)
    assert summary.fullmatch(out(quiet).strip()), out(quiet)
    assert verbose.returncode == 0, err(verbose)
    lines = out(verbose).strip().splitlines()
    assert len(lines) == 4, out(verbose)
    for n, line in enumerate(lines[:3], 1):
        assert re.fullmatch(rf"C-ECHO {n}/3: status 0x0000 \(success\) in [\d.]+ ms", line), line
    assert summary.fullmatch(lines[3]), lines[3]


async def test_echoscu_failure_status_is_reported(tmp_path: Path, anyio_backend: str) -> None:
    scp = AE("ECHOSCP")

    @scp.on_echo
    async def on_echo(request: Any) -> int:
        return 0x0110

    async with scp.server() as server:
        result = await run_cli(
            "echoscu", "127.0.0.1", str(server.port), "--repeat", "2",
            "--backend", anyio_backend, cwd=tmp_path,
        )  # fmt: skip
    assert result.returncode == 1
    assert "0/2 succeeded" in out(result)
    errors = err(result).splitlines()
    assert len(errors) == 2, err(result)
    assert all("0x0110 Failure: processing failure" in line for line in errors), errors


async def test_echoscu_very_verbose_logs_every_dimse_message(
    tmp_path: Path, anyio_backend: str
) -> None:
    """-vv is documented as "every DIMSE message": each request and response is logged."""
    async with AE("ECHOSCP").server() as server:
        result = await run_cli(
            "echoscu", "127.0.0.1", str(server.port), "--repeat", "2", "-vv", "--log-json",
            "--backend", anyio_backend, cwd=tmp_path,
        )  # fmt: skip
    assert result.returncode == 0, err(result)
    records = [json.loads(line) for line in err(result).splitlines() if line.strip()]
    dimse = [
        (r["event"], r["message"])
        for r in records
        if r.get("message") in ("C-ECHO-RQ", "C-ECHO-RSP") and r["level"] == "debug"
    ]
    expected = [("dimse_sent", "C-ECHO-RQ"), ("dimse_received", "C-ECHO-RSP")] * 2
    assert dimse == expected, records


async def test_echoscu_log_json_error_is_json(tmp_path: Path, anyio_backend: str) -> None:
    """With --log-json the app's own error line is a JSON object too."""
    port = free_port()
    result = await run_cli(
        "echoscu", "127.0.0.1", str(port), "--log-json", "--backend", anyio_backend, cwd=tmp_path
    )
    assert result.returncode == 1
    records = [json.loads(line) for line in err(result).splitlines()]
    assert len(records) == 1, err(result)
    assert records[0]["event"] == "cli_error" and records[0]["level"] == "error"
    assert records[0]["message"] == f"connection refused by 127.0.0.1:{port}"


# --------------------------------------------------------------------------- hostile peers


@asynccontextmanager
async def raw_peer(
    behaviour: Callable[[Any], Awaitable[None]],
) -> AsyncIterator[tuple[int, anyio.Event]]:
    """A TCP listener on 127.0.0.1 that runs ``behaviour(stream)`` for each connection.

    Yields (port, an event set once a connection was accepted).
    """
    accepted = anyio.Event()

    async def handle(stream: Any) -> None:
        accepted.set()
        async with stream:
            await behaviour(stream)

    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    async with anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, handle)
        yield listener.extra(anyio.abc.SocketAttribute.local_port), accepted
        tg.cancel_scope.cancel()


async def _never_answer(stream: Any) -> None:
    await anyio.sleep_forever()


async def _read_pdu(stream: Any, buffer: bytearray) -> Any:
    while len(buffer) < 6 or len(buffer) < 6 + struct.unpack_from(">I", buffer, 2)[0]:
        buffer += await stream.receive()
    size = 6 + struct.unpack_from(">I", buffer, 2)[0]
    raw = bytes(buffer[:size])
    del buffer[:size]
    return decode_pdu(raw)


async def _accept(stream: Any, buffer: bytearray) -> None:
    """Answer the A-ASSOCIATE-RQ with an A-ASSOCIATE-AC accepting Verification."""
    config = AcceptorConfig(
        ae_title="ANY-SCP",
        supported=(SupportedContext(uids.VERIFICATION, (uids.IMPLICIT_VR_LITTLE_ENDIAN,)),),
        implementation_class_uid="1.2.3.4",
        require_called_ae_title=False,
    )
    result = negotiate(await _read_pdu(stream, buffer), config)
    assert isinstance(result, Accepted)
    await stream.send(encode_pdu(result.ac))


async def _close_after_accepting(stream: Any) -> None:
    await _accept(stream, bytearray())


async def _close_after_first_request(stream: Any) -> None:
    buffer = bytearray()
    await _accept(stream, buffer)
    await _read_pdu(stream, buffer)  # the first P-DATA-TF of the C-ECHO-RQ


async def _abort_after_first_request(stream: Any) -> None:
    buffer = bytearray()
    await _accept(stream, buffer)
    await _read_pdu(stream, buffer)
    await stream.send(encode_pdu(Abort(source=2, reason=0)))


async def test_echoscu_acse_timeout_bounds_the_wait(tmp_path: Path, anyio_backend: str) -> None:
    """--acse-timeout 0.5 against a peer that accepts the connection and never answers: exit 1
    well before the 30 s default (ARTIM) could play a part."""
    async with raw_peer(_never_answer) as (port, _accepted):
        started = time.monotonic()
        result = await run_cli(
            "echoscu", "127.0.0.1", str(port), "--acse-timeout", "0.5",
            "--backend", anyio_backend, cwd=tmp_path,
        )  # fmt: skip
        elapsed = time.monotonic() - started
    assert result.returncode == 1, err(result)
    # the bound includes starting a Python process, which takes seconds when other test
    # workers share the cores; it is still half of the 30 s default it tells apart from
    assert elapsed < 15.0, f"echoscu --acse-timeout 0.5 took {elapsed:.1f} s"
    lines = err(result).splitlines()
    assert len(lines) == 1 and "within 0.5 s" in lines[0], err(result)


@pytest.mark.parametrize(
    ("behaviour", "expected"),
    [
        (_close_after_accepting, "the peer closed the connection"),
        (_close_after_first_request, "the peer closed the connection"),
        (_abort_after_first_request, "association aborted by the peer"),
    ],
    ids=["closed-at-once", "closed", "aborted"],
)
async def test_echoscu_peer_ending_the_association_is_one_line(
    tmp_path: Path,
    anyio_backend: str,
    behaviour: Callable[[Any], Awaitable[None]],
    expected: str,
) -> None:
    async with raw_peer(behaviour) as (port, _accepted):
        result = await run_cli(
            "echoscu", "127.0.0.1", str(port), "--repeat", "3",
            "--backend", anyio_backend, cwd=tmp_path,
        )  # fmt: skip
    assert result.returncode == 1
    lines = err(result).splitlines()
    assert len(lines) == 1, err(result)
    assert lines[0].startswith("asyncdicom: error: ") and expected in lines[0], lines[0]
    for internal in ("Evt", "Sta1", "aborted locally", "Traceback"):
        assert internal not in lines[0]


async def test_echoscu_ctrl_c_exits_130(tmp_path: Path, anyio_backend: str) -> None:
    async with raw_peer(_never_answer) as (port, accepted):
        args = ["echoscu", "127.0.0.1", str(port), "--backend", anyio_backend]
        async with app_process(*args, cwd=tmp_path) as process:
            with anyio.fail_after(GUARD):
                await accepted.wait()
                process.send_signal(signal.SIGINT)
                code = await process.wait()
                assert process.stderr is not None
                stderr = b"".join([chunk async for chunk in process.stderr])
    assert code == 130, stderr
    assert b"Traceback" not in stderr


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

    async def wait_listening(self, address: str = "127.0.0.1") -> int:
        """Read stderr as it comes until the "listening on ADDRESS:PORT" line (an IPv6 address
        in brackets); return PORT."""
        pattern = re.compile(rb"listening on " + re.escape(address.encode()) + rb":(\d+)")
        with anyio.move_on_after(GUARD):
            while not (match := pattern.search(self.stderr)):
                try:
                    self.stderr += await self.process.stderr.receive()
                except anyio.EndOfStream:
                    pytest.fail(f"storescp exited before listening: {self.stderr!r}")
            return int(match.group(1))
        # leaving ``async with open_process`` waits for the process: it must not outlive this
        self.process.kill()
        pytest.fail(f"storescp did not say it listens on {address}: {self.stderr!r}")

    async def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        with anyio.fail_after(GUARD):
            async for chunk in self.process.stderr:
                self.stderr += chunk
            return int(await self.process.wait())


async def _storescp_round_trip(tmp_path: Path, *output: str) -> tuple[Path, int, bytes]:
    source = write_ct_files(tmp_path / "src", 1, 50_000, seed=8)[0]
    args = ["storescp", "--port", "0", "--host", "127.0.0.1", "--aet", "STORESCP", *output]
    async with app_process(*args, cwd=tmp_path / "cwd") as process:
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


async def test_storescp_ipv6_listen_line_is_bracketed(tmp_path: Path) -> None:
    if not socket.has_ipv6:
        pytest.fail("this machine has no IPv6 support; the test needs ::1")
    args = ["storescp", "--port", "0", "--host", "::1", "--ignore"]
    async with app_process(*args, cwd=tmp_path) as process:
        scp = StoreSCPProcess(process)
        port = await scp.wait_listening("[::1]")
        with anyio.fail_after(GUARD):
            async with AE("SCU").associate(
                "::1", port, called_aet="STORESCP", contexts=[uids.VERIFICATION]
            ) as assoc:
                assert (await assoc.echo()).status == 0x0000
        assert await scp.stop() == 0


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
def test_usage_errors_exit_2(args: list[str], tmp_path: Path) -> None:
    result = run_main(*args, cwd=tmp_path)
    assert result.returncode == 2, (out(result), err(result))
    assert "usage:" in err(result)
    assert list(tmp_path.iterdir()) == []


_ECHO = ["echoscu", "127.0.0.1", "104"]
_STORE = ["storescu", "127.0.0.1", "104", "file.dcm"]


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (["echoscu", "127.0.0.1", "99999"], "PORT"),
        (["echoscu", "127.0.0.1", "-5"], "PORT"),
        (["echoscu", "127.0.0.1", "0"], "PORT"),
        (["echoscu", "127.0.0.1", "port"], "PORT"),
        ([*_ECHO, "--repeat", "-3"], "--repeat"),
        ([*_ECHO, "--repeat", "0"], "--repeat"),
        ([*_ECHO, "--max-pdu", "0"], "--max-pdu"),
        ([*_ECHO, "--max-pdu", "100"], "--max-pdu"),
        ([*_ECHO, "--max-pdu", str(2**31)], "--max-pdu"),
        ([*_ECHO, "--acse-timeout", "-1"], "--acse-timeout"),
        ([*_ECHO, "--dimse-timeout", "0"], "--dimse-timeout"),
        ([*_ECHO, "--connect-timeout", "nan"], "--connect-timeout"),
        ([*_ECHO, "--aet", ""], "--aet"),
        ([*_ECHO, "--aet", "   "], "--aet"),
        ([*_ECHO, "--aet", "SEVENTEEN-CHARS-X"], "--aet"),
        ([*_ECHO, "--called-aet", "A\\B"], "--called-aet"),
        ([*_ECHO, "--called-aet", "TAB\tAE"], "--called-aet"),
        ([*_ECHO, "--called-aet", "ÄE"], "--called-aet"),
        ([*_STORE, "--max-pdu", "0"], "--max-pdu"),
        ([*_STORE, "--acse-timeout", "-2"], "--acse-timeout"),
        (["storescu", "127.0.0.1", "70000", "file.dcm"], "PORT"),
    ],
    ids=lambda v: " ".join(v) if isinstance(v, list) else v,
)
def test_bad_option_values_are_usage_errors(args: list[str], option: str, tmp_path: Path) -> None:
    """Exit 2 with argparse's usage line and one error that names the option, not an internal
    field (``max_pdu_length must be ...``), and no traceback."""
    result = run_main(*args, cwd=tmp_path)
    assert result.returncode == 2, (out(result), err(result))
    text = err(result)
    assert text.startswith("usage: asyncdicom"), text
    last = text.strip().splitlines()[-1]
    assert re.match(rf"asyncdicom \w+: error: argument {re.escape(option)}: ", last), last
    assert "Traceback" not in text and "max_pdu_length" not in text
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("command", ["echoscu", "storescu", "storescp"])
def test_help_shows_defaults(command: str, tmp_path: Path) -> None:
    result = run_main(command, "--help", cwd=tmp_path)
    assert result.returncode == 0, err(result)
    text = " ".join(out(result).split())  # undo argparse's line wrapping
    assert "--max-pdu BYTES" in text and "1024..134217728 bytes (default: 262144)" in text
    assert re.search(r"--acse-timeout S .*\(default: 30(\.0)?\)", text), text
    assert re.search(r"--dimse-timeout S .*\(default: 60(\.0)?\)", text), text
    assert "(default: asyncio)" in text
    if command != "storescp":
        assert re.search(r"--aet A .*\(default: ASYNCDICOM\)", text), text
        assert re.search(r"--called-aet C .*\(default: ANY-SCP\)", text), text
        assert "(default: None)" not in text and "(default: False)" not in text


def test_format_address() -> None:
    assert format_address("::1", 41761) == "[::1]:41761"
    assert format_address("fe80::1%eth0", 104) == "[fe80::1%eth0]:104"
    assert format_address("127.0.0.1", 104) == "127.0.0.1:104"
    assert format_address("pacs.example.org", 11112) == "pacs.example.org:11112"


# --------------------------------------------------------------------------- demo


async def test_demo(tmp_path: Path, anyio_backend: str) -> None:
    result = await run_cli("demo", "--backend", anyio_backend, cwd=tmp_path)
    assert result.returncode == 0, (out(result), err(result))
    text = out(result)
    assert f"demo ({anyio_backend})" in text
    assert "C-ECHO" in text and text.count("C-STORE") >= 3
    # the studies found are retrieved: every stored file comes back (C-GET) and reaches the
    # move destination (C-MOVE)
    stored = re.search(r"the SCP wrote (\d+) files", text)
    assert stored, text
    assert re.search(
        rf"C-GET .*{stored[1]} completed, 0 failed; 0x0000 Success; {stored[1]} files written",
        text,
    ), text
    assert re.search(
        rf"C-MOVE .* to DEMO-DEST .*{stored[1]} completed, 0 failed; 0x0000 Success; "
        rf"DEMO-DEST received {stored[1]}",
        text,
    ), text
    # storage commitment of the stored instances, answered on the same association
    assert re.search(
        r"N-ACTION .*Storage Commitment .*?(\d+) committed, 0 failed; event type 1", text
    ), text
    # Instance Availability Notification: one N-CREATE per study, every stored instance ONLINE
    notified = re.search(
        r"N-CREATE .*Instance Availability.*?(\d+) notifications; (\d+) instances ONLINE; "
        r"0x0000 Success",
        text,
    )
    assert notified, text
    assert notified[2] == stored[1], text
    # the C-GET wrote a media layout with its DICOMDIR, which lists every instance whose record
    # keys are there; the C-MOVE destination takes only uncompressed syntaxes, so the two
    # compressed samples (JPEG2000.dcm, MR_small_RLE.dcm) are converted by the C-MOVE SCP
    assert re.search(r"DICOMDIR .*Media Storage Directory .* lists [1-9]\d* instances", text), text
    assert re.search(r"C-MOVE .*uncompressed only: 2 converted", text), text
    assert "all good" in text


async def test_storescp_listens_with_a_timeout_configuration(tmp_path: Path) -> None:
    """storescp passes its timeouts on: ARTIM (= --acse-timeout 0.3) closes a silent connection
    within a bound far below the 30 s default, so the test fails if the option is ignored."""
    (tmp_path / "cwd").mkdir()
    args = ["storescp", "--port", "0", "--host", "127.0.0.1", "--ignore", "--acse-timeout", "0.3"]
    async with app_process(*args, cwd=tmp_path / "cwd") as process:
        scp = StoreSCPProcess(process)
        port = await scp.wait_listening()
        async with await anyio.connect_tcp("127.0.0.1", port) as stream:
            started = time.monotonic()
            with (
                anyio.fail_after(5.0),
                pytest.raises((anyio.EndOfStream, anyio.BrokenResourceError)),
            ):
                await stream.receive()
            elapsed = time.monotonic() - started
        assert 0.25 <= elapsed < 5.0, elapsed
        assert await scp.stop() == 0
