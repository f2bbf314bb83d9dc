"""Reading DICOM files for sending (SCU side), without decoding their data sets.

:func:`read_part10_for_send` parses only the File Meta Information of a file and returns a
:class:`Part10Source` whose :meth:`~Part10Source.iter_chunks` streams the data set bytes from
disk as they are.  :func:`transcode` converts a source between the uncompressed transfer
syntaxes (through :mod:`asyncdicom.storage.codec`).
"""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import BinaryIO

from ..errors import InvalidDicomFile, TranscodeError
from ..protocol.uids import (
    DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN,
    EXPLICIT_VR_BIG_ENDIAN,
    IMPLICIT_VR_LITTLE_ENDIAN,
)
from . import tags
from .codec import NATIVE_TRANSFER_SYNTAXES, decode_dataset, encode_dataset, probe_dataset, ts_name
from .meta import PREAMBLE, PREFIX, HeadReader, parse_meta_group, ui_value

__all__ = ["Part10Source", "read_part10_for_send", "transcode"]


@dataclass(frozen=True, slots=True)
class Part10Source:
    """A data set on disk ready to be sent: where it is and how it is encoded.

    ``dataset_offset``/``dataset_length`` delimit the data set bytes in ``path`` (everything
    after the File Meta Information; the whole file for a raw data set without meta).  The
    bytes are in ``transfer_syntax_uid`` exactly as on disk (the deflated stream for Deflated
    Explicit VR Little Endian).  ``has_file_meta`` is False for raw data sets, whose UIDs and
    transfer syntax were found by reading the data set with pydicom.

    ``data`` holds the data set bytes when they were read together with the header
    (``read_part10_for_send(..., read_limit=...)``) or by :meth:`load`; it is ``None`` when
    they are read from disk as they are sent.  It takes no part in comparisons.
    """

    path: Path
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str
    dataset_offset: int
    dataset_length: int
    has_file_meta: bool = True
    data: bytes | None = field(default=None, repr=False, compare=False)

    def iter_chunks(self, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        """Yield the data set bytes in chunks of at most ``chunk_size``, read lazily from disk.

        The file is opened when iteration starts and closed when it ends (or the generator is
        closed).  A file that shrank since :func:`read_part10_for_send` raises
        :class:`InvalidDicomFile` instead of silently sending a truncated data set.  A source
        whose :attr:`data` is loaded yields slices of it and does not touch the file.

        Raises:
            ValueError: ``chunk_size`` is not positive.
            InvalidDicomFile: the file is shorter than when it was read.
        """
        if chunk_size <= 0:
            raise ValueError("chunk_size must be positive")
        if self.data is not None:
            if len(self.data) <= chunk_size:
                yield self.data
                return
            for start in range(0, len(self.data), chunk_size):
                yield self.data[start : start + chunk_size]
            return
        remaining = self.dataset_length
        with open(self.path, "rb", buffering=0) as fp:
            fp.seek(self.dataset_offset)
            while remaining > 0:
                chunk = fp.read(min(chunk_size, remaining))
                if not chunk:
                    raise InvalidDicomFile(
                        f"{self.path}: file is shorter than when it was opened "
                        f"({remaining} data set bytes missing)"
                    )
                remaining -= len(chunk)
                yield chunk

    def read_bytes(self) -> bytes:
        """The whole data set in memory (for small files and transcoding)."""
        if self.data is not None:
            return self.data
        with open(self.path, "rb", buffering=0) as fp:
            fp.seek(self.dataset_offset)
            return _read_exactly(fp, self.dataset_length, self.path)

    def load(self) -> Part10Source:
        """This source with :attr:`data` read from disk (itself if it is loaded already).

        One open and, normally, one read: the cheap way to send a small file whole.  The same
        truncation check as :meth:`iter_chunks` applies.
        """
        if self.data is not None:
            return self
        return replace(self, data=self.read_bytes())


def _read_exactly(fp: BinaryIO, length: int, path: Path) -> bytes:
    """``length`` bytes from the current position of ``fp``; :class:`InvalidDicomFile` if the
    file ends first (it shrank since it was scanned)."""
    data = fp.read(length)
    if len(data) == length:
        return data  # the usual case: one read() call, no copy
    parts = [data]
    got = len(data)
    while got < length:
        chunk = fp.read(length - got)
        if not chunk:
            raise InvalidDicomFile(
                f"{path}: file is shorter than when it was opened "
                f"({length - got} data set bytes missing)"
            )
        parts.append(chunk)
        got += len(chunk)
    return b"".join(parts)


#: bytes at the start of a data set searched for its SOP Class/Instance UID (group 0008 comes
#: first, so they are normally within the first few hundred bytes)
_DATASET_HEAD_BYTES = 4096


def _dataset_head_uids(head: bytes, transfer_syntax_uid: str) -> tuple[str | None, str | None]:
    """(SOP Class UID, SOP Instance UID) from the first bytes of an encoded data set.

    A C-STORE-RQ's Affected SOP Class/Instance UID must identify the data set sent (PS3.7
    9.3.1.1), and some files' (0002,0002)/(0002,0003) disagree with their (0008,0016)/(0008,0018)
    (pydicom's rtplan.dcm and rtdose.dcm): an SCP that checks, such as DCMTK's storescp, refuses
    such an instance with 0xA900 when the meta's values are sent.  DCMTK's storescu and
    pynetdicom take them from the data set too.  Only top-level elements up to (0008,0018) are
    walked (microseconds); an undefined length before them (a sequence), a value running past
    ``head``, or an undecodable deflated stream gives ``None`` for what was not found.
    """
    if transfer_syntax_uid == DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN:
        try:
            head = zlib.decompressobj(-zlib.MAX_WBITS).decompress(head, _DATASET_HEAD_BYTES)
        except zlib.error:
            return None, None
    implicit = transfer_syntax_uid == IMPLICIT_VR_LITTLE_ENDIAN
    order = ">" if transfer_syntax_uid == EXPLICIT_VR_BIG_ENDIAN else "<"
    found: dict[int, str | None] = {}
    pos = 0
    while pos + 8 <= len(head):
        group, element = struct.unpack_from(order + "HH", head, pos)
        tag = (group << 16) | element
        if tag > tags.SOP_INSTANCE_UID:
            break
        if implicit:
            length = struct.unpack_from(order + "I", head, pos + 4)[0]
            pos += 8
        elif head[pos + 4 : pos + 6] in tags.LONG_LENGTH_VRS:
            if pos + 12 > len(head):
                break
            length = struct.unpack_from(order + "I", head, pos + 8)[0]
            pos += 12
        else:
            length = struct.unpack_from(order + "H", head, pos + 6)[0]
            pos += 8
        if length == 0xFFFFFFFF or pos + length > len(head):
            break
        if tag in (tags.SOP_CLASS_UID, tags.SOP_INSTANCE_UID):
            found[tag] = ui_value(head[pos : pos + length])
        pos += length
    return found.get(tags.SOP_CLASS_UID), found.get(tags.SOP_INSTANCE_UID)


def read_part10_for_send(path: str | os.PathLike[str], *, read_limit: int = 0) -> Part10Source:
    """Locate the data set of a DICOM file for sending, without decoding it.

    * Part 10 file (preamble + ``DICM`` + meta, PS3.10 7.1): the transfer syntax comes from
      (0002,0010), the SOP Class/Instance UID from (0008,0016)/(0008,0018) at the head of the
      data set (see :func:`_dataset_head_uids`), else from (0002,0002)/(0002,0003); the data
      set is everything after the meta group.
    * Meta group without preamble (some old writers): parsed the same way from offset 0.
    * Raw data set (no meta at all): read with pydicom (``force=True``) to find the SOP UIDs and
      the encoding (Implicit VR LE, Explicit VR LE or Explicit VR BE, detected by pydicom); the
      whole file is the data set and is sent as it is, nothing is re-encoded.
    * A meta group missing one of the three values: the missing ones are taken from the data set
      the same way.

    A data set of at most ``read_limit`` bytes is read in the same call and returned in
    :attr:`Part10Source.data` (a file sent whole costs one open); a bigger one is left on disk
    to be streamed.  The default, 0, reads only the header.

    Raises:
        InvalidDicomFile: the file is not DICOM, is truncated inside the meta group,
            has no data set, or no SOP Class/Instance UID can be found.
        OSError: the file is missing or cannot be read (unchanged).
    """
    file_path = Path(path)
    data: bytes | None = None
    with open(file_path, "rb", buffering=0) as fp:
        size = os.fstat(fp.fileno()).st_size
        reader = HeadReader(fp, size)
        head = reader.get(0, 132)
        has_preamble = len(head) == 132 and head[128:132] == PREFIX
        values, offset = parse_meta_group(reader, 132 if has_preamble else 0, file_path)
        data_head = reader.get(offset, _DATASET_HEAD_BYTES)
        if 0 < size - offset <= read_limit:
            fp.seek(offset)
            data = _read_exactly(fp, size - offset, file_path)
    # A "DICM" prefix directly followed by the data set counts as having no meta group.
    has_meta = offset > (len(PREAMBLE) + len(PREFIX) if has_preamble else 0)
    sop_class = ui_value(values.get(tags.MEDIA_STORAGE_SOP_CLASS_UID))
    sop_instance = ui_value(values.get(tags.MEDIA_STORAGE_SOP_INSTANCE_UID))
    ts = ui_value(values.get(tags.TRANSFER_SYNTAX_UID))
    if ts is not None:
        # The data set's own UIDs win over the meta's (see _dataset_head_uids).
        head_class, head_instance = _dataset_head_uids(data_head, ts)
        sop_class = head_class or sop_class
        sop_instance = head_instance or sop_instance
    if sop_class is None or sop_instance is None or ts is None:
        probed_class, probed_instance, probed_ts = probe_dataset(file_path)
        sop_class = sop_class or probed_class
        sop_instance = sop_instance or probed_instance
        ts = ts or probed_ts
    if not sop_class or not sop_instance:
        raise InvalidDicomFile(f"{file_path}: no SOP Class UID / SOP Instance UID found")
    length = size - offset
    if length <= 0:
        raise InvalidDicomFile(f"{file_path}: no data set after the File Meta Information")
    return Part10Source(
        path=file_path,
        sop_class_uid=sop_class,
        sop_instance_uid=sop_instance,
        transfer_syntax_uid=ts,
        dataset_offset=offset,
        dataset_length=length,
        has_file_meta=has_meta,
        data=data,
    )


def transcode(source: Part10Source, target_ts: str) -> bytes:
    """Return the data set of ``source`` encoded in ``target_ts``.

    Same syntax: the bytes as stored, not decoded.  Otherwise both syntaxes must be native
    (:data:`NATIVE_TRANSFER_SYNTAXES`: Implicit VR LE, Explicit VR LE, Deflated Explicit VR LE,
    Explicit VR BE); the data set is decoded with pydicom and re-encoded (whole data set in
    memory).  Anything involving an encapsulated (compressed) syntax raises
    :class:`TranscodeError`: that needs a codec, which this library does not do.

    Limitation: converting between byte orders cannot fix UN elements (unknown private
    elements), which keep their original byte order.

    Raises:
        TranscodeError: a syntax is not an uncompressed one (compression and
            decompression are not supported).
        InvalidDicomFile: the data set cannot be decoded, or the file shrank.
        UnsupportedTransferSyntax: a transfer syntax is unknown.
    """
    source_ts = source.transfer_syntax_uid
    if source_ts == target_ts:
        return source.read_bytes()
    for ts, role in ((source_ts, "source"), (target_ts, "target")):
        if ts not in NATIVE_TRANSFER_SYNTAXES:
            raise TranscodeError(
                f"cannot transcode {source.path.name} from {ts_name(source_ts)} to "
                f"{ts_name(target_ts)}: the {role} syntax {ts_name(ts)} is not an "
                "uncompressed syntax (compression and decompression are not supported)"
            )
    return encode_dataset(decode_dataset(source.read_bytes(), source_ts), target_ts)
