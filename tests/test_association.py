"""Driver tests: our SCU against our SCP over real loopback sockets, on asyncio and trio."""

from __future__ import annotations

import socket
import struct
from pathlib import Path
from typing import Any

import anyio
import pydicom
import pytest

from asyncdicom import AE, errors
from asyncdicom.ae import Timeouts
from asyncdicom.hooks import HookEvent
from asyncdicom.protocol import uids
from asyncdicom.protocol.codec import decode_pdu, encode_pdu
from asyncdicom.protocol.pdu import Abort, AssociateRJ, AssociateRQ
from asyncdicom.storage.synthetic import make_ct_instance

pytestmark = pytest.mark.anyio

SAMPLES = Path(pydicom.data.__file__).parent / "test_files"
CT = uids.CT_IMAGE_STORAGE


def _scp(**kw: Any) -> AE:
    return AE("SCP", **kw)


async def test_echo_round_trip() -> None:
    scp = _scp()
    async with scp.server() as server:
        async with AE("SCU").associate("127.0.0.1", server.port, called_aet="SCP") as assoc:
            assert assoc.is_established
            assert (await assoc.echo()).status == 0x0000
            assert (await assoc.echo()).status == 0x0000
        assert assoc.is_closed
        assert assoc.released


async def test_custom_echo_handler_status_reaches_scu() -> None:
    scp = _scp()
    seen: list[str] = []

    @scp.on_echo
    async def on_echo(request: Any) -> int:
        seen.append(request.association.calling_ae_title)
        return 0x0122

    async with scp.server() as server:
        async with AE("CALLER").associate("127.0.0.1", server.port) as assoc:
            assert (await assoc.echo()).status == 0x0122
    assert seen == ["CALLER"]


async def test_sync_handler_runs_in_thread() -> None:
    scp = _scp()
    scp.on_echo(lambda request: 0x0001)
    async with scp.server() as server, AE("SCU").associate("127.0.0.1", server.port) as assoc:
        assert (await assoc.echo()).status == 0x0001


async def test_store_dataset_and_file(tmp_path: Path) -> None:
    out = tmp_path / "out"
    scp = _scp(accept_any_storage=True)

    @scp.on_store
    async def on_store(request: Any) -> int:
        await request.save_to(out)
        return 0x0000

    ds = make_ct_instance(300_000, seed=1)
    src = SAMPLES / "CT_small.dcm"
    async with scp.server() as server:
        contexts = [
            (CT, [uids.EXPLICIT_VR_LITTLE_ENDIAN, uids.IMPLICIT_VR_LITTLE_ENDIAN]),
        ]
        async with AE("SCU").associate("127.0.0.1", server.port, contexts=contexts) as assoc:
            assert (await assoc.store(ds)).status == 0x0000
            assert (await assoc.store(src)).status == 0x0000
    got = pydicom.dcmread(out / f"{ds.SOPInstanceUID}.dcm")
    assert got.PixelData == ds.PixelData
    assert got.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    orig = pydicom.dcmread(src)
    got2 = pydicom.dcmread(out / f"{orig.SOPInstanceUID}.dcm")
    assert got2.PixelData == orig.PixelData
    assert got2.file_meta.ImplementationClassUID == uids.IMPLEMENTATION_CLASS_UID
    assert not list(out.glob(".*")), "temporary files left behind"


async def test_store_streams_to_handler_in_fragments() -> None:
    scp = _scp(accept_any_storage=True, max_pdu_length=16384)
    sizes: list[int] = []

    @scp.on_store
    async def on_store(request: Any) -> int:
        async for chunk in request.chunks():
            sizes.append(len(chunk))
        return 0x0000

    ds = make_ct_instance(1_000_000, seed=2)
    async with scp.server() as server:
        async with AE("SCU").associate("127.0.0.1", server.port, contexts=[CT]) as assoc:
            assert (await assoc.store(ds)).status == 0x0000
    assert sum(sizes) > 1_000_000
    assert max(sizes) <= 16384 - 6, "fragments bigger than the negotiated PDU"


