"""PS3.8 Table 9-10, checked cell by cell.

``GRID`` below is this test's own transcription of Table 9-10 (PS3.8 section 9.2.3): one row per
event, one column per state, each cell ``<action>><next state>`` or ``.`` for an empty cell; the
two actions whose next state depends on a condition are written ``AE6>?`` (Sta3 when the
A-ASSOCIATE-RQ is acceptable, Sta13 otherwise) and ``AR8>?`` (Sta9 on the requestor side of a
release collision, Sta10 on the acceptor side).

Two checks:

* the table data in :mod:`asyncdicom.protocol.fsm` equals the grid (123 defined cells present
  with the right action and next state, 124 empty cells absent);
* for every one of the 247 cells, a real :class:`UpperLayer` is driven into the state by
  scripted inputs and the event is applied; the next state, the bytes sent (decoded), the
  indications, ARTIM and the transition reported to ``on_transition`` are compared with what the
  grid and the action definitions (PS3.8 Tables 9-6 to 9-9) say.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from asyncdicom.protocol.codec import decode_pdu, encode_pdu
from asyncdicom.protocol.errors import (
    LocalProtocolError,
    ProtocolError,
    UnexpectedPDU,
    UnrecognizedPDU,
)
from asyncdicom.protocol.events import (
    NEED_DATA,
    AssociationAborted,
    AssociationAccepted,
    AssociationRejected,
    AssociationRequested,
    ConnectionClosed,
    DataReceived,
    ReleaseConfirmed,
    ReleaseRequested,
    UpperLayerEvent,
)
from asyncdicom.protocol.fsm import (
    CONDITIONAL_NEXT_STATE,
    NEXT_STATE,
    TRANSITIONS,
    Action,
    Event,
    State,
)
from asyncdicom.protocol.pdu import (
    PDU,
    Abort,
    AssociateAC,
    AssociateRJ,
    AssociateRQ,
    ImplementationClassUIDSubItem,
    MaximumLengthSubItem,
    PDataTF,
    PresentationContextACItem,
    PresentationContextRQItem,
    PresentationDataValue,
    ReleaseRP,
    ReleaseRQ,
    UserInformationItem,
)
from asyncdicom.protocol.upper_layer import Role, UpperLayer

# Events are rows, states are columns, as in the standard.
GRID = """
     S1     S2     S3     S4     S5     S6     S7     S8     S9     S10    S11    S12    S13
