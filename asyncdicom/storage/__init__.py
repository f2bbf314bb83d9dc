"""Part 10 files for C-STORE: atomic streaming writer, streaming reader, transcoding.

See :mod:`asyncdicom.storage.files`.  :mod:`asyncdicom.storage.synthetic` makes test instances.
"""

from __future__ import annotations

from .files import (
    DUPLICATE_POLICIES,
    LAYOUTS,
    NATIVE_TRANSFER_SYNTAXES,
    DuplicatePolicy,
    InvalidDataset,
    InvalidDicomFile,
    Layout,
    Part10Source,
    Part10Writer,
    StorageError,
    StoredFile,
    TranscodeError,
    UnsupportedTransferSyntax,
    decode_dataset,
    encode_dataset,
    encode_file_meta,
    folder_name,
    is_valid_uid,
    read_header,
    read_part10_for_send,
    remove_stale_temp_files,
    safe_filename,
    target_path,
    transcode,
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
