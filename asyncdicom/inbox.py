"""Incoming instances and notifications as async streams: :class:`Inbox`, :class:`Notifications`.

An AE that serves hands what it receives to the code that awaits it::

    async with ae.inbox("spool", calling_ae="MODALITY") as inbox:
        async for instance in inbox:
            ds = await instance.dataset()          # decoded from the file, on demand
            await forward(instance.path)
            # asking for the next instance finishes this one: its file leaves the spool

**The spool.** Each C-STORE the inbox claims is written to a staging folder
(``<folder>/.incoming``, streamed as it arrives), flushed to disk (``fsync``), moved into
``<folder>`` and the folder flushed too; only then is a small record (the identity of the
association, the command's fields, the path) queued for the consumer.  Memory holds records,
never data sets, and the queue is bounded (``max_queued``): when it is full the C-STORE's
answer waits for room, up to ``timeout``.

**Answer modes** (``answer=``):

* ``"saved"`` (default): Success is answered once the instance is durably in ``<folder>`` and
  its record queued, whatever the consumer does with it later.  An instance that was
  acknowledged is either one the consumer finished or a file in ``<folder>``; an inbox opened
  on the folder again yields those files first (at least once: one the consumer was working on
  when it failed comes again).
* ``"verdict"``: the answer waits for the consumer: Success when it finishes the instance (asks
  for the next one, leaves the ``async with`` normally, or calls :meth:`IncomingInstance.accept`),
  the status it gives with :meth:`IncomingInstance.reject`, 0xA700 (refused: out of resources)
  when it raises, when the inbox closes first, or when ``timeout`` passes.  A refused instance's
  file is removed: the sender still has it.

The file of a finished instance is removed from the spool, unless the consumer moved it out with
:meth:`IncomingInstance.move_to`.  Nothing partial is ever left under a ``.dcm`` name: an instance
cut short stays a temporary file of the staging folder, removed when it fails and when an inbox
opens on the folder.

``ae.notifications(...)`` gives the N-EVENT-REPORTs nobody awaits by key (storage commitment
reports of an unknown Transaction UID, print job and procedure step events) the same way, by SOP
class and event type; each taken report is answered Success.  Both attach to the AE's dispatch
point (:mod:`asyncdicom.services.incoming`).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from collections import deque
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from .log import get_logger
from .protocol import messages
from .protocol.status import Status
from .services.base import make_response
from .services.incoming import Incoming
from .services.request import ServiceRequest

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

    from .protocol.pdu import UserIdentityRQSubItem

__all__ = [
    "ANSWER_MODES",
    "AnswerMode",
    "Inbox",
    "IncomingInstance",
    "Notification",
    "NotificationAnswer",
    "Notifications",
]

#: ``"saved"``: Success once the instance is durably spooled; ``"verdict"``: the consumer's
AnswerMode = Literal["saved", "verdict"]
ANSWER_MODES: tuple[AnswerMode, ...] = ("saved", "verdict")
#: when a notification stream answers a report Success: ``"queued"`` once it is in the
#: stream's queue, ``"taken"`` once the consumer has taken it (see :class:`Notifications`)
NotificationAnswer = Literal["queued", "taken"]
NOTIFICATION_ANSWERS: tuple[NotificationAnswer, ...] = ("queued", "taken")

#: the staging folder inside an inbox's folder
STAGING = ".incoming"
#: the lock file an open inbox holds in its folder (one inbox per folder, across processes)
LOCK_NAME = ".inbox.lock"
_REFUSED = 0xA700


def _titles(value: str | Iterable[str] | None) -> frozenset[str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        return frozenset({value.strip(" ")})
    return frozenset(v.strip(" ") for v in value)


def _uids(value: str | Iterable[str] | None) -> frozenset[str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        return frozenset({value})
    return frozenset(value)


@dataclass(eq=False)
class IncomingInstance:
    """One instance an :class:`Inbox` received (or found in its folder when it opened)."""

    #: the file, in the inbox's folder (or where :meth:`move_to` put it)
    path: Path
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str
    #: the requestor's and the acceptor's AE titles of the association it came on
    calling_ae_title: str
    called_ae_title: str = ""
    #: the peer's address
    peer_host: str = ""
    peer_port: int = 0
    #: the requestor's User Identity sub-item (``None``: none was sent) and its user name
    user_identity: UserIdentityRQSubItem | None = None
    user: str | None = None
    #: the C-STORE-RQ's Message ID, Priority, Move Originator AE Title and Message ID
    message_id: int = 0
    priority: int = 0
    move_originator_aet: str | None = None
    move_originator_message_id: int | None = None
    #: when it was received (``time.time()``)
    received_at: float = 0.0
    #: found in the folder when the inbox opened.  The association fields come from what
    #: was kept with the file when it was received (an extended attribute); where none was
    #: (a file system without them, a file put there by someone else) the calling AE title is
    #: the file's Source Application Entity Title and the rest is empty.  ``user_identity``
    #: is never recovered (``user`` is)
    recovered: bool = False
    _moved: bool = field(default=False, repr=False)
    _verdict: tuple[int, str | None] | None = field(default=None, repr=False)
    _answered: anyio.Event | None = field(default=None, repr=False)
    _expired: bool = field(default=False, repr=False)

    async def dataset(self, *, stop_before_pixels: bool = False) -> Dataset:
        """The data set, read from the file (in a worker thread); ``stop_before_pixels``
        leaves the pixel data out.

        Raises:
            OSError: the file cannot be read (removed, say).
            pydicom.errors.InvalidDicomError: the file is not DICOM (one put in the folder
                by someone else).
        """
        from pydicom import dcmread

        path = self.path
        return await anyio.to_thread.run_sync(
            lambda: dcmread(path, stop_before_pixels=stop_before_pixels)
        )

    async def move_to(self, folder: str | os.PathLike[str]) -> Path:
        """Take the file out of the spool into ``folder`` (created if needed), under its
        name; it is then kept when the instance is finished.  Returns the new path.

        Raises:
            FileExistsError: ``folder`` has a file of that name already.
            OSError: it cannot be moved.
        """
        source = self.path
        target = Path(folder) / source.name

        def move() -> None:
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(source, target)
            except OSError as exc:
                if isinstance(exc, FileExistsError):
                    raise
                import shutil  # another file system: copied, then removed

                if target.exists():
                    raise FileExistsError(str(target)) from None
                shutil.copy2(source, target)
            os.unlink(source)

        await anyio.to_thread.run_sync(move)
        self.path = target
        self._moved = True
        return target

    def accept(self) -> None:
        """``"verdict"`` mode: answer Success now (the file stays until the instance is
        finished).  Does nothing once answered, or in ``"saved"`` mode."""
        self._give(int(Status.SUCCESS), None)

    def reject(self, status: int = _REFUSED, comment: str | None = None) -> None:
        """``"verdict"`` mode: answer ``status`` (a failure: 0xA700 out of resources, 0xA900
        data set does not match SOP class, 0xC000 cannot understand, ...) with the Error
        Comment ``comment``; the file is removed when the instance is finished.  Does nothing
        once answered, or in ``"saved"`` mode."""
        self._give(int(status), comment)

    @property
    def answered(self) -> bool:
        """The C-STORE's answer is decided (always True in ``"saved"`` mode)."""
        return self._answered is None or self._verdict is not None

    def _give(self, status: int, comment: str | None) -> None:
        if self._answered is None or self._verdict is not None or self._expired:
            return
        self._verdict = (status, comment)
        self._answered.set()

    def _consumed_done(self) -> None:
        """The consumer is done with it: answer Success if undecided; remove the file unless
        it was moved out."""
        self.accept()
        if not self._moved:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)

    @property
    def _memory(self) -> int:
        """Bytes this record holds (its strings and itself)."""
        size = sys.getsizeof(self) + sys.getsizeof(self.__dict__)
        for value in (
            self.sop_class_uid,
            self.sop_instance_uid,
            self.transfer_syntax_uid,
            self.calling_ae_title,
            self.called_ae_title,
            self.peer_host,
            str(self.path),
        ):
            size += sys.getsizeof(value)
        return size


