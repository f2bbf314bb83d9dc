"""Access control on the acceptor, checked on the wire.

A raw client sends a hand-built A-ASSOCIATE-RQ and reads back exactly what the acceptor sends:
each refusal must be the A-ASSOCIATE-RJ of PS3.8 Table 9-21 byte for byte (PDU type 0x03,
length 4, then reserved, result, source, reason):

* Called AE Title not ours (``require_called_ae_title``): permanent (1), service-user (1),
  reason 7 "called-AE-title-not-recognized";
* Calling AE Title not allowed (``allowed_calling_ae_titles``): 1, 1, reason 3;
* User Identity missing or refused (``require_user_identity`` + users file): 1, 1, reason 1
  "no-reason-given" (deliberately vague);
* ``max_associations`` and ``max_associations_per_calling_ae`` reached: transient (2),
  service-provider presentation (3), reason 2 "local-limit-exceeded".
"""

from __future__ import annotations

import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest

from asyncdicom import AE
from asyncdicom.protocol import uids
from asyncdicom.protocol.codec import decode_pdu, encode_pdu
from asyncdicom.protocol.negotiation import (
    ContextRequest,
    IdentityDecision,
    RequestorConfig,
    build_associate_rq,
)
from asyncdicom.protocol.pdu import AssociateAC, AssociateRQ, UserIdentityRQSubItem
from asyncdicom.users import PasswordHash, UsersFileError, UserStore, hash_password

pytestmark = pytest.mark.anyio

GUARD = 10.0

#: A-ASSOCIATE-RJ PDU bytes: type 3, reserved, length 4, reserved, result, source, reason
RJ_CALLED_AE = bytes.fromhex("03 00 00000004 00 01 01 07")
RJ_CALLING_AE = bytes.fromhex("03 00 00000004 00 01 01 03")
RJ_IDENTITY = bytes.fromhex("03 00 00000004 00 01 01 01")
RJ_LIMIT = bytes.fromhex("03 00 00000004 00 02 03 02")


def rq(
    calling: str = "SCU", called: str = "SCP", identity: UserIdentityRQSubItem | None = None
) -> AssociateRQ:
    return build_associate_rq(
        RequestorConfig(
            calling_ae_title=calling,
            called_ae_title=called,
            implementation_class_uid=uids.IMPLEMENTATION_CLASS_UID,
            user_identity=identity,
        ),
        [ContextRequest(uids.VERIFICATION, (uids.IMPLICIT_VR_LITTLE_ENDIAN,))],
    )


def password(user: str, pw: str, *, positive: bool = False) -> UserIdentityRQSubItem:
    return UserIdentityRQSubItem(2, positive, user.encode(), pw.encode())


def username(user: str, *, positive: bool = False) -> UserIdentityRQSubItem:
    return UserIdentityRQSubItem(1, positive, user.encode())


async def exchange(port: int, request: AssociateRQ) -> bytes:
    """Send ``request`` on a new connection; the first whole PDU the acceptor answers."""
    with anyio.fail_after(GUARD):
        async with await anyio.connect_tcp("127.0.0.1", port) as stream:
            await stream.send(encode_pdu(request))
            data = bytearray()
            while len(data) < 6 or len(data) < 6 + struct.unpack_from(">I", data, 2)[0]:
                data += await stream.receive()
            length = struct.unpack_from(">I", data, 2)[0]
            return bytes(data[: 6 + length])


def accepted(raw: bytes) -> AssociateAC:
    pdu = decode_pdu(raw)
    assert isinstance(pdu, AssociateAC), f"expected an A-ASSOCIATE-AC, got {raw[:10].hex()}"
    return pdu


@asynccontextmanager
async def serving(ae: AE) -> AsyncIterator[int]:
    async with ae.server("127.0.0.1", 0) as server:
        yield server.port


# --------------------------------------------------------------------------- AE titles


async def test_called_ae_title_mismatch_is_rejected_reason_7(anyio_backend: str) -> None:
    async with serving(AE("SCP", require_called_ae_title=True)) as port:
        assert await exchange(port, rq(called="SOMEONE-ELSE")) == RJ_CALLED_AE
        accepted(await exchange(port, rq(called="SCP")))
        accepted(await exchange(port, rq(called="  SCP")))  # spaces are not significant