async def test_called_ae_title_check_rejects() -> None:
    scp = _scp(require_called_ae_title=True)
    async with scp.server() as server:
        with pytest.raises(errors.AssociationRejected) as info:
            async with AE("SCU").associate("127.0.0.1", server.port, called_aet="WRONG"):
                pass
    assert (info.value.result, info.value.source, info.value.reason) == (1, 1, 7)


async def test_association_limit_rejects_transient() -> None:
    scp = _scp(max_associations=1)
    async with scp.server() as server, AE("A").associate("127.0.0.1", server.port) as first:
        with pytest.raises(errors.AssociationRejected) as info:
            async with AE("B").associate("127.0.0.1", server.port):
                pass
        assert (await first.echo()).status == 0
    assert (info.value.result, info.value.source, info.value.reason) == (2, 3, 2)


async def test_exception_in_block_aborts_and_propagates_unwrapped() -> None:
    scp = _scp()
    aborted = anyio.Event()
    scp.hooks.add(HookEvent.ASSOCIATION_ABORTED, lambda *a, **k: aborted.set())
    async with scp.server() as server:
        with pytest.raises(KeyError):
            async with AE("SCU").associate("127.0.0.1", server.port) as assoc:
                await assoc.echo()
                raise KeyError("boom")
        with anyio.fail_after(5):
            await aborted.wait()
    assert assoc.is_closed and not assoc.released


async def test_abort_mid_transfer_leaves_no_file(tmp_path: Path) -> None:
    scp = _scp(accept_any_storage=True, max_pdu_length=16384)
    first_chunk = anyio.Event()
    handler_done = anyio.Event()
    outcome: list[BaseException] = []

    @scp.on_store
    async def on_store(request: Any) -> int:
        from asyncdicom.services.storage import save_request

        original = request.chunks

        async def spy() -> Any:
            async for c in original():
                first_chunk.set()
                yield c

        request.chunks = spy
        try:
            await save_request(request, tmp_path)
        except BaseException as exc:
            outcome.append(exc)
            raise
        finally:
            handler_done.set()
        return 0

    ds = make_ct_instance(8_000_000, seed=3)
    async with scp.server() as server, anyio.create_task_group() as tg:

        async def sender() -> None:
            async with AE("SCU").associate("127.0.0.1", server.port, contexts=[CT]) as assoc:

                async def doomed_store() -> None:
                    with pytest.raises(errors.AssociationAborted):
                        await assoc.store(ds)

                async with anyio.create_task_group() as inner:
                    inner.start_soon(doomed_store)
                    await first_chunk.wait()
                    await assoc.abort()
            assert assoc.is_closed and not assoc.released

        tg.start_soon(sender)
        with anyio.fail_after(10):
            await handler_done.wait()
    assert outcome, "the handler should have seen the abort"
    assert list(tmp_path.iterdir()) == []


async def test_dimse_timeout_aborts() -> None:
    scp = _scp()
    release = anyio.Event()

    @scp.on_echo
    async def on_echo(request: Any) -> int:
        await release.wait()
        return 0

    async with scp.server() as server:
        scu = AE("SCU", timeouts=Timeouts(dimse=0.3))
        with pytest.raises(errors.DIMSETimeout):
            async with scu.associate("127.0.0.1", server.port) as assoc:
                await assoc.echo()
        assert assoc.is_closed
        release.set()


