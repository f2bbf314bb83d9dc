"""Storage service class (PS3.4 Annex B; C-STORE, PS3.7 9.1.1).

SCU: :func:`store` sends a pydicom Dataset or a Part 10 file (a path, or a
:class:`~asyncdicom.storage.Part10Source` already located by
:func:`~asyncdicom.storage.read_part10_for_send`).  A file whose transfer syntax was
accepted is sent without decoding; otherwise it is transcoded between the uncompressed syntaxes,
or refused with :class:`~asyncdicom.errors.NoAcceptedContext`.  A data set of at most
:data:`SEND_WHOLE_LIMIT` bytes is read with its header in one worker-thread call and sent from
memory; a bigger one is streamed from disk in chunks, never held whole.

SCP: :func:`save_request` writes a received instance to a folder as a Part 10 file, streamed in
batches, under a temporary name that is renamed only once the last fragment has arrived; flat
or in patient/study/series folders, and keeping, replacing or ignoring an existing file of the
same name (a warning is logged in each case).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio

from ..association import BaseAssociation, DIMSEResponse, IncomingRequest
from ..errors import (
    DataSetMismatch,
    EmptyDataSet,
    InvalidDataset,
    NoAcceptedContext,
    TranscodeError,
)
from ..protocol import messages
from ..protocol.status import Status, fit_error_comment
from ..protocol.uids import UNCOMPRESSED_TRANSFER_SYNTAXES, is_storage_sop_class
from .base import Service

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

    from ..protocol.negotiation import PresentationContext
    from ..storage.reader import Part10Source
    from ..storage.structure import StructureCheck
    from ..storage.writer import DuplicatePolicy, Layout, Part10Writer, StoredFile

__all__ = [
    "SEND_WHOLE_LIMIT",
    "STORAGE_SERVICE",
    "DataSetMismatch",
    "EmptyDataSet",
    "StorageSCU",
    "convert_saved",
    "save_request",
    "sop_uids",
    "store",
    "store_failure_comment",
    "store_failure_status",
]


def store_failure_status(exc: BaseException) -> int:
    """The C-STORE status for an exception raised while storing (PS3.4 B.2.3): 0xA700 (out
    of resources) for an :class:`OSError` (a full disk), 0xA900 (data set does not match SOP
    class) for :class:`DataSetMismatch`, 0xC000 (cannot understand) for anything else."""
    if isinstance(exc, OSError):
        return 0xA700
    if isinstance(exc, DataSetMismatch):
        return 0xA900
    return 0xC000


def store_failure_comment(exc: BaseException) -> str:
    """The Error Comment (0000,0902) for an exception raised while storing: what is wrong with
    the data set, or why it could not be written (the reason, without the path), in the 64
    characters of an LO."""
    if isinstance(exc, OSError):
        return fit_error_comment(f"cannot store the instance: {exc.strerror or type(exc).__name__}")
    text = str(exc) or type(exc).__name__
    if isinstance(exc, DataSetMismatch):
        # "the data set's SOP Instance UID (0008,0018) is '1.2...', its C-STORE-RQ's '1.3...'"
        text = text.split(" is ", 1)[0].removeprefix("the ") + " is not the command's"
    return fit_error_comment(text)


def _store_exception_status(message: messages.Message, exc: BaseException) -> int:
    return store_failure_status(exc)


#: C-STORE on every storage SOP class (PS3.4 Annex B); which ones an acceptor accepts is
#: configured on the AE (``accept_any_storage``, ``supported_contexts``); without a handler
#: the SCP answers 0x0122 (SOP class not supported)
STORAGE_SERVICE = Service(
    name="Storage",
    commands=(messages.CStoreRQ,),
    rule=is_storage_sop_class,
    no_handler_status=int(Status.SOP_CLASS_NOT_SUPPORTED),
    exception_status=_store_exception_status,
)

#: data sets up to this size are read whole (one worker-thread call per file) and sent from
#: memory; bigger ones are streamed in chunks of _READ_CHUNK
SEND_WHOLE_LIMIT = 8 << 20
#: bytes read from disk per chunk when streaming a file
_READ_CHUNK = 1 << 20
#: bytes collected before one write to disk (one worker-thread hop per batch)
_WRITE_BATCH = 1 << 20


async def _file_chunks(source: Any) -> AsyncIterator[bytes]:
    """Read a file's data set in chunks, each read in a worker thread."""
    iterator = iter(source.iter_chunks(_READ_CHUNK))
    while True:
        chunk: bytes | None = await anyio.to_thread.run_sync(next, iterator, None)
        if chunk is None:
            return
        yield chunk


