"""``asyncdicom dicomdir DIR``: write DIR/DICOMDIR for the DICOM files under DIR.

DIR becomes the root of a File-set of the General Purpose CD-R interchange profile
(STD-GEN-CD, PS3.11): every Part 10 file under it must already have a File ID for a name
(upper-case letters, digits and ``_``, at most 8 characters per component, at most 8
components, no extension; ``storescp --layout media`` writes such names).  When some do not,
nothing is written: each one is named with the reason on stderr, and the exit status is 1.
Files that are not Part 10 files (no ``DICM`` prefix), other DICOMDIRs and names starting
with ``.`` are not instances and are left out (counted in the summary).  An instance whose
header lacks a value its directory records need (PS3.3 F.5: a Patient ID, a Study Date, ...)
is an error too.  An existing DICOMDIR is replaced (atomically); the summary line on stdout
says how many instances, patients, studies and series it lists.  Instances in a transfer
syntax other than Explicit VR Little Endian are listed, with a warning: STD-GEN-CD holds
uncompressed Explicit VR Little Endian only (another profile, e.g. STD-GEN-DVD-JPEG, covers
the compressed ones).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from .apps import APPS
from .options import add_common
from .output import err, notice, plural

__all__ = ["add_parser", "run"]

#: at most this many problems are listed one per line (the count is always given)
_LISTED = 50


def add_parser(sub: Any) -> None:
    """Add the ``dicomdir`` sub-command to ``sub``."""
    p = sub.add_parser(
        "dicomdir",
        help=APPS["dicomdir"],
        description="Write DIR/DICOMDIR (PS3.10, General Purpose CD-R profile STD-GEN-CD) "
        "listing the DICOM files under DIR, whose paths must already be File IDs: upper-case "
        "letters, digits and _, at most 8 characters per component, at most 8 components, "
        "no extension.",
    )
    p.add_argument("dir", metavar="DIR", type=Path, help="the root of the File-set")
    add_common(p)
    p.set_defaults(func=run)


def _build(root: Path) -> int:
    from ..errors import InvalidDicomFile
    from ..protocol import uids
    from ..storage.dicomdir import entry_for, scan_folder, write_dicomdir

    try:
        scan = scan_folder(root)
    except OSError as exc:
        err(f"dicomdir: cannot list {root}: {exc.strerror or exc}")
        return 1
    if scan.unfit:
        err(
            f"dicomdir: {plural(len(scan.unfit), 'DICOM file')} under {root} "
            "have names that are not File IDs of the General Purpose CD-R profile (upper-case "
            "letters, digits and _, at most 8 characters per component, at most 8 "
            "components, no extension); nothing written:"
        )
        _list(f"{path}: {reason}" for path, reason in scan.unfit)
        return 1
    entries = []
    bad: list[str] = []
    known: dict[Any, Any] = {}
    for file_id in scan.instances:
        try:
            entries.append(entry_for(root, file_id, known=known))
        except (OSError, InvalidDicomFile) as exc:
            bad.append(str(exc))
    if bad:
        err(
            f"dicomdir: {plural(len(bad), 'DICOM file')} under {root} cannot be listed; "
            "nothing written:"
        )
        _list(bad)
        return 1
    other_syntax = sum(
        1 for entry in entries if entry.transfer_syntax_uid != uids.EXPLICIT_VR_LITTLE_ENDIAN
    )
    try:
        path = write_dicomdir(root, entries)
    except OSError as exc:
        err(f"dicomdir: cannot write {root / 'DICOMDIR'}: {exc.strerror or exc}")
        return 1
    if other_syntax:
        notice(
            f"dicomdir: warning: {plural(other_syntax, 'instance')} not in Explicit VR Little "
            "Endian: the File-set is not STD-GEN-CD (which holds uncompressed Explicit VR "
            "Little Endian only)",
            "dicomdir_profile_warning",
            instances=other_syntax,
        )
    patients = {entry.records[0].key for entry in entries}
    studies = {entry.records[1].key for entry in entries}
    series = {entry.records[2].key for entry in entries}
    skipped = f"; {plural(len(scan.skipped), 'other file')} left out" if scan.skipped else ""
    print(
        f"dicomdir: {path} lists {plural(len(entries), 'instance')} "
        f"({plural(len(patients), 'patient')}, {len(studies)} "
        f"{'study' if len(studies) == 1 else 'studies'}, {len(series)} series){skipped}",
        flush=True,
    )
    return 0


def _list(lines: Any) -> None:
    lines = list(lines)
    for line in lines[:_LISTED]:
        notice(f"  {line}", "dicomdir_file_refused", reason=line)
    if len(lines) > _LISTED:
        notice(f"  ... and {len(lines) - _LISTED} more", "dicomdir_file_refused")


async def run(args: argparse.Namespace) -> int:
    """Write ``DIR/DICOMDIR``; 0 when written, 1 when a file does not fit or cannot be read
    (nothing written), 2 when DIR is not a folder."""
    import anyio

    root: Path = args.dir
    if not root.is_dir():
        err(f"dicomdir: {root} is not a folder")
        return 2
    return await anyio.to_thread.run_sync(_build, root)
