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

One correlator per process is usually enough (:data:`registry`); keys are any hashable values,
so a tuple such as ``("storage-commitment", uid)`` keeps kinds apart.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Hashable, Iterator
from contextlib import contextmanager
from typing import Any, Generic, TypeVar

import anyio

__all__ = ["Correlator", "Pending", "registry"]

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


class Correlator(Generic[V]):
    """Hands values delivered under a key to the task that expects that key.

    A value delivered before anyone expects its key is kept (up to ``max_early``) and handed
    over as soon as the key is expected, so a fast peer cannot win a race against the waiter.
    """

    def __init__(self, *, max_early: int = 1024) -> None:
        self._waiting: dict[Hashable, Pending[V]] = {}
        self._early: dict[Hashable, V] = {}
        self._max_early = max_early
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

    def expected(self) -> frozenset[Hashable]:
        """Keys currently awaited."""
        return frozenset(self._waiting)


#: the process-wide correlator
registry: Correlator[Any] = Correlator()
