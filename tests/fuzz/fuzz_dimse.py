"""atheris harness: DIMSE command sets and message assembly (asyncdicom/protocol/dimse.py,
messages.py, operations.py).

Input: ``[mode][records]``.  Mode 0: the rest is one command set for :func:`decode_command`.
Otherwise the rest is a series of PDV records ``[context ID][control header][length, 2 bytes]
[data]``; bit 7 of the control header (ignored by receivers) starts a new P-DATA-TF PDU.  The
PDUs go to a :class:`DIMSEOperations` that has operations of its own outstanding (a C-FIND, a
C-STORE, an N-ACTION), so that responses, Pending statuses and C-CANCEL are reached too; the
peer's requests are answered as the acceptor answers them (after their data set, if any).

Properties: decoding raises only :class:`DIMSEError`, and a decoded command set re-encodes (or
the encoder refuses a value with ``ValueError``) to one that decodes equal; ``receive`` raises
only :class:`DIMSEError`; answering a request it reported never raises; every data-set
fragment belongs to the message reported just before it.
"""

from __future__ import annotations

import contextlib
import struct
import sys

if __name__ == "__main__":
    import atheris

    _imports = atheris.instrument_imports(include=["asyncdicom"])
else:
    _imports = contextlib.nullcontext()

with _imports:
    from fuzz_common import CT, FIND, Input, command_seeds, session_seeds

    from asyncdicom.protocol import dimse, messages
    from asyncdicom.protocol.errors import DIMSEError
    from asyncdicom.protocol.operations import (
        CancelReceived,
        DIMSEOperations,
        FragmentReceived,
        RequestReceived,
        ResponseReceived,
    )
    from asyncdicom.protocol.pdu import PDataTF, PresentationDataValue

ACCEPTED = (1, 3, 5, 7)


def check_command(data: bytes) -> None:
    try:
        message = dimse.decode_command(data)
    except DIMSEError as exc:
        assert str(exc)
        return
    try:
        again = dimse.encode_command(message)
    except ValueError:
        return  # a value the peer may send but we would not (documented)
    assert dimse.decode_command(again) == message, (message, again)


def read_pdus(inp: Input) -> list[PDataTF]:
    pdus: list[PDataTF] = []
    pdvs: list[PresentationDataValue] = []
    while inp.pos < len(inp.data):
        context_id, header = inp.u8(), inp.u8()
        data = inp.take(inp.u16() % 2048)
        if header & 0x80 and pdvs:
            pdus.append(PDataTF(tuple(pdvs)))
            pdvs = []
        pdvs.append(PresentationDataValue(context_id, header, memoryview(data)))
    if pdvs:
        pdus.append(PDataTF(tuple(pdvs)))
    return pdus


def response_to(message: messages.Message, status: int) -> messages.Message:
    cls = messages.MESSAGE_TYPES[message.COMMAND_FIELD | 0x8000]
    return cls(message_id_being_responded_to=message.message_id, status=status)  # type: ignore


def run_operations(mode: int, pdus: list[PDataTF]) -> None:
    ops = DIMSEOperations(ACCEPTED, max_invoked=0, max_performed=(0, 1, 2, 16)[mode & 3])
    ops.invoke(5, messages.CFindRQ(message_id=ops.next_message_id(), affected_sop_class_uid=FIND))
    ops.invoke(
        3,
        messages.CStoreRQ(
            message_id=ops.next_message_id(),
            affected_sop_class_uid=CT,
            affected_sop_instance_uid="1.2.3",
        ),
    )
    if mode & 4:
        ops.abandon(1)
    cancel = ops.cancel(1) if mode & 8 else None
    assert cancel is None or cancel.message_id_being_responded_to == 1
    waiting: dict[int, messages.Message] = {}  # requests answered after their data set
    current: tuple[int, bool] | None = None
    requested: dict[int, int] = {}  # the peer's requests seen: Message ID -> context ID
    for pdu in pdus:
        try:
            events = ops.receive(pdu)
        except DIMSEError as exc:
            assert str(exc)
            return  # the association is aborted
        for event in events:
            if isinstance(event, RequestReceived):
                message = event.message
                assert event.context_id in ACCEPTED
                assert event.message_id in ops.performed
                current = (event.message_id, False)
                requested[event.message_id] = event.context_id
                if message.has_dataset:
                    waiting[event.message_id] = message
                else:
                    ops.respond(event.message_id, response_to(message, 0))  # type: ignore
            elif isinstance(event, ResponseReceived):
                current = (event.message_id, True)
                if event.final:
                    assert event.message_id not in ops.invoked
            elif isinstance(event, FragmentReceived):
                assert current == (event.message_id, event.response), (current, event)
                if event.last and not event.response and event.message_id in waiting:
                    message = waiting.pop(event.message_id)
                    if isinstance(message, messages.CFindRQ) and mode & 16:
                        ops.respond(event.message_id, response_to(message, 0xFF00))  # type: ignore
                    ops.respond(event.message_id, response_to(message, 0))  # type: ignore
            else:
                assert isinstance(event, CancelReceived)
                # (known is decided when the PDU is received: the operation may have ended
                # since, answered while this PDU's earlier events were handled)
                if event.known:
                    assert requested.get(event.message_id) == event.context_id


def TestOneInput(data: bytes) -> None:
    inp = Input(data)
    mode = inp.u8()
    if mode == 0:
        check_command(inp.rest())
        return
    run_operations(mode, read_pdus(inp))


def _records(stream: bytes) -> bytes:
    """P-DATA-TF PDUs (as session_seeds() writes them) as this harness's PDV records."""
    out, pos = bytearray(), 0
    while pos + 6 <= len(stream):
        ptype, length = struct.unpack_from(">BxI", stream, pos)
        end = pos + 6 + length
        if ptype == 4:
            item = pos + 6
            first = True
            while item + 6 <= end:
                (item_length,) = struct.unpack_from(">I", stream, item)
                context_id, header = stream[item + 4], stream[item + 5]
                data = stream[item + 6 : item + 4 + item_length]
                out += bytes((context_id, header | (0x80 if first else 0)))
                out += struct.pack(">H", len(data)) + data
                first = False
                item += 4 + item_length
        pos = end
    return bytes(out)


def seeds() -> list[bytes]:
    """Command sets (mode 0) and the sessions' P-DATA as records, under several modes."""
    out = [b"\x00" + c for c in command_seeds()]
    for i, stream in enumerate(session_seeds()):
        out.append(bytes((1 + 2 * i,)) + _records(stream))
    # responses to our C-FIND (Message ID 1: Pending with an identifier, then final) and
    # to our C-STORE (2)
    pending = messages.CFindRSP(message_id_being_responded_to=1, status=0xFF00, has_dataset=True)
    final = messages.CFindRSP(message_id_being_responded_to=1, status=0)
    store_rsp = messages.CStoreRSP(message_id_being_responded_to=2, status=0)
    records = b""
    for context_id, message in ((5, pending), (5, final), (3, store_rsp)):
        command = dimse.encode_command(message)
        records += bytes((context_id, 0x83)) + struct.pack(">H", len(command)) + command
        if message.has_dataset:
            records += b"\x05\x82\x00\x04" + b"\x08\x00\x05\x00"
    out.append(b"\x11" + records)
    return out


def main() -> None:
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
