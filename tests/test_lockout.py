"""Lock-out against password guessing (``asyncdicom.users.Lockout``), on the wire and alone.

The acceptor checks User Identity against a users file.  After five failed checks for one user
name, or from one address, within the window, attempts for that user or from that address are
refused for the lock-out period without being checked, with the same A-ASSOCIATE-RJ as a wrong
password.  Connections come from different loopback addresses (127.0.0.x) to tell the
per-user lock-out from the per-address one; the lock-out's clock is a fake one, moved by hand.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from test_access_control import GUARD, RJ_IDENTITY, accepted, password, rq, username

from asyncdicom import AE, HookEvent
from asyncdicom.protocol.codec import encode_pdu
from asyncdicom.protocol.negotiation import IdentityDecision
from asyncdicom.protocol.pdu import AssociateRQ, UserIdentityRQSubItem
from asyncdicom.users import Lockout, UserStore, identity_user_name

pytestmark = pytest.mark.anyio


class Clock:
    """A clock that moves only when told to."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def exchange_from(port: int, request: AssociateRQ, local_host: str = "127.0.0.1") -> bytes:
    """Send ``request`` from ``local_host``; the first whole PDU the acceptor answers."""
    with anyio.fail_after(GUARD):
        stream = await anyio.connect_tcp("127.0.0.1", port, local_host=local_host)
        async with stream:
            await stream.send(encode_pdu(request))
            data = bytearray()
            while len(data) < 6 or len(data) < 6 + struct.unpack_from(">I", data, 2)[0]:
                data += await stream.receive()
            return bytes(data[: 6 + struct.unpack_from(">I", data, 2)[0]])


class Scp:
    """An acceptor with a users file (alice, bob), a lock-out on a fake clock, and a count of
    the identity checks it really ran."""

    def __init__(self, users: Path, **lockout: Any) -> None:
        self.clock = Clock()
        self.lockout = Lockout(clock=self.clock, **lockout)
        self.checks = 0
        self.ae = AE("SCP", require_user_identity=True)
        store = UserStore.load(users)

        def counting(request: AssociateRQ, item: UserIdentityRQSubItem) -> IdentityDecision:
            self.checks += 1
            return store.check(item)

        self.ae.on_user_identity(counting, lockout=self.lockout)

    @asynccontextmanager
    async def serving(self) -> AsyncIterator[int]:
        async with self.ae.server("127.0.0.1", 0) as server:
            yield server.port


@pytest.fixture
def users(tmp_path: Path) -> Path:
    store = UserStore()
    store.add("alice", "correct horse")
    store.add("bob", "battery staple")
    path = tmp_path / "users.txt"
    store.save(path)
    return path


ALICE = password("alice", "correct horse")
BOB = password("bob", "battery staple")


