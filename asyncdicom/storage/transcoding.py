"""Converting instances between transfer syntaxes, compressed ones included.

The rules (docs/transcoding.md) are those of PS3.3 C.7.6.1.1.5 and PS3.5 8.2:

* uncompressed or lossless to anything uncompressed or lossless: always (the pixel values do
  not change, the instance keeps its SOP Instance UID);
* lossy to uncompressed or lossless: allowed (nothing more is lost); Lossy Image Compression
  (0028,2110) stays "01", its Ratio (0028,2112) and Method (0028,2114) are kept (set from the
  source syntax when the source lacked them);
* anything to lossy: only when asked for (``allow_lossy=True``, ``--allow-lossy``); the result is
  a new instance: a new SOP Instance UID, Lossy Image Compression "01", and the ratio and method
  of this compression appended to those of earlier ones.

Decoding and encoding compressed pixel data is done by pydicom's pixel data handlers with the
plugins of the ``codecs`` extra (``pip install 'asyncdicom[codecs]'``: pylibjpeg with its
libjpeg, openjpeg and RLE plugins, pyjpegls, and Pillow for JPEG baseline); without them a
conversion that needs one fails with a :class:`~asyncdicom.errors.TranscodeError` saying so.
pydicom and numpy are imported inside the functions that use them.

Memory: converting to an uncompressed syntax decodes frame by frame into one buffer of the
decoded size, sent from there without another copy (bound: the encoded source plus the decoded
pixel data, plus one decoded frame).  Converting to a compressed syntax holds the decoded pixel
data and the encoded result.
"""

from __future__ import annotations

import struct
import sys
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import TranscodeError
from ..protocol import uids
from .codec import NATIVE_TRANSFER_SYNTAXES, decode_dataset, encode_dataset, ts_name

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

    from .reader import Part10Source

__all__ = [
    "CODECS_HINT",
    "LOSSLESS_COMPRESSED_TRANSFER_SYNTAXES",
    "LOSSY_TRANSFER_SYNTAXES",
    "Transcoded",
    "can_decode",
    "can_encode",
    "choose_syntax",
    "conversion_refused",
    "convert_stored_file",
    "is_lossy",
    "syntax_by_name",
    "transcode_instance",
]

#: what to install for the codecs, as the messages say it
CODECS_HINT = "pip install 'asyncdicom[codecs]'"

#: transfer syntaxes whose compression loses information (PS3.5 8.2, Annex A.4)
LOSSY_TRANSFER_SYNTAXES: frozenset[str] = frozenset(
    {
        uids.JPEG_BASELINE_8BIT,
        uids.JPEG_EXTENDED_12BIT,
        uids.JPEG_LS_NEAR_LOSSLESS,
        uids.JPEG_2000,
        uids.HTJ2K,
        uids.MPEG2_MAIN_PROFILE_MAIN_LEVEL,
        uids.MPEG4_AVC_H264_HIGH_PROFILE_LEVEL_4_1,
    }
)
#: compressed transfer syntaxes that keep every pixel value
LOSSLESS_COMPRESSED_TRANSFER_SYNTAXES: frozenset[str] = frozenset(
    {
        uids.JPEG_LOSSLESS,
        uids.JPEG_LOSSLESS_SV1,
        uids.JPEG_LS_LOSSLESS,
        uids.JPEG_2000_LOSSLESS,
        uids.HTJ2K_LOSSLESS,
        uids.HTJ2K_LOSSLESS_RPCL,
        uids.RLE_LOSSLESS,
    }
)

#: targets in order of preference when several are accepted: uncompressed first (every peer
#: reads them, and they cost no encoding), then the lossless codecs, then the lossy ones
_PREFERENCE: tuple[str, ...] = (
    uids.EXPLICIT_VR_LITTLE_ENDIAN,
    uids.IMPLICIT_VR_LITTLE_ENDIAN,
    uids.DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN,
    uids.EXPLICIT_VR_BIG_ENDIAN,
    uids.JPEG_LS_LOSSLESS,
    uids.RLE_LOSSLESS,
    uids.JPEG_2000_LOSSLESS,
    uids.JPEG_LS_NEAR_LOSSLESS,
    uids.JPEG_2000,
)

