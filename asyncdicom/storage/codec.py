"""Encoding and decoding data sets with pydicom: the one storage module that imports it.

pydicom (and numpy, which it pulls in) is imported inside the functions that use it: writing
received files and sending Part 10 files never need it, and importing it costs ~0.1 s of every
CLI start.  Not a hot path.

* :func:`encode_dataset` / :func:`decode_dataset` / :func:`decode_spooled_dataset` convert
  between a pydicom :class:`~pydicom.dataset.Dataset` and data set bytes in a transfer syntax;
* :func:`read_header` reads a stored file's data set without its pixel data;
* the sorted layout's keys and a raw data set's UIDs are read here too (for the writer and the
  reader).
"""

from __future__ import annotations

import array
import copy
import io
import os
import zlib
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, cast

from ..errors import InvalidDicomFile, TranscodeError, UnsupportedTransferSyntax
from ..protocol.uids import (
    DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN,
    EXPLICIT_VR_BIG_ENDIAN,
    EXPLICIT_VR_LITTLE_ENDIAN,
    IMPLICIT_VR_LITTLE_ENDIAN,
)
from . import tags
from .inflate import InflatingReader
from .meta import PREFIX, HeadReader, parse_meta_group, ui_value

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

__all__ = [
    "HEADER_DEFER_SIZE",
    "NATIVE_TRANSFER_SYNTAXES",
    "SPOOL_DEFER_SIZE",
    "decode_dataset",
    "decode_spooled_dataset",
    "encode_dataset",
    "read_header",
]


#: The transfer syntaxes whose data sets :func:`~asyncdicom.storage.reader.transcode` converts
#: between: native (not encapsulated) pixel data, so a data set can be decoded and re-encoded
#: losslessly.
NATIVE_TRANSFER_SYNTAXES: frozenset[str] = frozenset(
    {
        IMPLICIT_VR_LITTLE_ENDIAN,
        EXPLICIT_VR_LITTLE_ENDIAN,
        DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN,
        EXPLICIT_VR_BIG_ENDIAN,
    }
)

#: (implicit VR, little endian) of each native transfer syntax, as stored in the file/stream
#: after inflating (Deflated is Explicit VR Little Endian underneath, PS3.5 A.5).
_NATIVE_ENCODING: dict[str, tuple[bool, bool]] = {
    IMPLICIT_VR_LITTLE_ENDIAN: (True, True),
    EXPLICIT_VR_LITTLE_ENDIAN: (False, True),
    DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN: (False, True),
    EXPLICIT_VR_BIG_ENDIAN: (False, False),
}

# Binary VRs whose value is a sequence of fixed-size words that pydicom writes verbatim; their
# bytes must be swapped when the byte order changes (pydicom does not do it, see dcmwrite docs).
_SWAP_WIDTH = {"OW": 2, "OF": 4, "OL": 4, "OD": 8, "OV": 8}
_ARRAY_CODE_FOR_WIDTH = {
    width: code
    for code in ("H", "I", "L", "Q")
    for width in (array.array(code).itemsize,)
    if width in (2, 4, 8)
}


#: values longer than this are read only when accessed by :func:`read_header` (bytes)
HEADER_DEFER_SIZE = 64 * 1024


def read_header(
    path: str | os.PathLike[str], *, defer_size: int | None = HEADER_DEFER_SIZE
) -> Dataset:
    """The data set of a DICOM file up to its pixel data, with its File Meta Information.

    Reading stops at the first of (7FE0,0008) Float Pixel Data, (7FE0,0009) Double Float Pixel
    Data and (7FE0,0010) Pixel Data, so an image's pixels are never read: what is read is the
    few kilobytes of the header (Patient Name, UIDs, ...).  Values longer than ``defer_size``
    bytes (e.g. an encapsulated PDF) are read from the file only when accessed (pydicom's
    deferred reading, which opens ``path`` again); ``None`` reads every value.  A Deflated
    Explicit VR Little Endian file is inflated as it is read, up to the pixel data (its values
    are never deferred).

    Raises:
        InvalidDicomFile: the file is not DICOM.
        OSError: the file is missing or cannot be read (unchanged).
    """
    import pydicom
    from pydicom.dataset import FileDataset
    from pydicom.filereader import read_dataset, read_file_meta_info

    file_path = Path(path)
    whole: bytes | None = None
    with open(file_path, "rb", buffering=0) as fp:
        size = os.fstat(fp.fileno()).st_size
        if size <= HEADER_DEFER_SIZE:
            # a small file (an instance of a few kilobytes) is read at once and parsed in
            # memory: no value in it can be long enough to be deferred, and pydicom's reading
            # from memory makes no system call per element
            whole = fp.read()
            reader = HeadReader(io.BytesIO(whole), len(whole))
        else:
            reader = HeadReader(fp, size)
        head = reader.get(0, 132)
        has_preamble = len(head) == 132 and head[128:132] == PREFIX
        values, offset = parse_meta_group(reader, 132 if has_preamble else 0, file_path)
    try:
        if ui_value(values.get(tags.TRANSFER_SYNTAX_UID)) != DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN:
            if whole is not None:
                ds = pydicom.dcmread(io.BytesIO(whole), stop_before_pixels=True, force=True)
                ds.filename = str(file_path)
                return ds
            return pydicom.dcmread(
                file_path, stop_before_pixels=True, defer_size=defer_size, force=True
            )
        # pydicom would inflate the whole data set, pixel data included: inflate as we read
        meta = read_file_meta_info(file_path)
        with open(file_path, "rb") as raw:
            raw.seek(offset)
            data = read_dataset(
                cast(BinaryIO, InflatingReader(raw)),
                is_implicit_VR=False,
                is_little_endian=True,
                stop_when=lambda tag, _vr, _length: tag in tags.BULK_PIXEL_DATA,
            )
        preamble = head[:128] if has_preamble else None
        return FileDataset(file_path, data, preamble, meta, False, True)
    except (OSError, InvalidDicomFile):
        raise
    except Exception as exc:  # pydicom raises many kinds of errors on garbage input
        raise InvalidDicomFile(f"{file_path}: cannot read the data set ({exc})") from exc


