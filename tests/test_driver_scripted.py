"""The driver against scripted PDUs: no socket, no second stack.

A :class:`ScriptedStream` (httpcore's ``AsyncMockStream`` is the model) hands the driver
recorded PDUs, each released once the driver has written a given number of times, and keeps
whatever the driver writes.  The expected bytes are PDUs built by hand from PS3.8 / PS3.7
layouts (through our encoder for the PDU framing, so each test states which PDU and fields it
expects).  Both backends.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import anyio
import pytest
from anyio.abc import ByteStream

from asyncdicom import AE
from asyncdicom.protocol import messages, uids
from asyncdicom.protocol.codec import PDUFramer, encode_pdata, encode_pdu
from asyncdicom.protocol.dimse import decode_command, encode_command
from asyncdicom.protocol.negotiation import (
    Accepted,
    AcceptorConfig,
    ContextRequest,
    RequestorConfig,
    SupportedContext,
    build_associate_rq,
    negotiate,
)
from asyncdicom.protocol.pdu import (
    PDU,
    Abort,
    AssociateAC,
    AssociateRQ,
    PDataTF,
    ReleaseRP,
    ReleaseRQ,
)

pytestmark = pytest.mark.anyio

IMPLICIT = "1.2.840.10008.1.2"
EXPLICIT = "1.2.840.10008.1.2.1"
GUARD = 10.0


class ScriptedStream(ByteStream):
    """Returns ``(after_writes, data)`` entries in order: each once the driver has written at
    least ``after_writes`` times (``b""``: the peer closes the connection then); with the script
    done it waits, as a peer would, until the driver closes.  Keeps every write."""

    def __init__(self, script: Sequence[tuple[int, bytes]]) -> None:
        self.script = list(script)
        self.written: list[bytes] = []
        self._wrote = anyio.Event()
        self.closed = False

    async def receive(self, max_bytes: int = 65536) -> bytes:
        if self.closed:
            raise anyio.ClosedResourceError
        after, data = self.script[0] if self.script else (1 << 30, b"")
        while len(self.written) < after:
            self._wrote = anyio.Event()
            await self._wrote.wait()
            if self.closed:
                raise anyio.ClosedResourceError
        self.script.pop(0)
        if not data:
            raise anyio.EndOfStream
        return data

    async def send(self, item: bytes) -> None:
        if self.closed:
            raise anyio.ClosedResourceError
        self.written.append(bytes(item))
        self._wrote.set()

    async def send_eof(self) -> None:
        pass

    async def aclose(self) -> None:
        self.closed = True
        self._wrote.set()

    def pdus(self) -> list[PDU]:
        framer = PDUFramer(0, 1 << 20)
        framer.feed(b"".join(self.written))
        out: list[PDU] = []
        while (pdu := framer.next_pdu()) is not None:
            out.append(pdu)
        return out


def rq_for(contexts: Sequence[tuple[str, Sequence[str]]]) -> AssociateRQ:
    return build_associate_rq(
        RequestorConfig(
            calling_ae_title="SCU", called_ae_title="SCP", implementation_class_uid="1.2.3.4"
        ),
        [ContextRequest(a, tuple(ts)) for a, ts in contexts],
    )


def ac_for(rq: AssociateRQ) -> AssociateAC:
    result = negotiate(
        rq,
        AcceptorConfig(
            ae_title="SCP",
            implementation_class_uid="1.2.3.4",
            supported=(
                SupportedContext(uids.VERIFICATION, (IMPLICIT,)),
                SupportedContext(uids.CT_IMAGE_STORAGE, (EXPLICIT, IMPLICIT)),
            ),
        ),
    )
    assert isinstance(result, Accepted)
    return result.ac


def message_pdu(context_id: int, message: messages.Message) -> bytes:
    return encode_pdata(context_id, 0x03, encode_command(message))


def commands(pdus: Sequence[PDU]) -> list[tuple[int, messages.Message]]:
    out = []
    for pdu in pdus:
        if isinstance(pdu, PDataTF):
            for pdv in pdu.pdvs:
                if pdv.message_control_header & 0x01:
                    out.append((pdv.context_id, decode_command(pdv.data)))
    return out


# --------------------------------------------------------------------------- acceptor


async def test_acceptor_answers_scripted_echo_and_release() -> None:
    rq = rq_for([(uids.VERIFICATION, (IMPLICIT,))])
    stream = ScriptedStream(
        [
            (0, encode_pdu(rq)),
            (1, message_pdu(1, messages.CEchoRQ(message_id=7))),
            (2, encode_pdu(ReleaseRQ())),
            (3, b""),  # the requestor closes once it has the A-RELEASE-RP
        ]
    )
    with anyio.fail_after(GUARD):
        await AE("SCP").serve_stream(stream)
    pdus = stream.pdus()
    assert [type(p) for p in pdus] == [AssociateAC, PDataTF, ReleaseRP]
    ((cid, rsp),) = commands(pdus)
    assert cid == 1 and isinstance(rsp, messages.CEchoRSP)
    assert (rsp.message_id_being_responded_to, rsp.status) == (7, 0x0000)
    assert stream.closed


async def test_acceptor_ignores_a_late_c_cancel() -> None:
    """A C-CANCEL-RQ for an operation that already ended (PS3.7 9.3.2.3: it crossed the final
    response) is ignored: no abort, the next request is answered."""
    rq = rq_for([(uids.VERIFICATION, (IMPLICIT,))])
    stream = ScriptedStream(
        [
            (0, encode_pdu(rq)),
            (1, message_pdu(1, messages.CEchoRQ(message_id=1))),
            (2, message_pdu(1, messages.CCancelRQ(message_id_being_responded_to=1))),
            (2, message_pdu(1, messages.CEchoRQ(message_id=2))),
            (3, encode_pdu(ReleaseRQ())),
            (4, b""),
        ]
    )
    with anyio.fail_after(GUARD):
        await AE("SCP").serve_stream(stream)
    pdus = stream.pdus()
    assert [type(p) for p in pdus] == [AssociateAC, PDataTF, PDataTF, ReleaseRP]
    answered = [m.message_id_being_responded_to for _, m in commands(pdus)]  # type: ignore[union-attr]
    assert answered == [1, 2]


async def test_acceptor_aborts_a_peer_beyond_the_window() -> None:
    """No window negotiated: one operation of the peer's at a time (PS3.7 D.3.3.3).  A second
    C-STORE before the first is answered: A-ABORT source 2, reason 5."""
    rq = rq_for([(uids.CT_IMAGE_STORAGE, (IMPLICIT,))])
    store = messages.CStoreRQ(
        message_id=1, affected_sop_class_uid=uids.CT_IMAGE_STORAGE, affected_sop_instance_uid="1"
    )
    second = messages.CStoreRQ(
        message_id=2, affected_sop_class_uid=uids.CT_IMAGE_STORAGE, affected_sop_instance_uid="2"
    )
    stream = ScriptedStream(
        [
            (0, encode_pdu(rq)),
            (1, message_pdu(1, store) + message_pdu(1, second)),
            (2, b""),  # the requestor closes on the A-ABORT
        ]
    )
    with anyio.fail_after(GUARD):
        await AE("SCP", accept_any_storage=True).serve_stream(stream)
    pdus = stream.pdus()
    assert isinstance(pdus[0], AssociateAC)
    assert pdus[-1] == Abort(2, 5)


# --------------------------------------------------------------------------- requestor


async def run_requestor(
    script_after_rq: Sequence[tuple[int, bytes]],
    contexts: Sequence[tuple[str, Sequence[str]]],
    body: object,
) -> tuple[ScriptedStream, object]:
    rq = rq_for(contexts)
    stream = ScriptedStream([(1, encode_pdu(ac_for(rq))), *script_after_rq])
    scu = AE("SCU")
    result: object = None
    with anyio.fail_after(GUARD):
        async with scu.associate_over(
            stream, called_aet="SCP", contexts=[ContextRequest(a, tuple(t)) for a, t in contexts]
        ) as assoc:
            result = await body(assoc)  # type: ignore[operator]
    return stream, result


async def test_requestor_echo_and_release() -> None:
    async def body(assoc: object) -> object:
        return await assoc.echo()  # type: ignore[attr-defined]

    rsp = messages.CEchoRSP(message_id_being_responded_to=1, status=0)
    stream, response = await run_requestor(
        [(2, message_pdu(1, rsp)), (3, encode_pdu(ReleaseRP()))],
        [(uids.VERIFICATION, (IMPLICIT,))],
        body,
    )
    assert response.status == 0  # type: ignore[attr-defined]
    pdus = stream.pdus()
    assert [type(p) for p in pdus] == [AssociateRQ, PDataTF, ReleaseRQ]
    ((cid, echo),) = commands(pdus)
    assert cid == 1 and isinstance(echo, messages.CEchoRQ) and echo.message_id == 1


async def test_requestor_accepts_a_response_on_a_context_of_the_same_sop_class(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Issue 18 item 6: two contexts of CT Image Storage; the peer answers on the other one.
    Accepted, and one warning for the association (not one per response)."""
    from asyncdicom.storage.codec import encode_dataset
    from asyncdicom.storage.synthetic import make_ct_instance

    ds = make_ct_instance(2048)
    data = encode_dataset(ds, IMPLICIT)

    async def body(assoc: object) -> object:
        out = []
        for _ in range(2):
            context = assoc.find_context(uids.CT_IMAGE_STORAGE, [EXPLICIT])  # type: ignore[attr-defined]
            mid = assoc.next_message_id()  # type: ignore[attr-defined]
            rq = messages.CStoreRQ(
                message_id=mid,
                affected_sop_class_uid=uids.CT_IMAGE_STORAGE,
                affected_sop_instance_uid=ds.SOPInstanceUID,
            )
            out.append(await assoc.request(context, rq, data))  # type: ignore[attr-defined]
        return out

    def answer(mid: int) -> bytes:
        return message_pdu(
            3,  # the Implicit VR context of the same SOP class; the requests went on 1
            messages.CStoreRSP(
                message_id_being_responded_to=mid,
                status=0,
                affected_sop_class_uid=uids.CT_IMAGE_STORAGE,
                affected_sop_instance_uid=ds.SOPInstanceUID,
            ),
        )

    contexts = [(uids.CT_IMAGE_STORAGE, (EXPLICIT,)), (uids.CT_IMAGE_STORAGE, (IMPLICIT,))]
    with caplog.at_level(logging.WARNING, logger="asyncdicom"):
        stream, responses = await run_requestor(
            [(2, answer(1)), (3, answer(2)), (4, encode_pdu(ReleaseRP()))], contexts, body
        )
    assert [r.status for r in responses] == [0, 0]  # type: ignore[attr-defined]
    assert isinstance(stream.pdus()[-1], ReleaseRQ)  # released, not aborted
    warnings = [r for r in caplog.records if "response_on_other_context" in r.getMessage()]
    assert len(warnings) == 1


async def test_requestor_aborts_a_response_on_a_context_of_another_sop_class() -> None:
    from asyncdicom import errors

    async def body(assoc: object) -> object:
        return await assoc.echo()  # type: ignore[attr-defined]

    rsp = messages.CEchoRSP(message_id_being_responded_to=1, status=0)
    contexts = [(uids.VERIFICATION, (IMPLICIT,)), (uids.CT_IMAGE_STORAGE, (IMPLICIT,))]
    with pytest.raises(errors.AssociationAborted) as info:
        await run_requestor([(2, message_pdu(3, rsp))], contexts, body)
    assert info.value.local and info.value.source == 2 and info.value.reason == 5
