"""The router: receive C-STORE into a durable queue, forward to destinations by rules.

:class:`Router` is an async context manager: entering it opens (locks and scans) the queue
folder and starts one forwarder per destination and the committer; its :attr:`Router.ae` is
the AE to serve (a Storage SCP for every storage SOP class, and Verification)::

    async with Router("ROUTER", Path("queue"), RuleSet(destinations)) as router:
        async with router.ae.server("0.0.0.0", 11112):
            await anyio.sleep_forever()

Receiving: an instance is saved in ``incoming/`` (refused with a failure status if it cannot
be: an invalid data set, a full disk), routed by the rules (no destination: refused with
0xC000 and an Error Comment saying so), then committed to the queue (see
:mod:`asyncdicom.router.queue`; the commits of concurrent associations are grouped, one
fsync per folder per group), and only then answered with Success.

Forwarding, per destination, in queue order: one association carries the instances while
they flow (it is released after :data:`LINGER` seconds without one, or to propose another
SOP class or transfer syntax); each instance is sent as it is stored, proposing its own SOP
class and transfer syntax (and, when uncompressed, Explicit and Implicit VR Little Endian
besides), as ``asyncdicom storescu`` does.  Outcomes:

* Success or Warning: the instance leaves the destination's queue;
* a transient failure (connection refused or lost, association rejected or aborted, a
  timeout, or a 0xA7xx "out of resources" status): the association is given up and opened
  again after a wait that starts at ``retry_delay`` and doubles with each failure in a row,
  up to ``retry_delay_max`` (default :data:`MAX_RETRY_DELAY`; ``retry_delay`` if larger).
  The instance at the head of the queue counts an attempt; after ``retry_max`` attempts it
  goes to the dead-letter folder;
* a permanent refusal (any other failure status, no accepted presentation context for the
  instance, a queued file that cannot be read): the instance goes to the dead-letter folder
  at once, with the reason.

Delivery is at least once: an instance whose Success arrived just before the router was
killed, or whose association failed after the destination stored it, is sent again.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import anyio

from ..ae import AE
from ..config import Timeouts
from ..errors import (
    AssociationError,
    DICOMError,
    NoAcceptedContext,
    StorageError,
    TransportError,
)
from ..log import get_logger
from ..protocol import messages
from ..protocol.status import StatusCategory, category
from ..services import make_response
from ..services.storage import save_request, store_failure_comment, store_failure_status
from ..storage.contexts import contexts_for_syntaxes
from .queue import DeadLetter, DiskQueue, Pending
from .rules import Destination, RuleSet

if TYPE_CHECKING:
    from ..services import Association

__all__ = ["LINGER", "MAX_RETRY_DELAY", "NO_ROUTE_STATUS", "Forwarder", "Router"]

#: seconds an association to a destination stays open without an instance to send
LINGER = 2.0
#: the default longest wait between two attempts (unless ``retry_delay`` is longer), seconds
MAX_RETRY_DELAY = 60.0
#: the C-STORE status of an instance no rule routes anywhere (Error: cannot understand)
NO_ROUTE_STATUS = 0xC000
#: distinct (SOP class, transfer syntax) pairs proposed on one association at most (each may
#: bring a fallback context: 128 in all, PS3.8 9.3.2.2)
_MAX_PAIRS = 64


class _Transient(Exception):
    """The association to a destination failed; try again later."""

    def __init__(self, reason: str, status: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status


@dataclass(eq=False)
class _Arrival:
    """A received instance waiting for its commit."""

    path: Path
    keys: tuple[str, ...]
    sop_class_uid: str
    transfer_syntax_uid: str
    sop_instance_uid: str
    done: anyio.Event = field(default_factory=anyio.Event)
    error: BaseException | None = None


class Forwarder:
    """Sends one destination's queue, in order (see the module documentation)."""

    def __init__(self, router: Router, destination: Destination, items: list[Pending]) -> None:
        self.router = router
        self.destination = destination
        self.key = destination.key
        self.items: deque[Pending] = deque(items)
        #: instances delivered and dead-lettered in this run
        self.forwarded = 0
        self.dead = 0
        #: failures in a row (0 after a success)
        self.failures = 0
        self.last_error = ""
        #: "idle", "connecting", "sending" or "waiting" (for the next attempt)
        self.state = "idle"
        self.retry_at: float | None = None
        self._wake = anyio.Event()
        self.log = get_logger().bind(destination=destination.name)

    def push(self, item: Pending) -> None:
        """Queue a committed instance."""
        self.items.append(item)
        self._wake.set()

    async def _wait_items(self) -> None:
        while not self.items:
            self._wake = anyio.Event()
            await self._wake.wait()

    async def run(self) -> None:
        """Forward until cancelled."""
        router = self.router
        while True:
            self.state = "idle"
            await self._wait_items()
            failure = await self._session()
            if failure is None:
                continue
            self.failures += 1
            self.last_error = failure.reason
            head = self.items[0] if self.items else None
            gave_up = ""
            if head is not None:
                head.attempts += 1
                if head.attempts >= router.retry_max:
                    self._dead_letter(
                        head, f"{failure.reason} ({head.attempts} attempts)", failure.status
                    )
                    gave_up = " (its instance went to the dead-letter folder)"
            delay = min(
                router.retry_delay * 2 ** (self.failures - 1),
                max(router.retry_delay, router.retry_delay_max),
            )
            self.log.warning(
                "forward_failed",
                reason=failure.reason + gave_up,
                attempt=head.attempts if head is not None else 0,
                retry_in=round(delay, 3),
                queued=len(self.items),
            )
            self.state = "waiting"
            self.retry_at = time.time() + delay
            await anyio.sleep(delay)
            self.retry_at = None

    def _contexts(self) -> tuple[list[Any], set[tuple[str, str]]]:
        pairs: list[tuple[str, str]] = []
        seen: set[tuple[str, str]] = set()
        for item in self.items:
            pair = (item.sop_class_uid, item.transfer_syntax_uid)
            if not pair[0] or pair in seen:
                continue
            if len(pairs) == _MAX_PAIRS:
                break
            seen.add(pair)
            pairs.append(pair)
        return list(contexts_for_syntaxes(pairs, allow_lossy=self.router.allow_lossy)), seen

    async def _next(self) -> Pending | None:
        """The head of the queue, waiting up to :data:`LINGER` seconds for one."""
        with anyio.move_on_after(self.router.linger):
            await self._wait_items()
        return self.items[0] if self.items else None

    async def _session(self) -> _Transient | None:
        """One association: send from the head of the queue while instances flow.  None when
        it ended normally, else the transient failure."""
        # unreadable files (found so by the start-up scan) cannot be proposed: given up first
        while self.items and not self.items[0].sop_class_uid:
            self._dead_letter(self.items[0], "the queued file is not a readable DICOM file")
        if not self.items:
            return None
        contexts, covered = self._contexts()
        dest = self.destination
        sent = 0
        self.state = "connecting"
        try:
            async with self.router.ae.associate(
                dest.host, dest.port, called_aet=dest.ae_title, contexts=contexts
            ) as assoc:
                self.state = "sending"
                while True:
                    item = await self._next()
                    if (
                        item is None
                        or (item.sop_class_uid, item.transfer_syntax_uid) not in covered
                    ):
                        break
                    if await self._send(assoc, item):
                        sent += 1
        except _Transient as exc:
            return exc
        except (DICOMError, OSError) as exc:
            return _Transient(_describe(exc, dest))
        finally:
            if sent:
                self.log.info("association_done", forwarded=sent, queued=len(self.items))
        return None

    async def _send(self, assoc: Association, item: Pending) -> bool:
        """Send the head of the queue; True when the destination took it."""
        try:
            response = await assoc.store(item.path, allow_lossy=self.router.allow_lossy)
        except (AssociationError, TransportError):
            raise
        except NoAcceptedContext:
            self._dead_letter(
                item,
                f"the destination accepted no presentation context for SOP class "
                f"{item.sop_class_uid} in transfer syntax {item.transfer_syntax_uid} "
                "(or one it can be converted to"
                + (")" if self.router.allow_lossy else "; lossy ones only with --allow-lossy)"),
            )
            return False
        except (DICOMError, StorageError, OSError) as exc:
            self._dead_letter(item, f"the queued file cannot be sent: {exc}")
            if not assoc.is_established:
                raise _Transient("the association ended while a file was read") from exc
            return False
        except Exception as exc:
            # anything else the file makes the sending code raise: that one instance is
            # given up (logged with its traceback), not the router, which would meet it again
            # at the head of the queue after every restart
            self.log.error("forward_error", seq=item.seq, exc_info=exc)
            self._dead_letter(item, f"the queued file cannot be sent: {type(exc).__name__}: {exc}")
            if not assoc.is_established:
                raise _Transient("the association ended while a file was sent") from exc
            return False
        status = response.status
        kind = category(status)
        if kind in (StatusCategory.SUCCESS, StatusCategory.WARNING):
            self.items.popleft()
            self.router.queue.delivered(self.key, item.seq)
            self.router._left_queue()
            self.forwarded += 1
            self.failures = 0
            self.router.log.debug(
                "instance_forwarded", destination=self.destination.name, seq=item.seq
            )
            return True
        comment = getattr(response.message, "error_comment", None)
        detail = f"status 0x{status:04X}" + (f" ({comment})" if comment else "")
        if 0xA700 <= status <= 0xA7FF:
            raise _Transient(f"refused for now: {detail} (out of resources)", status)
        self._dead_letter(item, f"refused: {detail}", status)
        return False

    def _dead_letter(self, item: Pending, reason: str, status: int | None = None) -> None:
        self.items.remove(item)
        self.router._left_queue()
        letter = DeadLetter(
            destination=self.destination.name,
            reason=reason,
            attempts=item.attempts,
            status=status,
            sop_class_uid=item.sop_class_uid,
            sop_instance_uid=item.sop_instance_uid,
        )
        try:
            path = self.router.queue.dead_letter(self.key, item, letter)
        except OSError as exc:
            self.log.error("dead_letter_failed", seq=item.seq, error=str(exc), reason=reason)
            return
        self.dead += 1
        self.log.warning(
            "dead_letter", file=str(path), reason=reason, instance=item.sop_instance_uid
        )

    def status(self) -> dict[str, Any]:
        """This destination's state, for the status report."""
        return {
            "destination": self.destination.name,
            "state": self.state,
            "queued": len(self.items),
            "forwarded": self.forwarded,
            "dead_letters": self.dead,
            "failures_in_a_row": self.failures,
            "last_error": self.last_error or None,
            "retry_in": None
            if self.retry_at is None
            else round(max(0.0, self.retry_at - time.time()), 1),
        }


