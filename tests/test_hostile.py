"""Hostile peers: malformed, out-of-sequence and oversized input against a live acceptor.

Every scenario runs while one well-behaved association keeps doing C-ECHO and C-STORE in a
loop on the same server.  For each scenario the test checks what the standard expects on the
wire (PS3.8 Table 9-10 and Table 9-26, decoded with :func:`decode_pdu`), that the connection is
closed afterwards (by the server at once or when ARTIM expires, PS3.8 9.1.5), and that the
well-behaved association is unharmed: all its operations succeed and every instance it stored
is on disk, with no partial or temporary file left behind.

Reactions fixed by the standard (reference sections 4 and 6):

* Sta2 (no A-ASSOCIATE-RQ yet): any bad or unexpected PDU -> AA-1 -> A-ABORT source 0,
  reason 0; silence -> ARTIM -> AA-2 -> the connection is closed without a PDU;
* an A-ASSOCIATE-RQ whose protocol version lacks bit 0 -> A-ASSOCIATE-RJ (1, 2, 2);
* Sta6 (established): an unexpected well-formed PDU -> AA-8 -> A-ABORT source 2, reason 2;
  a bad PDU -> AA-8 -> A-ABORT source 2; a malformed DIMSE message inside P-DATA -> A-ABORT
  source 2 (the reason is the implementation's choice among Table 9-26's);
* an A-ABORT from the peer -> AA-3: nothing is sent, the connection is closed.
"""

from __future__ import annotations

import dataclasses
import random
import ssl
import struct
import tracemalloc
import warnings
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import pydicom
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from asyncdicom import AE, HookEvent
from asyncdicom.ae import Timeouts
from asyncdicom.protocol import dimse, messages, uids
from asyncdicom.protocol.codec import decode_pdu, encode_pdata, encode_pdu
from asyncdicom.protocol.negotiation import ContextRequest, RequestorConfig, build_associate_rq
from asyncdicom.protocol.pdu import (
    PDU,
    Abort,
    AssociateAC,
    AssociateRJ,
    PDataTF,
    ReleaseRP,
    ReleaseRQ,
)
from asyncdicom.storage.codec import encode_dataset
from asyncdicom.storage.synthetic import make_ct_instance

pytestmark = pytest.mark.anyio

CT = uids.CT_IMAGE_STORAGE
IMPLICIT = uids.IMPLICIT_VR_LITTLE_ENDIAN
EXPLICIT = uids.EXPLICIT_VR_LITTLE_ENDIAN
#: ARTIM of the servers under test: small, so that connections left in Sta2/Sta13 close fast
ARTIM = 0.3
#: ARTIM for scenarios that must finish before it expires (a trickled A-ASSOCIATE-RQ): far
#: longer than they take, shorter than GUARD so that the scenarios waiting for it still end
SLOW_ARTIM = 2.0
#: guard for every wait on the network (never a synchronisation device)
GUARD = 10.0
#: the A-ABORT provider reasons of PS3.8 Table 9-26 (3 is reserved)
PROVIDER_REASONS = {0, 1, 2, 4, 5, 6}


# --------------------------------------------------------------------------- raw peer


class RawPeer:
    """A byte-level DICOM peer: sends exactly what it is told, reads whole PDUs back."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self.buffer = bytearray()
        self.eof = False

    @classmethod
    @asynccontextmanager
    async def connect(cls, port: int) -> AsyncIterator[RawPeer]:
        async with await anyio.connect_tcp("127.0.0.1", port) as stream:
            yield cls(stream)

    @property
    def local_port(self) -> int:
        """Our end's port: the server knows this connection by it (``peer_port``)."""
        return int(self.stream.extra(anyio.abc.SocketAttribute.local_port))

    async def send(self, data: bytes) -> None:
        await self.stream.send(data)

    async def _fill(self, size: int) -> bool:
        """Read until ``size`` bytes are buffered; False if the peer closed first."""
        with anyio.fail_after(GUARD):
            while len(self.buffer) < size and not self.eof:
                try:
                    self.buffer += await self.stream.receive()
                except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                    self.eof = True
        return len(self.buffer) >= size

    async def receive_raw_pdu(self) -> bytes | None:
        """The next whole PDU as bytes, or None when the server closed before sending one."""
        if not await self._fill(6):
            assert not self.buffer, f"connection closed inside a PDU header: {bytes(self.buffer)!r}"
            return None
        length = struct.unpack_from(">I", self.buffer, 2)[0]
        assert length < 1 << 20, f"the server announced a {length}-byte PDU"
        complete = await self._fill(6 + length)
        assert complete, "connection closed inside a PDU"
        raw = bytes(self.buffer[: 6 + length])
        del self.buffer[: 6 + length]
        return raw

    async def receive_pdu(self) -> PDU | None:
        raw = await self.receive_raw_pdu()
        return None if raw is None else decode_pdu(raw)

    async def expect_closed(self) -> None:
        """The server closes the connection (now, or when its ARTIM expires) and sends
        nothing more."""
        await self._fill(1 << 30)
        assert self.eof
        assert not self.buffer, f"unexpected bytes before the close: {bytes(self.buffer)!r}"

    async def expect_abort(self, source: int, reason: int | None = None) -> Abort:
        """An A-ABORT with ``source`` (and ``reason`` if given) arrives, then the close."""
        pdu = await self.receive_pdu()
        assert isinstance(pdu, Abort), f"expected an A-ABORT, got {pdu!r}"
        assert pdu.source == source, pdu
        if reason is not None:
            assert pdu.reason == reason, pdu
        else:
            assert pdu.reason in PROVIDER_REASONS, pdu
        await self.expect_closed()
        return pdu

    async def associate(self, rq: bytes) -> AssociateAC:
        await self.send(rq)
        pdu = await self.receive_pdu()
        assert isinstance(pdu, AssociateAC), f"expected an A-ASSOCIATE-AC, got {pdu!r}"
        return pdu

    async def release(self) -> None:
        await self.send(encode_pdu(ReleaseRQ()))
        pdu = await self.receive_pdu()
        assert isinstance(pdu, ReleaseRP), f"expected an A-RELEASE-RP, got {pdu!r}"

    async def send_message(
        self, context_id: int, message: messages.Message, dataset: bytes | None = None
    ) -> None:
        await self.send(encode_pdata(context_id, 0x03, dimse.encode_command(message)))
        if dataset is not None:
            await self.send(encode_pdata(context_id, 0x02, dataset))

    async def receive_command(self) -> messages.Message:
        pdu = await self.receive_pdu()
        assert isinstance(pdu, PDataTF), f"expected P-DATA-TF, got {pdu!r}"
        assert len(pdu.pdvs) == 1 and pdu.pdvs[0].message_control_header == 0x03
        return dimse.decode_command(pdu.pdvs[0].data)


