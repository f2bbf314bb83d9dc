"""Several processes serving one port: every core in use.

One asyncio (or trio) event loop uses one core.  :func:`serve_workers` starts ``workers``
processes, each with its own event loop and its own :class:`~asyncdicom.AE`, all accepting on
one TCP port::

    def make_ae(worker: WorkerInfo) -> AE:          # module level: run in each worker
        ae = AE("STORESCP", accept_any_storage=True, max_associations=200)
        ae.on_store(on_store)
        return ae

    async with workers_server(make_ae, "0.0.0.0", 11112, workers=4) as group:
        print(group.port, group.pids)
        await anyio.sleep_forever()

The AE is built in each worker by ``factory(WorkerInfo)`` (an AE with handlers cannot be sent
to another process): a function defined at module level, or a :func:`functools.partial` of
one, returning the AE, an awaitable of it, or an async context manager yielding it (for an AE
whose components must be opened and closed, such as an :class:`~asyncdicom.archive.Archive`).
The workers are started with the ``forkserver`` method of :mod:`multiprocessing` where the
platform has it (Linux, macOS): one fresh interpreter imports this module and the factory's
module once, and each worker is forked from that clean, single-threaded process (measured with
two workers: a third of the CPU time of starting each in its own interpreter, pages shared).
Elsewhere (Windows) they are started with ``spawn``, a fresh interpreter each.

**The port.**  On Linux each worker listens on a socket of its own bound with ``SO_REUSEPORT``:
the kernel spreads the connections over the workers (by a hash of the addresses), and a busy
worker takes no more than its share.  Elsewhere, or with ``reuse_port=False``, the supervisor
opens one listening socket and every worker accepts on it (the portable path).  Either way the
supervisor binds the port first, so port 0 works and the bound port is known.  One address
family is served (the first address ``host`` resolves to).

**What stays per server, not per process.**

* ``max_associations`` and ``max_associations_per_calling_ae`` count the associations of all
  workers: each worker publishes its counts in shared memory, under one lock, when it accepts
  (the check and the count are one step) and when an association ends; one beyond a limit is
  rejected as in one process (A-ASSOCIATE-RJ transient, source 3, reason 2).  At most
  :data:`TITLES_PER_WORKER` calling AE titles with open associations are counted per worker.
* The user identity lock-out (:class:`~asyncdicom.users.Lockout`): the supervisor keeps the
  one record of failures, and the workers ask it (one message each way per check); the
  ``identity_lockout_started`` warning is logged by the supervisor.  The users file is read by
  each worker, and followed by each as in one process.
* The audit log (:meth:`asyncdicom.audit.AuditLog.open`): each worker appends whole lines to
  the same file (``O_APPEND``, one ``write()`` per line).
* The archive index: SQLite from several processes (WAL journaling, ``BEGIN IMMEDIATE`` with a
  busy timeout); a connection notices another's commits (``PRAGMA data_version``).
* Storage commitment reports: a report (N-EVENT-REPORT) that arrives at a worker where no
  request awaits its Transaction UID is offered to the other workers (through the supervisor)
  before it is refused (:attr:`asyncdicom.correlation.Correlator.elsewhere`).
* Logs: every event of a worker carries ``worker`` (1 to N).

**Stopping.**  :meth:`WorkerGroup.close`, cancelling :func:`serve_workers`, or SIGINT /
SIGTERM to any worker (Ctrl-C reaches them all) stops every worker gracefully: it stops
accepting, lets the associations in progress end for up to ``drain_timeout`` seconds, cancels
those left, closes its AE's components (an archive indexes what it has received), and exits.
A worker that ends on its own (a crash, killed) is reported (``worker_died``, an error) and
stops the server: the others drain, and :func:`serve_workers` raises :class:`WorkerDied`.
It is not restarted: a crash is a fault to look at, its associations are lost either way, and
a restart loop would hide it; a service manager (systemd's ``Restart=``) restarts the server
when that is wanted.

A program that calls :func:`serve_workers` must guard its start-up with
``if __name__ == "__main__":``: the workers are new processes that import the main module
(as for any :mod:`multiprocessing` program started with ``forkserver`` or ``spawn``).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
import pickle
import signal
import socket
import sys
from collections import Counter
from collections.abc import AsyncIterator, Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import anyio
from anyio.abc import SocketStream, TaskStatus

from .errors import WorkerDied
from .log import get_logger
from .refusal import Refusal, RefusalRule
from .users import Lockout, LockoutAttempt

if TYPE_CHECKING:
    from .ae import AE
    from .association import BaseAssociation

__all__ = [
    "TITLES_PER_WORKER",
    "WorkerDied",
    "WorkerGroup",
    "WorkerInfo",
    "default_workers",
    "serve_workers",
    "workers_server",
]

#: calling AE titles with open associations whose counts a worker publishes at most
TITLES_PER_WORKER = 1024
_TITLE_BYTES = 16
#: how long an offered commitment report waits for the other workers' answers
_OFFER_TIMEOUT = 10.0
#: how long the supervisor waits for a worker to start
_START_TIMEOUT = 60.0


@dataclass(frozen=True)
class WorkerInfo:
    """What a worker's factory is told about it."""

    #: 1 to :attr:`count`
    id: int
    #: how many workers serve the port
    count: int


