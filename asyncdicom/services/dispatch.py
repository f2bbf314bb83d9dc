"""Running a handler for a request received from the peer, and answering it.

A handler is registered on the AE per request type (``ae.on_echo``, ``ae.on_store``, or
``ae.set_handler(messages.CStoreRQ, fn)``).  It receives a
:class:`~asyncdicom.association.ServiceRequest` and returns the response status (an ``int``)
or a complete response message.  ``async def`` handlers run in the association's task group;
plain functions run in a worker thread (``anyio.to_thread``) after the request's data set, if
any, has been read into ``request.data``.
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import TYPE_CHECKING, Any

import anyio

from ..protocol import messages
from ..protocol.status import Status

if TYPE_CHECKING:
    from ..association import Association, ServiceRequest

__all__ = ["make_response", "serve"]


def make_response(request: messages.Message, status: int, **fields: Any) -> messages.Message:
    """The response message matching ``request`` with ``status`` (PS3.7 per-service tables).

    Copies Message ID Being Responded To, and the Affected SOP Class/Instance UID from the
    request's affected or requested UIDs where the response has such fields.
    """
    rsp_type = messages.MESSAGE_TYPES[request.COMMAND_FIELD | 0x8000]
    names = _field_names(rsp_type)
    kwargs: dict[str, Any] = {
        "message_id_being_responded_to": request.message_id,  # type: ignore[union-attr]
        "status": status,
    }
    sop_class = getattr(request, "affected_sop_class_uid", None) or getattr(
        request, "requested_sop_class_uid", None
    )
    sop_instance = getattr(request, "affected_sop_instance_uid", None) or getattr(
        request, "requested_sop_instance_uid", None
    )
    if "affected_sop_class_uid" in names and sop_class:
        kwargs["affected_sop_class_uid"] = sop_class
    if "affected_sop_instance_uid" in names and sop_instance:
        kwargs["affected_sop_instance_uid"] = sop_instance
    for name in ("event_type_id", "action_type_id"):
        if name in names and getattr(request, name, None) is not None:
            kwargs[name] = getattr(request, name)
    if "has_dataset" in names:
        kwargs["has_dataset"] = False
    kwargs.update(fields)
    return rsp_type(**{k: v for k, v in kwargs.items() if k in names})


_FIELD_NAMES: dict[type, frozenset[str]] = {}


def _field_names(cls: type) -> frozenset[str]:
    names = _FIELD_NAMES.get(cls)
    if names is None:
        names = _FIELD_NAMES[cls] = frozenset(f.name for f in dataclasses.fields(cls))
    return names


def default_response(message: messages.Message) -> messages.Message:
    """The response to a request for which no handler is registered."""
    if isinstance(message, messages.CEchoRQ):  # the common case, built directly
        return messages.CEchoRSP(
            message_id_being_responded_to=message.message_id,
            status=0x0000,
            affected_sop_class_uid=message.affected_sop_class_uid,
        )
    return make_response(message, _default_status(message))


def _default_status(message: messages.Message) -> int:
    if isinstance(message, messages.CEchoRQ):
        return 0x0000
    if isinstance(message, messages.CStoreRQ):
        return int(Status.SOP_CLASS_NOT_SUPPORTED)
    return int(Status.UNRECOGNIZED_OPERATION)


async def serve(
    association: Association, request: ServiceRequest, complete: anyio.Event | None
) -> None:
    """Run the handler registered for ``request`` and send the response."""
    message = request.message
    if isinstance(message, messages.CCancelRQ):
        association.ae._on_cancel(association, message)
        return
    handler = association.ae.handler_for(type(message))
    result: Any
    try:
        if handler is None:
            if request.has_dataset:
                await request.discard()
            result = _default_status(message)
        elif is_async_callable(handler):
            result = await handler(request)
        else:
            if request.has_dataset:
                request.data = await request.read()
            result = await anyio.to_thread.run_sync(handler, request)
    except Exception as exc:
        if association.is_closed:
            return
        association.log.exception("handler_error", message=type(message).__name__, error=str(exc))
        result = _status_for_exception(message, exc)
    if request.has_dataset and not request._consumed:
        await request.discard()
    if complete is not None:
        # answer only once the whole request has arrived
        await complete.wait()
    if association.is_closed:
        return
    if isinstance(result, messages.Response):
        response: Any = result
    else:
        response = make_response(message, int(result) if result is not None else 0x0000)
    try:
        await association.send_message(request.context, response)
    except ValueError:
        if response is result:
            raise
        # The request's UIDs, echoed into the response, cannot be encoded (a peer may send,
        # say, a backslash in a UI value, which our decoder lets through).  They are U(=) in
        # every response (PS3.7 9.3, 10.3): answer without them rather than not at all.
        uid_fields = {"affected_sop_class_uid", "affected_sop_instance_uid"}
        response = dataclasses.replace(
            response,
            **{f.name: None for f in dataclasses.fields(response) if f.name in uid_fields},
        )
        await association.send_message(request.context, response)


def _status_for_exception(message: messages.Message, exc: Exception) -> int:
    if isinstance(message, messages.CStoreRQ):
        # PS3.4 B.2.3: A7xx out of resources (disk full), C000 cannot understand
        if isinstance(exc, OSError):
            return 0xA700
        return 0xC000
    return int(Status.PROCESSING_FAILURE)


def is_async_callable(fn: Any) -> bool:
    """True for ``async def`` functions (and callables whose __call__ is one)."""
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
        getattr(fn, "__call__", None)  # noqa: B004
    )
