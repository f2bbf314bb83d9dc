"""What the SCU apps share: their AE, the association they open, and Ctrl-C during an
operation that can be cancelled.

Every SCU app opens its association with :func:`associate` (the peer, the called AE title
and ``--bind`` from the options of :func:`~.options.add_scu`).  :func:`cancel_on_ctrl_c`
gives C-FIND, C-GET and C-MOVE the same Ctrl-C: the first SIGINT sends C-CANCEL-RQ and the
operation goes on to its final response; a second one (or one before the operation started)
stops at once.
"""

from __future__ import annotations

import argparse
import os
import signal
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import TYPE_CHECKING, Any

import anyio

from ..ae import AE
from ..errors import DICOMError
from ..protocol.pdu import UserIdentityRQSubItem
from .options import PASSWORD_ENV, client_timeouts
from .output import notice

if TYPE_CHECKING:
    from ..protocol.negotiation import ContextRequest
    from ..services import Association
    from ..services.query_retrieve import OperationResults

__all__ = [
    "Interrupt",
    "associate",
    "cancel_on_ctrl_c",
    "scu_ae",
    "scu_password",
    "scu_user_identity",
]


def scu_password(args: argparse.Namespace) -> str | None:
    """The passcode of ``--username``: ``--password``, else the first line of
    ``--password-file``, else the environment variable :data:`PASSWORD_ENV` (an empty value
    counts as unset); None when there is none."""
    password: str | None = getattr(args, "password", None)
    if password is None:
        password = getattr(args, "password_from_file", None)
    if password is None:
        password = os.environ.get(PASSWORD_ENV) or None
    return password


def scu_user_identity(args: argparse.Namespace) -> UserIdentityRQSubItem | None:
    """The User Identity sub-item of the options of :func:`add_scu` (None without
    ``--username``): type 2 (user name and passcode) when :func:`scu_password` finds a
    passcode, else type 1 (user name only)."""
    username = getattr(args, "username", None)
    if username is None:
        return None
    password = scu_password(args)
    return UserIdentityRQSubItem(
        identity_type=1 if password is None else 2,
        positive_response_requested=bool(getattr(args, "identity_response", False)),
        primary_field=username.encode("utf-8"),
        secondary_field=b"" if password is None else password.encode("utf-8"),
    )


def scu_ae(args: argparse.Namespace) -> AE:
    """The AE of an SCU app, from the options of :func:`add_scu`."""
    return AE(
        args.aet,
        max_pdu_length=args.max_pdu,
        timeouts=client_timeouts(args),
        user_identity=scu_user_identity(args),
        client_ssl_context=getattr(args, "ssl_context", None),
    )


def associate(
    args: argparse.Namespace,
    contexts: Sequence[ContextRequest | str],
    *,
    ae: AE | None = None,
) -> AbstractAsyncContextManager[Association]:
    """The association of an SCU app: ``ae`` (default: :func:`scu_ae`) to ``HOST PORT`` as
    ``--called-aet``, from ``--bind``, proposing ``contexts``.  Use it as
    ``async with associate(args, contexts) as assoc``; it raises what
    :meth:`asyncdicom.AE.associate` raises."""
    return (ae or scu_ae(args)).associate(
        args.host,
        args.port,
        called_aet=args.called_aet,
        contexts=list(contexts),
        bind=args.bind,
    )


# --------------------------------------------------------------------------- Ctrl-C


class Interrupt:
    """Ctrl-C during one cancellable operation (see :func:`cancel_on_ctrl_c`)."""

    def __init__(self, name: str) -> None:
        self.name = name
        #: Ctrl-C was pressed (C-CANCEL-RQ sent, or the app stopped at once)
        self.interrupted = False
        #: the operation Ctrl-C cancels; set it once the request is sent
        self.operation: OperationResults | None = None
        self._count = 0

    async def _watch(self, signals: Any, scope: anyio.CancelScope) -> None:
        async for _ in signals:
            self.interrupted = True
            self._count += 1
            operation = self.operation
            if operation is None or self._count > 1 or operation.final is not None:
                scope.cancel()
                return
            try:
                await operation.cancel()
            except (DICOMError, OSError):
                scope.cancel()
                return
            notice(
                f"{self.name}: C-CANCEL sent, waiting for the final response "
                "(Ctrl-C again to stop now)",
                "cancel_sent",
            )


@asynccontextmanager
async def cancel_on_ctrl_c(name: str) -> AsyncIterator[Interrupt]:
    """While the block runs, SIGINT cancels the operation set as the yielded
    :class:`Interrupt`'s ``operation`` (C-CANCEL-RQ; the block goes on to the final response);
    a second SIGINT, or one before the operation started, cancels the block.  ``name`` (e.g.
    ``C-FIND``) starts the notice said when C-CANCEL-RQ is sent."""
    interrupt = Interrupt(name)
    with anyio.open_signal_receiver(signal.SIGINT) as signals:
        async with anyio.create_task_group() as tg:
            tg.start_soon(interrupt._watch, signals, tg.cancel_scope)
            yield interrupt
            tg.cancel_scope.cancel()  # the watcher
