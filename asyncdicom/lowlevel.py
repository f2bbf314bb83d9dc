"""The extension API: what a new service, a dispatcher of one's own or a driver-level tool is
built from, kept apart from the API of applications (the model is ``trio.lowlevel``).

An application needs none of this: :class:`asyncdicom.AE`, :class:`asyncdicom.Association`,
the handlers' :class:`asyncdicom.ServiceRequest` and :mod:`asyncdicom.errors` cover it.  A new
service (``docs/dev/adding-a-service.md``) declares a :class:`~asyncdicom.Service` and builds
its SCU helpers on :class:`BaseAssociation`'s generic primitives (``invoke()``,
``request()``); its SCP side runs handlers through :func:`call` and answers with
:func:`~asyncdicom.services.make_response`.

* :class:`BaseAssociation` -- the driver: one association, the generic DIMSE primitives;
* :class:`Dispatcher` -- the protocol the driver hands incoming requests to, and
  :class:`ServiceDispatcher`, the one the AE uses (the handler registry and the services);
* :class:`Owner` -- the protocol of what owns associations (the AE);
* :class:`IncomingRequest` -- a request of the peer as the driver sees it (the base of
  :class:`~asyncdicom.ServiceRequest`); :data:`DatasetSource` -- what may be sent as a data set;
* :func:`call` -- run a handler, sync (in a worker thread) or async;
  :func:`is_async_callable`;
* :func:`request_type` -- the request message class of a command name (``"C-STORE"``);
* :class:`Responder` and :class:`HandlerCall` -- what a service that answers in its own way
  (C-GET/C-MOVE sub-operations, a report after the response) is built from.
"""

from __future__ import annotations

from .association import BaseAssociation, DatasetSource, Dispatcher, IncomingRequest, Owner
from .services.base import HandlerCall, Responder, call, is_async_callable, request_type
from .services.dispatch import ServiceDispatcher

__all__ = [
    "BaseAssociation",
    "DatasetSource",
    "Dispatcher",
    "HandlerCall",
    "IncomingRequest",
    "Owner",
    "Responder",
    "ServiceDispatcher",
    "call",
    "is_async_callable",
    "request_type",
]
