"""Interop of asyncdicom with DCMTK 3.6.x (echoscu, storescu, storescp), both directions.

Everything runs on 127.0.0.1.  Our SCP lives in the test's event loop, so DCMTK programs are
run with ``anyio.run_process`` (the loop keeps serving while they run), always with
``dcmtk_env()``: DCMTK disables Nagle's algorithm only when ``TCP_NODELAY=1`` is set, and
without it every round trip waits for a delayed ACK.

DCMTK behaviour these tests rely on (3.6.7):

* ``storescu`` proposes every storage SOP class it knows, each in two contexts: one with its
  first-choice transfer syntax alone (explicit VR little endian by default, big endian with
  ``-xb``, deflated / JPEG 2000 / RLE with ``-xd`` / ``-xw`` / ``-xr``) and one with the other
  uncompressed syntaxes (``-xi``: implicit VR little endian only, one context).  It then sends
  each file in the file's own transfer syntax when a context accepted that, converting between
  uncompressed syntaxes otherwise.  So the syntax a file arrives in is steered by what our SCP
  accepts (``storage_transfer_syntaxes``), not by the order of storescu's proposal.
* ``storescu --max-pdu`` is the largest PDU storescu *receives*; what it sends is bounded by
  the maximum PDU length our SCP announces.
* ``storescp`` writes ``<modality>.<SOP Instance UID>`` in the transfer syntax received, handles
  one association at a time unless ``--fork``, and accepts only the storage SOP classes it
  knows (``-pm`` is off in the harness): an unknown abstract syntax is rejected.
"""

from __future__ import annotations

import os
import re
import signal
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import anyio
import numpy as np
import pydicom.data
import pytest
from anyio.abc import Process
from harness.peers import (
    DcmtkStoreSCP,
    ProposeOption,
    assert_instances_match,
    dcmtk_env,
    echoscu_command,
    free_port,
    instance_differences,
    instance_uid,
    storescu_command,
    transfer_syntax_of,
)
from pydicom import dcmread
from pydicom.dataset import Dataset

from asyncdicom import AE, ContextRequest, HookEvent, ServiceRequest
from asyncdicom.errors import NoAcceptedContext
from asyncdicom.protocol import uids
from asyncdicom.protocol.errors import RejectReason, RejectResult, RejectSource
from asyncdicom.protocol.negotiation import ContextResult
from asyncdicom.storage.synthetic import write_ct_files

pytestmark = [pytest.mark.interop, pytest.mark.anyio, pytest.mark.requires_peer("dcmtk")]

SAMPLES = Path(pydicom.data.__file__).parent / "test_files"
JPEG2000 = SAMPLES / "JPEG2000.dcm"  # Secondary Capture, JPEG 2000 (1.2.840.10008.1.2.4.91)
RLE = SAMPLES / "MR_small_RLE.dcm"  # MR Image, RLE Lossless (1.2.840.10008.1.2.5)
CT_SMALL = SAMPLES / "CT_small.dcm"  # CT Image, explicit VR little endian
MR_SMALL = SAMPLES / "MR_small.dcm"  # MR Image, explicit VR little endian
RTPLAN = SAMPLES / "rtplan.dcm"  # RT Plan, implicit VR little endian, no pixel data

#: bound on each test's network activity: a hang fails the test instead of the whole run
TEST_TIMEOUT = 60.0


# --------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def synthetic_ct(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Five synthetic CT instances of about 300 KB (explicit VR little endian)."""
    return write_ct_files(tmp_path_factory.mktemp("synthetic-ct"), 5, 300_000, seed=1)