@dataclass
class WorkerGroup:
    """Running workers, as :func:`serve_workers` reports them."""

    #: the bound TCP port
    port: int
    #: the workers' process ids, worker 1 first
    pids: list[int]
    #: ``"reuse_port"`` (a socket per worker) or ``"shared"`` (one inherited socket)
    mode: str
    #: set once every worker has stopped accepting after :meth:`close` (the associations in
    #: progress go on until they end or the drain timeout)
    draining: anyio.Event = field(repr=False, default_factory=anyio.Event)
    _stop: anyio.Event = field(repr=False, default_factory=anyio.Event)
    _drained: int = field(repr=False, default=0)

    def close(self) -> None:
        """Stop every worker gracefully: :func:`serve_workers` returns once they have
        drained."""
        self._stop.set()


def default_workers() -> int:
    """The number of cores this process may use (``--workers 0`` means this)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


#: builds a worker's AE: ``factory(WorkerInfo)`` -> an AE, an awaitable of one, or an async
#: context manager yielding one
Factory = Callable[[WorkerInfo], Any]


# ------------------------------------------------------------------ shared association counts


class _SharedCounts:
    """Shared memory: each worker's open associations, in total and per calling AE title."""

    def __init__(self, context: Any, workers: int) -> None:
        self.workers = workers
        self.lock = context.Lock()
        self.totals = context.RawArray("i", workers)
        self.titles = context.RawArray("c", workers * TITLES_PER_WORKER * _TITLE_BYTES)
        self.counts = context.RawArray("i", workers * TITLES_PER_WORKER)


def _title_key(title: str) -> bytes:
    return title.encode("latin-1", "replace")[:_TITLE_BYTES].ljust(_TITLE_BYTES, b" ")


def _active(ae: AE) -> list[BaseAssociation]:
    """``ae``'s associations still in use (as ``AE._over_limit`` counts them)."""
    return ae.active_associations()