class StorageSCU(BaseAssociation):
    """The Storage SCU helper of an association."""

    async def store(
        self,
        dataset_or_path: Dataset | str | os.PathLike[str] | Part10Source,
        *,
        priority: int = 0,
        move_originator_aet: str | None = None,
        move_originator_message_id: int | None = None,
        allow_lossy: bool = False,
    ) -> DIMSEResponse:
        """C-STORE (Storage, PS3.7 9.1.1): send a pydicom Dataset or a Part 10 file.

        A file is sent without decoding when an accepted context has its transfer syntax, and
        converted to an accepted one when it must, by the rules of
        :mod:`asyncdicom.storage.transcoding`: lossless or uncompressed to any lossless or
        uncompressed syntax, lossy to uncompressed (its Lossy Image Compression stays "01"),
        and to a lossy syntax only with ``allow_lossy=True`` (the instance sent then has a new
        SOP Instance UID).  Compressed pixel data needs the codecs (``pip install
        'asyncdicom[codecs]'``).  Returns the C-STORE-RSP (``.status``).

        Raises:
            NoAcceptedContext: no accepted presentation context for the SOP class.
            InvalidDicomFile: the file is not DICOM, or changed while it was sent.
            InvalidDataset: the data set lacks its SOP Class or SOP Instance UID.
            TranscodeError: the instance would have to be converted and cannot be: the
                conversion is lossy and not allowed, a codec is missing (the message says
                what to install), or the codec failed.
            AssociationError: the association failed (aborted, timed out, lost) meanwhile.
            OSError: the file cannot be read.
        """
        return await store(
            self,
            dataset_or_path,
            priority=priority,
            move_originator_aet=move_originator_aet,
            move_originator_message_id=move_originator_message_id,
            allow_lossy=allow_lossy,
        )


async def store(
    association: BaseAssociation,
    dataset_or_path: Dataset | str | os.PathLike[str] | Part10Source,
    *,
    priority: int = 0,
    move_originator_aet: str | None = None,
    move_originator_message_id: int | None = None,
    allow_lossy: bool = False,
) -> DIMSEResponse:
    """Send one instance with C-STORE-RQ and return the C-STORE-RSP.

    ``dataset_or_path``: a pydicom Dataset, a path, or a
    :class:`~asyncdicom.storage.Part10Source` (its ``data`` is sent if loaded).  See
    :meth:`StorageSCU.store` for the conversions and what they raise.
    """
    from ..storage.codec import encode_dataset
    from ..storage.reader import Part10Source, read_part10_for_send

    data: Any
    if isinstance(dataset_or_path, (str, os.PathLike, Part10Source)):
        if isinstance(dataset_or_path, Part10Source):
            source = dataset_or_path
        else:
            # header and (small) data set in one worker-thread call
            source = await anyio.to_thread.run_sync(
                partial(read_part10_for_send, Path(dataset_or_path), read_limit=SEND_WHOLE_LIMIT)
            )
        sop_class = source.sop_class_uid
        sop_instance = source.sop_instance_uid
        ts = source.transfer_syntax_uid
        context = association.find_context(sop_class, [ts])
        if context is not None:
            if source.data is None and source.dataset_length <= SEND_WHOLE_LIMIT:
                source = await anyio.to_thread.run_sync(source.load)
            data = source.data if source.data is not None else _file_chunks(source)
        else:
            context, data, sop_instance = await _converted(
                association, source, sop_class, ts, allow_lossy
            )
    else:
        ds = dataset_or_path
        sop_class, sop_instance = sop_uids(ds)
        meta = getattr(ds, "file_meta", None)
        own_ts = str(getattr(meta, "TransferSyntaxUID", "") or "") if meta is not None else ""
        preferred = ([own_ts] if own_ts else []) + [
            t for t in UNCOMPRESSED_TRANSFER_SYNTAXES if t != own_ts
        ]
        context = association.find_context(sop_class, preferred)
        if context is not None and (
            not own_ts
            or own_ts in UNCOMPRESSED_TRANSFER_SYNTAXES
            or context.transfer_syntax == own_ts
        ):
            data = await anyio.to_thread.run_sync(encode_dataset, ds, context.transfer_syntax or "")
        else:
            context, data, sop_instance = await _converted(
                association, ds, sop_class, own_ts, allow_lossy
            )
    rq = messages.CStoreRQ(
        message_id=association.next_message_id(),
        affected_sop_class_uid=sop_class,
        affected_sop_instance_uid=sop_instance,
        priority=priority,
        move_originator_aet=move_originator_aet,
        move_originator_message_id=move_originator_message_id,
        has_dataset=True,
    )
    return await association.request(context, rq, data)