def _item(item_type: int, body: bytes) -> bytes:
    return struct.pack(">BBH", item_type, 0, len(body)) + body


def raw_associate_rq(
    context_ids: list[int],
    *,
    abstract: str = uids.VERIFICATION,
    transfer: str = IMPLICIT,
    version: int = 1,
    called: str = "SCP",
) -> bytes:
    """An A-ASSOCIATE-RQ built byte by byte (PS3.8 9.3.2), so that it may break the rules
    our encoder enforces (duplicate or too many presentation context IDs)."""
    contexts = b"".join(
        _item(
            0x20,
            bytes([cid, 0, 0, 0]) + _item(0x30, abstract.encode()) + _item(0x40, transfer.encode()),
        )
        for cid in context_ids
    )
    user_info = _item(0x50, _item(0x51, struct.pack(">I", 16384)) + _item(0x52, b"1.2.3.4"))
    body = (
        struct.pack(">HH", version, 0)
        + called.encode().ljust(16)
        + b"RAW".ljust(16)
        + bytes(32)
        + _item(0x10, uids.APPLICATION_CONTEXT_NAME.encode())
        + contexts
        + user_info
    )
    return struct.pack(">BBI", 0x01, 0, len(body)) + body


def associate_rq(contexts: Sequence[tuple[str, Sequence[str]]]) -> bytes:
    """A well-formed A-ASSOCIATE-RQ from our own encoder (context IDs 1, 3, 5, ...)."""
    rq = build_associate_rq(
        RequestorConfig(
            calling_ae_title="RAW", called_ae_title="SCP", implementation_class_uid="1.2.3.4"
        ),
        [ContextRequest(a, tuple(ts)) for a, ts in contexts],
    )
    return encode_pdu(rq)


VERIFICATION_RQ = [(uids.VERIFICATION, (IMPLICIT,))]


# --------------------------------------------------------------------------- bench


