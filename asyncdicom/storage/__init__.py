"""Part 10 files for C-STORE: atomic streaming writer, streaming reader, transcoding.

One module per job: :mod:`~asyncdicom.storage.names` (safe file names),
:mod:`~asyncdicom.storage.meta` (File Meta Information), :mod:`~asyncdicom.storage.writer`
(SCP side), :mod:`~asyncdicom.storage.reader` (SCU side), :mod:`~asyncdicom.storage.codec`
(pydicom encoding and decoding, the only one importing pydicom),
:mod:`~asyncdicom.storage.inflate` and :mod:`~asyncdicom.storage.tags`.
:mod:`asyncdicom.storage.synthetic` makes test instances.  The errors are in
:mod:`asyncdicom.errors`.
"""

from __future__ import annotations

from ..errors import (
    InvalidDataset,
    InvalidDicomFile,
    StorageError,
    TranscodeError,
    UnsupportedTransferSyntax,
)
from .codec import NATIVE_TRANSFER_SYNTAXES, decode_dataset, encode_dataset, read_header
from .meta import encode_file_meta
from .names import folder_name, is_valid_uid, safe_filename, target_path
from .reader import Part10Source, read_part10_for_send, transcode
from .writer import (
    DUPLICATE_POLICIES,
    LAYOUTS,
    DuplicatePolicy,
    Layout,
    Part10Writer,
    StoredFile,
    remove_stale_temp_files,
)

__all__ = [
    "DUPLICATE_POLICIES",
    "LAYOUTS",
    "NATIVE_TRANSFER_SYNTAXES",
    "DuplicatePolicy",
    "InvalidDataset",
    "InvalidDicomFile",
    "Layout",
    "Part10Source",
    "Part10Writer",
    "StorageError",
    "StoredFile",
    "TranscodeError",
    "UnsupportedTransferSyntax",
    "decode_dataset",
    "encode_dataset",
    "encode_file_meta",
    "folder_name",
    "is_valid_uid",
    "read_header",
    "read_part10_for_send",
    "remove_stale_temp_files",
    "safe_filename",
    "target_path",
    "transcode",
]