class Inbox:
    """The instances an AE receives, as an async iterator (see the module docstring); made by
    :meth:`AE.inbox() <asyncdicom.AE.inbox>`."""

    def __init__(
        self,
        incoming: Incoming,
        folder: str | os.PathLike[str],
        *,
        calling_ae: str | Iterable[str] | None = None,
        called_ae: str | Iterable[str] | None = None,
        sop_class: str | Iterable[str] | None = None,
        study: str | Iterable[str] | None = None,
        answer: AnswerMode = "saved",
        max_queued: int = 10_000,
        timeout: float | None = 60.0,
    ) -> None:
        if answer not in ANSWER_MODES:
            raise ValueError(f"answer must be one of {ANSWER_MODES}, not {answer!r}")
        if max_queued < 1:
            raise ValueError("max_queued must be at least 1")
        self.folder = Path(folder)
        self.staging = self.folder / STAGING
        self.answer: AnswerMode = answer
        self.timeout = timeout
        self.max_queued = max_queued
        self._calling = _titles(calling_ae)
        self._called = _titles(called_ae)
        self._sop_classes = _uids(sop_class)
        self._studies = _uids(study)
        #: the subscriber protocol: a study filter needs the head of the data set
        self.needs_study = self._studies is not None
        self._incoming = incoming
        self._send: MemoryObjectSendStream[IncomingInstance] | None = None
        self._receive: MemoryObjectReceiveStream[IncomingInstance] | None = None
        self._recovered: deque[Path] = deque()
        self._current: IncomingInstance | None = None
        self._closed = False
        self._lock_fd: int | None = None
        #: set (and replaced) whenever the consumer takes a record: room in the queue
        self._room: anyio.Event | None = None
        #: instances received (claimed and spooled) and refused since the inbox opened
        self.received = 0
        self.refused = 0
        self._queued_memory = 0
        self.log = get_logger(inbox=str(self.folder))

    # -- filters (the StoreSubscriber protocol)

    def claims(self, request: ServiceRequest) -> bool:
        """Whether the C-STORE ``request`` passes the calling AE, called AE and SOP class
        filters."""
        if self._closed:
            return False
        association = request.association
        if self._calling is not None and association.calling_ae_title not in self._calling:
            return False
        if self._called is not None and association.called_ae_title not in self._called:
            return False
        return self._sop_classes is None or request.sop_class_uid in self._sop_classes

    def claims_study(self, study_instance_uid: str | None) -> bool:
        """Whether an instance of that study passes the study filter."""
        return self._studies is None or study_instance_uid in self._studies

    # -- state

    @property
    def queued(self) -> int:
        """Instances waiting for the consumer (received, and found in the folder)."""
        live = 0 if self._receive is None else self._receive.statistics().current_buffer_used
        return live + len(self._recovered)

    @property
    def queued_memory(self) -> int:
        """Bytes of memory the queued records hold (no data set is ever held)."""
        return self._queued_memory

    # -- life cycle

    async def __aenter__(self) -> Inbox:
        """Make the folders, list the files already spooled and start claiming C-STOREs.

        Raises:
            InboxBusy: another inbox (in this process or another) has the folder open.
            OSError: the folder cannot be made or read.
        """
        self._recovered = deque(await anyio.to_thread.run_sync(self._prepare))
        self._send, self._receive = anyio.create_memory_object_stream[IncomingInstance](
            self.max_queued
        )
        self._room = anyio.Event()
        self._incoming.attach_store(self)
        self.log.debug("inbox_opened", recovered=len(self._recovered), answer=self.answer)
        return self

    def _prepare(self) -> list[Path]:
        """Make the folders, drop what the staging folder holds (never acknowledged) and list
        the spooled files, oldest first."""
        self.staging.mkdir(parents=True, exist_ok=True)
        self._take_lock()
        try:
            for entry in os.scandir(self.staging):
                if entry.is_file(follow_symlinks=False):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(entry.path)
            found = []
            for entry in os.scandir(self.folder):
                if entry.name.endswith(".dcm") and entry.is_file(follow_symlinks=False):
                    found.append((entry.stat().st_mtime_ns, entry.name, Path(entry.path)))
        except BaseException:
            self._release_lock()
            raise
        found.sort()
        return [path for _t, _n, path in found]

    def _take_lock(self) -> None:
        """Hold ``LOCK_NAME`` in the folder (an advisory lock, released with the process):
        a second inbox on the folder would yield and remove this one's instances."""
        fd = os.open(self.folder / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
        if sys.platform != "win32":
            import fcntl

            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                from .errors import InboxBusy

                raise InboxBusy(f"{self.folder}: another inbox has this folder open") from None
        self._lock_fd = fd

    def _release_lock(self) -> None:
        fd, self._lock_fd = self._lock_fd, None
        if fd is not None:
            os.close(fd)  # releases the lock

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose(failed=exc is not None)

    async def aclose(self, *, failed: bool = False) -> None:
        """Stop receiving: new C-STOREs go to the AE's handlers again.  The instance being
        consumed is finished unless ``failed``; queued ones stay in the folder
        (``"saved"``) or are refused (``"verdict"``)."""
        if self._closed:
            return
        self._closed = True
        self._incoming.detach_store(self)
        current, self._current = self._current, None
        if current is not None:
            if failed:
                current.reject(_REFUSED, "the receiving application failed")
                if self.answer == "verdict" and not current._moved:
                    _remove(current.path)
            else:
                current._consumed_done()
        receive = self._receive
        if receive is not None:
            while True:
                try:
                    item = receive.receive_nowait()
                except (anyio.WouldBlock, anyio.EndOfStream):
                    break
                self._queued_memory -= item._memory
                if self.answer == "verdict":
                    item.reject(_REFUSED, "the receiving application stopped")
                    _remove(item.path)
            receive.close()
        if self._send is not None:
            self._send.close()
        self._made_room()  # the stores waiting for room are refused
        self._release_lock()
        self.log.debug("inbox_closed", received=self.received, refused=self.refused)

    # -- the consumer

    def __aiter__(self) -> Inbox:
        return self

    async def __anext__(self) -> IncomingInstance:
        current, self._current = self._current, None
        if current is not None:
            current._consumed_done()
        while self._recovered:
            path = self._recovered.popleft()
            try:
                item = await anyio.to_thread.run_sync(_recovered_instance, path)
            except Exception as exc:  # removed meanwhile, or not DICOM: left alone
                self.log.warning("inbox_file_unreadable", file=str(path), error=str(exc))
                continue
            self._current = item
            return item
        receive = self._receive
        if receive is None or self._closed:
            raise StopAsyncIteration
        while True:
            try:
                item = await receive.receive()
            except (anyio.EndOfStream, anyio.ClosedResourceError):
                raise StopAsyncIteration from None
            self._queued_memory -= item._memory
            self._made_room()
            if item._expired:
                continue  # refused meanwhile (not answered in time): its file is gone
            self._current = item
            return item

    def _made_room(self) -> None:
        room, self._room = self._room, anyio.Event()
        if room is not None:
            room.set()

    # -- the producer (a C-STORE's handler)

    async def receive(self, request: ServiceRequest) -> Any:
        """Serve a claimed C-STORE (see the module docstring for what is answered)."""
        from .services.storage import save_request

        message = request.message
        assert isinstance(message, messages.CStoreRQ)
        association = request.association
        stored = await save_request(
            request, self.staging, on_duplicate="unique", warn_duplicate=False
        )
        negotiated = association.negotiated
        identity = negotiated.user_identity if negotiated is not None else None
        user = None
        if identity is not None:
            from .users import identity_user_name

            user = identity_user_name(identity)
        received_at = time.time()
        origin = {
            "calling_ae_title": association.calling_ae_title,
            "called_ae_title": association.called_ae_title,
            "peer_host": association.peer_host,
            "peer_port": association.peer_port,
            "user": user,
            "message_id": message.message_id,
            "priority": message.priority,
            "move_originator_aet": message.move_originator_aet,
            "move_originator_message_id": message.move_originator_message_id,
            "received_at": received_at,
        }
        try:
            path = await anyio.to_thread.run_sync(self._publish, stored, origin)
        except BaseException:
            _remove(stored)
            raise
        item = IncomingInstance(
            path=path,
            sop_class_uid=message.affected_sop_class_uid,
            sop_instance_uid=message.affected_sop_instance_uid,
            transfer_syntax_uid=request.context.transfer_syntax or "",
            calling_ae_title=association.calling_ae_title,
            called_ae_title=association.called_ae_title,
            peer_host=association.peer_host,
            peer_port=association.peer_port,
            user_identity=identity,
            user=user,
            message_id=message.message_id,
            priority=message.priority,
            move_originator_aet=message.move_originator_aet,
            move_originator_message_id=message.move_originator_message_id,
            received_at=received_at,
            _answered=anyio.Event() if self.answer == "verdict" else None,
        )
        acknowledged = queued = False
        try:
            # the wait is counted from here: the data set is complete, which is about when
            # the sender's DIMSE timeout starts (after its last fragment)
            deadline = None if self.timeout is None else anyio.current_time() + self.timeout
            send = self._send
            if send is None or self._closed:
                return self._refuse(request, item, "the inbox is closed")
            # never a send() that waits: one cancelled after the consumer took the item
            # would look as if it had not been queued
            while True:
                try:
                    send.send_nowait(item)
                    queued = True
                    break
                except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                    return self._refuse(request, item, "the inbox is closed")
                except anyio.WouldBlock:  # full: wait for room
                    room = self._room
                    assert room is not None  # made on entering
                    with anyio.move_on_after(_remaining(deadline)) as scope:
                        await room.wait()
                    if scope.cancelled_caught:
                        break
            if queued:
                # counted before the consumer's task can run (nothing is awaited in between)
                self._queued_memory += item._memory
            else:
                return self._refuse(request, item, "the receiving application is busy")
            self.received += 1
            if item._answered is None:
                acknowledged = True
                return int(Status.SUCCESS)
            if item._verdict is None:
                with anyio.move_on_after(_remaining(deadline)):
                    await item._answered.wait()
            verdict = item._verdict
            if verdict is None:
                item._expired = True
                return self._refuse(request, item, "the receiving application did not answer")
            status, comment = verdict
            if status != Status.SUCCESS and status < 0xFF00 and (status & 0xF000) != 0xB000:
                if item is not self._current:
                    _remove(item.path)
                self.refused += 1
                return make_response(message, status, error_comment=comment)
            acknowledged = True
            return status
        finally:
            if not acknowledged and (not queued or item._verdict is None) and not item._expired:
                # cancelled (the association went away): not acknowledged, not kept (one the
                # consumer holds keeps its file until it is finished)
                item._expired = True
                if item is not self._current:
                    _remove(item.path)

    def _refuse(self, request: ServiceRequest, item: IncomingInstance, why: str) -> Any:
        item._expired = True
        if item is not self._current:  # the consumer's keeps its file until finished
            _remove(item.path)
        self.refused += 1
        request.association.log.warning("inbox_refused", instance=item.sop_instance_uid, reason=why)
        return make_response(request.message, _REFUSED, error_comment=why)

    def _publish(self, staged: Path, origin: dict[str, Any]) -> Path:
        """Record where the staged file came from, flush it, move it into the folder (a new
        name if one is taken) and flush the folder: from here a crash keeps it."""
        _record_origin(staged, origin)
        _fsync_file(staged)
        target = self.folder / staged.name
        stem, suffix = target.stem, target.suffix
        n = 0
        while True:
            try:
                os.link(staged, target)
                break
            except FileExistsError:
                n += 1
                target = self.folder / f"{stem}_{n}{suffix}"
                if n > 10_000:
                    raise
            except OSError:  # no hard links here: checked, then renamed
                if target.exists():
                    n += 1
                    target = self.folder / f"{stem}_{n}{suffix}"
                    continue
                os.replace(staged, target)
                break
        with contextlib.suppress(FileNotFoundError):
            os.unlink(staged)
        _fsync_dir(self.folder)
        return target


def _remaining(deadline: float | None) -> float:
    if deadline is None:
        return float("inf")
    return max(0.0, deadline - anyio.current_time())


def _remove(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDWR | getattr(os, "O_BINARY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    if os.name != "posix":  # pragma: no cover - folders cannot be opened elsewhere
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


#: the extended attribute a spooled file keeps its association fields in (JSON)
ORIGIN_XATTR = "user.asyncdicom.origin"
#: the fields it holds, with their types (anything else in it is ignored)
_ORIGIN_FIELDS: dict[str, tuple[type, ...]] = {
    "calling_ae_title": (str,),
    "called_ae_title": (str,),
    "peer_host": (str,),
    "peer_port": (int,),
    "user": (str, type(None)),
    "message_id": (int,),
    "priority": (int,),
    "move_originator_aet": (str, type(None)),
    "move_originator_message_id": (int, type(None)),
    "received_at": (float, int),
}


def _record_origin(path: Path, origin: dict[str, Any]) -> None:
    """Keep the association fields with the file (an extended attribute, flushed with it), so
    an inbox that finds it after a restart knows where it came from.  Best effort: on a file
    system without user extended attributes the file is recovered without them."""
    setxattr = getattr(os, "setxattr", None)
    if setxattr is None:  # pragma: no cover - not Linux
        return
    with contextlib.suppress(OSError):
        setxattr(path, ORIGIN_XATTR, json.dumps(origin, separators=(",", ":")).encode())


def _read_origin(path: Path) -> dict[str, Any]:
    """The association fields :func:`_record_origin` kept (only well-typed ones), or none."""
    getxattr = getattr(os, "getxattr", None)
    if getxattr is None:  # pragma: no cover - not Linux
        return {}
    try:
        found = json.loads(getxattr(path, ORIGIN_XATTR))
    except (OSError, ValueError):
        return {}
    if not isinstance(found, dict):
        return {}
    return {
        key: found[key]
        for key, types in _ORIGIN_FIELDS.items()
        if key in found and isinstance(found[key], types) and not isinstance(found[key], bool)
    }


def _recovered_instance(path: Path) -> IncomingInstance:
    """The record of a file found in the folder: its File Meta Information, and the
    association fields kept with it when it was received."""
    from pydicom.filereader import read_file_meta_info

    meta = read_file_meta_info(path)
    stat = path.stat()
    origin = _read_origin(path)
    fields: dict[str, Any] = {
        "calling_ae_title": str(meta.get("SourceApplicationEntityTitle", "") or "").strip(),
        "received_at": stat.st_mtime,
        **origin,
    }
    if "received_at" in origin:
        fields["received_at"] = float(origin["received_at"])
    return IncomingInstance(
        path=path,
        sop_class_uid=str(meta.get("MediaStorageSOPClassUID", "") or ""),
        sop_instance_uid=str(meta.get("MediaStorageSOPInstanceUID", "") or ""),
        transfer_syntax_uid=str(meta.get("TransferSyntaxUID", "") or ""),
        recovered=True,
        **fields,
    )


# ---------------------------------------------------------------------- notifications


@dataclass(frozen=True, eq=False)
class Notification:
    """One N-EVENT-REPORT a :class:`Notifications` stream received."""

    sop_class_uid: str
    sop_instance_uid: str
    event_type_id: int
    #: the Event Information (``None``: the report had none)
    information: Dataset | None
    calling_ae_title: str
    called_ae_title: str
    peer_host: str
    peer_port: int
    message_id: int
    received_at: float
    #: what the SOP class's service made of it: a
    #: :class:`~asyncdicom.services.CommitmentResult` for a storage commitment report
    result: Any = None


class _Handoff:
    """A queued report's way back to the task that answers it (``answer="taken"``)."""

    __slots__ = ("done", "taken", "withdrawn")

    def __init__(self) -> None:
        self.done = anyio.Event()
        self.taken = False
        self.withdrawn = False


class Notifications:
    """N-EVENT-REPORTs nobody awaits, as an async iterator; made by
    :meth:`AE.notifications() <asyncdicom.AE.notifications>`.

    ``answer`` says what Success promises the reporter:

    * ``"queued"`` (the default): the report is in the stream's queue.  Reports still queued
      when the stream closes are dropped, though each was answered Success.
    * ``"taken"``: the consumer has taken the report from the stream.  The reporter waits for
      that (up to ``timeout``); a report not taken in time, or still queued when the stream
      closes, is withdrawn from the stream and answered as without it (the SOP class's
      service or default handler decides), so no report answered Success is dropped.
    """

    def __init__(
        self,
        incoming: Incoming,
        *,
        sop_class: str | Collection[str] | None = None,
        event_type: int | Collection[int] | None = None,
        max_queued: int = 1000,
        timeout: float | None = 60.0,
        answer: NotificationAnswer = "queued",
    ) -> None:
        if answer not in NOTIFICATION_ANSWERS:
            raise ValueError(f"answer must be one of {NOTIFICATION_ANSWERS}, not {answer!r}")
        self._sop_classes = _uids(sop_class)
        self._event_types = (
            None
            if event_type is None
            else frozenset({event_type} if isinstance(event_type, int) else event_type)
        )
        self._incoming = incoming
        self.timeout = timeout
        self.answer: NotificationAnswer = answer
        self._send, self._receive = anyio.create_memory_object_stream[
            tuple[Notification, _Handoff | None]
        ](max_queued)
        self._closed = False
        #: set when the consumer takes a report (made by a report waiting for room)
        self._room: anyio.Event | None = None
        #: the reports queued and not yet taken (``answer="taken"``)
        self._waiting: set[_Handoff] = set()

    def claims_report(self, message: messages.NEventReportRQ) -> bool:
        """Whether the report passes the SOP class and event type filters."""
        if self._closed:
            return False
        if self._sop_classes is not None and message.affected_sop_class_uid not in (
            self._sop_classes
        ):
            return False
        return self._event_types is None or message.event_type_id in self._event_types

    async def deliver(
        self, request: ServiceRequest, information: Dataset | None, parsed: Any = None
    ) -> bool:
        """Queue the report (waiting up to ``timeout`` for room, and with ``answer="taken"``
        for the consumer to take it); False if it cannot, and the report is then answered
        as without the stream."""
        message = request.message
        assert isinstance(message, messages.NEventReportRQ)
        association = request.association
        item = Notification(
            sop_class_uid=message.affected_sop_class_uid,
            sop_instance_uid=message.affected_sop_instance_uid,
            event_type_id=message.event_type_id,
            information=information,
            calling_ae_title=association.calling_ae_title,
            called_ae_title=association.called_ae_title,
            peer_host=association.peer_host,
            peer_port=association.peer_port,
            message_id=message.message_id,
            received_at=time.time(),
            result=parsed,
        )
        handoff = _Handoff() if self.answer == "taken" else None
        deadline = None if self.timeout is None else anyio.current_time() + self.timeout
        while True:  # as Inbox.receive: never a send() that a cancel could leave half-done
            try:
                self._send.send_nowait((item, handoff))
                break
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                return False
            except anyio.WouldBlock:
                room = self._room
                if room is None:
                    room = self._room = anyio.Event()
                with anyio.move_on_after(_remaining(deadline)) as scope:
                    await room.wait()
                if scope.cancelled_caught:
                    return False
        if handoff is None:
            return True
        self._waiting.add(handoff)
        try:
            with anyio.move_on_after(_remaining(deadline)):
                await handoff.done.wait()
        finally:
            self._waiting.discard(handoff)
            # not taken in time, cancelled or closed: the consumer never sees it
            handoff.withdrawn = not handoff.taken
        return handoff.taken

    @property
    def queued(self) -> int:
        """Reports waiting for the consumer."""
        return self._receive.statistics().current_buffer_used

    def _made_room(self) -> None:
        room, self._room = self._room, None
        if room is not None:
            room.set()

    async def __aenter__(self) -> Notifications:
        self._incoming.attach_notifications(self)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.aclose()

    def aclose(self) -> None:
        """Stop receiving.  Reports queued and not yet read are dropped with
        ``answer="queued"`` (each was answered Success already), and answered as without the
        stream with ``answer="taken"``."""
        self._closed = True
        self._incoming.detach_notifications(self)
        self._receive.close()
        self._send.close()
        for handoff in list(self._waiting):
            handoff.done.set()  # not taken: its reporter answers as without the stream
        self._made_room()  # the reports waiting for room are answered as without the stream

    def __aiter__(self) -> Notifications:
        return self

    async def __anext__(self) -> Notification:
        while True:
            try:
                item, handoff = await self._receive.receive()
            except (anyio.EndOfStream, anyio.ClosedResourceError):
                raise StopAsyncIteration from None
            self._made_room()
            if handoff is None:
                return item
            if not handoff.withdrawn:
                handoff.taken = True
                handoff.done.set()
                return item