class _WorkerLimits:
    """:class:`asyncdicom.ae.AssociationLimits` over :class:`_SharedCounts`, for one worker."""

    def __init__(self, shared: _SharedCounts, index: int) -> None:
        self._shared = shared
        self._index = index

    def _others(self, key: bytes | None) -> tuple[int, int]:
        """(open associations, and those of the calling title ``key``) of the other workers;
        call with the lock held."""
        shared = self._shared
        total = 0
        for_title = 0
        size = TITLES_PER_WORKER * _TITLE_BYTES
        for w in range(shared.workers):
            if w == self._index:
                continue
            total += shared.totals[w]
            if key is None:
                continue
            region = shared.titles[w * size : (w + 1) * size]
            at = region.find(key)
            while at >= 0 and at % _TITLE_BYTES:
                at = region.find(key, at + 1)
            if at >= 0:
                for_title += shared.counts[w * TITLES_PER_WORKER + at // _TITLE_BYTES]
        return total, for_title

    def _publish(self, total: int, titles: Counter[str] | None) -> None:
        """Write this worker's counts; call with the lock held."""
        shared = self._shared
        shared.totals[self._index] = total
        if titles is None:
            return
        size = TITLES_PER_WORKER * _TITLE_BYTES
        keys = bytearray(size)
        base = self._index * TITLES_PER_WORKER
        for slot in range(TITLES_PER_WORKER):
            shared.counts[base + slot] = 0
        for slot, (title, count) in enumerate(titles.most_common(TITLES_PER_WORKER)):
            keys[slot * _TITLE_BYTES : (slot + 1) * _TITLE_BYTES] = _title_key(title)
            shared.counts[base + slot] = count
        shared.titles[self._index * size : (self._index + 1) * size] = bytes(keys)

    @staticmethod
    def _titles(active: Sequence[BaseAssociation]) -> Counter[str]:
        from .protocol.upper_layer import Role

        return Counter(
            a.calling_ae_title
            for a in active
            if a.role is Role.ACCEPTOR and a.calling_ae_title is not None
        )

    def refusal(
        self, ae: AE, active: Sequence[BaseAssociation], calling: str, *, reserve: bool
    ) -> Refusal | None:
        """See :class:`asyncdicom.ae.AssociationLimits`."""
        cfg = ae.config
        per_ae = cfg.max_associations_per_calling_ae
        key = _title_key(calling) if per_ae is not None else None
        with self._shared.lock:
            others, others_title = self._others(key)
            total = others + len(active)
            if total >= cfg.max_associations:
                return Refusal(
                    RefusalRule.MAX_ASSOCIATIONS,
                    f"{total} associations open (all workers), the limit is {cfg.max_associations}",
                )
            titles = self._titles(active) if per_ae is not None else None
            if (
                per_ae is not None
                and titles is not None
                and (others_title + titles[calling] >= per_ae)
            ):
                return Refusal(
                    RefusalRule.MAX_ASSOCIATIONS_PER_CALLING_AE,
                    f"{calling!r} has {per_ae} associations open (all workers), the limit "
                    "per calling AE title",
                )
            if reserve:
                if titles is not None:
                    titles[calling] += 1
                self._publish(len(active) + 1, titles)
        return None

    def republish(self, ae: AE) -> None:
        """After an association ended: this worker's counts again."""
        active = _active(ae)
        per_ae = ae.config.max_associations_per_calling_ae
        with self._shared.lock:
            self._publish(len(active), self._titles(active) if per_ae is not None else None)


# ------------------------------------------------------------------ the control channel


class _Channel:
    """Length-prefixed pickled messages over a stream socket between a worker and the
    supervisor (both ends are this package: the data is trusted)."""

    def __init__(self, stream: SocketStream) -> None:
        self._stream = stream
        self._buffer = bytearray()
        send, receive = anyio.create_memory_object_stream[bytes](math.inf)
        self._queue = send
        self._outgoing = receive

    def post(self, message: tuple[Any, ...]) -> None:
        """Queue ``message`` (sent in order by :meth:`run_sender`); never blocks."""
        data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
        with contextlib.suppress(anyio.ClosedResourceError, anyio.BrokenResourceError):
            self._queue.send_nowait(len(data).to_bytes(4, "big") + data)

    async def send(self, message: tuple[Any, ...]) -> None:
        """Send ``message`` now (when :meth:`run_sender` no longer runs)."""
        data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
        with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            await self._stream.send(len(data).to_bytes(4, "big") + data)

    async def run_sender(self) -> None:
        """Send what :meth:`post` queued, until the channel closes."""
        async with self._outgoing:
            async for data in self._outgoing:
                try:
                    await self._stream.send(data)
                except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                    return

    async def receive(self) -> tuple[Any, ...]:
        """The next message; ``anyio.EndOfStream`` when the other end is gone."""
        while True:
            if len(self._buffer) >= 4:
                size = int.from_bytes(self._buffer[:4], "big")
                if len(self._buffer) >= 4 + size:
                    data = bytes(self._buffer[4 : 4 + size])
                    del self._buffer[: 4 + size]
                    message: tuple[Any, ...] = pickle.loads(data)
                    return message
            try:
                chunk = await self._stream.receive()
            except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                raise anyio.EndOfStream from None
            self._buffer += chunk

    async def aclose(self) -> None:
        self._queue.close()
        with contextlib.suppress(OSError, anyio.BrokenResourceError):
            await self._stream.aclose()


async def _open_channel(sock: socket.socket) -> _Channel:
    sock.setblocking(False)
    return _Channel(await SocketStream.from_socket(sock))


# ------------------------------------------------------------------ worker side


class _Calls:
    """The worker's requests to the supervisor that await an answer."""

    def __init__(self, channel: _Channel) -> None:
        self.channel = channel
        self._next = 0
        self._waiting: dict[int, tuple[anyio.Event, list[Any]]] = {}

    async def call(self, kind: str, *args: Any) -> Any:
        self._next += 1
        ident = self._next
        event = anyio.Event()
        box: list[Any] = []
        self._waiting[ident] = (event, box)
        try:
            self.channel.post((kind, ident, *args))
            await event.wait()
        finally:
            self._waiting.pop(ident, None)
        if not box:
            raise WorkerDied("the supervisor is gone")
        return box[0]

    def answer(self, ident: int, value: Any) -> None:
        found = self._waiting.get(ident)
        if found is not None:
            found[1].append(value)
            found[0].set()

    def fail_all(self) -> None:
        for event, _box in self._waiting.values():
            event.set()


class _RemoteLockout(Lockout):
    """A worker's :class:`~asyncdicom.users.Lockout`: the record is the supervisor's."""

    def __init__(self, local: Lockout, calls: _Calls) -> None:
        super().__init__(local.max_failures, local.window, local.duration, max_keys=local.max_keys)
        self._calls = calls
        self._locked: dict[tuple[str | None, str | None], tuple[str, ...]] = {}

    async def admit(self, user: str | None, host: str | None) -> LockoutAttempt | None:
        attempt, locked = await self._calls.call("admit", user, host)
        if attempt is None:
            if len(self._locked) > 1024:
                self._locked.clear()
            self._locked[(user, host)] = tuple(locked)
        return attempt  # type: ignore[no-any-return]

    def locked_by(self, user: str | None = None, host: str | None = None) -> tuple[str, ...]:
        return self._locked.pop((user, host), ())

    def finish(self, attempt: LockoutAttempt, *, accepted: bool | None) -> tuple[str, ...]:
        # the supervisor logs the lock-out this failure starts, if any
        self._calls.channel.post(("finish", attempt, accepted))
        return ()


class _WorkerLogField(logging.Filter):
    """Adds ``worker`` to every event of the ``asyncdicom`` logger in a worker process."""

    def __init__(self, worker: int) -> None:
        super().__init__()
        self.worker = worker

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, dict):
            record.msg.setdefault("worker", self.worker)
        return True