def read_sort_keys(
    path: Path, offset: int, transfer_syntax_uid: str
) -> tuple[str | None, str | None, str | None]:
    """(Patient ID, Study Instance UID, Series Instance UID) from the data set at ``offset``.

    Reading stops after (0020,000E): only the head of the data set is read, other values on
    the way are skipped (not read) and deflated data is inflated only that far.  A data set
    that cannot be parsed that far gives ``None`` for what was not found.  The values are the
    raw bytes decoded as Latin-1 without padding (:func:`folder_name` keeps ASCII only).
    """
    from pydicom.filereader import read_dataset

    try:
        implicit, little, deflated = _encoding_of(transfer_syntax_uid)
    except UnsupportedTransferSyntax:
        implicit, little, deflated = False, True, False  # private syntaxes: explicit VR LE
    wanted = (tags.PATIENT_ID, tags.STUDY_INSTANCE_UID, tags.SERIES_INSTANCE_UID)
    with open(path, "rb") as raw:
        raw.seek(offset)
        fp = cast(BinaryIO, InflatingReader(raw)) if deflated else raw
        try:
            ds = read_dataset(
                fp,
                implicit,
                little,
                stop_when=lambda tag, _vr, _length: tag > tags.SERIES_INSTANCE_UID,
                specific_tags=list(wanted),
            )
        except Exception:  # malformed data set: store it all the same, under placeholders
            return None, None, None
    found: list[str | None] = []
    for tag in wanted:
        elem = ds.get_item(tag) if tag in ds else None
        value = getattr(elem, "value", None)
        if isinstance(value, bytes):
            found.append(value.decode("latin-1").strip(" \x00") or None)
        else:
            found.append(None)
    patient, study, series = found
    return patient, study, series


def probe_dataset(path: Path) -> tuple[str | None, str | None, str]:
    """Read (SOP Class UID, SOP Instance UID, transfer syntax) from the data set itself."""
    import pydicom

    try:
        ds = pydicom.dcmread(
            path,
            force=True,
            stop_before_pixels=True,
            specific_tags=[tags.SOP_CLASS_UID, tags.SOP_INSTANCE_UID],
        )
        sop_class = ds.get("SOPClassUID")
        sop_instance = ds.get("SOPInstanceUID")
    except Exception as exc:  # pydicom raises many kinds of errors on garbage input
        raise InvalidDicomFile(f"{path}: not a DICOM data set ({exc})") from exc
    implicit, little = ds.original_encoding
    if implicit is None or little is None:
        raise InvalidDicomFile(f"{path}: cannot determine the data set encoding")
    if implicit:
        ts = IMPLICIT_VR_LITTLE_ENDIAN
    else:
        ts = EXPLICIT_VR_LITTLE_ENDIAN if little else EXPLICIT_VR_BIG_ENDIAN
    return (
        str(sop_class) if sop_class else None,
        str(sop_instance) if sop_instance else None,
        ts,
    )


def _encoding_of(transfer_syntax_uid: str) -> tuple[bool, bool, bool]:
    """(implicit VR, little endian, deflated) for a transfer syntax pydicom knows."""
    if transfer_syntax_uid in _NATIVE_ENCODING:
        implicit, little = _NATIVE_ENCODING[transfer_syntax_uid]
        return implicit, little, transfer_syntax_uid == DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN
    from pydicom.uid import UID

    uid = UID(transfer_syntax_uid)
    if not uid.is_transfer_syntax or uid.is_private:
        raise UnsupportedTransferSyntax(f"unknown transfer syntax {transfer_syntax_uid!r}")
    # Every other standard syntax is encapsulated Explicit VR Little Endian (PS3.5 A.4),
    # or deflated on top of that (e.g. JPIP Referenced Deflate).
    return bool(uid.is_implicit_VR), bool(uid.is_little_endian), bool(uid.is_deflated)


