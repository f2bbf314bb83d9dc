"""``asyncdicom storescu`` and ``asyncdicom demo`` as a user meets them, run as subprocesses.

Peers are in-process AEs served by the test's event loop (or ``asyncdicom storescp`` in a
subprocess); every test runs on asyncio and trio (the CLI is given the test's backend).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from subprocess import PIPE, CompletedProcess
from typing import Any

import anyio
import pydicom.data
import pytest
from test_cli import CLI, ENV, GUARD, REAL_CLI, StoreSCPProcess, err, out, run_cli

from asyncdicom import AE
from asyncdicom.cli import demo
from asyncdicom.cli.main import build_parser
from asyncdicom.protocol import uids
from asyncdicom.storage.synthetic import write_ct_files
from tests.cli_main import run_main

pytestmark = pytest.mark.anyio

SAMPLES = Path(pydicom.data.__file__).parent / "test_files"


def storescu(port: int, *args: str, backend: str) -> list[str]:
    return ["storescu", "127.0.0.1", str(port), *args, "--backend", backend]


def error_lines(result: CompletedProcess[bytes]) -> list[str]:
    return [line for line in err(result).splitlines() if line.startswith("asyncdicom: error: ")]


def counting_scp(received: list[str], **config: Any) -> AE:
    """An SCP that accepts every storage SOP class, discards the data and records each UID."""
    scp = AE("STORESCP", accept_any_storage=True, **config)

    @scp.on_store
    async def on_store(request: Any) -> int:
        await request.discard()
        received.append(request.message.affected_sop_instance_uid)
        return 0x0000

    return scp


@pytest.fixture(scope="module")
def thousand_files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """1000 small synthetic CT files (written once for the module)."""
    return write_ct_files(tmp_path_factory.mktemp("thousand"), 1000, 64)


# --------------------------------------------------------------------------- failing associations


async def test_limited_peer_receives_every_file(
    tmp_path: Path, anyio_backend: str, thousand_files: list[Path]
) -> None:
    """--concurrency 4 to a peer that allows 3 associations: the 4th is rejected, and the 3
    others send its share; every file arrives once, exit 0."""
    received: list[str] = []
    async with counting_scp(received, max_associations=3).server() as server:
        result = await run_cli(
            *storescu(server.port, str(thousand_files[0].parent), "--concurrency", "4",
                      backend=anyio_backend),
            cwd=tmp_path,
        )  # fmt: skip
    assert result.returncode == 0, (out(result), err(result)[-3000:])
    assert re.match(r"sent 1000, failed 0;", out(result)), out(result)
    assert Counter(received) == Counter(p.stem for p in thousand_files)
    assert "Traceback" not in err(result)


async def test_associations_a_peer_leaves_waiting_are_given_up_when_all_is_sent(
    tmp_path: Path, anyio_backend: str
) -> None:
    """A peer that serves one association and leaves the other connections unanswered (its
    listen queue): once the first association has stored every file, storescu stops waiting
    for the others instead of running into the ACSE timeout (20 s here)."""
    files = write_ct_files(tmp_path / "in", 12, 64)
    received: list[str] = []
    scp = counting_scp(received)
    held: list[Any] = []
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    port = int(listener.extra(anyio.abc.SocketAttribute.local_port))

    async def serve_first_only(stream: Any) -> None:
        held.append(stream)
        if len(held) == 1:
            await scp.serve_stream(stream)
        else:
            await anyio.sleep_forever()  # accepted by TCP, never answered

    async with anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, serve_first_only)
        started = anyio.current_time()
        result = await run_cli(
            *storescu(port, str(tmp_path / "in"), "--concurrency", "3", "--acse-timeout", "20",
                      backend=anyio_backend),
            cwd=tmp_path,
        )  # fmt: skip
        elapsed = anyio.current_time() - started
        tg.cancel_scope.cancel()
    assert result.returncode == 0, err(result)
    assert re.match(r"sent 12, failed 0;", out(result)), out(result)
    assert Counter(received) == Counter(p.stem for p in files)
    assert len(held) == 3  # the two other workers did connect
    assert "could not be opened" not in err(result), err(result)
    assert elapsed < 10, f"{elapsed:.1f} s: storescu waited for associations it did not need"


async def test_storescp_limited_to_3_associations_stores_all_1000(
    tmp_path: Path, anyio_backend: str, thousand_files: list[Path]
) -> None:
    """The issue's case with our own storescp: --max-associations 3, storescu --concurrency 4
    of 1000 files stores all 1000 and exits 0."""
    (tmp_path / "cwd").mkdir()
    args = [
        *CLI, "storescp", "--port", "0", "--host", "127.0.0.1", "--max-associations", "3",
        "--output-dir", "incoming", "--backend", anyio_backend,
    ]  # fmt: skip
    async with await anyio.open_process(
        args, cwd=tmp_path / "cwd", env=ENV, stdout=PIPE, stderr=PIPE
    ) as process:
        scp = StoreSCPProcess(process)
        port = await scp.wait_listening()
        # storescp writes many lines on stderr: keep reading them so that it never blocks
        async with anyio.create_task_group() as tg:
            tg.start_soon(_drain, process.stderr)
            result = await run_cli(
                *storescu(port, str(thousand_files[0].parent), "--concurrency", "4",
                          "--called-aet", "STORESCP", backend=anyio_backend),
                cwd=tmp_path,
            )  # fmt: skip
            tg.cancel_scope.cancel()
        process.send_signal(signal.SIGTERM)
        with anyio.fail_after(GUARD):
            await process.wait()
    assert result.returncode == 0, (out(result), err(result)[-3000:])
    assert re.match(r"sent 1000, failed 0;", out(result)), out(result)
    stored = sorted(p.name for p in (tmp_path / "cwd" / "incoming").iterdir())
    assert stored == sorted(p.name for p in thousand_files)


async def _drain(stream: Any) -> None:
    async for _chunk in stream:
        pass


async def test_peer_rejecting_every_association_lists_each_file(
    tmp_path: Path, anyio_backend: str
) -> None:
    files = write_ct_files(tmp_path / "in", 30, 64)
    scp = AE("STORESCP", accept_any_storage=True, require_called_ae_title=True)
    async with scp.server() as server:
        args = storescu(
            server.port, str(tmp_path / "in"), "--called-aet", "WRONG", "--concurrency", "4",
            backend=anyio_backend,
        )  # fmt: skip
        result = await run_cli(*args, cwd=tmp_path)
        everything = await run_cli(*args, "--show-all-errors", cwd=tmp_path)
    for res in (result, everything):
        assert res.returncode == 1, err(res)
        assert re.match(r"sent 0, failed 30;", out(res)), out(res)
        assert "Traceback" not in err(res)
    lines = error_lines(result)
    assert lines[0].startswith("asyncdicom: error: 4 associations could not be opened: ")
    assert "called AE title not recognized" in lines[0]
    listed = [line for line in lines if ".dcm: not sent: association rejected" in line]
    assert len(listed) == 20, lines
    assert lines[-1] == (
        "asyncdicom: error: ... and 10 more not listed (--show-all-errors lists them all)"
    )
    all_listed = [
        line for line in error_lines(everything) if ".dcm: not sent: association rejected" in line
    ]
    assert sorted(all_listed) == sorted(
        f"asyncdicom: error: {f}: not sent: association rejected (permanent) by service-user, "
        "reason 7: called AE title not recognized"
        for f in files
    )


def _aborting_scp(received: list[str], requests: list[str], abort_when: Any) -> AE:
    """An SCP that aborts the association when ``abort_when(uid, n)`` is true (``n``: the
    request's number on its association, from 1)."""
    scp = AE("STORESCP", accept_any_storage=True)
    per_association: Counter[int] = Counter()

    @scp.on_store
    async def on_store(request: Any) -> int:
        uid = request.message.affected_sop_instance_uid
        requests.append(uid)
        per_association[id(request.association)] += 1
        if abort_when(uid, per_association[id(request.association)]):
            await request.association.abort()
            return 0x0000
        await request.discard()
        received.append(uid)
        return 0x0000

    return scp


async def test_aborted_association_file_is_sent_on_another(
    tmp_path: Path, anyio_backend: str
) -> None:
    """The peer aborts two associations at their 5th C-STORE: the file being sent then goes
    out on a new association, and every file is stored once."""
    files = write_ct_files(tmp_path / "in", 40, 64)
    received: list[str] = []
    requests: list[str] = []
    aborts: list[str] = []

    def abort_when(uid: str, n: int) -> bool:
        if n == 5 and len(aborts) < 2:
            aborts.append(uid)
            return True
        return False

    scp = _aborting_scp(received, requests, abort_when)
    async with scp.server() as server:
        result = await run_cli(
            *storescu(server.port, str(tmp_path / "in"), "--concurrency", "2",
                      backend=anyio_backend),
            cwd=tmp_path,
        )  # fmt: skip
    assert result.returncode == 0, (out(result), err(result))
    assert re.match(r"sent 40, failed 0;", out(result)), out(result)
    assert Counter(received) == Counter(f.stem for f in files)
    assert len(aborts) == 2 and len(requests) == 42  # the two were sent again
    warnings = [line for line in err(result).splitlines() if "ended during a transfer" in line]
    assert warnings and all(w.startswith("asyncdicom: warning: ") for w in warnings), err(result)
    assert "association aborted by the peer" in warnings[0]


@pytest.mark.parametrize(("position", "concurrency"), [(3, "2"), (0, "1"), (0, "2")])
async def test_file_that_kills_every_association_is_tried_three_times(
    tmp_path: Path, anyio_backend: str, position: int, concurrency: str
) -> None:
    """One file kills every association it is on: it fails after its 3 tries and every other
    file is still sent, also when it is the first file sent (a worker whose association ends
    before storing anything tries once more, starting with another file)."""
    files = sorted(write_ct_files(tmp_path / "in", 12, 64))  # storescu sends in name order
    poison = files[position]
    received: list[str] = []
    requests: list[str] = []
    scp = _aborting_scp(received, requests, lambda uid, n: uid == poison.stem)
    async with scp.server() as server:
        result = await run_cli(
            *storescu(server.port, str(tmp_path / "in"), "--concurrency", concurrency,
                      backend=anyio_backend),
            cwd=tmp_path,
        )  # fmt: skip
    assert result.returncode == 1, err(result)
    assert re.match(r"sent 11, failed 1;", out(result)), (out(result), err(result))
    assert requests.count(poison.stem) == 3
    assert sorted(received) == sorted(f.stem for f in files if f != poison)
    assert f"asyncdicom: error: {poison}: not stored: association aborted by the peer" in err(
        result
    )
    assert "(tried on 3 associations)" in err(result)


async def test_peer_aborting_every_association_does_not_go_round(
    tmp_path: Path, anyio_backend: str
) -> None:
    """Each worker's association dies before storing anything: each worker stops after two
    tries (the second with another file first), and every file is listed as not stored."""
    files = write_ct_files(tmp_path / "in", 30, 64)
    requests: list[str] = []
    scp = _aborting_scp([], requests, lambda uid, n: True)
    async with scp.server() as server:
        result = await run_cli(
            *storescu(server.port, str(tmp_path / "in"), "--concurrency", "3",
                      "--show-all-errors", backend=anyio_backend),
            cwd=tmp_path,
        )  # fmt: skip
    assert result.returncode == 1, err(result)
    assert re.match(r"sent 0, failed 30;", out(result)), out(result)
    assert len(requests) == 6  # two per worker
    listed = [line for line in error_lines(result) if ".dcm: not " in line]
    assert sorted(line.split(": ")[2] for line in listed) == sorted(map(str, files))


# --------------------------------------------------------------------------- Ctrl-C


async def test_ctrl_c_prints_a_partial_summary(tmp_path: Path, anyio_backend: str) -> None:
    files = write_ct_files(tmp_path / "in", 10, 64)
    third = anyio.Event()
    let_go = anyio.Event()
    seen: list[str] = []
    scp = AE("STORESCP", accept_any_storage=True)

    @scp.on_store
    async def on_store(request: Any) -> int:
        seen.append(request.message.affected_sop_instance_uid)
        if len(seen) == 3:
            third.set()
            await let_go.wait()  # the 3rd C-STORE gets no response until the test is over
        await request.discard()
        return 0x0000

    try:
        async with scp.server() as server:
            args = [*CLI, *storescu(server.port, str(tmp_path / "in"), backend=anyio_backend)]
            async with await anyio.open_process(
                args, cwd=tmp_path, env=ENV, stdout=PIPE, stderr=PIPE
            ) as process:
                with anyio.fail_after(GUARD):
                    await third.wait()
                    process.send_signal(signal.SIGINT)
                    code = await process.wait()
                    assert process.stdout is not None and process.stderr is not None
                    stdout = b"".join([chunk async for chunk in process.stdout]).decode()
                    stderr = b"".join([chunk async for chunk in process.stderr]).decode()
    finally:
        let_go.set()
    assert code == 130, (stdout, stderr)
    assert re.match(
        r"interrupted: sent 2, failed 0, not attempted 7, in transfer 1 \(outcome unknown\);",
        stdout,
    ), stdout
    assert "Traceback" not in stderr
    assert "storing" not in stderr  # no progress bar when stderr is not a terminal
    assert len(files) == 10


# --------------------------------------------------------------------------- messages


async def test_folder_of_non_dicom_files_says_why(tmp_path: Path, anyio_backend: str) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    for n in range(24):
        (folder / f"note_{n:02}.txt").write_text("not DICOM at all\n")
    (folder / "empty.dcm").write_bytes(b"")
    (folder / "fake.dcm").write_bytes(b"\x00" * 128 + b"DICM" + b"\x02\x00\x10\x00UI")
    args = storescu(104, str(folder), backend=anyio_backend)
    result = await run_cli(*args, cwd=tmp_path)
    everything = await run_cli(*args, "--show-all-errors", cwd=tmp_path)
    assert result.returncode == 1 and everything.returncode == 1
    lines = error_lines(result)
    assert lines[0] == "asyncdicom: error: " + f"{folder}/empty.dcm: not a DICOM file (empty)"
    assert lines[1].startswith(f"asyncdicom: error: {folder}/fake.dcm: not a valid DICOM file (")
    assert lines[2] == f"asyncdicom: error: {folder}/note_00.txt: not a DICOM file (no DICM prefix)"
    assert len(lines) == 22, lines
    assert lines[-2] == (
        "asyncdicom: error: ... and 6 more not listed (--show-all-errors lists them all)"
    )
    assert lines[-1] == (
        "asyncdicom: error: nothing to send: 26 files could not be used (the reasons are above)"
    )
    all_lines = error_lines(everything)
    assert len(all_lines) == 27
    assert all_lines[25] == (
        f"asyncdicom: error: {folder}/note_23.txt: not a DICOM file (no DICM prefix)"
    )


def without_file_permission_override() -> list[str]:
    """A command prefix under which root cannot read a file it has no permission for (the
    capabilities that bypass file permissions are dropped); nothing for other users."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.fail("running as root without setpriv: cannot make a file unreadable")
    return [setpriv, "--bounding-set", "-dac_override,-dac_read_search", "--"]


async def test_unreadable_file_is_called_unreadable(tmp_path: Path, anyio_backend: str) -> None:
    files = write_ct_files(tmp_path / "in", 3, 64)
    locked = files[1]
    locked.chmod(0)
    received: list[str] = []
    try:
        async with counting_scp(received).server() as server:
            command = [
                *without_file_permission_override(),
                *REAL_CLI,  # setpriv runs it: a fresh interpreter
                *storescu(server.port, str(tmp_path / "in"), backend=anyio_backend),
            ]
            with anyio.fail_after(GUARD):
                result = await anyio.run_process(command, cwd=tmp_path, env=ENV, check=False)
    finally:
        locked.chmod(0o644)
    assert result.returncode == 1, err(result)
    assert re.match(r"sent 2, failed 1;", out(result)), out(result)
    assert error_lines(result) == [f"asyncdicom: error: {locked}: unreadable (Permission denied)"]
    assert sorted(received) == sorted(f.stem for f in files if f != locked)


async def test_dicomdir_is_skipped_with_a_note(tmp_path: Path, anyio_backend: str) -> None:
    files = write_ct_files(tmp_path / "in", 2, 64)
    dicomdir = tmp_path / "in" / "DICOMDIR"
    shutil.copy(SAMPLES / "dicomdirtests" / "DICOMDIR", dicomdir)
    received: list[str] = []
    async with counting_scp(received).server() as server:
        result = await run_cli(
            *storescu(server.port, str(tmp_path / "in"), backend=anyio_backend), cwd=tmp_path
        )
    assert result.returncode == 0, err(result)
    assert re.match(r"sent 2, failed 0, skipped 1 \(DICOMDIR\);", out(result)), out(result)
    assert err(result).splitlines() == [
        f"storescu: skipped {dicomdir}: a DICOMDIR (Media Storage Directory, "
        "1.2.840.10008.1.3.10) indexes files on a medium, it is not sent"
    ]
    assert sorted(received) == sorted(f.stem for f in files)


async def test_compressed_file_the_peer_refuses_is_explained(
    tmp_path: Path, anyio_backend: str
) -> None:
    """A peer taking only uncompressed syntaxes: JPEG 2000 and RLE files are decoded and sent
    (the codecs are installed with the test extra); a syntax nothing here decodes (MPEG-2) is
    named with the fix."""
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("CT_small.dcm", "JPEG2000.dcm", "MR_small_RLE.dcm"):
        shutil.copy(SAMPLES / name, folder / name)
    mpeg = pydicom.dcmread(SAMPLES / "SC_rgb_jpeg_dcmtk.dcm")
    mpeg.file_meta.TransferSyntaxUID = uids.MPEG2_MAIN_PROFILE_MAIN_LEVEL
    mpeg.save_as(folder / "mpeg2.dcm", enforce_file_format=True)
    received: list[str] = []
    scp = counting_scp(received, storage_transfer_syntaxes=uids.UNCOMPRESSED_TRANSFER_SYNTAXES)
    async with scp.server() as server:
        result = await run_cli(
            *storescu(server.port, str(folder), backend=anyio_backend), cwd=tmp_path
        )
    assert result.returncode == 1, err(result)
    assert re.match(r"sent 3, failed 1;", out(result)), out(result)
    (mpeg_line,) = error_lines(result)
    assert mpeg_line.startswith(
        f"asyncdicom: error: {folder}/mpeg2.dcm: the peer does not accept "
        "MPEG2 Main Profile / Main Level (1.2.840.10008.1.2.4.100) for "
        "Secondary Capture Image Storage (1.2.840.10008.5.1.4.1.1.7)"
    ), mpeg_line
    assert "cannot be decoded here" in mpeg_line and "gdcmconv" in mpeg_line
    assert len(received) == 3


async def test_statuses_are_printed_with_their_meaning(tmp_path: Path, anyio_backend: str) -> None:
    files = write_ct_files(tmp_path / "in", 4, 64)
    answers = {files[1].stem: 0xA700, files[2].stem: 0xB000}
    scp = AE("STORESCP", accept_any_storage=True)

    @scp.on_store
    async def on_store(request: Any) -> int:
        await request.discard()
        return answers.get(request.message.affected_sop_instance_uid, 0x0000)

    async with scp.server() as server:
        result = await run_cli(
            *storescu(server.port, str(tmp_path / "in"), backend=anyio_backend), cwd=tmp_path
        )
    assert result.returncode == 1, err(result)
    assert re.match(r"sent 3, failed 1, with warnings 1;", out(result)), out(result)
    lines = err(result).splitlines()
    assert lines[0] == (
        f"asyncdicom: error: {files[1]}: status 0xA700 Failure: refused: out of resources"
    )
    assert (
        lines[1].startswith(f"asyncdicom: warning: {files[2]}: status 0xB000 Warning: ")
        and "coercion of data elements" in lines[1]
    )
    assert len(lines) == 2, lines


@pytest.mark.parametrize("value", ["0", "-2", "two"])
def test_bad_concurrency_is_a_usage_error(tmp_path: Path, value: str) -> None:
    result = run_main("storescu", "127.0.0.1", "104", "x.dcm", "--concurrency", value,
                           cwd=tmp_path)  # fmt: skip
    assert result.returncode == 2, (out(result), err(result))
    last = err(result).strip().splitlines()[-1]
    assert last.startswith("asyncdicom storescu: error: argument --concurrency: "), last
    assert "Traceback" not in err(result)


# --------------------------------------------------------------------------- demo


async def test_demo_names_its_samples_and_the_shared_uid(
    tmp_path: Path, anyio_backend: str
) -> None:
    result = await run_cli("demo", "--backend", anyio_backend, cwd=tmp_path)
    assert result.returncode == 0, (out(result), err(result))
    text = out(result)
    assert f"Sample files from pydicom {pydicom.__version__}: {SAMPLES}" in text
    for name in demo.SAMPLE_FILES:
        assert re.search(rf"C-STORE\s+│ {re.escape(name)}\s+│", text), name
    # C-FIND at STUDY level: one match per distinct study among the samples (read here with
    # pydicom, independently of the demo)
    studies = {
        pydicom.dcmread(SAMPLES / name, stop_before_pixels=True).StudyInstanceUID
        for name in demo.SAMPLE_FILES
    }
    assert re.search(
        rf"C-FIND\s+│ STUDY level\s+│.*│ {len(studies)} studies; 0x0000 Success\s+│", text
    ), text
    n = len(demo.SAMPLE_FILES)
    summary = text.strip().splitlines()[-1]
    assert re.fullmatch(
        rf"{n} of {n} files stored; the SCP wrote \d+ files; MR_small\.dcm and "
        r"MR_small_RLE\.dcm carry the same SOP Instance UID, "
        r"1\.3\.6\.1\.4\.1\.5962\.1\.1\.4\.1\.1\.20040826185059\.5457; all good\.",
        summary,
    ), summary


@pytest.fixture
def wide_console(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("COLUMNS", "200")
    yield


async def test_demo_reports_a_missing_sample(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    wide_console: None,
    anyio_backend: str,
) -> None:
    monkeypatch.setattr(demo, "SAMPLE_FILES", ("CT_small.dcm", "no_such_sample.dcm"))
    args: argparse.Namespace = build_parser().parse_args(["demo", "--backend", anyio_backend])
    with anyio.fail_after(GUARD):
        code = await demo.run(args)
    text = capsys.readouterr().out
    assert code == 0, text
    assert re.search(r"│ no_such_sample\.dcm\s+│.*│ missing: this pydicom does not ship it", text)
    assert "no_such_sample.dcm: missing: this pydicom does not ship it" in text
    assert "1 of 1 files stored; the SCP wrote 1 file; all good." in text
