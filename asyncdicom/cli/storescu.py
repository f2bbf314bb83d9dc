"""``asyncdicom storescu``: send files and folders with C-STORE over parallel associations.

A file named ``DICOMDIR`` given as a path stands for the instances it references (PS3.10
8.6, read with :func:`asyncdicom.storage.dicomdir.read_dicomdir`): those are sent, each once.

How the files are shared out
----------------------------
The files are located first (headers only) and put in one queue.  ``--concurrency N`` starts N
workers; each opens one association and sends files from the queue one C-STORE at a time, while
the next file is read ahead (:func:`_prefetch`).  No file is lost when an association fails:

* a worker whose association cannot be opened (rejected, e.g. by a peer that allows fewer
  associations than ``--concurrency``; connection refused; timeout) stops and leaves the files
  to the other workers.  It does not knock again: the peer said no, and the associations it
  did accept take the whole queue;
* when an established association is aborted or lost (or a response does not come within
  ``--dimse-timeout``), the file being sent goes back to the end of the queue, to be sent on
  another association (the file read ahead goes back too: it was not sent).  A file is tried
  on at most :data:`_MAX_ATTEMPTS` associations, then it fails with the association's error;
* the worker then opens a new association, unless this is the second association in a row
  that ended before storing anything (:data:`_MAX_STRIKES`): a peer that aborts every
  association ends each worker after two attempts.  An association that ended on a file that
  had already ended another one does not count (that file, not the peer, is the likely cause,
  and it is set aside after its last attempt), so one bad file cannot stop the workers;
* a worker whose queue runs empty keeps its association while files are still in transfer on
  other associations, so that a file coming back is sent at once;
* once every worker has stopped, the files still queued fail, with the reason.

Every file that was not stored is listed with its reason (the first
:data:`_SHOWN_ERRORS`, or all with ``--show-all-errors``) and the exit status is 1.  Ctrl-C
stops the transfers, prints what was sent, failed and not attempted, and exits with 130.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio

from ..errors import (
    AssociationError,
    DICOMError,
    InvalidDicomFile,
    NoAcceptedContext,
    StorageError,
    TranscodeError,
    TransportError,
)
from ..protocol import uids
from ..protocol.status import StatusCategory, category, describe
from ..storage.contexts import contexts_for_syntaxes
from ..storage.transcoding import conversion_refused
from .apps import APPS
from .argtypes import positive_int
from .options import add_common, add_scu
from .output import CLIError, describe_error, err, notice, uid_name, warn
from .scu import associate, scu_ae

if TYPE_CHECKING:
    from ..ae import AE
    from ..protocol.negotiation import ContextRequest
    from ..services import Association
    from ..storage.reader import Part10Source

__all__ = ["add_parser", "run"]

#: associations a file is tried on before it counts as failed
_MAX_ATTEMPTS = 3
#: associations in a row that end before storing anything after which a worker stops (the
#: second one starts with another file: the first file may have been the cause)
_MAX_STRIKES = 2
#: failed files listed without --show-all-errors
_SHOWN_ERRORS = 20
#: Media Storage Directory Storage: a DICOMDIR, an index of files (PS3.10 8.6), not an instance
_MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"
#: the name of a File-set's DICOMDIR (PS3.10 8.6): given as a PATH, its instances are sent
_DICOMDIR = "DICOMDIR"
#: presentation context result "abstract syntax not supported" (PS3.8 Table 9-18)
_ABSTRACT_SYNTAX_NOT_SUPPORTED = 3


def add_parser(sub: Any) -> None:
    """Add the ``storescu`` sub-command to ``sub``."""
    p = sub.add_parser(
        "storescu",
        help=APPS["storescu"],
        description="Send DICOM files (and the files in folders, recursively) with C-STORE.",
    )
    add_scu(p)
    p.add_argument(
        "paths",
        nargs="+",
        metavar="PATH",
        help="files or folders (walked); a file named DICOMDIR sends the instances it references",
    )
    p.add_argument(
        "--concurrency",
        type=positive_int,
        default=1,
        metavar="N",
        help="parallel associations, each sending files one C-STORE at a time",
    )
    p.add_argument(
        "--allow-lossy",
        action="store_true",
        help="when the peer accepts only lossy syntaxes for a file that is not, compress it "
        "lossily (a new instance: new SOP Instance UID); without it such a file fails",
    )
    p.add_argument(
        "--show-all-errors",
        action="store_true",
        help=f"list every file that was not stored (default: the first {_SHOWN_ERRORS})",
    )
    add_common(p)
    p.set_defaults(func=run)


# --------------------------------------------------------------------------- bookkeeping


@dataclass(eq=False, slots=True)
class _StoreItem:
    path: Path
    #: the file as located by the scan; store() reuses it instead of parsing the header again
    source: Part10Source
    #: associations that ended while this file was being sent, and how the last one did
    attempts: int = 0
    last_error: str = ""

    @property
    def size(self) -> int:
        return self.source.dataset_offset + self.source.dataset_length


@dataclass
class _Report:
    """What happened to every file, and to the associations."""

    sent: int = 0
    warnings: int = 0
    failed: int = 0
    skipped: int = 0
    bytes: int = 0
    #: ``PATH: reason`` of each file that was not stored, in order
    file_errors: list[str] = field(default_factory=list)
    #: ``PATH: status ...`` of each file stored with a Warning status
    filewarnings: list[str] = field(default_factory=list)
    #: (what happened, reason) -> how many associations
    association_problems: dict[tuple[str, str], int] = field(default_factory=dict)

    def fail(self, path: Path, reason: str) -> None:
        self.failed += 1
        self.file_errors.append(f"{path}: {reason}")

    def association_problem(self, what: str, reason: str) -> None:
        key = (what, reason)
        self.association_problems[key] = self.association_problems.get(key, 0) + 1


class _Stop:
    """Set when a worker's association is over: its prefetcher takes no more files."""

    __slots__ = ("is_set",)

    def __init__(self) -> None:
        self.is_set = False


