"""Modality Performed Procedure Step (PS3.4 Annex F.7): N-CREATE and N-SET.

A modality tells the SCP (a RIS, a PACS) that it started a procedure step with N-CREATE
(Performed Procedure Step Status "IN PROGRESS") and that it finished it with N-SET (status
"COMPLETED" or "DISCONTINUED", with the series it produced).  The SCU side needs no helper of
its own: ``assoc.n_create(MPPS, attributes)`` and ``assoc.n_set(MPPS, uid, changes)``
(:mod:`asyncdicom.services.normalized`) on a context proposed for :data:`MPPS`::

    rsp = await assoc.n_create(MPPS, attributes)            # status IN PROGRESS
    uid = rsp.message.affected_sop_instance_uid             # chosen by the SCP if not given
    rsp = await assoc.n_set(MPPS, uid, final_attributes)    # status COMPLETED

**SCP.** :class:`MPPSSCP` keeps the state of every procedure step, in memory and, given a
folder, as one Part 10 file per step (``<SOP Instance UID>.mpps``, Explicit VR Little Endian,
written atomically) read back at start, so that an SCP keeps its steps across restarts.  It
answers (PS3.4 F.7.2, PS3.7 Annex C):

* N-CREATE: Success with the SOP Instance UID in the response (the SCP chooses one when the
  request names none); 0x0120 (missing attribute) without Performed Procedure Step Status;
  0x0106 (invalid attribute value) with the offending attribute as Attribute List when the
  status is not "IN PROGRESS"; 0x0111 (duplicate SOP instance) for a UID that exists; 0x0117
  (invalid SOP instance) for a UID that is not one.
* N-SET: 0x0112 (no such SOP instance) for an unknown step; 0x0110 (processing failure) with
  Error ID 0xA710 and the Error Comment of PS3.4 Table F.7.2-2 for a step that is COMPLETED or
  DISCONTINUED already; 0x0106 with the offending attribute for a status other than
  "IN PROGRESS", "COMPLETED" and "DISCONTINUED".  So the status only ever moves from
  IN PROGRESS to COMPLETED or DISCONTINUED, and a finished step never changes again.  The
  other attributes of the Modification List replace the step's (a sequence as a whole); SOP
  Class and SOP Instance UID are kept.
* 0x0110 with an Error Comment for an Attribute List that cannot be decoded, or a step that
  cannot be written to the folder (the step is then left as it was).

Without :class:`MPPSSCP` (no handler registered) an AE answers N-CREATE and N-SET of the SOP
class 0x0110 with an Error Comment; the SOP class is not accepted unless configured
(:func:`asyncdicom.presets.mpps_supported`, or :meth:`MPPSSCP.install`).
"""

from __future__ import annotations

import copy
import dataclasses
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio

if TYPE_CHECKING:
    from pydicom.dataset import Dataset


from ..log import get_logger
from ..protocol import messages, uids
from ..protocol.status import Status
from .base import Service, call, make_response

__all__ = [
    "COMPLETED",
    "DISCONTINUED",
    "FINAL_STATUSES",
    "IN_PROGRESS",
    "MAY_NO_LONGER_BE_UPDATED",
    "MPPS",
    "MPPSSCP",
    "MPPS_SERVICE",
    "STATUSES",
    "step_status",
]

#: the Modality Performed Procedure Step SOP class (N-CREATE, N-SET)
MPPS = uids.MODALITY_PERFORMED_PROCEDURE_STEP

#: Performed Procedure Step Status (0040,0252) values (PS3.3 C.4.14)
IN_PROGRESS = "IN PROGRESS"
COMPLETED = "COMPLETED"
DISCONTINUED = "DISCONTINUED"
STATUSES = (IN_PROGRESS, COMPLETED, DISCONTINUED)
#: the statuses after which a step may no longer be updated
FINAL_STATUSES = (COMPLETED, DISCONTINUED)

#: Error ID (0000,0903) of an N-SET on a finished step (PS3.4 Table F.7.2-2)
MAY_NO_LONGER_BE_UPDATED = 0xA710
_MAY_NO_LONGER_BE_UPDATED_COMMENT = "Performed Procedure Step Object may no longer be updated"

