"""Fuzzing campaign: the upper layer + DIMSE reassembly (sans-IO), a live acceptor and a live
requestor (over the in-memory pipe of :mod:`asyncdicom.testing`), fed mutated valid sessions.

Already covered elsewhere and not repeated: the PDU decoder and framer on arbitrary and mutated
PDUs (tests/protocol/test_fuzz_codec.py), command-set decoding (tests/protocol/test_dimse.py),
a mutated requestor stream over TCP (tests/test_hostile.py).  Here the mutations reach the
state machine and the DIMSE layer *after* a valid association, in arbitrary read sizes, and
the requestor side is fuzzed too.

What must hold for any input: only the typed protocol errors come out of the sans-IO core; the
acceptor ends with an A-ASSOCIATE-RJ, an A-ABORT, a release or a plain close, never an
internal error (``AE.total_internal_errors`` stays 0), within a time bound; the requestor
raises nothing but :class:`asyncdicom.errors.DICOMError`.  The example budget comes from the
Hypothesis profile (tests/conftest.py): "ci" by default, ``HYPOTHESIS_PROFILE=thorough`` for
five times more.
"""

from __future__ import annotations

import contextlib
import struct
from typing import Any

import anyio
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from asyncdicom import AE, errors
from asyncdicom.ae import Timeouts
from asyncdicom.protocol import dimse, messages, uids
from asyncdicom.protocol.codec import decode_pdu, encode_pdata, encode_pdu
from asyncdicom.protocol.errors import LocalProtocolError, ProtocolError
from asyncdicom.protocol.events import (
    AssociationAborted,
    AssociationRequested,
    ConnectionClosed,
    DataReceived,
)
from asyncdicom.protocol.fsm import State
from asyncdicom.protocol.operations import DIMSEOperations
from asyncdicom.protocol.pdu import (
    Abort,
    AssociateAC,
    AssociateRJ,
    AssociateRQ,
    PDataTF,
    ReleaseRP,
    ReleaseRQ,
)
from asyncdicom.protocol.upper_layer import NEED_DATA, Role, UpperLayer
from asyncdicom.storage.codec import encode_dataset
from asyncdicom.storage.synthetic import make_ct_instance
from asyncdicom.testing import memory_stream_pair
from tests.test_faults import ac_for
from tests.test_hostile import CT, EXPLICIT, IMPLICIT, associate_rq

#: a bound for one fuzzed session: every path ends well before it (ARTIM and timeouts are
#: a fraction of it)
BOUND = 5.0
SHORT = Timeouts(acse=0.3, dimse=0.3, artim=0.2, network=1.0)

_mutation = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 1 << 16), st.integers(1, 255)),
    st.tuples(st.just("insert"), st.integers(0, 1 << 16), st.binary(min_size=1, max_size=16)),
    st.tuples(st.just("delete"), st.integers(0, 1 << 16), st.integers(1, 32)),
    st.tuples(st.just("u16"), st.integers(0, 1 << 16), st.integers(0, 0xFFFF)),
    st.tuples(st.just("u32"), st.integers(0, 1 << 16), st.integers(0, 0xFFFFFFFF)),
    st.tuples(st.just("truncate"), st.integers(0, 1 << 16), st.just(0)),
)
mutations = st.lists(_mutation, min_size=0, max_size=4)
#: how the bytes are cut into reads
cuts = st.lists(st.integers(1, 4096), min_size=0, max_size=8)


def mutate(data: bytes, changes: list[tuple[str, int, Any]], *, start: int = 0) -> bytes:
    """Apply ``changes``; positions fall in ``data[start:]`` (to spare a valid prefix)."""
    out = bytearray(data)
    for kind, where, arg in changes:
        span = len(out) - start
        pos = start + (where % (span + 1))
        if kind == "flip" and pos < len(out):
            out[pos] ^= arg
        elif kind == "insert":
            out[pos:pos] = arg
        elif kind == "delete":
            del out[pos : pos + arg]
        elif kind == "u16":
            out[pos : pos + 2] = struct.pack(">H", arg)
        elif kind == "u32":
            out[pos : pos + 4] = struct.pack(">I", arg)
        elif kind == "truncate":
            del out[pos:]
    return bytes(out)


def split(data: bytes, sizes: list[int]) -> list[bytes]:
    parts, pos = [], 0
    for size in sizes:
        if pos >= len(data):
            break
        parts.append(data[pos : pos + size])
        pos += size
    if pos < len(data):
        parts.append(data[pos:])
    return parts


def _store_pdus(message_id: int, context_id: int) -> bytes:
    ds = make_ct_instance(400, seed=message_id)
    data = encode_dataset(ds, EXPLICIT)
    rq = messages.CStoreRQ(
        message_id=message_id,
        affected_sop_class_uid=CT,
        affected_sop_instance_uid=str(ds.SOPInstanceUID),
    )
    return (
        encode_pdata(context_id, 0x03, dimse.encode_command(rq))
        + encode_pdata(context_id, 0x00, data[:200])
        + encode_pdata(context_id, 0x02, data[200:])
    )


