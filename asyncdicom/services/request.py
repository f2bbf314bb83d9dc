"""The request as a handler sees it: :class:`ServiceRequest`, the driver's
:class:`~asyncdicom.association.IncomingRequest` with DICOM conveniences, the service's state
for the association, and actions to run after the final response."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import anyio

from ..association import BaseAssociation, DatasetSource, IncomingRequest
from ..protocol.negotiation import PresentationContext

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

    from ..storage.writer import DuplicatePolicy, Layout, StoredFile

__all__ = ["ServiceRequest", "StateStore", "encode_for"]


class StateStore(Protocol):
    """Where a request finds the state of the service serving it (the engine that made it)."""

    def state_for(self, association: BaseAssociation, message: Any, sop_class: str) -> Any:
        """The state, for ``association``, of the service that serves ``message`` on
        ``sop_class`` (created on first use); LookupError when it declares none."""


class ServiceRequest(IncomingRequest):
    """A request from the peer as a handler sees it: the generic
    :class:`~asyncdicom.association.IncomingRequest` plus DICOM conveniences.

    ``message`` is the request, ``context`` its presentation context, ``association`` the
    association it came on, ``sop_class_uid`` the SOP class it is about.  A data set is read
    once: :meth:`dataset` (decoded with pydicom), :meth:`read` (bytes), :meth:`chunks`
    (streamed), :meth:`save_to` (C-STORE to a Part 10 file, streamed and atomic).
    """

    #: the engine that made the request (where :attr:`state` lives)
    store: StateStore | None = None
    _after: list[Callable[[], object]] | None = None

    @property
    def state(self) -> Any:
        """The state of the service serving this request on this association: made by the
        service's ``association_state`` factory on first use, dropped when the association
        ends (a print server's film session, say).

        Raises:
            LookupError: no service serves the request, or it keeps no state per association.
        """
        if self.store is None:
            raise LookupError("this request has no service state")
        return self.store.state_for(self.association, self.message, self.sop_class_uid)

    def after_response(self, action: Callable[[], object]) -> None:
        """Run ``action()`` once the final response is sent (also when it could not be
        sent): work that must not overtake the response, such as a Storage Commitment
        report.  Actions run in the order given, inline; a slow one starts a task."""
        if self._after is None:
            self._after = []
        self._after.append(action)

    def run_after_response(self) -> None:
        """Run the :meth:`after_response` actions (the engine calls it once)."""
        actions, self._after = self._after, None
        for action in actions or ():
            action()

    async def dataset(self) -> Dataset:
        """The data set (identifier) decoded with pydicom in the context's transfer syntax.

        Up to ``AEConfig.max_dataset_in_memory`` bytes it is read into memory.  A bigger one
        streams to an anonymous temporary file instead (in ``AEConfig.spool_directory``, the
        system's temporary folder by default; written in worker threads) and is decoded from
        there with its large values (over 64 KiB: pixel data, say) read from the file only
        when accessed; the file is gone as soon as the returned Dataset is.  Memory stays
        bounded whatever the peer sends.
        """
        from ..storage.codec import decode_dataset, decode_spooled_dataset

        association = self.association
        config = association.config
        limit = config.max_dataset_in_memory
        syntax = self.context.transfer_syntax or ""
        parts: list[bytes] = []
        size = 0
        spool: Any = None
        try:
            async for chunk in self.chunks():
                if spool is None:
                    size += len(chunk)
                    parts.append(bytes(chunk))
                    if size <= limit:
                        continue
                    spool = await anyio.to_thread.run_sync(_new_spool, config.spool_directory)
                    held = b"".join(parts)
                    parts.clear()
                    await anyio.to_thread.run_sync(spool.write, held)
                    del held
                else:
                    # the fragment is a view of received bytes nobody else writes: safe to
                    # hand to the thread as it is
                    await anyio.to_thread.run_sync(spool.write, chunk)
            if spool is None:
                return decode_dataset(b"".join(parts), syntax)
            dataset: Dataset = await anyio.to_thread.run_sync(
                decode_spooled_dataset, spool, syntax, config.spool_directory
            )
            spool = None  # now owned by the data set (its deferred values read from it)
            return dataset
        finally:
            if spool is not None:
                spool.close()

    def decode(self) -> Dataset:
        """For plain-function (threaded) handlers: :attr:`data` decoded with pydicom."""
        from ..storage.codec import decode_dataset

        return decode_dataset(self.data or b"", self.context.transfer_syntax or "")

    async def save_to(
        self,
        folder: str | Path,
        *,
        on_duplicate: DuplicatePolicy = "unique",
        layout: Layout = "flat",
    ) -> StoredFile:
        """C-STORE: write the instance to ``folder`` as a Part 10 file, atomically (see
        :func:`~asyncdicom.services.storage.save_request` for ``on_duplicate`` and
        ``layout``).  The returned path's ``header()`` reads the stored data set without its
        pixel data."""
        from .storage import save_request

        return await save_request(self, folder, on_duplicate=on_duplicate, layout=layout)


def _new_spool(directory: str | None) -> Any:
    """An anonymous temporary file (no name on disk: it disappears when closed)."""
    import tempfile

    # not a with-block: on success the file is handed to the data set
    return tempfile.TemporaryFile(dir=directory)


def encode_for(dataset: Any, context: PresentationContext) -> DatasetSource:
    """``dataset`` (a pydicom Dataset, or bytes already encoded) in ``context``'s transfer
    syntax, ready to send."""
    if isinstance(dataset, (bytes, bytearray, memoryview)):
        return dataset
    from ..storage.codec import encode_dataset

    return encode_dataset(dataset, context.transfer_syntax or "")