_STATUS_TAG = 0x00400252
_SOP_CLASS_UID = 0x00080016
_SOP_INSTANCE_UID = 0x00080018
_SUFFIX = ".mpps"

#: what an application's ``on_change`` receives: the SOP Instance UID and the step's
#: attributes after the change (a copy)
ChangeCallback = Callable[[str, "Dataset"], Any]


#: Modality Performed Procedure Step: N-CREATE and N-SET.  Not accepted unless configured
#: (:func:`asyncdicom.presets.mpps_supported`, or :meth:`MPPSSCP.install`).  Without a
#: handler: 0x0110 with an Error Comment
MPPS_SERVICE = Service(
    name="Modality Performed Procedure Step",
    commands=(messages.NCreateRQ, messages.NSetRQ),
    sop_classes=frozenset({MPPS}),
    no_handler_status=int(Status.PROCESSING_FAILURE),
    no_handler_comment="this AE does not manage performed procedure steps",
)

# the same, accepted by an AE it is added to (MPPSSCP.install)
_MPPS_ACCEPTED = dataclasses.replace(MPPS_SERVICE, accept_by_default=True)


def step_status(attributes: Dataset) -> str | None:
    """The Performed Procedure Step Status (0040,0252) of ``attributes``, padding removed;
    None when absent."""
    elem = attributes.get(_STATUS_TAG)
    if elem is None:
        return None
    value = elem.value
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    return str(value or "").strip(" \0")


def _offending(attributes: Dataset, tag: int) -> Dataset:
    """The Attribute List of a 0x0106 response: the offending attribute as received."""
    from pydicom.dataset import Dataset

    out = Dataset()
    out.add(copy.deepcopy(attributes[tag]))
    return out


def _invalid_status(message: Any, attributes: Dataset, value: str) -> tuple[Any, Dataset]:
    """0x0106 with an Error Comment and the offending attribute as Attribute List."""
    allowed = "IN PROGRESS" if isinstance(message, messages.NCreateRQ) else "/".join(STATUSES)
    comment = f"status {value[:16]!r} is not {allowed}"
    response = make_response(
        message,
        int(Status.INVALID_ATTRIBUTE_VALUE),
        error_comment=comment,
        has_dataset=True,
    )
    return response, _offending(attributes, _STATUS_TAG)


