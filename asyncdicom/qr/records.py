"""Encoding index records fast: data elements as Explicit VR Little Endian bytes.

An index keeps, per patient, study, series and instance, the attributes of that level as an
Explicit VR Little Endian data set.  The headers it indexes were mostly *read* in that very
encoding, and pydicom keeps the elements it has not been asked about as raw bytes
(``RawDataElement``); :func:`encode_explicit_le` copies such an element's bytes as they are
(tag, VR, length, value) instead of decoding the value and encoding it again, which is what
makes indexing an instance cost tens of microseconds rather than a millisecond.  Any other
element (decoded already, read in another encoding, a sequence of undefined length) is
encoded by pydicom, so the result is always a valid data set; decoding it gives the values
pydicom would have written.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from contextlib import suppress

from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import correct_ambiguous_vr_element, write_dataset

__all__ = ["encode_explicit_le"]

#: VRs whose Explicit VR length field is 4 bytes, after 2 reserved bytes (PS3.5 7.1.2)
_LONG_LENGTH_VRS = frozenset(
    {"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"}
)
_UNDEFINED = 0xFFFFFFFF
_short = struct.Struct("<HH2sH").pack
_long = struct.Struct("<HH2s2xI").pack


def encode_explicit_le(
    elements: Iterable[DataElement | RawDataElement], context: Dataset | None = None
) -> bytes:
    """The elements, in the order given (give them in tag order), as Explicit VR Little
    Endian bytes.  ``context`` is the data set they come from: it resolves an ambiguous VR
    ("US or SS", from an Implicit VR file) by its Pixel Representation and so on, as
    pydicom's writer does."""
    out = bytearray()
    pending: list[DataElement | RawDataElement] = []  # a run of elements for pydicom
    for elem in elements:
        if isinstance(elem, RawDataElement) and _copyable(elem):
            if pending:
                out += _with_pydicom(pending, context)
                pending = []
            tag = int(elem.tag)
            value: bytes = elem.value  # type: ignore[assignment]
            vr = str(elem.VR)
            if vr in _LONG_LENGTH_VRS:
                out += _long(tag >> 16, tag & 0xFFFF, vr.encode("ascii"), len(value))
            else:
                out += _short(tag >> 16, tag & 0xFFFF, vr.encode("ascii"), len(value))
            out += value
        else:
            pending.append(elem)
    if pending:
        out += _with_pydicom(pending, context)
    return bytes(out)


def _copyable(elem: RawDataElement) -> bool:
    vr = elem.VR
    return (
        not elem.is_implicit_VR
        and elem.is_little_endian
        and isinstance(elem.value, bytes)
        and elem.length != _UNDEFINED
        and isinstance(vr, str)
        and len(vr) == 2
        and (vr in _LONG_LENGTH_VRS or len(elem.value) <= 0xFFFF)
    )


def _with_pydicom(elements: list[DataElement | RawDataElement], context: Dataset | None) -> bytes:
    """A run of elements (in the order given) encoded by pydicom's writer, in one call."""
    ds = Dataset()
    for elem in elements:
        if context is not None:
            # an ambiguous VR is resolved from the element's own data set (a raw element
            # would otherwise be decoded with the default choice); an implicit VR element
            # has its VR from the dictionary first
            if isinstance(elem, RawDataElement) and elem.VR is None:
                with suppress(KeyError):  # not in the dictionary: pydicom decodes it as UN
                    elem = elem._replace(VR=dictionary_VR(elem.tag))
            elem = correct_ambiguous_vr_element(elem, context, True)
        ds[elem.tag] = elem
    fp = DicomBytesIO()
    fp.is_little_endian = True
    fp.is_implicit_VR = False
    write_dataset(fp, ds)
    return fp.getvalue()