RQ = associate_rq([(uids.VERIFICATION, (IMPLICIT,)), (CT, (EXPLICIT,))])
#: after the A-ASSOCIATE-RQ: a C-ECHO, a C-STORE in three PDVs, another C-ECHO, A-RELEASE-RQ
SESSION = (
    encode_pdata(1, 0x03, dimse.encode_command(messages.CEchoRQ(message_id=1)))
    + _store_pdus(2, 3)
    + encode_pdata(1, 0x03, dimse.encode_command(messages.CEchoRQ(message_id=3)))
    + encode_pdu(ReleaseRQ())
)

fuzz_settings = settings(
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
#: a live session costs up to a few timeouts: a quarter of the profile's budget (25 examples
#: per backend under "ci", 125 under "thorough")
live_settings = settings(fuzz_settings, max_examples=max(10, settings.default.max_examples // 4))


def split_pdus(data: bytes) -> list[Any]:
    """Decode what the acceptor sent as whole, valid PDUs (a bad one fails the test)."""
    pdus, pos = [], 0
    while pos < len(data):
        assert len(data) - pos >= 6, f"trailing bytes {data[pos:]!r}"
        length = struct.unpack_from(">I", data, pos + 2)[0]
        assert pos + 6 + length <= len(data), "truncated PDU"
        pdus.append(decode_pdu(data[pos : pos + 6 + length]))
        pos += 6 + length
    return pdus


# --------------------------------------------------------------------------- sans-IO


@fuzz_settings
@given(
    changes=mutations,
    sizes=cuts,
    mutate_rq=st.booleans(),
)
def test_upper_layer_and_dimse_on_mutated_sessions(
    changes: list[tuple[str, int, Any]], sizes: list[int], mutate_rq: bool
) -> None:
    """The acceptor's upper layer and DIMSE bookkeeping, driven as the driver drives them:
    only typed protocol errors, a DIMSE error always answered by an A-ABORT, and no P-DATA
    indication after an abort."""
    stream = mutate(RQ + SESSION, changes, start=0 if mutate_rq else len(RQ))
    ul = UpperLayer(Role.ACCEPTOR, artim_timeout=1.0)
    ul.connection_made(now=0.0)
    ops: DIMSEOperations | None = None
    aborted = False
    now = 0.0

    def user_send(pdu: Any) -> None:
        # as the driver: a primitive the state no longer allows (the peer's bytes already
        # ended the association) is dropped
        with contextlib.suppress(LocalProtocolError):
            ul.send(pdu, now=now)

    # the A-ASSOCIATE-RQ in reads of its own (a requestor waits for the AC), then the rest
    parts = split(stream[: len(RQ)], sizes) + split(stream[len(RQ) :], sizes)
    for part in [*parts, None]:
        now += 0.01
        ul.receive_data(part, now=now)
        while (event := ul.next_event()) is not NEED_DATA:
            if isinstance(event, AssociationRequested):
                rq = event.request
                try:
                    ac = ac_for(rq)
                except AssertionError:
                    user_send(AssociateRJ(1, 1, 1))
                    continue
                user_send(ac)
                ops = DIMSEOperations(
                    (c.context_id for c in ac.presentation_contexts if c.result == 0),
                    max_invoked=1,
                    max_performed=1,
                )
            elif isinstance(event, DataReceived):
                assert not aborted, "P-DATA indicated after the association was aborted"
                assert ops is not None
                try:
                    for op_event in ops.receive(event.pdu):
                        message = getattr(op_event, "message", None)
                        if isinstance(message, (messages.CEchoRQ, messages.CStoreRQ)):
                            rsp_cls = (
                                messages.CEchoRSP
                                if isinstance(message, messages.CEchoRQ)
                                else messages.CStoreRSP
                            )
                            ops.respond(
                                message.message_id,
                                rsp_cls(message_id_being_responded_to=message.message_id, status=0),
                            )
                except ProtocolError as exc:
                    user_send(Abort(2, int(exc.abort_reason)))
                    aborted = True
            elif isinstance(event, AssociationAborted):
                aborted = True
            elif isinstance(event, ConnectionClosed):
                assert ul.state is State.IDLE
            elif type(event).__name__ == "ReleaseRequested" and not aborted:
                user_send(ReleaseRP())
        ul.data_to_send()
    assert ul.state is State.IDLE or ul.timer_deadline() is not None


# --------------------------------------------------------------------------- live acceptor


@pytest.mark.anyio
@live_settings
@given(changes=mutations, sizes=cuts, mutate_rq=st.booleans())
# found by the thorough profile: a refused application context name (RJ 1/1/2), then an
# invalid PDU in Sta13, answered by an A-ABORT after the RJ (AA-7)
@example(changes=[("flip", 78, 1), ("flip", 232, 1)], sizes=[], mutate_rq=True)
async def test_live_acceptor_on_mutated_sessions(
    changes: list[tuple[str, int, Any]], sizes: list[int], mutate_rq: bool
) -> None:
    stream = mutate(RQ + SESSION, changes, start=0 if mutate_rq else len(RQ))
    scp = AE("SCP", accept_any_storage=True, timeouts=SHORT)
    stored: list[int] = []

    @scp.on_store
    async def on_store(request: Any) -> int:
        stored.append(len(await request.read()))
        return 0x0000

    internal_before = AE.total_internal_errors
    client, server = memory_stream_pair()
    received = bytearray()
    with anyio.fail_after(BOUND):
        async with anyio.create_task_group() as tg:
            tg.start_soon(scp.serve_stream, server)

            answered = anyio.Event()

            async def read_all() -> None:
                try:
                    while True:
                        received.extend(await client.receive())
                        answered.set()
                except (anyio.EndOfStream, anyio.ClosedResourceError):
                    return
                finally:
                    answered.set()

            tg.start_soon(read_all)
            try:
                # the A-ASSOCIATE-RQ part first; the rest once the acceptor has answered it
                for part in split(stream[: len(RQ)], sizes):
                    await client.send(part)
                await answered.wait()
                for part in split(stream[len(RQ) :], sizes):
                    await client.send(part)
                await client.send_eof()
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                pass  # the acceptor already closed
    await client.aclose()
    assert AE.total_internal_errors == internal_before
    pdus = split_pdus(bytes(received))
    for i, pdu in enumerate(pdus):
        assert isinstance(pdu, (AssociateAC, AssociateRJ, PDataTF, ReleaseRP, Abort)), pdu
        if isinstance(pdu, Abort):
            assert i == len(pdus) - 1, pdus  # at most one A-ABORT, and nothing after it
        elif isinstance(pdu, (AssociateRJ, ReleaseRP)):
            # After an A-ASSOCIATE-RJ or A-RELEASE-RP the acceptor waits in Sta13 for the
            # peer to close: an A-ASSOCIATE-RQ or an invalid PDU received there is answered
            # with an A-ABORT (AA-7, PS3.8 Table 9-10); nothing else may follow.
            rest = pdus[i + 1 :]
            assert rest == [] or (len(rest) == 1 and isinstance(rest[0], Abort)), pdus
    # a stored data set is always the whole one that was sent (never a cut-short one)
    assert all(size == stored[0] for size in stored)


# --------------------------------------------------------------------------- live requestor


@pytest.mark.anyio
@live_settings
@given(changes=mutations, sizes=cuts)
async def test_live_requestor_on_mutated_answers(
    changes: list[tuple[str, int, Any]], sizes: list[int]
) -> None:
    """Our requestor against an acceptor whose A-ASSOCIATE-AC, C-ECHO-RSP and A-RELEASE-RP
    are mutated and cut anyhow: it succeeds or raises a DICOMError, in bounded time."""
    client, server = memory_stream_pair()
    scu = AE("SCU", timeouts=SHORT)
    outcome: list[BaseException | str] = []

    async def requestor() -> None:
        try:
            async with scu.associate_over(client, called_aet="SCP") as assoc:
                await assoc.echo()
            outcome.append("ok")
        except errors.DICOMError as exc:
            # the sans-IO errors are DICOMErrors too; the driver never lets one through
            assert not isinstance(exc, (errors.ProtocolError, errors.LocalProtocolError))
            outcome.append(exc)

    async def acceptor() -> None:
        buffer = b""
        while len(buffer) < 6 or len(buffer) < 6 + struct.unpack_from(">I", buffer, 2)[0]:
            buffer += await server.receive()
        rq = decode_pdu(buffer)
        assert isinstance(rq, AssociateRQ)
        rsp = messages.CEchoRSP(message_id_being_responded_to=1, status=0)
        ac = encode_pdu(ac_for(rq))
        answers = mutate(ac + encode_pdata(1, 0x03, dimse.encode_command(rsp)), changes)
        release_rq = encode_pdu(ReleaseRQ())
        try:
            # the (mutated) A-ASSOCIATE-AC part; the rest once the C-ECHO-RQ (or anything)
            # has come: a response never precedes its request
            for part in split(answers[: len(ac)], sizes):
                await server.send(part)
            await server.receive()
            for part in split(answers[len(ac) :], sizes):
                await server.send(part)
            # then answer an A-RELEASE-RQ, and read whatever comes until the requestor closes
            seen = b""
            while True:
                seen += await server.receive()
                if seen.endswith(release_rq):
                    await server.send(encode_pdu(ReleaseRP()))
                    seen = b""
        except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError):
            pass

    with anyio.fail_after(BOUND):
        async with anyio.create_task_group() as tg:
            tg.start_soon(acceptor)
            await requestor()
            await server.aclose()
    assert len(outcome) == 1
    if not changes:
        assert outcome == ["ok"]
