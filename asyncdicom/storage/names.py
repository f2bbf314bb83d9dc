"""File and folder names for stored instances, made safe from untrusted values.

The SOP Instance UID comes from the peer and is untrusted.  A well-formed UID is used as the
file name (``<uid>.dcm``, :func:`safe_filename`); anything else is replaced by a name derived
from a SHA-256 hash of the raw value, so no peer-supplied value can name a path outside the
storage folder.  The sorted layout's folder names (:func:`folder_name`) come from the data set
(Patient ID, Study and Series Instance UID) and are sanitised the same way.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

__all__ = [
    "MISSING_VALUE_FOLDER",
    "folder_name",
    "is_valid_uid",
    "safe_filename",
    "target_path",
]

# PS3.5 section 9.1 allows components without leading zeros only; for *naming* we accept leading
# zeros too (they are common in the wild and equally safe: digits and dots only).
_UID_RE = re.compile(r"[0-9]+(?:\.[0-9]+)*")
_MAX_UID_LENGTH = 64  # PS3.5 Table 6.2-1, VR UI
_HASHED_NAME_PREFIX = "uid-"

#: the folder name used for a missing (empty or absent) Patient ID, Study or Series UID
MISSING_VALUE_FOLDER = "UNKNOWN"


def is_valid_uid(value: str) -> bool:
    """True if ``value`` is digits separated by single dots, 1 to 64 characters (PS3.5 9.1).

    Leading zeros inside a component are tolerated (see module notes); no padding is accepted,
    callers strip the NUL padding of received UI values before asking.
    """
    return 0 < len(value) <= _MAX_UID_LENGTH and _UID_RE.fullmatch(value) is not None


def safe_filename(sop_instance_uid: str, *, suffix: str = ".dcm") -> str:
    """Return a file name (a single path component) for an untrusted SOP Instance UID.

    * a valid UID (:func:`is_valid_uid`) -> ``f"{uid}{suffix}"``;
    * anything else (``"../x"``, ``"/abs"``, ``"a/b"``, NUL bytes, empty, over-long, ...) ->
      ``"uid-" + sha256(raw value)[:32 hex] + suffix``.  The hash keeps distinct bad values
      distinct, so two different instances still do not overwrite each other.

    Neither form can start with ``.``, so they never collide with the ``.<hex>.part`` temporary
    names of :class:`~asyncdicom.storage.writer.Part10Writer`.  ``suffix`` must itself be
    harmless (checked).

    Raises:
        ValueError: ``suffix`` is not a harmless file name suffix.
    """
    if suffix and (not suffix.startswith(".") or not is_plain_component(suffix[1:] or "x")):
        raise ValueError(f"unsafe file name suffix {suffix!r}")
    if is_valid_uid(sop_instance_uid):
        return sop_instance_uid + suffix
    # surrogatepass: any str (even one carrying lone surrogates) has a byte form to hash.
    raw = sop_instance_uid.encode("utf-8", errors="surrogatepass")
    return _HASHED_NAME_PREFIX + hashlib.sha256(raw).hexdigest()[:32] + suffix


def is_plain_component(name: str) -> bool:
    """A non-empty single path component that is not ``.``/``..`` and has no NUL/separator."""
    if name in ("", ".", "..") or "\x00" in name or "/" in name or "\\" in name:
        return False
    return not (os.altsep and os.altsep in name)


def target_path(folder: str | os.PathLike[str], name: str) -> Path:
    """Return ``resolved(folder) / name`` after checking that it lies directly inside ``folder``.

    ``folder`` must be an existing directory; it is resolved (symlinks in the folder path itself
    are the administrator's choice and are followed).  ``name`` is *not* resolved: if
    ``folder/name`` is a pre-existing symlink, :func:`os.replace` later replaces the link itself
    and never writes through it, so the final component must not be followed here either.

    Raises:
        FileNotFoundError: ``folder`` does not exist.
        NotADirectoryError: ``folder`` is not a directory.
        ValueError: ``name`` is not a single plain path component, or escapes ``folder``.
    """
    base = resolved_folder(folder)
    if not is_plain_component(name):
        raise ValueError(f"unsafe file name {name!r}")
    candidate = base / name
    # Defence in depth: the name is one plain component of the folder, nothing else.
    if candidate.parent != base or candidate.name != name:
        raise ValueError(f"file name {name!r} escapes the storage folder")
    return candidate


#: storage folders as given -> resolved (see resolved_folder)
_RESOLVED: dict[str, Path] = {}
_RESOLVED_LIMIT = 256


def resolved_folder(folder: str | os.PathLike[str]) -> Path:
    """``folder`` resolved (symlinks followed), checked to be an existing directory.

    A server resolves its storage folder once per instance it receives; the answer is kept
    (a few hundred folders at most), which saves a system call per component of its path
    each time.  :func:`forget_folder` drops it, for a folder found missing since.

    Raises:
        FileNotFoundError: ``folder`` does not exist.
        NotADirectoryError: ``folder`` is not a directory.
    """
    # absolute first: a relative folder names another one when the working folder changes
    key = os.path.abspath(folder)
    base = _RESOLVED.get(key)
    if base is not None:
        return base
    base = Path(folder).resolve(strict=True)
    if not base.is_dir():
        raise NotADirectoryError(f"storage folder {base} is not a directory")
    if len(_RESOLVED) >= _RESOLVED_LIMIT:
        _RESOLVED.clear()
    _RESOLVED[key] = base
    return base


def forget_folder(folder: str | os.PathLike[str]) -> None:
    """Resolve ``folder`` again next time (it was found missing, or was replaced)."""
    _RESOLVED.pop(os.path.abspath(folder), None)


_UNSAFE_FOLDER_CHARS = re.compile(r"[^A-Za-z0-9._-]")
_MAX_FOLDER_NAME = 64
#: names Windows reserves for devices, whatever their extension
_RESERVED_NAMES = frozenset(
    {"CON", "PRN", "AUX", "NUL"} | {f"{d}{n}" for d in ("COM", "LPT") for n in range(1, 10)}
)


def folder_name(value: str | None, *, uid: bool = False) -> str:
    """A safe folder name (one path component) for an untrusted value from a data set.

    With ``uid=True`` (Study/Series Instance UID) a valid UID is used as it is and anything
    else is named like :func:`safe_filename` does (``uid-<hash>``).  Otherwise (Patient ID)
    surrounding spaces are dropped, every character but ASCII letters, digits, ``.``, ``_`` and
    ``-`` becomes ``_``, leading and trailing dots become ``_`` (so ``..`` and hidden names
    cannot occur), the name is cut to 64 characters, and Windows device names get a ``_``
    prefix (``"../../etc"`` becomes ``"___.._etc"``, ``"CON"`` ``"_CON"``).  Distinct values
    may share a name (``"a/b"`` and ``"a_b"``); the UIDs below keep their instances apart.  An
    empty or missing value gives :data:`MISSING_VALUE_FOLDER`.
    """
    text = (value or "").strip(" \x00")
    if not text:
        return MISSING_VALUE_FOLDER
    if uid:
        return safe_filename(text, suffix="")
    name = _UNSAFE_FOLDER_CHARS.sub("_", text)[:_MAX_FOLDER_NAME]
    stripped = name.strip(".")
    lead = len(name) - len(name.lstrip("."))
    trail = len(name) - len(name.rstrip("."))
    name = "_" * lead + stripped + "_" * trail if stripped else "_" * len(name)
    if name.split(".")[0].upper() in _RESERVED_NAMES:
        name = "_" + name
    return name
