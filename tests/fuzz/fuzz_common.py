"""Shared pieces of the atheris harnesses in this folder (no atheris needed to import it).

* :class:`Input` -- reads the fuzzer's bytes as choices (a selector byte, cut points) and data;
* ``*_seeds()`` -- valid PDUs and sessions that the seed corpora are built from;
* :func:`mutate` -- a small deterministic mutator, so that tests/fuzz/test_harnesses.py can
  exercise every harness without atheris;
* :func:`split_pdus` -- the acceptor's output must always be whole, decodable PDUs.

The harness property, for every input: only the typed errors of :mod:`asyncdicom.protocol`
(:class:`~asyncdicom.protocol.errors.ProtocolError` and its subclasses, DIMSEError included)
come out of the sans-IO core, where the code documents them; anything else escapes the
harness's ``TestOneInput`` and is a crash.
"""

from __future__ import annotations

import random
import struct
from collections.abc import Callable

from asyncdicom.protocol import dimse, messages, uids
from asyncdicom.protocol.codec import decode_pdu, encode_pdata, encode_pdu
from asyncdicom.protocol.pdu import (
    PDU,
    Abort,
    AssociateAC,
    AssociateRJ,
    AssociateRQ,
    AsynchronousOperationsWindowSubItem,
    ImplementationClassUIDSubItem,
    ImplementationVersionNameSubItem,
    MaximumLengthSubItem,
    PresentationContextACItem,
    PresentationContextRQItem,
    ReleaseRP,
    ReleaseRQ,
    RoleSelectionSubItem,
    SOPClassCommonExtendedNegotiationSubItem,
    SOPClassExtendedNegotiationSubItem,
    UnknownSubItem,
    UserIdentityACSubItem,
    UserIdentityRQSubItem,
    UserInformationItem,
    UserInformationSubItem,
)

CT = uids.CT_IMAGE_STORAGE
IMPLICIT = uids.IMPLICIT_VR_LITTLE_ENDIAN
EXPLICIT = uids.EXPLICIT_VR_LITTLE_ENDIAN
#: a Query/Retrieve SOP class, so that C-FIND/C-GET/C-MOVE and C-CANCEL reach the operations
FIND = "1.2.840.10008.5.1.4.1.2.1.1"


class Input:
    """The fuzzer's bytes read front to back; reads past the end give zeros / empty bytes."""

    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def u8(self) -> int:
        if self.pos >= len(self.data):
            return 0
        value = self.data[self.pos]
        self.pos += 1
        return value

    def u16(self) -> int:
        return (self.u8() << 8) | self.u8()

    def take(self, size: int) -> bytes:
        chunk = self.data[self.pos : self.pos + size]
        self.pos += len(chunk)
        return chunk

    def rest(self) -> bytes:
        chunk = self.data[self.pos :]
        self.pos = len(self.data)
        return chunk


def cut(data: bytes, sizes: list[int]) -> list[bytes]:
    """``data`` in reads of the given sizes (0 counts as 1), the remainder as the last read."""
    parts, pos = [], 0
    for size in sizes:
        if pos >= len(data):
            break
        step = max(1, size)
        parts.append(data[pos : pos + step])
        pos += step
    if pos < len(data):
        parts.append(data[pos:])
    return parts


def read_cuts(inp: Input, count: int) -> list[int]:
    """Up to ``count`` read sizes (1-4096 bytes each) chosen by the fuzzer."""
    return [(inp.u16() % 4096) + 1 for _ in range(inp.u8() % (count + 1))]


def split_pdus(data: bytes) -> list[PDU]:
    """Decode a stream the acceptor wrote: whole, valid PDUs only (else AssertionError)."""
    pdus, pos = [], 0
    while pos < len(data):
        assert len(data) - pos >= 6, f"trailing bytes in the acceptor's output: {data[pos:]!r}"
        (length,) = struct.unpack_from(">I", data, pos + 2)
        assert pos + 6 + length <= len(data), "the acceptor wrote a truncated PDU"
        pdus.append(decode_pdu(data[pos : pos + 6 + length]))
        pos += 6 + length
    return pdus


