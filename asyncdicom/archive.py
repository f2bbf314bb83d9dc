"""A small archive (PACS) on an AE: C-STORE into a folder, C-FIND, C-GET and C-MOVE from an index.

:class:`Archive` keeps the instances it receives as Part 10 files in a storage folder (in the
sorted layout, ``<Patient ID>/<Study UID>/<Series UID>/<SOP Instance UID>.dcm``) and indexes
them in SQLite (:class:`~asyncdicom.qr.SQLiteIndex`, by default ``<folder>/index.sqlite``) or
in PostgreSQL (:class:`~asyncdicom.qr.PostgreSQLIndex`, ``db="postgresql://..."``: several
archive nodes on one database and one shared folder), so that the index, and with it the
archive, survives restarts.  :meth:`Archive.install` registers
its handlers on an :class:`~asyncdicom.AE` configured with :func:`qrscp_config`::

    archive = Archive("/data/archive", move_destinations={"VIEWER": ("10.0.0.5", 11112)})
    ae = AE(config=qrscp_config("QRSCP"))
    async with archive:
        archive.install(ae)
        await ae.serve("0.0.0.0", 11112)

* **C-STORE**: the file is written (a re-sent instance beside the old copy, which it replaces
  only once indexed), its header read and indexed; the C-STORE-RSP is sent only once the
  index row is committed, so an instance the peer was told is stored is also found.  Index
  writes are batched: one writer task commits whatever instances arrived meanwhile in one
  transaction.  A file or database that cannot be written answers 0xA700 (out of
  resources); a data set that cannot be indexed (no Study, Series or SOP Instance UID) 0xC000,
  and its file is removed (a stored copy of the instance is kept).
* **C-FIND** on the Patient Root, Study Root and Patient/Study Only models: the matching rules
  of PS3.4 C.2.2.2 (:mod:`asyncdicom.qr.matching`); an identifier the model cannot answer
  gets the standard's failure status with an Error Comment: 0xA900 (Query/Retrieve Level
  missing or unknown, a unique key of a level above missing), 0xC000 (a key value with no
  meaning, an identifier that cannot be decoded), 0x0122 (not a Query/Retrieve model).
* **Storage Commitment** (Push Model, N-ACTION): each instance of a request is looked up in
  the index: committed when its SOP Instance UID is indexed with the same SOP Class UID and its
  file is still on disk; else failed with reason 0x0112 (no such object instance) or 0x0119
  (class / instance conflict).  The report (N-EVENT-REPORT) goes on the requesting association
  while it is open, else on a new association to the requestor's address in
  ``commitment_peers`` (:class:`~asyncdicom.services.commitment.CommitmentSCP`).
* **C-GET / C-MOVE** on the same models: the files of the instances under the entities the
  identifier selects; the sub-operations are performed by the retrieve engine
  (:mod:`asyncdicom.services.retrieve`), which answers 0xA801 for a C-MOVE to an AE title
  missing from ``ae.move_destinations``.

Database work never runs on the event loop: queries run in worker threads on a connection of
their own (WAL journaling: a query does not wait for an ingest commit), index writes in worker
threads on another (on PostgreSQL, connections of one pool).

Stopping and starting: closing the archive (:meth:`Archive.aclose`) indexes every file a
C-STORE handed to the index writer, even one whose association was cancelled meanwhile (a
server stopped by a signal), so a clean stop leaves no file the index does not list.  Opening
compares the folder's ``.dcm`` files with the index (:class:`FolderCheck`): a file it does not
list (a killed run's, one copied in, every file for a new or lost index) is indexed, a re-sent
copy a killed run left beside its instance takes the instance's name, and what cannot be
indexed is reported (:attr:`Archive.folder_check`).

Several nodes: archives on one PostgreSQL database and one storage folder (several qrscp
processes, on one host or several) serve the same instances.  Each writes a file under a
temporary name and links it under the instance's name (a re-sent instance: a copy beside it)
before indexing it, so two writers never clobber each other's files, and the database gives
one row per instance however many nodes store it at once.  Opening an archive on a PostgreSQL
index does not compare the folder with the index unless the database is new: the other nodes
may be writing files they have not indexed yet, and a node starting must not index, rename or
remove them.  What a killed node leaves unindexed was never acknowledged (a C-STORE is answered
once its row is committed): its sender sends it again, and that copy takes the instance's name.
``check_folder=True`` forces the comparison (with every node stopped).
"""