async def test_called_ae_title_is_not_checked_by_default(anyio_backend: str) -> None:
    async with serving(AE("SCP")) as port:
        accepted(await exchange(port, rq(called="SOMEONE-ELSE")))


async def test_calling_ae_title_not_allowed_is_rejected_reason_3(anyio_backend: str) -> None:
    ae = AE("SCP", allowed_calling_ae_titles=frozenset({"MODALITY", "VIEWER"}))
    async with serving(ae) as port:
        assert await exchange(port, rq(calling="INTRUDER")) == RJ_CALLING_AE
        accepted(await exchange(port, rq(calling="VIEWER")))
        accepted(await exchange(port, rq(calling="MODALITY")))


async def test_an_empty_allowed_calling_ae_list_admits_nobody(anyio_backend: str) -> None:
    """``allowed_calling_ae_titles=frozenset()`` is an allow-list with nothing on it: every
    calling AE title is rejected (1, 1, 3), as an empty users file admits nobody.  Only
    ``None`` switches the check off: a list computed from a configuration that came out
    empty must not open the server to everyone."""
    ae = AE("SCP", allowed_calling_ae_titles=frozenset())
    async with serving(ae) as port:
        for calling in ("SCU", "ANY-SCU", "SCP"):
            assert await exchange(port, rq(calling=calling)) == RJ_CALLING_AE
    async with serving(AE("SCP", allowed_calling_ae_titles=None)) as port:
        accepted(await exchange(port, rq(calling="ANY-SCU")))


# --------------------------------------------------------------------------- limits


async def test_max_associations_is_rejected_transient_source_3_reason_2(
    anyio_backend: str,
) -> None:
    async with serving(AE("SCP", max_associations=1)) as port:
        async with AE("FIRST").associate("127.0.0.1", port, called_aet="SCP") as assoc:
            assert await exchange(port, rq(calling="SECOND")) == RJ_LIMIT
            assert (await assoc.echo()).status == 0
        # the slot is free again once the first association is released
        accepted(await exchange(port, rq(calling="SECOND")))


async def test_per_calling_ae_limit_is_rejected_transient_source_3_reason_2(
    anyio_backend: str,
) -> None:
    async with serving(AE("SCP", max_associations_per_calling_ae=1)) as port:
        async with AE("MOD1").associate("127.0.0.1", port, called_aet="SCP"):
            assert await exchange(port, rq(calling="MOD1")) == RJ_LIMIT
            # another calling AE title has a limit of its own
            accepted(await exchange(port, rq(calling="MOD2")))
        accepted(await exchange(port, rq(calling="MOD1")))


async def test_limit_holds_while_an_identity_hook_is_awaited(anyio_backend: str) -> None:
    """Two requests whose identity checks are in progress at the same time: only one may
    take the single slot (the limit is checked again after the hook)."""
    ae = AE("SCP", max_associations=1)
    both_waiting = anyio.Event()
    calls = 0

    @ae.on_user_identity
    async def check(request: AssociateRQ, item: UserIdentityRQSubItem) -> IdentityDecision:
        nonlocal calls
        calls += 1
        if calls == 2:
            both_waiting.set()
        await both_waiting.wait()
        return IdentityDecision(accepted=True)

    answers: list[bytes] = []
    async with serving(ae) as port:

        async def one(calling: str) -> None:
            answers.append(await exchange(port, rq(calling=calling, identity=username("u"))))

        async with anyio.create_task_group() as tg:
            tg.start_soon(one, "A")
            tg.start_soon(one, "B")
    assert sorted(raw[0] for raw in answers) == [0x02, 0x03]  # one AC, one RJ
    assert RJ_LIMIT in answers


def test_limits_are_validated() -> None:
    with pytest.raises(ValueError, match="max_associations_per_calling_ae"):
        AE("SCP", max_associations_per_calling_ae=0)


# --------------------------------------------------------------------------- user identity