def _describe(exc: BaseException, dest: Destination) -> str:
    """The reason of a failed association, the same on both backends."""
    from .._accept import os_error_behind

    cause = exc if isinstance(exc, OSError) else os_error_behind(exc)
    # the backends word a refused connection differently (and may not chain the OSError)
    if isinstance(cause, ConnectionRefusedError) or "connection refused" in str(exc).lower():
        return f"connection refused by {dest.name}"
    return str(exc) or type(exc).__name__


class Router:
    """Receive C-STORE into the durable queue at ``queue_dir`` and forward by ``rules``.

    ``retry_max`` attempts per instance and destination, the first wait ``retry_delay``
    seconds, the longest ``retry_delay_max`` (see the module documentation); ``allow_lossy``
    lets an instance be compressed lossily, as a new instance, for a destination that accepts
    only lossy transfer syntaxes for its SOP class (otherwise it is a dead letter); ``timeouts`` and
    ``max_pdu_length`` are those of the AE (both roles); ``ae_options`` are more
    :class:`~asyncdicom.AEConfig` fields (access control, TLS of the server side).

    Raises:
        ValueError: ``retry_max`` is below 1.
        QueueBusy: (on entering) another router holds ``queue_dir``.
        OSError: (on entering) the folder cannot be created or read.
    """

    def __init__(
        self,
        ae_title: str,
        queue_dir: Path,
        rules: RuleSet,
        *,
        retry_max: int = 10,
        retry_delay: float = 1.0,
        retry_delay_max: float = MAX_RETRY_DELAY,
        linger: float = LINGER,
        timeouts: Timeouts | None = None,
        allow_lossy: bool = False,
        **ae_options: Any,
    ) -> None:
        if retry_max < 1:
            raise ValueError("retry_max must be at least 1")
        self.rules = rules
        #: an instance may be compressed lossily (a new SOP Instance UID) for a destination
        #: that accepts only lossy syntaxes for its SOP class; otherwise it is a dead letter
        self.allow_lossy = allow_lossy
        self.retry_max = retry_max
        self.retry_delay = retry_delay
        self.retry_delay_max = retry_delay_max
        self.linger = linger
        self.queue_dir = queue_dir
        self.ae = AE(
            ae_title, accept_any_storage=True, timeouts=timeouts or Timeouts(), **ae_options
        )
        self.ae.on_store(self._on_store)
        self.log = get_logger().bind(router=ae_title)
        self.queue: DiskQueue = None  # type: ignore[assignment]  # set on entering
        self.forwarders: dict[str, Forwarder] = {}
        #: counts of this run
        self.received = 0
        self.refused = 0
        self.resumed = 0
        self._arrivals, self._arrivals_rx = anyio.create_memory_object_stream[_Arrival](math.inf)
        self._stack: contextlib.AsyncExitStack | None = None
        self._changed = anyio.Event()

    async def __aenter__(self) -> Router:
        keys = [d.key for d in self.rules.destinations]
        self.queue = await anyio.to_thread.run_sync(DiskQueue.open, self.queue_dir, keys)
        stack = contextlib.AsyncExitStack()
        try:
            stack.callback(self.queue.close)
            tg = await stack.enter_async_context(anyio.create_task_group())
            stack.callback(tg.cancel_scope.cancel)
            for dest in self.rules.destinations:
                items = self.queue.pending.get(dest.key, [])
                self.resumed += len(items)
                self.forwarders[dest.key] = Forwarder(self, dest, items)
            for key, items in self.queue.pending.items():
                if key not in self.forwarders and items:
                    self.log.warning(
                        "orphaned_queue",
                        folder=str(self.queue.out(key)),
                        queued=len(items),
                        detail="not a destination now: kept in the queue folder, not sent",
                    )
            self.queue.pending.clear()
            for forwarder in self.forwarders.values():
                tg.start_soon(forwarder.run)
            tg.start_soon(self._committer)
        except BaseException:
            await stack.aclose()
            raise
        self._stack = stack
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        stack, self._stack = self._stack, None
        if stack is None:
            return None
        return await stack.__aexit__(exc_type, exc, tb)

    # ------------------------------------------------------------------ receiving

    async def _on_store(self, request: Any) -> int | messages.Response:
        message = request.message
        association = request.association
        try:
            stored = await save_request(
                request, self.queue.incoming, on_duplicate="unique", warn_duplicate=False
            )
        except (OSError, StorageError, ValueError) as exc:
            self.refused += 1
            status = store_failure_status(exc)
            association.log.warning(
                "store_failed",
                instance=message.affected_sop_instance_uid,
                status=f"0x{status:04X}",
                error=str(exc) or type(exc).__name__,
            )
            return make_response(message, status, error_comment=store_failure_comment(exc))
        committed = False
        try:
            modality = ""
            if self.rules.needs_modality:
                header = await anyio.to_thread.run_sync(stored.header)
                modality = str(header.get("Modality", "") or "")
            destinations = self.rules.route(
                calling=association.calling_ae_title,
                called=association.called_ae_title,
                sop_class=message.affected_sop_class_uid,
                modality=modality,
            )
            if not destinations:
                self.refused += 1
                association.log.warning(
                    "instance_not_routed", instance=message.affected_sop_instance_uid
                )
                return make_response(
                    message, NO_ROUTE_STATUS, error_comment="no routing rule applies to it"
                )
            arrival = _Arrival(
                Path(stored),
                tuple(d.key for d in destinations),
                message.affected_sop_class_uid,
                request.context.transfer_syntax or "",
                message.affected_sop_instance_uid,
            )
            # once handed over the commit goes on even if this association is lost: the
            # instance may then be forwarded and also sent again by its sender (at least once)
            with anyio.CancelScope(shield=True):
                await self._arrivals.send(arrival)
                await arrival.done.wait()
            if arrival.error is not None:
                raise arrival.error
            committed = True
        except (OSError, StorageError, ValueError) as exc:
            self.refused += 1
            association.log.warning(
                "queue_failed", instance=message.affected_sop_instance_uid, error=str(exc)
            )
            return make_response(message, 0xA700, error_comment=store_failure_comment(exc))
        finally:
            if not committed:
                with contextlib.suppress(OSError):
                    Path(stored).unlink()
        self.received += 1
        return 0x0000

    async def _committer(self) -> None:
        """Commit arrivals in groups (one fsync per folder per group), in arrival order."""
        async for first in self._arrivals_rx:
            batch = [first]
            while True:
                try:
                    batch.append(self._arrivals_rx.receive_nowait())
                except anyio.WouldBlock:
                    break
            entries = []
            for arrival in batch:
                entries.append((self.queue.next_seq, arrival.path, arrival.keys))
                self.queue.next_seq += 1
            try:
                paths = await anyio.to_thread.run_sync(self.queue.commit, entries)
            except OSError as exc:
                await anyio.to_thread.run_sync(self.queue.abandon, entries)
                for arrival in batch:
                    arrival.error = exc
                    arrival.done.set()
                continue
            del paths
            for (seq, _path, keys), arrival in zip(entries, batch, strict=True):
                for key in keys:
                    self.forwarders[key].push(
                        Pending(
                            seq,
                            self.queue.link_path(key, seq),
                            arrival.sop_class_uid,
                            arrival.transfer_syntax_uid,
                            arrival.sop_instance_uid,
                        )
                    )
                arrival.done.set()

    # ------------------------------------------------------------------ status

    def status(self) -> dict[str, Any]:
        """The router's state: counts of this run and each destination's state."""
        return {
            "received": self.received,
            "refused": self.refused,
            "resumed": self.resumed,
            "destinations": [f.status() for f in self.forwarders.values()],
        }

    def idle(self) -> bool:
        """Whether every destination's queue is empty."""
        return all(not f.items for f in self.forwarders.values())

    async def wait_idle(self) -> None:
        """Return once every destination's queue is empty (delivered or dead-lettered)."""
        while not self.idle():
            self._changed = changed = anyio.Event()
            await changed.wait()

    def _left_queue(self) -> None:
        self._changed.set()