@dataclass
class _Spec:
    """What a worker process is given (pickled by :mod:`multiprocessing`)."""

    factory: Factory
    info: WorkerInfo
    family: int
    address: tuple[Any, ...]
    shared_socket: socket.socket | None
    control: socket.socket
    counts: _SharedCounts
    backend: str
    drain_timeout: float
    setup: Callable[[], object] | None
    backlog: int


def _listening_socket(
    family: int, address: tuple[Any, ...], *, reuse_port: bool, listen: bool, backlog: int
) -> socket.socket:
    """A TCP socket bound to ``address`` (with ``SO_REUSEPORT`` if ``reuse_port``), listening
    if ``listen``."""
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        if os.name == "posix":  # as transport.listen (a port in TIME_WAIT is free)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(address)
        if listen:
            sock.listen(backlog)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def _worker_main(spec: _Spec) -> None:
    """A worker process's entry point."""
    if spec.setup is not None:
        spec.setup()
    logging.getLogger("asyncdicom").addFilter(_WorkerLogField(spec.info.id))
    with contextlib.suppress(KeyboardInterrupt):
        anyio.run(_worker, spec, backend=spec.backend)


async def _worker(spec: _Spec) -> None:
    from .correlation import Correlator

    log = get_logger()
    channel = await _open_channel(spec.control)
    calls = _Calls(channel)
    stop = anyio.Event()
    async with anyio.create_task_group() as outer:
        outer.start_soon(channel.run_sender)
        async with contextlib.AsyncExitStack() as stack:
            made = spec.factory(spec.info)
            if hasattr(made, "__aenter__"):
                ae: AE = await stack.enter_async_context(made)
            elif hasattr(made, "__await__"):
                ae = await made
            else:
                ae = made
            limits = _WorkerLimits(spec.counts, spec.info.id - 1)
            ae.association_limits = limits
            _republish_on_end(ae, limits)
            if ae.identity_lockout is not None:
                channel.post(
                    (
                        "lockout",
                        ae.identity_lockout.max_failures,
                        ae.identity_lockout.window,
                        ae.identity_lockout.duration,
                        ae.identity_lockout.max_keys,
                    )
                )
                ae.identity_lockout = _RemoteLockout(ae.identity_lockout, calls)
            commitments: Correlator[Any] | None
            try:
                commitments = ae.commitments
            except LookupError:
                commitments = None
            if commitments is not None:
                commitments.elsewhere = functools.partial(_offer, calls)
            if spec.shared_socket is not None:
                sock = spec.shared_socket
            else:
                sock = _listening_socket(
                    spec.family, spec.address, reuse_port=True, listen=True, backlog=spec.backlog
                )
            done = anyio.Event()

            async def run_server(*, task_status: TaskStatus[Any]) -> None:
                try:
                    await ae.serve(sock=sock, task_status=task_status)
                finally:
                    done.set()

            async with anyio.create_task_group() as tg:
                server = await tg.start(run_server)
                tg.start_soon(_control_loop, channel, calls, commitments, stop)
                await tg.start(_signals, stop, channel)
                channel.post(("ready", os.getpid()))
                log.debug("worker_ready", pid=os.getpid())
                await stop.wait()
                await server.stop_listening()
                channel.post(("draining",))
                open_now = len(server.associations)
                if open_now:
                    log.info("worker_draining", associations=open_now)
                with anyio.move_on_after(spec.drain_timeout):
                    await done.wait()
                tg.cancel_scope.cancel()
        channel.post(("stopped",))
        await channel.aclose()
        outer.cancel_scope.cancel()


