"""A file object that inflates a raw deflate stream as it is read (PS3.5 A.5), for reading
the head of a Deflated Explicit VR Little Endian data set without inflating all of it."""

from __future__ import annotations

import io
import zlib
from typing import TYPE_CHECKING, BinaryIO

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

__all__ = ["InflatingReader"]


class InflatingReader(io.RawIOBase):
    """A read-only file object over a raw deflate stream, inflated as it is read (for pydicom's
    data set reader): :meth:`tell`, :meth:`read`, and :meth:`seek` forward (skipping) or back by
    at most :data:`_INFLATE_BACK` bytes.  Memory stays bounded whatever the stream holds."""

    def __init__(self, raw: BinaryIO) -> None:
        super().__init__()
        self._raw = raw
        self._inflater = zlib.decompressobj(-zlib.MAX_WBITS)
        self._buf = bytearray()  # inflated bytes, self._buf[0] is at position self._start
        self._start = 0
        self._pos = 0
        self._eof = False

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_SET:
            target = offset
        elif whence == io.SEEK_CUR:
            target = self._pos + offset
        else:
            raise OSError("an inflated stream cannot seek from its end")
        if target < self._start:
            raise OSError("an inflated stream cannot seek that far back")
        self._pos = target
        return target

    def readinto(self, buffer: WriteableBuffer, /) -> int:
        view = memoryview(buffer).cast("B")
        n = len(view)
        self._fill(self._pos + n)
        rel = self._pos - self._start
        chunk = self._buf[rel : rel + n]
        view[: len(chunk)] = chunk
        self._pos += len(chunk)
        return len(chunk)

    def _fill(self, end: int) -> None:
        """Inflate until the bytes before ``end`` are buffered or the stream ends; bytes more
        than :data:`_INFLATE_BACK` behind the position are dropped on the way."""
        while self._start + len(self._buf) < end and not self._eof:
            data = self._inflater.unconsumed_tail or self._raw.read(1 << 16)
            if not data:
                self._buf += self._inflater.flush()
                self._eof = True
            else:
                self._buf += self._inflater.decompress(data, 1 << 20)
                self._eof = self._inflater.eof
            keep_from = min(self._pos - _INFLATE_BACK, self._start + len(self._buf))
            if keep_from - self._start > _INFLATE_BACK:
                del self._buf[: keep_from - self._start]
                self._start = keep_from


#: how far back an :class:`InflatingReader` can seek (pydicom steps back a few bytes at most)
_INFLATE_BACK = 1 << 16
