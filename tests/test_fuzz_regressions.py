"""Regression tests for what the atheris fuzzing campaign found (tests/fuzz/, docs/security.md).

Each test replays the reproducer (inline, as hex) and asserts the typed behaviour that is
expected instead of the crash.
"""

from __future__ import annotations

import contextlib
import importlib
import struct
import sys
from pathlib import Path

import anyio
import pytest

from asyncdicom import AE
from asyncdicom.ae import Timeouts
from asyncdicom.protocol.codec import decode_pdu, encode_pdu
from asyncdicom.protocol.dimse import decode_command, encode_command
from asyncdicom.protocol.errors import (
    ACSE_NO_REASON,
    InvalidParameterValue,
    RejectResult,
    RejectSource,
)
from asyncdicom.protocol.messages import CFindRSP
from asyncdicom.protocol.negotiation import (
    AcceptorConfig,
    Rejected,
    SupportedContext,
    negotiate,
    process_associate_ac,
)
from asyncdicom.protocol.pdu import PDU, Abort, AssociateAC, AssociateRJ, AssociateRQ
from asyncdicom.protocol.uids import IMPLICIT_VR_LITTLE_ENDIAN, VERIFICATION
from asyncdicom.testing import memory_stream_pair
from tests.test_fuzz import split_pdus

# --------------------------------------------------------------------------- 1. oversized AC

#: An A-ASSOCIATE-RQ whose User Information item is filled to its 16-bit limit (65535 bytes):
#: a Maximum Length sub-item and one SCP/SCU Role Selection sub-item with a 65519-character
#: SOP class UID ("1." and 65517 "2"s).  The acceptor's answer echoes that UID in its own role
#: selection sub-item and adds its Implementation Class UID, version name (and window), so the
#: AC's User Information item would need more than 65535 bytes: the encoder refused it with
#: LocalProtocolError, which the acceptor took for "already aborted" and so never answered
#: (the peer got nothing within this test's 10 s bound).  Found by
#: tests/fuzz/fuzz_negotiation.py on its boundary-size seed (fuzz_common.big_associate_rq);
#: this is the same case reduced to one presentation context, written out compactly.
OVERSIZED_USER_INFORMATION_RQ = (
    bytes.fromhex(
        "010000010092000100005343502020202020202020202020202046555a5a4552202020202020202020"
        "20000000000000000000000000000000000000000000000000000000000000000010000015312e322e"
        "3834302e31303030382e332e312e312e312000002e0100000030000011312e322e3834302e313030"
        "30382e312e3140000011312e322e3834302e31303030382e312e325000ffff51000004000040005400"
        "fff3ffef312e"
    )
    + b"2" * 65517
    + bytes.fromhex("0100")
)


def _acceptor_config() -> AcceptorConfig:
    return AcceptorConfig(
        ae_title="SCP",
        supported=(SupportedContext(VERIFICATION, (IMPLICIT_VR_LITTLE_ENDIAN,)),),
        implementation_class_uid="1.2.826.0.1.3680043.9.9999.1",
        implementation_version_name="VERSION_NAME",
        async_ops_window=(16, 16),
    )


def test_oversized_user_information_answer_is_rejected_not_raised() -> None:
    rq = decode_pdu(OVERSIZED_USER_INFORMATION_RQ)
    assert isinstance(rq, AssociateRQ)
    result = negotiate(rq, _acceptor_config())
    assert isinstance(result, Rejected)
    assert result.rj == AssociateRJ(
        int(RejectResult.REJECTED_PERMANENT),
        int(RejectSource.SERVICE_PROVIDER_ACSE),
        ACSE_NO_REASON,
    )
    assert "User Information" in result.detail
    assert decode_pdu(encode_pdu(result.rj)) == result.rj


async def _first_answer(rq: bytes) -> PDU:
    """What a live AE sends first in answer to the bytes ``rq`` (over an in-memory stream)."""
    scp = AE("SCP", timeouts=Timeouts(acse=2.0, dimse=2.0, artim=1.0, network=30.0))
    client, server = memory_stream_pair()
    received = b""
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(scp.serve_stream, server)
            await client.send(rq)
            while len(received) < 6 or len(received) < 6 + struct.unpack(">I", received[2:6])[0]:
                received += await client.receive()
            await client.aclose()
    return decode_pdu(received)