def _republish_on_end(ae: AE, limits: _WorkerLimits) -> None:
    from .hooks import HookEvent

    def ended(event: HookEvent, association: Any, **data: Any) -> None:
        limits.republish(ae)

    ae.hooks.add(HookEvent.RELEASE_ANSWERED, ended)
    ae.hooks.add(HookEvent.CONNECTION_CLOSED, ended)
    ae.hooks.add(HookEvent.ASSOCIATION_ABORTED, ended)


async def _offer(calls: _Calls, key: Hashable, value: Any) -> bool:
    try:
        return bool(await calls.call("offer", key, value))
    except WorkerDied:
        return False


async def _control_loop(
    channel: _Channel, calls: _Calls, commitments: Any, stop: anyio.Event
) -> None:
    try:
        while True:
            message = await channel.receive()
            kind = message[0]
            if kind == "reply":
                calls.answer(message[1], message[2])
            elif kind == "offer":
                _ident, key, value = message[1:]
                taken = commitments is not None and commitments.deliver(key, value, keep=False)
                channel.post(("offered", _ident, taken))
            elif kind == "stop":
                stop.set()
    except anyio.EndOfStream:
        calls.fail_all()
        stop.set()  # the supervisor is gone: stop too


async def _signals(
    stop: anyio.Event,
    channel: _Channel,
    *,
    task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """SIGINT or SIGTERM to a worker (Ctrl-C reaches every process of the group) stops the
    whole server gracefully: the supervisor is told first.  Started (``task_group.start``)
    once the signals are caught: a worker says it is ready only then, or a signal in between
    would end it with Python's default KeyboardInterrupt."""
    try:
        receiver = anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM)
    except NotImplementedError:  # pragma: no cover - not on Windows
        task_status.started()
        return
    with receiver as signals:
        task_status.started()
        async for _ in signals:
            channel.post(("signalled",))
            stop.set()
            return