def rejections(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    return [
        dict(r.msg)
        for r in caplog.records
        if isinstance(r.msg, dict) and r.msg.get("event") == "association_rejected"
    ]


# --------------------------------------------------------------------------- on the wire


async def test_sixth_attempt_with_the_right_password_is_refused_until_the_lockout_ends(
    users: Path, anyio_backend: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="asyncdicom")
    scp = Scp(users)
    async with scp.serving() as port:
        for _ in range(5):
            assert await exchange_from(port, rq(identity=password("alice", "wrong"))) == (
                RJ_IDENTITY
            )
        assert scp.checks == 5
        # locked out: the same bytes as a wrong password, and the password is not checked
        assert await exchange_from(port, rq(identity=ALICE)) == RJ_IDENTITY
        assert scp.checks == 5
        scp.clock.now += 59.9
        assert await exchange_from(port, rq(identity=ALICE)) == RJ_IDENTITY
        assert scp.checks == 5
        scp.clock.now += 0.2
        accepted(await exchange_from(port, rq(identity=ALICE)))
        assert scp.checks == 6
    logged = rejections(caplog)
    assert [e["rule"] for e in logged] == ["user_identity"] * 5 + ["locked_out"] * 2
    assert logged[-1]["detail"] == (
        "locked out after repeated failed identity checks (user 'alice' and address 127.0.0.1)"
    )
    assert {e["reason"] for e in logged} == {1}
    started = [r.msg for r in caplog.records if "identity_lockout_started" in r.getMessage()]
    assert len(started) == 1


async def test_lockout_per_address(users: Path, anyio_backend: str) -> None:
    """Five failures from one address, each for another user name: that address is locked out
    (even for a right password), other addresses and the user names are not."""
    scp = Scp(users)
    async with scp.serving() as port:
        for n in range(5):
            wrong = rq(identity=password(f"mallory{n}", "guess"))
            assert await exchange_from(port, wrong, "127.0.0.1") == RJ_IDENTITY
        assert await exchange_from(port, rq(identity=ALICE), "127.0.0.1") == RJ_IDENTITY
        assert scp.lockout.locked_by("alice", "127.0.0.1") == ("address",)
        accepted(await exchange_from(port, rq(identity=ALICE), "127.0.0.2"))
        scp.clock.now += 60.5
        accepted(await exchange_from(port, rq(identity=ALICE), "127.0.0.1"))
    assert scp.checks == 7


async def test_lockout_per_user(users: Path, anyio_backend: str) -> None:
    """Five failures for one user name from five addresses: that user is locked out from
    everywhere; other users from the same addresses are not."""
    scp = Scp(users)
    async with scp.serving() as port:
        for n in range(2, 7):
            wrong = rq(identity=password("alice", f"guess {n}"))
            assert await exchange_from(port, wrong, f"127.0.0.{n}") == RJ_IDENTITY
        assert await exchange_from(port, rq(identity=ALICE), "127.0.0.7") == RJ_IDENTITY
        # a user name alone (type 1) is refused too
        assert await exchange_from(port, rq(identity=username("alice")), "127.0.0.7") == (
            RJ_IDENTITY
        )
        accepted(await exchange_from(port, rq(identity=BOB), "127.0.0.2"))
        scp.clock.now += 61
        accepted(await exchange_from(port, rq(identity=ALICE), "127.0.0.8"))
    assert scp.checks == 7


async def test_failures_outside_the_window_do_not_add_up(users: Path, anyio_backend: str) -> None:
    scp = Scp(users, window=30)
    async with scp.serving() as port:
        for _ in range(4):
            assert await exchange_from(port, rq(identity=password("alice", "x"))) == RJ_IDENTITY
        scp.clock.now += 31
        assert await exchange_from(port, rq(identity=password("alice", "x"))) == RJ_IDENTITY
        accepted(await exchange_from(port, rq(identity=ALICE)))


async def test_a_successful_login_clears_the_users_failures(
    users: Path, anyio_backend: str
) -> None:
    scp = Scp(users)
    async with scp.serving() as port:
        for n in range(2, 6):
            wrong = rq(identity=password("alice", "x"))
            assert await exchange_from(port, wrong, f"127.0.0.{n}") == RJ_IDENTITY
        accepted(await exchange_from(port, rq(identity=ALICE), "127.0.0.6"))
        for n in range(7, 11):
            wrong = rq(identity=password("alice", "x"))
            assert await exchange_from(port, wrong, f"127.0.0.{n}") == RJ_IDENTITY
        # eight failures in the window, but only four since the success
        accepted(await exchange_from(port, rq(identity=ALICE), "127.0.0.11"))


async def test_parallel_guesses_get_no_more_tries_than_sequential_ones(
    anyio_backend: str,
) -> None:
    """Ten guesses sent at once: five are checked, the others wait for them and then find the
    user locked out."""
    ae = AE("SCP", require_user_identity=True)
    requested = 0
    all_requested = anyio.Event()
    checks = 0

    @ae.on_hook(HookEvent.ASSOCIATION_REQUESTED)
    def count(event: HookEvent, association: Any, **data: Any) -> None:
        nonlocal requested
        requested += 1
        if requested == 10:
            all_requested.set()

    async def slow_check(request: AssociateRQ, item: UserIdentityRQSubItem) -> IdentityDecision:
        nonlocal checks
        checks += 1
        await all_requested.wait()  # every request has arrived before any check ends
        return IdentityDecision(accepted=False)

    ae.on_user_identity(slow_check, lockout=Lockout(clock=Clock()))
    answers: list[bytes] = []
    async with ae.server("127.0.0.1", 0) as server:

        async def guess(n: int) -> None:
            request = rq(identity=password("alice", f"guess {n}"))
            answers.append(await exchange_from(server.port, request))

        with anyio.fail_after(GUARD):
            async with anyio.create_task_group() as tg:
                for n in range(10):
                    tg.start_soon(guess, n)
    assert answers == [RJ_IDENTITY] * 10
    assert checks == 5


async def test_token_identities_lock_out_by_address_only(anyio_backend: str) -> None:
    """A JWT has no user name: its failures count for the address, and the token is not
    kept as a key."""
    ae = AE("SCP", require_user_identity=True)
    lockout = Lockout(max_failures=2, clock=Clock())

    def refuse(request: AssociateRQ, item: UserIdentityRQSubItem) -> IdentityDecision:
        return IdentityDecision(accepted=item.primary_field == b"good.token")

    ae.on_user_identity(refuse, lockout=lockout)
    async with ae.server("127.0.0.1", 0) as server:
        bad = rq(identity=UserIdentityRQSubItem(5, False, b"bad.token"))
        good = rq(identity=UserIdentityRQSubItem(5, False, b"good.token"))
        assert await exchange_from(server.port, bad) == RJ_IDENTITY
        assert await exchange_from(server.port, bad) == RJ_IDENTITY
        assert await exchange_from(server.port, good) == RJ_IDENTITY
        accepted(await exchange_from(server.port, good, "127.0.0.2"))
    assert lockout.locked_by(None, "127.0.0.1") == ("address",)
    assert len(lockout) == 1


# --------------------------------------------------------------------------- Lockout alone


async def test_tracked_keys_are_capped_oldest_first(anyio_backend: str) -> None:
    clock = Clock()
    lockout = Lockout(max_keys=100, clock=clock)
    for n in range(1000):
        attempt = await lockout.admit(f"user{n}", f"10.0.{n // 256}.{n % 256}")
        assert attempt is not None
        lockout.finish(attempt, accepted=False)
        assert len(lockout) <= 100
        clock.now += 0.001
    # the most recent are kept, the oldest forgotten
    keys = list(lockout._records)
    assert keys[-1] == "host\0" + "10.0.3.231" and keys[-2] == "user\0" + "user999"
    assert not any(key.endswith("user0") for key in keys)


async def test_default_cap_holds_under_a_flood_of_names(anyio_backend: str) -> None:
    lockout = Lockout(clock=Clock())
    assert lockout.max_keys == 10_000
    for n in range(15_000):
        attempt = await lockout.admit(f"u{n}" * 50, None)
        assert attempt is not None
        lockout.finish(attempt, accepted=False)
    assert len(lockout) == 10_000
    # a user name of any length is tracked under a key of bounded length
    attempt = await lockout.admit("x" * 100_000, None)
    assert attempt is not None and max(len(k) for k in attempt.keys) < 100
    lockout.finish(attempt, accepted=None)


async def test_lockout_bookkeeping(anyio_backend: str) -> None:
    clock = Clock()
    lockout = Lockout(max_failures=2, window=10, duration=20, clock=clock)
    # a success leaves nothing behind
    attempt = await lockout.admit("alice", "10.0.0.1")
    assert attempt is not None
    assert lockout.finish(attempt, accepted=True) == ()
    assert len(lockout) == 0
    # two failures lock both out
    for expected in [(), ("user", "address")]:
        attempt = await lockout.admit("alice", "10.0.0.1")
        assert attempt is not None
        assert lockout.finish(attempt, accepted=False) == expected
    assert await lockout.admit("alice", "10.0.0.9") is None
    assert await lockout.admit("bob", "10.0.0.1") is None
    # attempts during the lock-out do not extend it
    clock.now += 20
    assert lockout.locked_by("alice", "10.0.0.1") == ()
    attempt = await lockout.admit("alice", "10.0.0.1")
    assert attempt is not None
    # a cancelled check counts neither way
    lockout.finish(attempt, accepted=None)
    assert len(lockout) == 0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_failures": 0}, "max_failures"),
        ({"window": 0}, "window"),
        ({"duration": float("inf")}, "duration"),
        ({"max_keys": 1}, "max_keys"),
    ],
)
def test_lockout_settings_are_validated(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Lockout(**kwargs)


def test_identity_user_name_never_reads_credentials() -> None:
    assert identity_user_name(password("alice", "secret")) == "alice"
    assert identity_user_name(username("bob")) == "bob"
    assert identity_user_name(UserIdentityRQSubItem(5, False, b"eyJ.token.sig")) is None
    long = identity_user_name(UserIdentityRQSubItem(1, False, b"a" * 70_000))
    assert long is not None and len(long) == 259 and long.endswith("...")
    assert identity_user_name(UserIdentityRQSubItem(1, False, b"\xff\xfe")) == "\ufffd\ufffd"
    # no line breaks or terminal controls into a log line
    hostile = UserIdentityRQSubItem(1, False, "eve\n\x1b[2J\u2028x".encode())
    assert identity_user_name(hostile) == "eve\\x0a\\x1b[2J\\x2028x"
