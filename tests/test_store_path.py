"""The C-STORE send and save paths: Part10Source in store(), small files read whole, big files
streamed, the SCP's batched writes, the storescu worker (prefetch, failure accounting), and the
presentation contexts proposed for a set of files.

Our SCU against our SCP over loopback, on asyncio and trio.
"""

from __future__ import annotations

import argparse
import re
import tracemalloc
from pathlib import Path
from typing import Any

import anyio
import pydicom.data
import pytest

from asyncdicom import AE, ContextRequest, TooManyPresentationContexts, contexts_for_files
from asyncdicom.cli import main as main_cli
from asyncdicom.cli import storescu as cli
from asyncdicom.errors import DICOMError, InvalidDicomFile
from asyncdicom.protocol import uids
from asyncdicom.protocol.uids import EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN
from asyncdicom.services import storage as storage_service
from asyncdicom.storage.codec import decode_dataset, encode_dataset
from asyncdicom.storage.contexts import contexts_for_syntaxes
from asyncdicom.storage.meta import encode_file_meta
from asyncdicom.storage.reader import Part10Source, read_part10_for_send
from asyncdicom.storage.synthetic import make_ct_instance, write_ct_files

CT = uids.CT_IMAGE_STORAGE
GUARD = 60.0


def _storing_scp(out: Path, **kw: Any) -> AE:
    scp = AE("SCP", accept_any_storage=True, **kw)

    @scp.on_store
    async def on_store(request: Any) -> int:
        await request.save_to(out)
        return 0x0000

    return scp


def _received(out: Path, source: Part10Source) -> bytes:
    """The data set bytes of the file the SCP wrote for ``source``'s instance."""
    return read_part10_for_send(out / f"{source.sop_instance_uid}.dcm").read_bytes()


def _write_part10(path: Path, ds: Any, transfer_syntax: str) -> Path:
    meta = encode_file_meta(
        sop_class_uid=str(ds.SOPClassUID),
        sop_instance_uid=str(ds.SOPInstanceUID),
        transfer_syntax_uid=transfer_syntax,
        implementation_class_uid="1.2.3.4",
    )
    path.write_bytes(b"\x00" * 128 + b"DICM" + meta + encode_dataset(ds, transfer_syntax))
    return path


# --------------------------------------------------------------------------- reading


def test_read_limit_loads_small_data_sets_only(tmp_path: Path) -> None:
    path = write_ct_files(tmp_path, 1, 40_000, seed=1)[0]
    plain = read_part10_for_send(path)
    assert plain.data is None
    on_disk = plain.read_bytes()
    assert len(on_disk) == plain.dataset_length

    loaded = read_part10_for_send(path, read_limit=plain.dataset_length)
    assert loaded.data == on_disk
    assert loaded == plain  # the loaded bytes take no part in comparisons
    assert "data=" not in repr(loaded)
    assert read_part10_for_send(path, read_limit=plain.dataset_length - 1).data is None

    again = plain.load()
    assert again.data == on_disk and again.load() is again
    for size in (1, 1000, 4096, 1 << 20):
        chunks = list(again.iter_chunks(size))
        assert all(0 < len(c) <= size for c in chunks)
        assert b"".join(chunks) == on_disk == b"".join(plain.iter_chunks(size))
    assert again.read_bytes() == on_disk


def test_load_detects_a_file_that_shrank(tmp_path: Path) -> None:
    path = write_ct_files(tmp_path, 1, 20_000, seed=2)[0]
    source = read_part10_for_send(path)
    with open(path, "r+b") as fp:
        fp.truncate(source.dataset_offset + 100)
    with pytest.raises(InvalidDicomFile, match="shorter"):
        source.load()
    with pytest.raises(InvalidDicomFile, match="shorter"):
        source.read_bytes()


def test_meta_with_large_private_element_is_skipped(tmp_path: Path) -> None:
    # A meta group bigger than the reader's window: the values after it are still found.
    ds = make_ct_instance(1000, seed=3)
    meta = encode_file_meta(
        sop_class_uid=CT,
        sop_instance_uid=str(ds.SOPInstanceUID),
        transfer_syntax_uid=EXPLICIT_VR_LITTLE_ENDIAN,
        implementation_class_uid="1.2.3.4",
    )
    # (0002,0100) Private Information Creator UID is UI; use (0002,0102) Private Information, OB
    big = b"\x02\x00\x02\x01OB\x00\x00" + (100_000).to_bytes(4, "little") + b"\xab" * 100_000
    group_length = int.from_bytes(meta[8:12], "little") + len(big)
    meta = meta[:8] + group_length.to_bytes(4, "little") + meta[12:] + big
    body = encode_dataset(ds, EXPLICIT_VR_LITTLE_ENDIAN)
    path = tmp_path / "big-meta.dcm"
    path.write_bytes(b"\x00" * 128 + b"DICM" + meta + body)
    source = read_part10_for_send(path, read_limit=1 << 20)
    assert source.transfer_syntax_uid == EXPLICIT_VR_LITTLE_ENDIAN
    assert source.sop_instance_uid == ds.SOPInstanceUID
    assert source.dataset_offset == 132 + len(meta)
    assert source.data == body