# --------------------------------------------------------------------------- seeds


def full_user_information(*, rq: bool) -> UserInformationItem:
    """Every kind of user-information sub-item (one each), for the RQ or the AC."""
    items: list[UserInformationSubItem] = [
        MaximumLengthSubItem(16384),
        ImplementationClassUIDSubItem("1.2.3.4.5"),
        AsynchronousOperationsWindowSubItem(4, 2),
        RoleSelectionSubItem(CT, True, True),
        RoleSelectionSubItem(FIND, True, False),
        ImplementationVersionNameSubItem("FUZZ_1"),
        SOPClassExtendedNegotiationSubItem(FIND, b"\x01\x01\x00"),
    ]
    if rq:
        items += [
            SOPClassCommonExtendedNegotiationSubItem(CT, "1.2.840.10008.4.2", (CT,)),
            UserIdentityRQSubItem(2, True, b"user", b"secret"),
        ]
    else:
        items.append(UserIdentityACSubItem(b"token"))
    items.append(UnknownSubItem(0x77, b"\x00\x01"))
    return UserInformationItem(tuple(items))


def associate_rq(
    *, full: bool = True, called: str = "SCP", maximum_length: int = 16384
) -> AssociateRQ:
    contexts = (
        PresentationContextRQItem(1, uids.VERIFICATION, (IMPLICIT,)),
        PresentationContextRQItem(3, CT, (EXPLICIT, IMPLICIT)),
        PresentationContextRQItem(5, FIND, (IMPLICIT,)),
        PresentationContextRQItem(7, "1.2.3.999", (IMPLICIT,)),
    )
    info = (
        full_user_information(rq=True)
        if full
        else UserInformationItem(
            (MaximumLengthSubItem(maximum_length), ImplementationClassUIDSubItem("1.2.3.4.5"))
        )
    )
    return AssociateRQ(called, "FUZZER", contexts if full else contexts[:2], info)


def big_associate_rq() -> AssociateRQ:
    """Boundary seed: a User Information item filled up to its 16-bit item-length limit."""
    base = associate_rq(full=False)
    items = list(base.user_information.sub_items)
    used = sum(len(encode_pdu_sub(item)) for item in items)
    # one role item: header 4 + UID length 2 + UID + 2 role bytes
    uid = "1." + "2" * (0xFFFF - used - 8 - 2)
    items.append(RoleSelectionSubItem(uid, True, False))
    return AssociateRQ(
        base.called_ae_title,
        base.calling_ae_title,
        base.presentation_contexts,
        UserInformationItem(tuple(items)),
    )


def encode_pdu_sub(item: UserInformationSubItem) -> bytes:
    """One sub-item's bytes (via a minimal A-ASSOCIATE-AC around it)."""
    from asyncdicom.protocol.codec import _encode_sub_item

    return _encode_sub_item(item)


def associate_ac() -> AssociateAC:
    return AssociateAC(
        "SCP",
        "FUZZER",
        (
            PresentationContextACItem(1, 0, IMPLICIT),
            PresentationContextACItem(3, 0, EXPLICIT),
            PresentationContextACItem(5, 4, ""),
            PresentationContextACItem(7, 3, IMPLICIT),
        ),
        full_user_information(rq=False),
    )


def command_pdv(context_id: int, message: messages.Message) -> bytes:
    return encode_pdata(context_id, 0x03, dimse.encode_command(message))