class MPPSSCP:
    """Modality Performed Procedure Step SCP: the procedure steps and their state (see the
    module docstring)::

        mpps = MPPSSCP("/data/mpps")      # reads the steps kept there (OSError if it cannot)
        mpps.install(ae)
        await ae.serve(...)

    ``folder`` (optional) keeps one file per step; it is created at the first write.  A file
    that cannot be read is skipped and listed in :attr:`skipped`.  ``on_change(uid,
    attributes)`` (optional; async, or plain and run in a worker thread) is called after
    each successful N-CREATE and N-SET with a copy of the step's attributes; what it raises
    is logged and does not change the response, which reports the step as stored.
    """

    def __init__(
        self,
        folder: str | os.PathLike[str] | None = None,
        *,
        on_change: ChangeCallback | None = None,
    ) -> None:
        #: where the steps are kept (None: in memory only)
        self.folder = Path(folder) if folder is not None else None
        self.on_change = on_change
        #: files of the folder that could not be read: (path, reason)
        self.skipped: list[tuple[Path, str]] = []
        self.log = get_logger()
        self._steps: dict[str, Dataset] = {}
        self._lock: anyio.Lock | None = None
        #: other processes write steps in :attr:`folder` too (the workers of one server): a
        #: step's file is read again before each N-CREATE and N-SET of it
        self.shared_folder = False
        if self.folder is not None:
            self._load(self.folder)

    # -- the steps -----------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._steps)

    def __contains__(self, sop_instance_uid: object) -> bool:
        return sop_instance_uid in self._steps

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._steps))

    def get(self, sop_instance_uid: str) -> Dataset | None:
        """A copy of the attributes of step ``sop_instance_uid``, or None."""
        step = self._steps.get(sop_instance_uid)
        return None if step is None else copy.deepcopy(step)

    def status(self, sop_instance_uid: str) -> str | None:
        """The Performed Procedure Step Status of step ``sop_instance_uid``, or None."""
        step = self._steps.get(sop_instance_uid)
        return None if step is None else step_status(step)

    def install(self, ae: Any) -> None:
        """Register the N-CREATE and N-SET handlers of the SOP class on ``ae`` (an
        :class:`~asyncdicom.AE`) and make it accept the SOP class (with the default transfer
        syntaxes) unless its ``supported_contexts`` list it already."""
        ae.add_service(_MPPS_ACCEPTED)
        ae.on("N-CREATE", sop_class=MPPS)(self._on_create)
        ae.on("N-SET", sop_class=MPPS)(self._on_set)

    # -- the handlers ----------------------------------------------------------------------

    async def _on_create(self, request: Any) -> Any:
        from pydicom.uid import generate_uid

        message = request.message
        uid = str(message.affected_sop_instance_uid or "").strip(" \0")
        try:
            attributes: Dataset = await request.dataset()
            status = step_status(attributes)
        except Exception as exc:
            return self._undecodable(request, exc)
        if uid and not _is_uid(uid):
            return make_response(
                message,
                int(Status.INVALID_SOP_INSTANCE),
                error_comment="the Affected SOP Instance UID is not a valid UID",
            )
        if status is None:
            return make_response(
                message,
                int(Status.MISSING_ATTRIBUTE),
                error_comment="Performed Procedure Step Status (0040,0252) is missing",
            )
        if status != IN_PROGRESS:
            # PS3.4 F.7.2.1.2: 0106 with an Attribute List
            return _invalid_status(message, attributes, status)
        async with self._the_lock():
            if uid:
                await self._reread(uid)
            if uid in self._steps:
                return make_response(
                    message,
                    int(Status.DUPLICATE_SOP_INSTANCE),
                    error_comment="a procedure step with this SOP Instance UID exists",
                )
            if not uid:
                uid = generate_uid()
                while uid in self._steps:  # pragma: no cover - 2**-128
                    uid = generate_uid()
            step = copy.deepcopy(attributes)
            step.SOPClassUID = MPPS
            step.SOPInstanceUID = uid
            failure = await self._store(request, uid, step)
            if failure is not None:
                return failure
            self._steps[uid] = step
        request.association.log.info("mpps_created", instance=uid, status=status)
        await self._changed(uid, step)
        return make_response(message, int(Status.SUCCESS), affected_sop_instance_uid=uid)

    async def _on_set(self, request: Any) -> Any:
        message = request.message
        uid = str(message.requested_sop_instance_uid or "").strip(" \0")
        try:
            modifications: Dataset = await request.dataset()
            new_status = step_status(modifications)
        except Exception as exc:
            return self._undecodable(request, exc)
        async with self._the_lock():
            await self._reread(uid)
            old = self._steps.get(uid)
            if old is None:
                return make_response(
                    message,
                    int(Status.NO_SUCH_SOP_INSTANCE),
                    error_comment="no procedure step with this SOP Instance UID",
                )
            if step_status(old) in FINAL_STATUSES:
                return make_response(
                    message,
                    int(Status.PROCESSING_FAILURE),
                    error_comment=_MAY_NO_LONGER_BE_UPDATED_COMMENT,
                    error_id=MAY_NO_LONGER_BE_UPDATED,
                )
            if new_status is not None and new_status not in STATUSES:
                return _invalid_status(message, modifications, new_status)
            step = copy.deepcopy(old)
            for elem in modifications:
                if int(elem.tag) not in (_SOP_CLASS_UID, _SOP_INSTANCE_UID):
                    step.add(copy.deepcopy(elem))
            failure = await self._store(request, uid, step)
            if failure is not None:
                return failure
            self._steps[uid] = step
        request.association.log.info("mpps_updated", instance=uid, status=step_status(step))
        await self._changed(uid, step)
        return int(Status.SUCCESS)

    # -- helpers ---------------------------------------------------------------------------

    def _the_lock(self) -> anyio.Lock:
        # created in the event loop that uses it
        if self._lock is None:
            self._lock = anyio.Lock()
        return self._lock

    def _undecodable(self, request: Any, exc: Exception) -> messages.Message:
        request.association.log.warning(
            "mpps_undecodable", message=request.message.NAME, error=f"{type(exc).__name__}: {exc}"
        )
        return make_response(
            request.message,
            int(Status.PROCESSING_FAILURE),
            error_comment="the Attribute List cannot be decoded",
        )

    async def _store(self, request: Any, uid: str, step: Dataset) -> messages.Message | None:
        """Write the step's file (when there is a folder); the failure response, or None."""
        if self.folder is None:
            return None
        try:
            await anyio.to_thread.run_sync(_write_step, self.folder, uid, step)
        except (OSError, ValueError, TypeError) as exc:
            request.association.log.error("mpps_write_failed", instance=uid, error=str(exc))
            return make_response(
                request.message,
                int(Status.PROCESSING_FAILURE),
                error_comment="the procedure step cannot be stored",
            )
        return None

    async def _changed(self, uid: str, step: Dataset) -> None:
        if self.on_change is None:
            return
        try:
            await call(self.on_change, uid, copy.deepcopy(step))
        except Exception as exc:
            self.log.error("mpps_on_change_failed", instance=uid, error=f"{exc!r}", exc_info=exc)

    async def _reread(self, uid: str) -> None:
        """With :attr:`shared_folder`: the step ``uid`` as its file holds it now."""
        if not self.shared_folder or self.folder is None or not _is_uid(uid):
            return
        from pydicom import dcmread
        from pydicom.dataset import Dataset

        from ..storage.names import safe_filename

        path = self.folder / safe_filename(uid, suffix=_SUFFIX)
        try:
            ds = await anyio.to_thread.run_sync(dcmread, path)
        except FileNotFoundError:
            return
        except Exception as exc:
            self.log.warning("mpps_file_skipped", file=str(path), error=str(exc))
            return
        step = Dataset()
        for elem in ds:
            step.add(elem)
        self._steps[uid] = step

    def _load(self, folder: Path) -> None:
        """Read the steps kept in ``folder`` (a missing folder holds none)."""
        from pydicom import dcmread
        from pydicom.dataset import Dataset

        try:
            entries = sorted(folder.iterdir())
        except FileNotFoundError:
            return
        for path in entries:
            if path.suffix != _SUFFIX or path.name.startswith(".") or not path.is_file():
                continue
            try:
                ds = dcmread(path)
                uid = str(ds.get("SOPInstanceUID", "") or "").strip(" \0")
                if not _is_uid(uid):
                    raise ValueError("no valid SOP Instance UID")
                step = Dataset()
                for elem in ds:
                    step.add(elem)
                step_status(step)  # decodes the values now: a bad file is found here
            except Exception as exc:
                self.skipped.append((path, f"{type(exc).__name__}: {exc}"))
                self.log.warning("mpps_file_skipped", file=str(path), error=str(exc))
                continue
            self._steps[uid] = step