class _WorkQueue:
    """The files still to send, shared by the workers.

    A file is *unresolved* until it is stored or has failed for good; one that comes back from
    a failed association is put back at the end.  :meth:`take` waits while the queue is empty
    but files are still unresolved (in transfer on other associations: they may come back).
    """

    def __init__(self, items: Iterable[_StoreItem]) -> None:
        self._items = deque(items)
        self.total = len(self._items)
        self.unresolved = self.total
        self._changed = anyio.Event()
        self._waiting = 0

    @property
    def pending(self) -> bool:
        """Whether any file is queued or still in transfer."""
        return self.unresolved > 0

    async def take(self, stop: _Stop) -> _StoreItem | None:
        """The next file, or None when every file is resolved or ``stop`` is set."""
        while not stop.is_set:
            if self._items:
                return self._items.popleft()
            if self.unresolved == 0:
                return None
            changed = self._changed
            self._waiting += 1
            try:
                await changed.wait()
            finally:
                self._waiting -= 1
        return None

    def put_back(self, item: _StoreItem) -> None:
        self._items.append(item)
        self.wake()

    def resolved(self) -> None:
        self.unresolved -= 1
        if self.unresolved == 0:
            self.wake()

    def wake(self) -> None:
        """Wake every :meth:`take` waiting (to look at the queue or its stop flag again)."""
        if self._waiting:
            self._changed.set()
            self._changed = anyio.Event()

    def drain(self) -> list[_StoreItem]:
        """Remove and return the files still queued."""
        items = list(self._items)
        self._items.clear()
        return items