async def test_cancelled_operation_keeps_the_association_when_the_peer_answers() -> None:
    """Cancelling a task that awaits a response no longer aborts: the late response is
    dropped when it comes and the association goes on."""
    scp = _scp()
    entered = anyio.Event()
    release = anyio.Event()
    answered = anyio.Event()

    @scp.on_echo
    async def on_echo(request: Any) -> int:
        if not entered.is_set():
            entered.set()
            await release.wait()
            answered.set()
        return 0x0000

    async with scp.server() as server:
        async with AE("SCU").associate("127.0.0.1", server.port) as assoc:
            with anyio.CancelScope() as scope:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(assoc.echo)
                    await entered.wait()
                    scope.cancel()
            assert scope.cancelled_caught
            assert assoc.is_established
            assert assoc.outstanding == 1  # the peer has not finished it: its slot is taken
            release.set()
            await answered.wait()
            response = await assoc.echo()  # waits for the window slot, then succeeds
            assert response.status == 0x0000
            assert assoc.outstanding == 0
        assert assoc.released


async def test_cancelled_operation_aborts_when_the_peer_never_answers() -> None:
    scp = _scp()
    entered = anyio.Event()

    @scp.on_echo
    async def on_echo(request: Any) -> int:
        entered.set()
        await anyio.sleep_forever()
        return 0

    async with scp.server() as server:
        scu = AE("SCU", timeouts=Timeouts(dimse=0.3))
        with pytest.raises(errors.DICOMError):
            async with scu.associate("127.0.0.1", server.port) as assoc:
                with anyio.CancelScope() as scope:
                    async with anyio.create_task_group() as tg:
                        tg.start_soon(assoc.echo)
                        await entered.wait()
                        scope.cancel()
                assert assoc.is_established
                with anyio.fail_after(10):
                    await assoc.wait_closed()  # the DIMSE timeout's watcher aborted it
                assert assoc.abort_info is not None and assoc.abort_info.local
                await assoc.echo()


async def test_async_operations_window_parallel_echoes() -> None:
    scp = _scp(async_ops_window=(8, 8))
    in_flight = 0
    peak = 0
    gate = anyio.Event()

    @scp.on_echo
    async def on_echo(request: Any) -> int:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        if in_flight == 4:
            gate.set()
        await gate.wait()
        in_flight -= 1
        return 0

    async with (
        scp.server() as server,
        AE("SCU").associate("127.0.0.1", server.port, async_ops_window=(4, 4)) as assoc,
    ):
        assert assoc.negotiated is not None
        assert assoc.negotiated.max_operations_invoked == 4
        results: list[int] = []

        async def one() -> None:
            results.append((await assoc.echo()).status)

        async with anyio.create_task_group() as tg:
            for _ in range(6):
                tg.start_soon(one)
    assert results == [0] * 6
    assert peak == 4


async def test_connect_refused_is_transport_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(errors.TransportError) as info:
        async with AE("SCU").associate("127.0.0.1", port):
            pass
    # the real cause, on both backends (trio wraps it in "All connection attempts failed")
    assert str(info.value) == f"cannot connect to 127.0.0.1:{port}: connection refused"


async def test_ipv6_loopback() -> None:
    if not socket.has_ipv6:
        pytest.fail("this machine has no IPv6 support; the test needs ::1")
    scp = _scp()
    async with scp.server("::1", 0) as server, AE("SCU").associate("::1", server.port) as assoc:
        assert (await assoc.echo()).status == 0
        assert assoc.peer_host == "::1"


async def test_hooks_observe_lifecycle() -> None:
    scp = _scp()
    seen: list[HookEvent] = []
    for ev in HookEvent:
        scp.hooks.add(ev, lambda e, a, **k: seen.append(e))
    async with scp.server() as server:
        async with AE("SCU").associate("127.0.0.1", server.port) as assoc:
            await assoc.echo()
        # the acceptor notices the close after the requestor
        with anyio.fail_after(5):
            while HookEvent.CONNECTION_CLOSED not in seen:
                await anyio.wait_all_tasks_blocked()
    for ev in (
        HookEvent.CONNECTION_OPENED,
        HookEvent.ASSOCIATION_REQUESTED,
        HookEvent.ASSOCIATION_ACCEPTED,
        HookEvent.PDU_RECEIVED,
        HookEvent.PDU_SENT,
        HookEvent.STATE_TRANSITION,
        HookEvent.DIMSE_RECEIVED,
        HookEvent.DIMSE_SENT,
        HookEvent.ASSOCIATION_RELEASED,
        HookEvent.CONNECTION_CLOSED,
    ):
        assert ev in seen, ev