#: Lossy Image Compression Method (0028,2114) per lossy syntax (PS3.3 C.7.6.1.1.5.1)
_LOSSY_METHOD = {
    uids.JPEG_BASELINE_8BIT: "ISO_10918_1",
    uids.JPEG_EXTENDED_12BIT: "ISO_10918_1",
    uids.JPEG_LS_NEAR_LOSSLESS: "ISO_14495_1",
    uids.JPEG_2000: "ISO_15444_1",
    uids.HTJ2K: "ISO_15444_15",
    uids.MPEG2_MAIN_PROFILE_MAIN_LEVEL: "ISO_13818_2",
    uids.MPEG4_AVC_H264_HIGH_PROFILE_LEVEL_4_1: "ISO_14496_10",
}

#: encoder options for the lossy targets: JPEG-LS with a maximum error of 2, JPEG 2000 at 10:1
_LOSSY_OPTIONS: dict[str, dict[str, Any]] = {
    uids.JPEG_LS_NEAR_LOSSLESS: {"jls_error": 2},
    uids.JPEG_2000: {"j2k_cr": [10]},
}

_PIXEL_DATA = 0x7FE00010


def is_lossy(transfer_syntax_uid: str) -> bool:
    """Whether data in ``transfer_syntax_uid`` may have lost information (PS3.5 8.2)."""
    return transfer_syntax_uid in LOSSY_TRANSFER_SYNTAXES


def _is_native(transfer_syntax_uid: str) -> bool:
    return transfer_syntax_uid in NATIVE_TRANSFER_SYNTAXES


def can_decode(transfer_syntax_uid: str) -> bool:
    """Whether pixel data in ``transfer_syntax_uid`` can be decoded here (always, for the
    uncompressed syntaxes; for a compressed one, when a pydicom decoder plugin is installed)."""
    if _is_native(transfer_syntax_uid):
        return True
    try:
        from pydicom.pixels.decoders.base import get_decoder

        return bool(get_decoder(transfer_syntax_uid).is_available)
    except Exception:  # unknown syntax, no decoder at all, numpy missing
        return False


def can_encode(transfer_syntax_uid: str) -> bool:
    """Whether pixel data can be encoded in ``transfer_syntax_uid`` here."""
    if _is_native(transfer_syntax_uid):
        return True
    try:
        from pydicom.pixels.encoders.base import get_encoder

        return bool(get_encoder(transfer_syntax_uid).is_available)
    except Exception:
        return False


def conversion_refused(source_ts: str, target_ts: str, *, allow_lossy: bool = False) -> str | None:
    """Why an instance in ``source_ts`` cannot be converted to ``target_ts`` by the rules of
    this module, or ``None`` when it can.  Codec availability is checked too: the reason then
    says what to install."""
    if source_ts == target_ts:
        return None
    source, target = ts_name(source_ts), ts_name(target_ts)
    if is_lossy(target_ts) and not allow_lossy:
        return (
            f"lossy conversion refused: {source} to {target} (allowed only with "
            "--allow-lossy, allow_lossy=True)"
        )
    if _is_native(source_ts) and _is_native(target_ts):
        return None
    if not can_decode(source_ts):
        if _known_codec(source_ts):
            return f"no decoder for {source} installed ({CODECS_HINT})"
        return f"{source} cannot be decoded here"
    if not can_encode(target_ts):
        if target_ts in _PREFERENCE:
            return f"no encoder for {target} installed ({CODECS_HINT})"
        return f"{target} cannot be encoded here"
    return None


