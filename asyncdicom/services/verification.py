"""Verification service class (PS3.4 Annex A; C-ECHO, PS3.7 9.1.5)."""

from __future__ import annotations

from ..association import BaseAssociation, DIMSEResponse
from ..config import DEFAULT_TRANSFER_SYNTAXES
from ..errors import NoAcceptedContext
from ..protocol import messages
from ..protocol.uids import VERIFICATION
from .base import Service

__all__ = ["VERIFICATION_SERVICE", "VerificationSCU"]


def _echo_success(message: messages.RequestMessage) -> messages.ResponseMessage:
    # the common case, built directly (an SCP answers C-ECHO with Success by default)
    return messages.CEchoRSP(
        message_id_being_responded_to=message.message_id,
        status=0x0000,
        affected_sop_class_uid=messages.sop_class_uid(message),
    )


#: C-ECHO on the Verification SOP class; without a handler the SCP answers Success
VERIFICATION_SERVICE = Service(
    name="Verification",
    commands=(messages.CEchoRQ,),
    sop_classes=frozenset({VERIFICATION}),
    transfer_syntaxes=DEFAULT_TRANSFER_SYNTAXES,
    accept_by_default=True,
    no_handler_response=_echo_success,
)


class VerificationSCU(BaseAssociation):
    """The Verification SCU helper of an association."""

    async def echo(self) -> DIMSEResponse:
        """C-ECHO (PS3.7 9.1.5): the response (``.status`` 0x0000 = success).

        Raises:
            NoAcceptedContext: the Verification SOP class was not accepted.
            AssociationError: the association failed meanwhile (aborted, timed out, lost).
        """
        context = self.find_context(VERIFICATION)
        if context is None:
            raise NoAcceptedContext("no accepted presentation context for Verification")
        rq = messages.CEchoRQ(
            message_id=self.next_message_id(), affected_sop_class_uid=VERIFICATION
        )
        return await self.request(context, rq)