# --------------------------------------------------------------------------- hostile peers


async def _raw(port: int, payload: bytes, *, want: int = 10) -> bytes:
    """Send ``payload`` on a raw connection; return the first ``want`` bytes of the answer
    (fewer if the server closes first)."""
    async with await anyio.connect_tcp("127.0.0.1", port) as stream:
        if payload:
            await stream.send(payload)
        out = b""
        with anyio.fail_after(10):
            while len(out) < want:
                try:
                    out += await stream.receive()
                except (anyio.EndOfStream, anyio.BrokenResourceError):
                    break
        return out


def _rq(called: str = "SCP") -> bytes:
    from asyncdicom.protocol.negotiation import ContextRequest, RequestorConfig, build_associate_rq

    rq = build_associate_rq(
        RequestorConfig(
            calling_ae_title="RAW",
            called_ae_title=called,
            implementation_class_uid="1.2.3.4",
        ),
        [ContextRequest(uids.VERIFICATION, (uids.IMPLICIT_VR_LITTLE_ENDIAN,))],
    )
    assert isinstance(rq, AssociateRQ)
    return encode_pdu(rq)


async def test_garbage_gets_abort_and_server_keeps_serving() -> None:
    scp = _scp()
    async with scp.server() as server:
        reply = await _raw(server.port, b"\xff" * 64)
        assert decode_pdu(reply[:10]).__class__ is Abort
        reply = await _raw(server.port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert isinstance(decode_pdu(reply[:10]), Abort)
        async with AE("SCU").associate("127.0.0.1", server.port) as assoc:
            assert (await assoc.echo()).status == 0


async def test_huge_declared_length_refused_from_header() -> None:
    scp = _scp()
    async with scp.server() as server:
        header = struct.pack(">BBI", 0x01, 0, 0xFFFFFFFF)
        reply = await _raw(server.port, header)
        # only the 6-byte header was sent: the refusal cannot have waited for the body
        assert isinstance(decode_pdu(reply[:10]), Abort)


async def test_pdata_before_associate_is_aborted() -> None:
    scp = _scp()
    async with scp.server() as server:
        pdata = bytes.fromhex("040000000006000000020103")  # one command PDV, 0 bytes
        reply = await _raw(server.port, pdata)
        assert isinstance(decode_pdu(reply[:10]), Abort)


async def test_oversized_pdata_after_association_aborted() -> None:
    scp = _scp(max_pdu_length=16384)
    async with scp.server() as server:
        async with await anyio.connect_tcp("127.0.0.1", server.port) as stream:
            await stream.send(_rq())
            ac = await stream.receive()
            assert ac[0] == 0x02
            await stream.send(struct.pack(">BBI", 0x04, 0, 16385) + b"\x00" * 1000)
            reply = b""
            with anyio.fail_after(5):
                while len(reply) < 10:
                    reply += await stream.receive()
            pdu = decode_pdu(reply[:10])
            assert isinstance(pdu, Abort) and pdu.source == 2
        async with AE("SCU").associate("127.0.0.1", server.port) as assoc:
            assert (await assoc.echo()).status == 0


async def test_silent_connection_closed_by_artim() -> None:
    scp = _scp(timeouts=Timeouts(artim=0.3))
    async with scp.server() as server:
        with anyio.fail_after(5):
            reply = await _raw(server.port, b"")
        assert reply == b""


async def test_bad_protocol_version_rejected() -> None:
    scp = _scp()
    raw = bytearray(_rq())
    raw[6:8] = b"\x00\x02"
    async with scp.server() as server:
        reply = await _raw(server.port, bytes(raw))
    rj = decode_pdu(reply[:10])
    assert isinstance(rj, AssociateRJ)
    assert (rj.result, rj.source, rj.reason) == (1, 2, 2)


async def test_requestor_serves_requests_from_its_peer() -> None:
    """With role selection, the acceptor can invoke operations on the requestor during the
    same association (the shape C-GET and Storage Commitment need); the requestor answers
    with its AE's handlers."""
    from asyncdicom import ContextRequest, SupportedContext

    scp = _scp(
        supported_contexts=(
            SupportedContext(
                uids.VERIFICATION,
                (uids.EXPLICIT_VR_LITTLE_ENDIAN, uids.IMPLICIT_VR_LITTLE_ENDIAN),
                scu_role_allowed=True,
                scp_role_allowed=True,
            ),
        )
    )
    answers: list[int] = []

    @scp.on_echo
    async def on_echo(request: Any) -> int:
        # while answering the requestor's C-ECHO, send one back to it
        answers.append((await request.association.echo()).status)
        return 0x0000

    scu = AE("SCU")
    served: list[str] = []

    @scu.on_echo
    async def scu_on_echo(request: Any) -> int:
        served.append(request.association.called_ae_title)
        return 0x0000

    context = ContextRequest(
        uids.VERIFICATION, (uids.EXPLICIT_VR_LITTLE_ENDIAN,), scu_role=True, scp_role=True
    )
    async with scp.server() as server:
        async with scu.associate(
            "127.0.0.1", server.port, called_aet="SCP", contexts=[context]
        ) as assoc:
            ctx = assoc.find_context(uids.VERIFICATION, role="scp")
            assert ctx is not None and ctx.scu_role and ctx.scp_role
            assert (await assoc.echo()).status == 0x0000
    assert answers == [0x0000]
    assert served == ["SCP"]


# --------------------------------------------------------------------------- bounded waits


async def _silent_acceptor() -> tuple[int, anyio.abc.SocketListener]:
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    return int(listener.extra(anyio.abc.SocketAttribute.local_port)), listener


async def test_acse_timeout_bounds_the_whole_wait() -> None:
    """A peer that accepts the TCP connection and never answers: the A-ASSOCIATE wait ends
    after the ACSE timeout, and closing does not then wait ARTIM (30 s here) for the peer."""
    port, listener = await _silent_acceptor()
    held: list[Any] = []

    async def hold(stream: Any) -> None:
        held.append(stream)
        await anyio.sleep_forever()

    async with anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, hold)
        scu = AE("SCU", timeouts=Timeouts(acse=0.3, artim=30.0))
        started = anyio.current_time()
        with pytest.raises(errors.ACSETimeout):
            async with scu.associate("127.0.0.1", port):
                pass
        assert anyio.current_time() - started < 5.0
        tg.cancel_scope.cancel()