# --------------------------------------------------------------------------- sending


@pytest.mark.anyio
async def test_store_accepts_part10_sources_and_paths(tmp_path: Path) -> None:
    files = write_ct_files(tmp_path / "in", 3, 60_000, seed=4)
    out = tmp_path / "out"
    plain = read_part10_for_send(files[0])
    loaded = read_part10_for_send(files[1]).load()
    async with _storing_scp(out).server() as server:
        async with AE("SCU").associate("127.0.0.1", server.port, contexts=[CT]) as assoc:
            assert (await assoc.store(plain)).status == 0x0000
            assert (await assoc.store(loaded)).status == 0x0000
            assert (await assoc.store(files[2])).status == 0x0000
    for f in files:
        source = read_part10_for_send(f)
        assert _received(out, source) == source.read_bytes()


@pytest.mark.anyio
async def test_loaded_source_is_sent_from_memory(tmp_path: Path) -> None:
    path = write_ct_files(tmp_path / "in", 1, 30_000, seed=5)[0]
    out = tmp_path / "out"
    loaded = read_part10_for_send(path).load()
    expected = loaded.read_bytes()
    path.unlink()  # the data set is in memory: the file is not needed any more
    async with _storing_scp(out).server() as server:
        async with AE("SCU").associate("127.0.0.1", server.port, contexts=[CT]) as assoc:
            assert (await assoc.store(loaded)).status == 0x0000
    assert _received(out, loaded) == expected


@pytest.mark.anyio
async def test_unreadable_source_fails_before_sending(tmp_path: Path) -> None:
    # A file that shrank after it was located fails that store only: nothing was sent, the
    # association stays usable.
    files = write_ct_files(tmp_path / "in", 2, 20_000, seed=6)
    out = tmp_path / "out"
    shrunk = read_part10_for_send(files[0])
    with open(files[0], "r+b") as fp:
        fp.truncate(shrunk.dataset_offset + 10)
    async with _storing_scp(out).server() as server:
        async with AE("SCU").associate("127.0.0.1", server.port, contexts=[CT]) as assoc:
            with pytest.raises(InvalidDicomFile):
                await assoc.store(shrunk)
            assert assoc.is_established
            assert (await assoc.store(files[1])).status == 0x0000
    assert sorted(p.name for p in out.iterdir()) == [files[1].name]


@pytest.mark.anyio
async def test_loaded_source_is_transcoded_when_its_syntax_is_refused(tmp_path: Path) -> None:
    ds = make_ct_instance(20_000, seed=7)
    path = _write_part10(tmp_path / "implicit.dcm", ds, IMPLICIT_VR_LITTLE_ENDIAN)
    loaded = read_part10_for_send(path).load()
    assert loaded.transfer_syntax_uid == IMPLICIT_VR_LITTLE_ENDIAN
    out = tmp_path / "out"
    contexts = [(CT, [EXPLICIT_VR_LITTLE_ENDIAN])]
    async with _storing_scp(out).server() as server:
        async with AE("SCU").associate("127.0.0.1", server.port, contexts=contexts) as assoc:
            assert (await assoc.store(loaded)).status == 0x0000
    saved = read_part10_for_send(out / f"{ds.SOPInstanceUID}.dcm")
    assert saved.transfer_syntax_uid == EXPLICIT_VR_LITTLE_ENDIAN
    decoded = decode_dataset(saved.read_bytes(), EXPLICIT_VR_LITTLE_ENDIAN)
    for keyword in ("SOPInstanceUID", "Rows", "Columns", "PatientName", "PixelData"):
        assert decoded[keyword].value == ds[keyword].value


@pytest.mark.anyio
async def test_big_file_is_streamed_not_loaded(tmp_path: Path) -> None:
    # Above SEND_WHOLE_LIMIT a file is read chunk by chunk: memory stays far below its size.
    size = storage_service.SEND_WHOLE_LIMIT * 3
    path = write_ct_files(tmp_path / "in", 1, size, seed=8)[0]
    source = read_part10_for_send(path)
    assert source.dataset_length > storage_service.SEND_WHOLE_LIMIT
    out = tmp_path / "out"
    scp = _storing_scp(out, max_pdu_length=65536)
    async with scp.server() as server:
        async with AE("SCU", max_pdu_length=65536).associate(
            "127.0.0.1", server.port, contexts=[CT]
        ) as assoc:
            tracemalloc.start()
            try:
                with anyio.fail_after(GUARD):
                    assert (await assoc.store(path)).status == 0x0000
                _, peak = tracemalloc.get_traced_memory()
            finally:
                tracemalloc.stop()
    assert peak < source.dataset_length // 2, peak
    assert _received(out, source) == source.read_bytes()