@dataclass
class _Run:
    """One storescu run: options, peer, contexts, the queue and the report."""

    args: argparse.Namespace
    ae: AE
    contexts: list[ContextRequest]
    queue: _WorkQueue
    report: _Report
    advance: Callable[[int], None]
    #: files a sender holds (in transfer)
    in_flight: set[_StoreItem] = field(default_factory=set)
    #: the last reason an association could not be opened or ended early
    last_problem: str = ""
    interrupted: bool = False
    #: scopes of associations still being opened: given up once every file is resolved
    opening: set[anyio.CancelScope] = field(default_factory=set)

    def stored(self, item: _StoreItem, status: int) -> None:
        report = self.report
        report.bytes += item.size
        kind = category(status)
        if kind is StatusCategory.SUCCESS:
            report.sent += 1
        elif kind is StatusCategory.WARNING:
            report.sent += 1
            report.warnings += 1
            report.filewarnings.append(f"{item.path}: status {describe(status)}")
        else:
            report.fail(item.path, f"status {describe(status)}")
        self._resolved(item)

    def failed(self, item: _StoreItem, reason: str) -> None:
        self.report.fail(item.path, reason)
        self._resolved(item)

    def retry(self, item: _StoreItem, reason: str) -> None:
        """``item``'s association ended during its transfer: queue it again, or fail it."""
        item.attempts += 1
        item.last_error = reason
        self.in_flight.discard(item)
        if item.attempts >= _MAX_ATTEMPTS:
            self.failed(item, _not_stored(item))
        else:
            self.queue.put_back(item)

    def _resolved(self, item: _StoreItem) -> None:
        self.in_flight.discard(item)
        self.queue.resolved()
        self.advance(1)
        if not self.queue.pending:
            # every file is stored or failed: a worker still waiting for its association
            # (a peer serving one association at a time keeps it in its listen queue) has
            # nothing left to send, so it stops waiting instead of running into the ACSE
            # timeout
            for scope in self.opening:
                scope.cancel()


def _not_stored(item: _StoreItem) -> str:
    tries = "1 association" if item.attempts == 1 else f"{item.attempts} associations"
    return f"not stored: {item.last_error} (tried on {tries})"


# --------------------------------------------------------------------------- finding the files


def _walk(paths: Sequence[str], report: _Report) -> list[Path]:
    """The files named, and the files in the folders named (recursively, in name order;
    symbolic links to folders are followed once)."""
    out: list[Path] = []
    for p in paths:
        path = Path(p)
        if path.is_dir():
            _walk_folder(path, out, report)
        elif path.is_file():
            if path.name.upper() == _DICOMDIR:
                out.extend(_referenced(path, report))
            else:
                out.append(path)
        elif path.exists():
            report.fail(path, "not a regular file")
        else:
            raise CLIError(f"no such file or folder: {p}")
    return out


def _referenced(dicomdir: Path, report: _Report) -> list[Path]:
    """The files a DICOMDIR (PS3.10 8.6) references, in its order (each once); a missing one,
    or a DICOMDIR that cannot be read, is a failure."""
    from ..storage.dicomdir import read_dicomdir

    try:
        _, entries = read_dicomdir(dicomdir)
    except InvalidDicomFile as exc:
        report.fail(dicomdir, f"not a DICOMDIR that can be read ({exc})")
        return []
    except OSError as exc:
        report.fail(dicomdir, _unreadable(exc))
        return []
    found = [dicomdir.parent.joinpath(*entry.file_id) for entry in entries]
    files = []
    for path in dict.fromkeys(found):
        if path.is_file():
            files.append(path)
        else:
            report.fail(path, f"referenced by {dicomdir} but missing")
    return files


