"""Responses to the operations we invoke, and where the reader puts them."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING

import anyio

from ..protocol import messages
from ..protocol.negotiation import PresentationContext
from ..protocol.status import StatusCategory, category, is_pending

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

__all__ = ["DIMSEResponse", "Waiter"]


@dataclass(frozen=True, slots=True)
class DIMSEResponse:
    """One response to a request we invoked: the message and its data set bytes, if any.

    ``status`` and :attr:`category` classify it (success, warning, failure, cancel, pending;
    PS3.7 Annex C); :attr:`error_comment` and :attr:`offending_element` are the peer's
    explanation of a failure, when it gave one.  ``dataset`` holds the encoded identifier or
    data set in ``context.transfer_syntax``; :meth:`decode` decodes it with pydicom.
    """

    message: messages.ResponseMessage
    dataset: bytes | None = None
    context: PresentationContext | None = None

    @property
    def status(self) -> int:
        """The Status (0000,0900) value."""
        return int(self.message.status)

    @property
    def category(self) -> StatusCategory:
        """Success, warning, failure, cancel or pending (PS3.7 Annex C)."""
        return category(self.status)

    @property
    def is_pending(self) -> bool:
        """True for a Pending response: more follow."""
        return is_pending(self.status)

    @property
    def ok(self) -> bool:
        """True for Success and Warning statuses: the operation did what was asked."""
        return self.category in (StatusCategory.SUCCESS, StatusCategory.WARNING)

    @property
    def error_comment(self) -> str | None:
        """Error Comment (0000,0902), if the peer sent one."""
        return getattr(self.message, "error_comment", None)

    @property
    def offending_element(self) -> tuple[int, ...] | None:
        """Offending Element (0000,0901) tags, if the peer sent them."""
        return getattr(self.message, "offending_element", None)

    def decode(self) -> Dataset | None:
        """The data set (identifier) decoded with pydicom, or ``None`` if there is none.

        Raises:
            InvalidDicomFile: the bytes cannot be decoded.
            UnsupportedTransferSyntax: the context's transfer syntax is unknown.
        """
        if self.dataset is None:
            return None
        from ..storage.codec import decode_dataset

        ts = self.context.transfer_syntax if self.context is not None else None
        return decode_dataset(self.dataset, ts or "")

    def __str__(self) -> str:
        from ..protocol.status import describe

        text = f"{self.message.NAME} {describe(self.status)}"
        if self.error_comment:
            text += f" ({self.error_comment})"
        return text


class Waiter:
    """Where the reader puts the responses to one outstanding operation of ours (lighter than
    a memory stream: one deque and one event)."""

    __slots__ = ("abandoned", "closed", "event", "responses", "slot")

    def __init__(self, slot: anyio.Semaphore | None) -> None:
        self.responses: deque[DIMSEResponse] = deque()
        self.event = anyio.Event()
        self.closed = False
        self.abandoned = False
        #: the window slot this operation holds, released with its final response
        self.slot = slot

    def put(self, response: DIMSEResponse) -> None:
        if not self.abandoned:
            self.responses.append(response)
        self.event.set()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.slot is not None:
            self.slot.release()
            self.slot = None
        self.event.set()

    async def next_response(self) -> DIMSEResponse | None:
        """The next response, or None once closed with nothing left."""
        while True:
            if self.responses:
                return self.responses.popleft()
            if self.closed:
                return None
            self.event = anyio.Event()
            await self.event.wait()
