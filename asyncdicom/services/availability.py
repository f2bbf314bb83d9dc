"""Instance Availability Notification (PS3.4 Annex R): N-CREATE of a notification.

An archive tells a RIS or a workflow manager which instances of a study it now has, and how
available they are (ONLINE, NEARLINE, OFFLINE, UNAVAILABLE), with one N-CREATE-RQ whose
attribute list is the notification (Study Instance UID, Referenced Series Sequence with a
Referenced SOP Sequence per series, each item with its Instance Availability and Retrieve AE
Title; Referenced Performed Procedure Step Sequence).

**SCU.** ``await assoc.notify_availability(notification)`` on a context proposed for
:data:`INSTANCE_AVAILABILITY_NOTIFICATION`; the SOP Instance UID is made unless given.

**SCP.** ``ae.install(AvailabilityReceiver(on_notification))``: accepts the SOP class and calls
``on_notification(sop_instance_uid, notification)`` (async, or plain in a worker thread) for
each notification, answering Success; 0x0120 (missing attribute) with an Error Comment when
Study Instance UID or Referenced Series Sequence is absent, 0x0110 when the attribute list
cannot be read or ``on_notification`` raises.  Without a receiver, 0x0110 with an Error
Comment.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pydicom.dataset import Dataset


from ..association import DIMSEResponse
from ..protocol import messages
from ..protocol.status import Status
from .base import Service, call, make_response
from .normalized import NormalizedSCU
from .request import ServiceRequest

__all__ = [
    "INSTANCE_AVAILABILITY_NOTIFICATION",
    "INSTANCE_AVAILABILITY_SERVICE",
    "AvailabilityReceiver",
    "AvailabilitySCU",
]

#: the Instance Availability Notification SOP class (PS3.4 R.3)
INSTANCE_AVAILABILITY_NOTIFICATION = "1.2.840.10008.5.1.4.33"

#: N-CREATE on the SOP class; not accepted unless a receiver is installed
INSTANCE_AVAILABILITY_SERVICE = Service(
    name="Instance Availability Notification",
    commands=(messages.NCreateRQ,),
    sop_classes=frozenset({INSTANCE_AVAILABILITY_NOTIFICATION}),
    no_handler_status=int(Status.PROCESSING_FAILURE),
    no_handler_comment="this AE takes no instance availability notifications",
)

_REQUIRED = ("StudyInstanceUID", "ReferencedSeriesSequence")


class AvailabilitySCU(NormalizedSCU):
    """The Instance Availability Notification SCU helper of an association."""

    async def notify_availability(
        self, notification: Dataset, *, sop_instance: str | None = None
    ) -> DIMSEResponse:
        """N-CREATE the notification (its SOP Instance UID is ``sop_instance``, or a new one);
        the response's status says whether the SCP took it.

        Raises:
            NoAcceptedContext: the SOP class was not accepted.
        """
        from pydicom.uid import generate_uid

        return await self.n_create(
            INSTANCE_AVAILABILITY_NOTIFICATION,
            notification,
            sop_instance=sop_instance or generate_uid(),
        )


class AvailabilityReceiver:
    """The SCP: ``on_notification(sop_instance_uid, notification)`` for each notification (see
    the module docstring)."""

    def __init__(
        self, on_notification: Callable[[str, Dataset], Awaitable[object] | object]
    ) -> None:
        self.on_notification = on_notification

    def install(self, ae: Any) -> None:
        """Accept the SOP class on ``ae`` (an :class:`~asyncdicom.AE`) and handle its
        N-CREATE."""
        ae.add_service(dataclasses.replace(INSTANCE_AVAILABILITY_SERVICE, accept_by_default=True))
        ae.on("N-CREATE", sop_class=INSTANCE_AVAILABILITY_NOTIFICATION)(self._on_create)

    async def _on_create(self, request: ServiceRequest) -> messages.Message | int:
        message = request.message
        notification = await request.dataset()
        missing = [keyword for keyword in _REQUIRED if keyword not in notification]
        if missing:
            comment = f"missing {', '.join(missing)}"
            return make_response(message, int(Status.MISSING_ATTRIBUTE), error_comment=comment)
        uid = str(getattr(message, "affected_sop_instance_uid", "") or "")
        await call(self.on_notification, uid, notification)
        return int(Status.SUCCESS)