def _known_codec(transfer_syntax_uid: str) -> bool:
    """A compressed syntax the codecs extra decodes."""
    return transfer_syntax_uid in LOSSLESS_COMPRESSED_TRANSFER_SYNTAXES or transfer_syntax_uid in (
        uids.JPEG_BASELINE_8BIT,
        uids.JPEG_EXTENDED_12BIT,
        uids.JPEG_LS_NEAR_LOSSLESS,
        uids.JPEG_2000,
        uids.HTJ2K,
    )


def choose_syntax(
    source_ts: str, accepted: Iterable[str], *, allow_lossy: bool = False
) -> tuple[str | None, str]:
    """The transfer syntax to send an instance in ``source_ts`` in, given the syntaxes
    ``accepted`` for its SOP class: its own when accepted, else the first of the accepted ones
    it may be converted to (uncompressed first, then lossless, then, only with
    ``allow_lossy``, lossy).  Returns ``(syntax, "")``, or ``(None, reason)`` when none fits.
    """
    offered = list(dict.fromkeys(accepted))
    if source_ts in offered:
        return source_ts, ""
    ranked = sorted(
        offered, key=lambda ts: _PREFERENCE.index(ts) if ts in _PREFERENCE else len(_PREFERENCE)
    )
    reasons: list[str] = []
    for ts in ranked:
        why = conversion_refused(source_ts, ts, allow_lossy=allow_lossy)
        if why is None:
            return ts, ""
        reasons.append(why)
    if not offered:
        return None, "no accepted context for its SOP class"
    return None, reasons[0]


@dataclass(frozen=True, slots=True)
class Transcoded:
    """An instance converted for sending: its data set ``chunks`` (in order; memoryviews into
    one buffer where possible), its ``transfer_syntax_uid`` and its ``sop_instance_uid`` (a new
    one after a lossy conversion)."""

    chunks: tuple[bytes | memoryview, ...]
    transfer_syntax_uid: str
    sop_instance_uid: str

    @property
    def size(self) -> int:
        return sum(len(c) for c in self.chunks)

    def to_bytes(self) -> bytes:
        """The data set in one piece (one more copy)."""
        return b"".join(self.chunks)


def transcode_instance(
    source: Part10Source | Dataset,
    target_ts: str,
    *,
    source_ts: str | None = None,
    allow_lossy: bool = False,
) -> Transcoded:
    """Convert one instance (a located file or a pydicom Dataset) to ``target_ts``, by the
    rules of this module.  Runs in a worker thread: it decodes and encodes.

    ``source_ts`` is the Dataset's own syntax (default: its ``file_meta`` Transfer Syntax UID,
    else Explicit VR Little Endian).

    Raises:
        TranscodeError: the conversion is refused by the rules (lossy without
            ``allow_lossy``), needs a codec that is not installed, or the decoder or encoder
            failed (the message says why).
        InvalidDicomFile: the file cannot be decoded, or it shrank.
    """
    from .reader import Part10Source

    if isinstance(source, Part10Source):
        source_ts = source.transfer_syntax_uid
        ds = decode_dataset(source.read_bytes(), source_ts)
    else:
        ds = source
        meta = getattr(ds, "file_meta", None)
        source_ts = source_ts or str(getattr(meta, "TransferSyntaxUID", "") or "")
        source_ts = source_ts or uids.EXPLICIT_VR_LITTLE_ENDIAN
    why = conversion_refused(source_ts, target_ts, allow_lossy=allow_lossy)
    if why is not None:
        raise TranscodeError(why)
    instance_uid = str(ds.get("SOPInstanceUID", "") or "")
    if source_ts == target_ts:
        return Transcoded((encode_dataset(ds, target_ts),), target_ts, instance_uid)
    if _is_native(source_ts) and _is_native(target_ts):
        return Transcoded((encode_dataset(ds, target_ts),), target_ts, instance_uid)
    if "PixelData" not in ds:
        # nothing to decode: the data set is re-encoded as it is
        if not _is_native(target_ts):
            raise TranscodeError(
                f"the instance has no Pixel Data to encode as {ts_name(target_ts)}"
            )
        return Transcoded((encode_dataset(ds, target_ts),), target_ts, instance_uid)
    try:
        if _is_native(target_ts):
            return _to_native(ds, source_ts, target_ts)
        return _to_compressed(ds, source_ts, target_ts)
    except TranscodeError:
        raise
    except Exception as exc:  # a codec's own error: the instance fails, with its reason
        raise TranscodeError(
            f"cannot convert {ts_name(source_ts)} to {ts_name(target_ts)}: "
            f"{type(exc).__name__}: {exc}"
        ) from exc


