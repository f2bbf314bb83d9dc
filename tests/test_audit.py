"""The audit trail of the acceptor (``asyncdicom.audit.AuditLog``) and the warning logged for
each refused association.

Real TCP on 127.0.0.1: an association accepted then released, each kind of refusal (with the
A-ASSOCIATE-RJ fields and the rule that refused), an abort, a failed TLS handshake; what never
goes into the file (passcodes, tokens); a file that cannot be written.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import ssl
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import anyio
import pytest
import trustme
from test_access_control import (
    GUARD,
    RJ_CALLED_AE,
    RJ_CALLING_AE,
    RJ_IDENTITY,
    RJ_LIMIT,
    accepted,
    exchange,
    password,
    rq,
)

from asyncdicom import AE, HookEvent
from asyncdicom.ae import RefusalRule
from asyncdicom.audit import AuditLog, AuditLogError
from asyncdicom.protocol.pdu import AssociateRQ, UserIdentityRQSubItem
from asyncdicom.users import Lockout, UserStore

pytestmark = pytest.mark.anyio

RJ_APPLICATION_CONTEXT = bytes.fromhex("03 00 00000004 00 01 01 02")


class Records:
    """A sink that keeps the records and lets a test wait for one."""

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []
        self._changed = anyio.Event()

    def __call__(self, record: dict[str, Any]) -> None:
        json.dumps(record)  # what the file sink would write
        self.records.append(record)
        self._changed.set()
        self._changed = anyio.Event()

    def events(self) -> list[str]:
        return [r["event"] for r in self.records]

    async def wait(self, event: str, count: int = 1) -> list[dict[str, Any]]:
        with anyio.fail_after(GUARD):
            while True:
                found = [r for r in self.records if r["event"] == event]
                if len(found) >= count:
                    return found
                await self._changed.wait()


@pytest.fixture
def users(tmp_path: Path) -> Path:
    store = UserStore()
    store.add("alice", "correct horse")
    path = tmp_path / "users.txt"
    store.save(path)
    return path


@asynccontextmanager
async def audited(ae: AE) -> AsyncIterator[tuple[int, Records]]:
    records = Records()
    AuditLog(records).attach(ae)
    async with ae.server("127.0.0.1", 0) as server:
        yield server.port, records


def rejected_warnings(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    return [
        dict(r.msg)
        for r in caplog.records
        if isinstance(r.msg, dict)
        and r.msg.get("event") == "association_rejected"
        and r.levelno == logging.WARNING
    ]


# --------------------------------------------------------------------------- accepted, released


async def test_accepted_and_released_lines_in_the_file(
    users: Path, tmp_path: Path, anyio_backend: str
) -> None:
    path = tmp_path / "audit.jsonl"
    path.write_text('{"event": "from before"}\n')
    ae = AE("SCP", require_user_identity=True)
    ae.on_user_identity(UserStore.load(users).identity_handler())
    closed = anyio.Event()
    with AuditLog.open(path) as audit:
        audit.attach(ae)
        ae.hooks.add(HookEvent.CONNECTION_CLOSED, lambda *args, **kw: closed.set())
        async with ae.server("127.0.0.1", 0) as server:
            scu = AE("MODALITY", user_identity=password("alice", "correct horse"))
            with anyio.fail_after(GUARD):
                async with scu.associate("127.0.0.1", server.port, called_aet="SCP") as assoc:
                    assert (await assoc.echo()).status == 0
                await closed.wait()
    text = path.read_text()
    assert "correct horse" not in text
    lines = text.splitlines()
    assert lines[0] == '{"event": "from before"}'  # appended, not overwritten
    first, second = (json.loads(line) for line in lines[1:])
    assert [first["event"], second["event"]] == ["accepted", "released"]
    for record in (first, second):
        assert record["peer_host"] == "127.0.0.1" and record["peer_port"] > 0
        assert record["calling_aet"] == "MODALITY" and record["called_aet"] == "SCP"
        assert record["user"] == "alice" and record["identity_type"] == 2
        assert record["time"].endswith("Z")
        assert datetime.fromisoformat(record["time"].replace("Z", "+00:00")).tzinfo is not None
    assert first["assoc_id"] == second["assoc_id"]
    assert first["contexts"] == 1
    assert audit.records == 2 and audit.write_errors == 0


async def test_new_file_is_private_and_unwritable_files_fail_at_open(tmp_path: Path) -> None:
    path = tmp_path / "new.jsonl"
    AuditLog.open(path).close()
    assert path.stat().st_mode & 0o777 == 0o600
    with pytest.raises(AuditLogError, match=r"cannot append to .*missing"):
        AuditLog.open(tmp_path / "missing" / "audit.jsonl")
    with pytest.raises(AuditLogError, match="cannot append to"):
        AuditLog.open(tmp_path)  # a folder


# --------------------------------------------------------------------------- refusals


def _called_ae() -> AE:
    return AE("SCP", require_called_ae_title=True)


def _calling_ae() -> AE:
    return AE("SCP", allowed_calling_ae_titles=frozenset({"MODALITY"}))


def _identity(users: Path) -> AE:
    ae = AE("SCP", require_user_identity=True)
    ae.on_user_identity(UserStore.load(users).identity_handler())
    return ae


REFUSALS: list[tuple[str, Callable[[Path], AE], AssociateRQ, bytes, str, str]] = [
    (
        "called_ae_title",
        lambda users: _called_ae(),
        rq(called="ELSEWHERE"),
        RJ_CALLED_AE,
        "called AE title not recognized",
        "'ELSEWHERE'",
    ),
    (
        "calling_ae_title",
        lambda users: _calling_ae(),
        rq(calling="INTRUDER"),
        RJ_CALLING_AE,
        "calling AE title not recognized",
        "'INTRUDER'",
    ),
    (
        "user_identity",
        _identity,
        rq(identity=password("alice", "wrong")),
        RJ_IDENTITY,
        "no reason given",
        "user identity refused",
    ),
    (
        "user_identity",
        _identity,
        rq(),
        RJ_IDENTITY,
        "no reason given",
        "no user identity was supplied",
    ),
    (
        "application_context",
        lambda users: AE("SCP"),
        dataclasses.replace(rq(), application_context="1.2.3.4"),
        RJ_APPLICATION_CONTEXT,
        "application context name not supported",
        "'1.2.3.4'",
    ),
]


@pytest.mark.parametrize(
    ("rule", "make_ae", "request_", "answer", "reason_text", "detail"),
    REFUSALS,
    ids=[f"{r[0]}-{i}" for i, r in enumerate(REFUSALS)],
)
async def test_each_refusal_is_audited_and_logged_once(
    rule: str,
    make_ae: Callable[[Path], AE],
    request_: AssociateRQ,
    answer: bytes,
    reason_text: str,
    detail: str,
    users: Path,
    anyio_backend: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="asyncdicom")
    async with audited(make_ae(users)) as (port, records):
        assert await exchange(port, request_) == answer
        (line,) = await records.wait("rejected")
    result, source, reason = answer[7:10]
    assert (line["result"], line["source"], line["reason"]) == (result, source, reason)
    assert line["rule"] == rule
    assert reason_text in line["reason_text"]
    assert detail in line["detail"]
    assert line["peer_host"] == "127.0.0.1"
    assert line["calling_aet"] == request_.calling_ae_title.strip()
    assert line["called_aet"] == request_.called_ae_title.strip()
    assert records.events() == ["rejected"]
    # one warning, with the same fields
    (warning,) = rejected_warnings(caplog)
    for key in ("rule", "detail", "result", "source", "reason", "reason_text", "user"):
        assert warning[key] == line[key], key
    assert warning["assoc_id"] == line["assoc_id"]
    assert warning["peer"] == f"127.0.0.1:{line['peer_port']}"
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]


async def test_limits_are_audited_with_their_rule(
    anyio_backend: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="asyncdicom")
    ae = AE("SCP", max_associations=2, max_associations_per_calling_ae=1)
    async with audited(ae) as (port, records):
        with anyio.fail_after(GUARD):
            async with AE("MOD1").associate("127.0.0.1", port, called_aet="SCP"):
                assert await exchange(port, rq(calling="MOD1")) == RJ_LIMIT
                async with AE("MOD2").associate("127.0.0.1", port, called_aet="SCP"):
                    assert await exchange(port, rq(calling="MOD3")) == RJ_LIMIT
        lines = await records.wait("rejected", 2)
    assert [line["rule"] for line in lines] == [
        "max_associations_per_calling_ae",
        "max_associations",
    ]
    assert [line["calling_aet"] for line in lines] == ["MOD1", "MOD3"]
    for line in lines:
        assert (line["result"], line["source"], line["reason"]) == (2, 3, 2)
        assert "local limit exceeded" in line["reason_text"]
    assert "the limit is 2" in lines[1]["detail"]
    # one warning per refusal, no other
    assert [w["rule"] for w in rejected_warnings(caplog)] == [line["rule"] for line in lines]
    assert len([r for r in caplog.records if r.levelno >= logging.WARNING]) == 2


async def test_lockout_is_audited_as_locked_out(users: Path, anyio_backend: str) -> None:
    ae = AE("SCP", require_user_identity=True)
    ae.on_user_identity(
        UserStore.load(users).identity_handler(), lockout=Lockout(max_failures=1, clock=lambda: 0)
    )
    async with audited(ae) as (port, records):
        assert await exchange(port, rq(identity=password("alice", "wrong"))) == RJ_IDENTITY
        assert await exchange(port, rq(identity=password("alice", "correct horse"))) == (
            RJ_IDENTITY
        )
        first, second = await records.wait("rejected", 2)
    assert first["rule"] == "user_identity"
    assert second["rule"] == "locked_out"
    assert second["detail"].startswith("locked out")
    assert (second["result"], second["source"], second["reason"]) == (1, 1, 1)
    assert second["user"] == "alice"


async def test_protocol_version_refused_by_the_upper_layer_is_audited(
    anyio_backend: str, caplog: pytest.LogCaptureFixture
) -> None:
    """An A-ASSOCIATE-RQ without protocol version 1 is refused by the upper layer itself
    (RJ 1, 2, 2), before the AE sees it: still one audit line and one warning, with no AE
    titles (the AE never had the request)."""
    caplog.set_level(logging.WARNING, logger="asyncdicom")
    async with audited(AE("SCP")) as (port, records):
        answer = await exchange(port, dataclasses.replace(rq(), protocol_version=2))
        (line,) = await records.wait("rejected")
    assert answer == bytes.fromhex("03 00 00000004 00 01 02 02")
    assert (line["result"], line["source"], line["reason"]) == (1, 2, 2)
    assert line["rule"] == "protocol_version"
    assert "protocol version not supported" in line["reason_text"]
    assert "Protocol-version 0x0002" in line["detail"]
    assert line["calling_aet"] is None and line["called_aet"] is None and line["user"] is None
    assert line["peer_host"] == "127.0.0.1"
    assert records.events() == ["rejected"]
    (warning,) = rejected_warnings(caplog)
    for key in ("rule", "detail", "result", "source", "reason", "reason_text"):
        assert warning[key] == line[key], key


async def test_hooks_learn_why_the_protocol_layer_refused(anyio_backend: str) -> None:
    ae = AE("SCP")
    told: list[Any] = []

    def on_rejected(event: HookEvent, association: Any, reject: Any) -> None:
        told.append((reject, ae.refusal(association)))

    ae.hooks.add(HookEvent.ASSOCIATION_REJECTED, on_rejected)
    async with ae.server("127.0.0.1", 0) as server:
        await exchange(server.port, dataclasses.replace(rq(), protocol_version=2))
    ((reject, refusal),) = told
    assert (reject.result, reject.source, reject.reason) == (1, 2, 2)
    assert refusal is not None and refusal.rule is RefusalRule.PROTOCOL_VERSION
    assert "Protocol-version 0x0002" in refusal.detail


# --------------------------------------------------------------------------- aborted, TLS


async def test_abort_is_audited(anyio_backend: str) -> None:
    async with audited(AE("SCP")) as (port, records):
        with anyio.fail_after(GUARD):
            async with AE("MODALITY").associate("127.0.0.1", port, called_aet="SCP") as assoc:
                await assoc.abort()
        (line,) = await records.wait("aborted")
    assert records.events() == ["accepted", "aborted"]
    assert line["calling_aet"] == "MODALITY"
    assert (line["abort_source"], line["abort_reason"], line["local"]) == (0, 0, False)
    assert "aborted by the peer" in line["detail"]
    assert line["user"] is None


async def test_failed_tls_handshake_is_audited(anyio_backend: str) -> None:
    ca = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    ae = AE("SCP", timeouts={"tls_handshake": 5.0})
    records = Records()
    AuditLog(records).attach(ae)
    async with ae.server("127.0.0.1", 0, ssl_context=context) as server:
        with anyio.fail_after(GUARD):
            async with await anyio.connect_tcp("127.0.0.1", server.port) as stream:
                await stream.send(b"\x01\x00\x00\x00\x00\x44" + b"\x00" * 68)  # plain DICOM
                (line,) = await records.wait("tls_failed")
    assert line["peer_host"] == "127.0.0.1" and line["peer_port"] > 0
    assert line["assoc_id"] is None and line["calling_aet"] is None
    assert line["detail"]


# --------------------------------------------------------------------------- never in the file


async def test_credentials_and_hostile_names_stay_out_of_the_file(
    users: Path, tmp_path: Path, anyio_backend: str
) -> None:
    path = tmp_path / "audit.jsonl"
    ae = AE("SCP", require_user_identity=True)

    ae.on_user_identity(UserStore.load(users).identity_handler())
    hostile = 'eve\n{"event": "accepted"}' + "x" * 1000
    with AuditLog.open(path) as audit:
        audit.attach(ae)
        async with ae.server("127.0.0.1", 0) as server:
            for item in [
                password("alice", "s3cret-passcode"),
                UserIdentityRQSubItem(2, False, hostile.encode(), b"s3cret-passcode"),
                UserIdentityRQSubItem(5, False, b"eyJ.s3cret-token.sig"),
                UserIdentityRQSubItem(3, False, b"s3cret-kerberos", b"s3cret-more"),
            ]:
                assert await exchange(server.port, rq(identity=item)) == RJ_IDENTITY
    text = path.read_text()
    assert "s3cret" not in text
    lines = [json.loads(line) for line in text.splitlines()]
    assert [line["event"] for line in lines] == ["rejected"] * 4
    assert [line["user"] for line in lines][::2] == ["alice", None]
    assert lines[1]["user"].startswith("eve\\x0a{") and len(lines[1]["user"]) == 259
    assert [line["identity_type"] for line in lines] == [2, 2, 5, 3]


# --------------------------------------------------------------------------- failures


async def test_write_failures_never_reach_the_association(
    anyio_backend: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A full disk (``/dev/full``): the associations go on, the failure is logged once."""
    caplog.set_level(logging.WARNING, logger="asyncdicom")
    ae = AE("SCP")
    closed = anyio.Event()
    with AuditLog.open("/dev/full") as audit:
        audit.attach(ae)
        ae.hooks.add(HookEvent.CONNECTION_CLOSED, lambda *args, **kw: closed.set())
        async with ae.server("127.0.0.1", 0) as server:
            with anyio.fail_after(GUARD):
                async with AE("SCU").associate("127.0.0.1", server.port, called_aet="SCP") as a:
                    assert (await a.echo()).status == 0
                await closed.wait()
    assert audit.write_errors == 2 and audit.records == 0
    failures = [r for r in caplog.records if "audit_write_failed" in r.getMessage()]
    assert len(failures) == 1 and failures[0].levelno == logging.ERROR


async def test_a_failing_sink_or_detached_log_costs_nothing(anyio_backend: str) -> None:
    def broken(record: dict[str, Any]) -> None:
        raise RuntimeError("sink down")

    ae = AE("SCP")
    audit = AuditLog(broken)
    audit.attach(ae)
    records = Records()
    other = AuditLog(records)
    other.attach(ae)
    other.detach(ae)
    async with ae.server("127.0.0.1", 0) as server:
        accepted(await exchange(server.port, rq()))
    assert audit.write_errors >= 1
    assert records.records == []


async def test_associations_the_ae_requests_are_not_audited(anyio_backend: str) -> None:
    scu = AE("SCU")
    records = Records()
    AuditLog(records).attach(scu)
    async with AE("SCP").server("127.0.0.1", 0) as server:
        with anyio.fail_after(GUARD):
            async with scu.associate("127.0.0.1", server.port, called_aet="SCP") as assoc:
                assert (await assoc.echo()).status == 0
    assert records.records == []
