"""Property tests: the decoder and the framer only ever return PDUs or raise ProtocolError, for
arbitrary and for mutated valid input; decode/encode are mutually consistent; the framer is
independent of how the stream is split."""

from __future__ import annotations

import itertools
import struct

from hypothesis import assume, given
from hypothesis import strategies as st
from strategies import any_pdu, associate_ac, associate_rq, p_data_tf

from asyncdicom.protocol.codec import PDUFramer, decode_pdu, encode_pdu
from asyncdicom.protocol.errors import LocalProtocolError, ProtocolError
from asyncdicom.protocol.pdu import PDU


def _decode_or_protocol_error(data: bytes | bytearray) -> PDU | None:
    """decode_pdu must return a PDU or raise ProtocolError; anything else fails the test."""
    try:
        pdu = decode_pdu(data)
    except ProtocolError as error:
        assert str(error)  # every error says what is wrong
        return None
    _check_reencode(pdu)
    return pdu


def _check_reencode(pdu: PDU) -> None:
    """A decoded PDU re-encodes to bytes that decode to the same PDU (or, for lenient input
    that cannot be represented, the encoder refuses it cleanly)."""
    try:
        again = encode_pdu(pdu)
    except LocalProtocolError:
        return
    assert decode_pdu(again) == pdu
    assert encode_pdu(decode_pdu(again)) == again


@given(st.binary(max_size=300))
def test_arbitrary_bytes(data: bytes) -> None:
    _decode_or_protocol_error(data)


@given(pdu_type=st.integers(0, 9), body=st.binary(max_size=300))
def test_arbitrary_body_with_consistent_header(pdu_type: int, body: bytes) -> None:
    _decode_or_protocol_error(struct.pack(">BBI", pdu_type, 0, len(body)) + body)


@given(
    prefix=st.sampled_from([b"\x01", b"\x02"]),
    body=st.binary(min_size=68, max_size=400),
)
def test_arbitrary_associate_items(prefix: bytes, body: bytes) -> None:
    # a valid version and AE titles so that the fuzz reaches the variable items
    fixed = b"\x00\x01\x00\x00" + b"A".ljust(16) + b"B".ljust(16) + bytes(32)
    variable = body[68:]
    data = prefix + b"\x00" + struct.pack(">I", 68 + len(variable)) + fixed + variable
    _decode_or_protocol_error(data)


_mutation = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 1 << 20), st.integers(0, 7)),
    st.tuples(st.just("truncate"), st.integers(0, 1 << 20), st.just(0)),
    st.tuples(st.just("byte"), st.integers(0, 1 << 20), st.integers(0, 255)),
    st.tuples(st.just("u16"), st.integers(0, 1 << 20), st.integers(0, 0xFFFF)),
    st.tuples(st.just("u32"), st.integers(0, 1 << 20), st.integers(0, 0xFFFFFFFF)),
    st.tuples(st.just("insert"), st.integers(0, 1 << 20), st.integers(0, 255)),
    st.tuples(st.just("delete"), st.integers(0, 1 << 20), st.just(0)),
)


def _mutate(data: bytes, mutations: list[tuple[str, int, int]], fix_length: bool) -> bytearray:
    out = bytearray(data)
    for kind, where, value in mutations:
        if not out:
            break
        pos = where % len(out)
        if kind == "flip":
            out[pos] ^= 1 << value
        elif kind == "truncate":
            del out[pos:]
        elif kind == "byte":
            out[pos] = value
        elif kind == "u16":
            out[pos : pos + 2] = struct.pack(">H", value)[: len(out) - pos]
        elif kind == "u32":
            out[pos : pos + 4] = struct.pack(">I", value)[: len(out) - pos]
        elif kind == "insert":
            out.insert(pos, value)
        else:
            del out[pos]
    if fix_length and len(out) >= 6:
        # keep the PDU-length consistent so that mutations reach the items
        out[2:6] = struct.pack(">I", len(out) - 6)
    return out


@given(
    pdu=any_pdu(),
    mutations=st.lists(_mutation, min_size=1, max_size=4),
    fix_length=st.booleans(),
)
def test_mutated_valid_pdus(
    pdu: PDU, mutations: list[tuple[str, int, int]], fix_length: bool
) -> None:
    _decode_or_protocol_error(_mutate(encode_pdu(pdu), mutations, fix_length))