def _as_rgb(ds: Dataset, source_ts: str) -> bool:
    """Whether decoded YCbCr is converted to RGB: for lossy sources (as DCMTK's dcmdjpeg does
    by default; their colour values are approximate already) and for YBR_FULL_422, which has no
    native form at full resolution.  A lossless source keeps its colour space (the conversion
    rounds)."""
    photometric = str(ds.get("PhotometricInterpretation", "") or "")
    return is_lossy(source_ts) or photometric == "YBR_FULL_422"


def _check_no_nested_pixel_data(ds: Dataset) -> None:
    """Encapsulated pixel data inside a sequence (an Icon Image Sequence) would need decoding
    too; refuse rather than send it undecodable or drop it."""
    for elem in ds:
        if elem.VR == "SQ" and elem.tag != _PIXEL_DATA:
            for item in elem.value or ():
                if "PixelData" in item and item["PixelData"].is_undefined_length:
                    raise TranscodeError(
                        f"compressed pixel data in {elem.keyword or elem.tag} cannot be "
                        "converted (only the top-level Pixel Data is)"
                    )


def _decode_frames(
    ds: Dataset, source_ts: str, *, big_endian: bool = False
) -> tuple[bytearray, dict[str, Any], int]:
    """Decode the top-level Pixel Data frame by frame into one buffer (little endian samples
    unless ``big_endian``, colour-by-pixel), padded to an even length.  Returns (buffer, image
    pixel values, bytes of pixel data without the padding)."""
    from pydicom.pixels.decoders.base import get_decoder
    from pydicom.pixels.utils import get_nr_frames

    _check_no_nested_pixel_data(ds)
    if int(ds.get("BitsAllocated", 8) or 8) == 1:
        # decoded bit-packed data would come back one byte per pixel
        raise TranscodeError("compressed pixel data with Bits Allocated 1 is not converted")
    decoder = get_decoder(source_ts)
    frames = get_nr_frames(ds, warn=False)
    buffer = bytearray()
    meta: dict[str, Any] = {}
    frame_bytes = 0
    count = 0
    options: dict[str, Any] = {"as_rgb": _as_rgb(ds, source_ts)}
    plugin = _decoding_plugin(decoder, source_ts)
    if plugin:
        options["decoding_plugin"] = plugin
    if int(ds.get("PixelRepresentation", 0) or 0) == 1:
        # pydicom 3.0's frame iterator corrects the sign of signed samples in place on a
        # read-only view; by index, each frame is decoded into an array of its own
        options["indices"] = range(frames)
    for arr, image_pixel in decoder.iter_array(ds, **options):
        if (sys.byteorder == "big") != big_endian and arr.dtype.itemsize > 1:
            arr = arr.byteswap()
        if count == 0:
            meta = dict(image_pixel)
            frame_bytes = arr.nbytes
            total = frame_bytes * frames
            if total >= 0xFFFFFFFE:
                raise TranscodeError(
                    "the decoded pixel data would exceed the 4 GiB a native Pixel Data can hold"
                )
            buffer = bytearray(total + total % 2)
        if arr.nbytes != frame_bytes or count >= frames:
            raise TranscodeError(
                f"frame {count + 1} decodes to {arr.nbytes} bytes, the first one to "
                f"{frame_bytes} (Number of Frames {frames})"
            )
        start = count * frame_bytes
        buffer[start : start + frame_bytes] = arr.tobytes()
        count += 1
    if count != frames:
        raise TranscodeError(f"{count} frames decoded, Number of Frames says {frames}")
    return buffer, meta, frame_bytes * frames