async def test_release_timeout_bounds_the_whole_wait() -> None:
    """A peer that never answers A-RELEASE-RQ: ACSETimeout after the ACSE timeout, not ARTIM."""
    from asyncdicom.testing import memory_stream_pair

    scp = _scp()
    a, b = memory_stream_pair()
    deaf = False
    real_receive = b.receive

    async def receive(max_bytes: int = 65536) -> bytes:
        data = await real_receive(max_bytes)
        while deaf:  # the SCP hears nothing more: our A-RELEASE-RQ is never answered
            data = await real_receive(max_bytes)
        return data

    b.receive = receive  # type: ignore[method-assign]
    async with anyio.create_task_group() as tg:
        tg.start_soon(scp.serve_stream, b)
        scu = AE("SCU", timeouts=Timeouts(acse=0.3, artim=30.0))
        started = 0.0
        with pytest.raises(errors.ACSETimeout, match="A-RELEASE-RP"):
            async with scu.associate_over(a, called_aet="SCP") as assoc:
                assert (await assoc.echo()).status == 0
                deaf = True
                started = anyio.current_time()
        assert anyio.current_time() - started < 5.0
        tg.cancel_scope.cancel()


async def test_peer_closing_is_reported_as_connection_lost() -> None:
    """The peer drops the TCP connection without A-RELEASE/A-ABORT: the next operation says
    so in words ("the peer closed the connection"), as ConnectionLost."""
    scp = _scp()
    async with scp.server() as server:
        with pytest.raises(errors.ConnectionLost, match="peer closed the connection"):
            async with AE("SCU").associate("127.0.0.1", server.port) as assoc:
                assert (await assoc.echo()).status == 0
                for a in list(scp._associations):
                    await a._stream.aclose()
                with anyio.fail_after(10):
                    await assoc.wait_closed()
                await assoc.echo()


