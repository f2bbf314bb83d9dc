"""Why an acceptor refused an A-ASSOCIATE-RQ: the rule that did, and a detail.

Its own module so that both the AE (its access-control checks) and the association driver
(requests the protocol layer refuses before the AE sees them) can name a refusal.
"""

from __future__ import annotations

import dataclasses
import enum

__all__ = ["Refusal", "RefusalRule"]


class RefusalRule(str, enum.Enum):
    """The check of the acceptor that refused an A-ASSOCIATE-RQ."""

    #: ``max_associations`` reached (transient, source 3, reason 2)
    MAX_ASSOCIATIONS = "max_associations"
    #: ``max_associations_per_calling_ae`` reached (transient, source 3, reason 2)
    MAX_ASSOCIATIONS_PER_CALLING_AE = "max_associations_per_calling_ae"
    #: the protocol version lacks version 1 (permanent, source 2, reason 2)
    PROTOCOL_VERSION = "protocol_version"
    #: not the DICOM application context (permanent, source 1, reason 2)
    APPLICATION_CONTEXT = "application_context"
    #: ``require_called_ae_title`` and the Called AE Title is not ours (1, 1, 7)
    CALLED_AE_TITLE = "called_ae_title"
    #: the Calling AE Title is not in ``allowed_calling_ae_titles`` (1, 1, 3)
    CALLING_AE_TITLE = "calling_ae_title"
    #: no User Identity while ``require_user_identity``, or the identity handler refused it
    #: (1, 1, 1)
    USER_IDENTITY = "user_identity"
    #: the user name or the address is locked out after failed checks (:class:`Lockout`); the
    #: peer gets the same answer as for a wrong password (1, 1, 1)
    LOCKED_OUT = "locked_out"
    #: any other refusal of the negotiation
    OTHER = "other"


@dataclasses.dataclass(frozen=True, slots=True)
class Refusal:
    """Why the acceptor refused an association (:meth:`AE.refusal`): the rule, and a detail
    for logs and audit trails (never sent to the peer)."""

    rule: RefusalRule
    detail: str = ""