# ------------------------------------------------------------------ supervisor side


@dataclass
class _Worker:
    info: WorkerInfo
    process: Any
    channel: _Channel
    ready: anyio.Event = field(default_factory=anyio.Event)
    gone: anyio.Event = field(default_factory=anyio.Event)
    pid: int = 0


class _Supervisor:
    def __init__(self, workers: list[_Worker], group: WorkerGroup) -> None:
        self.workers = workers
        self.group = group
        self.lockout: Lockout | None = None
        self.stopping = False
        self.died = anyio.Event()
        self.dead: list[_Worker] = []
        self._offers: dict[int, tuple[anyio.Event, list[bool], int]] = {}
        self._next_offer = 0
        self.log = get_logger(worker="supervisor")

    async def read(self, worker: _Worker, tg: Any) -> None:
        try:
            while True:
                message = await worker.channel.receive()
                self.handle(worker, message, tg)
        except anyio.EndOfStream:
            pass
        worker.gone.set()
        if not self.stopping:
            self.dead.append(worker)
            self.died.set()

    def handle(self, worker: _Worker, message: tuple[Any, ...], tg: Any) -> None:
        kind = message[0]
        if kind == "ready":
            worker.pid = int(message[1])
            worker.ready.set()
        elif kind == "signalled":
            self.stopping = True  # its end is no death: the whole server stops
            self.group._stop.set()
        elif kind == "draining":
            self.group._drained += 1
            if self.group._drained >= len(self.workers):
                self.group.draining.set()
        elif kind == "lockout":
            if self.lockout is None:
                failures, window, duration, keys = message[1:]
                self.lockout = Lockout(failures, window, duration, max_keys=keys)
        elif kind == "admit":
            tg.start_soon(self._admit, worker, *message[1:])
        elif kind == "finish":
            self._finish(*message[1:])
        elif kind == "offer":
            tg.start_soon(self._offer, worker, *message[1:])
        elif kind == "offered":
            found = self._offers.get(message[1])
            if found is not None:
                event, answers, expected = found
                answers.append(bool(message[2]))
                if any(answers) or len(answers) >= expected:
                    event.set()

    async def _admit(self, worker: _Worker, ident: int, user: str | None, host: str | None) -> None:
        lockout = self.lockout
        if lockout is None:  # pragma: no cover - a worker says "lockout" before it serves
            worker.channel.post(("reply", ident, (None, ("address",))))
            return
        attempt = await lockout.admit(user, host)
        locked = lockout.locked_by(user, host) if attempt is None else ()
        worker.channel.post(("reply", ident, (attempt, locked)))

    def _finish(self, attempt: LockoutAttempt, accepted: bool | None) -> None:
        if self.lockout is None:
            return
        now_locked = self.lockout.finish(attempt, accepted=accepted)
        if now_locked:
            self.log.warning(
                "identity_lockout_started",
                locked=list(now_locked),
                user=attempt.user,
                host=attempt.host,
                failures=self.lockout.max_failures,
                window=self.lockout.window,
                duration=self.lockout.duration,
            )

    async def _offer(self, origin: _Worker, ident: int, key: Hashable, value: Any) -> None:
        others = [w for w in self.workers if w is not origin and not w.gone.is_set()]
        taken = False
        if others:
            self._next_offer += 1
            offer = self._next_offer
            event = anyio.Event()
            answers: list[bool] = []
            self._offers[offer] = (event, answers, len(others))
            try:
                for other in others:
                    other.channel.post(("offer", offer, key, value))
                with anyio.move_on_after(_OFFER_TIMEOUT):
                    await event.wait()
            finally:
                self._offers.pop(offer, None)
            taken = any(answers)
        origin.channel.post(("reply", ident, taken))