def _is_uid(value: str) -> bool:
    from ..storage.names import is_valid_uid

    return is_valid_uid(value)


def _write_step(folder: Path, uid: str, step: Dataset) -> None:
    """Write ``step`` as ``folder/<uid>.mpps`` (Part 10, Explicit VR Little Endian),
    atomically: a temporary file, flushed to disk, then renamed over the old one."""
    from ..storage.codec import encode_dataset
    from ..storage.meta import encode_file_meta
    from ..storage.names import safe_filename

    ts = uids.EXPLICIT_VR_LITTLE_ENDIAN
    data = (
        b"\0" * 128
        + b"DICM"
        + encode_file_meta(
            sop_class_uid=MPPS,
            sop_instance_uid=uid,
            transfer_syntax_uid=ts,
            implementation_class_uid=uids.IMPLEMENTATION_CLASS_UID,
            implementation_version_name=uids.IMPLEMENTATION_VERSION_NAME,
        )
        + encode_dataset(step, ts)
    )
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / safe_filename(uid, suffix=_SUFFIX)
    import uuid

    temp = folder / f".{uuid.uuid4().hex}{_SUFFIX}-part"
    try:
        with open(temp, "xb") as fp:
            fp.write(data)
            fp.flush()
            os.fsync(fp.fileno())
        os.replace(temp, final)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
