"""Writing received SOP instances as Part 10 files (SCP side, PS3.10 section 7).

:class:`Part10Writer` writes one received SOP instance to ``folder`` as a Part 10 file: a
128-byte preamble, ``DICM``, the File Meta Information (group 0002, always Explicit VR Little
Endian, PS3.10 section 7.1) and then the data set bytes exactly as received in the negotiated
transfer syntax.  The data set is appended chunk by chunk and never held in memory.  The file is
written under a temporary name in the same folder and renamed atomically on
:meth:`Part10Writer.commit`, so a reader never sees a half-written instance.  The file is placed
flat in the folder or in patient/study/series sub-folders (:data:`LAYOUTS`), and an existing file
of the same name is kept, replaced or ignored (:data:`DUPLICATE_POLICIES`).
:func:`remove_stale_temp_files` removes what a killed writer left.

Everything here is synchronous and does plain, short file operations so that the async driver
can run each call in a worker thread (``anyio.to_thread.run_sync``) without tying it up for long.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import uuid
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, BinaryIO, Literal

from .codec import HEADER_DEFER_SIZE, read_header, read_sort_keys
from .media import media_file_name, media_folders, stored_instance_uid
from .meta import PREAMBLE, PREFIX, encode_file_meta
from .names import folder_name, forget_folder, is_plain_component, safe_filename, target_path

if sys.platform == "win32":  # pragma: no cover
    from pathlib import WindowsPath as _SystemPath

    fcntl = None
else:
    import fcntl
    from pathlib import PosixPath as _SystemPath

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

__all__ = [
    "DUPLICATE_POLICIES",
    "LAYOUTS",
    "DuplicatePolicy",
    "Layout",
    "Part10Writer",
    "StoredFile",
    "prune_empty_folders",
    "remove_stale_temp_files",
]

_TEMP_SUFFIX = ".part"
#: one system call for several buffers (POSIX), at most _IOV_MAX buffers a call
_writev = getattr(os, "writev", None)
_IOV_MAX = 1024
#: the temporary names of Part10Writer: "." + 32 hex digits + ".part"
_TEMP_NAME_RE = re.compile(r"\.[0-9a-f]{32}\.part")

#: What :class:`Part10Writer` does when a file with the instance's name exists already:
#:
#: * ``"unique"``: keep both; the new file gets the first free name ``<name>_1.dcm``,
#:   ``<name>_2.dcm``, ... (``_`` never occurs in a UID, so such a name cannot be another
#:   instance's);
#: * ``"overwrite"``: replace the existing file (atomically);
#: * ``"ignore"``: keep the existing file and drop the new one.
DuplicatePolicy = Literal["unique", "overwrite", "ignore"]
#: the values of :data:`DuplicatePolicy`, the default (``"unique"``: nothing received is lost) first
DUPLICATE_POLICIES: tuple[DuplicatePolicy, ...] = ("unique", "overwrite", "ignore")

#: Where :class:`Part10Writer` puts a file in its folder:
#:
#: * ``"flat"``: ``<SOP Instance UID>.dcm`` directly in the folder;
#: * ``"sorted"``: ``<Patient ID>/<Study Instance UID>/<Series Instance UID>/<SOP Instance
#:   UID>.dcm``, the three folder names read from the data set (:func:`folder_name`);
#: * ``"media"``: ``PAxxxxxx/STxxxxxx/SExxxxxx/IMxxxxxx``, File IDs of the General Purpose
#:   CD-R profile (:mod:`asyncdicom.storage.media`), for a File-set with a DICOMDIR
#:   (:mod:`asyncdicom.storage.dicomdir`).  The ``"unique"`` policy gives a copy the next
#:   ``IM`` name of the instance (never a ``_1`` suffix, which no File ID may have).
Layout = Literal["flat", "sorted", "media"]
#: the values of :data:`Layout`, the default first
LAYOUTS: tuple[Layout, ...] = ("flat", "sorted", "media")

#: most files named ``<name>_<n>.dcm`` tried for one instance under the ``"unique"`` policy
_MAX_COPIES = 10_000
#: times the sorted layout's folders are made and the file placed, when a folder vanishes
_PLACE_ATTEMPTS = 3
#: names tried for one instance in the media layout (taken by other instances or copies)
_MEDIA_NAMES = 1000


class StoredFile(_SystemPath):
    """The path of a stored instance (a :class:`pathlib.Path`), with what happened to it.

    Returned by :meth:`Part10Writer.commit` and ``request.save_to()``.  It compares, hashes and
    works like the plain path of the file, and adds:

    * :attr:`duplicate`: ``None`` when no file had the instance's name; otherwise the
      :data:`DuplicatePolicy` that was applied (``"unique"``: this path is the new copy's
      ``<name>_<n>.dcm``; ``"overwrite"``: the previous file was replaced; ``"ignore"``: this
      path is the existing file, the instance just received was dropped);
    * :attr:`dataset_size`: the number of data set bytes received;
    * :meth:`header`: the file's data set without its pixel data, read when asked.

    Paths derived from it (``parent``, ``with_suffix()``, ...) are of this class too but carry
    the defaults (``duplicate=None``, ``dataset_size=0``).
    """

    #: ``None``, or the policy applied because a file with the instance's name existed
    duplicate: DuplicatePolicy | None = None
    #: data set bytes received (the File Meta Information is not counted)
    dataset_size: int = 0

    @classmethod
    def _made(
        cls, path: Path, *, duplicate: DuplicatePolicy | None, dataset_size: int
    ) -> StoredFile:
        stored = cls(path)
        stored.duplicate = duplicate
        stored.dataset_size = dataset_size
        return stored

    def header(self, *, defer_size: int | None = HEADER_DEFER_SIZE) -> Dataset:
        """The data set of this file up to its pixel data, with its File Meta Information.

        Reads the file now, with :func:`read_header` (a few kilobytes for an image; the pixel
        data is never read).  Blocking file I/O: from an ``async`` handler on a slow disk, call
        it through ``anyio.to_thread.run_sync``.
        """
        return read_header(self, defer_size=defer_size)


class Part10Writer:
    """Write one received SOP instance to ``folder`` as a DICOM Part 10 file, streaming.

    Parameters
    ----------
    folder:
        Existing directory; the file ends up inside it (never elsewhere, whatever the UIDs and
        other values from the peer contain).
    sop_class_uid, sop_instance_uid:
        Affected SOP Class/Instance UID of the C-STORE-RQ; they become (0002,0002)/(0002,0003)
        and the instance UID names the file (:func:`safe_filename`).
    transfer_syntax_uid:
        The transfer syntax of the presentation context the data set arrived on, (0002,0010).
        The data set bytes given to :meth:`write` must already be in it; for Deflated Explicit VR
        Little Endian they are the deflated stream and are stored as received.
    implementation_class_uid, implementation_version_name:
        Identify the implementation writing the file, (0002,0012)/(0002,0013).
    source_ae_title:
        Optional (0002,0016) Source Application Entity Title: the AE that sent the instance.
    on_duplicate:
        What :meth:`commit` does when a file with the final name exists
        (:data:`DuplicatePolicy`): ``"unique"`` (default) keeps both, ``"overwrite"`` replaces
        the existing file, ``"ignore"`` keeps it and drops the new one.
    layout:
        ``"flat"`` (default): ``folder/<SOP Instance UID>.dcm``; ``"sorted"``:
        ``folder/<Patient ID>/<Study UID>/<Series UID>/<SOP Instance UID>.dcm`` (:data:`Layout`),
        the three names read by :meth:`commit` from the head of the data set written, never
        from its pixel data, and made safe with :func:`folder_name`; ``"media"``:
        ``folder/PAxxxxxx/STxxxxxx/SExxxxxx/IMxxxxxx`` from the same values
        (:mod:`asyncdicom.storage.media`).

    Life cycle: the constructor creates ``folder/.<random hex>.part`` with ``O_CREAT | O_EXCL``
    (it cannot clobber or follow anything), locks it (POSIX ``flock``, so that
    :func:`remove_stale_temp_files` in another process leaves it alone) and writes preamble,
    ``DICM`` and the meta group.  :meth:`write` appends data set bytes.  :meth:`commit` flushes
    the file and moves it to its final name, atomically: :func:`os.replace` (overwrite) or a
    hard link that fails if the name is taken (unique, ignore), the temporary name being in the
    same folder tree.  :meth:`discard` removes the temporary file.  Used as a context manager,
    leaving the block without :meth:`commit` (normally or by an exception) discards.  A writer
    dropped without either (process killed) leaves its ``.*.part`` file behind; those names
    never clash with stored files and :func:`remove_stale_temp_files` removes them.

    If the final name is a symlink, it counts as an existing file: the link itself is replaced
    (overwrite) or kept, its target is never written.  There is no ``fsync``: after a power
    loss a recent file may be missing or empty, but a crash of the process never leaves a
    partial file under a final name.  File permissions are ``0o666`` minus the process umask.

    Raises:
        ValueError: an unknown ``on_duplicate`` or ``layout``, or a meta value that cannot
            be encoded (:func:`~asyncdicom.storage.meta.encode_file_meta`).
        OSError: the temporary file cannot be created in ``folder``.
    """

    __slots__ = (
        "_bytes_written",
        "_file",
        "_final_path",
        "_folder",
        "_head",
        "_header_length",
        "_layout",
        "_name",
        "_on_duplicate",
        "_sop_instance_uid",
        "_state",
        "_temp_path",
        "_transfer_syntax_uid",
    )

    def __init__(
        self,
        folder: str | os.PathLike[str],
        *,
        sop_class_uid: str,
        sop_instance_uid: str,
        transfer_syntax_uid: str,
        implementation_class_uid: str,
        implementation_version_name: str | None = None,
        source_ae_title: str | None = None,
        on_duplicate: DuplicatePolicy = "unique",
        layout: Layout = "flat",
    ) -> None:
        if on_duplicate not in DUPLICATE_POLICIES:
            raise ValueError(
                f"on_duplicate must be one of {DUPLICATE_POLICIES}, not {on_duplicate!r}"
            )
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, not {layout!r}")
        header = (
            PREAMBLE
            + PREFIX
            + encode_file_meta(
                sop_class_uid=sop_class_uid,
                sop_instance_uid=sop_instance_uid,
                transfer_syntax_uid=transfer_syntax_uid,
                implementation_class_uid=implementation_class_uid,
                implementation_version_name=implementation_version_name,
                source_ae_title=source_ae_title,
            )
        )
        self._name = safe_filename(sop_instance_uid)
        self._sop_instance_uid = sop_instance_uid
        self._on_duplicate: DuplicatePolicy = on_duplicate
        self._layout: Layout = layout
        self._transfer_syntax_uid = transfer_syntax_uid
        self._header_length = len(header)
        # Flat: the final path is known (and checked) now.  Sorted: only the folder is.
        self._final_path: Path | None = None
        if layout == "flat":
            self._final_path = target_path(folder, self._name)
            self._folder = self._final_path.parent
        else:
            self._folder = target_path(folder, self._name).parent
        # the folder is resolved and checked already, and the name is ours (one plain path
        # component): no second resolution, which costs a system call per folder level
        self._temp_path = self._folder / f".{uuid.uuid4().hex}{_TEMP_SUFFIX}"
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
        try:
            fd = os.open(self._temp_path, flags, 0o666)
        except (FileNotFoundError, NotADirectoryError):
            forget_folder(folder)  # removed or replaced since it was resolved
            raise
        self._state = "open"
        self._bytes_written = 0
        try:
            _lock(fd)
            self._file: BinaryIO = os.fdopen(fd, "wb")
        except BaseException:
            os.close(fd)
            self._remove_temp()
            raise
        #: the meta header, written with the first data (in one system call with it by
        #: :meth:`write_many`)
        self._head: bytes | None = header

    @property
    def path(self) -> Path:
        """The file's path: after :meth:`commit`, where it was stored; before, where the flat
        layout will put it (unless the name is taken).  The sorted layout names its folders on
        :meth:`commit`: before, this raises :class:`ValueError`.

        Raises:
            ValueError: the sorted layout, before :meth:`commit`.
        """
        if self._final_path is None:
            raise ValueError("the sorted layout chooses the file's folder on commit")
        return self._final_path

    @property
    def temp_path(self) -> Path:
        """The temporary path being written."""
        return self._temp_path

    @property
    def bytes_written(self) -> int:
        """Number of data set bytes written so far (the meta header is not counted)."""
        return self._bytes_written

    @property
    def closed(self) -> bool:
        """True after :meth:`commit` or :meth:`discard`."""
        return self._state != "open"

    def write(self, chunk: bytes | bytearray | memoryview) -> None:
        """Append data set bytes.  Nothing is retained beyond the file object's small buffer.

        Raises:
            ValueError: the writer is committed or discarded.
            OSError: the file cannot be written (disk full, ...).
        """
        if self._state != "open":
            raise ValueError(f"Part10Writer is {self._state}")
        if self._head is not None:
            self._file.write(self._head)
            self._head = None
        # A buffered file passes writes larger than its buffer straight to the OS without copying.
        self._file.write(chunk)
        self._bytes_written += memoryview(chunk).nbytes

    def write_many(self, chunks: Sequence[bytes | bytearray | memoryview]) -> None:
        """Append several pieces of data set bytes in one system call (``os.writev``, where
        the platform has it; else one :meth:`write` each); the pieces are not joined.

        Raises:
            ValueError: the writer is committed or discarded.
            OSError: the file cannot be written (disk full, ...).
        """
        if self._state != "open":
            raise ValueError(f"Part10Writer is {self._state}")
        if _writev is None:  # pragma: no cover - Windows
            for chunk in chunks:
                self.write(chunk)
            return
        pieces: list[bytes | bytearray | memoryview] = list(chunks)
        size = 0
        for piece in pieces:
            size += memoryview(piece).nbytes
        if self._head is not None:
            pieces.insert(0, self._head)
            self._head = None
        self._file.flush()  # what write() left in the buffer goes first
        fd = self._file.fileno()
        while pieces:
            done = _writev(fd, pieces[:_IOV_MAX])
            # a short write (rare on a local file): drop what went out, go on with the rest
            while pieces:
                length = memoryview(pieces[0]).nbytes
                if done < length:
                    if done:
                        pieces[0] = memoryview(pieces[0]).cast("B")[done:]
                    break
                done -= length
                del pieces[0]
        self._bytes_written += size

    def commit(
        self, *, sort_keys: tuple[str | None, str | None, str | None] | None = None
    ) -> StoredFile:
        """Flush the file and move it to its final name; return that path (a :class:`StoredFile`
        telling whether a file of that name existed and what was done).

        ``sort_keys``: for the sorted layout, the (Patient ID, Study Instance UID, Series
        Instance UID) of the data set written, when the caller read them already (from the
        bytes as they went by, :meth:`StructureCheck.sort_keys
        <asyncdicom.storage.structure.StructureCheck.sort_keys>`); by default they are read
        back from the file.

        On POSIX the temporary file stays open (and locked) until it has its final name.  With
        the ``"ignore"`` policy and a taken name, the new file is removed and the existing one's
        path is returned.

        Raises:
            ValueError: the writer is committed or discarded already.
            FileExistsError: the ``"unique"`` policy found no free name.
            OSError: the file cannot be flushed or placed (a folder of the sorted layout
                is a file or a link: :class:`NotADirectoryError`); the temporary file is removed.
        """
        if self._state != "open":
            raise ValueError(f"Part10Writer is {self._state}")
        try:
            if self._head is not None:  # no data set byte was written
                self._file.write(self._head)
                self._head = None
            self._file.flush()
            if not _RENAME_OPEN_FILES:
                self._file.close()
            if self._final_path is not None:
                path, duplicate = _place(self._temp_path, self._final_path, self._on_duplicate)
            else:
                path, duplicate = self._place_sorted(sort_keys)
            self._file.close()
        except BaseException:
            self._state = "discarded"
            with contextlib.suppress(OSError):
                self._file.close()
            self._remove_temp()
            raise
        self._state = "committed"
        self._final_path = path
        return StoredFile._made(path, duplicate=duplicate, dataset_size=self._bytes_written)

    def _place_sorted(
        self, sort_keys: tuple[str | None, str | None, str | None] | None
    ) -> tuple[Path, DuplicatePolicy | None]:
        """Create the sorted layout's folders and place the file there.  Another writer may
        remove a folder it emptied (:func:`prune_empty_folders`) between our ``mkdir`` and our
        ``link``: the folders are made again, a few times at most."""
        if sort_keys is None:
            sort_keys = read_sort_keys(
                self._temp_path, self._header_length, self._transfer_syntax_uid
            )
        for attempt in range(_PLACE_ATTEMPTS):
            folder = self._sorted_folder(sort_keys)
            try:
                if self._layout == "media":
                    return _place_media(
                        self._temp_path, folder, self._sop_instance_uid, self._on_duplicate
                    )
                return _place(self._temp_path, folder / self._name, self._on_duplicate)
            except FileNotFoundError:
                _forget_folder(folder)
                if attempt == _PLACE_ATTEMPTS - 1 or not self._temp_path.exists():
                    raise
        raise AssertionError("unreachable")

    def _sorted_folder(self, sort_keys: tuple[str | None, str | None, str | None]) -> Path:
        """``folder/<patient>/<study>/<series>``, the folders created as needed.

        Each level must be a real directory inside ``folder``: a symlink or a file of that name
        fails the commit (:class:`OSError`) rather than being followed.  A series folder made
        or checked once is remembered (:data:`_KNOWN_FOLDERS`): the next instance of the
        series costs no system call to find its folder; one removed since (by
        :func:`prune_empty_folders`, or by another process) is made again when placing the
        file finds it missing.
        """
        patient, study, series = sort_keys
        if self._layout == "media":
            names = media_folders(patient, study, series)
        else:
            names = (
                folder_name(patient),
                folder_name(study, uid=True),
                folder_name(series, uid=True),
            )
        key = (self._folder, *names)
        known = _KNOWN_FOLDERS.get(key)
        if known is not None:
            return known
        current = self._folder
        for part in names:
            if not is_plain_component(part):  # cannot happen: folder_name makes plain names
                raise ValueError(f"unsafe folder name {part!r}")
            current = current / part
            with contextlib.suppress(FileExistsError):
                os.mkdir(current)
            if current.is_symlink() or not current.is_dir():
                raise NotADirectoryError(
                    f"{current} is not a directory (a file or a link has its name)"
                )
        if len(_KNOWN_FOLDERS) >= _KNOWN_FOLDERS_LIMIT:
            _KNOWN_FOLDERS.clear()
        _KNOWN_FOLDERS[key] = current
        return current

    def discard(self) -> None:
        """Close and remove the temporary file.  Idempotent; does nothing after :meth:`commit`."""
        if self._state != "open":
            return
        self._state = "discarded"
        try:
            self._file.close()
        finally:
            self._remove_temp()

    def _remove_temp(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._temp_path)

    def __enter__(self) -> Part10Writer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.discard()

    def __repr__(self) -> str:
        name = self._final_path.name if self._final_path is not None else self._name
        return f"<Part10Writer {name} {self._state} {self._bytes_written} bytes>"


#: POSIX renames a file that is open (and keeps its lock) without trouble; Windows does not.
_RENAME_OPEN_FILES = os.name == "posix"


def _lock(fd: int) -> None:
    """Mark a temporary file as being written: an exclusive ``flock`` held until it is closed.

    Where locks are not available (Windows, a file system without them) nothing is done: on
    Windows an open file cannot be removed anyway.
    """
    if fcntl is None:  # pragma: no cover - Windows
        return
    with contextlib.suppress(OSError):
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)


def _place(temp: Path, final: Path, policy: DuplicatePolicy) -> tuple[Path, DuplicatePolicy | None]:
    """Give ``temp`` the name ``final`` according to ``policy``; return the path the instance
    has and the policy applied (``None`` if the name was free)."""
    if policy == "overwrite":
        existed = os.path.lexists(final)
        os.replace(temp, final)
        return final, ("overwrite" if existed else None)
    if _link_if_free(temp, final):
        return final, None
    if policy == "ignore":
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        return final, "ignore"
    stem, suffix = final.name[: -len(final.suffix) or None], final.suffix
    for n in range(1, _MAX_COPIES + 1):
        candidate = final.with_name(f"{stem}_{n}{suffix}")
        if _link_if_free(temp, candidate):
            return candidate, "unique"
    raise FileExistsError(f"{final} and {_MAX_COPIES} copies of it exist already")


def _place_media(
    temp: Path, folder: Path, sop_instance_uid: str, policy: DuplicatePolicy
) -> tuple[Path, DuplicatePolicy | None]:
    """Give ``temp`` the first free ``IMxxxxxx`` name of the instance in ``folder``
    (:func:`media_file_name`).  A name taken by a copy of the same instance (its Media Storage
    SOP Instance UID says so) is a duplicate: replaced (overwrite), kept (ignore) or passed
    over (unique); a name taken by anything else is passed over."""
    duplicate: DuplicatePolicy | None = None
    for attempt in range(_MEDIA_NAMES):
        final = folder / media_file_name(sop_instance_uid, attempt)
        if _link_if_free(temp, final):
            return final, duplicate
        if stored_instance_uid(final) != sop_instance_uid.strip(" \x00"):
            continue  # another instance has this name
        if policy == "overwrite":
            os.replace(temp, final)
            return final, "overwrite"
        if policy == "ignore":
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp)
            return final, "ignore"
        duplicate = "unique"
    raise FileExistsError(f"{_MEDIA_NAMES} names for {sop_instance_uid} in {folder} are taken")


def _link_if_free(temp: Path, final: Path) -> bool:
    """Move ``temp`` to ``final`` unless that name is taken (by anything, a dangling link
    included); True if moved.  Atomic with a hard link; on a file system without hard links,
    checked first (another process might then take the name in between)."""
    try:
        os.link(temp, final)
    except FileExistsError:
        return False
    except OSError:
        # no hard links here (FAT, some network file systems): check, then rename
        if os.path.lexists(final):
            return False
        os.replace(temp, final)
        return True
    os.unlink(temp)
    return True


def prune_empty_folders(path: str | os.PathLike[str], root: str | os.PathLike[str]) -> None:
    """Remove the folders between ``path`` (a removed file's) and ``root`` that are left
    empty, deepest first; ``root`` itself stays.  Stops at the first folder that is not empty
    (or cannot be removed); a folder outside ``root`` is never touched."""
    root_path = Path(root).resolve()
    current = Path(path).resolve().parent
    while current != root_path and root_path in current.parents:
        _forget_folder(current)
        try:
            os.rmdir(current)
        except OSError:
            return
        current = current.parent


#: series folders of the sorted layout known to exist: (storage folder, patient, study,
#: series names) -> the series folder (see Part10Writer._sorted_folder); cleared when full
_KNOWN_FOLDERS: dict[tuple[Path, str, str, str], Path] = {}
_KNOWN_FOLDERS_LIMIT = 4096


def _forget_folder(folder: Path) -> None:
    """Drop ``folder`` and what lies below it from :data:`_KNOWN_FOLDERS`."""
    for key, known in list(_KNOWN_FOLDERS.items()):
        if known == folder or folder in known.parents:
            _KNOWN_FOLDERS.pop(key, None)


def remove_stale_temp_files(folder: str | os.PathLike[str]) -> int:
    """Remove the temporary files that killed writers left in ``folder``; return how many.

    Only names of :class:`Part10Writer`'s form (``.<32 hex digits>.part``, regular files, not
    links) directly in ``folder`` are considered.  One that a live writer (of this or another
    process) is still writing is left alone: the writer holds a lock on it (POSIX), and Windows
    refuses to remove an open file.  A missing ``folder`` has none.
    """
    removed = 0
    try:
        entries = list(os.scandir(folder))
    except FileNotFoundError:
        return 0
    for entry in entries:
        if not _TEMP_NAME_RE.fullmatch(entry.name) or not entry.is_file(follow_symlinks=False):
            continue
        try:
            if _remove_if_unlocked(entry.path):
                removed += 1
        except FileNotFoundError:
            continue  # its writer committed or discarded it meanwhile
        except PermissionError:
            continue  # open elsewhere (Windows), or not ours to remove
    return removed


def _remove_if_unlocked(path: str) -> bool:
    if fcntl is None:  # pragma: no cover - Windows: an open file cannot be removed
        os.unlink(path)
        return True
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(path, flags)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False  # a live writer has it
        except OSError:
            pass  # no locks on this file system: the name alone decides
        os.unlink(path)
        return True
    finally:
        os.close(fd)