# --------------------------------------------------------------------------- saving


@pytest.mark.anyio
@pytest.mark.parametrize("threaded", [False, True], ids=["inline-io", "threaded-io"])
async def test_save_in_several_batches_then_commit(tmp_path: Path, threaded: bool) -> None:
    # Bigger than one write batch: written in batches, the tail and the rename in one call;
    # only the final file is left in the folder, whichever thread does the file work.
    ds = make_ct_instance(3 * (1 << 20) + 12_345, seed=9)
    out = tmp_path / "out"
    async with _storing_scp(out, file_io_in_threads=threaded).server() as server:
        async with AE("SCU").associate("127.0.0.1", server.port, contexts=[CT]) as assoc:
            assert (await assoc.store(ds)).status == 0x0000
            assert (await assoc.store(make_ct_instance(100, seed=10))).status == 0x0000
    names = sorted(p.name for p in out.iterdir())
    assert len(names) == 2 and not any(n.startswith(".") for n in names)
    saved = read_part10_for_send(out / f"{ds.SOPInstanceUID}.dcm")
    assert saved.read_bytes() == encode_dataset(ds, EXPLICIT_VR_LITTLE_ENDIAN)


# --------------------------------------------------------------------------- storescu


def _storescu_args(port: int, *extra: str) -> argparse.Namespace:
    return main_cli.build_parser().parse_args(["storescu", "127.0.0.1", str(port), *extra])


@pytest.mark.anyio
@pytest.mark.parametrize("inline_limit", [0, 1 << 20], ids=["thread", "inline"])
async def test_storescu_file_gone_after_scan_counts_as_failed(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    inline_limit: int,
) -> None:
    # The prefetcher reads small files in the loop's thread and bigger ones in a worker
    # thread; both paths report a file that vanished after the scan as one failure.
    monkeypatch.setattr(cli, "_INLINE_READ_LIMIT", inline_limit)
    files = write_ct_files(tmp_path / "in", 5, 30_000, seed=11)
    real_scan = cli._scan

    def scan_then_lose_one(paths: list[Path], stats: Any) -> Any:
        items = real_scan(paths, stats)
        files[2].unlink()
        return items

    monkeypatch.setattr(cli, "_scan", scan_then_lose_one)
    out = tmp_path / "out"
    async with _storing_scp(out).server() as server:
        with anyio.fail_after(GUARD):
            code = await cli.run(_storescu_args(server.port, str(tmp_path / "in")))
    captured = capsys.readouterr()
    assert code == 1
    assert re.search(r"\bsent 4, failed 1\b", captured.out), captured.out
    assert files[2].name in captured.err
    assert sorted(p.name for p in out.iterdir()) == sorted(
        f.name for i, f in enumerate(files) if i != 2
    )


@pytest.mark.anyio
async def test_storescu_rejected_associations_count_every_file_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    files = write_ct_files(tmp_path / "in", 7, 2_000, seed=12)
    scp = AE("SCP", accept_any_storage=True, require_called_ae_title=True)
    async with scp.server() as server:
        args = _storescu_args(
            server.port, str(tmp_path / "in"), "--called-aet", "WRONG", "--concurrency", "2"
        )
        with anyio.fail_after(GUARD):
            code = await cli.run(args)
    captured = capsys.readouterr()
    assert code == 1
    assert re.search(r"\bsent 0, failed 7\b", captured.out), captured.out
    lines = captured.err.splitlines()
    assert lines[0].startswith("asyncdicom: error: 2 associations could not be opened: ")
    not_sent = sorted(line.split(": ")[2] for line in lines[1:] if ": not sent: " in line)
    assert not_sent == sorted(map(str, files)) and len(lines) == 8, lines


