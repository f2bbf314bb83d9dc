"""What an accept loop does when ``accept()`` fails, on either backend.

A listening server must outlive its own resource limits.  When the process runs out of file
descriptors (``EMFILE``, ``ENFILE``) or kernel memory (``ENOMEM``, ``ENOBUFS``), ``accept()``
fails while new connections wait in the kernel's backlog; neither anyio's ``Listener.serve``
(which lets the error end the server) nor asyncio's ``create_server`` (which logs a traceback
for every failed attempt, hundreds a second) copes well.  :class:`AcceptErrors` is the policy
both of our accept loops follow:

* out of resources: one warning when it starts, a pause of :data:`RETRY_DELAY` seconds before
  each new attempt (connections closing meanwhile free descriptors), one notice with the count
  of failed attempts when accepting works again;
* an error of one connection only (it was reset or aborted before we took it; Linux's
  accept(2) lists network errors to treat like ``EAGAIN``): take the next one;
* anything else (the listening socket itself is broken): raise.
"""

from __future__ import annotations

import errno
import sys
import time

import anyio

if sys.version_info < (3, 11):  # pragma: no cover
    from exceptiongroup import BaseExceptionGroup

from .errors import DICOMError
from .log import get_logger

__all__ = ["CAPACITY_ERRNOS", "RETRY_DELAY", "AcceptErrors", "os_error_behind"]

#: accept() failed for want of descriptors or memory: wait, then try again
CAPACITY_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})
#: accept() failed for that one connection (accept(2), Linux: "should be treated like EAGAIN")
_CONNECTION_ERRNOS = frozenset(
    getattr(errno, name)
    for name in (
        "ECONNABORTED",
        "ECONNRESET",
        "EPROTO",
        "EPERM",
        "ENETDOWN",
        "ENOPROTOOPT",
        "EHOSTDOWN",
        "ENONET",
        "EHOSTUNREACH",
        "EOPNOTSUPP",
        "ENETUNREACH",
        "ETIMEDOUT",
    )
    if hasattr(errno, name)
)
#: seconds between attempts while out of resources
RETRY_DELAY = 0.1


def os_error_behind(exc: BaseException) -> OSError | None:
    """The OSError behind ``exc`` that carries an error number (searched breadth-first through
    causes, contexts and exception groups), else the first OSError found, else None."""
    fallback: OSError | None = None
    seen: set[int] = set()
    todo: list[BaseException] = [exc]
    while todo:
        current = todo.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, OSError) and not isinstance(current, DICOMError):
            if current.errno is not None:
                return current
            fallback = fallback or current
        if isinstance(current, BaseExceptionGroup):
            todo.extend(current.exceptions)
        todo.extend(e for e in (current.__cause__, current.__context__) if e is not None)
    return fallback


class AcceptErrors:
    """The accept-error policy of one listening socket (see the module docstring)."""

    __slots__ = ("_log", "_since", "failures")

    def __init__(self, where: str) -> None:
        self._log = get_logger().bind(listener=where)
        #: failed attempts in the current shortage (0: none)
        self.failures = 0
        self._since = 0.0

    async def failed(self, exc: BaseException) -> bool:
        """Called with the error of a failed ``accept()``: True to go on accepting (after a
        pause if out of resources), False if the error must end the server."""
        cause = os_error_behind(exc)
        if cause is None:
            return False
        if cause.errno in _CONNECTION_ERRNOS:
            return True
        if cause.errno not in CAPACITY_ERRNOS:
            return False
        if not self.failures:
            self._since = time.monotonic()
            self._log.warning(
                "accept_out_of_resources",
                error=cause.strerror or str(cause),
                errno=errno.errorcode.get(cause.errno or 0, cause.errno),
                retry_every=RETRY_DELAY,
            )
        self.failures += 1
        await anyio.sleep(RETRY_DELAY)
        return True

    def accepted(self) -> None:
        """Called after each successful ``accept()``: ends a shortage, if there was one."""
        if self.failures:
            self._log.warning(
                "accept_resumed",
                failed_attempts=self.failures,
                seconds=round(time.monotonic() - self._since, 3),
            )
            self.failures = 0