def _walk_folder(top: Path, out: list[Path], report: _Report) -> None:
    seen: set[tuple[int, int]] = set()
    todo = [top]
    while todo:
        folder = todo.pop()
        try:
            st = folder.stat()
            if (st.st_dev, st.st_ino) in seen:
                continue  # a symbolic link back into the tree
            seen.add((st.st_dev, st.st_ino))
            with os.scandir(folder) as it:
                entries = list(it)
        except OSError as exc:
            report.fail(folder, f"unreadable folder ({_os_reason(exc)})")
            continue
        files: list[str] = []
        folders: list[str] = []
        for entry in entries:
            try:
                if entry.is_dir():
                    folders.append(entry.name)
                elif entry.is_file():
                    files.append(entry.name)
                elif entry.is_symlink():
                    report.fail(folder / entry.name, "broken symbolic link")
                else:
                    report.fail(folder / entry.name, "not a regular file")
            except OSError as exc:
                report.fail(folder / entry.name, f"unreadable ({_os_reason(exc)})")
        # sort the names, not Paths (comparing Paths is slow for thousands of files)
        files.sort()
        out.extend(folder / name for name in files)
        todo.extend(folder / name for name in sorted(folders, reverse=True))


def _os_reason(exc: OSError) -> str:
    return exc.strerror or str(exc)


def _scan(paths: list[Path], report: _Report) -> list[_StoreItem]:
    """Locate the data set of each file (worker thread: one hop for all of them)."""
    from ..storage.reader import read_part10_for_send

    items = []
    for path in paths:
        try:
            source = read_part10_for_send(path)
        except InvalidDicomFile as exc:
            report.fail(path, _not_dicom(path, exc))
            continue
        except OSError as exc:
            report.fail(path, _unreadable(exc))
            continue
        if source.sop_class_uid == _MEDIA_STORAGE_DIRECTORY:
            report.skipped += 1
            notice(
                f"storescu: skipped {path}: a DICOMDIR (Media Storage Directory, "
                f"{_MEDIA_STORAGE_DIRECTORY}) indexes files on a medium, it is not sent",
                "file_skipped",
                path=str(path),
            )
            continue
        items.append(_StoreItem(path, source))
    return items


def _unreadable(exc: OSError) -> str:
    return f"unreadable ({_os_reason(exc)})"


def _not_dicom(path: Path, exc: Exception) -> str:
    """Why ``path`` is not a DICOM file, in a user's words."""
    detail = str(exc)
    prefix = f"{path}: "
    if detail.startswith(prefix):
        detail = detail[len(prefix) :]
    try:
        with open(path, "rb") as fp:
            head = fp.read(132)
    except OSError as read_error:
        return _unreadable(read_error)
    if not head:
        return "not a DICOM file (empty)"
    if head[128:132] != b"DICM":
        return "not a DICOM file (no DICM prefix)"
    return f"not a valid DICOM file ({detail})"


# --------------------------------------------------------------------------- sending


#: (item, the source to pass to store() (loaded if small), or the error that loading raised)
_Loaded = tuple[_StoreItem, "Part10Source | Exception"]


def _load(item: _StoreItem) -> Part10Source | Exception:
    """Read a small file's data set into memory (one open, one read); a big one is left to
    store(), which streams it."""
    from ..services.storage import SEND_WHOLE_LIMIT

    source = item.source
    if source.dataset_length > SEND_WHOLE_LIMIT:
        return source
    try:
        return source.load()
    except (InvalidDicomFile, OSError) as exc:
        return exc


#: data sets up to this size are read in the event loop's thread by the prefetcher; bigger
#: ones (up to SEND_WHOLE_LIMIT) in a worker thread.  See _prefetch.
_INLINE_READ_LIMIT = 1 << 20


async def _prefetch(run: _Run, ready: Any, stop: _Stop) -> None:
    """Take files from the shared queue and load each one ahead of the sender: the next file
    is read while the current C-STORE is on the wire (the loop is waiting for its response).

    A data set of at most :data:`_INLINE_READ_LIMIT` is read right here, without a
    worker-thread hop: reading it from the page cache takes well under a millisecond, while
    the hop (wake a thread, wake the loop back up) cost more than the read itself and showed
    as a quarter of the send rate (1000 x 0.5 MB: ~790 -> ~1000 MB/s without it).  Bigger
    files are read in a worker thread, so the loop is never blocked for long.

    ``ready`` has no buffer, so at most one loaded file waits here besides the one being sent.
    If the sender stops (its association failed), the file in hand goes back to the queue.
    """
    queue = run.queue
    async with ready:
        while (item := await queue.take(stop)) is not None:
            if item.source.dataset_length <= _INLINE_READ_LIMIT:
                loaded = _load(item)
            else:
                loaded = await anyio.to_thread.run_sync(_load, item)
            try:
                await ready.send((item, loaded))
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                queue.put_back(item)  # not sent: this association is over
                return


