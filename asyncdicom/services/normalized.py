"""The DIMSE-N services (PS3.7 10.1): N-EVENT-REPORT, N-GET, N-SET, N-ACTION, N-CREATE and
N-DELETE, as SCU helpers of an association.

Each helper sends one request and returns its response as a
:class:`~asyncdicom.association.DIMSEResponse` (``status``, ``ok``, ``message`` -- the typed
``N...RSP`` -- and ``decode()`` for the data set it carries)::

    rsp = await assoc.n_get(uids.PRINTER, uids.PRINTER_INSTANCE, ["PrinterStatus"])
    rsp = await assoc.n_create(uids.MODALITY_PERFORMED_PROCEDURE_STEP, attributes)
    mpps_uid = rsp.message.affected_sop_instance_uid
    rsp = await assoc.n_set(uids.MODALITY_PERFORMED_PROCEDURE_STEP, mpps_uid, changes)
    rsp = await assoc.n_action(uids.STORAGE_COMMITMENT_PUSH_MODEL, instance, 1, info)

A failure status is returned, not raised: what it means is the SOP class's business.  The
request goes on an accepted presentation context of the SOP class (or of ``abstract_syntax``,
for a SOP class negotiated as part of a meta SOP class: ``n_create(uids.BASIC_FILM_SESSION,
attrs, abstract_syntax=BASIC_GRAYSCALE_PRINT_MANAGEMENT_META)``) in which this side may act
as SCU -- or as SCP for N-EVENT-REPORT, which the SCP of a SOP class sends to its SCU (on an
association the SCP opened, that role comes from SCP/SCU Role Selection, PS3.7 D.3.3.4);
:class:`~asyncdicom.errors.NoAcceptedContext` otherwise.

On the SCP side the requests reach the handlers registered with ``ae.on("N-ACTION",
sop_class=...)`` and so on; the services built on them (Storage Commitment, MPPS) declare their
defaults in their own modules.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pydicom.dataset import Dataset


from ..association import BaseAssociation, DIMSEResponse
from ..errors import NoAcceptedContext
from ..protocol import messages
from ..protocol.negotiation import PresentationContext
from .request import encode_for

__all__ = ["NormalizedSCU", "attribute_tags"]


def attribute_tags(attributes: Iterable[int | str | tuple[int, int]]) -> tuple[int, ...]:
    """Tags from ints, ``(group, element)`` pairs or keywords (``"PatientName"``);
    ValueError for an unknown keyword."""
    from pydicom.datadict import tag_for_keyword
    from pydicom.tag import Tag

    out = []
    for item in attributes:
        if isinstance(item, str):
            tag = tag_for_keyword(item)
            if tag is None:
                raise ValueError(f"{item!r} is not a DICOM keyword")
            out.append(int(tag))
        else:
            out.append(int(Tag(item)))
    return tuple(out)


class NormalizedSCU(BaseAssociation):
    """The DIMSE-N helpers of an association (see the module docstring).

    Every helper takes ``abstract_syntax=``: the abstract syntax of the context to send on,
    when it is not the SOP class itself (a meta SOP class).  Each raises
    :class:`~asyncdicom.errors.NoAcceptedContext` when no such context was accepted.
    """

    def _normalized_context(self, sop_class: str, role: str, what: str) -> PresentationContext:
        context = self.find_context(sop_class, role=role)
        if context is None:
            side = "SCU" if role == "scu" else "SCP (the sender of N-EVENT-REPORT)"
            raise NoAcceptedContext(
                f"no accepted presentation context for {sop_class} in which this side may act "
                f"as {side}: cannot send {what}"
            )
        return context

    async def _normalized(
        self,
        abstract_syntax: str,
        role: str,
        message: Any,
        dataset: Dataset | bytes | None,
    ) -> DIMSEResponse:
        context = self._normalized_context(abstract_syntax, role, message.NAME)
        data = None if dataset is None else encode_for(dataset, context)
        return await self.request(context, message, data)

    async def n_event_report(
        self,
        sop_class: str,
        sop_instance: str,
        event_type: int,
        information: Dataset | bytes | None = None,
        *,
        abstract_syntax: str | None = None,
    ) -> DIMSEResponse:
        """N-EVENT-REPORT (PS3.7 10.1.1): report event ``event_type`` about ``sop_instance``,
        with the Event Information data set ``information``.

        Raises:
            NoAcceptedContext: no accepted context for ``abstract_syntax`` (the SOP class by
                default) in which this side may take the role the command needs.
            AssociationError: the association is gone or ends before the final response
                (its subclasses say why: aborted, connection lost, DIMSE timeout).
        """
        rq = messages.NEventReportRQ(
            message_id=self.next_message_id(),
            affected_sop_class_uid=sop_class,
            affected_sop_instance_uid=sop_instance,
            event_type_id=event_type,
            has_dataset=information is not None,
        )
        return await self._normalized(abstract_syntax or sop_class, "scp", rq, information)

    async def n_get(
        self,
        sop_class: str,
        sop_instance: str,
        attributes: Iterable[int | str | tuple[int, int]] | None = None,
        *,
        abstract_syntax: str | None = None,
    ) -> DIMSEResponse:
        """N-GET (PS3.7 10.1.2): the values of ``attributes`` (tags or keywords; ``None``: all
        of them) of ``sop_instance``; ``response.decode()`` is the Attribute List.

        Raises:
            NoAcceptedContext: no accepted context for ``abstract_syntax`` (the SOP class by
                default) in which this side may take the role the command needs.
            AssociationError: the association is gone or ends before the final response
                (its subclasses say why: aborted, connection lost, DIMSE timeout).
        """
        rq = messages.NGetRQ(
            message_id=self.next_message_id(),
            requested_sop_class_uid=sop_class,
            requested_sop_instance_uid=sop_instance,
            attribute_identifier_list=None if attributes is None else attribute_tags(attributes),
        )
        return await self._normalized(abstract_syntax or sop_class, "scu", rq, None)

    async def n_set(
        self,
        sop_class: str,
        sop_instance: str,
        modifications: Dataset | bytes,
        *,
        abstract_syntax: str | None = None,
    ) -> DIMSEResponse:
        """N-SET (PS3.7 10.1.3): change the attributes of ``sop_instance`` to the values of
        the Modification List ``modifications``.

        Raises:
            NoAcceptedContext: no accepted context for ``abstract_syntax`` (the SOP class by
                default) in which this side may take the role the command needs.
            AssociationError: the association is gone or ends before the final response
                (its subclasses say why: aborted, connection lost, DIMSE timeout).
        """
        rq = messages.NSetRQ(
            message_id=self.next_message_id(),
            requested_sop_class_uid=sop_class,
            requested_sop_instance_uid=sop_instance,
        )
        return await self._normalized(abstract_syntax or sop_class, "scu", rq, modifications)

    async def n_action(
        self,
        sop_class: str,
        sop_instance: str,
        action_type: int,
        information: Dataset | bytes | None = None,
        *,
        abstract_syntax: str | None = None,
    ) -> DIMSEResponse:
        """N-ACTION (PS3.7 10.1.4): ask for action ``action_type`` on ``sop_instance`` with
        the Action Information data set ``information``.

        Raises:
            NoAcceptedContext: no accepted context for ``abstract_syntax`` (the SOP class by
                default) in which this side may take the role the command needs.
            AssociationError: the association is gone or ends before the final response
                (its subclasses say why: aborted, connection lost, DIMSE timeout).
        """
        rq = messages.NActionRQ(
            message_id=self.next_message_id(),
            requested_sop_class_uid=sop_class,
            requested_sop_instance_uid=sop_instance,
            action_type_id=action_type,
            has_dataset=information is not None,
        )
        return await self._normalized(abstract_syntax or sop_class, "scu", rq, information)

    async def n_create(
        self,
        sop_class: str,
        attributes: Dataset | bytes | None = None,
        *,
        sop_instance: str | None = None,
        abstract_syntax: str | None = None,
    ) -> DIMSEResponse:
        """N-CREATE (PS3.7 10.1.5): create an instance of ``sop_class`` with the Attribute
        List ``attributes``.  Without ``sop_instance`` the SCP chooses the SOP Instance UID
        and returns it as ``response.message.affected_sop_instance_uid``.

        Raises:
            NoAcceptedContext: no accepted context for ``abstract_syntax`` (the SOP class by
                default) in which this side may take the role the command needs.
            AssociationError: the association is gone or ends before the final response
                (its subclasses say why: aborted, connection lost, DIMSE timeout).
        """
        rq = messages.NCreateRQ(
            message_id=self.next_message_id(),
            affected_sop_class_uid=sop_class,
            affected_sop_instance_uid=sop_instance,
            has_dataset=attributes is not None,
        )
        return await self._normalized(abstract_syntax or sop_class, "scu", rq, attributes)

    async def n_delete(
        self, sop_class: str, sop_instance: str, *, abstract_syntax: str | None = None
    ) -> DIMSEResponse:
        """N-DELETE (PS3.7 10.1.6): delete ``sop_instance``.

        Raises:
            NoAcceptedContext: no accepted context for ``abstract_syntax`` (the SOP class by
                default) in which this side may take the role the command needs.
            AssociationError: the association is gone or ends before the final response
                (its subclasses say why: aborted, connection lost, DIMSE timeout).
        """
        rq = messages.NDeleteRQ(
            message_id=self.next_message_id(),
            requested_sop_class_uid=sop_class,
            requested_sop_instance_uid=sop_instance,
        )
        return await self._normalized(abstract_syntax or sop_class, "scu", rq, None)
