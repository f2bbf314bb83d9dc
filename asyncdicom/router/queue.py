"""The router's durable queue: a folder on disk, safe against ``kill -9`` by construction.

Layout of the queue folder ``QUEUE``::

    QUEUE/lock                       held (flock) by the running router; its pid inside
    QUEUE/incoming/                  instances being received (removed at start)
    QUEUE/instances/<seq>.dcm        an acknowledged instance (Part 10 file)
    QUEUE/out/<destination>/<seq>.dcm   a hard link per destination still to send it to
    QUEUE/dead/<destination>/<seq>.dcm  a dead letter (hard link) ...
    QUEUE/dead/<destination>/<seq>.json ... and why it was given up (written first)

``<seq>`` is a sequence number (20 digits) that grows across restarts: the order in which
instances were acknowledged, which is the order each destination receives them in.
``<destination>`` is :attr:`Destination.key` (``AET@HOST:PORT``, percent-encoded).

How an instance enters the queue (:meth:`DiskQueue.commit`, one batch of instances at a
time): the received file (in ``incoming/``) is fsynced; a hard link to it is made in
``out/<destination>/`` for each destination; those folders are fsynced; then the file is
renamed to ``instances/<seq>.dcm`` and that folder is fsynced.  That rename is the commit
point, and only after it is the C-STORE answered with Success.  Leaving the queue: after a
destination answered Success its link is removed; a dead letter's link is renamed into
``dead/`` after its reason file was written; the instance itself is removed once no
``out/`` link names it.

The scan at start (:meth:`DiskQueue.open`) makes any state a kill can leave consistent:
``incoming/`` is emptied (never acknowledged); an ``out/`` link without its instance is
removed (its commit did not happen: never acknowledged); an instance without any ``out/``
link is removed (delivered everywhere); a reason file without its dead letter is removed.
What remains is exactly the acknowledged instances not yet delivered to each destination, in
order.  An instance whose Success from a destination arrived just before the kill, its link
not yet removed, is sent again after the restart: delivery is at least once.

Everything here is synchronous file-system work, meant to run in a worker thread.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from ..errors import QueueBusy

if sys.platform != "win32":
    import fcntl
else:  # pragma: no cover
    fcntl = None

__all__ = [
    "DeadLetter",
    "DiskQueue",
    "Pending",
    "QueueBusy",
    "QueueSnapshot",
    "snapshot",
]

_SEQ_DIGITS = 20
_SUFFIX = ".dcm"
_REASON_SUFFIX = ".json"


@dataclass(slots=True)
class Pending:
    """A committed instance on its way to one destination."""

    seq: int
    path: Path
    sop_class_uid: str
    transfer_syntax_uid: str
    sop_instance_uid: str
    #: delivery attempts that failed so far (in this run)
    attempts: int = 0


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """Why an instance was given up for a destination (the reason file's content)."""

    destination: str
    reason: str
    attempts: int
    status: int | None
    sop_class_uid: str
    sop_instance_uid: str


def _name(seq: int) -> str:
    return f"{seq:0{_SEQ_DIGITS}d}{_SUFFIX}"


def _seq_of(name: str) -> int | None:
    stem, dot, suffix = name.partition(".")
    if not dot or "." + suffix not in (_SUFFIX, _REASON_SUFFIX) or not stem.isdigit():
        return None
    return int(stem)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _entries(folder: Path) -> list[str]:
    try:
        return os.listdir(folder)
    except FileNotFoundError:
        return []


@dataclass
class DiskQueue:
    """The queue folder of one router (see the module documentation).

    Use :meth:`open` to lock it and scan it; :meth:`close` releases the lock.
    """

    root: Path
    #: destination key -> its pending instances, oldest first (what the scan found)
    pending: dict[str, list[Pending]] = field(default_factory=dict)
    #: sequence number -> destinations that still need it
    needed: dict[int, int] = field(default_factory=dict)
    next_seq: int = 1
    _lock_fd: int | None = None
    _needed_lock: threading.Lock = field(default_factory=threading.Lock)
    _executor: ThreadPoolExecutor | None = None

    def _pool(self) -> ThreadPoolExecutor:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=4, thread_name_prefix="router-fsync")
        return self._executor

    @property
    def incoming(self) -> Path:
        """Where instances are received before they are committed."""
        return self.root / "incoming"

    @property
    def instances(self) -> Path:
        return self.root / "instances"

    def out(self, key: str) -> Path:
        return self.root / "out" / key

    def dead(self, key: str) -> Path:
        return self.root / "dead" / key

    # ------------------------------------------------------------------ start-up

    @classmethod
    def open(cls, root: Path, destination_keys: Iterable[str]) -> DiskQueue:
        """Create the folders if needed, take the lock, and scan (see the module
        documentation): the result's :attr:`pending` holds, per destination, what is still to
        send, in order (destinations found on disk but not in ``destination_keys`` too).

        Raises:
            QueueBusy: another process holds the lock.
            OSError: the folder cannot be created, written or read.
        """
        queue = cls(root)
        root.mkdir(parents=True, exist_ok=True)
        queue._take_lock()
        try:
            for folder in (queue.incoming, queue.instances, root / "out", root / "dead"):
                folder.mkdir(exist_ok=True)
            for key in destination_keys:
                queue.out(key).mkdir(exist_ok=True)
            queue._scan()
        except BaseException:
            queue.close()
            raise
        return queue

    def _take_lock(self) -> None:
        path = self.root / "lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 64).decode("ascii", "replace").strip()
                os.close(fd)
                raise QueueBusy(
                    f"another router uses the queue folder {self.root}"
                    + (f" (pid {holder})" if holder else "")
                ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock_fd = fd

    def close(self) -> None:
        """Release the lock (the queue stays on disk)."""
        if self._executor is not None:
            self._executor.shutdown(wait=False)
            self._executor = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def _scan(self) -> None:
        for name in _entries(self.incoming):
            with contextlib.suppress(FileNotFoundError, IsADirectoryError):
                os.unlink(self.incoming / name)
        committed = {s for n in _entries(self.instances) if (s := _seq_of(n)) is not None}
        highest = max(committed, default=0)
        needed: dict[int, int] = {}
        for key in _entries(self.root / "out"):
            folder = self.out(key)
            items: list[Pending] = []
            for name in _entries(folder):
                seq = _seq_of(name)
                if seq is None:
                    continue
                if seq not in committed:
                    # linked before a commit that never happened: never acknowledged
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(folder / name)
                    continue
                needed[seq] = needed.get(seq, 0) + 1
                items.append(self._pending(seq, folder / name))
            items.sort(key=lambda p: p.seq)
            self.pending[key] = items
        for seq in committed - needed.keys():
            # delivered (or given up) everywhere; the kill came before its removal
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.instances / _name(seq))
        for key in _entries(self.root / "dead"):
            folder = self.dead(key)
            names = set(_entries(folder))
            for name in names:
                seq = _seq_of(name)
                if seq is None:
                    continue
                highest = max(highest, seq)
                if name.endswith(_REASON_SUFFIX) and _name(seq) not in names:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(folder / name)
        self.needed = needed
        self.next_seq = highest + 1

    @staticmethod
    def _pending(seq: int, path: Path) -> Pending:
        from ..errors import InvalidDicomFile
        from ..storage.reader import read_part10_for_send

        try:
            source = read_part10_for_send(path)
        except (InvalidDicomFile, OSError):
            # sent anyway: the attempt fails and dead-letters it with the reason
            return Pending(seq, path, "", "", "")
        return Pending(
            seq, path, source.sop_class_uid, source.transfer_syntax_uid, source.sop_instance_uid
        )

    # ------------------------------------------------------------------ entering the queue

    def commit(self, batch: Sequence[tuple[int, Path, Sequence[str]]]) -> list[Path]:
        """Commit received files: each ``(seq, file in incoming/, destination keys)``; return
        the committed paths (``instances/<seq>.dcm``).  Durable when it returns (see the
        module documentation for the order of the steps).

        Raises:
            OSError: a file-system operation failed (the batch is then not acknowledged; what
                was done of it is undone by the next start-up scan, or by :meth:`abandon`).
        """
        # the links first, so that the file's fsync (on ext4 and other journalling file
        # systems it commits every metadata change made so far) carries them too: the folder
        # fsyncs that follow then find little or nothing left to write
        touched: set[Path] = set()
        for seq, path, keys in batch:
            for key in keys:
                folder = self.out(key)
                os.link(path, folder / _name(seq))
                touched.add(folder)
        # the files and the folders at once: the journal commits them together, where one
        # after the other costs a device flush each
        jobs = [(_fsync_file, path) for _seq, path, _keys in batch]
        jobs += [(_fsync_dir, folder) for folder in touched]
        futures = [self._pool().submit(job, arg) for job, arg in jobs[1:]]
        jobs[0][0](jobs[0][1])
        for future in futures:
            future.result()
        done = []
        for seq, path, keys in batch:
            target = self.instances / _name(seq)
            os.replace(path, target)
            with self._needed_lock:
                self.needed[seq] = len(keys)
            done.append(target)
        # the commit point: the renames into instances/ made durable
        _fsync_dir(self.instances)
        return done

    def abandon(self, batch: Sequence[tuple[int, Path, Sequence[str]]]) -> None:
        """Undo what a failed :meth:`commit` did (best effort)."""
        for seq, path, keys in batch:
            for key in keys:
                with contextlib.suppress(OSError):
                    os.unlink(self.out(key) / _name(seq))
            with contextlib.suppress(OSError):
                os.unlink(path)
            with contextlib.suppress(OSError):
                os.unlink(self.instances / _name(seq))
            with self._needed_lock:
                self.needed.pop(seq, None)

    def link_path(self, key: str, seq: int) -> Path:
        """The ``out/`` link of ``seq`` for the destination ``key``."""
        return self.out(key) / _name(seq)

    # ------------------------------------------------------------------ leaving the queue

    def delivered(self, key: str, seq: int) -> None:
        """The destination ``key`` has ``seq``: remove its link (and the instance when no
        destination needs it any more).

        Raises:
            OSError: the link or the instance cannot be removed.
        """
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.out(key) / _name(seq))
        self._release(seq)

    def dead_letter(self, key: str, item: Pending, letter: DeadLetter) -> Path:
        """Move ``item``'s link for ``key`` to ``dead/<key>/`` with its reason file (written
        and fsynced first); return the dead letter's path.

        Raises:
            OSError: the reason file cannot be written or the link cannot be moved.
        """
        folder = self.dead(key)
        folder.mkdir(parents=True, exist_ok=True)
        reason = folder / f"{item.seq:0{_SEQ_DIGITS}d}{_REASON_SUFFIX}"
        temp = folder / f".{item.seq}.tmp"
        record = {
            "destination": letter.destination,
            "reason": letter.reason,
            "attempts": letter.attempts,
            "status": None if letter.status is None else f"0x{letter.status:04X}",
            "sop_class_uid": letter.sop_class_uid,
            "sop_instance_uid": letter.sop_instance_uid,
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        with open(temp, "w", encoding="utf-8") as f:
            json.dump(record, f, indent=1)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, reason)
        target = folder / _name(item.seq)
        os.replace(self.out(key) / _name(item.seq), target)
        _fsync_dir(folder)
        self._release(item.seq)
        return target

    def _release(self, seq: int) -> None:
        with self._needed_lock:
            left = self.needed.get(seq, 1) - 1
            if left > 0:
                self.needed[seq] = left
                return
            self.needed.pop(seq, None)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.instances / _name(seq))