@pytest.mark.anyio
async def test_storescu_sends_every_file_with_concurrency(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    files = write_ct_files(tmp_path / "in", 9, 10_000, seed=13)
    out = tmp_path / "out"
    async with _storing_scp(out).server() as server:
        args = _storescu_args(server.port, str(tmp_path / "in"), "--concurrency", "3")
        with anyio.fail_after(GUARD):
            code = await cli.run(args)
    captured = capsys.readouterr()
    assert code == 0, captured
    assert re.search(r"\bsent 9, failed 0\b", captured.out), captured.out
    for f in files:
        source = read_part10_for_send(f)
        assert _received(out, source) == source.read_bytes()


# --------------------------------------------------------------------------- contexts for files

SAMPLES = Path(pydicom.data.__file__).parent / "test_files"


def test_contexts_for_files_one_context_per_pair_and_a_fallback(tmp_path: Path) -> None:
    explicit = write_ct_files(tmp_path / "ct", 2, 100, seed=20)
    implicit = _write_part10(
        tmp_path / "implicit.dcm", make_ct_instance(100, seed=21), IMPLICIT_VR_LITTLE_ENDIAN
    )
    rle = SAMPLES / "MR_small_RLE.dcm"  # MR Image Storage, RLE Lossless
    j2k = SAMPLES / "JPEG2000.dcm"  # Secondary Capture, JPEG 2000
    paths = [*explicit, implicit, rle, j2k, rle]
    expected = [
        ContextRequest(CT, ("1.2.840.10008.1.2.1",)),
        ContextRequest(CT, ("1.2.840.10008.1.2",)),
        ContextRequest("1.2.840.10008.5.1.4.1.1.4", ("1.2.840.10008.1.2.5",)),
        ContextRequest("1.2.840.10008.5.1.4.1.1.7", ("1.2.840.10008.1.2.4.91",)),
        # every SOP class gets the conversion fallback: its files can be decoded
        ContextRequest(CT, ("1.2.840.10008.1.2.1", "1.2.840.10008.1.2")),
        ContextRequest("1.2.840.10008.5.1.4.1.1.4", ("1.2.840.10008.1.2.1", "1.2.840.10008.1.2")),
        ContextRequest("1.2.840.10008.5.1.4.1.1.7", ("1.2.840.10008.1.2.1", "1.2.840.10008.1.2")),
    ]
    assert contexts_for_files(paths) == expected
    assert contexts_for_files(str(p) for p in paths) == expected
    assert contexts_for_files([read_part10_for_send(p) for p in paths]) == expected
    assert contexts_for_files([]) == []


def test_contexts_for_files_without_codecs_no_fallback_for_compressed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without the codecs extra, a compressed file can only go out in its own syntax: only the
    SOP class with uncompressed files gets the fallback."""
    from asyncdicom.storage import transcoding

    monkeypatch.setattr(
        transcoding, "can_decode", lambda ts: ts in uids.UNCOMPRESSED_TRANSFER_SYNTAXES
    )
    explicit = write_ct_files(tmp_path / "ct", 1, 100, seed=20)
    paths = [*explicit, SAMPLES / "MR_small_RLE.dcm", SAMPLES / "JPEG2000.dcm"]
    assert contexts_for_files(paths) == [
        ContextRequest(CT, ("1.2.840.10008.1.2.1",)),
        ContextRequest("1.2.840.10008.5.1.4.1.1.4", ("1.2.840.10008.1.2.5",)),
        ContextRequest("1.2.840.10008.5.1.4.1.1.7", ("1.2.840.10008.1.2.4.91",)),
        ContextRequest(CT, ("1.2.840.10008.1.2.1", "1.2.840.10008.1.2")),
    ]


# pydicom's look at the text file (is it a data set without a header?) warns about its VR
@pytest.mark.filterwarnings("ignore:Expected implicit VR")
def test_contexts_for_files_refuses_more_than_128(tmp_path: Path) -> None:
    classes = uids.storage_sop_classes()
    # 64 SOP classes of uncompressed files: 64 contexts + 64 fallbacks, exactly the limit
    fits = [(c, EXPLICIT_VR_LITTLE_ENDIAN) for c in classes[:64]]
    assert len(contexts_for_syntaxes(fits)) == 128
    too_many = [(c, EXPLICIT_VR_LITTLE_ENDIAN) for c in classes[:65]]
    with pytest.raises(TooManyPresentationContexts) as caught:
        contexts_for_syntaxes(too_many)
    assert caught.value.needed == 130
    assert isinstance(caught.value, DICOMError) and isinstance(caught.value, ValueError)
    assert "130 presentation contexts needed" in str(caught.value)
    not_dicom = tmp_path / "notes.txt"
    not_dicom.write_text("not DICOM\n")
    with pytest.raises(InvalidDicomFile):
        contexts_for_files([not_dicom])


@pytest.mark.anyio
async def test_contexts_for_files_let_a_refused_syntax_be_converted(tmp_path: Path) -> None:
    """An acceptor that takes only Implicit VR Little Endian: the Explicit VR file goes out on
    the fallback context, converted."""
    path = write_ct_files(tmp_path / "in", 1, 2000, seed=22)[0]
    out = tmp_path / "out"
    scp = _storing_scp(out, storage_transfer_syntaxes=(IMPLICIT_VR_LITTLE_ENDIAN,))
    async with scp.server() as server:
        async with AE("SCU").associate(
            "127.0.0.1", server.port, contexts=contexts_for_files([path])
        ) as assoc:
            assert (await assoc.store(path)).status == 0x0000
    saved = read_part10_for_send(out / path.name)
    assert saved.transfer_syntax_uid == IMPLICIT_VR_LITTLE_ENDIAN