@pytest.fixture
def users(tmp_path: Path) -> Path:
    store = UserStore()
    store.add("alice", "correct horse")
    store.add("bob", "battery staple")
    path = tmp_path / "users.txt"
    store.save(path)
    return path


def users_ae(path: Path, **kwargs: Any) -> AE:
    ae = AE("SCP", require_user_identity=True)
    ae.on_user_identity(UserStore.load(path, **kwargs).identity_handler())
    return ae


async def test_users_file_identity_checks(users: Path, anyio_backend: str) -> None:
    async with serving(users_ae(users)) as port:
        # no User Identity at all
        assert await exchange(port, rq()) == RJ_IDENTITY
        # wrong password, unknown user, empty password
        assert await exchange(port, rq(identity=password("alice", "wrong"))) == RJ_IDENTITY
        assert await exchange(port, rq(identity=password("mallory", "x"))) == RJ_IDENTITY
        assert await exchange(port, rq(identity=password("alice", ""))) == RJ_IDENTITY
        # one user's password is not another's
        assert await exchange(port, rq(identity=password("bob", "correct horse"))) == RJ_IDENTITY
        # a user name alone: only a user that exists
        assert await exchange(port, rq(identity=username("mallory"))) == RJ_IDENTITY
        accepted(await exchange(port, rq(identity=username("bob"))))
        # SAML, JWT, Kerberos: refused without a hook of the application
        jwt = UserIdentityRQSubItem(5, False, b"eyJhbGciOi.e30.sig")
        assert await exchange(port, rq(identity=jwt)) == RJ_IDENTITY
        # the right password; no positive response unless asked for
        ac = accepted(await exchange(port, rq(identity=password("alice", "correct horse"))))
        assert ac.user_information.user_identity_ac is None


async def test_positive_response_when_requested(users: Path, anyio_backend: str) -> None:
    async with serving(users_ae(users)) as port:
        raw = await exchange(port, rq(identity=password("alice", "correct horse", positive=True)))
        ac = accepted(raw)
        response = ac.user_information.user_identity_ac
        assert response is not None and response.server_response == b""
        # the sub-item on the wire: type 0x59, reserved, length 2, server response length 0
        assert bytes.fromhex("59 00 0002 0000") in raw


async def test_username_only_refused_when_a_passcode_is_required(
    users: Path, anyio_backend: str
) -> None:
    async with serving(users_ae(users, allow_username_only=False)) as port:
        assert await exchange(port, rq(identity=username("alice"))) == RJ_IDENTITY
        accepted(await exchange(port, rq(identity=password("alice", "correct horse"))))


async def test_other_identity_types_go_to_the_application_hook(
    users: Path, anyio_backend: str
) -> None:
    seen: list[int] = []

    async def jwt_check(request: AssociateRQ, item: UserIdentityRQSubItem) -> IdentityDecision:
        seen.append(item.identity_type)
        return IdentityDecision(accepted=item.primary_field == b"good.token", server_response=b"ok")

    ae = AE("SCP", require_user_identity=True)
    ae.on_user_identity(UserStore.load(users).identity_handler(fallback=jwt_check))
    async with serving(ae) as port:
        good = UserIdentityRQSubItem(5, True, b"good.token")
        ac = accepted(await exchange(port, rq(identity=good)))
        assert ac.user_information.user_identity_ac is not None
        assert ac.user_information.user_identity_ac.server_response == b"ok"
        bad = UserIdentityRQSubItem(5, True, b"bad.token")
        assert await exchange(port, rq(identity=bad)) == RJ_IDENTITY
        # types 1 and 2 are still the users file's
        assert await exchange(port, rq(identity=password("alice", "no"))) == RJ_IDENTITY
        accepted(await exchange(port, rq(identity=password("alice", "correct horse"))))
    assert seen == [5, 5]


async def test_requestor_default_user_identity(users: Path, anyio_backend: str) -> None:
    """``AEConfig.user_identity`` goes into every A-ASSOCIATE-RQ of the AE."""
    async with serving(users_ae(users)) as port:
        scu = AE("SCU", user_identity=password("bob", "battery staple", positive=True))
        with anyio.fail_after(GUARD):
            async with scu.associate("127.0.0.1", port, called_aet="SCP") as assoc:
                assert assoc.negotiated is not None
                assert assoc.negotiated.user_identity_response == b""


