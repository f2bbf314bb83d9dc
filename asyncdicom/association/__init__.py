"""The anyio driver: one :class:`BaseAssociation` around one sans-IO
:class:`~asyncdicom.protocol.association.AssociationCore`.

The core decides every rule of the standard (states, negotiation outcome, operations and
their window, release collisions, aborts and their cause, every deadline); this package moves
bytes and time into it and events out of it:

* :mod:`.engine`: the reader (one receive under the core's single deadline), writes under a
  FIFO lock with the transport's write watchdog, the table that hands each core event to its
  handler, release and abort;
* :mod:`.dimse`: DIMSE messages sent (one message at a time on the wire, PS3.8 Annex E),
  operations invoked (:meth:`BaseAssociation.invoke`, :meth:`BaseAssociation.request`,
  :class:`Operation`), the peer's requests run by the :class:`Dispatcher` in tasks of their
  own, their data sets streamed through bounded memory streams;
* :mod:`.driver`: :class:`BaseAssociation` itself with establishment for both roles
  (:meth:`BaseAssociation.open`, :meth:`BaseAssociation.serve`) and :class:`IncomingRequest`;
* :mod:`.responses`: :class:`DIMSEResponse`.

The driver knows DICOM operations, never a specific service: what to do with a request from the
peer is the dispatcher's business, and the service helpers (``echo()``, ``store()``, ...) are
added by :mod:`asyncdicom.services`.  Any exception escaping ``async with ae.associate(...)``
aborts the association (A-ABORT); leaving it normally releases it.
"""

from __future__ import annotations

from .dimse import DatasetSource as DatasetSource  # re-exported: what may be sent as a data set
from .dimse import Operation
from .driver import BaseAssociation, Dispatcher, IncomingRequest, Owner
from .responses import DIMSEResponse

__all__ = [
    "BaseAssociation",
    "DIMSEResponse",
    "Dispatcher",
    "IncomingRequest",
    "Operation",
    "Owner",
]


def __getattr__(name: str) -> object:
    # the driver class's old name, now that ``Association`` is the one the AE hands out
    if name == "Association":
        import warnings

        warnings.warn(
            "asyncdicom.association.Association is now asyncdicom.lowlevel.BaseAssociation "
            "(asyncdicom.Association is the association the AE hands out)",
            DeprecationWarning,
            stacklevel=2,
        )
        return BaseAssociation
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
