"""DIMSE operation bookkeeping (sans-IO): Message IDs, windows, matching, C-CANCEL, routing.

Everything is driven through :class:`DIMSEOperations` exactly as the association does it: our
side calls :meth:`~DIMSEOperations.invoke` / :meth:`~DIMSEOperations.respond` /
:meth:`~DIMSEOperations.cancel`, and what the peer sends is encoded with the real DIMSE framing
(:func:`encode_command`, :func:`fragment_command`, :func:`fragment_dataset`), decoded with
:func:`decode_pdu` and fed to :meth:`~DIMSEOperations.receive`.  No sockets, no event loop.

References: PS3.7 9.1.1.1.1 (Message ID), 9.1.2.1 (Pending), 9.3.2.3 ff. (C-CANCEL),
Annex D.3.3.3 (asynchronous operations window); PS3.8 Annex E (PDVs).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from typing import cast

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from asyncdicom.protocol import messages as m
from asyncdicom.protocol.codec import decode_pdu
from asyncdicom.protocol.dimse import encode_command, fragment_command, fragment_dataset
from asyncdicom.protocol.errors import DIMSEError, LocalProtocolError
from asyncdicom.protocol.operations import (
    CANCELLABLE,
    CancelReceived,
    DIMSEOperations,
    FragmentReceived,
    Invocation,
    OperationEvent,
    RequestReceived,
    ResponseReceived,
    is_pending,
)
from asyncdicom.protocol.pdu import PDataTF, PresentationDataValue

# Presentation contexts: 1 and 3 accepted, 5 proposed but not accepted.
ACCEPTED = (1, 3)
NOT_ACCEPTED = 5

FIND = "1.2.840.10008.5.1.4.1.2.2.1"  # Study Root Query/Retrieve - FIND
MOVE = "1.2.840.10008.5.1.4.1.2.2.2"  # Study Root Query/Retrieve - MOVE
GET = "1.2.840.10008.5.1.4.1.2.2.3"  # Study Root Query/Retrieve - GET
CT = "1.2.840.10008.5.1.4.1.1.2"  # CT Image Storage
PRINTER = "1.2.840.10008.5.1.1.16"  # Printer SOP class (for the N-services)
PRINTER_INSTANCE = "1.2.840.10008.5.1.1.17"

#: A small maximum PDU length, so that command sets and data sets span several PDUs.
SMALL_PDU = 64

PENDING = (0xFF00, 0xFF01)
#: Success, Warning, Cancel, Failure and a status with a pending-looking high byte: all final.
FINAL = (0x0000, 0x0001, 0xB000, 0xFE00, 0xA700, 0xC000, 0x0122, 0xFF02, 0xFFFF)

# A data set: Implicit VR LE (0010,0010) Patient's Name, long enough for several fragments.
DATASET = b"\x10\x00\x10\x00\x08\x00\x00\x00DOE^JOHN" * 20


# --------------------------------------------------------------------------- helpers


def find_rq(message_id: int) -> m.CFindRQ:
    return m.CFindRQ(message_id, FIND)


def get_rq(message_id: int) -> m.CGetRQ:
    return m.CGetRQ(message_id, GET)


def move_rq(message_id: int) -> m.CMoveRQ:
    return m.CMoveRQ(message_id, MOVE, "STORE_SCP")


def store_rq(message_id: int) -> m.CStoreRQ:
    return m.CStoreRQ(message_id, CT, f"1.2.3.4.{message_id}")


def echo_rq(message_id: int) -> m.CEchoRQ:
    return m.CEchoRQ(message_id)


_RESPONSES: dict[type[m.Request], type[m.Response]] = {
    m.CFindRQ: m.CFindRSP,
    m.CGetRQ: m.CGetRSP,
    m.CMoveRQ: m.CMoveRSP,
    m.CStoreRQ: m.CStoreRSP,
    m.CEchoRQ: m.CEchoRSP,
}


def _response_for(
    request: m.Request, message_id: int, status: int, *, has_dataset: bool = False
) -> m.Response:
    """A response of the right class to ``request``."""
    return _RESPONSES[type(request)](message_id, status, has_dataset=has_dataset)  # type: ignore[call-arg]


def _pdata(raw: bytes) -> PDataTF:
    pdu = decode_pdu(raw)
    assert isinstance(pdu, PDataTF)
    return pdu


#: What the helpers accept: a concrete message, or one typed by its base class.
AnyMessage = m.Message | m.Request | m.Response


def message_pdus(
    context_id: int,
    message: AnyMessage,
    dataset: bytes | None = None,
    *,
    max_pdu_length: int = SMALL_PDU,
) -> list[PDataTF]:
    """The decoded P-DATA-TF PDUs the peer sends for ``message`` (and its data set)."""
    message = cast(m.Message, message)
    assert message.has_dataset == (dataset is not None), "has_dataset and dataset disagree"
    raw = fragment_command(context_id, encode_command(message), max_pdu_length)
    if dataset is not None:
        raw += fragment_dataset(context_id, dataset, max_pdu_length)
    return [_pdata(r) for r in raw]


def feed(
    ops: DIMSEOperations,
    context_id: int,
    message: AnyMessage,
    dataset: bytes | None = None,
    *,
    max_pdu_length: int = SMALL_PDU,
) -> list[OperationEvent]:
    """Feed one whole message from the peer to ``ops``; return every event, in order."""
    events: list[OperationEvent] = []
    for pdu in message_pdus(context_id, message, dataset, max_pdu_length=max_pdu_length):
        events.extend(ops.receive(pdu))
    return events


def single(events: Sequence[OperationEvent]) -> OperationEvent:
    """The only event of a message without a data set."""
    assert len(events) == 1, events
    return events[0]


def fragments_of(events: Sequence[OperationEvent]) -> list[FragmentReceived]:
    """The data-set fragments that follow the first event (which must not be a fragment)."""
    assert events and not isinstance(events[0], FragmentReceived)
    fragments = list(events[1:])
    assert all(isinstance(f, FragmentReceived) for f in fragments), fragments
    return fragments  # type: ignore[return-value]


def check_fragments(
    fragments: Sequence[FragmentReceived],
    *,
    context_id: int,
    message_id: int,
    response: bool,
    data: bytes,
) -> None:
    """The fragments carry ``data`` intact, belong to ``message_id``, and only the final one is
    marked last."""
    assert len(fragments) > 1  # SMALL_PDU splits DATASET: routing is checked on every fragment
    assert all(f.context_id == context_id for f in fragments)
    assert all(f.message_id == message_id for f in fragments)
    assert all(f.response is response for f in fragments)
    assert all(isinstance(f.data, memoryview) for f in fragments)
    assert [f.last for f in fragments] == [False] * (len(fragments) - 1) + [True]
    assert b"".join(bytes(f.data) for f in fragments) == data


# --------------------------------------------------------------------------- construction


def test_defaults_are_a_window_of_one() -> None:
    ops = DIMSEOperations(ACCEPTED)
    assert ops.max_invoked == 1
    assert ops.max_performed == 1
    assert ops.invoked == {}
    assert ops.performed == {}
    assert ops.outstanding == 0
    assert ops.can_invoke
    assert ops.idle


@pytest.mark.parametrize(("max_invoked", "max_performed"), [(-1, 1), (1, -1), (-5, -5)])
def test_negative_window_is_rejected(max_invoked: int, max_performed: int) -> None:
    with pytest.raises(ValueError):
        DIMSEOperations(ACCEPTED, max_invoked=max_invoked, max_performed=max_performed)


def test_is_pending() -> None:
    assert is_pending(0xFF00)
    assert is_pending(0xFF01)
    for status in FINAL:
        assert not is_pending(status)


def test_cancellable_is_find_get_move() -> None:
    assert frozenset({m.CFindRQ, m.CGetRQ, m.CMoveRQ}) == CANCELLABLE


# --------------------------------------------------------------------------- Message IDs


def test_message_ids_count_up_from_one() -> None:
    ops = DIMSEOperations(ACCEPTED)
    assert [ops.next_message_id() for _ in range(5)] == [1, 2, 3, 4, 5]


def test_message_ids_wrap_from_65535_to_1() -> None:
    ops = DIMSEOperations(ACCEPTED)
    ids = [ops.next_message_id() for _ in range(65535)]
    assert ids == list(range(1, 65536))
    assert ops.next_message_id() == 1
    assert ops.next_message_id() == 2


def test_message_ids_skip_outstanding_operations() -> None:
    ops = DIMSEOperations(ACCEPTED, max_invoked=0)
    assert [ops.next_message_id() for _ in range(3)] == [1, 2, 3]
    ops.invoke(1, find_rq(1))
    ops.invoke(1, echo_rq(3))
    assert [ops.next_message_id() for _ in range(65532)] == list(range(4, 65536))
    # Wrapped around: 1 and 3 are still outstanding, 2 is free.
    assert ops.next_message_id() == 2
    assert ops.next_message_id() == 4
    # Once 1 has its final response it can be handed out again.
    feed(ops, 1, m.CFindRSP(1, 0x0000))
    assert [ops.next_message_id() for _ in range(65531)][-1] == 65535
    assert ops.next_message_id() == 1
    assert ops.next_message_id() == 2
    assert ops.next_message_id() == 4


def test_message_ids_are_unique_among_outstanding_operations() -> None:
    ops = DIMSEOperations(ACCEPTED, max_invoked=0)
    for _ in range(500):
        mid = ops.next_message_id()
        assert mid not in ops.invoked
        ops.invoke(1, echo_rq(mid))
    assert sorted(ops.invoked) == list(range(1, 501))


def test_all_message_ids_in_use() -> None:
    ops = DIMSEOperations(ACCEPTED, max_invoked=0)
    for _ in range(65535):
        ops.invoke(1, echo_rq(ops.next_message_id()))
    assert ops.outstanding == 65535
    assert ops.can_invoke  # the window is unlimited: only the IDs have run out
    with pytest.raises(LocalProtocolError):
        ops.next_message_id()
    with pytest.raises(LocalProtocolError):
        ops.invoke(1, echo_rq(40000))
    # A final response frees exactly that ID.
    event = single(feed(ops, 1, m.CEchoRSP(40000, 0x0000)))
    assert isinstance(event, ResponseReceived) and event.final
    assert ops.next_message_id() == 40000
    assert ops.next_message_id() == 40000  # not reserved until invoked: still the only free one
    ops.invoke(1, echo_rq(40000))
    with pytest.raises(LocalProtocolError):
        ops.next_message_id()


# --------------------------------------------------------------------------- invoke()


def test_invoke_records_the_operation() -> None:
    ops = DIMSEOperations(ACCEPTED)
    request = find_rq(1)
    invocation = ops.invoke(3, request)
    assert isinstance(invocation, Invocation)
    assert invocation.context_id == 3
    assert invocation.request is request
    assert not invocation.cancel_requested
    assert not invocation.abandoned
    assert invocation.pending_responses == 0
    assert ops.invoked == {1: invocation}
    assert ops.outstanding == 1


def test_window_of_one_allows_one_operation_at_a_time() -> None:
    ops = DIMSEOperations(ACCEPTED)
    ops.invoke(1, echo_rq(1))
    assert not ops.can_invoke
    with pytest.raises(LocalProtocolError, match="window"):
        ops.invoke(1, echo_rq(2))
    assert list(ops.invoked) == [1]
    feed(ops, 1, m.CEchoRSP(1, 0x0000))
    assert ops.can_invoke
    assert ops.outstanding == 0
    ops.invoke(1, echo_rq(2))
    assert list(ops.invoked) == [2]


@pytest.mark.parametrize("window", [1, 2, 3, 7])
def test_window_limits_outstanding_operations(window: int) -> None:
    ops = DIMSEOperations(ACCEPTED, max_invoked=window)
    for mid in range(1, window + 1):
        assert ops.can_invoke
        ops.invoke(ACCEPTED[mid % 2], store_rq(mid))
        assert ops.outstanding == mid
    assert not ops.can_invoke
    with pytest.raises(LocalProtocolError):
        ops.invoke(1, store_rq(window + 1))
    assert ops.outstanding == window
    assert window + 1 not in ops.invoked
    # Ending any one of them frees a slot.
    feed(ops, ACCEPTED[1 % 2], m.CStoreRSP(1, 0x0000))
    assert ops.can_invoke
    ops.invoke(1, store_rq(window + 1))
    assert not ops.can_invoke


def test_window_zero_is_unlimited() -> None:
    ops = DIMSEOperations(ACCEPTED, max_invoked=0)
    for mid in range(1, 1001):
        assert ops.can_invoke
        ops.invoke(1, store_rq(mid))
    assert ops.outstanding == 1000
    assert ops.can_invoke


def test_pending_response_keeps_the_window_slot() -> None:
    ops = DIMSEOperations(ACCEPTED)
    ops.invoke(1, find_rq(1))
    feed(ops, 1, m.CFindRSP(1, 0xFF00, has_dataset=True), DATASET)
    assert not ops.can_invoke
    with pytest.raises(LocalProtocolError):
        ops.invoke(1, echo_rq(2))
    feed(ops, 1, m.CFindRSP(1, 0x0000))
    assert ops.can_invoke


def test_invoke_duplicate_message_id() -> None:
    ops = DIMSEOperations(ACCEPTED, max_invoked=0)
    first = ops.invoke(1, find_rq(7))
    with pytest.raises(LocalProtocolError, match="7"):
        ops.invoke(3, echo_rq(7))
    assert ops.invoked == {7: first}
    # Once it has ended, the ID may be used again.
    feed(ops, 1, m.CFindRSP(7, 0x0000))
    ops.invoke(3, echo_rq(7))
    assert ops.invoked[7].context_id == 3


def test_invoke_duplicate_message_id_is_reported_even_when_the_window_is_full() -> None:
    ops = DIMSEOperations(ACCEPTED)
    ops.invoke(1, find_rq(7))
    with pytest.raises(LocalProtocolError, match="already outstanding"):
        ops.invoke(1, find_rq(7))


@pytest.mark.parametrize("context_id", [NOT_ACCEPTED, 2, 0, 255])
def test_invoke_on_a_context_that_was_not_accepted(context_id: int) -> None:
    ops = DIMSEOperations(ACCEPTED)
    with pytest.raises(LocalProtocolError, match="not accepted"):
        ops.invoke(context_id, echo_rq(1))
    assert ops.invoked == {}
    assert ops.can_invoke


def test_invoke_refuses_c_cancel() -> None:
    ops = DIMSEOperations(ACCEPTED, max_invoked=0)
    ops.invoke(1, find_rq(1))
    with pytest.raises(LocalProtocolError, match="cancel"):
        ops.invoke(1, m.CCancelRQ(1))
    assert list(ops.invoked) == [1]


def test_forget_drops_an_operation() -> None:
    ops = DIMSEOperations(ACCEPTED)
    ops.invoke(1, store_rq(1))
    ops.forget(1)
    assert ops.invoked == {}
    assert ops.can_invoke
    ops.forget(1)  # unknown: nothing happens
    # The peer never saw a complete request, so a response to it is a protocol error.
    with pytest.raises(DIMSEError):
        feed(ops, 1, m.CStoreRSP(1, 0x0000))


# --------------------------------------------------------------------------- responses


def test_responses_are_matched_by_message_id_being_responded_to() -> None:
    ops = DIMSEOperations(ACCEPTED, max_invoked=0)
    requests = {1: find_rq(1), 2: echo_rq(2), 3: store_rq(3)}
    for mid, request in requests.items():
        ops.invoke(1 if mid != 2 else 3, request)
    responses: dict[int, m.Message] = {
        2: m.CEchoRSP(2, 0x0000),
        3: m.CStoreRSP(3, 0xA700),
        1: m.CFindRSP(1, 0x0000),
    }
    for mid, response in responses.items():  # answered out of order
        context_id = ops.invoked[mid].context_id
        event = single(feed(ops, context_id, response))
        assert event == ResponseReceived(context_id, response, final=True, abandoned=False)
        assert isinstance(event, ResponseReceived)
        assert event.message_id == mid
        assert mid not in ops.invoked
    assert ops.invoked == {}


@pytest.mark.parametrize("status", PENDING)
def test_pending_response_keeps_the_operation(status: int) -> None:
    ops = DIMSEOperations(ACCEPTED)
    invocation = ops.invoke(1, find_rq(1))
    for count in range(1, 4):
        event = single(feed(ops, 1, m.CFindRSP(1, status)))
        assert isinstance(event, ResponseReceived)
        assert event.final is False
        assert event.message_id == 1
        assert ops.invoked == {1: invocation}
        assert invocation.pending_responses == count
    event = single(feed(ops, 1, m.CFindRSP(1, 0x0000)))
    assert isinstance(event, ResponseReceived) and event.final
    assert ops.invoked == {}
    assert invocation.pending_responses == 3


@pytest.mark.parametrize("status", FINAL)
def test_any_other_status_ends_the_operation(status: int) -> None:
    ops = DIMSEOperations(ACCEPTED)
    invocation = ops.invoke(1, get_rq(1))
    event = single(feed(ops, 1, m.CGetRSP(1, status)))
    assert isinstance(event, ResponseReceived)
    assert event.final is True
    assert ops.invoked == {}
    assert ops.can_invoke
    assert invocation.pending_responses == 0


def test_response_when_nothing_is_outstanding() -> None:
    ops = DIMSEOperations(ACCEPTED)
    with pytest.raises(DIMSEError, match="not outstanding"):
        feed(ops, 1, m.CEchoRSP(1, 0x0000))


def test_response_to_an_unknown_message_id() -> None:
    ops = DIMSEOperations(ACCEPTED, max_invoked=0)
    ops.invoke(1, echo_rq(1))
    ops.invoke(1, echo_rq(3))
    with pytest.raises(DIMSEError, match="not outstanding"):
        feed(ops, 1, m.CEchoRSP(2, 0x0000))
    assert sorted(ops.invoked) == [1, 3]


def test_second_final_response() -> None:
    ops = DIMSEOperations(ACCEPTED)
    ops.invoke(1, store_rq(1))
    feed(ops, 1, m.CStoreRSP(1, 0x0000))
    with pytest.raises(DIMSEError):
        feed(ops, 1, m.CStoreRSP(1, 0x0000))
    with pytest.raises(DIMSEError):
        DIMSEOperations(ACCEPTED).receive(message_pdus(1, m.CStoreRSP(1, 0xFF00))[0])


def test_pending_response_after_the_final_one() -> None:
    ops = DIMSEOperations(ACCEPTED)
    ops.invoke(1, find_rq(1))
    feed(ops, 1, m.CFindRSP(1, 0xFE00))
    with pytest.raises(DIMSEError):
        feed(ops, 1, m.CFindRSP(1, 0xFF00, has_dataset=True), DATASET)


def test_response_data_set_fragments() -> None:
    ops = DIMSEOperations(ACCEPTED)
    ops.invoke(3, find_rq(42))
    response = m.CFindRSP(42, 0xFF00, has_dataset=True)
    events = feed(ops, 3, response, DATASET)
    assert events[0] == ResponseReceived(3, response, final=False)
    check_fragments(fragments_of(events), context_id=3, message_id=42, response=True, data=DATASET)
    assert ops.idle


def test_final_response_data_set_fragments_after_the_slot_is_freed() -> None:
    """A final response may carry a data set (e.g. C-GET-RSP with Failed SOP Instance UID
    List): its fragments still name the operation, although it is no longer outstanding."""
    ops = DIMSEOperations(ACCEPTED)
    ops.invoke(1, get_rq(9))
    response = m.CGetRSP(9, 0xB000, has_dataset=True)
    events = feed(ops, 1, response, DATASET)
    assert events[0] == ResponseReceived(1, response, final=True)
    assert ops.invoked == {}
    check_fragments(fragments_of(events), context_id=1, message_id=9, response=True, data=DATASET)


# --------------------------------------------------------------------------- performing


def test_request_received() -> None:
    ops = DIMSEOperations(ACCEPTED)
    request = echo_rq(17)
    event = single(feed(ops, 3, request))
    assert event == RequestReceived(3, request)
    assert isinstance(event, RequestReceived)
    assert event.message_id == 17
    assert ops.performed == {17: 3}
    assert ops.invoked == {}  # the peer's operations do not use our window


def test_request_data_set_fragments() -> None:
    ops = DIMSEOperations(ACCEPTED)
    request = store_rq(300)
    events = feed(ops, 1, request, DATASET)
    assert events[0] == RequestReceived(1, request)
    check_fragments(
        fragments_of(events), context_id=1, message_id=300, response=False, data=DATASET
    )
    assert ops.idle


def test_second_request_before_the_first_is_answered_breaks_the_default_window() -> None:
    ops = DIMSEOperations(ACCEPTED)
    feed(ops, 1, store_rq(1), DATASET)
    with pytest.raises(DIMSEError, match="window"):
        feed(ops, 1, store_rq(2), DATASET)
    assert ops.performed == {1: 1}


def test_second_request_after_the_final_response_is_fine() -> None:
    ops = DIMSEOperations(ACCEPTED)
    feed(ops, 1, store_rq(1), DATASET)
    ops.respond(1, m.CStoreRSP(1, 0x0000))
    assert ops.performed == {}
    event = feed(ops, 3, store_rq(2), DATASET)[0]
    assert isinstance(event, RequestReceived) and event.message_id == 2
    assert ops.performed == {2: 3}


def test_pending_respond_keeps_the_peer_operation() -> None:
    ops = DIMSEOperations(ACCEPTED)
    feed(ops, 1, find_rq(5), DATASET)
    ops.respond(5, m.CFindRSP(5, 0xFF00, has_dataset=True))
    ops.respond(5, m.CFindRSP(5, 0xFF01, has_dataset=True))
    assert ops.performed == {5: 1}
    ops.respond(5, m.CFindRSP(5, 0x0000))
    assert ops.performed == {}
    feed(ops, 1, find_rq(6), DATASET)
    assert ops.performed == {6: 1}


@pytest.mark.parametrize("window", [1, 2, 4])
def test_performed_window(window: int) -> None:
    ops = DIMSEOperations(ACCEPTED, max_performed=window)
    for mid in range(1, window + 1):
        feed(ops, 1, echo_rq(mid))
    assert len(ops.performed) == window
    with pytest.raises(DIMSEError):
        feed(ops, 1, echo_rq(window + 1))
    assert window + 1 not in ops.performed
    assert len(ops.performed) == window


def test_pending_respond_keeps_the_window_slot() -> None:
    ops = DIMSEOperations(ACCEPTED)
    feed(ops, 1, find_rq(5), DATASET)
    ops.respond(5, m.CFindRSP(5, 0xFF00, has_dataset=True))
    with pytest.raises(DIMSEError, match="window"):
        feed(ops, 1, find_rq(6), DATASET)  # still performing 5: window of one


def test_performed_window_zero_is_unlimited() -> None:
    ops = DIMSEOperations(ACCEPTED, max_performed=0)
    for mid in range(1, 501):
        feed(ops, ACCEPTED[mid % 2], echo_rq(mid))
    assert len(ops.performed) == 500


def test_duplicate_request_message_id_in_progress() -> None:
    ops = DIMSEOperations(ACCEPTED, max_performed=0)
    feed(ops, 1, find_rq(8), DATASET)
    with pytest.raises(DIMSEError, match="in progress"):
        feed(ops, 3, echo_rq(8))
    assert ops.performed == {8: 1}


def test_request_message_id_may_be_reused_after_the_operation_ended() -> None:
    ops = DIMSEOperations(ACCEPTED, max_performed=0)
    feed(ops, 1, echo_rq(8))
    ops.respond(8, m.CEchoRSP(8, 0x0000))
    feed(ops, 3, echo_rq(8))
    assert ops.performed == {8: 3}


def test_peer_message_ids_are_independent_of_ours() -> None:
    """The same Message ID may be outstanding in both directions at once (each side numbers
    its own requests)."""
    ops = DIMSEOperations(ACCEPTED)
    ops.invoke(1, get_rq(1))
    feed(ops, 3, store_rq(1), DATASET)
    assert list(ops.invoked) == [1]
    assert ops.performed == {1: 3}
    ops.respond(1, m.CStoreRSP(1, 0x0000))
    assert list(ops.invoked) == [1]
    assert ops.performed == {}
    feed(ops, 1, m.CGetRSP(1, 0x0000))
    assert ops.invoked == {}


def test_respond_to_an_unknown_operation() -> None:
    ops = DIMSEOperations(ACCEPTED)
    with pytest.raises(LocalProtocolError):
        ops.respond(1, m.CEchoRSP(1, 0x0000))
    feed(ops, 1, echo_rq(1))
    ops.respond(1, m.CEchoRSP(1, 0x0000))
    with pytest.raises(LocalProtocolError):
        ops.respond(1, m.CEchoRSP(1, 0x0000))  # already answered


def test_respond_with_a_mismatched_message_id() -> None:
    ops = DIMSEOperations(ACCEPTED, max_performed=0)
    feed(ops, 1, echo_rq(1))
    feed(ops, 1, echo_rq(2))
    with pytest.raises(LocalProtocolError):
        ops.respond(1, m.CEchoRSP(2, 0x0000))
    assert ops.performed == {1: 1, 2: 1}


def test_finish_ends_without_a_response() -> None:
    ops = DIMSEOperations(ACCEPTED)
    feed(ops, 1, store_rq(4), DATASET)
    ops.finish(4)
    assert ops.performed == {}
    ops.finish(4)  # unknown: nothing happens
    with pytest.raises(LocalProtocolError):
        ops.respond(4, m.CStoreRSP(4, 0x0000))
    feed(ops, 1, store_rq(5), DATASET)  # the slot is free again
    assert ops.performed == {5: 1}


# --------------------------------------------------------------------------- C-CANCEL


def test_cancel_received_for_an_operation_being_performed() -> None:
    ops = DIMSEOperations(ACCEPTED)
    feed(ops, 3, find_rq(11), DATASET)
    ops.respond(11, m.CFindRSP(11, 0xFF00, has_dataset=True))
    event = single(feed(ops, 3, m.CCancelRQ(11)))
    assert event == CancelReceived(3, 11, known=True)
    # The C-CANCEL does not end the operation: its final response (Cancel) does.
    assert ops.performed == {11: 3}
    ops.respond(11, m.CFindRSP(11, 0xFE00))
    assert ops.performed == {}


def test_cancel_received_after_the_final_response_is_not_an_error() -> None:
    ops = DIMSEOperations(ACCEPTED)
    feed(ops, 1, find_rq(11), DATASET)
    ops.respond(11, m.CFindRSP(11, 0x0000))
    event = single(feed(ops, 1, m.CCancelRQ(11)))
    assert event == CancelReceived(1, 11, known=False)
    assert isinstance(event, CancelReceived) and event.late  # it crossed the final response
    assert ops.performed == {}


def test_cancel_received_for_an_operation_that_never_existed() -> None:
    ops = DIMSEOperations(ACCEPTED)
    ops.invoke(1, find_rq(11))  # ours, not the peer's: C-CANCEL names the peer's operations
    event = single(feed(ops, 1, m.CCancelRQ(11)))
    assert event == CancelReceived(1, 11, known=False)
    assert isinstance(event, CancelReceived) and not event.late
    assert list(ops.invoked) == [11]
    assert not ops.invoked[11].cancel_requested


def test_cancel_received_does_not_use_the_performed_window() -> None:
    ops = DIMSEOperations(ACCEPTED)
    feed(ops, 1, move_rq(1), DATASET)
    for _ in range(3):
        event = single(feed(ops, 1, m.CCancelRQ(1)))
        assert isinstance(event, CancelReceived) and event.known
    assert ops.performed == {1: 1}


@pytest.mark.parametrize("make", [find_rq, get_rq, move_rq])
def test_cancel_our_operation(make: Callable[[int], m.Request]) -> None:
    ops = DIMSEOperations(ACCEPTED)
    invocation = ops.invoke(3, make(21))
    feed(ops, 3, _response_for(invocation.request, 21, 0xFF00))
    cancel = ops.cancel(21)
    assert cancel == m.CCancelRQ(message_id_being_responded_to=21)
    assert cancel.message_id_being_responded_to == 21
    assert invocation.cancel_requested
    # Still outstanding: responses still match, the final one (Cancel) ends it.
    assert ops.invoked == {21: invocation}
    event = single(feed(ops, 3, _response_for(invocation.request, 21, 0xFE00)))
    assert isinstance(event, ResponseReceived) and event.final and not event.abandoned
    assert ops.invoked == {}
    with pytest.raises(LocalProtocolError):
        ops.cancel(21)


@pytest.mark.parametrize(
    "request_",
    [
        store_rq(1),
        echo_rq(1),
        m.NActionRQ(1, PRINTER, PRINTER_INSTANCE, 1),
        m.NGetRQ(1, PRINTER, PRINTER_INSTANCE),
        m.NSetRQ(1, PRINTER, PRINTER_INSTANCE),
        m.NCreateRQ(1, PRINTER),
        m.NDeleteRQ(1, PRINTER, PRINTER_INSTANCE),
        m.NEventReportRQ(1, PRINTER, PRINTER_INSTANCE, 1),
    ],
    ids=lambda r: r.NAME,
)
def test_cancel_refused_for_operations_that_cannot_be_cancelled(request_: m.Request) -> None:
    ops = DIMSEOperations(ACCEPTED)
    invocation = ops.invoke(1, request_)
    with pytest.raises(LocalProtocolError, match="cannot be cancelled"):
        ops.cancel(1)
    assert not invocation.cancel_requested


def test_cancel_refused_for_unknown_operations() -> None:
    ops = DIMSEOperations(ACCEPTED)
    with pytest.raises(LocalProtocolError):
        ops.cancel(1)
    ops.invoke(1, find_rq(1))
    with pytest.raises(LocalProtocolError):
        ops.cancel(2)
    feed(ops, 1, m.CFindRSP(1, 0x0000))
    with pytest.raises(LocalProtocolError):
        ops.cancel(1)  # already ended


def test_c_cancel_on_a_context_that_was_not_accepted() -> None:
    ops = DIMSEOperations(ACCEPTED)
    feed(ops, 1, find_rq(1), DATASET)
    with pytest.raises(DIMSEError, match="not accepted"):
        feed(ops, NOT_ACCEPTED, m.CCancelRQ(1))


# --------------------------------------------------------------------------- abandon()


def test_abandoned_operation_is_matched_until_its_final_response() -> None:
    ops = DIMSEOperations(ACCEPTED)
    invocation = ops.invoke(1, find_rq(3))
    ops.cancel(3)
    ops.abandon(3)
    assert invocation.abandoned
    # The slot is still taken: the peer has not finished the operation.
    assert ops.outstanding == 1
    assert not ops.can_invoke
    with pytest.raises(LocalProtocolError):
        ops.invoke(1, echo_rq(4))
    response = m.CFindRSP(3, 0xFF00, has_dataset=True)
    events = feed(ops, 1, response, DATASET)
    assert events[0] == ResponseReceived(1, response, final=False, abandoned=True)
    check_fragments(fragments_of(events), context_id=1, message_id=3, response=True, data=DATASET)
    assert invocation.pending_responses == 1
    final = m.CFindRSP(3, 0xFE00)
    assert single(feed(ops, 1, final)) == ResponseReceived(1, final, final=True, abandoned=True)
    assert ops.invoked == {}
    assert ops.can_invoke
    with pytest.raises(DIMSEError):
        feed(ops, 1, m.CFindRSP(3, 0x0000))


def test_abandon_does_not_touch_other_operations() -> None:
    ops = DIMSEOperations(ACCEPTED, max_invoked=0)
    ops.invoke(1, store_rq(1))
    ops.invoke(1, store_rq(2))
    ops.abandon(1)
    ops.abandon(99)  # unknown: nothing happens
    event = single(feed(ops, 1, m.CStoreRSP(2, 0x0000)))
    assert isinstance(event, ResponseReceived) and not event.abandoned
    event = single(feed(ops, 1, m.CStoreRSP(1, 0x0000)))
    assert isinstance(event, ResponseReceived) and event.abandoned


# --------------------------------------------------------------------------- contexts


def test_request_on_a_context_that_was_not_accepted() -> None:
    ops = DIMSEOperations(ACCEPTED)
    with pytest.raises(DIMSEError, match="not accepted"):
        feed(ops, NOT_ACCEPTED, echo_rq(1))
    assert ops.performed == {}


def test_response_on_a_context_that_was_not_accepted() -> None:
    ops = DIMSEOperations(ACCEPTED)
    invocation = ops.invoke(1, echo_rq(1))
    with pytest.raises(DIMSEError, match="not accepted"):
        feed(ops, NOT_ACCEPTED, m.CEchoRSP(1, 0x0000))
    assert ops.invoked == {1: invocation}


def test_no_context_accepted() -> None:
    ops = DIMSEOperations([])
    with pytest.raises(LocalProtocolError):
        ops.invoke(1, echo_rq(1))
    with pytest.raises(DIMSEError):
        feed(ops, 1, echo_rq(1))


# --------------------------------------------------------------------------- routing


def test_fragments_follow_the_message_they_belong_to() -> None:
    """Fragments are attributed to the last command set received, message by message."""
    ops = DIMSEOperations(ACCEPTED, max_invoked=0, max_performed=0)
    ops.invoke(1, find_rq(1))
    ops.invoke(3, move_rq(2))

    first = feed(ops, 1, m.CFindRSP(1, 0xFF00, has_dataset=True), DATASET)
    check_fragments(fragments_of(first), context_id=1, message_id=1, response=True, data=DATASET)

    peer_data = DATASET[::-1]
    request = feed(ops, 3, store_rq(77), peer_data)
    check_fragments(
        fragments_of(request), context_id=3, message_id=77, response=False, data=peer_data
    )

    moved = DATASET[:160]
    second = feed(ops, 3, m.CMoveRSP(2, 0xA702, has_dataset=True), moved)
    check_fragments(fragments_of(second), context_id=3, message_id=2, response=True, data=moved)

    # A message without a data set in between, then one with: no stale attribution.
    assert isinstance(single(feed(ops, 1, echo_rq(78))), RequestReceived)
    last = feed(ops, 1, m.CFindRSP(1, 0xFF01, has_dataset=True), DATASET)
    check_fragments(fragments_of(last), context_id=1, message_id=1, response=True, data=DATASET)


def test_empty_data_set_is_one_last_fragment() -> None:
    ops = DIMSEOperations(ACCEPTED)
    ops.invoke(1, find_rq(1))
    events = feed(ops, 1, m.CFindRSP(1, 0xFF00, has_dataset=True), b"")
    assert len(events) == 2
    fragment = events[1]
    assert isinstance(fragment, FragmentReceived)
    assert (fragment.message_id, fragment.response, fragment.last) == (1, True, True)
    assert bytes(fragment.data) == b""
    assert ops.idle


def test_idle() -> None:
    ops = DIMSEOperations(ACCEPTED)
    ops.invoke(1, find_rq(1))
    pdus = message_pdus(1, m.CFindRSP(1, 0xFF00, has_dataset=True), DATASET, max_pdu_length=16)
    command_pdus = [p for p in pdus if p.pdvs[0].is_command]
    assert len(command_pdus) > 1  # the command set spans several PDUs
    assert ops.idle
    seen: list[OperationEvent] = []
    for index, pdu in enumerate(pdus):
        seen.extend(ops.receive(pdu))
        assert ops.idle is (index == len(pdus) - 1)
    # The response was reported once, when its command set was complete.
    assert sum(isinstance(e, ResponseReceived) for e in seen) == 1
    assert isinstance(seen[0], ResponseReceived)
    assert len(seen) == 1 + len(pdus) - len(command_pdus)


def test_whole_message_in_one_pdu() -> None:
    """Several PDVs in one P-DATA-TF PDU (PS3.8 Annex E): command and data set together."""
    ops = DIMSEOperations(ACCEPTED)
    pdvs = [
        pdv for pdu in message_pdus(3, store_rq(6), DATASET, max_pdu_length=128) for pdv in pdu.pdvs
    ]
    events = ops.receive(PDataTF(tuple(pdvs)))
    assert events[0] == RequestReceived(3, store_rq(6))
    check_fragments(fragments_of(events), context_id=3, message_id=6, response=False, data=DATASET)
    assert ops.idle


def test_hand_built_pdv_routing() -> None:
    """The same, from PDVs written by hand (command bit 0x01, last bit 0x02)."""
    ops = DIMSEOperations(ACCEPTED)
    ops.invoke(1, get_rq(12))
    command = encode_command(m.CGetRSP(12, 0xFF00, has_dataset=True))
    pdu = PDataTF(
        (
            PresentationDataValue(1, 0x03, command),
            PresentationDataValue(1, 0x00, b"ab"),
            PresentationDataValue(1, 0x02, b"cd"),
        )
    )
    events = ops.receive(pdu)
    assert isinstance(events[0], ResponseReceived)
    assert [(f.message_id, f.response, bytes(f.data), f.last) for f in fragments_of(events)] == [
        (12, True, b"ab", False),
        (12, True, b"cd", True),
    ]


# --------------------------------------------------------------------------- both directions


def test_c_get_with_c_store_sub_operations_on_a_window_of_one() -> None:
    """C-GET: we invoke the C-GET, the peer invokes C-STORE sub-operations on the same
    association while the C-GET is outstanding (PS3.4 C.4.3).  The window counts each direction
    separately, so 1/1 allows it; a second C-STORE before the first is answered does not."""
    ops = DIMSEOperations(ACCEPTED)  # window 1/1
    get = ops.invoke(1, get_rq(1))
    assert not ops.can_invoke

    for index, store_id in enumerate((1000, 1001)):
        events = feed(ops, 3, store_rq(store_id), DATASET)
        assert events[0] == RequestReceived(3, store_rq(store_id))
        check_fragments(
            fragments_of(events), context_id=3, message_id=store_id, response=False, data=DATASET
        )
        assert ops.performed == {store_id: 3}
        ops.respond(store_id, m.CStoreRSP(store_id, 0x0000))
        assert ops.performed == {}
        pending = m.CGetRSP(1, 0xFF00, number_of_remaining_suboperations=1 - index)
        assert single(feed(ops, 1, pending)) == ResponseReceived(1, pending, final=False)
        assert ops.invoked == {1: get}

    assert get.pending_responses == 2
    final = m.CGetRSP(1, 0x0000, number_of_completed_suboperations=2)
    assert single(feed(ops, 1, final)) == ResponseReceived(1, final, final=True)
    assert ops.invoked == {}
    assert ops.performed == {}
    assert ops.can_invoke


def test_c_get_second_c_store_before_the_first_is_answered() -> None:
    ops = DIMSEOperations(ACCEPTED)
    ops.invoke(1, get_rq(1))
    feed(ops, 3, store_rq(1000), DATASET)
    with pytest.raises(DIMSEError, match="window"):
        feed(ops, 3, store_rq(1001), DATASET)


def test_interleaved_operations_in_both_directions() -> None:
    ops = DIMSEOperations(ACCEPTED, max_invoked=2, max_performed=2)
    ops.invoke(1, find_rq(1))
    feed(ops, 3, echo_rq(50))
    ops.invoke(3, store_rq(2))
    feed(ops, 1, find_rq(51), DATASET)
    assert not ops.can_invoke
    with pytest.raises(LocalProtocolError):
        ops.invoke(1, echo_rq(3))
    assert sorted(ops.invoked) == [1, 2]
    assert ops.performed == {50: 3, 51: 1}

    feed(ops, 3, m.CStoreRSP(2, 0x0000))
    ops.respond(51, m.CFindRSP(51, 0xFF00, has_dataset=True))
    feed(ops, 1, m.CFindRSP(1, 0xFF00, has_dataset=True), DATASET)
    ops.respond(50, m.CEchoRSP(50, 0x0000))
    assert sorted(ops.invoked) == [1]
    assert ops.performed == {51: 1}
    assert ops.can_invoke

    feed(ops, 1, m.CCancelRQ(51))
    ops.respond(51, m.CFindRSP(51, 0xFE00))
    feed(ops, 1, m.CFindRSP(1, 0x0000))
    assert ops.invoked == {}
    assert ops.performed == {}


# --------------------------------------------------------------------------- property

_OUR_REQUESTS = (find_rq, get_rq, move_rq, store_rq, echo_rq)
_PEER_REQUESTS = (find_rq, store_rq, echo_rq)
_MULTI_RESPONSE = (m.CFindRQ, m.CGetRQ, m.CMoveRQ)


@settings(max_examples=200)
@given(
    max_invoked=st.integers(0, 3),
    max_performed=st.integers(0, 3),
    steps=st.integers(0, 40),
    data=st.data(),
)
def test_random_operation_sequences(
    max_invoked: int, max_performed: int, steps: int, data: st.DataObject
) -> None:
    """Random legal interleavings of both directions, checked against a simple model."""
    ops = DIMSEOperations(ACCEPTED, max_invoked=max_invoked, max_performed=max_performed)
    ours: dict[int, tuple[int, m.Request, int]] = {}  # mid -> (context, request, pending count)
    theirs: dict[int, tuple[int, m.Request]] = {}
    ended: set[int] = set()  # our operations that got their final response
    peer_ids = itertools.count(1)

    for _ in range(steps):
        can_invoke = max_invoked == 0 or len(ours) < max_invoked
        peer_may_invoke = max_performed == 0 or len(theirs) < max_performed
        assert ops.can_invoke is can_invoke
        actions = ["cancel"]
        if can_invoke:
            actions.append("invoke")
        if ours:
            actions.append("response")
        if peer_may_invoke:
            actions.append("request")
        if theirs:
            actions.append("respond")
        action = data.draw(st.sampled_from(actions), label="action")

        if action == "invoke":
            mid = ops.next_message_id()
            assert mid not in ours
            context_id = data.draw(st.sampled_from(ACCEPTED), label="context")
            request = data.draw(st.sampled_from(_OUR_REQUESTS), label="kind")(mid)
            invocation = ops.invoke(context_id, request)
            assert invocation.request is request
            ours[mid] = (context_id, request, 0)
            ended.discard(mid)

        elif action == "response":
            mid = data.draw(st.sampled_from(sorted(ours)), label="responded")
            context_id, request, pending_count = ours[mid]
            pending = isinstance(request, _MULTI_RESPONSE) and data.draw(st.booleans())
            status = (
                data.draw(st.sampled_from(PENDING))
                if pending
                else data.draw(st.sampled_from(FINAL))
            )
            payload = data.draw(st.none() | st.binary(max_size=150).map(lambda b: b + b))
            response = _response_for(request, mid, status, has_dataset=payload is not None)
            events = feed(ops, context_id, response, payload)
            assert events[0] == ResponseReceived(
                context_id, cast(m.Message, response), final=not pending
            )
            for fragment in events[1:]:
                assert isinstance(fragment, FragmentReceived)
                assert (fragment.message_id, fragment.response) == (mid, True)
            if payload is not None:
                assert b"".join(bytes(f.data) for f in events[1:]) == payload  # type: ignore[union-attr]
            if pending:
                ours[mid] = (context_id, request, pending_count + 1)
                assert ops.invoked[mid].pending_responses == pending_count + 1
            else:
                del ours[mid]
                ended.add(mid)

        elif action == "request":
            mid = next(peer_ids)
            context_id = data.draw(st.sampled_from(ACCEPTED), label="context")
            peer_request = cast(
                m.Message, data.draw(st.sampled_from(_PEER_REQUESTS), label="kind")(mid)
            )
            size = 2 * data.draw(st.integers(0, 60))
            payload = DATASET[:size] if peer_request.has_dataset else None
            events = feed(ops, context_id, peer_request, payload)
            assert events[0] == RequestReceived(context_id, peer_request)
            for fragment in events[1:]:
                assert isinstance(fragment, FragmentReceived)
                assert (fragment.message_id, fragment.response) == (mid, False)
            theirs[mid] = (context_id, cast(m.Request, peer_request))

        elif action == "respond":
            mid = data.draw(st.sampled_from(sorted(theirs)), label="answered")
            _context_id, request = theirs[mid]
            pending = isinstance(request, _MULTI_RESPONSE) and data.draw(st.booleans())
            status = PENDING[0] if pending else data.draw(st.sampled_from(FINAL))
            ops.respond(mid, _response_for(request, mid, status))
            if not pending:
                del theirs[mid]

        else:  # the peer cancels one of its operations, running or not
            mid = data.draw(st.integers(1, 50), label="cancelled")
            context_id = data.draw(st.sampled_from(ACCEPTED), label="context")
            event = single(feed(ops, context_id, m.CCancelRQ(mid)))
            # known: an operation being performed, that has a cancel, on the same context
            known = (
                mid in theirs
                and theirs[mid][0] == context_id
                and isinstance(theirs[mid][1], _MULTI_RESPONSE)
            )
            assert event == CancelReceived(context_id, mid, known=known)

        # Invariants after every step.
        assert ops.idle
        if max_invoked:
            assert ops.outstanding <= max_invoked
        if max_performed:
            assert len(ops.performed) <= max_performed
        assert ops.outstanding == len(ours)
        assert set(ops.invoked) == set(ours)
        assert ops.performed == {mid: ctx for mid, (ctx, _request) in theirs.items()}
        assert not ended & ops.invoked.keys()

    # Beyond the window, in each direction.
    if max_invoked and len(ours) == max_invoked:
        with pytest.raises(LocalProtocolError):
            ops.invoke(1, echo_rq(ops.next_message_id()))
    if max_performed and len(theirs) == max_performed:
        with pytest.raises(DIMSEError):
            feed(ops, 1, echo_rq(next(peer_ids)))


# --------------------------------------------------------------------------- what a response is


def test_a_response_of_the_wrong_type_is_a_protocol_error() -> None:
    ops = DIMSEOperations(ACCEPTED)
    ops.invoke(1, find_rq(1))
    with pytest.raises(DIMSEError, match="C-ECHO-RSP in answer to C-FIND-RQ"):
        feed(ops, 1, m.CEchoRSP(1, 0x0000))


def test_a_response_on_another_context_is_a_protocol_error() -> None:
    ops = DIMSEOperations(ACCEPTED)
    ops.invoke(1, echo_rq(1))
    with pytest.raises(DIMSEError, match="presentation context 3"):
        feed(ops, 3, m.CEchoRSP(1, 0x0000))


def test_a_response_on_another_context_of_the_same_abstract_syntax_is_accepted() -> None:
    """Issue 18 item 6: peers (odil, PixelMed) answer on any context of the SOP class."""
    ops = DIMSEOperations({1: CT, 3: CT, 5: FIND})
    ops.invoke(1, m.CStoreRQ(1, CT, "1.2.3"))
    events = feed(ops, 3, m.CStoreRSP(1, 0x0000, affected_sop_class_uid=CT))
    assert [type(e) for e in events] == [ResponseReceived]
    event = events[0]
    assert isinstance(event, ResponseReceived)
    assert event.context_id == 3 and event.request_context_id == 1 and event.final
    assert ops.invoked == {}


def test_a_response_on_another_context_of_another_abstract_syntax_is_a_protocol_error() -> None:
    ops = DIMSEOperations({1: CT, 3: CT, 5: FIND})
    ops.invoke(1, m.CStoreRQ(1, CT, "1.2.3"))
    with pytest.raises(DIMSEError, match="presentation context 5, its request went on 1"):
        feed(ops, 5, m.CStoreRSP(1, 0x0000, affected_sop_class_uid=CT))


def test_a_second_final_response_names_the_operation_that_ended() -> None:
    ops = DIMSEOperations(ACCEPTED)
    ops.invoke(1, echo_rq(1))
    feed(ops, 1, m.CEchoRSP(1, 0x0000))
    with pytest.raises(DIMSEError, match="final response already came"):
        feed(ops, 1, m.CEchoRSP(1, 0x0000))


@pytest.mark.parametrize("status", PENDING)
def test_pending_is_only_for_find_get_and_move(status: int) -> None:
    ops = DIMSEOperations(ACCEPTED)
    ops.invoke(1, store_rq(1))
    with pytest.raises(DIMSEError, match="Pending"):
        feed(ops, 1, m.CStoreRSP(1, status))
    performing = DIMSEOperations(ACCEPTED)
    feed(performing, 1, echo_rq(7))
    with pytest.raises(LocalProtocolError, match="no Pending"):
        performing.respond(7, m.CEchoRSP(7, status))
    assert performing.performed == {7: 1}  # nothing changed


def test_respond_refuses_a_response_of_the_wrong_type() -> None:
    ops = DIMSEOperations(ACCEPTED)
    feed(ops, 1, echo_rq(5))
    with pytest.raises(LocalProtocolError, match="does not answer"):
        ops.respond(5, m.CFindRSP(5, 0x0000))
    ops.respond(5, m.CEchoRSP(5, 0x0000))
    assert ops.performed == {}


def test_c_cancel_announcing_a_data_set_is_a_protocol_error() -> None:
    ops = DIMSEOperations(ACCEPTED)
    feed(ops, 1, find_rq(2), DATASET)
    with pytest.raises(DIMSEError, match="C-CANCEL-RQ"):
        feed(ops, 1, m.CCancelRQ(2, has_dataset=True), DATASET)


def test_c_cancel_is_known_only_for_a_cancellable_operation_on_its_context() -> None:
    ops = DIMSEOperations(ACCEPTED, max_performed=0)
    feed(ops, 1, find_rq(2), DATASET)
    feed(ops, 1, echo_rq(3))
    assert single(feed(ops, 1, m.CCancelRQ(2))) == CancelReceived(1, 2, known=True)
    assert single(feed(ops, 3, m.CCancelRQ(2))) == CancelReceived(3, 2, known=False)
    assert single(feed(ops, 1, m.CCancelRQ(3))) == CancelReceived(1, 3, known=False)
