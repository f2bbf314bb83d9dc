"""Data element tags and VR facts the storage modules use, in one place (PS3.6, PS3.5 7.1.2).

Tags are ``int`` values ``0xGGGGEEEE``.
"""

from __future__ import annotations

__all__ = [
    "BULK_PIXEL_DATA",
    "LONG_LENGTH_VRS",
    "MEDIA_STORAGE_SOP_CLASS_UID",
    "MEDIA_STORAGE_SOP_INSTANCE_UID",
    "PATIENT_ID",
    "PIXEL_DATA",
    "SERIES_INSTANCE_UID",
    "SOP_CLASS_UID",
    "SOP_INSTANCE_UID",
    "STUDY_INSTANCE_UID",
    "TRANSFER_SYNTAX_UID",
]

# File Meta Information (PS3.10 Table 7.1-1)
#: (0002,0002) Media Storage SOP Class UID
MEDIA_STORAGE_SOP_CLASS_UID = 0x00020002
#: (0002,0003) Media Storage SOP Instance UID
MEDIA_STORAGE_SOP_INSTANCE_UID = 0x00020003
#: (0002,0010) Transfer Syntax UID
TRANSFER_SYNTAX_UID = 0x00020010

# Data set
#: (0008,0016) SOP Class UID
SOP_CLASS_UID = 0x00080016
#: (0008,0018) SOP Instance UID
SOP_INSTANCE_UID = 0x00080018
#: (0010,0020) Patient ID
PATIENT_ID = 0x00100020
#: (0020,000D) Study Instance UID
STUDY_INSTANCE_UID = 0x0020000D
#: (0020,000E) Series Instance UID
SERIES_INSTANCE_UID = 0x0020000E
#: (7FE0,0010) Pixel Data
PIXEL_DATA = 0x7FE00010
#: the bulk pixel elements a header reader stops at: (7FE0,0008) Float Pixel Data,
#: (7FE0,0009) Double Float Pixel Data and (7FE0,0010) Pixel Data
BULK_PIXEL_DATA = frozenset({0x7FE00008, 0x7FE00009, PIXEL_DATA})

#: Explicit VR elements whose length field is 2 reserved bytes + 4-byte length (PS3.5 7.1.2)
LONG_LENGTH_VRS = frozenset(
    {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
)