@pytest.fixture(scope="module")
def big_ct(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Two synthetic CT instances of about 2 MB: many PDUs at any PDU size DCMTK allows."""
    return write_ct_files(tmp_path_factory.mktemp("big-ct"), 2, 2_000_000, seed=7)


@pytest.fixture(scope="module")
def ct_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder of twelve small synthetic CT instances (for the CLI's --concurrency)."""
    folder = tmp_path_factory.mktemp("ct-folder")
    write_ct_files(folder, 12, 20_000, seed=100)
    return folder


_uid_of = instance_uid
_transfer_syntax_of = transfer_syntax_of


async def run_dcmtk(command: list[str]) -> tuple[int, str]:
    """Run a DCMTK program in a subprocess (the loop keeps running); (exit code, output)."""
    with anyio.fail_after(TEST_TIMEOUT):
        result = await anyio.run_process(command, env=dcmtk_env(), check=False)
    output = result.stdout.decode("utf-8", "replace") + result.stderr.decode("utf-8", "replace")
    return result.returncode, output


async def run_storescu(
    port: int,
    files: Sequence[Path],
    *,
    called_aet: str = "OURSCP",
    propose: ProposeOption | None = None,
    max_pdu: int | None = None,
) -> None:
    rc, output = await run_dcmtk(
        storescu_command(
            "127.0.0.1", port, files, called_aet=called_aet, propose=propose, max_pdu=max_pdu
        )
    )
    assert rc == 0, output


def _contexts_for(files: Iterable[Path]) -> list[ContextRequest]:
    """One context per (SOP class, file transfer syntax) pair."""
    pairs: dict[tuple[str, str], None] = {}
    for path in files:
        meta = dcmread(path, stop_before_pixels=True).file_meta
        pairs[(str(meta.MediaStorageSOPClassUID), str(meta.TransferSyntaxUID))] = None
    return [ContextRequest(sop, (ts,)) for sop, ts in pairs]


def _swap16(data: bytes) -> bytes:
    swapped = bytearray(len(data))
    swapped[0::2] = data[1::2]
    swapped[1::2] = data[0::2]
    return bytes(swapped)


# --------------------------------------------------------------------------- 1. echoscu -> us


async def test_echoscu_repeat_to_our_scp(our_scp_factory: Any) -> None:
    echoes: list[int] = []

    async def on_echo(request: ServiceRequest) -> int:
        echoes.append(request.message.message_id)  # type: ignore[union-attr]
        return 0x0000

    async with our_scp_factory() as scp:
        scp.ae.on_echo(on_echo)
        rc, output = await run_dcmtk(
            echoscu_command(scp.host, scp.port, called_aet=scp.aet, repeat=5)
        )
        assert rc == 0, output
        assert len(scp.accepted) == 1
        with anyio.fail_after(10):
            await scp.accepted[0].wait_closed()
    assert len(echoes) == 5
    assert scp.released == scp.accepted  # echoscu released it (no abort)
    assert scp.aborted == []
    assert scp.accepted[0].calling_ae_title == "ECHOSCU"


async def test_echoscu_wrong_called_ae_title_is_rejected(our_scp_factory: Any) -> None:
    async with our_scp_factory(require_called_ae_title=True) as scp:
        rc, output = await run_dcmtk(echoscu_command(scp.host, scp.port, called_aet="NOT-OURSCP"))
        # and the right title still works on the same server
        rc_ok, output_ok = await run_dcmtk(echoscu_command(scp.host, scp.port, called_aet=scp.aet))
    assert rc != 0, output
    assert "reject" in output.lower(), output
    assert rc_ok == 0, output_ok
    assert len(scp.rejected) == 1
    _assoc, rj = scp.rejected[0]
    assert (rj.result, rj.source, rj.reason) == (
        RejectResult.REJECTED_PERMANENT,
        RejectSource.SERVICE_USER,
        RejectReason.USER_CALLED_AE_NOT_RECOGNIZED,
    )
    assert len(scp.accepted) == 1


# --------------------------------------------------------------------------- 2. storescu -> us


async def test_storescu_samples_and_synthetic_to_our_scp(
    our_scp_factory: Any, sample_files: list[Path], synthetic_ct: list[Path]
) -> None:
    files = [*sample_files, *synthetic_ct]
    async with our_scp_factory() as scp:
        await run_storescu(scp.port, files)
    assert_instances_match(scp.stored_paths(), files)
    # storescu adds a context for each file's own syntax and prefers it: every instance
    # arrives (and is written) in the syntax of its source file, implicit ones included
    sources = {_uid_of(p): p for p in files}
    for path, ts in scp.stored:
        assert ts == _transfer_syntax_of(sources[_uid_of(path)]) == _transfer_syntax_of(path)
    assert {ts for _, ts in scp.stored} == {
        uids.EXPLICIT_VR_LITTLE_ENDIAN,
        uids.IMPLICIT_VR_LITTLE_ENDIAN,
    }
    assert len(scp.accepted) == 1


@pytest.mark.parametrize(
    ("propose", "preferred", "expected"),
    [
        pytest.param("implicit", None, uids.IMPLICIT_VR_LITTLE_ENDIAN, id="implicit-xi"),
        pytest.param("deflated", None, uids.DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN, id="deflated-xd"),
        # storescu -xb proposes big endian in a context of its own next to one with the
        # little endian syntaxes, and sends a file in its own syntax when that was accepted:
        # to receive big endian our SCP must accept nothing else
        pytest.param(
            "big",
            (uids.EXPLICIT_VR_BIG_ENDIAN,),
            uids.EXPLICIT_VR_BIG_ENDIAN,
            id="big-endian-xb",
        ),
    ],
)
async def test_storescu_transfer_syntaxes_to_our_scp(
    our_scp_factory: Any,
    propose: ProposeOption,
    preferred: tuple[str, ...] | None,
    expected: str,
) -> None:
    files = [CT_SMALL, MR_SMALL, RTPLAN]
    config: dict[str, Any] = {}
    if preferred is not None:
        config["storage_transfer_syntaxes"] = preferred
    async with our_scp_factory(**config) as scp:
        await run_storescu(scp.port, files, propose=propose)
    assert [ts for _, ts in scp.stored] == [expected] * len(files)
    for path, _ in scp.stored:
        assert _transfer_syntax_of(path) == expected
    if expected != uids.EXPLICIT_VR_BIG_ENDIAN:
        # pydicom decodes the stored file (inflating it when deflated) to the same instance
        assert_instances_match(scp.stored_paths(), files)
        return
    # Big endian: 16-bit pixel data is byte-swapped on the wire and in the file (OW is
    # swapped per word), everything else decodes to the same values.
    got = {_uid_of(p): p for p in scp.stored_paths()}
    for source in files:
        received = got[_uid_of(source)]
        problems = [
            p for p in instance_differences(received, source) if not p.startswith("PixelData")
        ]
        assert problems == [], source.name
        want = dcmread(source)
        if "PixelData" in want:
            assert want.BitsAllocated == 16
            assert bytes(dcmread(received).PixelData) == _swap16(bytes(want.PixelData))


#: storescu's proposal flag for each transfer syntax of the pydicom samples
_PROPOSE_FOR: dict[str, ProposeOption] = {
    uids.IMPLICIT_VR_LITTLE_ENDIAN: "implicit",
    uids.EXPLICIT_VR_LITTLE_ENDIAN: "little",
    uids.EXPLICIT_VR_BIG_ENDIAN: "big",
    uids.DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN: "deflated",
    "1.2.840.10008.1.2.4.50": "jpeg8",
    "1.2.840.10008.1.2.4.51": "jpeg12",
    "1.2.840.10008.1.2.4.70": "lossless",
    "1.2.840.10008.1.2.4.80": "jls-lossless",
    "1.2.840.10008.1.2.4.81": "jls-lossy",
    "1.2.840.10008.1.2.4.90": "j2k-lossless",
    "1.2.840.10008.1.2.4.91": "j2k-lossy",
    "1.2.840.10008.1.2.5": "rle",
}


def _every_sample_dcmtk_sends() -> dict[str, list[Path]]:
    """pydicom's sample instances of a storage SOP class, one per SOP Instance UID, by
    transfer syntax; not the two cut short on purpose, nor SC_rgb_jpeg.dcm (implicit VR under
    an explicit transfer syntax: DCMTK cannot read it)."""
    from asyncdicom.protocol.uids import is_storage_sop_class

    groups: dict[str, list[Path]] = {}
    seen: set[str] = set()
    for path in sorted(SAMPLES.glob("*.dcm")):
        if "truncated" in path.name or path.name == "SC_rgb_jpeg.dcm":
            continue
        try:
            ds = dcmread(path, stop_before_pixels=True)
            sop, uid = str(ds.SOPClassUID), str(ds.SOPInstanceUID)
            syntax = str(ds.file_meta.TransferSyntaxUID)
        except Exception:  # no meta, no UIDs: not an instance to send
            continue
        if uid in seen or not is_storage_sop_class(sop) or syntax not in _PROPOSE_FOR:
            continue
        seen.add(uid)
        groups.setdefault(syntax, []).append(path)
    return groups


@pytest.mark.filterwarnings("ignore::UserWarning")
async def test_storescu_every_pydicom_sample_to_our_scp(our_scp_factory: Any) -> None:
    """Whatever DCMTK sends of pydicom's samples (eleven transfer syntaxes, sequences,
    encapsulated pixel data, odd lengths, private tags) passes the structure check of the
    received data sets: nothing valid is refused."""
    groups = _every_sample_dcmtk_sends()
    files = [path for group in groups.values() for path in group]
    assert len(groups) >= 10 and len(files) >= 30, groups
    async with our_scp_factory() as scp:
        for syntax, group in groups.items():
            rc, output = await run_dcmtk(
                storescu_command(
                    "127.0.0.1",
                    scp.port,
                    group,
                    called_aet="OURSCP",
                    propose=_PROPOSE_FOR[syntax],
                    required_only=True,
                )
            )
            assert rc == 0 and "E:" not in output, output
    assert sorted(_uid_of(p) for p in scp.stored_paths()) == sorted(_uid_of(p) for p in files)
    for path, syntax in scp.stored:
        assert _transfer_syntax_of(path) == syntax


@pytest.mark.parametrize(
    ("source", "propose"),
    [
        pytest.param(JPEG2000, "j2k-lossy", id="jpeg2000-xw"),
        pytest.param(RLE, "rle", id="rle-xr"),
    ],
)
async def test_storescu_compressed_to_our_scp(
    our_scp_factory: Any, source: Path, propose: ProposeOption
) -> None:
    file_ts = _transfer_syntax_of(source)
    async with our_scp_factory() as scp:
        await run_storescu(scp.port, [source], propose=propose)
    assert [ts for _, ts in scp.stored] == [file_ts]
    (received,) = scp.stored_paths()
    assert _transfer_syntax_of(received) == file_ts
    # same encapsulated pixel data bytes (instance_differences compares them as bytes)
    assert instance_differences(received, source) == []


@pytest.mark.parametrize(
    ("storescu_pdu", "our_pdu"),
    [
        pytest.param(4096, 4096, id="4k-both-ways"),
        pytest.param(4096, 16384, id="storescu-4k-ours-16k"),
    ],
)
async def test_storescu_pdu_sizes_to_our_scp(
    our_scp_factory: Any, big_ct: list[Path], storescu_pdu: int, our_pdu: int
) -> None:
    async with our_scp_factory(max_pdu_length=our_pdu) as scp:
        await run_storescu(scp.port, big_ct, max_pdu=storescu_pdu)
    assert_instances_match(scp.stored_paths(), big_ct)
    (assoc,) = scp.accepted
    assert assoc.negotiated is not None
    assert assoc.negotiated.local_max_pdu_length == our_pdu
    assert assoc.negotiated.peer_max_pdu_length == storescu_pdu


# --------------------------------------------------------------------------- 3. storescu -> CLI


async def _read_until_listening(process: Process) -> tuple[int, str]:
    """Read the CLI's stderr until its "listening" line; return (port, text read so far)."""
    assert process.stderr is not None
    text = ""
    with anyio.fail_after(30):
        while True:
            try:
                chunk = await process.stderr.receive()
            except anyio.EndOfStream:
                raise AssertionError(f"storescp exited before listening:\n{text}") from None
            text += chunk.decode("utf-8", "replace")
            match = re.search(r"listening on \S+:(\d+)", text)
            if match:
                return int(match.group(1)), text


async def _drain(stream: Any, sink: list[bytes]) -> None:
    async for chunk in stream:
        sink.append(chunk)


@pytest.mark.parametrize("ignore", [False, True], ids=["output-dir", "ignore"])
async def test_storescu_to_our_storescp_cli(
    anyio_backend: str, tmp_path: Path, sample_files: list[Path], ignore: bool
) -> None:
    output = tmp_path / "received"
    work = tmp_path / "cwd"
    work.mkdir()
    # --port 0: the CLI reports the port it bound in its "listening" line, so there is no
    # race for a free port.  The CLI runs on the same backend as the test.
    command = [
        sys.executable,
        "-m",
        "asyncdicom",
        "storescp",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--backend",
        anyio_backend,
        *(["--ignore"] if ignore else ["--output-dir", os.fspath(output)]),
    ]
    async with await anyio.open_process(command, cwd=work) as process:
        try:
            port, head = await _read_until_listening(process)
            stderr: list[bytes] = [head.encode()]
            async with anyio.create_task_group() as tg:
                # keep draining stderr so that a chatty CLI can never block on a full pipe
                tg.start_soon(_drain, process.stderr, stderr)
                await run_storescu(port, sample_files, called_aet="STORESCP")
                process.send_signal(signal.SIGTERM)
                with anyio.fail_after(15):
                    returncode = await process.wait()
        finally:
            if process.returncode is None:
                process.kill()
    log = b"".join(stderr).decode("utf-8", "replace")
    assert returncode == 0, log
    if ignore:
        assert not output.exists()
        assert list(work.iterdir()) == []
    else:
        received = sorted(output.iterdir())
        # complete files only: no temporary leftovers
        assert all(p.suffix == ".dcm" for p in received), received
        assert_instances_match(received, sample_files)


# --------------------------------------------------------------------------- 4. us -> storescp


async def test_our_scu_echo_and_store_to_storescp(
    dcmtk_storescp: DcmtkStoreSCP, sample_files: list[Path]
) -> None:
    datasets = [dcmread(CT_SMALL), dcmread(RTPLAN)]
    paths = [p for p in sample_files if p.name not in (CT_SMALL.name, RTPLAN.name)]
    contexts: list[str | ContextRequest] = [uids.VERIFICATION, *_contexts_for(sample_files)]
    with anyio.fail_after(TEST_TIMEOUT):
        async with AE("OURSCU").associate(
            dcmtk_storescp.host, dcmtk_storescp.port, called_aet="STORESCP", contexts=contexts
        ) as assoc:
            assert (await assoc.echo()).status == 0x0000
            statuses = [(await assoc.store(p)).status for p in paths]
            statuses += [(await assoc.store(ds)).status for ds in datasets]
            assert assoc.peer_ae_title == "STORESCP"
        assert assoc.released
    assert statuses == [0x0000] * len(sample_files)
    assert_instances_match(dcmtk_storescp.received_files(), sample_files)


@pytest.mark.parametrize(
    ("our_pdu", "storescp_pdu"),
    [
        pytest.param(4096, 4096, id="small"),
        pytest.param(1 << 20, 131072, id="large"),
    ],
)
async def test_our_scu_pdu_sizes_to_storescp(
    dcmtk_storescp_factory: Any,
    tmp_path: Path,
    synthetic_ct: list[Path],
    our_pdu: int,
    storescp_pdu: int,
) -> None:
    scp: DcmtkStoreSCP = await anyio.to_thread.run_sync(
        lambda: dcmtk_storescp_factory(output_dir=tmp_path / "out", max_pdu=storescp_pdu)
    )
    with anyio.fail_after(TEST_TIMEOUT):
        async with AE("OURSCU", max_pdu_length=our_pdu).associate(
            scp.host, scp.port, called_aet=scp.aet, contexts=[uids.CT_IMAGE_STORAGE]
        ) as assoc:
            assert assoc.negotiated is not None
            assert assoc.negotiated.peer_max_pdu_length == storescp_pdu
            statuses = [(await assoc.store(p)).status for p in synthetic_ct]
    assert statuses == [0x0000] * len(synthetic_ct)
    assert_instances_match(scp.received_files(), synthetic_ct)


async def test_our_scu_sends_compressed_without_transcoding(
    dcmtk_storescp: DcmtkStoreSCP,
) -> None:
    file_ts = _transfer_syntax_of(JPEG2000)
    sop_class = str(dcmread(JPEG2000, stop_before_pixels=True).SOPClassUID)
    with anyio.fail_after(TEST_TIMEOUT):
        async with AE("OURSCU").associate(
            dcmtk_storescp.host,
            dcmtk_storescp.port,
            called_aet="STORESCP",
            # the file's own syntax and, in another context, the uncompressed ones
            contexts=[(sop_class, [file_ts]), sop_class],
        ) as assoc:
            assert {c.transfer_syntax for c in assoc.accepted_contexts} == {
                file_ts,
                uids.EXPLICIT_VR_LITTLE_ENDIAN,
            }
            assert (await assoc.store(JPEG2000)).status == 0x0000
    (received,) = dcmtk_storescp.received_files()
    assert _transfer_syntax_of(received) == file_ts
    assert instance_differences(received, JPEG2000) == []


async def test_our_scu_transcodes_uncompressed_when_needed(
    dcmtk_storescp: DcmtkStoreSCP,
) -> None:
    # Only implicit VR little endian is proposed for CT and MR, but both files (and the
    # Dataset, whose file_meta says explicit) are explicit VR little endian: we transcode.
    implicit = [uids.IMPLICIT_VR_LITTLE_ENDIAN]
    with anyio.fail_after(TEST_TIMEOUT):
        async with AE("OURSCU").associate(
            dcmtk_storescp.host,
            dcmtk_storescp.port,
            called_aet="STORESCP",
            contexts=[(uids.CT_IMAGE_STORAGE, implicit), (uids.MR_IMAGE_STORAGE, implicit)],
        ) as assoc:
            assert (await assoc.store(CT_SMALL)).status == 0x0000
            mr = dcmread(MR_SMALL)
            assert str(mr.file_meta.TransferSyntaxUID) == uids.EXPLICIT_VR_LITTLE_ENDIAN
            assert (await assoc.store(mr)).status == 0x0000
            # a compressed file is decompressed (the codecs come with the test extra)
            assert (await assoc.store(RLE)).status == 0x0000
            assert assoc.is_established
            # a SOP class without an accepted context at all
            with pytest.raises(NoAcceptedContext):
                await assoc.store(JPEG2000)
    # MR_small_RLE.dcm is MR_small.dcm compressed (same SOP Instance UID): storescp keeps the
    # last one received, decompressed
    ct, mr = sorted(dcmtk_storescp.received_files(), key=lambda p: p.name)
    assert [_transfer_syntax_of(p) for p in (ct, mr)] == [uids.IMPLICIT_VR_LITTLE_ENDIAN] * 2
    assert_instances_match([ct], [CT_SMALL])
    assert np.array_equal(dcmread(mr).pixel_array, dcmread(RLE).pixel_array)


# --------------------------------------------------------------------------- 5. CLI -> storescp


async def _run_cli(*args: str) -> tuple[int, str, str]:
    with anyio.fail_after(TEST_TIMEOUT):
        result = await anyio.run_process([sys.executable, "-m", "asyncdicom", *args], check=False)
    return (
        result.returncode,
        result.stdout.decode("utf-8", "replace"),
        result.stderr.decode("utf-8", "replace"),
    )


async def test_cli_echoscu_to_storescp(anyio_backend: str, dcmtk_storescp: DcmtkStoreSCP) -> None:
    rc, out, err = await _run_cli(
        "echoscu",
        dcmtk_storescp.host,
        str(dcmtk_storescp.port),
        "--called-aet",
        dcmtk_storescp.aet,
        "--repeat",
        "3",
        "--backend",
        anyio_backend,
    )
    assert rc == 0, err
    assert re.search(r"^C-ECHO 3/3 succeeded with 127\.0\.0\.1:\d+ in ", out, re.M), out


@pytest.mark.requires_peer()  # our CLI only
async def test_cli_echoscu_fails_against_a_closed_port(anyio_backend: str) -> None:
    rc, out, err = await _run_cli(
        "echoscu", "127.0.0.1", str(free_port()), "--backend", anyio_backend
    )
    assert rc == 1, out + err
    assert err.startswith("asyncdicom: error:"), err


async def test_cli_storescu_concurrency_to_storescp(
    anyio_backend: str, dcmtk_storescp_factory: Any, tmp_path: Path, ct_folder: Path
) -> None:
    # --fork: storescp handles each association in a child process, so three associations
    # are really open at once (single-process storescp would serve them one after another).
    # -v makes it log one "Association Acknowledged" line per accepted association (its
    # "Association Received" lines also count the harness's readiness probe).
    scp: DcmtkStoreSCP = await anyio.to_thread.run_sync(
        lambda: dcmtk_storescp_factory(output_dir=tmp_path / "out", extra_args=["--fork", "-v"])
    )
    rc, out, err = await _run_cli(
        "storescu",
        scp.host,
        str(scp.port),
        os.fspath(ct_folder),
        "--called-aet",
        scp.aet,
        "--concurrency",
        "3",
        "--backend",
        anyio_backend,
    )
    assert rc == 0, err
    assert re.search(r"^sent 12, failed 0; ", out, re.M), out
    sent = sorted(ct_folder.iterdir())
    assert_instances_match(scp.received_files(), sent)
    assert scp.log_text().count("Association Acknowledged") == 3, scp.log_text()


async def test_cli_storescu_concurrency_to_a_one_association_storescp(
    anyio_backend: str, dcmtk_storescp: DcmtkStoreSCP, ct_folder: Path
) -> None:
    """Single-process storescp serves one association at a time: the first worker sends while
    the others wait in its listen queue.  Every file is stored once, exit 0, and storescu
    never waits for an association it no longer needs (the ACSE timeout is 20 s here)."""
    started = anyio.current_time()
    rc, out, err = await _run_cli(
        "storescu",
        dcmtk_storescp.host,
        str(dcmtk_storescp.port),
        os.fspath(ct_folder),
        "--called-aet",
        dcmtk_storescp.aet,
        "--concurrency",
        "3",
        "--acse-timeout",
        "20",
        "--backend",
        anyio_backend,
    )
    elapsed = anyio.current_time() - started
    assert rc == 0, err
    assert re.search(r"^sent 12, failed 0; ", out, re.M), out
    assert_instances_match(dcmtk_storescp.received_files(), sorted(ct_folder.iterdir()))
    assert elapsed < 10, (
        f"storescu took {elapsed:.1f} s: it waited for associations it no longer needed"
    )


# --------------------------------------------------------------------------- 6. release, abort


async def test_abort_mid_session_leaves_storescp_serving(
    dcmtk_storescp: DcmtkStoreSCP,
) -> None:
    ae = AE("OURSCU")
    contexts = [uids.VERIFICATION, uids.CT_IMAGE_STORAGE, uids.MR_IMAGE_STORAGE]

    class Boom(Exception):
        pass

    with anyio.fail_after(TEST_TIMEOUT):
        with pytest.raises(Boom):
            async with ae.associate(
                dcmtk_storescp.host, dcmtk_storescp.port, called_aet="STORESCP", contexts=contexts
            ) as aborted:
                assert (await aborted.store(CT_SMALL)).status == 0x0000
                raise Boom
        assert aborted.is_closed
        assert not aborted.released
        assert aborted.abort_info is not None and aborted.abort_info.local
        assert dcmtk_storescp.is_running()
        # the next association is accepted and works
        async with ae.associate(
            dcmtk_storescp.host, dcmtk_storescp.port, called_aet="STORESCP", contexts=contexts
        ) as assoc:
            assert (await assoc.echo()).status == 0x0000
            assert (await assoc.store(MR_SMALL)).status == 0x0000
        assert assoc.released and assoc.abort_info is None
    assert dcmtk_storescp.is_running()
    assert_instances_match(dcmtk_storescp.received_files(), [CT_SMALL, MR_SMALL])


async def test_cancelled_store_aborts_and_storescp_keeps_serving(
    dcmtk_storescp_factory: Any, tmp_path: Path, big_ct: list[Path]
) -> None:
    # Cancel a 2 MB store once 100 kB of it are on the wire (seen through the PDU_SENT hook,
    # not a timer): the association must be aborted (the response could no longer be
    # matched), storescp must not keep a partial instance and must accept the next association.
    scp: DcmtkStoreSCP = await anyio.to_thread.run_sync(
        lambda: dcmtk_storescp_factory(output_dir=tmp_path / "out", max_pdu=4096)
    )
    ae = AE("OURSCU")
    sent = 0
    counting = False
    scope = anyio.CancelScope()

    def on_pdu_sent(event: HookEvent, assoc: Any, data: bytes) -> None:
        nonlocal sent
        if counting:
            sent += len(data)
            if sent > 100_000:
                scope.cancel()

    # per-PDU hooks are looked up when an association starts: register before associating
    ae.hooks.add(HookEvent.PDU_SENT, on_pdu_sent)
    with anyio.fail_after(TEST_TIMEOUT):
        async with ae.associate(
            scp.host, scp.port, called_aet=scp.aet, contexts=[uids.CT_IMAGE_STORAGE]
        ) as assoc:
            counting = True
            with scope:
                await assoc.store(big_ct[0])
            counting = False
            assert scope.cancelled_caught
            await assoc.wait_closed()
        assert assoc.abort_info is not None and assoc.abort_info.local
        assert not assoc.released
        assert scp.is_running()
        async with ae.associate(
            scp.host, scp.port, called_aet=scp.aet, contexts=[uids.CT_IMAGE_STORAGE]
        ) as assoc:
            assert (await assoc.store(big_ct[1])).status == 0x0000
    assert 100_000 < sent < big_ct[0].stat().st_size
    assert_instances_match(scp.received_files(), [big_ct[1]])


@pytest.mark.parametrize("program", ["storescu", "echoscu"])
async def test_dcmtk_abort_to_our_scp(
    our_scp_factory: Any, sample_files: list[Path], program: str
) -> None:
    # storescu/echoscu --abort end the association with A-ABORT instead of A-RELEASE: what was
    # stored stays stored, the server notes the abort and keeps serving.
    async with our_scp_factory() as scp:
        if program == "storescu":
            command = storescu_command(
                scp.host, scp.port, sample_files, called_aet=scp.aet, extra_args=["--abort"]
            )
        else:
            command = echoscu_command(
                scp.host, scp.port, called_aet=scp.aet, extra_args=["--abort"]
            )
        rc, output = await run_dcmtk(command)
        assert rc == 0, output
        (aborted,) = scp.accepted
        with anyio.fail_after(10):
            await aborted.wait_closed()
        assert scp.aborted == [aborted]
        assert aborted.abort_info is not None and not aborted.abort_info.local
        assert not aborted.released
        rc, output = await run_dcmtk(echoscu_command(scp.host, scp.port, called_aet=scp.aet))
        assert rc == 0, output
    assert len(scp.accepted) == 2
    if program == "storescu":
        assert_instances_match(scp.stored_paths(), sample_files)
    else:
        assert scp.stored == []


# --------------------------------------------------------------------------- 9. rejected context


async def test_storescp_rejects_unknown_abstract_syntax(
    dcmtk_storescp: DcmtkStoreSCP,
) -> None:
    unknown = "1.2.3.4.5"
    ds = Dataset()
    ds.SOPClassUID = unknown
    ds.SOPInstanceUID = "1.2.3.4.5.6"
    with anyio.fail_after(TEST_TIMEOUT):
        async with AE("OURSCU").associate(
            dcmtk_storescp.host,
            dcmtk_storescp.port,
            called_aet="STORESCP",
            contexts=[uids.VERIFICATION, unknown],
        ) as assoc:
            assert [c.abstract_syntax for c in assoc.accepted_contexts] == [uids.VERIFICATION]
            assert assoc.negotiated is not None
            (refused,) = [c for c in assoc.negotiated.contexts if not c.accepted]
            assert refused.abstract_syntax == unknown
            assert refused.result == ContextResult.ABSTRACT_SYNTAX_NOT_SUPPORTED
            with pytest.raises(NoAcceptedContext):
                await assoc.store(ds)
            # refusing locally did not harm the association
            assert (await assoc.echo()).status == 0x0000
        assert assoc.released
    assert dcmtk_storescp.received_files() == []
