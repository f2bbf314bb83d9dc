"""The cross-association correlator (both backends)."""

from __future__ import annotations

import anyio
import pytest

from asyncdicom.correlation import Correlator

pytestmark = pytest.mark.anyio


async def test_delivery_wakes_the_waiter() -> None:
    c: Correlator[str] = Correlator()
    with c.expect("tx1") as pending:
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: _deliver_later(c, "tx1", "result"))
            assert await pending.wait(timeout=5) == "result"
    assert c.expected() == frozenset()


async def _deliver_later(c: Correlator[str], key: str, value: str) -> None:
    await anyio.wait_all_tasks_blocked()
    assert c.deliver(key, value)


async def test_early_delivery_is_kept() -> None:
    c: Correlator[int] = Correlator()
    assert not c.deliver("k", 7)
    with c.expect("k") as pending:
        assert pending.done
        assert await pending.wait() == 7


async def test_timeout() -> None:
    c: Correlator[int] = Correlator()
    with c.expect("never") as pending, pytest.raises(TimeoutError):
        await pending.wait(timeout=0.05)


async def test_keys_are_separate_and_unique() -> None:
    c: Correlator[int] = Correlator()
    with c.expect(("commit", "1")) as a, c.expect(("commit", "2")) as b:
        c.deliver(("commit", "2"), 2)
        assert b.done and not a.done
        with pytest.raises(KeyError), c.expect(("commit", "1")):
            pass


async def test_early_values_are_bounded() -> None:
    c: Correlator[int] = Correlator(max_early=2)
    for i in range(5):
        c.deliver(i, i)
    with c.expect(0) as p0, c.expect(4) as p4:
        assert not p0.done and p4.done