@pytest.mark.anyio
async def test_live_acceptor_rejects_oversized_user_information(anyio_backend: str) -> None:
    """The AE answers that RQ with an A-ASSOCIATE-RJ at once (it used to never answer)."""
    assert await _first_answer(OVERSIZED_USER_INFORMATION_RQ) == AssociateRJ(
        int(RejectResult.REJECTED_PERMANENT),
        int(RejectSource.SERVICE_PROVIDER_ACSE),
        ACSE_NO_REASON,
    )


@pytest.mark.anyio
async def test_unsendable_answer_is_an_abort_not_silence(
    anyio_backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Defence in depth behind the check above: should an answer still fail to encode (here
    negotiation's check is switched off), the acceptor aborts instead of leaving the peer
    waiting for an answer that never comes."""
    from asyncdicom.protocol import negotiation

    monkeypatch.setattr(negotiation, "_encode_user_information", lambda item: b"")
    pdu = await _first_answer(OVERSIZED_USER_INFORMATION_RQ)
    assert isinstance(pdu, Abort) and pdu.source == 0, pdu


# --------------------------------------------------------------------------- 2. tiny maximum

#: tests/fuzz/fuzz_acceptor.py input (selector 0, no cuts): an A-ASSOCIATE-RQ whose Maximum
#: Length sub-item says 4 (the fuzzer's mutation of the boundary seed's 8), a C-ECHO-RQ on
#: context 1 and an A-RELEASE-RQ.  No P-DATA-TF of PDU-length 4 can carry a PDV (6 bytes of
#: header before any fragment): the association was accepted, and answering the C-ECHO needed
#: a fragment size, where dimse.fragment_size(4) raised ValueError out of the acceptor's reader
#: (an internal error; the connection dropped without an A-ABORT).
TINY_MAXIMUM_SESSION = bytes.fromhex(
    "00000100000000f9000100005343502020202020202020202020202046555a5a45522020202020202020"
    "2020000000000000000000000000000000000000000000000000000000000000000010000015312e322e38"
    "34302e31303030382e332e312e312e312000002e0100000030000011312e322e3834302e31303030382e31"
    "2e3140000011312e322e3834302e31303030382e312e322000004d0300000030000019312e322e3834302e"
    "31303030382e352e312e342e312e312e3240000013312e322e3834302e31303030382e312e322e31400000"
    "11312e322e3834302e31303030382e312e3250000015510000040000000452000009312e322e332e342e35"
    "04000000004a0000004601030000000004000000380000000000020012000000312e322e3834302e313030"
    "30382e312e310000000001020000003000000010010200000001000000000802000000010105000000000400"
    "000000"
)
TINY_MAXIMUM_RQ = TINY_MAXIMUM_SESSION[2 : 2 + 6 + 0xF9]
ECHO_RQ = TINY_MAXIMUM_SESSION[2 + 6 + 0xF9 : -10]
#: the requestor's side of the same rule: an A-ASSOCIATE-AC accepting context 1 whose Maximum
#: Length sub-item says 4 (built for this test)
TINY_MAXIMUM_AC = bytes.fromhex(
    "02000000008f000100005343502020202020202020202020202046555a5a45522020202020202020202000"
    "0000000000000000000000000000000000000000000000000000000000000010000015312e322e383430"
    "2e31303030382e332e312e312e31210000190100000040000011312e322e3834302e31303030382e312e"
    "3250000011510000040000000452000005312e322e33"
)


def test_tiny_maximum_length_in_rq_is_rejected() -> None:
    rq = decode_pdu(TINY_MAXIMUM_RQ)
    assert isinstance(rq, AssociateRQ) and rq.user_information.maximum_length == 4
    result = negotiate(rq, _acceptor_config())
    assert isinstance(result, Rejected)
    assert result.rj == AssociateRJ(
        int(RejectResult.REJECTED_PERMANENT),
        int(RejectSource.SERVICE_PROVIDER_ACSE),
        ACSE_NO_REASON,
    )
    assert "Maximum Length 4" in result.detail


def test_tiny_maximum_length_in_ac_is_a_protocol_error() -> None:
    rq = decode_pdu(TINY_MAXIMUM_RQ)
    ac = decode_pdu(TINY_MAXIMUM_AC)
    assert isinstance(rq, AssociateRQ) and isinstance(ac, AssociateAC)
    with pytest.raises(InvalidParameterValue, match="Maximum Length 4"):
        process_associate_ac(rq, ac)


@pytest.mark.anyio
async def test_live_acceptor_rejects_tiny_maximum_length(anyio_backend: str) -> None:
    """The AE answers with an A-ASSOCIATE-RJ; the C-ECHO-RQ that follows finds the
    association gone (before: accepted, then an internal error on the C-ECHO)."""
    scp = AE("SCP", timeouts=Timeouts(acse=2.0, dimse=2.0, artim=1.0, network=5.0))
    internal_before = AE.total_internal_errors
    client, server = memory_stream_pair()
    received = b""
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(scp.serve_stream, server)
            await client.send(TINY_MAXIMUM_RQ)
            while len(received) < 6 or len(received) < 6 + struct.unpack(">I", received[2:6])[0]:
                received += await client.receive()
            with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
                await client.send(ECHO_RQ)
            with contextlib.suppress(anyio.EndOfStream, anyio.BrokenResourceError):
                while True:  # until the acceptor closes
                    received += await client.receive()
            await client.aclose()
    assert AE.total_internal_errors == internal_before
    pdus = split_pdus(received)
    assert pdus[0] == AssociateRJ(
        int(RejectResult.REJECTED_PERMANENT),
        int(RejectSource.SERVICE_PROVIDER_ACSE),
        ACSE_NO_REASON,
    )
    assert all(isinstance(p, (AssociateRJ, Abort)) for p in pdus), pdus


# --------------------------------------------------------------------------- 3. empty LO

#: tests/fuzz/fuzz_dimse.py mode 0 (a command set): a C-FIND-RSP (Pending) whose Error Comment
#: (0000,0902) holds only padding ("\0 ").  It decoded to "" while an empty UI or AE value
#: decodes to absent, so decode(encode(message)) != message (encoding "" gives a zero-length
#: element, which decodes as absent).
PADDING_ONLY_ERROR_COMMENT = bytes.fromhex(
    "00000000000400000062000000000002001c000000312e322e3834302e31303030382e352e312e342e31"
    "2e322e312e3100000000010200000020800000200102000000030000000008020000000101000000090200"
    "000000ff00000109040000001000100000000209020000000020"
)


def test_padding_only_error_comment_is_absent_and_round_trips() -> None:
    message = decode_command(PADDING_ONLY_ERROR_COMMENT[1:])
    assert isinstance(message, CFindRSP)
    assert message.status == 0xFF00
    assert message.error_comment is None
    assert decode_command(encode_command(message)) == message


# --------------------------------------------------------------------------- the harnesses

FUZZ_DIR = Path(__file__).resolve().parent / "fuzz"


@pytest.mark.parametrize(
    ("harness", "data"),
    [
        ("negotiation", b"\x47\x03" + OVERSIZED_USER_INFORMATION_RQ),
        ("acceptor", TINY_MAXIMUM_SESSION),
        ("dimse", PADDING_ONLY_ERROR_COMMENT),
    ],
    ids=["oversized-user-information", "tiny-maximum-length", "padding-only-error-comment"],
)
def test_reproducer_passes_its_harness(harness: str, data: bytes) -> None:
    """Each reproducer, replayed through the harness that found it: every property holds."""
    if str(FUZZ_DIR) not in sys.path:
        sys.path.insert(0, str(FUZZ_DIR))
    module = importlib.import_module(f"fuzz_{harness}")
    module.TestOneInput(data)