def _resolve(host: str | None, port: int) -> tuple[int, tuple[Any, ...]]:
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, _kind, _proto, _name, address = infos[0]
    return int(family), tuple(address)


def _context(factory: Any) -> Any:
    """The multiprocessing context of the workers: ``forkserver`` where there is one (one
    fresh interpreter imports this module and the factory's, then forks each worker from that
    clean, single-threaded state), otherwise ``spawn`` (a fresh interpreter per worker)."""
    import multiprocessing

    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    preload = [__name__]
    module = getattr(getattr(factory, "func", factory), "__module__", None)
    if module and module != "__main__":
        preload.append(module)
    context.set_forkserver_preload(preload)
    return context


async def serve_workers(
    factory: Factory,
    host: str | None = "0.0.0.0",
    port: int = 11112,
    *,
    workers: int = 2,
    reuse_port: bool | None = None,
    drain_timeout: float = 10.0,
    setup: Callable[[], object] | None = None,
    backend: str | None = None,
    backlog: int = 1024,
    task_status: TaskStatus[WorkerGroup] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``host:port`` with ``workers`` processes, each running the AE ``factory`` builds
    (see the module docstring), until cancelled; then stop them gracefully.

    ``reuse_port`` (default: where ``SO_REUSEPORT`` exists, i.e. Linux and the BSDs): a
    listening socket per worker, else one shared.  ``setup`` (picklable, e.g. a
    :func:`functools.partial`) runs first in each worker, e.g. to configure logging.
    ``backend``: the workers' event loop, ``"asyncio"`` or ``"trio"`` (default: this one's).
    Use ``group = await task_group.start(serve_workers, factory, host, port)`` to learn the
    bound port and the workers' process ids (:class:`WorkerGroup`).

    Raises:
        WorkerDied: a worker could not start, or ended without being asked to (the others
            have been stopped).
        OSError: the port cannot be bound.
        ValueError: ``workers`` is less than 1.
    """

    import sniffio

    if workers < 1:
        raise ValueError(f"workers must be at least 1, not {workers}")
    if reuse_port is None:
        reuse_port = sys.platform.startswith("linux") or "bsd" in sys.platform
    if reuse_port and not hasattr(socket, "SO_REUSEPORT"):
        raise ValueError("SO_REUSEPORT is not available here: use reuse_port=False")
    family, address = await anyio.to_thread.run_sync(_resolve, host, port)
    # the port is bound here first: port 0 gets its number, and a port in use fails at once
    anchor = _listening_socket(
        family, address, reuse_port=reuse_port, listen=not reuse_port, backlog=backlog
    )
    bound = anchor.getsockname()
    address = (address[0], bound[1], *address[2:])
    context = _context(factory)
    counts = _SharedCounts(context, workers)
    chosen = backend or sniffio.current_async_library()
    group = WorkerGroup(int(bound[1]), [], "reuse_port" if reuse_port else "shared")
    supervisor_log = get_logger(worker="supervisor")
    started: list[_Worker] = []
    try:
        for n in range(1, workers + 1):
            mine, theirs = socket.socketpair()
            info = WorkerInfo(n, workers)
            spec = _Spec(
                factory=factory,
                info=info,
                family=family,
                address=address,
                shared_socket=None if reuse_port else anchor,
                control=theirs,
                counts=counts,
                backend=chosen,
                drain_timeout=drain_timeout,
                setup=setup,
                backlog=backlog,
            )
            process = context.Process(
                target=_worker_main, args=(spec,), name=f"asyncdicom-worker-{n}", daemon=True
            )
            await anyio.to_thread.run_sync(process.start)
            theirs.close()
            started.append(_Worker(info, process, await _open_channel(mine)))
        supervisor = _Supervisor(started, group)
        failure: WorkerDied | None = None
        try:
            async with anyio.create_task_group() as tg:
                for worker in started:
                    tg.start_soon(worker.channel.run_sender)
                    tg.start_soon(supervisor.read, worker, tg)
                failure = await _all_ready(started)
                if failure is not None:
                    supervisor.stopping = True
                    tg.cancel_scope.cancel()
                    await anyio.sleep_forever()
                group.pids = [w.pid for w in started]
                supervisor_log.info(
                    "workers_ready", workers=workers, port=group.port, mode=group.mode
                )
                task_status.started(group)
                async with anyio.create_task_group() as waiting:
                    for event in (supervisor.died, group._stop):
                        waiting.start_soon(_cancel_when, event, waiting.cancel_scope)
                supervisor.stopping = True
                if supervisor.dead:
                    dead = supervisor.dead[0]
                    code = await _exit_code(dead)
                    supervisor_log.error(
                        "worker_died", died=dead.info.id, pid=dead.pid, exit_status=code
                    )
                    failure = WorkerDied(
                        f"worker {dead.info.id} (pid {dead.pid}) ended with exit status {code}: "
                        "the server stopped"
                    )
                for worker in started:
                    worker.channel.post(("stop",))
                with anyio.move_on_after(drain_timeout + 10.0):
                    for worker in started:
                        await worker.gone.wait()
                tg.cancel_scope.cancel()
        finally:
            supervisor.stopping = True
    finally:
        with anyio.CancelScope(shield=True):
            await _stop(started, drain_timeout)
            for worker in started:
                await worker.channel.aclose()
        anchor.close()
    if failure is not None:
        raise failure


async def _cancel_when(event: anyio.Event, scope: anyio.CancelScope) -> None:
    await event.wait()
    scope.cancel()


async def _all_ready(started: list[_Worker]) -> WorkerDied | None:
    """Wait for every worker to say it serves; the error if one ends first or takes too
    long."""
    with anyio.move_on_after(_START_TIMEOUT):
        for worker in started:
            async with anyio.create_task_group() as waiting:

                async def watch(w: _Worker = worker) -> None:
                    await w.gone.wait()
                    waiting.cancel_scope.cancel()

                async def ready(w: _Worker = worker) -> None:
                    await w.ready.wait()
                    waiting.cancel_scope.cancel()

                waiting.start_soon(watch)
                waiting.start_soon(ready)
            if not worker.ready.is_set():
                return WorkerDied(
                    f"worker {worker.info.id} could not start "
                    f"(exit status {await _exit_code(worker)})"
                )
        return None
    return WorkerDied(f"the workers did not start within {_START_TIMEOUT:g} s")


async def _exit_code(worker: _Worker) -> int | None:
    await anyio.to_thread.run_sync(worker.process.join, 5.0)
    code: int | None = worker.process.exitcode
    return code


async def _stop(workers: list[_Worker], drain_timeout: float) -> None:
    """Ask every worker to stop, wait for them (``drain_timeout`` and a margin), kill the
    ones left."""
    for worker in workers:
        if worker.process.is_alive():
            await worker.channel.send(("stop",))
    deadline = anyio.current_time() + drain_timeout + 10.0
    for worker in workers:
        left = max(0.1, deadline - anyio.current_time())
        await anyio.to_thread.run_sync(worker.process.join, left)
        if worker.process.is_alive():
            worker.process.kill()
            await anyio.to_thread.run_sync(worker.process.join, 5.0)


@contextlib.asynccontextmanager
async def workers_server(
    factory: Factory, host: str | None = "127.0.0.1", port: int = 0, **options: Any
) -> AsyncIterator[WorkerGroup]:
    """Run :func:`serve_workers` in the background for the duration of the block (the workers
    are stopped gracefully at its end); ``options`` as :func:`serve_workers`'s.

    Raises:
        WorkerDied: a worker could not start.
        OSError: the port cannot be bound.
    """
    failure: BaseException | None = None
    async with anyio.create_task_group() as tg:
        try:
            group: WorkerGroup = await tg.start(
                functools.partial(serve_workers, factory, host, port, **options)
            )
        except BaseException as exc:
            failure = exc
        else:
            try:
                yield group
            except BaseException as exc:
                failure = exc
            group.close()  # the workers drain; serve_workers returns when they are gone
    if failure is not None:
        raise failure