def _byteswap(value: bytes, width: int) -> bytes:
    whole = len(value) - len(value) % width
    words = array.array(_ARRAY_CODE_FOR_WIDTH[width])
    words.frombytes(value[:whole])
    words.byteswap()
    return words.tobytes() + value[whole:]


def _swap_binary_values(ds: Dataset, *, top_level: bool = True) -> None:
    """Swap the byte order of OW/OF/OL/OD/OV values in place, recursing into sequences.

    OW is a string of 16-bit words (PS3.5 6.2), except for native Pixel Data with Bits Allocated
    32 or 64: its cells are swapped as 32/64-bit values.  PS3.5 is not explicit about that case;
    this follows pydicom (whose big endian samples are encoded that way, so its pixel decoding
    agrees), whereas DCMTK swaps such Pixel Data as 16-bit words.  UN values (unknown private
    elements) cannot be interpreted and are left as they are.
    """
    for elem in ds:  # iterating converts raw elements to DataElements in place
        if elem.VR == "SQ":
            for item in elem.value or ():
                _swap_binary_values(item, top_level=False)
        elif elem.VR in _SWAP_WIDTH and isinstance(elem.value, (bytes, bytearray)):
            width = _SWAP_WIDTH[elem.VR]
            if top_level and elem.tag == tags.PIXEL_DATA and elem.VR == "OW":
                bits = ds.get("BitsAllocated")
                if bits in (32, 64):
                    width = bits // 8
            elem.value = _byteswap(bytes(elem.value), width)


def encode_dataset(ds: Dataset, transfer_syntax_uid: str) -> bytes:
    """Encode ``ds`` (without any file meta) as the data set of a C-STORE in a transfer syntax.

    * Implicit VR LE, Explicit VR LE/BE: pydicom's :func:`~pydicom.filewriter.write_dataset`
      with the encoding set on the buffer.  When the byte order differs from the one ``ds`` was
      decoded in (a fresh Dataset counts as little endian), a copy is made and its OW/OF/OL/OD/OV
      values are byte-swapped, which pydicom does not do itself; ``ds`` is not changed.
    * Deflated Explicit VR LE (PS3.5 A.5): Explicit VR LE then raw deflate, padded with one NUL
      byte to an even length as pydicom and DCMTK do.
    * Encapsulated (compressed) syntaxes: Explicit VR LE with Pixel Data of undefined length; the
      pixel data must already be encapsulated in that syntax (not checked).

    Raises:
        UnsupportedTransferSyntax: the transfer syntax is unknown or private.
        TranscodeError: an encapsulated syntax, and the Pixel Data is not encapsulated.
    """
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import correct_ambiguous_vr, write_dataset

    implicit, little, deflated = _encoding_of(transfer_syntax_uid)
    source_little = ds.original_encoding[1]
    if source_little is None:
        source_little = True
    is_encapsulated = transfer_syntax_uid not in _NATIVE_ENCODING
    pixel_flag_wrong = "PixelData" in ds and ds["PixelData"].is_undefined_length != is_encapsulated
    if source_little != little or pixel_flag_wrong:
        # Work on a copy so that the caller's Dataset is left alone (deepcopy shares the
        # immutable ``bytes`` values, so large pixel data is not duplicated).
        ds = copy.deepcopy(ds)
    if source_little != little:
        # Resolve ambiguous VRs (OB or OW, US or SS, ...) while raw values are still read in
        # their original byte order, then swap the word-valued binary elements.
        correct_ambiguous_vr(ds, source_little)
        _swap_binary_values(ds)
    if pixel_flag_wrong:
        # PS3.5 A.4: encapsulated Pixel Data has undefined length, native Pixel Data does not.
        ds["PixelData"].is_undefined_length = is_encapsulated
    if is_encapsulated and "PixelData" in ds:
        value = ds["PixelData"].value
        # Encapsulated Pixel Data starts with the Basic Offset Table item (FFFE,E000), PS3.5 A.4.
        if not isinstance(value, (bytes, bytearray)) or bytes(value[:4]) != b"\xfe\xff\x00\xe0":
            name = ts_name(transfer_syntax_uid)
            raise TranscodeError(
                f"Pixel Data is not encapsulated, cannot encode it as {name} "
                "(compression is not supported)"
            )
    buffer = DicomBytesIO()
    buffer.is_implicit_VR = implicit
    buffer.is_little_endian = little
    write_dataset(buffer, ds)
    data = buffer.getvalue()
    if deflated:
        compressor = zlib.compressobj(wbits=-zlib.MAX_WBITS)
        data = compressor.compress(data) + compressor.flush()
        if len(data) % 2:
            data += b"\x00"
    return data