# --------------------------------------------------------------------------- the users file


def test_users_file_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "users.txt"
    store = UserStore()
    assert store.add("alice", "pw one")
    assert store.add("bob", "pw one")
    store.save(path)
    text = path.read_text()
    assert "pw one" not in text
    lines = text.splitlines()
    assert [line.split(":", 1)[0] for line in lines] == ["alice", "bob"]
    hashes = [PasswordHash.parse(line.split(":", 1)[1]) for line in lines]
    assert all(str(h).startswith("scrypt$16384$8$1$") for h in hashes)
    assert hashes[0].salt != hashes[1].salt  # a random salt per user
    assert hashes[0].digest != hashes[1].digest
    assert path.stat().st_mode & 0o777 == 0o600
    loaded = UserStore.load(path)
    assert loaded.verify("alice", "pw one")
    assert not loaded.verify("alice", "pw two")
    assert not loaded.verify("carol", "pw one")
    assert not loaded.add("alice", "pw two")  # an existing user: the password changes
    assert loaded.verify("alice", "pw two") and not loaded.verify("alice", "pw one")
    assert loaded.remove("alice") and not loaded.remove("alice")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("alice\n", "line 1: expected USER"),
        ("# comment\n\nalice:plain-text-password\n", "line 3: not a scrypt"),
        ("alice:scrypt$16384$8$1$c2FsdA$!!!\n", "line 1: a malformed"),
        ("alice:scrypt$1000$8$1$c2FsdA$" + "A" * 43 + "\n", "line 1: scrypt costs"),
        ("alice:scrypt$4194304$8$1$c2FsdA$" + "A" * 43 + "\n", "line 1: scrypt costs"),
    ],
)
def test_bad_users_file_lines(text: str, message: str) -> None:
    with pytest.raises(UsersFileError, match=message):
        UserStore.parse(text.splitlines())


def test_duplicate_user_and_missing_file(tmp_path: Path) -> None:
    line = f"alice:{hash_password('x')}"
    with pytest.raises(UsersFileError, match="line 2: the user 'alice' is listed twice"):
        UserStore.parse([line, line])
    with pytest.raises(UsersFileError, match="cannot read"):
        UserStore.load(tmp_path / "missing.txt")


def test_users_file_followed_without_a_restart(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A loaded store re-reads its file when it changes (users added, changed, removed by
    ``asyncdicom users``); a file that turns bad is ignored, the last users kept, one warning
    per change."""
    path = tmp_path / "users.txt"
    store = UserStore()
    store.add("alice", "a1")
    store.save(path)
    loaded = UserStore.load(path)
    assert loaded.check(password("alice", "a1")).accepted
    assert not loaded.check(password("bob", "b1")).accepted
    editor = UserStore.load(path)
    editor.add("bob", "b1")
    editor.add("alice", "a2")
    editor.save(path)
    assert loaded.check(password("bob", "b1")).accepted
    assert loaded.check(password("alice", "a2")).accepted
    assert not loaded.check(password("alice", "a1")).accepted
    editor.remove("bob")
    editor.save(path)
    assert not loaded.check(password("bob", "b1")).accepted
    # broken, then missing: the last good users stay, a warning for each change only
    path.write_text("garbage\n")
    with caplog.at_level("WARNING"):
        for _ in range(3):
            assert loaded.check(password("alice", "a2")).accepted
        path.unlink()
        for _ in range(3):
            assert loaded.check(password("alice", "a2")).accepted
    warnings = [r for r in caplog.records if "users_file_not_reloaded" in r.getMessage()]
    assert len(warnings) == 2, [r.getMessage() for r in warnings]
    editor.save(path)  # back: read again
    assert not loaded.check(password("alice", "a1")).accepted
    assert loaded.check(password("alice", "a2")).accepted
    # a store not read from a file follows nothing
    assert not UserStore().refresh()