@given(
    pdu=st.one_of(associate_rq(), associate_ac()),
    where=st.integers(0, 1 << 20),
    value=st.integers(0, 0xFFFF),
)
def test_corrupted_item_length_fields(pdu: PDU, where: int, value: int) -> None:
    """Overwrite one 16-bit field in the variable part (most likely an item length) and fix
    the PDU-length, which is what an off-by-n encoder bug in a peer looks like."""
    data = bytearray(encode_pdu(pdu))
    pos = 74 + where % (len(data) - 75)
    data[pos : pos + 2] = struct.pack(">H", value)
    _decode_or_protocol_error(data)


@given(pdu=p_data_tf(), where=st.integers(0, 1 << 20), value=st.integers(0, 0xFFFFFFFF))
def test_corrupted_pdv_length_fields(pdu: PDU, where: int, value: int) -> None:
    data = bytearray(encode_pdu(pdu))
    pos = 6 + where % (len(data) - 6)
    data[pos : pos + 4] = struct.pack(">I", value)[: len(data) - pos]
    _decode_or_protocol_error(data)


@given(pdu=any_pdu(), cut=st.integers(0, 1 << 20))
def test_every_truncation_is_an_error(pdu: PDU, cut: int) -> None:
    data = encode_pdu(pdu)
    cut %= len(data)
    try:
        decode_pdu(data[:cut])
    except ProtocolError:
        pass
    else:
        raise AssertionError(f"a PDU truncated to {cut} of {len(data)} bytes decoded")


# --------------------------------------------------------------------------- framer


def _feed_split(stream: bytes, cuts: list[int], framer: PDUFramer) -> list[PDU]:
    out: list[PDU] = []
    points = sorted({c % (len(stream) + 1) for c in cuts} | {0, len(stream)})
    for start, stop in itertools.pairwise(points):
        framer.feed(stream[start:stop])
        while (pdu := framer.next_pdu()) is not None:
            out.append(pdu)
        # bounded buffering: less than one whole PDU stays after draining
        assert framer.buffered < 1 << 20
    return out


@given(
    pdus=st.lists(any_pdu(), min_size=1, max_size=6),
    cuts=st.lists(st.integers(0, 1 << 20), max_size=20),
)
def test_framer_independent_of_splitting(pdus: list[PDU], cuts: list[int]) -> None:
    encoded = [encode_pdu(p) for p in pdus]
    stream = b"".join(encoded)
    expected = [decode_pdu(e) for e in encoded]
    assert _feed_split(stream, cuts, PDUFramer(max_pdata_length=0)) == expected
    assert _feed_split(stream, [], PDUFramer(max_pdata_length=0)) == expected
    byte_by_byte = _feed_split(stream, list(range(len(stream))), PDUFramer(max_pdata_length=0))
    assert byte_by_byte == expected


@given(stream=st.binary(max_size=400), cuts=st.lists(st.integers(0, 1 << 20), max_size=10))
def test_framer_on_arbitrary_bytes(stream: bytes, cuts: list[int]) -> None:
    framer = PDUFramer(max_pdata_length=1024, max_other_length=1024)
    try:
        _feed_split(stream, cuts, framer)
    except ProtocolError as error:
        # dead afterwards, with the same error type
        try:
            framer.next_pdu()
        except ProtocolError as again:
            assert type(again) is type(error)
        else:
            raise AssertionError("framer still alive after an error") from None


@given(
    pdus=st.lists(any_pdu(), min_size=1, max_size=4),
    mutations=st.lists(_mutation, min_size=1, max_size=3),
    cuts=st.lists(st.integers(0, 1 << 20), max_size=8),
)
def test_framer_on_mutated_streams(
    pdus: list[PDU], mutations: list[tuple[str, int, int]], cuts: list[int]
) -> None:
    stream = bytes(_mutate(b"".join(encode_pdu(p) for p in pdus), mutations, False))
    assume(stream)
    framer = PDUFramer(max_pdata_length=4096, max_other_length=65536)
    try:
        for pdu in _feed_split(stream, cuts, framer):
            _check_reencode(pdu)
    except ProtocolError:
        pass
