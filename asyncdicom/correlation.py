"""Correlating events across associations.

Some DICOM exchanges finish on a different association than the one that started them: a
Storage Commitment result (N-EVENT-REPORT, PS3.4 Annex J) usually arrives on a new association
opened by the SCP, matched to the request by its Transaction UID; a C-MOVE's sub-operations
arrive on associations the move SCP opens.  A :class:`Correlator` lets the task that started the
exchange wait for the result whichever association delivers it::

    with correlator.expect(transaction_uid) as pending:
        await assoc.request_commitment(...)          # on association A
        result = await pending.wait(timeout=600)     # delivered from association B

    # in the N-EVENT-REPORT handler, on association B:
    correlator.deliver(transaction_uid, result)

An exchange that delivers many values under one key (the instances of a C-MOVE, matched by Move
Originator AE Title and Message ID, PS3.7 9.3.1.1) subscribes instead: :meth:`Correlator.publish`
hands each value to the :class:`Subscription`, waiting while its bounded buffer is full, so a
slow consumer slows the deliverers down rather than filling memory::

    with correlator.subscribe(("C-MOVE", "MYAE", message_id), capacity=16) as subscription:
        ...                                          # C-MOVE-RQ on association A
        value = await subscription.get()             # published from association B

    # in the C-STORE handler, on association B:
    await correlator.publish(("C-MOVE", originator_aet, originator_id), instance)

Who uses it: Storage Commitment (:attr:`asyncdicom.AE.commitments`, one value per Transaction
UID) and retrieving to ourselves (:meth:`asyncdicom.Association.retrieve`, a subscription per
C-MOVE or C-GET).  One correlator per process is usually enough (:data:`registry`); keys are
any hashable values, so a tuple such as ``("storage-commitment", uid)`` keeps kinds apart.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Awaitable, Callable, Hashable, Iterator
from contextlib import contextmanager
from typing import Any, Generic, TypeVar

import anyio

__all__ = ["Correlator", "Pending", "Subscription", "registry"]

V = TypeVar("V")

_UNSET: Any = object()


class Pending(Generic[V]):
    """One awaited result."""

    __slots__ = ("_event", "_value", "key")

    def __init__(self, key: Hashable) -> None:
        self.key = key
        self._event = anyio.Event()
        self._value: V = _UNSET

    @property
    def done(self) -> bool:
        """True once a value was delivered."""
        return self._event.is_set()

    def _set(self, value: V) -> None:
        self._value = value
        self._event.set()

    async def wait(self, timeout: float | None = None) -> V:
        """The delivered value; ``TimeoutError`` after ``timeout`` seconds."""
        with anyio.fail_after(timeout):
            await self._event.wait()
        return self._value


class Subscription(Generic[V]):
    """The values published under one key, in order, with a bounded buffer (see
    :meth:`Correlator.subscribe`).  A publisher waits while ``capacity`` values are buffered;
    once :meth:`close` is called, publishing fails and waiting publishers are released."""

    __slots__ = ("_changed", "_items", "capacity", "closed", "key")

    def __init__(self, key: Hashable, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, not {capacity}")
        self.key = key
        self.capacity = capacity
        #: no more values are taken
        self.closed = False
        self._items: deque[V] = deque()
        self._changed = anyio.Event()

    def __len__(self) -> int:
        """How many values are buffered."""
        return len(self._items)

    def notify(self) -> None:
        """Wake whoever waits in :meth:`changed` (publishers, the consumer)."""
        event, self._changed = self._changed, anyio.Event()
        event.set()

    async def changed(self) -> None:
        """Return at the next change: a value published or taken, :meth:`close`, or a
        :meth:`notify` from elsewhere (a consumer waiting for values *and* something else
        has that something notify)."""
        await self._changed.wait()

    async def put(self, value: V) -> bool:
        """Buffer ``value``, waiting for room; False (value not taken) once closed."""
        while len(self._items) >= self.capacity and not self.closed:
            await self.changed()
        if self.closed:
            return False
        self._items.append(value)
        self.notify()
        return True

    def get_nowait(self) -> V:
        """The oldest buffered value.

        Raises:
            anyio.WouldBlock: nothing is buffered.
        """
        if not self._items:
            raise anyio.WouldBlock
        value = self._items.popleft()
        self.notify()
        return value

    async def get(self) -> V:
        """The oldest value, waiting for one.

        Raises:
            anyio.ClosedResourceError: closed with nothing buffered.
        """
        while True:
            if self._items:
                return self.get_nowait()
            if self.closed:
                raise anyio.ClosedResourceError
            await self.changed()

    def close(self) -> list[V]:
        """Take no more values; returns (and drops) those still buffered."""
        self.closed = True
        left = list(self._items)
        self._items.clear()
        self.notify()
        return left


class Correlator(Generic[V]):
    """Hands values delivered under a key to the task that expects that key.

    A value delivered before anyone expects its key is kept (up to ``max_early``) and handed
    over as soon as the key is expected, so a fast peer cannot win a race against the waiter.
    """

    def __init__(self, *, max_early: int = 1024) -> None:
        self._waiting: dict[Hashable, Pending[V]] = {}
        self._early: dict[Hashable, V] = {}
        self._max_early = max_early
        self._subscriptions: dict[Hashable, Subscription[V]] = {}
        #: offers a value no one here expects to other processes serving the same port (set
        #: by :mod:`asyncdicom.workers`): ``await elsewhere(key, value)`` -> True if taken
        self.elsewhere: Callable[[Hashable, V], Awaitable[bool]] | None = None

    @contextmanager
    def expect(self, key: Hashable) -> Iterator[Pending[V]]:
        """Register interest in ``key`` for the duration of the block."""
        if key in self._waiting:
            raise KeyError(f"{key!r} is already expected")
        pending: Pending[V] = Pending(key)
        if key in self._early:
            pending._set(self._early.pop(key))
        self._waiting[key] = pending
        try:
            yield pending
        finally:
            if self._waiting.get(key) is pending:
                del self._waiting[key]

    def deliver(self, key: Hashable, value: V, *, keep: bool = True) -> bool:
        """Hand ``value`` to whoever expects ``key``; True if someone did.  Else, with
        ``keep``, it is kept for a later :meth:`expect` (the oldest early value is dropped
        beyond ``max_early``); without, it is dropped."""
        pending = self._waiting.get(key)
        if pending is not None and not pending.done:
            pending._set(value)
            return True
        if not keep or self._max_early <= 0:
            return False
        if len(self._early) >= self._max_early:
            self._early.pop(next(iter(self._early)))
        self._early[key] = value
        return False

    async def deliver_anywhere(self, key: Hashable, value: V) -> bool:
        """:meth:`deliver` without keeping; when no one here expects ``key``, offer it to
        :attr:`elsewhere` (the other processes of a multi-process server); True if taken."""
        if self.deliver(key, value, keep=False):
            return True
        if self.elsewhere is None:
            return False
        return await self.elsewhere(key, value)

    @contextmanager
    def subscribe(self, key: Hashable, *, capacity: int = 16) -> Iterator[Subscription[V]]:
        """Take every value published (:meth:`publish`) under ``key`` for the duration of the block
        (at most ``capacity`` buffered: publishers wait beyond); closed when the block ends.

        Raises:
            KeyError: someone already subscribes to ``key``.
        """
        if key in self._subscriptions:
            raise KeyError(f"{key!r} is already subscribed to")
        subscription: Subscription[V] = Subscription(key, capacity)
        self._subscriptions[key] = subscription
        try:
            yield subscription
        finally:
            subscription.close()
            if self._subscriptions.get(key) is subscription:
                del self._subscriptions[key]

    def subscription(self, key: Hashable) -> Subscription[V] | None:
        """The open subscription to ``key``, if any."""
        subscription = self._subscriptions.get(key)
        return None if subscription is None or subscription.closed else subscription

    async def publish(self, key: Hashable, value: V) -> bool:
        """Hand ``value`` to the subscription to ``key``, waiting while its buffer is full;
        True if it was taken (False: nobody subscribes, or the subscription closed)."""
        subscription = self.subscription(key)
        if subscription is None:
            return False
        return await subscription.put(value)

    def expected(self) -> frozenset[Hashable]:
        """Keys currently awaited."""
        return frozenset(self._waiting)


#: the process-wide correlator
registry: Correlator[Any] = Correlator()