async def _converted(
    association: BaseAssociation,
    source: Part10Source | Dataset,
    sop_class: str,
    ts: str,
    allow_lossy: bool,
) -> tuple[PresentationContext, Any, str]:
    """The context, data and SOP Instance UID for an instance whose own transfer syntax was not
    accepted: converted, in a worker thread, to the best accepted syntax the rules allow."""
    from ..storage.transcoding import choose_syntax, transcode_instance

    accepted = [
        c.transfer_syntax
        for c in association.accepted_contexts
        if c.abstract_syntax == sop_class and c.scu_role and c.transfer_syntax
    ]
    if not accepted:
        raise NoAcceptedContext(
            f"no accepted context for {sop_class} in transfer syntax {ts or 'any'} "
            "(or one it can be converted to)"
        )
    target, why = choose_syntax(ts, accepted, allow_lossy=allow_lossy)
    if target is None:
        raise TranscodeError(why)
    context = association.find_context(sop_class, [target])
    assert context is not None
    converted = await anyio.to_thread.run_sync(
        partial(transcode_instance, source, target, source_ts=ts, allow_lossy=allow_lossy)
    )
    chunks = converted.chunks
    # the pieces (views into one buffer) are sent as they are, without joining them
    data: Any = chunks[0] if len(chunks) == 1 else chunks
    return context, data, converted.sop_instance_uid


def sop_uids(ds: Any) -> tuple[str, str]:
    """(SOP Class UID, SOP Instance UID) of a data set to send; :class:`InvalidDataset` names
    the one that is missing or empty."""
    found = []
    for keyword, tag in (("SOPClassUID", "(0008,0016)"), ("SOPInstanceUID", "(0008,0018)")):
        try:
            value = getattr(ds, keyword, None)
        except Exception as exc:  # a value pydicom cannot decode
            raise InvalidDataset(f"the data set's {keyword} {tag} cannot be read: {exc}") from exc
        text = str(value).strip(" \x00") if value is not None else ""
        if not text:
            name = "SOP Class UID" if keyword == "SOPClassUID" else "SOP Instance UID"
            raise InvalidDataset(f"the data set has no {name} {tag}: C-STORE needs it")
        found.append(text)
    return found[0], found[1]


async def convert_saved(
    association: Any, stored: Path, target: str, *, allow_lossy: bool = False
) -> tuple[Path, str | None]:
    """A received file rewritten in the transfer syntax ``target`` (``--store-as``), in a
    worker thread, by the rules of :mod:`asyncdicom.storage.transcoding`: (its path now, the
    new SOP Instance UID of a lossy conversion or None).  A conversion that fails keeps the
    file as received, logged as ``store_as_failed``."""
    from ..errors import StorageError
    from ..storage.transcoding import convert_stored_file

    cfg = association.config
    try:
        return await anyio.to_thread.run_sync(
            partial(
                convert_stored_file,
                stored,
                target,
                allow_lossy=allow_lossy,
                implementation_class_uid=cfg.implementation_class_uid,
                implementation_version_name=cfg.implementation_version_name,
            )
        )
    except (StorageError, OSError) as exc:
        association.log.warning(
            "store_as_failed",
            file=str(stored),
            syntax=target,
            error=str(exc) or type(exc).__name__,
            kept="as received",
        )
        return stored, None