def session_seeds() -> list[bytes]:
    """Byte streams after an accepted A-ASSOCIATE-RQ: DIMSE traffic then a release/abort."""
    store = messages.CStoreRQ(
        message_id=2, affected_sop_class_uid=CT, affected_sop_instance_uid="1.2.3.4.5.6"
    )
    find = messages.CFindRQ(message_id=4, affected_sop_class_uid=FIND)
    data = bytes(range(256)) * 2
    echo = command_pdv(1, messages.CEchoRQ(message_id=1))
    stored = (
        command_pdv(3, store)
        + encode_pdata(3, 0x00, data[:100])
        + encode_pdata(3, 0x02, data[100:])
    )
    found = (
        command_pdv(5, find)
        + encode_pdata(5, 0x02, data[:64])
        + command_pdv(5, messages.CCancelRQ(message_id_being_responded_to=4))
    )
    # a command set in two fragments, and a PDU with two PDVs
    command = dimse.encode_command(messages.CEchoRQ(message_id=9))
    two_fragments = encode_pdata(1, 0x01, command[:10]) + encode_pdata(1, 0x03, command[10:])
    two_pdvs = encode_pdata(3, 0x03, dimse.encode_command(store))
    body = two_pdvs[6:] + encode_pdata(3, 0x02, data[:10])[6:]
    two_pdvs = struct.pack(">BBI", 4, 0, len(body)) + body
    release = encode_pdu(ReleaseRQ())
    return [
        echo + release,
        echo + stored + echo + release,
        found + release,
        two_fragments + two_pdvs + encode_pdu(Abort(0, 0)),
        stored + encode_pdu(ReleaseRP()),
        echo,
    ]


def pdu_seeds() -> list[bytes]:
    """One encoded PDU of every type, RQ and AC with every sub-item."""
    return [
        encode_pdu(associate_rq()),
        encode_pdu(associate_rq(full=False)),
        encode_pdu(associate_ac()),
        encode_pdu(AssociateRJ(1, 1, 7)),
        command_pdv(1, messages.CEchoRQ(message_id=1)),
        encode_pdu(ReleaseRQ()),
        encode_pdu(ReleaseRP()),
        encode_pdu(Abort(2, 6)),
    ]


def command_seeds() -> list[bytes]:
    """Encoded command sets of several DIMSE messages."""
    return [
        dimse.encode_command(m)
        for m in (
            messages.CEchoRQ(message_id=1),
            messages.CEchoRSP(message_id_being_responded_to=1, status=0),
            messages.CStoreRQ(
                message_id=2, affected_sop_class_uid=CT, affected_sop_instance_uid="1.2.3"
            ),
            messages.CFindRSP(
                message_id_being_responded_to=3,
                status=0xFF00,
                affected_sop_class_uid=FIND,
                offending_element=(0x00100010,),
                error_comment="x",
            ),
            messages.CMoveRQ(message_id=5, affected_sop_class_uid=FIND, move_destination="DEST"),
            messages.CCancelRQ(message_id_being_responded_to=3),
        )
    ]


# --------------------------------------------------------------------------- mutation


def mutate(data: bytes, rng: random.Random) -> bytes:
    """One to four random edits of ``data`` (bit flips, interesting integers, inserts,
    deletes, truncation, a repeated slice), as a fuzzer would make them."""
    out = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        pos = rng.randint(0, len(out))
        kind = rng.randrange(7)
        if kind == 0 and pos < len(out):
            out[pos] ^= 1 << rng.randrange(8)
        elif kind == 1:
            value = rng.choice((0, 1, 2, 0x7F, 0x80, 0xFF, 0xFFFF, 0xFFFFFFFF, len(out)))
            width = rng.choice((1, 2, 4))
            out[pos : pos + width] = (value & ((1 << 8 * width) - 1)).to_bytes(
                width, rng.choice(("big", "little"))
            )
        elif kind == 2:
            out[pos:pos] = rng.randbytes(rng.randint(1, 8))
        elif kind == 3:
            del out[pos : pos + rng.randint(1, 16)]
        elif kind == 4:
            del out[pos:]
        elif kind == 5 and out:
            start = rng.randrange(len(out))
            out[pos:pos] = out[start : start + rng.randint(1, 64)]
        elif pos < len(out):
            out[pos] = rng.randrange(256)
    return bytes(out)


def exercise(
    one_input: Callable[[bytes], None], seeds: list[bytes], mutations: int, seed: int = 0
) -> int:
    """Run ``one_input`` on every seed and on ``mutations`` mutated seeds; returns the count."""
    rng = random.Random(seed)
    for data in seeds:
        one_input(data)
    for _ in range(mutations):
        one_input(mutate(rng.choice(seeds), rng))
    return len(seeds) + mutations


def pdu_kind(pdu: PDU) -> str:
    return type(pdu).__name__
