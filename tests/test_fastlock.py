"""``FastLock``: the association's write lock on asyncio (first come, first served; a cancelled
waiter never keeps the lock nor loses it for the others)."""

from __future__ import annotations

import anyio
import anyio.lowlevel
import pytest

from asyncdicom.association.engine import FastLock

pytestmark = pytest.mark.anyio

GUARD = 10.0


async def _turns(n: int = 20) -> None:
    """Let the other tasks run a few times (no clock)."""
    for _ in range(n):
        await anyio.lowlevel.checkpoint()


async def test_one_holder_at_a_time_in_arrival_order() -> None:
    lock = FastLock()
    order: list[str] = []
    inside = [0]

    async def user(name: str) -> None:
        async with lock:
            inside[0] += 1
            assert inside[0] == 1, "two tasks hold the lock"
            order.append(name)
            await _turns(3)
            inside[0] -= 1

    with anyio.fail_after(GUARD):
        async with anyio.create_task_group() as tg:
            await lock.__aenter__()  # held: every user below has to queue
            for name in "abcde":
                tg.start_soon(user, name)
                await _turns()  # each one queued before the next arrives
            assert lock.locked() and order == []
            await lock.__aexit__(None, None, None)
    assert order == list("abcde")
    assert not lock.locked()


async def test_a_cancelled_waiter_leaves_the_queue() -> None:
    lock = FastLock()
    got: list[str] = []
    scope = anyio.CancelScope()

    async def user(name: str) -> None:
        async with lock:
            got.append(name)

    async def cancelled_user() -> None:
        with scope:
            await user("cancelled")

    with anyio.fail_after(GUARD):
        async with anyio.create_task_group() as tg:
            await lock.__aenter__()
            tg.start_soon(user, "first")
            await _turns()
            tg.start_soon(cancelled_user)
            await _turns()
            tg.start_soon(user, "last")
            await _turns()
            scope.cancel()
            await _turns()
            await lock.__aexit__(None, None, None)
    assert got == ["first", "last"]
    assert not lock.locked()


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_ownership_handed_to_a_cancelled_waiter_is_passed_on(anyio_backend: str) -> None:
    # asyncio can cancel a task after the lock was handed to it but before it runs again
    # (Task.cancel between the wake-up and the task's next step): it must pass the lock on
    import asyncio

    lock = FastLock()
    got: list[str] = []

    async def user(name: str) -> None:
        async with lock:
            got.append(name)

    with anyio.fail_after(GUARD):
        await lock.__aenter__()
        doomed = asyncio.get_running_loop().create_task(user("doomed"))
        await _turns()
        nxt = asyncio.get_running_loop().create_task(user("next"))
        await _turns()
        await lock.__aexit__(None, None, None)  # handed to "doomed"...
        doomed.cancel()  # ...which is cancelled before it runs
        await asyncio.gather(doomed, nxt, return_exceptions=True)
    assert doomed.cancelled()
    assert got == ["next"]
    assert not lock.locked()
