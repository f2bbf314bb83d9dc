"""Fault injection on live associations, on asyncio and trio (PS3.8 9.2, Table 9-10).

What tests/test_hostile.py, tests/test_association.py and tests/protocol/ already cover is not
repeated here: a peer A-ABORT mid C-STORE (acceptor side), an A-ASSOCIATE-RQ trickled byte by
byte, a response to an unknown Message ID sent *to the acceptor*, a PDV on an unaccepted
context, the ACSE timeout on A-ASSOCIATE and on A-RELEASE, the DIMSE timeout on a response and
mid-message, ARTIM on a silent connection, a peer closing with a FIN, the release collision in
the sans-IO state machine.  This file adds, on real sockets:

* a TCP reset (RST) from the peer at each phase, on the acceptor and on the requestor;
* an A-ABORT from the peer before the A-ASSOCIATE-AC, while a response is awaited and during
  release (requestor side), and before the A-ASSOCIATE-RQ (acceptor side);
* release collisions driven end to end, both roles (Sta7 -> Sta9 -> Sta11 -> Sta1 and
  Sta7 -> Sta10 -> Sta12 -> Sta13 -> Sta1);
* half-open connections (the peer vanishes without FIN or RST): the network timeout ends them;
* whole sessions trickled byte by byte in both directions;
* PDVs of two presentation contexts in one P-DATA-TF: allowed when each message is complete
  before the next starts, an A-ABORT when they interleave (PS3.8 Annex E.1);
* responses to unknown or already answered Message IDs *received by the requestor*.

Every wait is bounded by ``anyio.fail_after``; nothing uses a sleep as synchronisation.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import pytest

from asyncdicom import AE, HookEvent, errors
from asyncdicom.ae import Timeouts
from asyncdicom.protocol import dimse, messages, uids
from asyncdicom.protocol.codec import encode_pdata, encode_pdu
from asyncdicom.protocol.fsm import State
from asyncdicom.protocol.negotiation import ContextRequest, RequestorConfig, build_associate_rq
from asyncdicom.protocol.pdu import (
    Abort,
    AssociateAC,
    AssociateRQ,
    PDataTF,
    PresentationDataValue,
    ReleaseRP,
    ReleaseRQ,
)
from asyncdicom.storage.codec import encode_dataset
from asyncdicom.storage.synthetic import make_ct_instance
from tests.test_hostile import (
    CT,
    EXPLICIT,
    GUARD,
    IMPLICIT,
    VERIFICATION_RQ,
    Bench,
    RawPeer,
    associate_rq,
    hostile_bench,
)

pytestmark = pytest.mark.anyio


# --------------------------------------------------------------------------- helpers


def reset(peer: RawPeer) -> None:
    """Make the next close of ``peer`` a TCP reset (SO_LINGER 0) instead of a FIN."""
    sock = peer.stream.extra(anyio.abc.SocketAttribute.raw_socket)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


class ServerConnections:
    """The server-side associations of one AE, by the peer's port, and when each closed
    (through the CONNECTION_OPENED / CONNECTION_CLOSED hooks)."""

    def __init__(self, ae: AE) -> None:
        self._ae = ae
        self.by_port: dict[int, Any] = {}
        self.closed: dict[int, anyio.Event] = {}
        self.states: dict[int, list[tuple[State, State]]] = {}

    def __enter__(self) -> ServerConnections:
        self._ae.hooks.add(HookEvent.CONNECTION_OPENED, self._opened)
        self._ae.hooks.add(HookEvent.CONNECTION_CLOSED, self._closed)
        self._ae.hooks.add(HookEvent.STATE_TRANSITION, self._transition)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._ae.hooks.remove(HookEvent.CONNECTION_OPENED, self._opened)
        self._ae.hooks.remove(HookEvent.CONNECTION_CLOSED, self._closed)
        self._ae.hooks.remove(HookEvent.STATE_TRANSITION, self._transition)

    def _event(self, port: int) -> anyio.Event:
        return self.closed.setdefault(port, anyio.Event())

    def _opened(self, event: HookEvent, assoc: Any, **_: Any) -> None:
        self.by_port[assoc.peer_port] = assoc
        self._event(assoc.peer_port)

    def _closed(self, event: HookEvent, assoc: Any, **_: Any) -> None:
        self._event(assoc.peer_port).set()

    def _transition(self, event: HookEvent, assoc: Any, **data: Any) -> None:
        self.states.setdefault(assoc.peer_port, []).append((data["old_state"], data["new_state"]))

    async def wait_closed(self, port: int) -> Any:
        """Wait until the server has closed the connection of ``port``; its association."""
        with anyio.fail_after(GUARD):
            await self._event(port).wait()
        return self.by_port[port]


@dataclass
class Outcome:
    """What a requestor task ended with."""

    error: BaseException | None = None
    assoc: Any = None
    done: anyio.Event = field(default_factory=anyio.Event)
    results: list[Any] = field(default_factory=list)

    async def wait(self) -> None:
        with anyio.fail_after(GUARD):
            await self.done.wait()


@asynccontextmanager
async def raw_acceptor() -> AsyncIterator[tuple[int, Callable[[], Awaitable[RawPeer]]]]:
    """A TCP listener on 127.0.0.1 whose connections the test drives byte by byte."""
    listener = (await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)).listeners[0]
    port = int(listener.extra(anyio.abc.SocketAttribute.local_port))
    accepted: list[Any] = []

    async def accept() -> RawPeer:
        with anyio.fail_after(GUARD):
            stream = await listener.accept()
        accepted.append(stream)
        return RawPeer(stream)

    try:
        yield port, accept
    finally:
        for stream in accepted:
            await stream.aclose()
        await listener.aclose()


def run_requestor(
    tg: anyio.abc.TaskGroup,
    port: int,
    body: Callable[[Any], Awaitable[Any]],
    *,
    timeouts: Timeouts | None = None,
    contexts: Any = (uids.VERIFICATION,),
    scu: AE | None = None,
) -> Outcome:
    """Start our requestor against ``port`` running ``body(assoc)``; its outcome."""
    outcome = Outcome()
    if scu is None:
        scu = AE("SCU", timeouts=timeouts or Timeouts(acse=GUARD, dimse=GUARD, artim=1.0))

    async def run() -> None:
        try:
            async with scu.associate(
                "127.0.0.1", port, called_aet="SCP", contexts=list(contexts)
            ) as assoc:
                outcome.assoc = assoc
                outcome.results.append(await body(assoc))
        except Exception as exc:
            outcome.error = exc
        finally:
            outcome.done.set()

    tg.start_soon(run)
    return outcome


async def accept_association(peer: RawPeer) -> AssociateRQ:
    """Read the A-ASSOCIATE-RQ of our requestor and accept its first context."""
    raw = await peer.receive_raw_pdu()
    assert raw is not None
    from asyncdicom.protocol.codec import decode_pdu

    rq = decode_pdu(raw)
    assert isinstance(rq, AssociateRQ)
    await peer.send(encode_pdu(ac_for(rq)))
    return rq


def ac_for(rq: AssociateRQ) -> AssociateAC:
    """The A-ASSOCIATE-AC our own acceptor code would send, accepting what it can."""
    from asyncdicom.protocol.negotiation import AcceptorConfig, SupportedContext, negotiate

    config = AcceptorConfig(
        ae_title="SCP",
        implementation_class_uid="1.2.3.4",
        supported=(
            SupportedContext(uids.VERIFICATION, (IMPLICIT, EXPLICIT)),
            SupportedContext(CT, (EXPLICIT, IMPLICIT)),
        ),
    )
    result = negotiate(rq, config)
    ac = getattr(result, "ac", None)
    assert isinstance(ac, AssociateAC), result
    return ac


async def echo_body(assoc: Any) -> Any:
    return await assoc.echo()


# --------------------------------------------------------------------------- acceptor: RST


async def _reset_before_rq(b: Bench, conns: ServerConnections) -> None:
    async with RawPeer.connect(b.port) as peer:
        port = peer.local_port
        await peer.send(associate_rq(VERIFICATION_RQ)[:20])
        reset(peer)
    assoc = await conns.wait_closed(port)
    # Sta2 -> Evt17 -> AA-5 -> Sta1: no association ever existed
    assert assoc.abort_info is None and not assoc.released and assoc.negotiated is None


async def _reset_after_rq(b: Bench, conns: ServerConnections) -> None:
    async with RawPeer.connect(b.port) as peer:
        port = peer.local_port
        await peer.send(associate_rq(VERIFICATION_RQ))
        reset(peer)
    assoc = await conns.wait_closed(port)
    assert not assoc.released


async def _reset_mid_store(b: Bench, conns: ServerConnections) -> None:
    ds = make_ct_instance(200_000, seed=41)
    data = encode_dataset(ds, EXPLICIT)
    async with RawPeer.connect(b.port) as peer:
        port = peer.local_port
        await peer.associate(associate_rq([(CT, (EXPLICIT,))]))
        store = messages.CStoreRQ(
            message_id=1, affected_sop_class_uid=CT, affected_sop_instance_uid=ds.SOPInstanceUID
        )
        await peer.send(encode_pdata(1, 0x03, dimse.encode_command(store)))
        await peer.send(encode_pdata(1, 0x00, data[:16000]))
        reset(peer)
    assoc = await conns.wait_closed(port)
    # Sta6 -> Evt17 -> AA-4: an A-P-ABORT indication, never a release
    assert assoc.abort_info is not None and not assoc.released
    # the bench checks that no file (final or temporary) of this instance is left


async def _reset_while_server_answers(b: Bench, conns: ServerConnections) -> None:
    async with RawPeer.connect(b.port) as peer:
        port = peer.local_port
        await peer.associate(associate_rq(VERIFICATION_RQ))
        await peer.send_message(1, messages.CEchoRQ(message_id=1))
        reset(peer)
    assoc = await conns.wait_closed(port)
    assert not assoc.released


async def _reset_during_release(b: Bench, conns: ServerConnections) -> None:
    async with RawPeer.connect(b.port) as peer:
        port = peer.local_port
        await peer.associate(associate_rq(VERIFICATION_RQ))
        await peer.send(encode_pdu(ReleaseRQ()))
        reset(peer)
    await conns.wait_closed(port)


async def _abort_before_rq(b: Bench, conns: ServerConnections) -> None:
    async with RawPeer.connect(b.port) as peer:
        port = peer.local_port
        await peer.send(encode_pdu(Abort(0, 0)))
        # Sta2 -> Evt16 -> AA-2: close, nothing sent
        await peer.expect_closed()
    assoc = await conns.wait_closed(port)
    assert assoc.negotiated is None


ACCEPTOR_FAULTS = {
    f.__name__.lstrip("_"): f
    for f in (
        _reset_before_rq,
        _reset_after_rq,
        _reset_mid_store,
        _reset_while_server_answers,
        _reset_during_release,
        _abort_before_rq,
    )
}


@pytest.mark.parametrize("fault", list(ACCEPTOR_FAULTS))
async def test_acceptor_fault_beside_legit_association(fault: str, tmp_path: Path) -> None:
    """The server ends the faulty connection promptly (no ARTIM, no timeout needed: the
    server's ARTIM here is longer than the guard), and the legitimate association beside it
    goes on with every instance stored and no stray file."""
    async with hostile_bench(tmp_path, artim=GUARD * 3) as bench:
        with ServerConnections(bench.ae) as conns, anyio.fail_after(GUARD * 2):
            await ACCEPTOR_FAULTS[fault](bench, conns)


# ------------------------------------------------------------------ requestor: RST, A-ABORT


async def test_requestor_reset_before_associate_ac() -> None:
    async with raw_acceptor() as (port, accept), anyio.create_task_group() as tg:
        outcome = run_requestor(tg, port, echo_body)
        peer = await accept()
        assert await peer.receive_raw_pdu() is not None  # the A-ASSOCIATE-RQ
        reset(peer)
        await peer.stream.aclose()
        await outcome.wait()
    assert isinstance(outcome.error, errors.ConnectionLost), repr(outcome.error)


async def test_requestor_abort_before_associate_ac() -> None:
    async with raw_acceptor() as (port, accept), anyio.create_task_group() as tg:
        outcome = run_requestor(tg, port, echo_body)
        peer = await accept()
        assert await peer.receive_raw_pdu() is not None
        await peer.send(encode_pdu(Abort(2, 0)))
        # Sta5 -> Evt16 -> AA-3: the requestor closes, sending nothing
        await peer.expect_closed()
        await outcome.wait()
    error = outcome.error
    assert isinstance(error, errors.AssociationAborted), repr(error)
    assert (error.source, error.reason, error.local) == (2, 0, False)


async def test_requestor_aborting_an_invalid_ac_does_not_wait_for_artim() -> None:
    """An A-ASSOCIATE-AC accepting a transfer syntax we did not propose: A-ABORT, and the
    peer, which keeps the connection open, gets a moment to close it, not the whole ARTIM
    timeout (60 s here)."""
    from dataclasses import replace

    from asyncdicom.protocol.codec import decode_pdu

    async with raw_acceptor() as (port, accept), anyio.create_task_group() as tg:
        timeouts = Timeouts(acse=GUARD, dimse=GUARD, artim=GUARD)
        outcome = run_requestor(tg, port, echo_body, timeouts=timeouts)
        peer = await accept()
        raw = await peer.receive_raw_pdu()
        assert raw is not None
        rq = decode_pdu(raw)
        assert isinstance(rq, AssociateRQ)
        ac = ac_for(rq)
        bad = tuple(replace(c, transfer_syntax="1.2.3.4.5.6") for c in ac.presentation_contexts)
        await peer.send(encode_pdu(replace(ac, presentation_contexts=bad)))
        await peer.expect_abort(0, 0)
        with anyio.fail_after(GUARD / 6):  # ABORT_LINGER (1 s), far below the ARTIM of 60 s
            await outcome.done.wait()
    error = outcome.error
    assert isinstance(error, errors.AssociationAborted), repr(error)
    assert error.local and "was not proposed" in str(error)


LONG = Timeouts(acse=GUARD, dimse=GUARD, artim=GUARD)


async def test_requestor_aborts_at_once_on_a_malformed_response() -> None:
    """A response whose command set is garbage: A-ABORT (provider) at once, and the waiting
    echo() learns it then, not after the DIMSE timeout (60 s here), nor after ARTIM while the
    peer keeps the connection open."""
    async with raw_acceptor() as (port, accept), anyio.create_task_group() as tg:
        outcome = run_requestor(tg, port, echo_body, timeouts=LONG)
        peer = await accept()
        await accept_association(peer)
        assert await peer.receive_raw_pdu() is not None  # the C-ECHO-RQ
        await peer.send(encode_pdata(1, 0x03, b"\x01" * 50))
        await peer.expect_abort(2)
        with anyio.fail_after(GUARD / 6):
            await outcome.done.wait()
    error = outcome.error
    assert isinstance(error, errors.AssociationAborted), repr(error)
    assert error.local and "command set" in str(error)
    assert not outcome.assoc.is_established  # aborted: no longer usable, closed or not


async def test_requestor_aborts_at_once_on_a_malformed_associate_rj() -> None:
    """An A-ASSOCIATE-RJ whose PDU-length is not 4 (PS3.8 9.3.4): A-ABORT, and the requestor
    fails at once, not after the ACSE timeout (60 s here)."""
    async with raw_acceptor() as (port, accept), anyio.create_task_group() as tg:
        outcome = run_requestor(tg, port, echo_body, timeouts=LONG)
        peer = await accept()
        assert await peer.receive_raw_pdu() is not None  # the A-ASSOCIATE-RQ
        await peer.send(b"\x03\x00\x00\x00\x00\x06\x00\x01\x01\x03\x00\x00")
        await peer.expect_abort(2)
        with anyio.fail_after(GUARD / 6):
            await outcome.done.wait()
    error = outcome.error
    assert isinstance(error, errors.AssociationAborted), repr(error)
    assert error.local and (error.source, error.reason) == (2, 6)


@pytest.mark.parametrize("how", ["reset", "abort"])
async def test_requestor_peer_gone_while_awaiting_response(how: str) -> None:
    """The peer resets or aborts while our C-ECHO waits: the wait ends at once with the
    matching error (well before the DIMSE timeout, which is the guard here)."""
    async with raw_acceptor() as (port, accept), anyio.create_task_group() as tg:
        outcome = run_requestor(tg, port, echo_body)
        peer = await accept()
        await accept_association(peer)
        rq = await peer.receive_command()
        assert isinstance(rq, messages.CEchoRQ)
        started = anyio.current_time()
        if how == "reset":
            reset(peer)
            await peer.stream.aclose()
        else:
            await peer.send(encode_pdu(Abort(0, 0)))
            await peer.expect_closed()
        await outcome.wait()
    assert anyio.current_time() - started < GUARD / 2
    assert outcome.assoc is not None and outcome.assoc.is_closed and not outcome.assoc.released
    if how == "reset":
        assert isinstance(outcome.error, errors.ConnectionLost), repr(outcome.error)
    else:
        assert isinstance(outcome.error, errors.AssociationAborted), repr(outcome.error)
        assert (outcome.error.source, outcome.error.local) == (0, False)


@pytest.mark.parametrize("how", ["reset", "abort"])
async def test_requestor_peer_gone_during_release(how: str) -> None:
    """Sta7 + RST (Evt17, AA-4) or A-ABORT (Evt16, AA-3): release() returns at once, the
    association counts as aborted, not released."""
    async with raw_acceptor() as (port, accept), anyio.create_task_group() as tg:

        async def body(assoc: Any) -> None:
            await assoc.release()

        outcome = run_requestor(tg, port, body)
        peer = await accept()
        await accept_association(peer)
        assert isinstance(await peer.receive_pdu(), ReleaseRQ)
        if how == "reset":
            reset(peer)
            await peer.stream.aclose()
        else:
            await peer.send(encode_pdu(Abort(0, 0)))
            await peer.expect_closed()
        await outcome.wait()
    assoc = outcome.assoc
    assert outcome.error is None, repr(outcome.error)
    assert assoc.is_closed and not assoc.released
    assert assoc.abort_info is not None
    if how == "abort":
        assert (assoc.abort_info.source, assoc.abort_info.local) == (0, False)


# --------------------------------------------------------------------------- release collision


async def test_release_collision_requestor_side() -> None:
    """Both sides send A-RELEASE-RQ. Our requestor: Sta7 -Evt12/AR-8-> Sta9 -AR-9 (sends
    A-RELEASE-RP)-> Sta11 -Evt13/AR-3-> Sta1, released, no A-ABORT."""
    transitions: list[tuple[State, State]] = []
    async with raw_acceptor() as (port, accept), anyio.create_task_group() as tg:

        async def body(assoc: Any) -> None:
            await assoc.release()

        scu = AE("SCU", timeouts=Timeouts(acse=GUARD, artim=1.0))
        scu.hooks.add(
            HookEvent.STATE_TRANSITION,
            lambda e, a, **d: transitions.append((d["old_state"], d["new_state"])),
        )
        outcome = run_requestor(tg, port, body, scu=scu)
        peer = await accept()
        await accept_association(peer)
        assert isinstance(await peer.receive_pdu(), ReleaseRQ)
        # our own A-RELEASE-RQ "crossed" the requestor's on the wire
        await peer.send(encode_pdu(ReleaseRQ()))
        # PS3.8: the requestor answers first (AR-9), then waits for our RP
        assert isinstance(await peer.receive_pdu(), ReleaseRP)
        await peer.send(encode_pdu(ReleaseRP()))
        await peer.expect_closed()  # AR-3: the requestor closes the connection
        await outcome.wait()
    assert outcome.error is None, repr(outcome.error)
    assert outcome.assoc.released and outcome.assoc.abort_info is None
    path = [new for _, new in transitions]
    assert path[-4:] == [
        State.AWAITING_RELEASE_RP,
        State.COLLISION_REQUESTOR_AWAITING_LOCAL_RESPONSE,
        State(11),
        State.IDLE,
    ], path


async def test_release_collision_acceptor_side(tmp_path: Path) -> None:
    """Our acceptor releases while the requestor does too: Sta7 -Evt12/AR-8-> Sta10
    -Evt13/AR-10-> Sta12 -AR-4 (sends RP)-> Sta13 -Evt17/AR-5-> Sta1; the legitimate
    association beside it is unaffected."""
    async with hostile_bench(tmp_path, artim=GUARD * 3) as b:
        with ServerConnections(b.ae) as conns, anyio.fail_after(GUARD * 2):
            async with anyio.create_task_group() as tg:
                async with RawPeer.connect(b.port) as peer:
                    port = peer.local_port
                    await peer.associate(associate_rq(VERIFICATION_RQ))
                    server_assoc = conns.by_port[port]
                    tg.start_soon(server_assoc.release)
                    # the acceptor's A-RELEASE-RQ arrives; ours is "already on the wire"
                    assert isinstance(await peer.receive_pdu(), ReleaseRQ)
                    await peer.send(encode_pdu(ReleaseRQ()))
                    # we are the requestor: our RP goes first, then the acceptor's comes
                    await peer.send(encode_pdu(ReleaseRP()))
                    assert isinstance(await peer.receive_pdu(), ReleaseRP)
                # we close the connection (the acceptor waits in Sta13); release() returns
            await conns.wait_closed(port)
    assert server_assoc.released and server_assoc.abort_info is None
    path = [new for _, new in conns.states[port]]
    assert path[-5:] == [
        State.AWAITING_RELEASE_RP,
        State(10),
        State(12),
        State(13),
        State.IDLE,
    ], path


async def test_release_collision_between_our_own_ends() -> None:
    """Requestor and acceptor both asyncdicom, both releasing at the same moment (over the
    in-memory pipe): both end released, neither aborts."""
    from asyncdicom.testing import memory_stream_pair

    scp = AE("SCP")
    server_assocs: list[Any] = []
    scp.hooks.add(HookEvent.ASSOCIATION_ACCEPTED, lambda e, a, **_: server_assocs.append(a))
    client, server = memory_stream_pair()
    with anyio.fail_after(GUARD):
        async with anyio.create_task_group() as tg:
            tg.start_soon(scp.serve_stream, server)
            async with AE("SCU").associate_over(client, called_aet="SCP") as assoc:
                assert (await assoc.echo()).status == 0
                (theirs,) = server_assocs
                # queue both A-RELEASE-RQs before either side reads: a true collision
                async with anyio.create_task_group() as both:
                    both.start_soon(theirs.release)
                    both.start_soon(assoc.release)
            await theirs.wait_closed()
            tg.cancel_scope.cancel()
    assert assoc.released and assoc.abort_info is None
    assert theirs.released and theirs.abort_info is None


# --------------------------------------------------------------------------- half-open


async def test_half_open_established_connection_ended_by_network_timeout() -> None:
    """The peer vanishes without FIN or RST (a cable pulled): the socket stays open and
    silent.  With a network timeout the server aborts it (A-ABORT, then closes); a busy
    legitimate association beside it is not touched."""
    network = 0.5
    scp = AE("SCP", timeouts=Timeouts(artim=GUARD, network=network))
    async with scp.server() as server:
        with ServerConnections(scp) as conns, anyio.fail_after(GUARD * 2):
            async with (
                AE("LEGIT").associate("127.0.0.1", server.port, called_aet="SCP") as legit,
                RawPeer.connect(server.port) as peer,
            ):
                port = peer.local_port
                await peer.associate(associate_rq(VERIFICATION_RQ))
                started = anyio.current_time()
                async with anyio.create_task_group() as tg:

                    async def keep_busy() -> None:
                        while True:
                            assert (await legit.echo()).status == 0

                    tg.start_soon(keep_busy)
                    # nothing more is sent; we only look at what the server does
                    await peer.expect_abort(0, 0)
                    tg.cancel_scope.cancel()
                assert anyio.current_time() - started >= network * 0.9
                assoc = await conns.wait_closed(port)
                assert assoc.abort_info is not None and assoc.abort_info.local
                assert legit.is_established and (await legit.echo()).status == 0
            assert legit.released


async def test_half_open_connection_mid_message_ended_by_dimse_timeout() -> None:
    """Our requestor waits for a C-ECHO-RSP from a peer that vanished without FIN: the
    DIMSE timeout ends it (A-ABORT sent, connection closed, DIMSETimeout raised)."""
    async with raw_acceptor() as (port, accept), anyio.create_task_group() as tg:
        outcome = run_requestor(tg, port, echo_body, timeouts=Timeouts(dimse=0.4, artim=GUARD))
        peer = await accept()
        await accept_association(peer)
        assert isinstance(await peer.receive_command(), messages.CEchoRQ)
        await peer.expect_abort(0, 0)
        await outcome.wait()
    assert isinstance(outcome.error, errors.DIMSETimeout), repr(outcome.error)


# --------------------------------------------------------------------------- trickled PDUs


async def test_whole_session_trickled_byte_by_byte_to_the_acceptor(tmp_path: Path) -> None:
    """A-ASSOCIATE-RQ, a C-STORE (command and data set) and A-RELEASE-RQ, sent one byte per
    write: stored in full, answered, released."""
    ds = make_ct_instance(600, seed=17)
    data = encode_dataset(ds, EXPLICIT)
    store = messages.CStoreRQ(
        message_id=7, affected_sop_class_uid=CT, affected_sop_instance_uid=ds.SOPInstanceUID
    )
    stream = (
        associate_rq([(CT, (EXPLICIT,))])
        + encode_pdata(1, 0x03, dimse.encode_command(store))
        + encode_pdata(1, 0x02, data)
    )
    async with hostile_bench(tmp_path, artim=GUARD) as b, RawPeer.connect(b.port) as peer:
        with anyio.fail_after(GUARD * 3):
            for i in range(len(stream)):
                await peer.send(stream[i : i + 1])
            assert isinstance(await peer.receive_pdu(), AssociateAC)
            rsp = await peer.receive_command()
            assert isinstance(rsp, messages.CStoreRSP)
            assert (rsp.message_id_being_responded_to, rsp.status) == (7, 0)
            for byte in encode_pdu(ReleaseRQ()):
                await peer.send(bytes([byte]))
            assert isinstance(await peer.receive_pdu(), ReleaseRP)
        b.load.stored.append(str(ds.SOPInstanceUID))  # the bench checks it is on disk


async def test_acceptor_answers_trickled_byte_by_byte_to_the_requestor() -> None:
    """The A-ASSOCIATE-AC, a C-ECHO-RSP and the A-RELEASE-RP arrive one byte per write."""

    async def trickle(peer: RawPeer, data: bytes) -> None:
        for i in range(len(data)):
            await peer.send(data[i : i + 1])

    async with raw_acceptor() as (port, accept), anyio.create_task_group() as tg:
        outcome = run_requestor(tg, port, echo_body)
        peer = await accept()
        raw = await peer.receive_raw_pdu()
        assert raw is not None
        from asyncdicom.protocol.codec import decode_pdu

        rq = decode_pdu(raw)
        assert isinstance(rq, AssociateRQ)
        await trickle(peer, encode_pdu(ac_for(rq)))
        echo = await peer.receive_command()
        assert isinstance(echo, messages.CEchoRQ)
        rsp = messages.CEchoRSP(message_id_being_responded_to=echo.message_id, status=0)
        await trickle(peer, encode_pdata(1, 0x03, dimse.encode_command(rsp)))
        assert isinstance(await peer.receive_pdu(), ReleaseRQ)
        await trickle(peer, encode_pdu(ReleaseRP()))
        await peer.expect_closed()
        await outcome.wait()
    assert outcome.error is None, repr(outcome.error)
    assert outcome.results[0].status == 0 and outcome.assoc.released


# --------------------------------------------------------------------------- interleaved PDVs


def _two_context_rq(window: tuple[int, int] | None) -> bytes:
    """Verification twice (contexts 1 and 3), CT (context 5), optionally an async window."""
    rq = build_associate_rq(
        RequestorConfig(
            calling_ae_title="RAW",
            called_ae_title="SCP",
            implementation_class_uid="1.2.3.4",
            async_ops_window=window,
        ),
        [
            ContextRequest(uids.VERIFICATION, (IMPLICIT,)),
            ContextRequest(uids.VERIFICATION, (EXPLICIT,)),
            ContextRequest(CT, (EXPLICIT,)),
        ],
    )
    return encode_pdu(rq)


def _pdv(context_id: int, header: int, data: bytes) -> PresentationDataValue:
    return PresentationDataValue(context_id, header, data)


def _command(message: messages.Message) -> bytes:
    return dimse.encode_command(message)


async def test_complete_messages_of_two_contexts_in_one_pdata(tmp_path: Path) -> None:
    """PS3.8 9.3.5 / Annex E.1: one P-DATA-TF may carry several PDVs; messages of different
    contexts may follow one another in it as long as each is complete before the next
    starts.  Two C-ECHO-RQs (contexts 1 and 3) and a whole C-STORE (context 5) in one PDU:
    each is answered on its own context."""
    ds = make_ct_instance(500, seed=23)
    data = encode_dataset(ds, EXPLICIT)
    store = messages.CStoreRQ(
        message_id=3, affected_sop_class_uid=CT, affected_sop_instance_uid=ds.SOPInstanceUID
    )
    pdu = PDataTF(
        (
            _pdv(1, 0x03, _command(messages.CEchoRQ(message_id=1))),
            _pdv(3, 0x03, _command(messages.CEchoRQ(message_id=2))),
            _pdv(5, 0x03, _command(store)),
            _pdv(5, 0x00, data[:100]),
            _pdv(5, 0x02, data[100:]),
        )
    )
    async with hostile_bench(tmp_path, artim=GUARD) as b, RawPeer.connect(b.port) as peer:
        with anyio.fail_after(GUARD):
            ac = await peer.associate(_two_context_rq((4, 4)))
            assert [c.result for c in ac.presentation_contexts] == [0, 0, 0]
            await peer.send(encode_pdu(pdu))
            answers: dict[int, tuple[int, int]] = {}
            while len(answers) < 3:
                got = await peer.receive_pdu()
                assert isinstance(got, PDataTF), got
                for pdv in got.pdvs:
                    rsp = dimse.decode_command(pdv.data)
                    answers[rsp.message_id_being_responded_to] = (pdv.context_id, rsp.status)
            assert answers == {1: (1, 0), 2: (3, 0), 3: (5, 0)}
            await peer.release()
        b.load.stored.append(str(ds.SOPInstanceUID))


INTERLEAVINGS = {
    # a C-STORE's data set interrupted by a C-ECHO on another context
    "command-between-dataset-fragments": lambda store, data: [
        _pdv(5, 0x03, store),
        _pdv(5, 0x00, data[:100]),
        _pdv(1, 0x03, _command(messages.CEchoRQ(message_id=2))),
        _pdv(5, 0x02, data[100:]),
    ],
    # the data set of the C-STORE sent on another (accepted) context
    "dataset-on-another-context": lambda store, data: [
        _pdv(5, 0x03, store),
        _pdv(3, 0x02, data),
    ],
    # a command set split in two, the halves on different contexts
    "command-fragments-on-two-contexts": lambda store, data: [
        _pdv(5, 0x01, store[:20]),
        _pdv(3, 0x03, store[20:]),
    ],
}


@pytest.mark.parametrize("where", ["one-pdu", "separate-pdus"])
@pytest.mark.parametrize("interleaving", list(INTERLEAVINGS))
async def test_interleaved_messages_of_two_contexts_abort(
    interleaving: str, where: str, tmp_path: Path
) -> None:
    """PS3.8 Annex E.1: fragments of different messages are never interleaved.  The acceptor
    aborts (A-ABORT, source service-provider), stores nothing, and the legitimate association
    beside it goes on."""
    ds = make_ct_instance(500, seed=29)
    data = encode_dataset(ds, EXPLICIT)
    store = _command(
        messages.CStoreRQ(
            message_id=1, affected_sop_class_uid=CT, affected_sop_instance_uid=ds.SOPInstanceUID
        )
    )
    pdvs = INTERLEAVINGS[interleaving](store, data)
    async with hostile_bench(tmp_path) as b, RawPeer.connect(b.port) as peer:
        with anyio.fail_after(GUARD):
            await peer.associate(_two_context_rq((4, 4)))
            if where == "one-pdu":
                await peer.send(encode_pdu(PDataTF(tuple(pdvs))))
            else:
                for pdv in pdvs:
                    await peer.send(encode_pdu(PDataTF((pdv,))))
            await peer.expect_abort(2)
    # hostile_bench: no file of this instance, the legitimate one's all present


# --------------------------------------------------------------------------- unknown Message IDs


@pytest.mark.parametrize("which", ["unknown", "already-answered", "wrong-context"])
async def test_requestor_aborts_on_response_to_unknown_message_id(which: str) -> None:
    """A response whose Message ID Being Responded To names no outstanding request of ours
    (never sent, or already answered), or arrives on another context than its request:
    A-ABORT (source service-provider) and the waiting operation fails, never hangs."""

    async def body(assoc: Any) -> Any:
        first = await assoc.echo()
        assert first.status == 0
        return await assoc.echo()

    async with raw_acceptor() as (port, accept), anyio.create_task_group() as tg:
        outcome = run_requestor(tg, port, body, contexts=[(uids.VERIFICATION, [IMPLICIT]), CT])
        peer = await accept()
        await accept_association(peer)
        first = await peer.receive_command()
        assert isinstance(first, messages.CEchoRQ)
        await peer.send_message(
            1, messages.CEchoRSP(message_id_being_responded_to=first.message_id, status=0)
        )
        second = await peer.receive_command()
        assert isinstance(second, messages.CEchoRQ)
        if which == "unknown":
            bad, context = second.message_id + 1000, 1
        elif which == "already-answered":
            bad, context = first.message_id, 1
        else:
            bad, context = second.message_id, 3
        await peer.send_message(
            context, messages.CEchoRSP(message_id_being_responded_to=bad, status=0)
        )
        await peer.expect_abort(2)
        await outcome.wait()
    assert isinstance(outcome.error, errors.AssociationAborted), repr(outcome.error)
    assert outcome.error.local and outcome.error.source == 2


def test_user_abort_voids_pdata_indications_not_yet_taken() -> None:
    """Regression (found by the interleaving test above): three P-DATA-TF PDUs arrive in one
    read; the driver takes the first two, finds the second breaks PS3.8 Annex E and aborts.
    The third (the last fragment of the C-STORE being received) must not be indicated after
    the A-ABORT: the C-STORE would complete and be stored although it was aborted."""
    from asyncdicom.protocol.events import AssociationRequested, DataReceived
    from asyncdicom.protocol.upper_layer import NEED_DATA, Role, UpperLayer

    ul = UpperLayer(Role.ACCEPTOR, artim_timeout=1.0)
    ul.connection_made(now=0.0)
    rq_bytes = associate_rq(VERIFICATION_RQ)
    ul.receive_data(rq_bytes, now=0.0)
    requested = ul.next_event()
    assert isinstance(requested, AssociationRequested)
    ul.send(ac_for(requested.request), now=0.0)
    ul.data_to_send()
    chunk = (
        encode_pdata(1, 0x03, _command(messages.CEchoRQ(message_id=1)))
        + encode_pdata(3, 0x01, b"\x00" * 8)
        + encode_pdata(1, 0x02, b"\x00" * 8)
    )
    ul.receive_data(chunk, now=0.0)
    assert isinstance(ul.next_event(), DataReceived)
    assert isinstance(ul.next_event(), DataReceived)
    ul.send(Abort(2, 5), now=0.0)  # the driver's reaction to a protocol error
    assert ul.state is State(13)
    assert ul.next_event() is NEED_DATA


@pytest.mark.parametrize(
    "tail, abort",
    [(b"\xee" * 10, (2, 1)), (encode_pdu(Abort(0, 0)), None)],
    ids=["garbage", "a-abort"],
)
async def test_request_followed_in_the_same_read_by_an_abort_cause(
    tail: bytes, abort: tuple[int, int] | None
) -> None:
    """Regression (found by tests/test_fuzz.py): a C-ECHO-RQ and, in the same read, garbage
    (AA-8) or the peer's A-ABORT (AA-3).  The association is gone before the echo is
    answered: the acceptor sends the A-ABORT (for garbage) or nothing, and closes; it used to
    try to answer in Sta13/Sta1 and end on an internal error."""
    from asyncdicom.testing import memory_stream_pair

    scp = AE("SCP", timeouts=Timeouts(artim=0.3))
    before = scp.internal_errors
    client, server = memory_stream_pair()
    peer = RawPeer(client)
    with anyio.fail_after(GUARD):
        async with anyio.create_task_group() as tg:
            tg.start_soon(scp.serve_stream, server)
            await peer.associate(associate_rq(VERIFICATION_RQ))
            echo = encode_pdata(1, 0x03, _command(messages.CEchoRQ(message_id=1)))
            await peer.send(echo + tail)  # one write: one read on the other end
            if abort is not None:
                await peer.expect_abort(*abort)
            else:
                await peer.expect_closed()
            await client.aclose()
    assert scp.internal_errors == before
