"""Verification service class (PS3.4 Annex A; C-ECHO, PS3.7 9.1.5)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import NoAcceptedContext
from ..protocol import messages
from ..protocol.uids import VERIFICATION

if TYPE_CHECKING:
    from ..association import Association

__all__ = ["echo"]


async def echo(association: Association) -> int:
    """Send C-ECHO-RQ and return the C-ECHO-RSP status."""
    context = association.find_context(VERIFICATION)
    if context is None:
        raise NoAcceptedContext("no accepted presentation context for Verification")
    rq = messages.CEchoRQ(
        message_id=association.next_message_id(), affected_sop_class_uid=VERIFICATION
    )
    response = await association.request_one(context, rq)
    return int(response.message.status)  # type: ignore[union-attr]
