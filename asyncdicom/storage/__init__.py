"""Part 10 files for C-STORE: atomic streaming writer, streaming reader, transcoding.

See :mod:`asyncdicom.storage.files`.  :mod:`asyncdicom.storage.synthetic` makes test instances.
"""

from __future__ import annotations

from .files import (
    NATIVE_TRANSFER_SYNTAXES,
    InvalidDicomFile,
    Part10Source,
    Part10Writer,
    StorageError,
    TranscodeError,
    UnsupportedTransferSyntax,
    decode_dataset,
    encode_dataset,
    encode_file_meta,
    is_valid_uid,
    read_part10_for_send,
    safe_filename,
    target_path,
    transcode,
)

__all__ = [
    "NATIVE_TRANSFER_SYNTAXES",
    "InvalidDicomFile",
    "Part10Source",
    "Part10Writer",
    "StorageError",
    "TranscodeError",
    "UnsupportedTransferSyntax",
    "decode_dataset",
    "encode_dataset",
    "encode_file_meta",
    "is_valid_uid",
    "read_part10_for_send",
    "safe_filename",
    "target_path",
    "transcode",
]
