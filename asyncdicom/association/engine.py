"""The I/O shell around :class:`~asyncdicom.protocol.association.AssociationCore`.

One reader task per association receives bytes under the core's single deadline (one cancel
scope per read, none while no deadline runs), feeds them to the core and hands each event to
its handler through a table.  Writes go through one FIFO lock and a write watchdog
(:class:`~asyncdicom.transport.WriteWatchdog`).  A deadline that appears while the reader waits
without one (an operation invoked from another task, a release, an abort) is watched by one
short-lived timer task, as aioquic's asyncio shell re-arms its single timer.  Nothing here
decides a rule of the standard: the core does.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar, Protocol

import anyio
import sniffio
from anyio.abc import ByteStream, TaskGroup

from .._readsize import ReadSizer
from ..config import AEConfig
from ..hooks import HookEvent, Hooks
from ..log import get_logger
from ..protocol.association import (
    AbortCause,
    AbortKind,
    AssociationCore,
    CoreConfig,
)
from ..protocol.events import NEED_DATA
from ..protocol.negotiation import NegotiatedAssociation, PresentationContext
from ..protocol.pdu import AssociateRJ, AssociateRQ
from ..protocol.upper_layer import Role
from ..refusal import Refusal
from ..transport import WriteWatchdog, close_quietly, describe_loss, peer_address, quickack
from .responses import Waiter

__all__ = ["ABORT_LINGER", "Engine", "FastLock", "OwnerLike"]

#: the stdlib logger behind every association's structlog logger; DIMSE messages are traced
#: at DEBUG only when it is enabled (a cheap, cached check on the hot path)
TRACE = logging.getLogger("asyncdicom")
#: after a local A-ABORT, how long the peer may take to close the connection (state 13)
ABORT_LINGER = 1.0

_assoc_ids = itertools.count(1)

Handler = Callable[[Any, Any], Awaitable[None]]


class FastLock:
    """A FIFO lock for the tasks of one asyncio loop, for the association's write paths.

    anyio's lock looks up the current task and walks its cancel scopes on every acquire, even
    uncontended (about 3 us a cycle on asyncio, where each task lookup also costs a ``getpid``
    system call on Python 3.11); this one only checks a flag.  It never checkpoints when free,
    so a task in a cancelled scope takes it and its (synchronous) transport write goes out
    whole; on asyncio nothing can be half-written by that.  On trio, whose socket writes check
    for cancellation before sending, the association keeps anyio's lock (see
    :meth:`Engine._use_loop_clock`).  A waiter cancelled while ownership was being handed to it
    passes it on.
    """

    __slots__ = ("_locked", "_waiters")

    def __init__(self) -> None:
        self._locked = False
        self._waiters: deque[anyio.Event] = deque()

    def locked(self) -> bool:
        """True while a task holds the lock."""
        return self._locked

    async def __aenter__(self) -> None:
        if not self._locked:
            self._locked = True
            return
        event = anyio.Event()
        self._waiters.append(event)
        try:
            await event.wait()
        except BaseException:
            if event.is_set():  # the lock was already ours: pass it on
                self._release()
            else:
                self._waiters.remove(event)
            raise

    async def __aexit__(self, *exc_info: object) -> None:
        self._release()

    def _release(self) -> None:
        if self._waiters:
            self._waiters.popleft().set()  # handed over: stays locked, nobody can barge in
        else:
            self._locked = False


class OwnerLike(Protocol):
    """What the shell needs of the application entity (see ``association.Owner``)."""

    @property
    def config(self) -> AEConfig: ...

    @property
    def hooks(self) -> Hooks: ...

    async def _on_association_requested(self, association: Any, rq: AssociateRQ) -> None: ...


def core_config(cfg: AEConfig) -> CoreConfig:
    """The core's limits and timeouts from an AE's configuration."""
    t = cfg.timeouts
    return CoreConfig(
        artim=t.artim,
        acse=t.acse,
        dimse=t.dimse,
        network=t.network,
        min_receive_rate=t.min_receive_rate,
        max_pdu_length=cfg.max_pdu_length,
        max_command_length=cfg.max_command_set_length,
        max_dataset_in_memory=cfg.max_dataset_in_memory,
    )


class Engine:
    """Reader, writer, timers and the association-level events of one association."""

    #: core event type -> handler; extended by the DIMSE layer
    _handlers: ClassVar[dict[type, Handler]] = {}

    def __init__(self, ae: OwnerLike, stream: ByteStream, role: Role) -> None:
        #: the application entity this association belongs to
        self.ae = ae
        self.config: AEConfig = ae.config
        self.hooks: Hooks = ae.hooks
        self.role = role
        self.id = next(_assoc_ids)
        self.peer_host, self.peer_port = peer_address(stream)
        self._stream = stream
        #: the event loop's clock (that of cancel scopes); made direct by ``_use_loop_clock``
        self._now: Callable[[], float] = anyio.current_time
        self._core = AssociationCore(role, core_config(self.config))
        self._hooks_version = -1
        self._sync_hooks()
        self.log = get_logger(assoc_id=self.id, peer=f"{self.peer_host}:{self.peer_port}")
        self._tg: TaskGroup | None = None
        # fast_acquire: an uncontended lock costs no trip through the event loop; on asyncio
        # a FastLock replaces it once the loop is known (_use_loop_clock)
        self._write_lock: anyio.Lock | FastLock = anyio.Lock(fast_acquire=True)
        self._reader_scope: anyio.CancelScope | None = None
        self._reader_unbounded = False
        #: the deadline the reader waits with in the stream's own ``receive_before`` (no
        #: cancel scope), ``None`` when it does not
        self._reader_deadline: float | None = None
        self._timer_scope: anyio.CancelScope | None = None
        self._timer_running = False
        self._established = anyio.Event()
        self._closed = anyio.Event()
        self._watchdog = WriteWatchdog(
            stream, self.config.timeouts.write, self._write_stalled, self._closed
        )
        #: set when a write was interrupted: part of a PDU may be on the wire, nothing more
        #: can be sent (not even an A-ABORT), the transport is closed
        self._torn = False
        #: why the upper layer itself refused the A-ASSOCIATE-RQ, if it did (see AE.refusal)
        self.provider_refusal: Refusal | None = None
        #: DIMSE messages are logged at DEBUG (refreshed by the reader and by each send)
        self._tracing = False
        self._waiters: dict[int, Waiter] = {}
        self._handlers_active = 0
        self._handlers_idle = anyio.Event()
        self._handlers_idle.set()

    # ------------------------------------------------------------------ public state

    @property
    def negotiated(self) -> NegotiatedAssociation | None:
        """What was agreed at establishment (``None`` before)."""
        return self._core.negotiated

    @property
    def rejection(self) -> AssociateRJ | None:
        """The A-ASSOCIATE-RJ that ended establishment, if one did."""
        return self._core.rejection

    @property
    def abort_info(self) -> AbortCause | None:
        """Why the association was aborted (``source``, ``reason``, ``local``, ``detail``),
        ``None`` if it was not."""
        return self._core.abort_cause

    @property
    def released(self) -> bool:
        """True once the association was released (A-RELEASE completed or answered)."""
        return self._core.released

    @property
    def is_established(self) -> bool:
        """True while the association can carry DIMSE messages (accepted, and neither aborted
        nor closed)."""
        return self._established.is_set() and self._core.is_established and not self.is_closed

    @property
    def is_closed(self) -> bool:
        """True once the transport is closed (released, rejected or aborted)."""
        return self._closed.is_set()

    @property
    def accepted_contexts(self) -> tuple[PresentationContext, ...]:
        """The accepted presentation contexts (empty before negotiation)."""
        negotiated = self._core.negotiated
        return negotiated.accepted_contexts if negotiated else ()

    @property
    def calling_ae_title(self) -> str:
        """The requestor's AE title."""
        negotiated = self._core.negotiated
        return negotiated.calling_ae_title if negotiated else ""

    @property
    def called_ae_title(self) -> str:
        """The acceptor's AE title as the requestor called it."""
        negotiated = self._core.negotiated
        return negotiated.called_ae_title if negotiated else ""

    @property
    def peer_ae_title(self) -> str:
        """The other side's AE title."""
        if self.role is Role.REQUESTOR:
            return self.called_ae_title
        return self.calling_ae_title

    @property
    def outstanding(self) -> int:
        """How many operations of ours are outstanding (sent, final response not yet in)."""
        return self._core.outstanding

    @property
    def performing(self) -> int:
        """How many of the peer's operations we are performing right now."""
        return self._core.performing

    def __repr__(self) -> str:
        return (
            f"<Association #{self.id} {self.role.name.lower()} peer={self.peer_ae_title!r} "
            f"{self.peer_host}:{self.peer_port} state={self._core.state.name}>"
        )

    # ------------------------------------------------------------------ reading

    def _use_loop_clock(self) -> None:
        """Read the running event loop's clock directly (the clock anyio's deadlines use),
        without anyio's backend lookup on every reading: two readings per message."""
        library = sniffio.current_async_library()
        if library == "asyncio":
            self._now = asyncio.get_running_loop().time
            if not self._write_lock.locked():
                self._write_lock = FastLock()
        elif library == "trio":
            import trio

            self._now = trio.current_time

    async def _run_reader(self, *, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
        """Receive under the core's deadline, feed the core, act on its events; ends when the
        transport closes.  The time spent processing is never held against the peer: the core
        is told when a wait starts (``reading``) only while a deadline depends on it."""
        task_status.started()
        core = self._core
        stream = self._stream
        hooks = self.hooks
        # how much to ask for per receive (trio reads that much from the socket at once)
        sizer = ReadSizer()
        size = sizer.size
        # a stream that can wait with a deadline itself (ours on asyncio) spares a cancel
        # scope per read while a message is in progress
        receive_before: Callable[[float, int], Awaitable[bytes | None]] | None = getattr(
            stream, "receive_before", None
        )
        # acknowledge at once while the peer is mid-message (a sender with Nagle on waits for it)
        ack_now = quickack(stream)
        try:
            while not self._closed.is_set():
                if hooks.version != self._hooks_version:
                    self._sync_hooks()
                self._tracing = TRACE.isEnabledFor(logging.DEBUG)
                if core.wants_read_time:
                    core.reading(self._now())
                deadline = core.timer_deadline()
                data: bytes | None
                try:
                    if deadline is None:
                        self._reader_unbounded = True
                        try:
                            data = await stream.receive(size)
                        finally:
                            self._reader_unbounded = False
                    elif receive_before is not None:
                        self._reader_deadline = deadline
                        try:
                            data = await receive_before(deadline, size)
                        finally:
                            self._reader_deadline = None
                        if data is None:  # the deadline passed (or moved earlier)
                            core.handle_timer(self._now())
                            await self._process_events()
                            continue
                    else:
                        try:
                            with anyio.CancelScope(deadline=deadline) as scope:
                                self._reader_scope = scope
                                data = await stream.receive(size)
                        finally:
                            self._reader_scope = None
                        if scope.cancelled_caught:
                            core.handle_timer(self._now())
                            await self._process_events()
                            continue
                except (anyio.EndOfStream, anyio.BrokenResourceError, OSError) as exc:
                    core.connection_lost(describe_loss(exc), self._now(), exc)
                    data = None
                except anyio.ClosedResourceError:
                    data = None
                if data is not None:
                    size = sizer.update(len(data))
                    if hooks.wants(HookEvent.PDU_RECEIVED):
                        hooks.emit(HookEvent.PDU_RECEIVED, self, data=data)
                core.receive_data(data, self._now())
                if ack_now is not None and core.receiving:
                    ack_now()
                await self._process_events()
                if data is None:
                    break
        finally:
            await self._finish()

    def _update_deadline(self) -> None:
        """After an input from outside the reader: move the reader's deadline, or, if the
        reader waits without one, let the timer task watch the new one."""
        scope = self._reader_scope
        if scope is not None:
            deadline = self._core.timer_deadline()
            scope.deadline = math.inf if deadline is None else deadline
        elif self._reader_deadline is not None:
            # the reader's wait ends at its deadline; an earlier one wakes it now (it then
            # acts on what is due, nothing if nothing is, and waits again until the new one)
            deadline = self._core.timer_deadline()
            if deadline is not None and deadline < self._reader_deadline:
                self._stream.expire()  # type: ignore[attr-defined]
        elif self._reader_unbounded:
            deadline = self._core.timer_deadline()
            if deadline is None:
                return
            timer = self._timer_scope
            if timer is not None:
                if deadline < timer.deadline:
                    timer.deadline = deadline
            elif not self._timer_running and self._tg is not None:
                self._timer_running = True
                try:
                    self._tg.start_soon(self._watch_timer)
                except RuntimeError:  # the association's task group has ended
                    self._timer_running = False

    async def _watch_timer(self) -> None:
        """The core's deadline while the reader waits without one; ends when none runs or
        when the reader reads under a deadline again."""
        core = self._core
        try:
            while self._reader_unbounded and not self._closed.is_set():
                deadline = core.timer_deadline()
                if deadline is None:
                    return
                with anyio.CancelScope(deadline=deadline) as scope:
                    self._timer_scope = scope
                    await self._closed.wait()
                self._timer_scope = None
                now = self._now()
                deadline = core.timer_deadline()
                if self._reader_unbounded and deadline is not None and now >= deadline:
                    core.handle_timer(now)
                    await self._process_events()
        finally:
            self._timer_scope = None
            self._timer_running = False

    # ------------------------------------------------------------------ writing

    async def _flush(self) -> None:
        """Write whatever the core has queued, in order, under a FIFO lock."""
        data = self._core.data_to_send()
        if not data or self._torn:
            return
        if self.hooks.wants(HookEvent.PDU_SENT):
            self.hooks.emit(HookEvent.PDU_SENT, self, data=data)
        lost: BaseException | None = None
        async with self._write_lock:
            if self._torn:
                return
            # the watchdog runs only while an established association is writing (before
            # that only a few kilobytes are written: the kernel's buffer takes them at once)
            watch = self._watchdog
            watch.serial += 1
            watch.writing = True
            if not watch.running and self._core.ops is not None:
                watch.start(self._tg)
            try:
                await self._stream.send(data)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError) as exc:
                if not self._torn:
                    self.log.info("transport_send_failed", error=str(exc))
                lost = exc
            except anyio.get_cancelled_exc_class():
                # A write cancelled half-way (trio can stop mid-buffer) leaves an unknown part
                # of a PDU on the wire: the byte stream cannot be trusted any more, so close
                # the transport at once; the peer sees the connection drop (A-P-ABORT).
                self._torn = True
                self.log.info("write_interrupted")
                with anyio.CancelScope(shield=True):
                    await close_quietly(self._stream)
                    self._core.connection_lost("a write was interrupted", self._now())
                raise
            finally:
                watch.writing = False
        if lost is not None:
            # act on the loss now (waiters woken), not when the reader next wakes up: a
            # sender must see "connection lost", not a state-machine refusal
            self._core.connection_lost(describe_loss(lost), self._now(), lost)
            await self._process_events()
            return
        if (
            self._reader_scope is not None
            or self._reader_unbounded
            or self._reader_deadline is not None
        ):
            self._update_deadline()

    def _write_stalled(self, timeout: float) -> None:
        """The watchdog found a write taking longer than the write timeout."""
        self.log.warning("write_stalled", timeout=timeout)
        self._torn = True
        self._core.connection_lost(
            f"a PDU could not be sent in {timeout:g} s: the peer stopped reading or reads "
            "too slowly (write timeout)",
            self._now(),
            kind=AbortKind.WRITE_TIMEOUT,
        )
        if self._tg is not None:
            self._tg.start_soon(self._process_events)

    # ------------------------------------------------------------------ events

    async def _process_events(self) -> None:
        """Hand every core event to its handler (called after every input), then write."""
        core = self._core
        handlers = self._handlers
        while (event := core.next_event()) is not NEED_DATA:
            await handlers[type(event)](self, event)
        await self._flush()

    def _wake_waiters(self) -> None:
        """Every operation of ours waiting for a response learns now that the association is
        over, not when the peer finally closes the connection."""
        for waiter in list(self._waiters.values()):
            waiter.close()
        self._waiters.clear()

    async def _finish(self) -> None:
        """The transport is gone or going: wake every waiter, close the stream."""
        self._closed.set()
        self._established.set()
        self._wake_waiters()
        self._end_incoming()
        await close_quietly(self._stream)
        if self.released:
            self.log.info("association_released")
            self.hooks.emit(HookEvent.ASSOCIATION_RELEASED, self)
        self.hooks.emit(HookEvent.CONNECTION_CLOSED, self)
        self.log.debug("connection_closed")

    def _end_incoming(self) -> None:
        """A request data set being received will not complete (the DIMSE layer's)."""

    def _sync_hooks(self) -> None:
        """Observe state transitions only while someone listens."""
        hooks = self.hooks
        if hooks.version != self._hooks_version:
            self._hooks_version = hooks.version
            wanted = hooks.wants(HookEvent.STATE_TRANSITION)
            self._core.on_transition = self._on_transition if wanted else None

    def _on_transition(self, old: Any, event: Any, action: Any, new: Any) -> None:
        self.hooks.emit(
            HookEvent.STATE_TRANSITION,
            self,
            old_state=old,
            fsm_event=event,
            action=action,
            new_state=new,
        )

    async def wait_closed(self) -> None:
        """Wait until the transport is closed."""
        await self._closed.wait()