E1   AE1>4  .      .      .      .      .      .      .      .      .      .      .      .
E2   .      .      .      AE2>5  .      .      .      .      .      .      .      .      .
E3   .      AA1>13 AA8>13 .      AE3>6  AA8>13 AA8>13 AA8>13 AA8>13 AA8>13 AA8>13 AA8>13 AA6>13
E4   .      AA1>13 AA8>13 .      AE4>1  AA8>13 AA8>13 AA8>13 AA8>13 AA8>13 AA8>13 AA8>13 AA6>13
E5   AE5>2  .      .      .      .      .      .      .      .      .      .      .      .
E6   .      AE6>?  AA8>13 .      AA8>13 AA8>13 AA8>13 AA8>13 AA8>13 AA8>13 AA8>13 AA8>13 AA7>13
E7   .      .      AE7>6  .      .      .      .      .      .      .      .      .      .
E8   .      .      AE8>13 .      .      .      .      .      .      .      .      .      .
E9   .      .      .      .      .      DT1>6  .      AR7>8  .      .      .      .      .
E10  .      AA1>13 AA8>13 .      AA8>13 DT2>6  AR6>7  AA8>13 AA8>13 AA8>13 AA8>13 AA8>13 AA6>13
E11  .      .      .      .      .      AR1>7  .      .      .      .      .      .      .
E12  .      AA1>13 AA8>13 .      AA8>13 AR2>8  AR8>?  AA8>13 AA8>13 AA8>13 AA8>13 AA8>13 AA6>13
E13  .      AA1>13 AA8>13 .      AA8>13 AA8>13 AR3>1  AA8>13 AA8>13 AR10>12 AR3>1 AA8>13 AA6>13
E14  .      .      .      .      .      .      .      AR4>13 AR9>11 .      .      AR4>13 .
E15  .      .      AA1>13 AA2>1  AA1>13 AA1>13 AA1>13 AA1>13 AA1>13 AA1>13 AA1>13 AA1>13 .
E16  .      AA2>1  AA3>1  .      AA3>1  AA3>1  AA3>1  AA3>1  AA3>1  AA3>1  AA3>1  AA3>1  AA2>1
E17  .      AA5>1  AA4>1  AA4>1  AA4>1  AA4>1  AA4>1  AA4>1  AA4>1  AA4>1  AA4>1  AA4>1  AR5>1
E18  .      AA2>1  .      .      .      .      .      .      .      .      .      .      AA2>1
E19  .      AA1>13 AA8>13 .      AA8>13 AA8>13 AA8>13 AA8>13 AA8>13 AA8>13 AA8>13 AA8>13 AA7>13
"""


def _parse_grid() -> dict[tuple[int, int], tuple[str, int | None] | None]:
    lines = [line.split() for line in GRID.strip().splitlines()]
    header, rows = lines[0], lines[1:]
    states = [int(name[1:]) for name in header]
    assert states == list(range(1, 14))
    assert [int(row[0][1:]) for row in rows] == list(range(1, 20))
    cells: dict[tuple[int, int], tuple[str, int | None] | None] = {}
    for row in rows:
        event = int(row[0][1:])
        assert len(row) == 14, row
        for state, token in zip(states, row[1:], strict=True):
            if token == ".":
                cells[(state, event)] = None
                continue
            label, target = token.split(">")
            action = f"{label[:2]}-{label[2:]}"
            cells[(state, event)] = (action, None if target == "?" else int(target))
    return cells


CELLS = _parse_grid()


def test_grid_shape() -> None:
    assert len(CELLS) == 13 * 19 == 247
    defined = [cell for cell in CELLS.values() if cell is not None]
    assert len(defined) == 123
    assert len(CELLS) - len(defined) == 124
    assert len({action for action, _ in defined}) == 28


def test_transitions_equal_grid() -> None:
    expected = {
        (State(s), Event(e)): Action(cell[0]) for (s, e), cell in CELLS.items() if cell is not None
    }
    assert expected == TRANSITIONS
    assert len(TRANSITIONS) == 123
    for (s, e), cell in CELLS.items():
        if cell is None:
            assert (State(s), Event(e)) not in TRANSITIONS


def test_next_states_equal_grid() -> None:
    for cell in CELLS.values():
        if cell is None:
            continue
        action, target = cell
        if target is None:
            assert Action(action) in CONDITIONAL_NEXT_STATE
            assert Action(action) not in NEXT_STATE
        else:
            assert NEXT_STATE[Action(action)] == State(target)
    assert CONDITIONAL_NEXT_STATE[Action.AE_6] == (State(3), State(13))
    assert CONDITIONAL_NEXT_STATE[Action.AR_8] == (State(9), State(10))
    assert set(NEXT_STATE) | set(CONDITIONAL_NEXT_STATE) == set(Action)


def test_enum_numbers() -> None:
    assert [int(s) for s in State] == list(range(1, 14))
    assert [int(e) for e in Event] == list(range(1, 20))
    labels = (
        [f"AE-{i}" for i in range(1, 9)]
        + ["DT-1", "DT-2"]
        + [f"AR-{i}" for i in range(1, 11)]
        + [f"AA-{i}" for i in range(1, 9)]
    )
    assert sorted(a.value for a in Action) == sorted(labels)
    assert all(a.name == a.value.replace("-", "_") for a in Action)


# --------------------------------------------------------------------------- driving a machine

T0 = 0.0  # time of the scripted inputs that reach the state under test
T1 = 100.0  # time of the event under test (past any ARTIM started at T0)
ARTIM = 30.0

VERIFICATION = "1.2.840.10008.1.1"
IMPLICIT_LE = "1.2.840.10008.1.2"
RQ = AssociateRQ(
    called_ae_title="ACCEPTOR",
    calling_ae_title="REQUESTOR",
    presentation_contexts=(PresentationContextRQItem(1, VERIFICATION, (IMPLICIT_LE,)),),
    user_information=UserInformationItem(
        (MaximumLengthSubItem(16384), ImplementationClassUIDSubItem("1.2.3.4"))
    ),
)
AC = AssociateAC(
    called_ae_title="ACCEPTOR",
    calling_ae_title="REQUESTOR",
    presentation_contexts=(PresentationContextACItem(1, 0, IMPLICIT_LE),),
    user_information=UserInformationItem(
        (MaximumLengthSubItem(32768), ImplementationClassUIDSubItem("1.2.3.5"))
    ),
)
RJ = AssociateRJ(1, 1, 7)
PDATA = PDataTF((PresentationDataValue(1, 0x03, b"\x01\x02\x03\x04"),))
PEER_ABORT = Abort(2, 1)
#: A PDU header with type 0x09: not a PDU type (PS3.8 9.3.1), so Evt19 from the header alone.
GARBAGE = b"\x09\x00\x00\x00\x00\x04\x00\x00\x00\x00"

REQUESTOR_STATES = {1, 4, 5, 6, 7, 8, 9, 11, 13}
ACCEPTOR_STATES = {1, 2, 3, 6, 7, 8, 10, 12, 13}


def split_pdus(data: bytes) -> list[PDU]:
    """Decode a byte string holding whole PDUs, one after the other."""
    pdus: list[PDU] = []
    pos = 0
    while pos < len(data):
        length = int.from_bytes(data[pos + 2 : pos + 6], "big")
        pdus.append(decode_pdu(data[pos : pos + 6 + length]))
        pos += 6 + length
    return pdus


def drain(ul: UpperLayer) -> list[UpperLayerEvent]:
    out: list[UpperLayerEvent] = []
    while (event := ul.next_event()) is not NEED_DATA:
        assert not isinstance(event, type(NEED_DATA))
        out.append(event)
    return out


# Scripted routes.  Each step is applied at T0; the route ends in the named state.
Step = Callable[[UpperLayer], None]


def _send(pdu: PDU) -> Step:
    return lambda ul: ul.send(pdu, now=T0)


def _recv(pdu: PDU) -> Step:
    return lambda ul: ul.receive_data(encode_pdu(pdu), now=T0)


def _connect(ul: UpperLayer) -> None:
    ul.connection_made(now=T0)


_REQUESTOR_TO_6: list[Step] = [_send(RQ), _connect, _recv(AC)]
_ACCEPTOR_TO_6: list[Step] = [_connect, _recv(RQ), _send(AC)]

ROUTES: dict[tuple[int, Role], list[Step]] = {
    (1, Role.REQUESTOR): [],
    (4, Role.REQUESTOR): [_send(RQ)],
    (5, Role.REQUESTOR): [_send(RQ), _connect],
    (6, Role.REQUESTOR): _REQUESTOR_TO_6,
    (7, Role.REQUESTOR): [*_REQUESTOR_TO_6, _send(ReleaseRQ())],
    (8, Role.REQUESTOR): [*_REQUESTOR_TO_6, _recv(ReleaseRQ())],
    (9, Role.REQUESTOR): [*_REQUESTOR_TO_6, _send(ReleaseRQ()), _recv(ReleaseRQ())],
    (11, Role.REQUESTOR): [
        *_REQUESTOR_TO_6,
        _send(ReleaseRQ()),
        _recv(ReleaseRQ()),
        _send(ReleaseRP()),
    ],
    (13, Role.REQUESTOR): [*_REQUESTOR_TO_6, _recv(ReleaseRQ()), _send(ReleaseRP())],
    (1, Role.ACCEPTOR): [],
    (2, Role.ACCEPTOR): [_connect],
    (3, Role.ACCEPTOR): [_connect, _recv(RQ)],
    (6, Role.ACCEPTOR): _ACCEPTOR_TO_6,
    (7, Role.ACCEPTOR): [*_ACCEPTOR_TO_6, _send(ReleaseRQ())],
    (8, Role.ACCEPTOR): [*_ACCEPTOR_TO_6, _recv(ReleaseRQ())],
    (10, Role.ACCEPTOR): [*_ACCEPTOR_TO_6, _send(ReleaseRQ()), _recv(ReleaseRQ())],
    (12, Role.ACCEPTOR): [
        *_ACCEPTOR_TO_6,
        _send(ReleaseRQ()),
        _recv(ReleaseRQ()),
        _recv(ReleaseRP()),
    ],
    (13, Role.ACCEPTOR): [*_ACCEPTOR_TO_6, _recv(ReleaseRQ()), _send(ReleaseRP())],
}


def reach(state: int, role: Role) -> UpperLayer:
    ul = UpperLayer(role, artim_timeout=ARTIM)
    for step in ROUTES[(state, role)]:
        step(ul)
    assert ul.state == State(state)
    drain(ul)
    ul.data_to_send()
    return ul


def test_routes_cover_every_state_per_role() -> None:
    assert {s for s, r in ROUTES if r is Role.REQUESTOR} == REQUESTOR_STATES
    assert {s for s, r in ROUTES if r is Role.ACCEPTOR} == ACCEPTOR_STATES
    assert set(range(1, 14)) == REQUESTOR_STATES | ACCEPTOR_STATES
    for (state, role), _ in ROUTES.items():
        ul = reach(state, role)
        # ARTIM runs exactly in Sta2 and Sta13 (PS3.8 9.1.5 / Table 9-10 Evt18 row).
        assert (ul.timer_deadline() is not None) == (state in (2, 13))


def apply_event(ul: UpperLayer, event: int, role: Role, *, via_send_pdata: bool = False) -> None:
    """Produce ``event`` through the public inputs of the machine."""
    e = Event(event)
    if e is Event.ASSOCIATE_REQUEST:
        ul.send(RQ, now=T1)
    elif e is Event.TRANSPORT_CONNECT_CONFIRM or e is Event.TRANSPORT_CONNECT_INDICATION:
        if (e is Event.TRANSPORT_CONNECT_CONFIRM) == (role is Role.REQUESTOR):
            ul.connection_made(now=T1)
        else:
            # A requestor never gets a T-CONNECT indication (and an acceptor never a
            # confirmation): connection_made() means the other event for this role, so the
            # cell is reached through the internal event entry point.
            ul._fire(e, T1)
    elif e is Event.ASSOCIATE_AC_RECEIVED:
        ul.receive_data(encode_pdu(AC), now=T1)
    elif e is Event.ASSOCIATE_RJ_RECEIVED:
        ul.receive_data(encode_pdu(RJ), now=T1)
    elif e is Event.ASSOCIATE_RQ_RECEIVED:
        ul.receive_data(encode_pdu(RQ), now=T1)
    elif e is Event.ASSOCIATE_ACCEPT_RESPONSE:
        ul.send(AC, now=T1)
    elif e is Event.ASSOCIATE_REJECT_RESPONSE:
        ul.send(RJ, now=T1)
    elif e is Event.P_DATA_REQUEST:
        if via_send_pdata:
            pdv = PDATA.pdvs[0]
            ul.send_pdata(pdv.context_id, pdv.message_control_header, pdv.data, now=T1)
        else:
            ul.send(PDATA, now=T1)
    elif e is Event.P_DATA_RECEIVED:
        ul.receive_data(encode_pdu(PDATA), now=T1)
    elif e is Event.RELEASE_REQUEST:
        ul.send(ReleaseRQ(), now=T1)
    elif e is Event.RELEASE_RQ_RECEIVED:
        ul.receive_data(encode_pdu(ReleaseRQ()), now=T1)
    elif e is Event.RELEASE_RP_RECEIVED:
        ul.receive_data(encode_pdu(ReleaseRP()), now=T1)
    elif e is Event.RELEASE_RESPONSE:
        ul.send(ReleaseRP(), now=T1)
    elif e is Event.ABORT_REQUEST:
        ul.send(Abort(), now=T1)
    elif e is Event.ABORT_RECEIVED:
        ul.receive_data(encode_pdu(PEER_ABORT), now=T1)
    elif e is Event.TRANSPORT_CLOSED:
        ul.receive_data(None, now=T1)
    elif e is Event.ARTIM_EXPIRED:
        ul.handle_timer(now=T1)
    else:
        assert e is Event.INVALID_PDU_RECEIVED
        ul.receive_data(GARBAGE, now=T1)


@dataclass
class Expected:
    state: int
    sent: list[PDU] = field(default_factory=list)
    events: list[UpperLayerEvent] = field(default_factory=list)
    #: "start": (re)started at T1; "keep": unchanged; None: not running
    artim: str | None = None
    error: type[ProtocolError] | None = None  # error carried by an AA-8 indication
    peer_max: int | None = None


def _cause(event: int) -> tuple[type[ProtocolError], int]:
    """The error an unexpected input raises and its A-ABORT reason (PS3.8 Table 9-26)."""
    if event == Event.INVALID_PDU_RECEIVED:
        return UnrecognizedPDU, 1  # unrecognized-PDU
    return UnexpectedPDU, 2  # unexpected-PDU


def expected_outcome(action: str, target: int | None, event: int, role: Role) -> Expected:
    """What the action definitions of PS3.8 Tables 9-6 to 9-9 say happens."""
    closed = ConnectionClosed()
    if target is None:  # the conditional actions
        target = {"AE-6": 3, "AR-8": 9 if role is Role.REQUESTOR else 10}[action]
    exp = Expected(state=target)
    if action == "AE-1":
        pass  # transport connect request: no bytes yet
    elif action == "AE-2":
        exp.sent = [RQ]
    elif action == "AE-3":
        exp.events = [AssociationAccepted(AC)]
        exp.peer_max = 32768
    elif action == "AE-4":
        exp.events = [AssociationRejected(RJ), closed]
    elif action == "AE-5":
        exp.artim = "start"
    elif action == "AE-6":
        exp.events = [AssociationRequested(RQ)]
        exp.peer_max = 16384
    elif action == "AE-7":
        exp.sent = [AC]
    elif action == "AE-8":
        exp.sent, exp.artim = [RJ], "start"
    elif action in ("DT-1", "AR-7"):
        exp.sent = [PDATA]
    elif action in ("DT-2", "AR-6"):
        exp.events = [DataReceived(PDATA)]
    elif action == "AR-1":
        exp.sent = [ReleaseRQ()]
    elif action == "AR-2":
        exp.events = [ReleaseRequested(collision=False)]
    elif action == "AR-3":
        exp.events = [ReleaseConfirmed(), closed]
    elif action == "AR-4":
        exp.sent, exp.artim = [ReleaseRP()], "start"
    elif action == "AR-5":
        exp.events = [closed]
    elif action == "AR-8":
        exp.events = [ReleaseRequested(collision=True)]
    elif action == "AR-9":
        exp.sent = [ReleaseRP()]
    elif action == "AR-10":
        exp.events = [ReleaseConfirmed()]
    elif action == "AA-1":
        exp.sent, exp.artim = [Abort(0, 0)], "start"
    elif action in ("AA-2", "AA-5"):
        exp.events = [closed]
    elif action == "AA-3":
        exp.events = [
            AssociationAborted(PEER_ABORT.source, PEER_ABORT.reason, local=False),
            closed,
        ]
    elif action == "AA-4":
        exp.events = [AssociationAborted(2, 0, local=True), closed]
    elif action == "AA-6":
        exp.artim = "keep"
    elif action == "AA-7":
        # Sta13 is reached through AR-4 here, so no A-ABORT has been sent yet.
        exp.sent, exp.artim = [Abort(2, _cause(event)[1])], "keep"
    elif action == "AA-8":
        error, reason = _cause(event)
        exp.sent, exp.artim, exp.error = [Abort(2, reason)], "start", error
        exp.events = [AssociationAborted(2, reason, local=True)]
    else:  # pragma: no cover - the grid has no other labels
        raise AssertionError(action)
    return exp


def _assert_events(actual: list[UpperLayerEvent], exp: Expected) -> None:
    assert len(actual) == len(exp.events), actual
    for got, want in zip(actual, exp.events, strict=True):
        if isinstance(want, AssociationAborted):
            assert isinstance(got, AssociationAborted)
            assert (got.source, got.reason, got.local) == (want.source, want.reason, want.local)
            if exp.error is None:
                assert got.error is None
            else:
                assert isinstance(got.error, exp.error)
        else:
            assert got == want


def _roles_for(state: int, event: int) -> list[Role]:
    roles = []
    if state in REQUESTOR_STATES and (state, event) != (1, Event.TRANSPORT_CONNECT_INDICATION):
        roles.append(Role.REQUESTOR)
    # Sta1 + Evt1 is the requestor's cell; an acceptor refusing it is tested elsewhere.
    if state in ACCEPTOR_STATES and (state, event) != (1, Event.ASSOCIATE_REQUEST):
        roles.append(Role.ACCEPTOR)
    return roles


def _recorder(
    seen: list[tuple[State, Event, Action, State]],
) -> Callable[[State, Event, Action, State], None]:
    def record(old: State, event: Event, action: Action, new: State) -> None:
        seen.append((old, event, action, new))

    return record


USER_EVENTS = {1, 7, 8, 9, 11, 14, 15}
PDU_EVENTS = {3, 4, 6, 10, 12, 13, 16, 19}


@pytest.mark.parametrize(("state", "event"), sorted(CELLS), ids=lambda v: str(v))
def test_cell(state: int, event: int) -> None:
    cell = CELLS[(state, event)]
    roles = _roles_for(state, event)
    assert roles, "every cell is exercised by at least one role"
    variants = [False, True] if event == Event.P_DATA_REQUEST else [False]
    for role in roles:
        for via_send_pdata in variants:
            ul = reach(state, role)
            deadline_before = ul.timer_deadline()
            seen: list[tuple[State, Event, Action, State]] = []
            ul.on_transition = _recorder(seen)

            if cell is None:
                _check_empty_cell(ul, state, event, role, via_send_pdata, deadline_before)
                assert seen == []
                continue

            action, target = cell
            exp = expected_outcome(action, target, event, role)
            apply_event(ul, event, role, via_send_pdata=via_send_pdata)
            assert ul.state == State(exp.state)
            assert split_pdus(ul.data_to_send()) == exp.sent
            _assert_events(drain(ul), exp)
            if exp.artim == "start":
                assert ul.timer_deadline() == T1 + ARTIM
            elif exp.artim == "keep":
                assert deadline_before is not None
                assert ul.timer_deadline() == deadline_before
            else:
                assert ul.timer_deadline() is None
            assert ul.is_closed == (exp.state == 1)
            if exp.peer_max is not None:
                assert ul.peer_max_pdu_length == exp.peer_max
            assert seen == [(State(state), Event(event), Action(action), State(exp.state))]


def _check_empty_cell(
    ul: UpperLayer,
    state: int,
    event: int,
    role: Role,
    via_send_pdata: bool,
    deadline_before: float | None,
) -> None:
    """An empty cell: nothing may change.  How the input is answered depends on its kind."""
    if event in USER_EVENTS or event in (2, 5):
        # A user primitive (or a transport connect) the table does not allow: refused.
        with pytest.raises(LocalProtocolError):
            apply_event(ul, event, role, via_send_pdata=via_send_pdata)
    elif event in PDU_EVENTS:
        # Only Sta1 and Sta4 lack PDU cells: there is no connection to receive from.
        assert state in (1, 4)
        with pytest.raises(LocalProtocolError):
            apply_event(ul, event, role)
    elif event == Event.TRANSPORT_CLOSED:
        # Only Sta1: a close reported after the machine is idle is ignored.
        assert state == 1
        apply_event(ul, event, role)
    else:
        # Evt18: ARTIM does not run outside Sta2/Sta13, so the timer cannot fire.
        assert event == Event.ARTIM_EXPIRED
        assert deadline_before is None
        apply_event(ul, event, role)
    assert ul.state == State(state)
    assert ul.data_to_send() == b""
    assert drain(ul) == []
    assert ul.timer_deadline() == deadline_before
