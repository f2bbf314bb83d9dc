"""Part 10 files for C-STORE: the names of the modules that do the work, in one place.

This module kept everything once; it is now split by job.  Its names still work, for one
release, with a :class:`DeprecationWarning` naming where each one is now (import them from
:mod:`asyncdicom.storage` or from the modules themselves):

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

from types import ModuleType

from .. import errors
from ..protocol import uids
from . import codec, meta, names, reader, writer

#: where each name lives now
_MOVED: dict[str, ModuleType] = {
    # asyncdicom.errors
    "InvalidDataset": errors,
    "InvalidDicomFile": errors,
    "StorageError": errors,
    "TranscodeError": errors,
    "UnsupportedTransferSyntax": errors,
    # asyncdicom.protocol.uids
    "DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN": uids,
    "EXPLICIT_VR_BIG_ENDIAN": uids,
    "EXPLICIT_VR_LITTLE_ENDIAN": uids,
    "IMPLICIT_VR_LITTLE_ENDIAN": uids,
    # asyncdicom.storage.codec
    "NATIVE_TRANSFER_SYNTAXES": codec,
    "SPOOL_DEFER_SIZE": codec,
    "decode_dataset": codec,
    "decode_spooled_dataset": codec,
    "encode_dataset": codec,
    "read_header": codec,
    # asyncdicom.storage.meta
    "encode_file_meta": meta,
    # asyncdicom.storage.names
    "MISSING_VALUE_FOLDER": names,
    "folder_name": names,
    "is_valid_uid": names,
    "safe_filename": names,
    "target_path": names,
    # asyncdicom.storage.reader
    "Part10Source": reader,
    "read_part10_for_send": reader,
    "transcode": reader,
    # asyncdicom.storage.writer
    "DUPLICATE_POLICIES": writer,
    "DuplicatePolicy": writer,
    "LAYOUTS": writer,
    "Layout": writer,
    "Part10Writer": writer,
    "StoredFile": writer,
    "prune_empty_folders": writer,
    "remove_stale_temp_files": writer,
}

#: every name the module had (each one warns when used)
__all__ = sorted(_MOVED)


def __getattr__(name: str) -> object:
    module = _MOVED.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import warnings

    warnings.warn(
        f"asyncdicom.storage.files is deprecated: import {name} from {module.__name__}",
        DeprecationWarning,
        stacklevel=2,
    )
    value: object = getattr(module, name)
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