@dataclass
class LegitLoad:
    """One well-behaved association doing C-ECHO + C-STORE in a loop until stopped."""

    port: int
    stored: list[str] = field(default_factory=list)
    rounds: int = 0
    _stop: anyio.Event = field(default_factory=anyio.Event)
    _progress: anyio.Event = field(default_factory=anyio.Event)

    async def run(self, *, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
        contexts: list[Any] = [uids.VERIFICATION, (CT, [EXPLICIT, IMPLICIT])]
        async with AE("LEGIT").associate(
            "127.0.0.1", self.port, called_aet="SCP", contexts=contexts
        ) as assoc:
            task_status.started()
            while not self._stop.is_set():
                assert (await assoc.echo()).status == 0x0000
                ds = make_ct_instance(3000, seed=self.rounds)
                assert (await assoc.store(ds)).status == 0x0000
                self.stored.append(str(ds.SOPInstanceUID))
                self.rounds += 1
                self._progress.set()
                self._progress = anyio.Event()
        assert assoc.released

    async def more_rounds(self, n: int) -> None:
        """Wait until the loop has completed ``n`` more rounds."""
        target = self.rounds + n
        with anyio.fail_after(GUARD * 3):
            while self.rounds < target:
                await self._progress.wait()

    def stop(self) -> None:
        self._stop.set()


@dataclass
class Bench:
    port: int
    load: LegitLoad
    folder: Path
    #: the server under test (scenarios may watch it through hooks)
    ae: AE
    #: its ARTIM timeout
    artim: float


class ServerReads:
    """The size of every read the server makes, per connection (keyed by the peer's port),
    seen through the PDU_RECEIVED hook: it tells a scenario what the server has received."""

    def __init__(self, ae: AE) -> None:
        self.sizes: dict[int, list[int]] = defaultdict(list)
        self._changed = anyio.Event()
        self._ae = ae

    def __enter__(self) -> ServerReads:
        self._ae.hooks.add(HookEvent.PDU_RECEIVED, self._on_read)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._ae.hooks.remove(HookEvent.PDU_RECEIVED, self._on_read)

    def _on_read(self, event: HookEvent, assoc: Any, *, data: bytes, **_: Any) -> None:
        self.sizes[assoc.peer_port].append(len(data))
        self._changed.set()
        self._changed = anyio.Event()

    async def wait_for_total(self, peer_port: int, total: int) -> None:
        """Wait until the server has read ``total`` bytes from the connection of
        ``peer_port``."""
        with anyio.fail_after(GUARD):
            while sum(self.sizes[peer_port]) < total:
                await self._changed.wait()


@asynccontextmanager
async def hostile_bench(
    tmp_path: Path, *, artim: float = ARTIM, **ae_options: Any
) -> AsyncIterator[Bench]:
    """A storage SCP with a legitimate association running; on exit, checks that the
    association was unharmed and that exactly its instances are on disk."""
    folder = tmp_path / "received"
    # the legitimate association is established under a generous ARTIM (on a loaded machine
    # its A-ASSOCIATE-RQ may take longer than ``artim`` to be read); the scenario's
    # connections get ``artim``
    scp = AE("SCP", accept_any_storage=True, timeouts=Timeouts(artim=GUARD), **ae_options)

    @scp.on_store
    async def on_store(request: Any) -> int:
        await request.save_to(folder)
        return 0x0000

    async with scp.server() as server:
        load = LegitLoad(server.port)
        async with anyio.create_task_group() as tg:
            await tg.start(load.run)
            scp.config = dataclasses.replace(
                scp.config, timeouts=dataclasses.replace(scp.config.timeouts, artim=artim)
            )
            await load.more_rounds(1)
            yield Bench(server.port, load, folder, scp, artim)
            # the legitimate association goes on working after the hostile peer is gone
            await load.more_rounds(2)
            load.stop()
    names = sorted(p.name for p in folder.iterdir())
    assert names == sorted(f"{uid}.dcm" for uid in load.stored), "lost or extra files"
    for uid in load.stored:
        ds = pydicom.dcmread(folder / f"{uid}.dcm")
        assert ds.SOPInstanceUID == uid


# --------------------------------------------------------------------------- scenarios


async def random_garbage(b: Bench) -> None:
    data = bytearray(random.Random(7).randbytes(300))
    data[0] = 0x80  # not a PDU type: whatever follows, the very first header is refused
    async with RawPeer.connect(b.port) as peer:
        await peer.send(bytes(data))
        await peer.expect_abort(0, 0)


async def http_request(b: Bench) -> None:
    async with RawPeer.connect(b.port) as peer:
        await peer.send(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: */*\r\n\r\n")
        await peer.expect_abort(0, 0)


def tls_client_hello_bytes() -> bytes:
    """The first bytes a real TLS client sends: its ClientHello record (from :mod:`ssl`)."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = ssl.create_default_context().wrap_bio(incoming, outgoing, server_hostname="pacs")
    with pytest.raises(ssl.SSLWantReadError):
        client.do_handshake()
    hello = outgoing.read()
    assert hello[0] == 0x16  # TLS record type "handshake"
    return hello


async def tls_client_hello(b: Bench) -> None:
    async with RawPeer.connect(b.port) as peer:
        await peer.send(tls_client_hello_bytes())
        await peer.expect_abort(0, 0)


async def associate_rq_byte_by_byte(b: Bench) -> None:
    """An A-ASSOCIATE-RQ trickled one byte at a time is assembled and accepted.

    Each byte goes out only once the server has read the previous one on its own (its
    PDU_RECEIVED hook says so), so the server really sees one byte per read; its ARTIM
    (``b.artim``, SLOW_ARTIM for this scenario) is far longer than the whole trickle, so an
    A-ASSOCIATE-AC is the only acceptable outcome: a server that cannot frame the bytes gets
    no pass from ARTIM expiring first.
    """
    rq = associate_rq(VERIFICATION_RQ)
    with ServerReads(b.ae) as reads:
        async with RawPeer.connect(b.port) as peer:
            port = peer.local_port
            started = anyio.current_time()
            for i in range(len(rq)):
                await peer.send(rq[i : i + 1])
                await reads.wait_for_total(port, i + 1)
            trickle = anyio.current_time() - started
            assert reads.sizes[port] == [1] * len(rq), "the server read more than a byte at once"
            assert trickle < b.artim, f"the trickle took {trickle:.2f} s, ARTIM is {b.artim} s"
            pdu = await peer.receive_pdu()
            assert isinstance(pdu, AssociateAC), (
                f"no A-ASSOCIATE-AC for an RQ trickled over {trickle:.2f} s: {pdu!r}"
            )
            await peer.send_message(1, messages.CEchoRQ(message_id=1))
            rsp = await peer.receive_command()
            assert isinstance(rsp, messages.CEchoRSP) and rsp.status == 0
            await peer.release()


async def associate_rq_stalls_halfway(b: Bench) -> None:
    rq = associate_rq(VERIFICATION_RQ)
    # measured from before connecting: the server's ARTIM starts when it accepts, which a
    # busy loop may report to this task later than it happened
    started = anyio.current_time()
    async with RawPeer.connect(b.port) as peer:
        await peer.send(rq[: len(rq) // 2])
        # ARTIM (started when the connection was accepted) closes it, without a PDU
        await peer.expect_closed()
        assert anyio.current_time() - started >= b.artim * 0.9


async def rq_then_garbage_in_one_segment(b: Bench) -> None:
    # The bad bytes are decoded before the server has answered the RQ (Sta3): AA-8 aborts
    # and the A-ASSOCIATE-AC that the server was about to send must not be sent.
    async with RawPeer.connect(b.port) as peer:
        await peer.send(associate_rq(VERIFICATION_RQ) + b"\xee" * 10)
        await peer.expect_abort(2, 1)  # unrecognized-PDU


async def rq_then_rq_in_one_segment(b: Bench) -> None:
    rq = associate_rq(VERIFICATION_RQ)
    async with RawPeer.connect(b.port) as peer:
        await peer.send(rq + rq)
        await peer.expect_abort(2, 2)  # unexpected-PDU


async def release_rq_before_association(b: Bench) -> None:
    async with RawPeer.connect(b.port) as peer:
        await peer.send(encode_pdu(ReleaseRQ()))
        await peer.expect_abort(0, 0)


async def associate_ac_to_a_server(b: Bench) -> None:
    async with RawPeer.connect(b.port) as first:
        ac = await first.associate(associate_rq(VERIFICATION_RQ))
        await first.release()
    async with RawPeer.connect(b.port) as peer:
        await peer.send(encode_pdu(ac))
        await peer.expect_abort(0, 0)


async def second_associate_rq(b: Bench) -> None:
    rq = associate_rq(VERIFICATION_RQ)
    async with RawPeer.connect(b.port) as peer:
        await peer.associate(rq)
        await peer.send(rq)
        # AA-8: unexpected-PDU
        await peer.expect_abort(2, 2)


async def pdata_on_rejected_context(b: Bench) -> None:
    rq = associate_rq([(uids.VERIFICATION, (IMPLICIT,)), ("1.2.3.4.5.6.7.999", (IMPLICIT,))])
    async with RawPeer.connect(b.port) as peer:
        ac = await peer.associate(rq)
        results = {c.context_id: c.result for c in ac.presentation_contexts}
        assert results[1] == 0 and results[3] != 0
        await peer.send_message(3, messages.CEchoRQ(message_id=1))
        await peer.expect_abort(2)


async def pdata_on_unknown_context(b: Bench) -> None:
    async with RawPeer.connect(b.port) as peer:
        await peer.associate(associate_rq(VERIFICATION_RQ))
        await peer.send_message(201, messages.CEchoRQ(message_id=1))
        await peer.expect_abort(2)


async def response_to_unknown_message_id(b: Bench) -> None:
    async with RawPeer.connect(b.port) as peer:
        await peer.associate(associate_rq(VERIFICATION_RQ))
        await peer.send_message(1, messages.CEchoRSP(message_id_being_responded_to=4242, status=0))
        await peer.expect_abort(2)


async def pipelined_requests_then_close(b: Bench) -> None:
    """1 000 C-ECHO-RQs in one write, and the connection closed at once: the server answers
    what it can and drops the rest when it finds the peer gone (no internal error)."""
    internal_before = AE.total_internal_errors
    closed = anyio.Event()
    async with RawPeer.connect(b.port) as peer:
        port = peer.local_port

        def on_closed(event: HookEvent, assoc: Any, **_: Any) -> None:
            if assoc.peer_port == port:
                closed.set()

        b.ae.hooks.add(HookEvent.CONNECTION_CLOSED, on_closed)
        try:
            await peer.associate(associate_rq(VERIFICATION_RQ))
            await peer.send(
                b"".join(
                    encode_pdata(1, 0x03, dimse.encode_command(messages.CEchoRQ(message_id=i)))
                    for i in range(1, 1001)
                )
            )
            await peer.receive_raw_pdu()  # the first answer
        finally:
            await peer.stream.aclose()
        try:
            await closed.wait()
        finally:
            b.ae.hooks.remove(HookEvent.CONNECTION_CLOSED, on_closed)
    assert AE.total_internal_errors == internal_before


async def _store_refused(b: Bench, dataset: bytes | None, status: int = 0xC000) -> None:
    async with RawPeer.connect(b.port) as peer:
        await peer.associate(associate_rq([(CT, (IMPLICIT,))]))
        rq = messages.CStoreRQ(
            message_id=7,
            affected_sop_class_uid=CT,
            affected_sop_instance_uid="1.2.826.0.1.3680043.10.999.1",
            has_dataset=dataset is not None,
        )
        await peer.send_message(1, rq, dataset)
        rsp = await peer.receive_command()
        assert isinstance(rsp, messages.CStoreRSP)
        assert (rsp.message_id_being_responded_to, rsp.status) == (7, status)
        # (hostile_bench checks that no file was written)


async def store_without_dataset(b: Bench) -> None:
    """A C-STORE-RQ whose command says it has no data set: Cannot Understand, no file."""
    await _store_refused(b, None)


async def store_with_empty_dataset(b: Bench) -> None:
    """A C-STORE-RQ whose data set is one empty last fragment: Cannot Understand, no file."""
    await _store_refused(b, b"")


def _ct_dataset(**changes: Any) -> bytes:
    """A CT instance naming the instance _store_refused's command names (or not: changes)."""
    ds = make_ct_instance(4096)
    ds.SOPInstanceUID = "1.2.826.0.1.3680043.10.999.1"
    for keyword, value in changes.items():
        if value is None:
            delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    return encode_dataset(ds, IMPLICIT)


async def store_truncated_dataset(b: Bench) -> None:
    """A data set cut inside its Pixel Data (the last fragment flag set all the same): Cannot
    Understand, no file."""
    await _store_refused(b, _ct_dataset()[:-100])


async def store_dataset_cut_in_a_header(b: Bench) -> None:
    """A data set whose last element header is cut: Cannot Understand, no file."""
    await _store_refused(b, _ct_dataset() + b"\x10\x00\x10")


async def store_dataset_of_another_instance(b: Bench) -> None:
    """A data set whose SOP Instance UID is not its command's: 0xA900 (Data Set does not
    match SOP Class, as DCMTK's storescp answers), no file."""
    await _store_refused(b, _ct_dataset(SOPInstanceUID="1.2.3.4"), 0xA900)


async def store_dataset_of_another_class(b: Bench) -> None:
    """A data set whose SOP Class UID is not its command's: 0xA900, no file."""
    await _store_refused(b, _ct_dataset(SOPClassUID=uids.MR_IMAGE_STORAGE), 0xA900)


async def store_dataset_without_sop_instance_uid(b: Bench) -> None:
    """A data set without SOP Instance UID: Cannot Understand, no file."""
    await _store_refused(b, _ct_dataset(SOPInstanceUID=None))


async def store_garbage_dataset(b: Bench) -> None:
    """Bytes that are not a data set: Cannot Understand, no file."""
    await _store_refused(b, random.Random(11).randbytes(5000))


async def dataset_before_command(b: Bench) -> None:
    async with RawPeer.connect(b.port) as peer:
        await peer.associate(associate_rq(VERIFICATION_RQ))
        await peer.send(encode_pdata(1, 0x02, b"\x08\x00\x18\x00\x02\x00\x00\x001\x00"))
        await peer.expect_abort(2)


async def undecodable_command(b: Bench) -> None:
    async with RawPeer.connect(b.port) as peer:
        await peer.associate(associate_rq(VERIFICATION_RQ))
        # an element outside group 0000, then a length running past the end
        await peer.send(encode_pdata(1, 0x03, b"\x08\x00\x18\x00\xff\x00\x00\x00AB"))
        await peer.expect_abort(2)


async def declared_4gb_before_association(b: Bench) -> None:
    async with RawPeer.connect(b.port) as peer:
        await peer.send(struct.pack(">BBI", 0x01, 0, 0xFFFFFFFF) + b"\x00\x01")
        await peer.expect_abort(0, 0)


async def declared_4gb_pdata(b: Bench) -> None:
    async with RawPeer.connect(b.port) as peer:
        await peer.associate(associate_rq(VERIFICATION_RQ))
        # only the header and a few bytes: the refusal cannot wait for the body
        await peer.send(struct.pack(">BBI", 0x04, 0, 0xFFFFFFFF) + b"\x00" * 64)
        await peer.expect_abort(2)


async def rq_with_128_contexts(b: Bench) -> None:
    ids = list(range(1, 256, 2))
    assert len(ids) == 128
    async with RawPeer.connect(b.port) as peer:
        ac = await peer.associate(raw_associate_rq(ids))
        assert sorted(c.context_id for c in ac.presentation_contexts) == ids
        assert all(c.result == 0 for c in ac.presentation_contexts)
        await peer.send_message(255, messages.CEchoRQ(message_id=9))
        rsp = await peer.receive_command()
        assert isinstance(rsp, messages.CEchoRSP) and rsp.message_id_being_responded_to == 9
        await peer.release()


async def rq_with_129_contexts(b: Bench) -> None:
    # only 128 odd IDs exist (PS3.8 9.3.2.2): a 129th context must repeat one
    ids = [*range(1, 256, 2), 1]
    async with RawPeer.connect(b.port) as peer:
        await peer.send(raw_associate_rq(ids))
        await peer.expect_abort(0, 0)


async def rq_with_duplicate_context_ids(b: Bench) -> None:
    async with RawPeer.connect(b.port) as peer:
        await peer.send(raw_associate_rq([1, 3, 1]))
        await peer.expect_abort(0, 0)


async def rq_with_bad_protocol_version(b: Bench) -> None:
    async with RawPeer.connect(b.port) as peer:
        await peer.send(raw_associate_rq([1], version=2))
        pdu = await peer.receive_pdu()
        assert isinstance(pdu, AssociateRJ)
        assert (pdu.result, pdu.source, pdu.reason) == (1, 2, 2)
        await peer.expect_closed()


async def abort_mid_store(b: Bench) -> None:
    ds = make_ct_instance(200_000, seed=99)
    data = encode_dataset(ds, EXPLICIT)
    rq = associate_rq([(CT, (EXPLICIT,))])
    async with RawPeer.connect(b.port) as peer:
        await peer.associate(rq)
        store = messages.CStoreRQ(
            message_id=1,
            affected_sop_class_uid=CT,
            affected_sop_instance_uid=str(ds.SOPInstanceUID),
        )
        await peer.send(encode_pdata(1, 0x03, dimse.encode_command(store)))
        await peer.send(encode_pdata(1, 0x00, data[:8000]))
        await peer.send(encode_pdata(1, 0x00, data[8000:16000]))
        await peer.send(encode_pdu(Abort(0, 0)))
        # AA-3: no answer, the connection is closed
        await peer.expect_closed()
    # the bench checks that no file (final or temporary) of this instance exists


SCENARIOS: dict[str, Callable[[Bench], Coroutine[Any, Any, None]]] = {
    f.__name__: f
    for f in (
        random_garbage,
        http_request,
        tls_client_hello,
        associate_rq_byte_by_byte,
        associate_rq_stalls_halfway,
        rq_then_garbage_in_one_segment,
        rq_then_rq_in_one_segment,
        release_rq_before_association,
        associate_ac_to_a_server,
        second_associate_rq,
        pdata_on_rejected_context,
        pdata_on_unknown_context,
        response_to_unknown_message_id,
        pipelined_requests_then_close,
        store_without_dataset,
        store_with_empty_dataset,
        store_truncated_dataset,
        store_dataset_cut_in_a_header,
        store_garbage_dataset,
        store_dataset_of_another_instance,
        store_dataset_of_another_class,
        store_dataset_without_sop_instance_uid,
        dataset_before_command,
        undecodable_command,
        declared_4gb_before_association,
        declared_4gb_pdata,
        rq_with_128_contexts,
        rq_with_129_contexts,
        rq_with_duplicate_context_ids,
        rq_with_bad_protocol_version,
        abort_mid_store,
    )
}


#: scenarios that need a server ARTIM longer than the default
SCENARIO_ARTIM = {"associate_rq_byte_by_byte": SLOW_ARTIM}


@pytest.mark.parametrize("scenario", list(SCENARIOS))
async def test_hostile_peer_beside_legit_association(scenario: str, tmp_path: Path) -> None:
    async with hostile_bench(tmp_path, artim=SCENARIO_ARTIM.get(scenario, ARTIM)) as bench:
        with anyio.fail_after(GUARD * 2):
            await SCENARIOS[scenario](bench)


async def test_all_hostile_peers_at_once(tmp_path: Path) -> None:
    # SLOW_ARTIM for all: the byte-by-byte scenario must finish before ARTIM (the ones that
    # wait for ARTIM take that long, concurrently)
    async with hostile_bench(tmp_path, artim=SLOW_ARTIM) as bench:
        with anyio.fail_after(GUARD * 3):
            async with anyio.create_task_group() as tg:
                for fn in SCENARIOS.values():
                    tg.start_soon(fn, bench)


# --------------------------------------------------------------------------- fuzzing


def _valid_stream() -> bytes:
    """A valid requestor stream: A-ASSOCIATE-RQ, C-ECHO-RQ, A-RELEASE-RQ."""
    return (
        associate_rq(VERIFICATION_RQ)
        + encode_pdata(1, 0x03, dimse.encode_command(messages.CEchoRQ(message_id=1)))
        + encode_pdu(ReleaseRQ())
    )


VALID_STREAM = _valid_stream()

_mutation = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 1 << 16), st.integers(1, 255)),
    st.tuples(st.just("insert"), st.integers(0, 1 << 16), st.binary(min_size=1, max_size=16)),
    st.tuples(st.just("delete"), st.integers(0, 1 << 16), st.integers(1, 32)),
    st.tuples(st.just("u32"), st.integers(0, 1 << 16), st.integers(0, 0xFFFFFFFF)),
    st.tuples(st.just("truncate"), st.integers(0, 1 << 16), st.just(0)),
)


def _mutate(data: bytes, mutations: list[tuple[str, int, Any]]) -> bytes:
    out = bytearray(data)
    for kind, where, arg in mutations:
        pos = where % (len(out) + 1)
        if kind == "flip" and pos < len(out):
            out[pos] ^= arg
        elif kind == "insert":
            out[pos:pos] = arg
        elif kind == "delete":
            del out[pos : pos + arg]
        elif kind == "u32":
            out[pos : pos + 4] = struct.pack(">I", arg)
        elif kind == "truncate":
            del out[pos:]
    return bytes(out)


def _split_pdus(data: bytes) -> list[PDU]:
    """Decode a received byte stream as a sequence of whole PDUs (each must be valid)."""
    pdus = []
    pos = 0
    while pos < len(data):
        assert len(data) - pos >= 6, f"trailing bytes {data[pos:]!r}"
        length = struct.unpack_from(">I", data, pos + 2)[0]
        assert pos + 6 + length <= len(data), "truncated PDU"
        pdus.append(decode_pdu(data[pos : pos + 6 + length]))
        pos += 6 + length
    return pdus


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(mutations=st.lists(_mutation, min_size=1, max_size=4))
async def test_fuzzed_stream_gets_valid_answer_and_server_survives(
    mutations: list[tuple[str, int, Any]],
) -> None:
    data = _mutate(VALID_STREAM, mutations)
    scp = AE("SCP", timeouts=Timeouts(artim=ARTIM))
    async with scp.server() as server:
        with anyio.fail_after(GUARD):
            async with await anyio.connect_tcp("127.0.0.1", server.port) as stream:
                try:
                    await stream.send(data)
                    await stream.send_eof()
                except (anyio.BrokenResourceError, OSError):
                    pass  # the server already answered and closed
                received = b""
                while True:
                    try:
                        received += await stream.receive()
                    except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                        break
        pdus = _split_pdus(received)
        # what an acceptor may send: AC/RJ, P-DATA, RP, A-ABORT; nothing after RJ or A-ABORT
        for i, pdu in enumerate(pdus):
            assert isinstance(pdu, (AssociateAC, AssociateRJ, PDataTF, ReleaseRP, Abort)), pdu
            if isinstance(pdu, (AssociateRJ, Abort)):
                assert i == len(pdus) - 1, pdus
        # the server keeps serving
        async with AE("SCU").associate("127.0.0.1", server.port, called_aet="SCP") as assoc:
            assert (await assoc.echo()).status == 0x0000


# --------------------------------------------------------------------------- file names


HOSTILE_UIDS = ["../../x", "/etc/passwd", "a\\b", "1." * 99 + "9", ".."]


async def test_hostile_sop_instance_uids_stay_in_folder(tmp_path: Path) -> None:
    root = tmp_path / "a" / "b"
    folder = root / "store"
    folder.mkdir(parents=True)
    (tmp_path / "a" / "keep.txt").write_text("untouched")
    passwd = Path("/etc/passwd")
    passwd_before = passwd.stat() if passwd.exists() else None

    def snapshot() -> dict[str, tuple[int, int]]:
        return {
            str(p.relative_to(tmp_path)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in tmp_path.rglob("*")
            if p != folder and folder not in p.parents  # the folder's own mtime changes
        }

    before = snapshot()
    scp = AE("SCP", accept_any_storage=True, timeouts=Timeouts(artim=ARTIM))

    @scp.on_store
    async def on_store(request: Any) -> int:
        await request.save_to(folder)
        return 0x0000

    def dataset_of(uid: str) -> bytes:
        # the data set names the same (hostile) instance as its command, as it must
        ds = make_ct_instance(1000, seed=5)
        ds.SOPInstanceUID = uid
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom warns of the invalid UIDs
            return encode_dataset(ds, EXPLICIT)

    datasets = {uid: dataset_of(uid) for uid in HOSTILE_UIDS}
    assert len(HOSTILE_UIDS[3]) == 199
    async with scp.server() as server, RawPeer.connect(server.port) as peer:
        with anyio.fail_after(GUARD):
            await peer.associate(associate_rq([(CT, (EXPLICIT,))]))
            for n, uid in enumerate(HOSTILE_UIDS, start=1):
                command = _store_command(n, uid)
                await peer.send(encode_pdata(1, 0x03, command))
                await peer.send(encode_pdata(1, 0x02, datasets[uid]))
                rsp = await peer.receive_command()
                assert isinstance(rsp, messages.CStoreRSP), rsp
                assert rsp.message_id_being_responded_to == n
                assert rsp.status == 0x0000, (uid, hex(rsp.status))
            await peer.release()
    assert snapshot() == before, "something changed outside the storage folder"
    if passwd_before is not None:
        after = passwd.stat()
        assert (after.st_size, after.st_mtime_ns) == (
            passwd_before.st_size,
            passwd_before.st_mtime_ns,
        )
    files = list(folder.iterdir())
    assert len(files) == len(HOSTILE_UIDS), files
    for f in files:
        assert f.is_file() and f.parent == folder and not f.name.startswith(".")
        content = f.read_bytes()
        assert sum(content.endswith(d) for d in datasets.values()) == 1, f


def _store_command(message_id: int, sop_instance_uid: str) -> bytes:
    """A C-STORE-RQ command set encoded by hand (Implicit VR Little Endian, PS3.7 6.3.1):
    our encoder refuses a backslash in a UI value, a hostile peer does not."""

    def element(elem: int, value: bytes) -> bytes:
        if len(value) % 2:
            value += b"\x00"
        return struct.pack("<HHI", 0, elem, len(value)) + value

    body = (
        element(0x0002, CT.encode())
        + element(0x0100, struct.pack("<H", 0x0001))
        + element(0x0110, struct.pack("<H", message_id))
        + element(0x0700, struct.pack("<H", 0))
        + element(0x0800, struct.pack("<H", 0x0000))
        + element(0x1000, sop_instance_uid.encode())
    )
    return element(0x0000, struct.pack("<I", len(body))) + body


# --------------------------------------------------------------------------- memory


BIG_ROWS, BIG_COLUMNS = 4096, 8192  # 64 MiB of 16-bit pixels
BIG_PIXELS = BIG_ROWS * BIG_COLUMNS * 2
CHUNK = bytes(range(256)) * 4096  # 1 MiB, reused: the sender allocates nothing per chunk


def _big_instance_header() -> tuple[str, bytes]:
    """The encoded attributes of a 64 MiB CT instance up to the Pixel Data value."""
    ds = make_ct_instance(0, seed=1)
    del ds.PixelData
    ds.Rows, ds.Columns = BIG_ROWS, BIG_COLUMNS
    head = encode_dataset(ds, EXPLICIT)
    # (7FE0,0010) OW, Explicit VR Little Endian: tag, VR, 2 reserved bytes, 32-bit length
    head += struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, BIG_PIXELS)
    return str(ds.SOPInstanceUID), head


async def _big_chunks(head: bytes, stop_after: int | None = None) -> AsyncIterator[bytes]:
    yield head
    sent = 0
    while sent < BIG_PIXELS:
        if stop_after is not None and sent >= stop_after:
            raise _SenderGaveUp
        yield CHUNK
        sent += len(CHUNK)


class _SenderGaveUp(Exception):
    pass


async def _big_store(assoc: Any, uid: str, chunks: AsyncIterator[bytes]) -> int:
    context = assoc.find_context(CT, [EXPLICIT])
    assert context is not None
    rq = messages.CStoreRQ(
        message_id=assoc.next_message_id(),
        affected_sop_class_uid=CT,
        affected_sop_instance_uid=uid,
    )
    rsp = await assoc.request(context, rq, chunks)
    return int(rsp.message.status)


async def test_64mb_instance_received_with_bounded_memory(tmp_path: Path) -> None:
    folder = tmp_path / "big"
    scp = AE("SCP", accept_any_storage=True)

    @scp.on_store
    async def on_store(request: Any) -> int:
        await request.save_to(folder)
        return 0x0000

    uid, head = _big_instance_header()
    async with scp.server() as server:
        async with AE("SCU").associate(
            "127.0.0.1", server.port, called_aet="SCP", contexts=[(CT, [EXPLICIT])]
        ) as assoc:
            tracemalloc.start()
            try:
                tracemalloc.reset_peak()
                with anyio.fail_after(60):
                    status = await _big_store(assoc, uid, _big_chunks(head))
                _, peak = tracemalloc.get_traced_memory()
            finally:
                tracemalloc.stop()
    assert status == 0x0000
    assert peak < 24 * 1024 * 1024, f"peak traced memory {peak / 2**20:.1f} MiB"
    path = folder / f"{uid}.dcm"
    assert [p.name for p in folder.iterdir()] == [path.name]
    with path.open("rb") as fp:
        fp.seek(-len(CHUNK), 2)
        assert fp.read() == CHUNK
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    assert ds.SOPInstanceUID == uid and (ds.Rows, ds.Columns) == (BIG_ROWS, BIG_COLUMNS)
    assert path.stat().st_size > BIG_PIXELS + len(head)


async def test_sender_failure_mid_transfer_leaves_no_file(tmp_path: Path) -> None:
    folder = tmp_path / "big"
    folder.mkdir()
    scp = AE("SCP", accept_any_storage=True)
    handler_done = anyio.Event()
    outcome: list[BaseException] = []

    @scp.on_store
    async def on_store(request: Any) -> int:
        try:
            await request.save_to(folder)
        except BaseException as exc:
            outcome.append(exc)
            raise
        finally:
            handler_done.set()
        return 0x0000

    uid, head = _big_instance_header()
    async with scp.server() as server:
        with pytest.raises(_SenderGaveUp):
            async with AE("SCU").associate(
                "127.0.0.1", server.port, called_aet="SCP", contexts=[(CT, [EXPLICIT])]
            ) as assoc:
                await _big_store(assoc, uid, _big_chunks(head, stop_after=8 * len(CHUNK)))
        assert assoc.is_closed and not assoc.released
        with anyio.fail_after(GUARD):
            await handler_done.wait()
    # the handler saw the association end (an AssociationError, or its cancellation when the
    # connection closed first), never a complete data set
    assert outcome, "the handler completed although the data set was cut short"
    assert list(folder.iterdir()) == [], "a file or a .*.part temporary file was left behind"


# --------------------------------------------------------------------------- limits


async def test_max_associations_frees_a_slot_when_one_ends() -> None:
    scp = AE("SCP", max_associations=2, timeouts=Timeouts(artim=ARTIM))
    async with scp.server() as server:
        scu = AE("SCU")
        async with scu.associate("127.0.0.1", server.port, called_aet="SCP") as first:
            async with scu.associate("127.0.0.1", server.port, called_aet="SCP") as second:
                async with RawPeer.connect(server.port) as peer:
                    with anyio.fail_after(GUARD):
                        await peer.send(associate_rq(VERIFICATION_RQ))
                        rj = await peer.receive_pdu()
                        assert isinstance(rj, AssociateRJ)
                        assert (rj.result, rj.source, rj.reason) == (2, 3, 2)
                        await peer.expect_closed()
                assert (await second.echo()).status == 0
            assert second.released
            # the slot of the released association is free again at once
            async with scu.associate("127.0.0.1", server.port, called_aet="SCP") as third:
                assert (await third.echo()).status == 0
                assert (await first.echo()).status == 0
        # both slots are free: two at a time again
        async with (
            scu.associate("127.0.0.1", server.port, called_aet="SCP") as a,
            scu.associate("127.0.0.1", server.port, called_aet="SCP") as b,
        ):
            assert (await a.echo()).status == 0 and (await b.echo()).status == 0


# --------------------------------------------------------------------------- stalled transfers


@pytest.mark.parametrize("stall_after_command", [True, False], ids=["no-data", "some-data"])
async def test_transfer_stalled_mid_message_is_aborted_after_the_dimse_timeout(
    tmp_path: Path, stall_after_command: bool
) -> None:
    """A peer that starts a C-STORE and then goes silent is aborted once the next fragment is
    more than the DIMSE timeout late, and leaves no file, not even a temporary one.

    The timeout runs from the last fragment, not from the start of the message: in the
    "some-data" case the fragments come spaced out, each within the timeout of the previous
    one but together over a longer time, and must not be cut off.
    """
    folder = tmp_path / "out"
    dimse_timeout = 0.6
    gap = 0.25  # between fragments: well within the timeout, three of them exceed it
    # (the minimum rate is off: these fragments are tiny, see tests/test_limits.py for it)
    timeouts = Timeouts(dimse=dimse_timeout, artim=ARTIM, min_receive_rate=None)
    scp = AE("SCP", accept_any_storage=True, timeouts=timeouts)
    handler_ended = anyio.Event()

    @scp.on_store
    async def on_store(request: Any) -> int:
        try:
            await request.save_to(folder)
        finally:
            handler_ended.set()
        return 0x0000

    # empty (0008,0005) CS, (0008,0008) CS, (0008,0012) DA: the start of a data set
    elements = [(0x0005, b"CS"), (0x0008, b"CS"), (0x0012, b"DA")]
    fragments = [struct.pack("<HH2sH", 0x0008, e, vr, 0) for e, vr in elements]
    if stall_after_command:
        fragments = []
    async with scp.server() as server, RawPeer.connect(server.port) as peer:
        ac = await peer.associate(associate_rq([(CT, [EXPLICIT])]))
        context_id = ac.presentation_contexts[0].context_id
        # Each clock starts before its send(): the server may read the bytes (and start its
        # timer) before send() returns here, and a clock started afterwards would shorten
        # the measured wait.
        last_sent = anyio.current_time()
        await peer.send(encode_pdata(context_id, 0x03, _store_command(1, "1.2.826.0.1.3")))
        for fragment in fragments:
            await anyio.sleep(gap)  # pacing the peer on a clock, not a synchronisation
            last_sent = anyio.current_time()
            await peer.send(encode_pdata(context_id, 0x00, fragment))
        await peer.expect_abort(source=0, reason=0)
        silent_for = anyio.current_time() - last_sent
        assert silent_for >= dimse_timeout * 0.9, f"aborted {silent_for:.2f} s after a fragment"
        with anyio.fail_after(GUARD):
            await handler_ended.wait()
    assert not folder.exists() or list(folder.iterdir()) == []


async def test_idle_between_messages_is_not_a_dimse_timeout() -> None:
    """The DIMSE timeout bounds a message in progress, not the pause between messages."""
    scp = AE("SCP", timeouts=Timeouts(dimse=0.2))
    async with scp.server() as server, RawPeer.connect(server.port) as peer:
        ac = await peer.associate(associate_rq([(uids.VERIFICATION, [EXPLICIT])]))
        context_id = ac.presentation_contexts[0].context_id
        # wait (on a clock, not as synchronisation) longer than the DIMSE timeout
        await anyio.sleep(0.5)
        await peer.send_message(context_id, messages.CEchoRQ(message_id=1))
        rsp = await peer.receive_command()
        assert isinstance(rsp, messages.CEchoRSP) and rsp.status == 0
        await peer.release()


async def test_sender_failure_mid_transfer_to_the_archive_leaves_no_file_and_no_row(
    tmp_path: Path,
) -> None:
    """The same cut-off C-STORE against qrscp's archive: no file, and nothing indexed."""
    from asyncdicom.archive import Archive, qrscp_config

    storage = tmp_path / "archive"
    scp = AE(config=qrscp_config("SCP"))
    uid, head = _big_instance_header()
    handler_done = anyio.Event()
    async with Archive(storage) as archive:
        archive.install(scp)
        archive_store = scp.handlers.get("C-STORE")
        assert archive_store is not None

        @scp.on_store
        async def on_store(request: Any) -> Any:  # the archive's handler, observed
            try:
                return await archive_store(request)
            finally:
                handler_done.set()

        async with scp.server() as server:
            with pytest.raises(_SenderGaveUp):
                async with AE("SCU").associate(
                    "127.0.0.1", server.port, called_aet="SCP", contexts=[(CT, [EXPLICIT])]
                ) as assoc:
                    await _big_store(assoc, uid, _big_chunks(head, stop_after=8 * len(CHUNK)))
            with anyio.fail_after(GUARD):
                await handler_done.wait()
        assert archive.index.count() == 0
        assert archive.index.lookup_instances([uid]) == {}
    left = [p for p in storage.rglob("*") if p.is_file() and not p.name.startswith("index.")]
    assert left == [], f"left behind: {left}"
