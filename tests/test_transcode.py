"""Transcoding (asyncdicom.storage.transcoding) and its use by store() and the C-GET SCP.

Expected pixel values come from pydicom decoding the original sample (its own handlers, not
our code path), and the rules from PS3.3 C.7.6.1.1.5 (lossy flag, new SOP Instance UID).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from samples import sample

from asyncdicom import AE, presets
from asyncdicom.archive import Archive, qrscp_config
from asyncdicom.cli.main import build_parser
from asyncdicom.cli.storescp import storescp_ae
from asyncdicom.errors import RetrieveFailed, TranscodeError
from asyncdicom.protocol import uids
from asyncdicom.storage import transcoding
from asyncdicom.storage.codec import decode_dataset
from asyncdicom.storage.reader import read_part10_for_send
from asyncdicom.storage.transcoding import (
    CODECS_HINT,
    choose_syntax,
    conversion_refused,
    convert_stored_file,
    syntax_by_name,
    transcode_instance,
)
from asyncdicom.testing import associated
from tests.cli_main import run_main

MR = "1.2.840.10008.5.1.4.1.1.4"
SC = "1.2.840.10008.5.1.4.1.1.7"


def _pixels(data: bytes, ts: str) -> Any:
    ds = decode_dataset(data, ts)
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ts
    return ds, ds.pixel_array


def _original(name: str) -> Any:
    return pydicom.dcmread(sample(name)).pixel_array


# ------------------------------------------------------------------------- the rules


def test_rules_lossless_and_uncompressed_convert_freely_lossy_only_when_allowed() -> None:
    ele, rle, jls = uids.EXPLICIT_VR_LITTLE_ENDIAN, uids.RLE_LOSSLESS, uids.JPEG_LS_LOSSLESS
    for source in (ele, rle, jls, uids.JPEG_2000_LOSSLESS):
        for target in (ele, uids.IMPLICIT_VR_LITTLE_ENDIAN, rle, jls):
            assert conversion_refused(source, target) is None, (source, target)
    # lossy sources may be decompressed
    assert conversion_refused(uids.JPEG_BASELINE_8BIT, ele) is None
    assert conversion_refused(uids.JPEG_2000, uids.IMPLICIT_VR_LITTLE_ENDIAN) is None
    # anything to lossy: refused unless allowed
    for source in (ele, rle, uids.JPEG_BASELINE_8BIT):
        why = conversion_refused(source, uids.JPEG_LS_NEAR_LOSSLESS)
        assert why is not None and "lossy" in why and "--allow-lossy" in why
        assert conversion_refused(source, uids.JPEG_LS_NEAR_LOSSLESS, allow_lossy=True) is None
    # no encoder exists for JPEG baseline
    why = conversion_refused(ele, uids.JPEG_BASELINE_8BIT, allow_lossy=True)
    assert why is not None and "encode" in why


def test_choose_syntax_prefers_own_then_uncompressed_never_lossy_unasked() -> None:
    rle = uids.RLE_LOSSLESS
    accepted = [uids.JPEG_LS_NEAR_LOSSLESS, uids.IMPLICIT_VR_LITTLE_ENDIAN, rle]
    assert choose_syntax(rle, accepted) == (rle, "")
    accepted = [uids.JPEG_LS_NEAR_LOSSLESS, uids.JPEG_LS_LOSSLESS, uids.IMPLICIT_VR_LITTLE_ENDIAN]
    assert choose_syntax(rle, accepted) == (uids.IMPLICIT_VR_LITTLE_ENDIAN, "")
    assert choose_syntax(rle, accepted[:2]) == (uids.JPEG_LS_LOSSLESS, "")
    target, why = choose_syntax(rle, [uids.JPEG_LS_NEAR_LOSSLESS])
    assert target is None and "lossy" in why
    assert choose_syntax(rle, [uids.JPEG_LS_NEAR_LOSSLESS], allow_lossy=True)[0] == (
        uids.JPEG_LS_NEAR_LOSSLESS
    )


def test_without_codecs_the_reason_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(transcoding, "can_decode", lambda ts: ts == uids.EXPLICIT_VR_LITTLE_ENDIAN)
    why = conversion_refused(uids.RLE_LOSSLESS, uids.EXPLICIT_VR_LITTLE_ENDIAN)
    assert why is not None and CODECS_HINT in why
    assert CODECS_HINT == "pip install 'asyncdicom[codecs]'"
    with pytest.raises(TranscodeError, match=r"pip install 'asyncdicom\[codecs\]'"):
        transcode_instance(
            read_part10_for_send(sample("MR_small_RLE.dcm")), uids.EXPLICIT_VR_LITTLE_ENDIAN
        )


# ------------------------------------------------------------------------- conversions


@pytest.mark.parametrize(
    "name",
    [
        "MR_small_RLE.dcm",  # RLE, 16-bit
        "SC_rgb_rle_32bit_2frame.dcm",  # RLE, 32-bit RGB, 2 frames
        "MR_small_jpeg_ls_lossless.dcm",  # JPEG-LS lossless
        "MR_small_jp2klossless.dcm",  # JPEG 2000 lossless
        "SC_rgb_jpeg_gdcm.dcm",  # JPEG lossless SV1, RGB
        "J2K_pixelrep_mismatch.dcm",  # JPEG 2000 whose stream says signed
    ],
)
@pytest.mark.parametrize(
    "target",
    [
        uids.EXPLICIT_VR_LITTLE_ENDIAN,
        uids.IMPLICIT_VR_LITTLE_ENDIAN,
        uids.EXPLICIT_VR_BIG_ENDIAN,
        uids.DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN,
    ],
)
def test_lossless_to_uncompressed_keeps_every_pixel_and_the_uid(name: str, target: str) -> None:
    source = read_part10_for_send(sample(name))
    out = transcode_instance(source, target)
    assert out.transfer_syntax_uid == target
    assert out.sop_instance_uid == source.sop_instance_uid
    ds, pixels = _pixels(out.to_bytes(), target)
    assert np.array_equal(pixels, _original(name))
    assert ds.SOPInstanceUID == source.sop_instance_uid
    assert "LossyImageCompression" not in ds or ds.LossyImageCompression == "00"


@pytest.mark.parametrize(
    ("name", "method"),
    [
        ("SC_rgb_jpeg_dcmtk.dcm", "ISO_10918_1"),
        ("JPEGLSNearLossless_16.dcm", "ISO_14495_1"),
        ("SC_rgb_gdcm_KY.dcm", "ISO_15444_1"),
    ],
)
def test_lossy_to_uncompressed_keeps_the_lossy_flag(name: str, method: str) -> None:
    original = pydicom.dcmread(sample(name))
    source = read_part10_for_send(sample(name))
    out = transcode_instance(source, uids.EXPLICIT_VR_LITTLE_ENDIAN)
    ds, pixels = _pixels(out.to_bytes(), uids.EXPLICIT_VR_LITTLE_ENDIAN)
    assert ds.LossyImageCompression == "01"
    if "LossyImageCompressionMethod" in original:
        assert ds.LossyImageCompressionMethod == original.LossyImageCompressionMethod
    else:
        assert ds.LossyImageCompressionMethod == method
    if "LossyImageCompressionRatio" in original:
        assert ds.LossyImageCompressionRatio == original.LossyImageCompressionRatio
    # no new loss: the same instance
    assert ds.SOPInstanceUID == original.SOPInstanceUID
    assert pixels.shape == original.pixel_array.shape


@pytest.mark.parametrize(
    "name", ["MR_small.dcm", "MR_small_bigendian.dcm", "MR_small_implicit.dcm"]
)
def test_lossless_to_lossless_compressed(name: str) -> None:
    source = read_part10_for_send(sample(name))
    for target in (uids.RLE_LOSSLESS, uids.JPEG_LS_LOSSLESS, uids.JPEG_2000_LOSSLESS):
        out = transcode_instance(source, target)
        ds, pixels = _pixels(out.to_bytes(), target)
        assert np.array_equal(pixels, _original(name)), target
        assert ds.SOPInstanceUID == source.sop_instance_uid
        assert "LossyImageCompression" not in ds


def test_to_lossy_needs_the_flag_then_makes_a_new_instance() -> None:
    source = read_part10_for_send(sample("MR_small.dcm"))
    with pytest.raises(TranscodeError, match="lossy"):
        transcode_instance(source, uids.JPEG_LS_NEAR_LOSSLESS)
    out = transcode_instance(source, uids.JPEG_LS_NEAR_LOSSLESS, allow_lossy=True)
    ds, pixels = _pixels(out.to_bytes(), uids.JPEG_LS_NEAR_LOSSLESS)
    assert (
        out.sop_instance_uid
        != source.sop_instance_uid
        == "1.3.6.1.4.1.5962.1.1.4.1.1.20040826185059.5457"
    )
    assert ds.SOPInstanceUID == out.sop_instance_uid
    assert ds.LossyImageCompression == "01"
    assert ds.LossyImageCompressionMethod == "ISO_14495_1"
    assert float(ds.LossyImageCompressionRatio) > 1
    # near-lossless with a maximum error of 2
    original = _original("MR_small.dcm").astype(int)
    assert np.abs(pixels.astype(int) - original).max() <= 2


def test_a_codec_failure_is_a_transcode_error_with_its_reason() -> None:
    # JPEG-LS cannot hold 32-bit samples
    source = read_part10_for_send(sample("SC_rgb_rle_32bit.dcm"))
    with pytest.raises(TranscodeError, match="cannot convert RLE Lossless"):
        transcode_instance(source, uids.JPEG_LS_LOSSLESS)


def test_a_dataset_is_converted_too() -> None:
    ds = pydicom.dcmread(sample("MR_small_RLE.dcm"))
    out = transcode_instance(ds, uids.IMPLICIT_VR_LITTLE_ENDIAN)
    assert np.array_equal(
        _pixels(out.to_bytes(), uids.IMPLICIT_VR_LITTLE_ENDIAN)[1], _original("MR_small_RLE.dcm")
    )


# ------------------------------------------------------------------------- on the wire


def _storing_scp(out: Path, syntaxes: tuple[str, ...]) -> AE:
    scp = AE("SCP", accept_any_storage=True, storage_transfer_syntaxes=syntaxes)

    @scp.on_store
    async def on_store(request: Any) -> int:
        await request.save_to(out)
        return 0x0000

    return scp


@pytest.mark.anyio
async def test_store_refuses_lossy_without_the_flag_per_instance(
    tmp_path: Path, anyio_backend: str
) -> None:
    """An acceptor taking only JPEG-LS near-lossless: an uncompressed MR fails with the reason
    (the association goes on), and goes out lossy, as a new instance, only when allowed."""
    out = tmp_path / "out"
    scp = _storing_scp(out, (uids.JPEG_LS_NEAR_LOSSLESS,))
    path = sample("MR_small.dcm")
    with anyio.fail_after(20):
        async with associated(scp, contexts=[(MR, [uids.JPEG_LS_NEAR_LOSSLESS])]) as assoc:
            with pytest.raises(TranscodeError, match="lossy conversion refused"):
                await assoc.store(path)
            assert assoc.is_established
            assert not out.exists()
            response = await assoc.store(path, allow_lossy=True)
            assert response.status == 0x0000
    (stored,) = out.iterdir()
    ds = pydicom.dcmread(stored)
    assert ds.file_meta.TransferSyntaxUID == uids.JPEG_LS_NEAR_LOSSLESS
    assert ds.SOPInstanceUID != read_part10_for_send(path).sop_instance_uid
    assert stored.name == f"{ds.SOPInstanceUID}.dcm"
    assert ds.LossyImageCompression == "01"


@pytest.mark.anyio
@pytest.mark.parametrize("allow_lossy", [False, True])
async def test_storescu_allow_lossy_against_a_lossy_only_scp(
    tmp_path: Path, anyio_backend: str, allow_lossy: bool
) -> None:
    """``storescu --allow-lossy`` proposes the lossy syntaxes it can make (besides the file's
    own and the uncompressed ones): an SCP taking only JPEG-LS near-lossless gets the file as a
    new instance; without the flag nothing is sent and the file fails."""
    from tests.test_cli import err, out, run_cli

    received = tmp_path / "received"
    scp = _storing_scp(received, (uids.JPEG_LS_NEAR_LOSSLESS,))
    path = sample("MR_small.dcm")
    flag = ["--allow-lossy"] if allow_lossy else []
    async with scp.server("127.0.0.1", 0) as server:
        result = await run_cli(
            "storescu", "127.0.0.1", str(server.port), str(path), "--called-aet", "SCP",
            "--backend", anyio_backend, *flag, cwd=tmp_path,
        )  # fmt: skip
    if not allow_lossy:
        assert result.returncode == 1, (out(result), err(result))
        assert not received.exists()
        return
    assert result.returncode == 0, (out(result), err(result))
    _assert_one_new_lossy_instance(received)


@pytest.mark.anyio
async def test_store_decompresses_for_an_uncompressed_acceptor(
    tmp_path: Path, anyio_backend: str
) -> None:
    out = tmp_path / "out"
    scp = _storing_scp(out, (uids.IMPLICIT_VR_LITTLE_ENDIAN,))
    names = ["MR_small_RLE.dcm", "SC_rgb_jpeg_dcmtk.dcm"]
    with anyio.fail_after(20):
        contexts = [(MR, [uids.IMPLICIT_VR_LITTLE_ENDIAN]), (SC, [uids.IMPLICIT_VR_LITTLE_ENDIAN])]
        async with associated(scp, contexts=contexts) as assoc:
            for name in names:
                assert (await assoc.store(sample(name))).status == 0x0000
            # a Dataset in a compressed syntax as well
            ds = pydicom.dcmread(sample("MR_small_jpeg_ls_lossless.dcm"))
            ds.SOPInstanceUID = "1.2.826.0.1.3680043.8.498.1"
            assert (await assoc.store(ds)).status == 0x0000
    for name in names:
        uid = read_part10_for_send(sample(name)).sop_instance_uid
        got = pydicom.dcmread(out / f"{uid}.dcm")
        assert got.file_meta.TransferSyntaxUID == uids.IMPLICIT_VR_LITTLE_ENDIAN
        assert got.pixel_array.shape == _original(name).shape
    got = pydicom.dcmread(out / "1.2.826.0.1.3680043.8.498.1.dcm")
    assert np.array_equal(got.pixel_array, _original("MR_small_jpeg_ls_lossless.dcm"))
    mr = read_part10_for_send(sample("MR_small_RLE.dcm")).sop_instance_uid
    assert np.array_equal(
        pydicom.dcmread(out / f"{mr}.dcm").pixel_array, _original("MR_small_RLE.dcm")
    )


@pytest.mark.anyio
async def test_c_get_scp_decompresses_for_a_requestor_taking_only_uncompressed(
    tmp_path: Path, anyio_backend: str
) -> None:
    """The C-GET SCP of the Python API: compressed files go back decompressed in the contexts
    the requestor accepted (uncompressed only); a lossless source is pixel-identical."""
    names = ["MR_small_RLE.dcm", "SC_rgb_jpeg_gdcm.dcm", "JPEG2000.dcm"]
    scp = AE(
        "QRSCP",
        supported_contexts=presets.qr_supported() + presets.storage_supported(scu_role=True),
    )

    @scp.on("C-GET")
    def retrieve(request: Any) -> Iterator[Any]:
        for name in names:
            yield sample(name)

    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = "1.2.3"
    out = tmp_path / "got"
    contexts = presets.retrieve_contexts(
        "get", storage=[MR, SC], storage_transfer_syntaxes=uids.UNCOMPRESSED_TRANSFER_SYNTAXES
    )
    with anyio.fail_after(20):
        async with associated(scp, contexts=contexts) as assoc:
            async with assoc.get(query, store=out) as retrieval:
                final = await retrieval.wait()
    assert final.status == 0x0000, final
    assert retrieval.completed == 3 and retrieval.failed == 0
    for name in names:
        uid = read_part10_for_send(sample(name)).sop_instance_uid
        got = pydicom.dcmread(out / f"{uid}.dcm")
        assert got.file_meta.TransferSyntaxUID in uids.UNCOMPRESSED_TRANSFER_SYNTAXES
        if name == "JPEG2000.dcm":  # lossy: the flag stays
            assert got.LossyImageCompression == "01"
        else:
            assert np.array_equal(got.pixel_array, _original(name))


# ------------------------------------------------------------------------- --store-as


def test_store_as_names() -> None:
    assert syntax_by_name("explicit") == uids.EXPLICIT_VR_LITTLE_ENDIAN
    assert syntax_by_name("ExplicitVRLittleEndian") == uids.EXPLICIT_VR_LITTLE_ENDIAN
    assert syntax_by_name("deflated") == uids.DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN
    assert syntax_by_name("JPEG-LS-lossless") == uids.JPEG_LS_LOSSLESS
    assert syntax_by_name("JPEGLSLossless") == uids.JPEG_LS_LOSSLESS
    assert syntax_by_name("1.2.840.10008.1.2.5") == uids.RLE_LOSSLESS
    for bad in ("nonsense", "1.2.3"):
        with pytest.raises(ValueError, match="transfer syntax"):
            syntax_by_name(bad)


def _copy(tmp_path: Path, name: str) -> Path:
    source = read_part10_for_send(sample(name))
    target = tmp_path / f"{source.sop_instance_uid}.dcm"
    target.write_bytes(sample(name).read_bytes())
    return target


def test_convert_stored_file_in_place_and_lossy_under_a_new_name(tmp_path: Path) -> None:
    path = _copy(tmp_path, "MR_small_RLE.dcm")
    same, new_uid = convert_stored_file(
        path, uids.DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN, implementation_class_uid="1.2.3"
    )
    assert same == path and new_uid is None
    ds = pydicom.dcmread(path)
    assert ds.file_meta.TransferSyntaxUID == uids.DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN
    assert np.array_equal(ds.pixel_array, _original("MR_small_RLE.dcm"))
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left
    with pytest.raises(TranscodeError, match="lossy"):
        convert_stored_file(path, uids.JPEG_2000, implementation_class_uid="1.2.3")
    moved, new_uid = convert_stored_file(
        path, uids.JPEG_2000, allow_lossy=True, implementation_class_uid="1.2.3"
    )
    assert new_uid is not None and moved == tmp_path / f"{new_uid}.dcm"
    assert [p.name for p in tmp_path.iterdir()] == [moved.name]
    ds = pydicom.dcmread(moved)
    assert ds.SOPInstanceUID == ds.file_meta.MediaStorageSOPInstanceUID == new_uid
    assert ds.LossyImageCompression == "01"


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (["--store-as", "nonsense"], "unknown transfer syntax 'nonsense'"),
        (["--store-as", "jpeg-ls-near-lossless"], "is lossy: add --allow-lossy"),
    ],
)
def test_store_as_usage_errors(tmp_path: Path, option: list[str], message: str) -> None:
    for app in (["storescp", "--output-dir", "out"], ["qrscp", "--storage", "archive"]):
        result = run_main(*app, "--port", "0", *option, cwd=tmp_path)
        assert result.returncode == 2, result
        assert message in result.stderr.decode(), result.stderr.decode()
    assert list(tmp_path.iterdir()) == []  # nothing created


@pytest.mark.anyio
async def test_storescp_store_as(tmp_path: Path, anyio_backend: str) -> None:
    """storescp --store-as jpeg-ls-lossless: an RLE instance is stored in JPEG-LS,
    pixel-identical; one JPEG-LS cannot hold (32-bit samples) is kept as received."""
    args = build_parser().parse_args(
        ["storescp", "--output-dir", str(tmp_path), "--store-as", "jpeg-ls-lossless", "--port", "0"]
    )
    ae = storescp_ae(args)
    contexts = [(MR, [uids.RLE_LOSSLESS]), (SC, [uids.RLE_LOSSLESS])]
    names = ["MR_small_RLE.dcm", "SC_rgb_rle_32bit.dcm"]
    with anyio.fail_after(20):
        async with associated(ae, contexts=contexts) as assoc:
            for name in names:
                assert (await assoc.store(sample(name))).status == 0x0000
    got = []
    for name in names:
        uid = read_part10_for_send(sample(name)).sop_instance_uid
        ds = pydicom.dcmread(tmp_path / f"{uid}.dcm")
        assert np.array_equal(ds.pixel_array, _original(name))
        got.append(ds.file_meta.TransferSyntaxUID)
    assert got == [uids.JPEG_LS_LOSSLESS, uids.RLE_LOSSLESS]
    assert sorted(p.suffix for p in tmp_path.iterdir()) == [".dcm", ".dcm"]


@pytest.mark.anyio
async def test_archive_store_as(tmp_path: Path, anyio_backend: str) -> None:
    """qrscp --store-as jpeg-ls-lossless (the Archive's ``store_as``): an uncompressed MR is
    stored and indexed in JPEG-LS lossless, and retrieved pixel-identical."""
    ae = AE(config=qrscp_config("QRSCP"))
    async with Archive(tmp_path / "archive", store_as=uids.JPEG_LS_LOSSLESS) as archive:
        archive.install(ae)
        with anyio.fail_after(20):
            async with associated(ae, contexts=[(MR, [uids.EXPLICIT_VR_LITTLE_ENDIAN])]) as assoc:
                assert (await assoc.store(sample("MR_small.dcm"))).status == 0x0000
        (stored,) = (tmp_path / "archive").rglob("*.dcm")
        ds = pydicom.dcmread(stored)
        assert ds.file_meta.TransferSyntaxUID == uids.JPEG_LS_LOSSLESS
        assert np.array_equal(ds.pixel_array, _original("MR_small.dcm"))
        assert await anyio.to_thread.run_sync(archive.index.count) == 1


# ------------------------------------------------------------------------- getscu --discover


def test_retrieve_contexts_for_syntaxes_pairs_then_uncompressed_only() -> None:
    plain = tuple(t for t in uids.ALL_TRANSFER_SYNTAXES if t in uids.UNCOMPRESSED_TRANSFER_SYNTAXES)
    found = {MR: {uids.RLE_LOSSLESS, uids.EXPLICIT_VR_LITTLE_ENDIAN}, SC: {uids.JPEG_2000}}
    contexts = presets.retrieve_contexts_for_syntaxes(found)
    storage = [(c.abstract_syntax, c.transfer_syntaxes) for c in contexts[2:]]
    assert storage == [
        (MR, plain),
        (MR, (uids.RLE_LOSSLESS,)),
        (SC, plain),
        (SC, (uids.JPEG_2000,)),
    ]
    assert all(c.scp_role and not c.scu_role for c in contexts[2:])
    # 70 classes with a compressed syntax each: 142 contexts do not fit, so the uncompressed
    # ones only (the SCP converts)
    many = {f"1.2.840.10008.5.1.4.1.1.{i}": {uids.JPEG_2000_LOSSLESS} for i in range(70)}
    contexts = presets.retrieve_contexts_for_syntaxes(many)
    assert len(contexts) == 72
    assert all(c.transfer_syntaxes == plain for c in contexts[2:])
    with pytest.raises(ValueError, match="128 contexts at most"):
        presets.retrieve_contexts_for_syntaxes({f"1.2.3.{i}": set() for i in range(127)})


@pytest.mark.anyio
async def test_archive_reports_available_transfer_syntax(
    tmp_path: Path, anyio_backend: str
) -> None:
    """qrscp's IMAGE-level records carry Available Transfer Syntax UID (0008,3002), and
    syntaxes_to_retrieve collects it per SOP class."""
    from asyncdicom.services.retrieve import syntaxes_to_retrieve

    folder = tmp_path / "archive"
    folder.mkdir()
    rle = pydicom.dcmread(sample("MR_small_RLE.dcm"))
    ct = pydicom.dcmread(sample("CT_small.dcm"))
    for ds, name in ((rle, "rle.dcm"), (ct, "ct.dcm")):
        ds.PatientID = "AVAILABLE"
        ds.StudyInstanceUID = "1.2.826.0.1.3680043.10.1234.78"
        ds.save_as(folder / name, enforce_file_format=True)
    ae = AE(config=qrscp_config("QRSCP"))
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = "1.2.826.0.1.3680043.10.1234.78"
    async with Archive(folder) as archive:
        archive.install(ae)
        with anyio.fail_after(20):
            async with associated(ae, contexts=presets.QR_FIND) as assoc:
                found = await syntaxes_to_retrieve(assoc, query)
    assert found == {
        MR: {uids.RLE_LOSSLESS},
        uids.CT_IMAGE_STORAGE: {str(ct.file_meta.TransferSyntaxUID)},
    }


def _mr_retrieve_scp(command: str, **config: Any) -> AE:
    """A Q/R SCP whose C-GET or C-MOVE handler yields MR_small.dcm (uncompressed)."""
    supported = presets.qr_supported()
    if command == "C-GET":
        supported = supported + presets.storage_supported(scu_role=True)
    scp = AE("QRSCP", supported_contexts=supported, **config)

    @scp.on(command)
    def retrieve(request: Any) -> Iterator[Any]:
        yield sample("MR_small.dcm")

    return scp


def _study_query() -> Dataset:
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = "1.2.3"
    return query


def _assert_one_new_lossy_instance(folder: Path) -> None:
    """``folder`` holds MR_small.dcm made lossy: JPEG-LS near-lossless, flag "01", new UID."""
    (stored,) = folder.iterdir()
    ds = pydicom.dcmread(stored)
    assert ds.file_meta.TransferSyntaxUID == uids.JPEG_LS_NEAR_LOSSLESS
    assert ds.LossyImageCompression == "01"
    assert ds.SOPInstanceUID != read_part10_for_send(sample("MR_small.dcm")).sop_instance_uid


@pytest.mark.anyio
@pytest.mark.parametrize("allow_lossy", [False, True])
async def test_c_get_scp_to_a_lossy_only_requestor(
    tmp_path: Path, anyio_backend: str, allow_lossy: bool
) -> None:
    """A requestor accepting only JPEG-LS near-lossless for MR: the C-GET SCP makes a lossless
    instance lossy (a new instance) only with ``retrieve_allow_lossy``; without it the
    sub-operation fails with the reason in the Error Comment."""
    scp = _mr_retrieve_scp("C-GET", retrieve_allow_lossy=allow_lossy)
    contexts = presets.retrieve_contexts(
        "get", storage=[MR], storage_transfer_syntaxes=[uids.JPEG_LS_NEAR_LOSSLESS]
    )
    got = tmp_path / "got"
    with anyio.fail_after(20):
        async with associated(scp, contexts=contexts) as assoc:
            if allow_lossy:
                async with assoc.get(_study_query(), store=got) as retrieval:
                    await retrieval.wait()
            else:
                with pytest.raises(RetrieveFailed) as caught:
                    async with assoc.get(_study_query(), store=got) as retrieval:
                        await retrieval.wait()
    if allow_lossy:
        assert retrieval.completed == 1 and retrieval.failed == 0
        _assert_one_new_lossy_instance(got)
        return
    final = caught.value.response
    assert final.status == 0xA702, final  # every sub-operation failed
    assert retrieval.failed == 1 and retrieval.completed == 0
    assert "lossy conversion refused" in str(final.error_comment), final
    assert not got.exists() or not any(got.iterdir())


@pytest.mark.anyio
@pytest.mark.parametrize("allow_lossy", [False, True])
async def test_c_move_scp_to_a_lossy_only_destination(
    tmp_path: Path, anyio_backend: str, allow_lossy: bool
) -> None:
    """A C-MOVE destination taking only JPEG-LS near-lossless: with ``retrieve_allow_lossy``
    the SCP proposes the lossy syntaxes too and sends a new instance; without it the
    sub-operation fails and nothing arrives."""
    received = tmp_path / "received"
    dest = _storing_scp(received, (uids.JPEG_LS_NEAR_LOSSLESS,))
    scp = _mr_retrieve_scp("C-MOVE", retrieve_allow_lossy=allow_lossy)
    with anyio.fail_after(20):
        async with dest.server("127.0.0.1", 0) as dest_server:
            scp.move_destinations["DEST"] = ("127.0.0.1", dest_server.port)
            async with associated(scp, contexts=presets.retrieve_contexts("move")) as assoc:
                if allow_lossy:
                    async with assoc.move(_study_query(), destination="DEST") as retrieval:
                        await retrieval.wait()
                else:
                    with pytest.raises(RetrieveFailed) as caught:
                        async with assoc.move(_study_query(), destination="DEST") as retrieval:
                            await retrieval.wait()
    if allow_lossy:
        assert retrieval.completed == 1 and retrieval.failed == 0
        _assert_one_new_lossy_instance(received)
        return
    assert caught.value.response.status == 0xA702, caught.value.response
    assert not received.exists()