async def save_request(
    request: IncomingRequest,
    folder: str | os.PathLike[str],
    *,
    on_duplicate: DuplicatePolicy = "unique",
    layout: Layout = "flat",
    warn_duplicate: bool = True,
) -> StoredFile:
    """Write the C-STORE request's data set to ``folder`` as a Part 10 file; return its path.

    The path is a :class:`~asyncdicom.storage.StoredFile` (a :class:`~pathlib.Path`):
    its ``header()`` reads the stored data set without its pixel data (to log the Patient Name,
    say), and ``duplicate`` tells whether a file of the same name existed.

    * ``on_duplicate`` (:data:`~asyncdicom.storage.DuplicatePolicy`): when a file with
      the instance's name exists, ``"unique"`` (default) keeps it and stores the new one as
      ``<SOP Instance UID>_1.dcm`` (``_2``, ...), ``"overwrite"`` replaces it, ``"ignore"``
      keeps it and drops the new one (the returned path is then the existing file's).  Each
      case logs a ``duplicate_instance`` warning, unless ``warn_duplicate`` is False (for a
      caller that decides what becomes of the copies itself).
    * ``layout`` (:data:`~asyncdicom.storage.Layout`): ``"flat"`` (default) stores
      ``folder/<SOP Instance UID>.dcm``; ``"sorted"`` stores
      ``folder/<Patient ID>/<Study Instance UID>/<Series Instance UID>/<SOP Instance UID>.dcm``,
      names read from the head of the data set once it is on disk (never its pixel data) and
      made safe (:func:`~asyncdicom.storage.folder_name`); ``"media"`` stores
      ``folder/PAxxxxxx/STxxxxxx/SExxxxxx/IMxxxxxx`` (:mod:`asyncdicom.storage.media`), names
      of the General Purpose CD-R profile made from the same values.

    ``folder`` is created if needed.  The file appears under its final name only when complete;
    if the association ends early (abort, transport loss) or writing fails, nothing is left
    behind.  A SOP Instance UID that is not a valid UID never names a path outside ``folder``
    (it is replaced by a hash, :func:`~asyncdicom.storage.safe_filename`).  Writing
    errors raise :class:`OSError` (a handler that lets it through answers 0xA700).

    The temporary file is created as soon as the request arrives, data is written in batches
    of :data:`_WRITE_BATCH` (in a worker thread), and the tail is written and the file renamed
    once the last fragment is in (in the event loop's thread).  With
    ``AEConfig.file_io_in_threads`` or the sorted layout (which parses the header), all of it
    runs in worker threads, and the file is created with the first batch or the last
    fragment: nothing of an instance that fails before that touches the disk.
    """
    from ..storage.structure import StructureCheck
    from ..storage.writer import Part10Writer

    message = request.message
    assert isinstance(message, messages.CStoreRQ)
    if not request.has_dataset:
        # PS3.7 9.3.1.1: the data set of a C-STORE-RQ is mandatory; nothing to store
        raise EmptyDataSet("the C-STORE-RQ carries no data set")
    association = request.association
    cfg = association.config
    target = Path(folder)

    def _open() -> Part10Writer:
        try:
            return _writer()
        except FileNotFoundError:  # the folder does not exist (yet): made on first use only
            target.mkdir(parents=True, exist_ok=True)
            return _writer()

    def _writer() -> Part10Writer:
        return Part10Writer(
            target,
            sop_class_uid=message.affected_sop_class_uid,
            sop_instance_uid=message.affected_sop_instance_uid,
            transfer_syntax_uid=request.context.transfer_syntax or "",
            implementation_class_uid=cfg.implementation_class_uid,
            implementation_version_name=cfg.implementation_version_name,
            source_ae_title=association.calling_ae_title or None,
            on_duplicate=on_duplicate,
            layout=layout,
        )

    # Local file operations here take microseconds to a fraction of a millisecond, less than
    # a round trip through a worker thread on a small machine: open, small writes and the
    # rename run in the event loop's thread, like DCMTK's storescp does them; writes of a
    # full batch (>= _WRITE_BATCH) go to a worker thread.  AEConfig.file_io_in_threads sends
    # everything to worker threads, for slow or network file systems.  When the commit goes
    # to a worker thread anyway (that, or the sorted layout, which parses the header), the
    # file is created there too, with the first batch or the commit: an instance smaller
    # than a batch costs one thread call and no file-system call in the event loop.
    threaded = cfg.file_io_in_threads
    commit_threaded = threaded or layout != "flat"
    writer: Part10Writer | None = None if commit_threaded else _open()
    check = StructureCheck(request.context.transfer_syntax or "")

    def _opened_and_written(batch: list[memoryview]) -> Part10Writer:
        opened = _open()
        try:
            _write_batch(opened, batch)
        except BaseException:
            opened.discard()
            raise
        return opened

    def _completed(writer: Part10Writer | None, batch: list[memoryview]) -> StoredFile:
        # the sorted layout's folder names were read as the bytes went by
        keys = check.sort_keys() if layout != "flat" else None
        if writer is None:
            writer = _opened_and_written(batch)
            return writer.commit(sort_keys=keys)
        return _write_and_commit(writer, batch, keys)

    try:
        batch: list[memoryview] = []
        size = 0
        async for chunk in request.chunks():
            check.feed(chunk)
            batch.append(chunk)
            size += len(chunk)
            if size >= _WRITE_BATCH:
                if writer is None:
                    writer = await anyio.to_thread.run_sync(_opened_and_written, batch)
                else:
                    await anyio.to_thread.run_sync(_write_batch, writer, batch)
                batch, size = [], 0
        check.finish()
        if not check.elements:
            raise EmptyDataSet("the C-STORE-RQ's data set is empty")
        _check_sop_uids(check, message)
        path: StoredFile
        if commit_threaded:
            path = await anyio.to_thread.run_sync(_completed, writer, batch)
        else:
            assert writer is not None
            path = _write_and_commit(writer, batch)
    except BaseException:
        if writer is not None:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(writer.discard)
        raise
    if path.duplicate is not None and warn_duplicate:
        association.log.warning(
            "duplicate_instance",
            instance=message.affected_sop_instance_uid,
            file=str(path),
            action=_DUPLICATE_ACTIONS[path.duplicate],
        )
    return path