#: values longer than this stay in the spool file of :func:`decode_spooled_dataset` until read
SPOOL_DEFER_SIZE = 64 * 1024


def decode_spooled_dataset(
    spool: BinaryIO, transfer_syntax_uid: str, directory: str | None = None
) -> Dataset:
    """Decode data set bytes written to the open binary file ``spool`` (see
    :meth:`asyncdicom.services.ServiceRequest.dataset`): element headers are parsed now, values
    longer than :data:`SPOOL_DEFER_SIZE` are read from ``spool`` when accessed, so the data
    set keeps the file (and the file its bytes) as long as it lives.  A deflated data set is
    inflated into a second temporary file (in ``directory``) first, in pieces.  Raises
    :class:`InvalidDicomFile` or :class:`UnsupportedTransferSyntax` as :func:`decode_dataset`
    does; ``spool`` is closed when it raises.

    Raises:
        InvalidDicomFile: the bytes cannot be inflated or decoded.
        UnsupportedTransferSyntax: the transfer syntax is unknown.
    """
    import tempfile

    from pydicom.dataset import FileMetaDataset
    from pydicom.filereader import read_dataset
    from pydicom.uid import UID

    try:
        implicit, little, deflated = _encoding_of(transfer_syntax_uid)
        spool.seek(0)
        if deflated:
            # not a with-block: on success the file is handed to the data set
            inflated = tempfile.TemporaryFile(dir=directory)  # noqa: SIM115
            inflater = zlib.decompressobj(wbits=-zlib.MAX_WBITS)
            try:
                while piece := spool.read(1 << 20):
                    inflated.write(inflater.decompress(piece))
                    if inflater.eof:
                        break  # trailing padding after the deflate stream
                inflated.write(inflater.flush())
            except zlib.error as exc:
                inflated.close()
                raise InvalidDicomFile(f"deflated data set cannot be inflated: {exc}") from exc
            spool.close()
            spool = cast(BinaryIO, inflated)
            spool.seek(0)
        try:
            ds = read_dataset(
                spool, is_implicit_VR=implicit, is_little_endian=little, defer_size=SPOOL_DEFER_SIZE
            )
        except Exception as exc:  # pydicom raises many kinds of errors on malformed input
            raise InvalidDicomFile(f"data set cannot be decoded: {exc}") from exc
    except BaseException:
        spool.close()
        raise
    # where pydicom reads deferred values from: the open file (not a name: it has none)
    ds.filename = None
    ds.buffer = spool
    ds.fileobj_type = type(spool)
    ds.timestamp = None
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = UID(transfer_syntax_uid)
    return ds


def decode_dataset(data: bytes | bytearray | memoryview, transfer_syntax_uid: str) -> Dataset:
    """Decode data set bytes received (or read) in ``transfer_syntax_uid`` into a Dataset.

    Deflated syntaxes are inflated first (trailing padding after the deflate stream is ignored).
    The result carries ``file_meta.TransferSyntaxUID`` so that pydicom's pixel handling knows
    the encoding.  Reading is pydicom's lazy reading: element headers are parsed here, values
    when accessed.

    Raises:
        InvalidDicomFile: the bytes cannot be inflated or decoded.
        UnsupportedTransferSyntax: the transfer syntax is unknown.
    """
    from pydicom.dataset import FileMetaDataset
    from pydicom.filebase import DicomBytesIO
    from pydicom.filereader import read_dataset
    from pydicom.uid import UID

    implicit, little, deflated = _encoding_of(transfer_syntax_uid)
    raw = bytes(data)
    if deflated:
        try:
            inflater = zlib.decompressobj(wbits=-zlib.MAX_WBITS)
            raw = inflater.decompress(raw) + inflater.flush()
        except zlib.error as exc:
            raise InvalidDicomFile(f"deflated data set cannot be inflated: {exc}") from exc
    try:
        ds = read_dataset(
            cast(BinaryIO, DicomBytesIO(raw)), is_implicit_VR=implicit, is_little_endian=little
        )
    except Exception as exc:  # pydicom raises many kinds of errors on malformed input
        raise InvalidDicomFile(f"data set cannot be decoded: {exc}") from exc
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = UID(transfer_syntax_uid)
    return ds


def ts_name(transfer_syntax_uid: str) -> str:
    from pydicom.uid import UID

    name = UID(transfer_syntax_uid).name
    return f"{name} ({transfer_syntax_uid})" if name != transfer_syntax_uid else repr(name)