def _decoding_plugin(decoder: Any, source_ts: str) -> str:
    """The pydicom plugin to decode with, when the choice matters: JPEG baseline through
    Pillow (libjpeg-turbo, whose default integer IDCT and upsampling give the same values as
    the IJG code in DCMTK and GDCM; libjpeg by pylibjpeg differs by 1 or 2 on lossy data), RLE
    through pylibjpeg-rle; otherwise pydicom's own order."""
    plugins = getattr(decoder, "available_plugins", ())
    if source_ts == uids.JPEG_BASELINE_8BIT and "pillow" in plugins:
        return "pillow"
    if source_ts == uids.RLE_LOSSLESS and "pylibjpeg" in plugins:
        return "pylibjpeg"  # pylibjpeg-rle, compiled: several times faster than pydicom's own
    return ""


def _update_image_pixel(ds: Dataset, meta: dict[str, Any], frames: int) -> None:
    """The Image Pixel module as the decoder describes the decoded data."""
    ds.PhotometricInterpretation = str(meta["photometric_interpretation"])
    if int(meta.get("samples_per_pixel", 1)) > 1:
        ds.PlanarConfiguration = int(meta.get("planar_configuration", 0))
    for keyword, key in (
        ("BitsStored", "bits_stored"),
        ("PixelRepresentation", "pixel_representation"),
    ):
        if key in meta and keyword in ds:
            setattr(ds, keyword, int(meta[key]))
    if "NumberOfFrames" in ds or frames > 1:
        ds.NumberOfFrames = frames


def _keep_lossy_flag(ds: Dataset, source_ts: str) -> None:
    """PS3.3 C.7.6.1.1.5: once lossy, always "01"; the method is recorded when missing."""
    if not is_lossy(source_ts):
        return
    ds.LossyImageCompression = "01"
    if "LossyImageCompressionMethod" not in ds and source_ts in _LOSSY_METHOD:
        ds.LossyImageCompressionMethod = _LOSSY_METHOD[source_ts]


def _to_native(ds: Dataset, source_ts: str, target_ts: str) -> Transcoded:
    from pydicom.dataset import Dataset as PydicomDataset

    if _is_native(source_ts):
        return Transcoded((encode_dataset(ds, target_ts),), target_ts, str(ds.SOPInstanceUID))
    big = target_ts == uids.EXPLICIT_VR_BIG_ENDIAN
    buffer, meta, length = _decode_frames(ds, source_ts, big_endian=big)
    frames = length // max(1, _frame_size(meta))
    bits_allocated = int(meta.get("bits_allocated", ds.BitsAllocated))
    _update_image_pixel(ds, meta, frames)
    _keep_lossy_flag(ds, source_ts)
    head, tail = PydicomDataset(), PydicomDataset()
    for elem in ds:
        if elem.tag < _PIXEL_DATA:
            head.add(elem)
        elif elem.tag > _PIXEL_DATA:
            tail.add(elem)
    implicit = target_ts == uids.IMPLICIT_VR_LITTLE_ENDIAN
    deflated = target_ts == uids.DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN
    inner = uids.EXPLICIT_VR_LITTLE_ENDIAN if deflated else target_ts
    vr = b"OB" if bits_allocated <= 8 else b"OW"
    if implicit:
        header = struct.pack("<HHI", 0x7FE0, 0x0010, len(buffer))
    else:
        header = struct.pack(">HH2sHI" if big else "<HH2sHI", 0x7FE0, 0x0010, vr, 0, len(buffer))
    parts: list[bytes | memoryview] = [encode_dataset(head, inner), header, memoryview(buffer)]
    if len(tail):
        parts.append(encode_dataset(tail, inner))
    if deflated:
        compressor = zlib.compressobj(wbits=-zlib.MAX_WBITS)
        out = b"".join([compressor.compress(p) for p in parts] + [compressor.flush()])
        parts = [out + b"\x00" if len(out) % 2 else out]
    return Transcoded(tuple(parts), target_ts, str(ds.SOPInstanceUID))