class _AssociationEnded(Exception):
    """The association failed during a transfer (``reason`` says how)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass
class _Outcome:
    """How one association went."""

    opened: bool = False
    #: the queue was done and the association was left normally
    finished: bool = False
    #: C-STORE responses received on it
    responses: int = 0
    #: why it ended during a transfer
    failure: str | None = None
    #: the file in transfer when it ended had ended another association before
    repeat_offender: bool = False


async def _worker(run: _Run) -> None:
    """Open associations and send files until the queue is done (see the module notes)."""
    strikes = 0  # associations in a row that ended before storing anything
    while run.queue.pending:
        outcome = await _association(run)
        if outcome.finished or not outcome.opened:
            return
        if outcome.responses or outcome.repeat_offender:
            strikes = 0
            continue
        strikes += 1
        if strikes >= _MAX_STRIKES:
            return


async def _association(run: _Run) -> _Outcome:
    """One association: send what :func:`_prefetch` hands over until the queue is done or the
    association fails."""
    args = run.args
    outcome = _Outcome()
    opening = anyio.CancelScope()
    run.opening.add(opening)
    try:
        with opening:
            async with associate(args, run.contexts, ae=run.ae) as assoc:
                run.opening.discard(opening)
                outcome.opened = True
                # the prefetcher starts only now: a worker still waiting for its association holds
                # no file (a peer that serves one association at a time would otherwise leave that
                # file waiting until our ACSE timeout)
                send, ready = anyio.create_memory_object_stream[_Loaded](0)
                stop = _Stop()
                async with anyio.create_task_group() as tg:
                    tg.start_soon(_prefetch, run, send, stop)
                    await _send_all(run, assoc, ready, stop, outcome)
    except (DICOMError, OSError) as exc:
        reason = describe_error(exc, args)
        if not outcome.opened:
            run.last_problem = reason
            run.report.association_problem("could not be opened", reason)
        elif outcome.failure is None and outcome.finished:
            run.report.association_problem("was not released cleanly", reason)
        elif outcome.failure is None:
            outcome.failure = reason
    finally:
        run.opening.discard(opening)
    if outcome.failure is not None:
        run.last_problem = outcome.failure
        run.report.association_problem("ended during a transfer", outcome.failure)
    return outcome


async def _send_all(
    run: _Run, assoc: Association, ready: Any, stop: _Stop, outcome: _Outcome
) -> None:
    current: _StoreItem | None = None
    try:
        async with ready:
            async for current, loaded in ready:
                run.in_flight.add(current)
                await _store_one(run, assoc, current, loaded, outcome)
                current = None
        outcome.finished = True
    except _AssociationEnded as exc:
        stop.is_set = True
        outcome.failure = exc.reason
        if current is not None:
            run.retry(current, exc.reason)
            outcome.repeat_offender = current.attempts > 1
    finally:
        stop.is_set = True
        run.queue.wake()


async def _store_one(
    run: _Run,
    assoc: Association,
    item: _StoreItem,
    loaded: Part10Source | Exception,
    outcome: _Outcome,
) -> None:
    """Send one file; a failure that ends the association raises :class:`_AssociationEnded`
    (the file is then still unresolved, unless the file itself was at fault)."""
    if isinstance(loaded, Exception):
        run.failed(item, _file_problem(item, loaded))
        return
    try:
        response = await assoc.store(loaded, allow_lossy=run.args.allow_lossy)
    except (AssociationError, TransportError) as exc:
        raise _AssociationEnded(describe_error(exc, run.args)) from exc
    except NoAcceptedContext:
        run.failed(item, _refused(assoc, item.source))
        return
    except TranscodeError as exc:
        run.failed(item, _refused(assoc, item.source, str(exc)))
        return
    except (DICOMError, StorageError, OSError) as exc:
        # the file was at fault (it changed since the scan, or cannot be converted): it
        # fails; if it took the association with it (half sent), the association is over too
        run.failed(item, _file_problem(item, exc))
        if not assoc.is_established:
            raise _AssociationEnded(f"aborted after {item.path} could not be read in full") from exc
        return
    outcome.responses += 1
    run.stored(item, response.status)


def _file_problem(item: _StoreItem, exc: Exception) -> str:
    if isinstance(exc, OSError) and not isinstance(exc, DICOMError):
        return _unreadable(exc)
    text = str(exc)
    prefix = f"{item.path}: "
    return text[len(prefix) :] if text.startswith(prefix) else text


# --------------------------------------------------------------------------- explaining


#: tools that decompress a file to an uncompressed transfer syntax, by transfer syntax
_DECOMPRESSORS = {
    uids.JPEG_BASELINE_8BIT: "dcmdjpeg (DCMTK)",
    uids.JPEG_EXTENDED_12BIT: "dcmdjpeg (DCMTK)",
    uids.JPEG_LOSSLESS: "dcmdjpeg (DCMTK)",
    uids.JPEG_LOSSLESS_SV1: "dcmdjpeg (DCMTK)",
    uids.JPEG_LS_LOSSLESS: "dcmdjpls (DCMTK)",
    uids.JPEG_LS_NEAR_LOSSLESS: "dcmdjpls (DCMTK)",
    uids.RLE_LOSSLESS: "dcmdrle (DCMTK)",
    uids.DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN: "dcmconv +te (DCMTK)",
}


def _refused(assoc: Association, source: Part10Source, why: str | None = None) -> str:
    """Why a file could not be sent on ``assoc`` (no accepted context fits, or it cannot be
    converted to one that does: ``why``), and the fix."""
    sop_class = uid_name(source.sop_class_uid)
    syntax = uid_name(source.transfer_syntax_uid)
    proposed = [
        c
        for c in (assoc.negotiated.contexts if assoc.negotiated else ())
        if c.abstract_syntax == source.sop_class_uid
    ]
    accepted = sorted({uid_name(c.transfer_syntax) for c in proposed if c.transfer_syntax})
    if not accepted and any(c.result == _ABSTRACT_SYNTAX_NOT_SUPPORTED for c in proposed):
        return f"the peer does not store {sop_class} (it refused the SOP class)"
    where = (
        f"it accepted only {', '.join(accepted)}"
        if accepted
        else "it accepted none of those proposed"
    )
    if source.transfer_syntax_uid in uids.UNCOMPRESSED_TRANSFER_SYNTAXES:
        return f"the peer refused the transfer syntaxes proposed for {sop_class} ({where})"
    tool = _DECOMPRESSORS.get(source.transfer_syntax_uid, "gdcmconv --raw (GDCM)")
    if why is None:
        why = conversion_refused(source.transfer_syntax_uid, uids.EXPLICIT_VR_LITTLE_ENDIAN)
        why = why or "no context it can be converted to was accepted"
    return (
        f"the peer does not accept {syntax} for {sop_class} ({where}), and the file cannot "
        f"be converted: {why}; the peer must accept {syntax}, or decompress the file first, "
        f"e.g. with {tool}"
    )


def _association_lines(report: _Report) -> list[str]:
    lines = []
    for (what, reason), count in report.association_problems.items():
        noun = "association" if count == 1 else "associations"
        lines.append(f"{count} {noun} {what}: {reason}")
    return lines


def _print_problems(report: _Report, show_all: bool, all_stored: bool) -> None:
    """Association problems (warnings when every file was stored anyway), then the files not
    stored and the files stored with a warning status."""
    for line in _association_lines(report):
        if all_stored:
            warn(line)
        else:
            err(line)
    for lines, say in ((report.file_errors, err), (report.filewarnings, warn)):
        shown = lines if show_all else lines[:_SHOWN_ERRORS]
        for line in shown:
            say(line)
        if len(lines) > len(shown):
            say(
                f"... and {len(lines) - len(shown)} more not listed "
                "(--show-all-errors lists them all)"
            )


def _nothing_to_send(report: _Report) -> str:
    parts = []
    if report.failed:
        noun = "file" if report.failed == 1 else "files"
        parts.append(f"{report.failed} {noun} could not be used (the reasons are above)")
    if report.skipped:
        parts.append(f"{report.skipped} DICOMDIR skipped")
    return "nothing to send: " + ("; ".join(parts) or "no files found")


# --------------------------------------------------------------------------- the app


def _no_progress(_n: int) -> None:
    pass


@contextlib.contextmanager
def _progress(total: int) -> Iterator[Callable[[int], None]]:
    """A progress bar on a terminal (rich, imported only then); elsewhere nothing."""
    if not sys.stderr.isatty():
        yield _no_progress
        return
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(
        TextColumn("storing"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeRemainingColumn(),
        transient=True,
    ) as progress:
        task = progress.add_task("store", total=total)
        yield partial(progress.advance, task)


async def _stop_on_ctrl_c(run: _Run, scope: anyio.CancelScope) -> None:
    """On SIGINT, stop every transfer (the run then prints its partial summary)."""
    with anyio.open_signal_receiver(signal.SIGINT) as signals:
        async for _ in signals:
            run.interrupted = True
            scope.cancel()
            return


async def run(args: argparse.Namespace) -> int:
    """Send the files; 0 if every one was stored, 1 otherwise, 130 after Ctrl-C."""
    report = _Report()
    paths = _walk(args.paths, report)
    items = await anyio.to_thread.run_sync(_scan, paths, report)
    if not items:
        _print_problems(report, args.show_all_errors, all_stored=False)
        raise CLIError(_nothing_to_send(report))
    contexts = contexts_for_syntaxes(
        ((it.source.sop_class_uid, it.source.transfer_syntax_uid) for it in items),
        allow_lossy=args.allow_lossy,
    )
    queue = _WorkQueue(items)
    started = time.perf_counter()
    with _progress(len(items)) as advance:
        state = _Run(args, scu_ae(args), contexts, queue, report, advance)
        async with anyio.create_task_group() as tg:
            tg.start_soon(_stop_on_ctrl_c, state, tg.cancel_scope)
            async with anyio.create_task_group() as workers:
                for _ in range(min(args.concurrency, len(items))):
                    workers.start_soon(_worker, state)
            tg.cancel_scope.cancel()  # the Ctrl-C watcher
    elapsed = time.perf_counter() - started
    unconfirmed = len(state.in_flight)
    not_attempted = queue.unresolved - unconfirmed
    if not state.interrupted:
        reason = state.last_problem or "no association left to send it on"
        for item in queue.drain():
            state.failed(item, _not_stored(item) if item.attempts else f"not sent: {reason}")
        not_attempted = 0
    all_stored = report.failed == 0 and not state.interrupted
    _print_problems(report, args.show_all_errors, all_stored=all_stored)
    mb = report.bytes / 1e6
    counts = f"sent {report.sent}, failed {report.failed}"
    if report.warnings:
        counts += f", with warnings {report.warnings}"
    if report.skipped:
        counts += f", skipped {report.skipped} (DICOMDIR)"
    if state.interrupted:
        counts = f"interrupted: {counts}, not attempted {not_attempted}"
        if unconfirmed:
            counts += f", in transfer {unconfirmed} (outcome unknown)"
    print(f"{counts}; {mb:.1f} MB in {elapsed:.2f} s ({mb / elapsed if elapsed else 0:.1f} MB/s)")
    if state.interrupted:
        return 130
    return 0 if report.failed == 0 else 1
