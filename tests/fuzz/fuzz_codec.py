"""atheris harness: the PDU decoder and the framer (asyncdicom/protocol/codec.py).

Input: ``[limits selector][cut count][cut sizes, 2 bytes each][stream]``.  The stream is
decoded as one PDU (:func:`decode_pdu`) and framed as a byte stream (:class:`PDUFramer`), once
in a single read and once in the fuzzer's reads.  Every PDU type is reached, A-ASSOCIATE-RQ/AC
with all their items (presentation contexts, user identity, role selection, extended and
common extended negotiation, asynchronous operations window, unknown sub-items).

Properties: only :class:`ProtocolError` subclasses come out of decoding and framing; a decoded
PDU re-encodes (or the encoder refuses it with :class:`LocalProtocolError`) to bytes that decode
to an equal PDU; the framer gives the same PDUs and the same error whatever the reads.

Run: ``python tests/fuzz/fuzz_codec.py [corpus dir] [libFuzzer flags]`` (see run.py).
"""

from __future__ import annotations

import contextlib
import sys

if __name__ == "__main__":
    import atheris

    _imports = atheris.instrument_imports(include=["asyncdicom"])
else:
    _imports = contextlib.nullcontext()

with _imports:
    from fuzz_common import Input, cut, pdu_seeds, read_cuts, session_seeds

    from asyncdicom.protocol.codec import PDUFramer, decode_pdu, encode_pdu
    from asyncdicom.protocol.errors import LocalProtocolError, ProtocolError
    from asyncdicom.protocol.pdu import PDU, AssociateAC, AssociateRQ

#: (max P-DATA-TF length, max other PDU length) of the framer, chosen by the first byte
LIMITS = ((262144, 1 << 20), (0, 0), (64, 256), (16384, 70000))


def check_decoded(pdu: PDU) -> None:
    """Re-encoding a decoded PDU is refused cleanly or gives an equal PDU back."""
    if isinstance(pdu, (AssociateRQ, AssociateAC)):
        info = pdu.user_information
        # the properties the negotiation reads
        _ = (
            info.maximum_length,
            info.implementation_class_uid,
            info.implementation_version_name,
            info.async_ops_window,
            info.role_selections,
            info.extended_negotiations,
            info.common_extended_negotiations,
            info.user_identity_rq,
            info.user_identity_ac,
        )
    try:
        again = encode_pdu(pdu)
    except LocalProtocolError:
        return
    assert decode_pdu(again) == pdu, (pdu, again)


def frame(stream: bytes, reads: list[bytes], limits: tuple[int, int]) -> tuple[list[PDU], str]:
    """Frame ``reads``: the PDUs, then the error type name (or "" when none)."""
    framer = PDUFramer(*limits)
    pdus: list[PDU] = []
    try:
        for chunk in reads:
            framer.feed(chunk)
            while (pdu := framer.next_pdu()) is not None:
                pdus.append(pdu)
    except ProtocolError as exc:
        assert str(exc)
        # a dead framer keeps refusing with the same error type
        try:
            framer.feed(b"\x05")
        except ProtocolError as again:
            assert type(again) is type(exc)
        else:
            raise AssertionError("a framer accepted bytes after an error") from None
        return pdus, type(exc).__name__
    assert framer.buffered <= len(stream)
    return pdus, ""


def TestOneInput(data: bytes) -> None:
    inp = Input(data)
    limits = LIMITS[inp.u8() % len(LIMITS)]
    sizes = read_cuts(inp, 12)
    stream = inp.rest()
    try:
        pdu = decode_pdu(stream)
    except ProtocolError as exc:
        assert str(exc)
    else:
        check_decoded(pdu)
    whole = frame(stream, [stream], limits)
    split = frame(stream, cut(stream, sizes), limits)
    assert whole == split, (whole, split)
    for pdu in whole[0]:
        check_decoded(pdu)


def seeds() -> list[bytes]:
    """Seed inputs: every PDU type and a few sessions, in one read and in small reads."""
    out = []
    for stream in pdu_seeds() + session_seeds():
        out.append(b"\x00\x00" + stream)
        out.append(b"\x02\x03\x00\x07\x00\x01\x00\x40" + stream)
    return out


def main() -> None:
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