from __future__ import annotations

import os
import re
from collections.abc import AsyncIterator, Generator, Iterator, Mapping
from contextlib import AsyncExitStack, suppress
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from types import TracebackType
from typing import Any

import anyio
from anyio.abc import TaskGroup
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from pydicom.dataset import Dataset

from .ae import AE
from .config import AEConfig
from .errors import StorageError
from .log import get_logger
from .presets import (
    QR_FIND,
    QR_GET,
    QR_MOVE,
    qr_supported,
    storage_commitment_scp_supported,
    storage_supported,
)
from .protocol import messages
from .protocol.status import Status
from .qr import Index, QueryError, SQLiteIndex, open_index, parse_query
from .qr.index import Added
from .qr.postgres import is_postgresql_url, redacted
from .qr.wire import WIRE_SYNTAXES
from .services.base import make_response
from .services.commitment import (
    CLASS_INSTANCE_CONFLICT,
    NO_SUCH_OBJECT_INSTANCE,
    CommitmentSCP,
)
from .services.storage import (
    convert_saved,
    save_request,
    store_failure_comment,
    store_failure_status,
)
from .storage.codec import read_header
from .storage.names import safe_filename
from .storage.writer import StoredFile, prune_empty_folders

__all__ = [
    "DEFAULT_DB_NAME",
    "Archive",
    "FolderCheck",
    "qrscp_config",
]

#: the index file's name in the storage folder when no other path is given
DEFAULT_DB_NAME = "index.sqlite"

#: C-STORE failure statuses (PS3.4 B.2.3)
_OUT_OF_RESOURCES = 0xA700
_CANNOT_UNDERSTAND = 0xC000

#: instances committed in one transaction at most
_BATCH_LIMIT = 512
#: stored instances waiting for the index writer at most (more C-STOREs wait to be queued)
_QUEUE_SIZE = 1024
#: files indexed per transaction when an index is rebuilt from the folder
_REBUILD_BATCH = 500


# ---------------------------------------------------------------------------------------------
# AE configuration
# ---------------------------------------------------------------------------------------------


def qrscp_config(ae_title: str = "QRSCP", **fields: Any) -> AEConfig:
    """An :class:`~asyncdicom.AEConfig` for a Query/Retrieve SCP that also stores: FIND, GET
    and MOVE of the three information models (:func:`~asyncdicom.presets.qr_supported`),
    every storage SOP class with the SCU role allowed (the C-STOREs of a C-GET go back on the
    requesting association), any other storage SOP class (``accept_any_storage``) and Storage
    Commitment Push Model as SCP; ``fields`` set the other configuration fields
    (``max_pdu_length``, ``timeouts``, ...)."""
    fields.setdefault(
        "supported_contexts",
        qr_supported() + storage_supported(scu_role=True) + storage_commitment_scp_supported(),
    )
    fields.setdefault("accept_any_storage", True)
    return AEConfig(ae_title=ae_title, **fields)


# ---------------------------------------------------------------------------------------------
# The archive
# ---------------------------------------------------------------------------------------------