def _frame_size(meta: dict[str, Any]) -> int:
    return (
        int(meta["rows"])
        * int(meta["columns"])
        * int(meta.get("samples_per_pixel", 1))
        * (int(meta["bits_allocated"]) // 8 or 1)
    )


def _to_compressed(ds: Dataset, source_ts: str, target_ts: str) -> Transcoded:
    """Decode (when compressed) and encode in ``target_ts`` with pydicom's encoders, whole in
    memory; a lossy target makes a new instance (PS3.3 C.7.6.1.1.5)."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import UID, generate_uid

    if not _is_native(source_ts):
        buffer, meta, length = _decode_frames(ds, source_ts)
        _update_image_pixel(ds, meta, length // max(1, _frame_size(meta)))
        ds.PixelData = bytes(buffer)
        del buffer
        ds["PixelData"].VR = "OB" if int(ds.BitsAllocated) <= 8 else "OW"
        ds["PixelData"].is_undefined_length = False
    _keep_lossy_flag(ds, source_ts)
    if not hasattr(ds, "file_meta") or ds.file_meta is None:
        ds.file_meta = FileMetaDataset()
    if source_ts == uids.EXPLICIT_VR_BIG_ENDIAN:
        # pydicom's encoders read native pixel data as little endian: swap it first
        file_meta = ds.file_meta
        ds = decode_dataset(
            encode_dataset(ds, uids.EXPLICIT_VR_LITTLE_ENDIAN), uids.EXPLICIT_VR_LITTLE_ENDIAN
        )
        ds.file_meta = file_meta
    ds.file_meta.TransferSyntaxUID = UID(uids.EXPLICIT_VR_LITTLE_ENDIAN)
    uncompressed = len(ds.PixelData)
    options = dict(_LOSSY_OPTIONS.get(target_ts, {}))
    ds.compress(target_ts, generate_instance_uid=False, **options)
    if is_lossy(target_ts):
        compressed = max(1, len(ds.PixelData))
        ds.SOPInstanceUID = generate_uid()
        ds.LossyImageCompression = "01"
        ds.LossyImageCompressionRatio = [
            *_values(ds.get("LossyImageCompressionRatio")),
            f"{uncompressed / compressed:.2f}"[:16],
        ]
        ds.LossyImageCompressionMethod = [
            *_values(ds.get("LossyImageCompressionMethod")),
            _LOSSY_METHOD[target_ts],
        ]
    return Transcoded((encode_dataset(ds, target_ts),), target_ts, str(ds.SOPInstanceUID))


def _values(value: Any) -> Sequence[Any]:
    if value is None or value == "":
        return []
    if isinstance(value, (str, bytes, int, float)):
        return [value]
    return list(value)


#: names accepted by ``--store-as`` (and :func:`syntax_by_name`) besides the UIDs: pydicom's
#: keywords lower-cased, and these short ones
_SHORT_NAMES = {
    "implicit": uids.IMPLICIT_VR_LITTLE_ENDIAN,
    "explicit": uids.EXPLICIT_VR_LITTLE_ENDIAN,
    "explicit-little-endian": uids.EXPLICIT_VR_LITTLE_ENDIAN,
    "implicit-little-endian": uids.IMPLICIT_VR_LITTLE_ENDIAN,
    "big-endian": uids.EXPLICIT_VR_BIG_ENDIAN,
    "deflated": uids.DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN,
    "rle": uids.RLE_LOSSLESS,
    "jpeg-ls-lossless": uids.JPEG_LS_LOSSLESS,
    "jpeg-ls-near-lossless": uids.JPEG_LS_NEAR_LOSSLESS,
    "jpeg2000-lossless": uids.JPEG_2000_LOSSLESS,
    "jpeg2000": uids.JPEG_2000,
}


def syntax_by_name(text: str) -> str:
    """The Transfer Syntax UID a name stands for: a UID, a pydicom keyword
    (``ExplicitVRLittleEndian``, ``JPEGLSLossless``, ..., case and ``-``/``_`` ignored) or a
    short name (``explicit``, ``implicit``, ``deflated``, ``rle``, ``jpeg-ls-lossless``, ...).

    Raises:
        ValueError: no transfer syntax has that name.
    """
    key = text.strip()
    if key and key[0].isdigit():
        if key in uids.ALL_TRANSFER_SYNTAXES:
            return key
        raise ValueError(f"{text!r} is not a transfer syntax UID known here")
    folded = key.lower().replace("_", "-")
    if folded in _SHORT_NAMES:
        return _SHORT_NAMES[folded]
    import pydicom.uid

    squashed = folded.replace("-", "")
    for name in dir(pydicom.uid):
        value = getattr(pydicom.uid, name)
        if (
            isinstance(value, str)
            and name.lower() == squashed
            and value in uids.ALL_TRANSFER_SYNTAXES
        ):
            return str(value)
    raise ValueError(
        f"unknown transfer syntax {text!r} (a UID, a keyword such as ExplicitVRLittleEndian, "
        f"or one of {', '.join(sorted(_SHORT_NAMES))})"
    )


def convert_stored_file(
    path: Path,
    target_ts: str,
    *,
    allow_lossy: bool = False,
    implementation_class_uid: str,
    implementation_version_name: str | None = None,
) -> tuple[Path, str | None]:
    """Rewrite the Part 10 file at ``path`` in ``target_ts`` (``--store-as``), atomically: the
    new file is written under a temporary name in the same folder and renamed over it.

    Returns the file's path afterwards and the new SOP Instance UID, or ``None`` when the
    instance kept its own (a file already in ``target_ts`` is left alone).  A lossy conversion
    makes a new instance: a file named ``<old UID>.dcm`` is renamed ``<new UID>.dcm``.

    Raises:
        TranscodeError: the conversion is refused or fails (the file is left as it was).
        InvalidDicomFile: the file cannot be read.
        OSError: writing failed (the file is left as it was).
    """
    import os
    import uuid

    from .meta import encode_file_meta
    from .names import safe_filename
    from .reader import read_part10_for_send

    source = read_part10_for_send(path)
    if source.transfer_syntax_uid == target_ts:
        return path, None
    out = transcode_instance(source, target_ts, allow_lossy=allow_lossy)
    new_uid = out.sop_instance_uid if out.sop_instance_uid != source.sop_instance_uid else None
    meta = encode_file_meta(
        sop_class_uid=source.sop_class_uid,
        sop_instance_uid=out.sop_instance_uid,
        transfer_syntax_uid=target_ts,
        implementation_class_uid=implementation_class_uid,
        implementation_version_name=implementation_version_name,
    )
    final = path
    if new_uid is not None and path.name == safe_filename(source.sop_instance_uid):
        final = path.with_name(safe_filename(new_uid))
    temp = path.with_name(f".{uuid.uuid4().hex}.part")  # the writer's temporary names
    try:
        with open(temp, "wb") as fp:
            fp.write(b"\x00" * 128 + b"DICM" + meta)
            for chunk in out.chunks:
                fp.write(chunk)
        os.replace(temp, final)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    if final != path:
        path.unlink(missing_ok=True)
    return final, new_uid