def _check_sop_uids(check: StructureCheck, message: messages.CStoreRQ) -> None:
    """The data set names the SOP class and instance its command does (PS3.3 C.12.1.1.1)."""
    sop_class, sop_instance = check.sop_uids()
    for name, tag, value, expected in (
        ("SOP Class UID", "(0008,0016)", sop_class, message.affected_sop_class_uid),
        ("SOP Instance UID", "(0008,0018)", sop_instance, message.affected_sop_instance_uid),
    ):
        if not value:
            raise InvalidDataset(f"the data set has no {name} {tag}")
        if value != expected:
            raise DataSetMismatch(
                f"the data set's {name} {tag} is {value[:80]!r}, its C-STORE-RQ's {expected!r}"
            )


#: what the ``duplicate_instance`` warning says was done, per policy
_DUPLICATE_ACTIONS = {
    "unique": "a file of this name exists: kept it and saved this copy under a new name",
    "overwrite": "a file of this name existed: replaced it",
    "ignore": "a file of this name exists: kept it and dropped this copy",
}


def _write_batch(writer: Part10Writer, batch: list[memoryview]) -> None:
    writer.write_many(batch)  # one system call for the batch


def _write_and_commit(
    writer: Part10Writer,
    batch: list[memoryview],
    sort_keys: tuple[str | None, str | None, str | None] | None = None,
) -> StoredFile:
    """The tail of an instance and the rename, in one worker-thread call."""
    _write_batch(writer, batch)
    return writer.commit(sort_keys=sort_keys)