@dataclass
class FolderCheck:
    """What :meth:`Archive.open` found comparing the storage folder with its index.

    An archive stopped in a way it could not finish its writes (killed, power lost) can leave
    a complete file the index does not list; a file copied in by hand, or a lost index file,
    gives the same.  Opening indexes such files; this says what it did and what it left.
    """

    #: the index file was new (every file of the folder was indexed)
    new_index: bool = False
    #: files the index did not list, indexed now
    indexed: int = 0
    #: copies of re-sent instances (``<name>_<n>.dcm``) left unindexed: indexed now, each
    #: took its instance's name (replacing the copy it was sent to replace)
    completed: int = 0
    #: (file, why) such copies that cannot be indexed, removed (as for a refused C-STORE)
    removed: list[tuple[str, str]] = field(default_factory=list)
    #: (file, why) files left in place and not indexed: not DICOM, no UIDs, or their SOP
    #: Instance UID is indexed as another file
    skipped: list[tuple[str, str]] = field(default_factory=list)
    #: indexed files that are gone (their rows are kept: a C-GET of them fails, Storage
    #: Commitment reports them failed)
    missing: list[str] = field(default_factory=list)

    @property
    def agrees(self) -> bool:
        """Whether the index listed exactly the folder's files (nothing indexed, removed,
        skipped or missing)."""
        return not (self.indexed or self.completed or self.removed or self.skipped or self.missing)

    def report(self, folder: str | os.PathLike[str], *, limit: int = 10) -> list[str]:
        """What was found, as lines for a person (none when the folder and index agreed);
        at most ``limit`` files are named per kind."""
        lines: list[str] = []
        if self.new_index:
            if self.indexed or self.skipped:
                lines.append(f"new index: indexed {_count(self.indexed, 'file')} found in {folder}")
        elif self.indexed:
            lines.append(
                f"the index did not list {_count(self.indexed, 'file')} in {folder}: indexed"
            )
        if self.completed:
            lines.append(
                f"{_count(self.completed, 'copy', 'copies')} of re-sent instances left by an "
                "interrupted run: indexed, each replacing the copy it was sent to replace"
            )
        for what, items in (
            ("removed (an unindexable copy of a re-sent instance)", self.removed),
            ("not indexed", self.skipped),
        ):
            if items:
                lines.append(f"{_count(len(items), 'file')} {what}:")
                lines.extend(f"  {path}: {why}" for path, why in items[:limit])
                if len(items) > limit:
                    lines.append(f"  ... and {len(items) - limit} more (see the log)")
        if self.missing:
            lines.append(f"{_count(len(self.missing), 'indexed file')} missing from {folder}:")
            lines.extend(f"  {path}" for path in self.missing[:limit])
            if len(self.missing) > limit:
                lines.append(f"  ... and {len(self.missing) - limit} more")
        return lines


def _count(n: int, word: str, plural: str | None = None) -> str:
    return f"{n} {word if n == 1 else plural or word + 's'}"


@dataclass(eq=False)
class _Job:
    """One stored file waiting for the index writer."""

    path: StoredFile
    done: anyio.Event = field(default_factory=anyio.Event)
    #: where the file is once indexed: the instance's own name (see _index_batch)
    final: Path = field(init=False)

    def __post_init__(self) -> None:
        self.final = _own_name(self.path)

    result: Added | Exception | None = None