async def test_send_failure_is_reported_as_connection_lost() -> None:
    """A write that fails (connection reset while sending) is a ConnectionLost naming the
    cause, never a state-machine message such as 'cannot send now: Evt9 ...'."""
    from asyncdicom.testing import memory_stream_pair

    scp = _scp(accept_any_storage=True)
    a, b = memory_stream_pair()
    broken = False
    real_send = a.send

    async def send(item: bytes) -> None:
        if broken:
            raise anyio.BrokenResourceError from ConnectionResetError("connection reset")
        await real_send(item)

    a.send = send  # type: ignore[method-assign]
    async with anyio.create_task_group() as tg:
        tg.start_soon(scp.serve_stream, b)
        with pytest.raises(errors.ConnectionLost, match=r"closed the connection \(reset\)") as info:
            async with AE("SCU").associate_over(
                a, called_aet="SCP", contexts=[uids.VERIFICATION, CT]
            ) as assoc:
                assert (await assoc.echo()).status == 0
                broken = True
                await assoc.store(make_ct_instance(4096))
        assert "Evt" not in str(info.value)
        tg.cancel_scope.cancel()


async def test_debug_log_traces_every_dimse_message_and_release() -> None:
    """At DEBUG each DIMSE message sent or received is one log event; at INFO the release."""
    import logging

    class Collect(logging.Handler):
        def __init__(self) -> None:
            super().__init__(logging.DEBUG)
            self.lines: list[str] = []

        def emit(self, record: logging.LogRecord) -> None:
            self.lines.append(str(record.msg))

    logger = logging.getLogger("asyncdicom")
    handler = Collect()
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        scp = _scp()
        async with scp.server() as server:
            async with AE("SCU").associate("127.0.0.1", server.port, called_aet="SCP") as assoc:
                assert (await assoc.echo()).status == 0
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
    sent = [line for line in handler.lines if "dimse_sent" in line]
    received = [line for line in handler.lines if "dimse_received" in line]
    # both ends log: the SCU sends the RQ and receives the RSP, the SCP the reverse
    assert sum("C-ECHO-RQ" in line for line in sent) == 1
    assert sum("C-ECHO-RSP" in line for line in sent) == 1
    assert sum("C-ECHO-RQ" in line for line in received) == 1
    assert sum("C-ECHO-RSP" in line for line in received) == 1
    assert sum("association_released" in line for line in handler.lines) == 2


async def test_server_on_a_taken_port_raises_transport_error_itself() -> None:
    """AE.server() that cannot listen raises the TransportError, not a group around it, so
    that ``except DICOMError`` catches it."""
    async with _scp().server() as first:
        with pytest.raises(errors.TransportError):
            async with _scp().server("127.0.0.1", first.port):
                pass


def test_abort_reason_is_named() -> None:
    """A provider abort names its PS3.8 Table 9-26 reason; a user abort has none to name."""
    assert "reason 2: unexpected PDU)" in str(errors.AssociationAborted(2, 2, local=False))
    assert "reason 6: invalid PDU parameter value)" in str(
        errors.AssociationAborted(2, 6, local=True)
    )
    assert str(errors.AssociationAborted(0, 0, local=False)).endswith("source 0, reason 0)")
