"""Part 10 files for C-STORE: the names of the modules that do the work, in one place.

This module kept everything once; it is now split by job, and re-exports their names so that
imports from ``asyncdicom.storage.files`` keep working (new code imports from the modules
themselves, or from :mod:`asyncdicom.storage`):

* :mod:`asyncdicom.storage.names`: safe file and folder names from untrusted values;
* :mod:`asyncdicom.storage.meta`: the File Meta Information, encoded and walked;
* :mod:`asyncdicom.storage.writer`: :class:`Part10Writer`, streaming, atomic (SCP side);
* :mod:`asyncdicom.storage.reader`: :func:`read_part10_for_send` and :class:`Part10Source`
  (SCU side), :func:`transcode`;
* :mod:`asyncdicom.storage.codec`: encoding and decoding with pydicom, :func:`read_header`;
* :mod:`asyncdicom.storage.inflate`: a deflate stream inflated as it is read;
* :mod:`asyncdicom.storage.tags`: the tags they use; UIDs come from
  :mod:`asyncdicom.protocol.uids`.
"""

from __future__ import annotations

from ..errors import (
    InvalidDataset,
    InvalidDicomFile,
    StorageError,
    TranscodeError,
    UnsupportedTransferSyntax,
)
from ..protocol.uids import (
    DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN,
    EXPLICIT_VR_BIG_ENDIAN,
    EXPLICIT_VR_LITTLE_ENDIAN,
    IMPLICIT_VR_LITTLE_ENDIAN,
)
from .codec import (
    NATIVE_TRANSFER_SYNTAXES,
    SPOOL_DEFER_SIZE,
    decode_dataset,
    decode_spooled_dataset,
    encode_dataset,
    read_header,
)
from .meta import encode_file_meta
from .names import MISSING_VALUE_FOLDER, folder_name, is_valid_uid, safe_filename, target_path
from .reader import Part10Source, read_part10_for_send, transcode
from .writer import (
    DUPLICATE_POLICIES,
    LAYOUTS,
    DuplicatePolicy,
    Layout,
    Part10Writer,
    StoredFile,
    prune_empty_folders,
    remove_stale_temp_files,
)

__all__ = [
    "DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN",
    "DUPLICATE_POLICIES",
    "EXPLICIT_VR_BIG_ENDIAN",
    "EXPLICIT_VR_LITTLE_ENDIAN",
    "IMPLICIT_VR_LITTLE_ENDIAN",
    "LAYOUTS",
    "MISSING_VALUE_FOLDER",
    "NATIVE_TRANSFER_SYNTAXES",
    "SPOOL_DEFER_SIZE",
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
    "decode_spooled_dataset",
    "encode_dataset",
    "encode_file_meta",
    "folder_name",
    "is_valid_uid",
    "prune_empty_folders",
    "read_header",
    "read_part10_for_send",
    "remove_stale_temp_files",
    "safe_filename",
    "target_path",
    "transcode",
]