class Archive:
    """A storage folder and its index, served on an AE (see the module docstring).

    ``storage`` is the folder (created if needed); ``db`` the SQLite index file (default
    ``<storage>/index.sqlite``) or the URL of a PostgreSQL database (``postgresql://...``,
    opened with ``db_pool_size`` connections at most); ``move_destinations`` the AE titles a
    C-MOVE may name, as ``{"AET": (host, port)}`` (added to ``ae.move_destinations`` by
    :meth:`install`); ``pn_case_insensitive`` makes Person Name matching case-insensitive (the
    default is case-sensitive, as PS3.4 and DCMTK's dcmqrscp); ``commitment_peers`` the addresses of
    Storage Commitment requestors, ``{"AET": (host, port)}``, for reports on a new association.

    Use it as an async context manager: entering opens the index and compares it with the
    folder (indexing the files it does not list, :attr:`folder_check`; ``check_folder=False``
    skips that walk, except for a new index; the default, None, is True for an SQLite index and
    False for a PostgreSQL one, which other nodes share: see the module docstring), leaving
    waits for the index writes in progress and closes the index.  :meth:`install` registers
    the handlers on an AE; the archive must be open while that AE serves.
    """

    def __init__(
        self,
        storage: str | os.PathLike[str],
        *,
        db: str | os.PathLike[str] | None = None,
        move_destinations: Mapping[str, tuple[str, int]] | None = None,
        pn_case_insensitive: bool = False,
        commitment_peers: Mapping[str, tuple[str, int]] | None = None,
        check_folder: bool | None = None,
        store_as: str | None = None,
        allow_lossy: bool = False,
        db_pool_size: int = 8,
    ) -> None:
        #: the storage folder
        self.folder = Path(storage)
        #: the PostgreSQL database's URL (None for an SQLite index)
        self.db_url: str | None = str(db) if is_postgresql_url(db) else None
        #: the SQLite index file (for a PostgreSQL index: the name it would have)
        self.db_path = (
            Path(db) if db is not None and self.db_url is None else self.folder / DEFAULT_DB_NAME
        )
        self.db_pool_size = db_pool_size
        #: the index, for messages: the file, or the URL without its password
        self.db_name = str(self.db_path) if self.db_url is None else redacted(self.db_url)
        #: C-MOVE destinations: AE title -> (host, port)
        self.move_destinations: dict[str, tuple[str, int]] = dict(move_destinations or {})
        self.pn_case_insensitive = pn_case_insensitive
        #: Storage Commitment requestors: AE title -> (host, port), for reports on a new
        #: association
        self.commitment_peers: dict[str, tuple[str, int]] = dict(commitment_peers or {})
        #: the Storage Commitment SCP, once :meth:`install` ran
        self.commitment: CommitmentSCP | None = None
        #: what opening found comparing the folder with the index (:class:`FolderCheck`)
        self.folder_check = FolderCheck()
        self._check = check_folder if check_folder is not None else self.db_url is None
        #: the transfer syntax received instances are converted to (``qrscp --store-as``;
        #: one that cannot be converted is kept as received, with a warning)
        self.store_as = store_as
        self.allow_lossy = allow_lossy
        self.log = get_logger(archive=str(self.folder))
        self._writer: Index | None = None
        self._reader: Index | None = None
        self._send: MemoryObjectSendStream[_Job] | None = None
        self._stack: AsyncExitStack | None = None
        self._tg: TaskGroup | None = None

    # -- life cycle -------------------------------------------------------------------------

    async def __aenter__(self) -> Archive:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def open(self) -> None:
        """Open (or create) the index in a worker thread, compare it with the folder's
        ``.dcm`` files (:attr:`folder_check`: the files it does not list are indexed), and
        start the index writer.  Raises
        :class:`~asyncdicom.qr.IndexDatabaseError` for a file or database that is not an index
        of this release or cannot be reached, :class:`OSError` / :class:`sqlite3.Error` when
        a file cannot be opened."""
        if self._stack is not None:
            raise RuntimeError("the archive is open already")
        await anyio.to_thread.run_sync(self._open_indexes)
        stack = AsyncExitStack()
        try:
            tg = await stack.enter_async_context(anyio.create_task_group())
            send, receive = anyio.create_memory_object_stream[_Job](_QUEUE_SIZE)
            self._send = send
            tg.start_soon(self._write_index, receive)
            self._tg = tg
            if self.commitment is not None:
                self.commitment.start(tg)
        except BaseException:
            await stack.aclose()
            await anyio.to_thread.run_sync(self._close_indexes)
            raise
        self._stack = stack

    async def aclose(self) -> None:
        """Finish the index writes in progress and close the index (in a worker thread)."""
        stack, self._stack = self._stack, None
        if stack is None:
            return
        self._tg = None
        if self.commitment is not None:
            # reports still in progress are given up: the requestors time out
            self.commitment.stop(cancel=True)
        if self._send is not None:
            self._send.close()  # the writer commits what is queued, then ends
            self._send = None
        try:
            await stack.aclose()
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(self._close_indexes)

    def _open_indexes(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        writer: Index
        reader: Index
        if self.db_url is not None:
            # one pool serves the writer and the queries
            writer = reader = open_index(self.db_url, pool_size=self.db_pool_size)
            is_new = writer.created
        else:
            is_new = not self.db_path.exists() or self.db_path.stat().st_size == 0
            writer = SQLiteIndex(str(self.db_path))
            try:
                reader = SQLiteIndex(str(self.db_path))
            except BaseException:
                writer.close()
                raise
        self._writer, self._reader = writer, reader
        if self._check or is_new:
            try:
                self._check_folder(writer, is_new)
            except BaseException:
                self._close_indexes()
                raise

    def _close_indexes(self) -> None:
        if self._reader is not None:
            self._reader.close()
        if self._writer is not None and self._writer is not self._reader:
            self._writer.close()
        self._reader = self._writer = None

    def _check_folder(self, index: Index, is_new: bool) -> None:
        """Compare the folder's ``.dcm`` files with the index and index what it does not
        list (every file, for a new index); see :class:`FolderCheck`."""
        check = FolderCheck(new_index=is_new)
        self.folder_check = check
        listed = {os.path.abspath(path) for path in index.paths()} if not is_new else set()
        on_disk: set[str] = set()
        found: list[Path] = []
        for path in _walk(self.folder, self.db_path):
            absolute = os.path.abspath(path)
            on_disk.add(absolute)
            if absolute not in listed:
                found.append(path)
        check.missing = sorted(listed - on_disk)
        if not found:
            return
        self.log.info("folder_check_started", files=len(found), new_index=is_new)
        # the copies of re-sent instances (<name>_<n>.dcm) after every other file: each
        # replaces its instance's file once indexed, the highest number (the newest) last
        copies = sorted((p for p in found if _copy_number(p)), key=_copy_number)
        plain = [p for p in found if not _copy_number(p)]
        for start in range(0, len(plain), _REBUILD_BATCH):
            self._index_found(index, plain[start : start + _REBUILD_BATCH], check)
        for path in copies:
            self._index_copy(index, path, check)
        self.log.info(
            "folder_checked",
            indexed=check.indexed,
            completed=check.completed,
            removed=len(check.removed),
            skipped=len(check.skipped),
            missing=len(check.missing),
        )

    def _skip(self, check: FolderCheck, path: Path, why: str) -> None:
        check.skipped.append((str(path), why))
        self.log.warning("folder_file_skipped", file=str(path), reason=why)

    def _index_found(self, index: Index, paths: list[Path], check: FolderCheck) -> None:
        """Index files the index does not list; one whose SOP Instance UID the index holds
        in another file that exists is left alone (and reported)."""
        headers: list[tuple[Path, Dataset, str]] = []
        for path in paths:
            try:
                header = read_header(path)
                uid = str(header.get("SOPInstanceUID", "") or "")
            except (OSError, StorageError) as exc:
                self._skip(check, path, _unreadable(exc))
                continue
            except Exception:  # pydicom decodes values lazily: garbage shows here
                self._skip(check, path, "not a DICOM file")
                continue
            headers.append((path, header, uid))
        held = index.lookup_instances([uid for _p, _h, uid in headers if uid])
        items: list[tuple[Dataset, str]] = []
        kept: list[tuple[Path, Dataset]] = []
        seen: dict[str, Path] = {}
        for path, header, uid in headers:
            holder = held.get(uid)
            other = seen.get(uid) if uid else None
            if other is None and holder is not None and os.path.isfile(holder[1]):
                other = Path(holder[1])
            if other is not None:
                self._skip(check, path, f"its SOP Instance UID is indexed as {other}")
                continue
            if uid:
                seen[uid] = path
            items.append((header, str(path)))
            kept.append((path, header))
        for (path, header), result in zip(
            kept, index.add_many(items) if items else [], strict=True
        ):
            if isinstance(result, Exception):
                why = str(result) if _looks_like_dicom(header) else "not a DICOM file"
                self._skip(check, path, why)
                continue
            check.indexed += 1
            if result.previous_path is not None:
                _discard(check.missing, result.previous_path)

    def _index_copy(self, index: Index, path: Path, check: FolderCheck) -> None:
        """A copy of a re-sent instance an interrupted run left unindexed: indexed under its
        instance's name, which it then takes (as the index writer would have done); removed
        when it cannot be indexed (as a refused C-STORE)."""
        own = _own_file(path)
        try:
            header = read_header(path)
            uid = str(header.get("SOPInstanceUID", "") or "")
        except (OSError, StorageError, Exception) as exc:  # garbage decodes lazily
            self._remove_found(check, path, _unreadable(exc))
            return
        if safe_filename(uid) != own.name:  # not ours: a file that happens to end in _<n>
            self._index_found(index, [path], check)
            return
        (result,) = index.add_many([(header, str(own))])
        if isinstance(result, Exception):
            self._remove_found(check, path, str(result))
            return
        try:
            os.replace(path, own)
        except OSError as exc:
            # the row names the instance's own file: what was there stays
            self._remove_found(check, path, f"cannot be renamed: {exc.strerror or exc}")
            return
        check.completed += 1
        _discard(check.missing, str(own))
        previous = result.previous_path
        if previous is not None and os.path.abspath(previous) != os.path.abspath(own):
            _discard(check.missing, previous)
            self._remove(Path(previous))

    def _remove_found(self, check: FolderCheck, path: Path, why: str) -> None:
        check.removed.append((str(path), why))
        self.log.warning("folder_copy_removed", file=str(path), reason=why)
        self._remove(path)

    @property
    def rebuilt(self) -> int:
        """The files the index did not list that opening indexed (every file of the folder
        for a new index)."""
        return self.folder_check.indexed + self.folder_check.completed

    @property
    def rebuild_skipped(self) -> int:
        """The files opening found but could not index (:attr:`FolderCheck.skipped`)."""
        return len(self.folder_check.skipped)

    @property
    def index(self) -> Index:
        """The index's query connection (use it from worker threads); the archive must be
        open."""
        if self._reader is None:
            raise RuntimeError("the archive is not open")
        return self._reader

    # -- the handlers ----------------------------------------------------------------------

    def install(self, ae: AE) -> None:
        """Register the archive's handlers on ``ae``: C-STORE (any SOP class), C-FIND, C-GET
        and C-MOVE of the Patient Root, Study Root and Patient/Study Only models, Storage
        Commitment (N-ACTION, :attr:`commitment`); add :attr:`move_destinations` to
        ``ae.move_destinations``.  ``ae`` must accept those contexts (:func:`qrscp_config`)."""
        ae.on_store(self._on_store)
        for uid in QR_FIND:
            ae.on("C-FIND", sop_class=uid)(self._on_find)
        for uid in QR_GET:
            ae.on("C-GET", sop_class=uid)(self._on_retrieve)
        for uid in QR_MOVE:
            ae.on("C-MOVE", sop_class=uid)(self._on_retrieve)
        ae.move_destinations.update(self.move_destinations)
        self.commitment = CommitmentSCP(ae, self.check_commitment, peers=self.commitment_peers)
        # (until the archive is open, requests are answered "not running")
        self.commitment.start(self._tg)

    def check_commitment(self, references: list[tuple[str, str]]) -> dict[str, int]:
        """Storage Commitment (in a worker thread): the failed instances of ``references``
        ((SOP Class UID, SOP Instance UID) pairs) as {SOP Instance UID: Failure Reason}: 0x0112
        when the instance is not indexed or its file is gone, 0x0119 when it is indexed with
        another SOP Class UID."""
        found = self.index.lookup_instances([uid for _cls, uid in references])
        failed: dict[str, int] = {}
        for sop_class, sop_instance in references:
            row = found.get(sop_instance)
            if row is None or not os.path.isfile(row[1]):
                failed[sop_instance] = NO_SUCH_OBJECT_INSTANCE
            elif row[0] and row[0] != sop_class:
                failed[sop_instance] = CLASS_INSTANCE_CONFLICT
        return failed

    async def _on_store(self, request: Any) -> int | messages.Message:
        association = request.association
        uid = request.message.affected_sop_instance_uid
        send = self._send
        if send is None:
            await request.discard()
            return make_response(
                request.message, _OUT_OF_RESOURCES, error_comment="the archive is closed"
            )
        try:
            # a re-sent instance is written beside the stored copy (<uid>_1.dcm) and takes
            # its name only once indexed (_index_batch): a copy that cannot be indexed never
            # replaces a good one
            stored = await save_request(
                request, self.folder, on_duplicate="unique", layout="sorted", warn_duplicate=False
            )
        except (OSError, StorageError, ValueError) as exc:
            status = store_failure_status(exc)
            association.log.warning(
                "store_failed", instance=uid, status=f"0x{status:04X}", error=str(exc)
            )
            # the reason goes to the sender too, as for C-FIND and C-MOVE failures
            return make_response(request.message, status, error_comment=store_failure_comment(exc))
        if self.store_as is not None:
            stored = await self._convert(association, stored, self.store_as)
        job = _Job(stored)
        try:
            # the file is complete under a name of the folder: it must reach the index writer
            # even if the association is cancelled now (a stopping server: the writer indexes
            # what it was handed before the archive closes), or be removed
            with anyio.CancelScope(shield=True):
                await send.send(job)
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(self._remove, stored)
            return make_response(
                request.message, _OUT_OF_RESOURCES, error_comment="the archive is closed"
            )
        await job.done.wait()
        result = job.result
        if isinstance(result, Added):
            association.log.info(
                "instance_stored", instance=uid, file=str(job.final), replaced=not result.new
            )
            return 0x0000
        if isinstance(result, (OSError, *self._database_errors())):
            status = _OUT_OF_RESOURCES
        else:
            status = _CANNOT_UNDERSTAND
        association.log.warning(
            "store_failed", instance=uid, status=f"0x{status:04X}", error=str(result)
        )
        if isinstance(result, OSError):
            comment = f"cannot index the instance: {result.strerror or type(result).__name__}"
        else:
            comment = f"cannot index the instance: {result}"
        return make_response(request.message, status, error_comment=comment)

    async def _convert(self, association: Any, stored: StoredFile, target: str) -> StoredFile:
        """``store_as``: the stored file rewritten in ``target`` (a new instance, under its own
        name, after a lossy conversion); kept as received, with a warning, when it cannot be."""
        path, new_uid = await convert_saved(
            association, stored, target, allow_lossy=self.allow_lossy
        )
        return stored if new_uid is None else StoredFile(path)

    def _database_errors(self) -> tuple[type[Exception], ...]:
        """The exceptions of the index's database driver (a write failing so is answered
        0xA700, out of resources)."""
        writer = self._writer
        return writer.errors if writer is not None else SQLiteIndex.errors

    async def _write_index(self, receive: MemoryObjectReceiveStream[_Job]) -> None:
        """The index writer: commits the stored files waiting, in batches, until closed."""
        async with receive:
            while True:
                try:
                    batch = [await receive.receive()]
                except anyio.EndOfStream:
                    return
                while len(batch) < _BATCH_LIMIT:
                    try:
                        batch.append(receive.receive_nowait())
                    except (anyio.WouldBlock, anyio.EndOfStream):
                        break
                try:
                    await anyio.to_thread.run_sync(self._index_batch, batch)
                except Exception as exc:  # the database refused the whole batch
                    self.log.error("index_write_failed", error=f"{type(exc).__name__}: {exc}")
                    for job in batch:
                        job.result = exc
                finally:
                    for job in batch:
                        job.done.set()

    def _index_batch(self, batch: list[_Job]) -> None:
        """In a worker thread: read the headers, index them in one transaction, remove the
        files of instances that cannot be indexed and the old copies of re-sent ones."""
        index = self._writer
        assert index is not None
        items: list[tuple[Dataset, str]] = []
        readable: list[_Job] = []
        for job in batch:
            try:
                items.append((job.path.header(), str(job.final)))
                readable.append(job)
            except (OSError, StorageError) as exc:
                job.result = exc
                self._remove(job.path)  # refused: nothing of it stays, a stored copy is kept
        for job, result in zip(readable, index.add_many(items) if items else [], strict=True):
            job.result = result
            if isinstance(result, Exception):
                self._remove(job.path)  # the new copy only
                continue
            if job.final != job.path:
                # a re-sent instance, indexed: it replaces the stored copy, atomically
                try:
                    os.replace(job.path, job.final)
                except OSError as exc:
                    job.result = exc
                    self._remove(job.path)
                    continue
            if result.previous_path is not None and result.previous_path != str(job.final):
                self._remove(Path(result.previous_path))

    def _remove(self, path: Path) -> None:
        """Remove a stored file and the folders it leaves empty."""
        _unlink_quietly(path)
        prune_empty_folders(path, self.folder)

    async def _on_find(self, request: Any) -> AsyncIterator[Any]:
        """C-FIND: the query runs in worker threads, a batch of responses per thread call
        (one call per match would cost more than the match itself)."""
        if request.has_dataset:
            request.data = await request.read()
        items = self._find_items(request)
        try:
            while True:
                batch = await anyio.to_thread.run_sync(_take, items, _FIND_BATCH)
                for item in batch:
                    yield item
                if len(batch) < _FIND_BATCH:
                    return
        finally:
            items.close()

    def _find_items(self, request: Any) -> Generator[Any, None, None]:
        """The responses of a C-FIND (in a worker thread): identifiers encoded from the index
        records straight into the context's transfer syntax when it is Implicit or Explicit VR
        Little Endian, pydicom data sets otherwise (encoded by the service layer)."""
        try:
            query = parse_query(
                request.decode(),
                request.sop_class_uid,
                pn_case_insensitive=self.pn_case_insensitive,
            )
        except QueryError as exc:
            yield _query_failure(request, exc)
            return
        except Exception as exc:  # an identifier pydicom cannot decode
            yield _undecodable(request, exc)
            return
        syntax = request.context.transfer_syntax or ""
        found: Iterator[Any] = (
            self.index.find_encoded(query, syntax)
            if syntax in WIRE_SYNTAXES
            else self.index.find(query)
        )
        if not query.ignored:
            yield from found
            return
        # a unique key of a lower level (odil's pre-query of a C-GET gives the Series Instance
        # UID at STUDY level): matched as if absent, each match a Pending 0xFF01 (optional
        # keys not supported for matching, PS3.4 C.4.1.1.4)
        request.association.log.info(
            "query_keys_ignored", level=query.level, keys=[_tag_text(t) for t in query.ignored]
        )
        for identifier in found:
            yield _PENDING_WARNING, identifier

    def _on_retrieve(self, request: Any) -> Iterator[Any]:
        """C-GET and C-MOVE (a plain generator: runs in a worker thread): the files of the
        instances the identifier selects."""
        try:
            query = parse_query(
                request.decode(),
                request.sop_class_uid,
                pn_case_insensitive=self.pn_case_insensitive,
            )
        except QueryError as exc:
            yield _query_failure(request, exc)
            return
        except Exception as exc:
            yield _undecodable(request, exc)
            return
        if query.ignored:
            # a C-FIND can ignore a key, a retrieve cannot: it would send more than asked for
            tag = query.ignored[0]
            yield make_response(
                request.message,
                int(Status.IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS),
                error_comment=f"{_tag_text(tag)} is a key below the {query.level} level",
                offending_element=query.ignored,
            )
            return
        yield from self.index.instances(query)


#: C-FIND responses made per worker-thread call
_FIND_BATCH = 64


def _take(items: Iterator[Any], count: int) -> list[Any]:
    return list(islice(items, count))


def _query_failure(request: Any, exc: QueryError) -> messages.Message:
    return make_response(
        request.message,
        exc.status,
        error_comment=exc.error_comment,
        offending_element=(exc.tag,) if exc.tag is not None else None,
    )


#: C-FIND Pending: "Matches are continuing - Warning that one or more Optional Keys were not
#: supported for existence and/or matching for this Identifier" (PS3.4 Table C.4-1)
_PENDING_WARNING = 0xFF01


def _tag_text(tag: int) -> str:
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


def _undecodable(request: Any, exc: Exception) -> messages.Message:
    request.association.log.warning(
        "identifier_undecodable", message=request.message.NAME, error=str(exc)
    )
    return make_response(
        request.message,
        int(Status.UNABLE_TO_PROCESS),
        error_comment="the identifier cannot be decoded",
    )


def _own_name(path: StoredFile) -> Path:
    """The instance's own file name for a copy saved beside it as ``<name>_<n>.dcm``."""
    if path.duplicate != "unique":
        return Path(path)
    stem, _, number = path.stem.rpartition("_")
    assert stem and number.isdigit(), path
    return path.with_name(stem + path.suffix)


def _unlink_quietly(path: Path) -> None:
    with suppress(OSError):
        path.unlink()


def _walk(folder: Path, db_path: Path) -> Iterator[Path]:
    db = db_path.resolve()
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        for name in sorted(files):
            if name.endswith(".dcm") and not name.startswith("."):
                path = Path(root, name)
                if path.resolve() != db:
                    yield path


_COPY_NAME = re.compile(r"([^_]+)_([1-9][0-9]*)\.dcm")


def _copy_number(path: Path) -> int:
    """n for a file named like the copy of a re-sent instance, ``<name>_<n>.dcm`` (0 for
    another name)."""
    match = _COPY_NAME.fullmatch(path.name)
    return int(match.group(2)) if match else 0


def _own_file(path: Path) -> Path:
    """``<name>.dcm`` for ``<name>_<n>.dcm``."""
    match = _COPY_NAME.fullmatch(path.name)
    assert match is not None, path
    return path.with_name(match.group(1) + ".dcm")


def _unreadable(exc: BaseException) -> str:
    if isinstance(exc, OSError):
        return f"cannot be read: {exc.strerror or exc}"
    return "not a DICOM file"


def _looks_like_dicom(header: Dataset) -> bool:
    """Whether a header read with pydicom's ``force`` is more than bytes taken for
    elements: a preamble, File Meta Information or a SOP Class or Instance UID."""
    if getattr(header, "preamble", None) is not None:
        return True
    meta = getattr(header, "file_meta", None)
    if meta is not None and len(meta):
        return True
    return 0x00080016 in header or 0x00080018 in header


def _discard(paths: list[str], path: str) -> None:
    absolute = os.path.abspath(path)
    if absolute in paths:
        paths.remove(absolute)