# ---------------------------------------------------------------------- status from disk


@dataclass(frozen=True, slots=True)
class DestinationSnapshot:
    """What the queue folder says of one destination."""

    name: str
    queued: int
    oldest: float | None
    dead: int


@dataclass(frozen=True, slots=True)
class QueueSnapshot:
    """What the queue folder holds (:func:`snapshot`)."""

    instances: int
    destinations: tuple[DestinationSnapshot, ...]
    #: the pid of the router holding the folder, or None when none runs
    running_pid: int | None


def _files(folder: Path, suffix: str) -> Iterator[os.DirEntry[str]]:
    try:
        with os.scandir(folder) as it:
            for entry in it:
                if entry.name.endswith(suffix) and _seq_of(entry.name) is not None:
                    yield entry
    except FileNotFoundError:
        return


def _holder(root: Path) -> int | None:
    path = root / "lock"
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        if fcntl is None:  # pragma: no cover
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            text = os.read(fd, 64).decode("ascii", "replace").strip()
            return int(text) if text.isdigit() else -1
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def snapshot(root: Path) -> QueueSnapshot:
    """Count what ``root`` (a router's queue folder) holds, without changing anything: the
    committed instances, and per destination the instances queued (and when the oldest of
    them arrived) and the dead letters.

    Raises:
        FileNotFoundError: ``root`` is not a queue folder (it has no ``instances/``).
    """
    if not (root / "instances").is_dir():
        raise FileNotFoundError(f"{root} is not a router queue folder (no instances/ in it)")
    instances = sum(1 for _ in _files(root / "instances", _SUFFIX))
    keys = sorted(set(_entries(root / "out")) | set(_entries(root / "dead")))
    found = []
    for key in keys:
        queued = 0
        oldest: float | None = None
        for entry in _files(root / "out" / key, _SUFFIX):
            queued += 1
            with contextlib.suppress(OSError):
                mtime = entry.stat().st_mtime
                oldest = mtime if oldest is None else min(oldest, mtime)
        dead = sum(1 for _ in _files(root / "dead" / key, _SUFFIX))
        found.append(DestinationSnapshot(unquote(key), queued, oldest, dead))
    return QueueSnapshot(instances, tuple(found), _holder(root))


def read_dead_letter(path: Path) -> dict[str, Any]:
    """The reason file of a dead letter (``dead/<destination>/<seq>.json``) as a dict."""
    with open(path, encoding="utf-8") as f:
        data: dict[str, Any] = json.load(f)
    return data
