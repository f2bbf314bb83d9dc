"""Names on DICOM media: File IDs of the General Purpose CD-R profile (PS3.10, PS3.11).

A File ID is the path of a file of a File-set relative to its root, written as components
(PS3.10 section 8.2): each component is 1 to 8 characters from upper-case letters, digits and
``_`` (PS3.10 section 8.5, the character repertoire of PS3.11 for the General Purpose CD-R
interchange profile STD-GEN-CD), at most 8 components (PS3.3 F.3.2.2), no extension.
:func:`file_id_problem` says why a path is not one.

The ``media`` layout of :class:`~asyncdicom.storage.writer.Part10Writer` names instances
``PAxxxxxx/STxxxxxx/SExxxxxx/IMxxxxxx``: the six characters after each prefix are the first
base-36 digits of a SHA-256 hash of the Patient ID, Study Instance UID, Series Instance UID
and SOP Instance UID (:func:`media_folders`, :func:`media_file_name`).  A hash needs no state:
every process storing into the same folder (``--workers``, a second run) puts the same
instance under the same name without asking anyone, and the same series in the same folder.
Two different values can share a hash: folders then hold more than one patient, study or
series (harmless: the DICOMDIR is built from the files' contents, not from the folders), and
two instances of one folder are told apart by the next name in the instance's sequence
(``attempt`` 1, 2, ...), chosen when the file is placed.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from pathlib import Path

from .meta import HeadReader, parse_meta_group, ui_value
from .tags import MEDIA_STORAGE_SOP_INSTANCE_UID

__all__ = [
    "MAX_COMPONENTS",
    "MAX_COMPONENT_LENGTH",
    "file_id_problem",
    "media_file_name",
    "media_folders",
    "stored_instance_uid",
]

#: most components of a File ID (PS3.3 F.3.2.2, Referenced File ID: VM 1-8)
MAX_COMPONENTS = 8
#: most characters of one component (PS3.10 8.2: CS values of at most 8 characters)
MAX_COMPONENT_LENGTH = 8
_COMPONENT_RE = re.compile(r"[A-Z0-9_]+")
_DIGITS = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"
#: base-36 digits after each two-letter prefix
_HASH_DIGITS = MAX_COMPONENT_LENGTH - 2


def file_id_problem(parts: Sequence[str]) -> str | None:
    """Why the path made of ``parts`` (relative to the File-set's root) is not a File ID of
    the General Purpose CD-R profile, or None when it is one."""
    if not parts:
        return "an empty path"
    if len(parts) > MAX_COMPONENTS:
        return f"{len(parts)} path components (at most {MAX_COMPONENTS})"
    for part in parts:
        if not _COMPONENT_RE.fullmatch(part):
            if "." in part:
                return f"{part!r} has an extension (no '.' in a File ID)"
            return f"{part!r} has characters other than A-Z, 0-9 and _"
        if len(part) > MAX_COMPONENT_LENGTH:
            return f"{part!r} is longer than {MAX_COMPONENT_LENGTH} characters"
    return None


def _hashed(prefix: str, value: str) -> str:
    digest = int.from_bytes(
        hashlib.sha256(value.encode("utf-8", errors="surrogatepass")).digest()[:8], "big"
    )
    digits = []
    for _ in range(_HASH_DIGITS):
        digest, digit = divmod(digest, 36)
        digits.append(_DIGITS[digit])
    return prefix + "".join(digits)


def media_folders(
    patient_id: str | None, study_uid: str | None, series_uid: str | None
) -> tuple[str, str, str]:
    """The ``PAxxxxxx``, ``STxxxxxx`` and ``SExxxxxx`` folder names of an instance (a missing
    value is named as an empty one).  The study name hashes the Patient ID too, the series
    name the study UID: a study that somehow appears under two patients stays apart."""
    patient = (patient_id or "").strip(" \x00")
    study = (study_uid or "").strip(" \x00")
    series = (series_uid or "").strip(" \x00")
    return (
        _hashed("PA", patient),
        _hashed("ST", f"{patient}\x00{study}"),
        _hashed("SE", f"{patient}\x00{study}\x00{series}"),
    )


def media_file_name(sop_instance_uid: str, attempt: int = 0) -> str:
    """The ``IMxxxxxx`` name of an instance; ``attempt`` > 0 gives the next names to try when
    the first one is taken by another instance (a hash collision) or by a copy."""
    value = sop_instance_uid.strip(" \x00")
    return _hashed("IM", value if attempt == 0 else f"{value}\x00{attempt}")


def stored_instance_uid(path: str | Path) -> str | None:
    """The Media Storage SOP Instance UID (0002,0003) of the Part 10 file at ``path``; None
    when it is not a Part 10 file with one (or cannot be read)."""
    try:
        with open(path, "rb") as fp:
            reader = HeadReader(fp, Path(path).stat().st_size)
            if reader.get(128, 4) != b"DICM":
                return None
            values, _ = parse_meta_group(reader, 132, Path(path))
    except Exception:  # anything unreadable is not the instance we look for
        return None
    return ui_value(values.get(MEDIA_STORAGE_SOP_INSTANCE_UID))
