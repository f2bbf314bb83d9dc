"""The DICOM Upper Layer association state machine as data (PS3.8 section 9.2).

Everything here is a table, nothing here acts: :class:`State` are the thirteen states of
PS3.8 section 9.2.1 (Tables 9-1 to 9-5), :class:`Event` the nineteen events that label the rows
of Table 9-10, :class:`Action` the twenty-eight actions of section 9.2.2 (Tables 9-6 to 9-9), and
:data:`TRANSITIONS` the 123 non-empty cells of Table 9-10.  An ``(state, event)`` pair missing
from :data:`TRANSITIONS` is an empty cell: the standard defines no behaviour for it.  How the
actions are carried out lives in :mod:`asyncdicom.protocol.upper_layer`.

The state an action leads to is fixed by the action itself (each action definition in section
9.2.2 ends with "Next state is StaN"), so it is kept per action in :data:`NEXT_STATE`, except for
the two actions whose definition branches (:data:`CONDITIONAL_NEXT_STATE`):

* AE-6: Sta3 when the A-ASSOCIATE-RQ is acceptable to the service-provider, Sta13 otherwise;
* AR-8: Sta9 on the association-requestor side of a release collision, Sta10 on the acceptor's.

The ARTIM timer is started, restarted and stopped by the actions listed in
:data:`ARTIM_STARTS` and :data:`ARTIM_STOPS` (PS3.8 section 9.1.5 and Tables 9-6 to 9-9).
"""

from __future__ import annotations

from collections.abc import Callable
from enum import Enum, IntEnum
from typing import Final

__all__ = [
    "ARTIM_STARTS",
    "ARTIM_STOPS",
    "CONDITIONAL_NEXT_STATE",
    "LOCAL_USER_EVENTS",
    "NEXT_STATE",
    "PEER_PDU_EVENTS",
    "TRANSITIONS",
    "Action",
    "Event",
    "State",
    "TransitionObserver",
]


class State(IntEnum):
    """Association states (PS3.8 section 9.2.1, Tables 9-1 to 9-5); values are the StaN numbers."""

    #: Sta1: no association and no transport connection.
    IDLE = 1
    #: Sta2: transport connection accepted, waiting for the peer's A-ASSOCIATE-RQ (ARTIM running).
    AWAITING_ASSOCIATE_RQ = 2
    #: Sta3: A-ASSOCIATE indication given, waiting for the local user's accept or reject.
    AWAITING_LOCAL_ASSOCIATE_RESPONSE = 3
    #: Sta4: transport connect requested, waiting for the connection to open.
    AWAITING_TRANSPORT_OPEN = 4
    #: Sta5: A-ASSOCIATE-RQ sent, waiting for the A-ASSOCIATE-AC or -RJ.
    AWAITING_ASSOCIATE_AC = 5
    #: Sta6: association established, ready for data transfer.
    ESTABLISHED = 6
    #: Sta7: A-RELEASE-RQ sent, waiting for the A-RELEASE-RP.
    AWAITING_RELEASE_RP = 7
    #: Sta8: A-RELEASE indication given, waiting for the local user's release response.
    AWAITING_LOCAL_RELEASE_RESPONSE = 8
    #: Sta9: release collision, requestor side, waiting for the local user's release response.
    COLLISION_REQUESTOR_AWAITING_LOCAL_RESPONSE = 9
    #: Sta10: release collision, acceptor side, waiting for the A-RELEASE-RP.
    COLLISION_ACCEPTOR_AWAITING_RELEASE_RP = 10
    #: Sta11: release collision, requestor side (own RP sent), waiting for the A-RELEASE-RP.
    COLLISION_REQUESTOR_AWAITING_RELEASE_RP = 11
    #: Sta12: release collision, acceptor side (RP received), waiting for the local response.
    COLLISION_ACCEPTOR_AWAITING_LOCAL_RESPONSE = 12
    #: Sta13: association gone, waiting for the transport connection to close (ARTIM running).
    AWAITING_TRANSPORT_CLOSE = 13


class Event(IntEnum):
    """Events of the state machine (rows of PS3.8 Table 9-10); values are the EvtN numbers."""

    #: Evt1: A-ASSOCIATE request primitive from the local user.
    ASSOCIATE_REQUEST = 1
    #: Evt2: transport connect confirmation (our outgoing connection is open).
    TRANSPORT_CONNECT_CONFIRM = 2
    #: Evt3: A-ASSOCIATE-AC PDU received.
    ASSOCIATE_AC_RECEIVED = 3
    #: Evt4: A-ASSOCIATE-RJ PDU received.
    ASSOCIATE_RJ_RECEIVED = 4
    #: Evt5: transport connection indication (an incoming connection was accepted).
    TRANSPORT_CONNECT_INDICATION = 5
    #: Evt6: A-ASSOCIATE-RQ PDU received.
    ASSOCIATE_RQ_RECEIVED = 6
    #: Evt7: A-ASSOCIATE response primitive (accept) from the local user.
    ASSOCIATE_ACCEPT_RESPONSE = 7
    #: Evt8: A-ASSOCIATE response primitive (reject) from the local user.
    ASSOCIATE_REJECT_RESPONSE = 8
    #: Evt9: P-DATA request primitive from the local user.
    P_DATA_REQUEST = 9
    #: Evt10: P-DATA-TF PDU received.
    P_DATA_RECEIVED = 10
    #: Evt11: A-RELEASE request primitive from the local user.
    RELEASE_REQUEST = 11
    #: Evt12: A-RELEASE-RQ PDU received.
    RELEASE_RQ_RECEIVED = 12
    #: Evt13: A-RELEASE-RP PDU received.
    RELEASE_RP_RECEIVED = 13
    #: Evt14: A-RELEASE response primitive from the local user.
    RELEASE_RESPONSE = 14
    #: Evt15: A-ABORT request primitive from the local user.
    ABORT_REQUEST = 15
    #: Evt16: A-ABORT PDU received.
    ABORT_RECEIVED = 16
    #: Evt17: transport connection closed indication.
    TRANSPORT_CLOSED = 17
    #: Evt18: ARTIM timer expired.
    ARTIM_EXPIRED = 18
    #: Evt19: unrecognized or invalid PDU received.
    INVALID_PDU_RECEIVED = 19


class Action(Enum):
    """Actions of PS3.8 section 9.2.2; each value is the standard's label."""

    # Table 9-6, association establishment
    AE_1 = "AE-1"  # issue TRANSPORT CONNECT request
    AE_2 = "AE-2"  # send A-ASSOCIATE-RQ PDU
    AE_3 = "AE-3"  # issue A-ASSOCIATE confirmation (accept)
    AE_4 = "AE-4"  # issue A-ASSOCIATE confirmation (reject), close transport
    AE_5 = "AE-5"  # issue transport connection response, start ARTIM
    AE_6 = "AE-6"  # stop ARTIM; indicate the RQ, or send A-ASSOCIATE-RJ and start ARTIM
    AE_7 = "AE-7"  # send A-ASSOCIATE-AC PDU
    AE_8 = "AE-8"  # send A-ASSOCIATE-RJ PDU, start ARTIM
    # Table 9-7, data transfer
    DT_1 = "DT-1"  # send P-DATA-TF PDU
    DT_2 = "DT-2"  # issue P-DATA indication
    # Table 9-8, association release
    AR_1 = "AR-1"  # send A-RELEASE-RQ PDU
    AR_2 = "AR-2"  # issue A-RELEASE indication
    AR_3 = "AR-3"  # issue A-RELEASE confirmation, close transport
    AR_4 = "AR-4"  # send A-RELEASE-RP PDU, start ARTIM
    AR_5 = "AR-5"  # stop ARTIM
    AR_6 = "AR-6"  # issue P-DATA indication (while waiting for A-RELEASE-RP)
    AR_7 = "AR-7"  # send P-DATA-TF PDU (while the release response is pending)
    AR_8 = "AR-8"  # issue A-RELEASE indication (release collision)
    AR_9 = "AR-9"  # send A-RELEASE-RP PDU (collision, requestor)
    AR_10 = "AR-10"  # issue A-RELEASE confirmation (collision, acceptor)
    # Table 9-9, association abort
    AA_1 = "AA-1"  # send A-ABORT PDU (service-user source), (re)start ARTIM
    AA_2 = "AA-2"  # stop ARTIM if running, close transport
    AA_3 = "AA-3"  # issue A-ABORT or A-P-ABORT indication, close transport
    AA_4 = "AA-4"  # issue A-P-ABORT indication
    AA_5 = "AA-5"  # stop ARTIM
    AA_6 = "AA-6"  # ignore the PDU
    AA_7 = "AA-7"  # send A-ABORT PDU
    AA_8 = "AA-8"  # send A-ABORT PDU (service-provider source), indicate A-P-ABORT, start ARTIM


#: Called after every transition with ``(old_state, event, action, new_state)``.
TransitionObserver = Callable[[State, Event, Action, State], None]

_S = State
_E = Event
_A = Action

#: The non-empty cells of PS3.8 Table 9-10, row by row (event by event).
TRANSITIONS: Final[dict[tuple[State, Event], Action]] = {
    # Evt1: A-ASSOCIATE request (local user)
    (_S.IDLE, _E.ASSOCIATE_REQUEST): _A.AE_1,
    # Evt2: transport connect confirmation
    (_S.AWAITING_TRANSPORT_OPEN, _E.TRANSPORT_CONNECT_CONFIRM): _A.AE_2,
    # Evt3: A-ASSOCIATE-AC PDU received
    (_S.AWAITING_ASSOCIATE_RQ, _E.ASSOCIATE_AC_RECEIVED): _A.AA_1,
    (_S.AWAITING_LOCAL_ASSOCIATE_RESPONSE, _E.ASSOCIATE_AC_RECEIVED): _A.AA_8,
    (_S.AWAITING_ASSOCIATE_AC, _E.ASSOCIATE_AC_RECEIVED): _A.AE_3,
    (_S.ESTABLISHED, _E.ASSOCIATE_AC_RECEIVED): _A.AA_8,
    (_S.AWAITING_RELEASE_RP, _E.ASSOCIATE_AC_RECEIVED): _A.AA_8,
    (_S.AWAITING_LOCAL_RELEASE_RESPONSE, _E.ASSOCIATE_AC_RECEIVED): _A.AA_8,
    (_S.COLLISION_REQUESTOR_AWAITING_LOCAL_RESPONSE, _E.ASSOCIATE_AC_RECEIVED): _A.AA_8,
    (_S.COLLISION_ACCEPTOR_AWAITING_RELEASE_RP, _E.ASSOCIATE_AC_RECEIVED): _A.AA_8,
    (_S.COLLISION_REQUESTOR_AWAITING_RELEASE_RP, _E.ASSOCIATE_AC_RECEIVED): _A.AA_8,
    (_S.COLLISION_ACCEPTOR_AWAITING_LOCAL_RESPONSE, _E.ASSOCIATE_AC_RECEIVED): _A.AA_8,
    (_S.AWAITING_TRANSPORT_CLOSE, _E.ASSOCIATE_AC_RECEIVED): _A.AA_6,
    # Evt4: A-ASSOCIATE-RJ PDU received
    (_S.AWAITING_ASSOCIATE_RQ, _E.ASSOCIATE_RJ_RECEIVED): _A.AA_1,
    (_S.AWAITING_LOCAL_ASSOCIATE_RESPONSE, _E.ASSOCIATE_RJ_RECEIVED): _A.AA_8,
    (_S.AWAITING_ASSOCIATE_AC, _E.ASSOCIATE_RJ_RECEIVED): _A.AE_4,
    (_S.ESTABLISHED, _E.ASSOCIATE_RJ_RECEIVED): _A.AA_8,
    (_S.AWAITING_RELEASE_RP, _E.ASSOCIATE_RJ_RECEIVED): _A.AA_8,
    (_S.AWAITING_LOCAL_RELEASE_RESPONSE, _E.ASSOCIATE_RJ_RECEIVED): _A.AA_8,
    (_S.COLLISION_REQUESTOR_AWAITING_LOCAL_RESPONSE, _E.ASSOCIATE_RJ_RECEIVED): _A.AA_8,
    (_S.COLLISION_ACCEPTOR_AWAITING_RELEASE_RP, _E.ASSOCIATE_RJ_RECEIVED): _A.AA_8,
    (_S.COLLISION_REQUESTOR_AWAITING_RELEASE_RP, _E.ASSOCIATE_RJ_RECEIVED): _A.AA_8,
    (_S.COLLISION_ACCEPTOR_AWAITING_LOCAL_RESPONSE, _E.ASSOCIATE_RJ_RECEIVED): _A.AA_8,
    (_S.AWAITING_TRANSPORT_CLOSE, _E.ASSOCIATE_RJ_RECEIVED): _A.AA_6,
    # Evt5: transport connection indication
    (_S.IDLE, _E.TRANSPORT_CONNECT_INDICATION): _A.AE_5,
    # Evt6: A-ASSOCIATE-RQ PDU received
    (_S.AWAITING_ASSOCIATE_RQ, _E.ASSOCIATE_RQ_RECEIVED): _A.AE_6,
    (_S.AWAITING_LOCAL_ASSOCIATE_RESPONSE, _E.ASSOCIATE_RQ_RECEIVED): _A.AA_8,
    (_S.AWAITING_ASSOCIATE_AC, _E.ASSOCIATE_RQ_RECEIVED): _A.AA_8,
    (_S.ESTABLISHED, _E.ASSOCIATE_RQ_RECEIVED): _A.AA_8,
    (_S.AWAITING_RELEASE_RP, _E.ASSOCIATE_RQ_RECEIVED): _A.AA_8,
    (_S.AWAITING_LOCAL_RELEASE_RESPONSE, _E.ASSOCIATE_RQ_RECEIVED): _A.AA_8,
    (_S.COLLISION_REQUESTOR_AWAITING_LOCAL_RESPONSE, _E.ASSOCIATE_RQ_RECEIVED): _A.AA_8,
    (_S.COLLISION_ACCEPTOR_AWAITING_RELEASE_RP, _E.ASSOCIATE_RQ_RECEIVED): _A.AA_8,
    (_S.COLLISION_REQUESTOR_AWAITING_RELEASE_RP, _E.ASSOCIATE_RQ_RECEIVED): _A.AA_8,
    (_S.COLLISION_ACCEPTOR_AWAITING_LOCAL_RESPONSE, _E.ASSOCIATE_RQ_RECEIVED): _A.AA_8,
    (_S.AWAITING_TRANSPORT_CLOSE, _E.ASSOCIATE_RQ_RECEIVED): _A.AA_7,
    # Evt7: A-ASSOCIATE response, accept (local user)
    (_S.AWAITING_LOCAL_ASSOCIATE_RESPONSE, _E.ASSOCIATE_ACCEPT_RESPONSE): _A.AE_7,
    # Evt8: A-ASSOCIATE response, reject (local user)
    (_S.AWAITING_LOCAL_ASSOCIATE_RESPONSE, _E.ASSOCIATE_REJECT_RESPONSE): _A.AE_8,
    # Evt9: P-DATA request (local user)
    (_S.ESTABLISHED, _E.P_DATA_REQUEST): _A.DT_1,
    (_S.AWAITING_LOCAL_RELEASE_RESPONSE, _E.P_DATA_REQUEST): _A.AR_7,
    # Evt10: P-DATA-TF PDU received
    (_S.AWAITING_ASSOCIATE_RQ, _E.P_DATA_RECEIVED): _A.AA_1,
    (_S.AWAITING_LOCAL_ASSOCIATE_RESPONSE, _E.P_DATA_RECEIVED): _A.AA_8,
    (_S.AWAITING_ASSOCIATE_AC, _E.P_DATA_RECEIVED): _A.AA_8,
    (_S.ESTABLISHED, _E.P_DATA_RECEIVED): _A.DT_2,
    (_S.AWAITING_RELEASE_RP, _E.P_DATA_RECEIVED): _A.AR_6,
    (_S.AWAITING_LOCAL_RELEASE_RESPONSE, _E.P_DATA_RECEIVED): _A.AA_8,
    (_S.COLLISION_REQUESTOR_AWAITING_LOCAL_RESPONSE, _E.P_DATA_RECEIVED): _A.AA_8,
    (_S.COLLISION_ACCEPTOR_AWAITING_RELEASE_RP, _E.P_DATA_RECEIVED): _A.AA_8,
    (_S.COLLISION_REQUESTOR_AWAITING_RELEASE_RP, _E.P_DATA_RECEIVED): _A.AA_8,
    (_S.COLLISION_ACCEPTOR_AWAITING_LOCAL_RESPONSE, _E.P_DATA_RECEIVED): _A.AA_8,
    (_S.AWAITING_TRANSPORT_CLOSE, _E.P_DATA_RECEIVED): _A.AA_6,
    # Evt11: A-RELEASE request (local user)
    (_S.ESTABLISHED, _E.RELEASE_REQUEST): _A.AR_1,
    # Evt12: A-RELEASE-RQ PDU received
    (_S.AWAITING_ASSOCIATE_RQ, _E.RELEASE_RQ_RECEIVED): _A.AA_1,
    (_S.AWAITING_LOCAL_ASSOCIATE_RESPONSE, _E.RELEASE_RQ_RECEIVED): _A.AA_8,
    (_S.AWAITING_ASSOCIATE_AC, _E.RELEASE_RQ_RECEIVED): _A.AA_8,
    (_S.ESTABLISHED, _E.RELEASE_RQ_RECEIVED): _A.AR_2,
    (_S.AWAITING_RELEASE_RP, _E.RELEASE_RQ_RECEIVED): _A.AR_8,
    (_S.AWAITING_LOCAL_RELEASE_RESPONSE, _E.RELEASE_RQ_RECEIVED): _A.AA_8,
    (_S.COLLISION_REQUESTOR_AWAITING_LOCAL_RESPONSE, _E.RELEASE_RQ_RECEIVED): _A.AA_8,
    (_S.COLLISION_ACCEPTOR_AWAITING_RELEASE_RP, _E.RELEASE_RQ_RECEIVED): _A.AA_8,
    (_S.COLLISION_REQUESTOR_AWAITING_RELEASE_RP, _E.RELEASE_RQ_RECEIVED): _A.AA_8,
    (_S.COLLISION_ACCEPTOR_AWAITING_LOCAL_RESPONSE, _E.RELEASE_RQ_RECEIVED): _A.AA_8,
    (_S.AWAITING_TRANSPORT_CLOSE, _E.RELEASE_RQ_RECEIVED): _A.AA_6,
    # Evt13: A-RELEASE-RP PDU received
    (_S.AWAITING_ASSOCIATE_RQ, _E.RELEASE_RP_RECEIVED): _A.AA_1,
    (_S.AWAITING_LOCAL_ASSOCIATE_RESPONSE, _E.RELEASE_RP_RECEIVED): _A.AA_8,
    (_S.AWAITING_ASSOCIATE_AC, _E.RELEASE_RP_RECEIVED): _A.AA_8,
    (_S.ESTABLISHED, _E.RELEASE_RP_RECEIVED): _A.AA_8,
    (_S.AWAITING_RELEASE_RP, _E.RELEASE_RP_RECEIVED): _A.AR_3,
    (_S.AWAITING_LOCAL_RELEASE_RESPONSE, _E.RELEASE_RP_RECEIVED): _A.AA_8,
    (_S.COLLISION_REQUESTOR_AWAITING_LOCAL_RESPONSE, _E.RELEASE_RP_RECEIVED): _A.AA_8,
    (_S.COLLISION_ACCEPTOR_AWAITING_RELEASE_RP, _E.RELEASE_RP_RECEIVED): _A.AR_10,
    (_S.COLLISION_REQUESTOR_AWAITING_RELEASE_RP, _E.RELEASE_RP_RECEIVED): _A.AR_3,
    (_S.COLLISION_ACCEPTOR_AWAITING_LOCAL_RESPONSE, _E.RELEASE_RP_RECEIVED): _A.AA_8,
    (_S.AWAITING_TRANSPORT_CLOSE, _E.RELEASE_RP_RECEIVED): _A.AA_6,
    # Evt14: A-RELEASE response (local user)
    (_S.AWAITING_LOCAL_RELEASE_RESPONSE, _E.RELEASE_RESPONSE): _A.AR_4,
    (_S.COLLISION_REQUESTOR_AWAITING_LOCAL_RESPONSE, _E.RELEASE_RESPONSE): _A.AR_9,
    (_S.COLLISION_ACCEPTOR_AWAITING_LOCAL_RESPONSE, _E.RELEASE_RESPONSE): _A.AR_4,
    # Evt15: A-ABORT request (local user)
    (_S.AWAITING_LOCAL_ASSOCIATE_RESPONSE, _E.ABORT_REQUEST): _A.AA_1,
    (_S.AWAITING_TRANSPORT_OPEN, _E.ABORT_REQUEST): _A.AA_2,
    (_S.AWAITING_ASSOCIATE_AC, _E.ABORT_REQUEST): _A.AA_1,
    (_S.ESTABLISHED, _E.ABORT_REQUEST): _A.AA_1,
    (_S.AWAITING_RELEASE_RP, _E.ABORT_REQUEST): _A.AA_1,
    (_S.AWAITING_LOCAL_RELEASE_RESPONSE, _E.ABORT_REQUEST): _A.AA_1,
    (_S.COLLISION_REQUESTOR_AWAITING_LOCAL_RESPONSE, _E.ABORT_REQUEST): _A.AA_1,
    (_S.COLLISION_ACCEPTOR_AWAITING_RELEASE_RP, _E.ABORT_REQUEST): _A.AA_1,
    (_S.COLLISION_REQUESTOR_AWAITING_RELEASE_RP, _E.ABORT_REQUEST): _A.AA_1,
    (_S.COLLISION_ACCEPTOR_AWAITING_LOCAL_RESPONSE, _E.ABORT_REQUEST): _A.AA_1,
    # Evt16: A-ABORT PDU received
    (_S.AWAITING_ASSOCIATE_RQ, _E.ABORT_RECEIVED): _A.AA_2,
    (_S.AWAITING_LOCAL_ASSOCIATE_RESPONSE, _E.ABORT_RECEIVED): _A.AA_3,
    (_S.AWAITING_ASSOCIATE_AC, _E.ABORT_RECEIVED): _A.AA_3,
    (_S.ESTABLISHED, _E.ABORT_RECEIVED): _A.AA_3,
    (_S.AWAITING_RELEASE_RP, _E.ABORT_RECEIVED): _A.AA_3,
    (_S.AWAITING_LOCAL_RELEASE_RESPONSE, _E.ABORT_RECEIVED): _A.AA_3,
    (_S.COLLISION_REQUESTOR_AWAITING_LOCAL_RESPONSE, _E.ABORT_RECEIVED): _A.AA_3,
    (_S.COLLISION_ACCEPTOR_AWAITING_RELEASE_RP, _E.ABORT_RECEIVED): _A.AA_3,
    (_S.COLLISION_REQUESTOR_AWAITING_RELEASE_RP, _E.ABORT_RECEIVED): _A.AA_3,
    (_S.COLLISION_ACCEPTOR_AWAITING_LOCAL_RESPONSE, _E.ABORT_RECEIVED): _A.AA_3,
    (_S.AWAITING_TRANSPORT_CLOSE, _E.ABORT_RECEIVED): _A.AA_2,
    # Evt17: transport connection closed
    (_S.AWAITING_ASSOCIATE_RQ, _E.TRANSPORT_CLOSED): _A.AA_5,
    (_S.AWAITING_LOCAL_ASSOCIATE_RESPONSE, _E.TRANSPORT_CLOSED): _A.AA_4,
    (_S.AWAITING_TRANSPORT_OPEN, _E.TRANSPORT_CLOSED): _A.AA_4,
    (_S.AWAITING_ASSOCIATE_AC, _E.TRANSPORT_CLOSED): _A.AA_4,
    (_S.ESTABLISHED, _E.TRANSPORT_CLOSED): _A.AA_4,
    (_S.AWAITING_RELEASE_RP, _E.TRANSPORT_CLOSED): _A.AA_4,
    (_S.AWAITING_LOCAL_RELEASE_RESPONSE, _E.TRANSPORT_CLOSED): _A.AA_4,
    (_S.COLLISION_REQUESTOR_AWAITING_LOCAL_RESPONSE, _E.TRANSPORT_CLOSED): _A.AA_4,
    (_S.COLLISION_ACCEPTOR_AWAITING_RELEASE_RP, _E.TRANSPORT_CLOSED): _A.AA_4,
    (_S.COLLISION_REQUESTOR_AWAITING_RELEASE_RP, _E.TRANSPORT_CLOSED): _A.AA_4,
    (_S.COLLISION_ACCEPTOR_AWAITING_LOCAL_RESPONSE, _E.TRANSPORT_CLOSED): _A.AA_4,
    (_S.AWAITING_TRANSPORT_CLOSE, _E.TRANSPORT_CLOSED): _A.AR_5,
    # Evt18: ARTIM timer expired
    (_S.AWAITING_ASSOCIATE_RQ, _E.ARTIM_EXPIRED): _A.AA_2,
    (_S.AWAITING_TRANSPORT_CLOSE, _E.ARTIM_EXPIRED): _A.AA_2,
    # Evt19: unrecognized or invalid PDU received
    (_S.AWAITING_ASSOCIATE_RQ, _E.INVALID_PDU_RECEIVED): _A.AA_1,
    (_S.AWAITING_LOCAL_ASSOCIATE_RESPONSE, _E.INVALID_PDU_RECEIVED): _A.AA_8,
    (_S.AWAITING_ASSOCIATE_AC, _E.INVALID_PDU_RECEIVED): _A.AA_8,
    (_S.ESTABLISHED, _E.INVALID_PDU_RECEIVED): _A.AA_8,
    (_S.AWAITING_RELEASE_RP, _E.INVALID_PDU_RECEIVED): _A.AA_8,
    (_S.AWAITING_LOCAL_RELEASE_RESPONSE, _E.INVALID_PDU_RECEIVED): _A.AA_8,
    (_S.COLLISION_REQUESTOR_AWAITING_LOCAL_RESPONSE, _E.INVALID_PDU_RECEIVED): _A.AA_8,
    (_S.COLLISION_ACCEPTOR_AWAITING_RELEASE_RP, _E.INVALID_PDU_RECEIVED): _A.AA_8,
    (_S.COLLISION_REQUESTOR_AWAITING_RELEASE_RP, _E.INVALID_PDU_RECEIVED): _A.AA_8,
    (_S.COLLISION_ACCEPTOR_AWAITING_LOCAL_RESPONSE, _E.INVALID_PDU_RECEIVED): _A.AA_8,
    (_S.AWAITING_TRANSPORT_CLOSE, _E.INVALID_PDU_RECEIVED): _A.AA_7,
}

#: "Next state is StaN" of every action whose definition does not branch (PS3.8 9.2.2).
NEXT_STATE: Final[dict[Action, State]] = {
    _A.AE_1: _S.AWAITING_TRANSPORT_OPEN,
    _A.AE_2: _S.AWAITING_ASSOCIATE_AC,
    _A.AE_3: _S.ESTABLISHED,
    _A.AE_4: _S.IDLE,
    _A.AE_5: _S.AWAITING_ASSOCIATE_RQ,
    _A.AE_7: _S.ESTABLISHED,
    _A.AE_8: _S.AWAITING_TRANSPORT_CLOSE,
    _A.DT_1: _S.ESTABLISHED,
    _A.DT_2: _S.ESTABLISHED,
    _A.AR_1: _S.AWAITING_RELEASE_RP,
    _A.AR_2: _S.AWAITING_LOCAL_RELEASE_RESPONSE,
    _A.AR_3: _S.IDLE,
    _A.AR_4: _S.AWAITING_TRANSPORT_CLOSE,
    _A.AR_5: _S.IDLE,
    _A.AR_6: _S.AWAITING_RELEASE_RP,
    _A.AR_7: _S.AWAITING_LOCAL_RELEASE_RESPONSE,
    _A.AR_9: _S.COLLISION_REQUESTOR_AWAITING_RELEASE_RP,
    _A.AR_10: _S.COLLISION_ACCEPTOR_AWAITING_LOCAL_RESPONSE,
    _A.AA_1: _S.AWAITING_TRANSPORT_CLOSE,
    _A.AA_2: _S.IDLE,
    _A.AA_3: _S.IDLE,
    _A.AA_4: _S.IDLE,
    _A.AA_5: _S.IDLE,
    _A.AA_6: _S.AWAITING_TRANSPORT_CLOSE,
    _A.AA_7: _S.AWAITING_TRANSPORT_CLOSE,
    _A.AA_8: _S.AWAITING_TRANSPORT_CLOSE,
}

#: The two branching actions and their possible next states:
#: AE-6 -> (RQ acceptable: Sta3, RQ not acceptable to the provider: Sta13);
#: AR-8 -> (association-requestor: Sta9, association-acceptor: Sta10).
CONDITIONAL_NEXT_STATE: Final[dict[Action, tuple[State, State]]] = {
    _A.AE_6: (_S.AWAITING_LOCAL_ASSOCIATE_RESPONSE, _S.AWAITING_TRANSPORT_CLOSE),
    _A.AR_8: (
        _S.COLLISION_REQUESTOR_AWAITING_LOCAL_RESPONSE,
        _S.COLLISION_ACCEPTOR_AWAITING_RELEASE_RP,
    ),
}

#: Actions that start ARTIM (AA-1 restarts it when already running).  AE-6 also starts it, but
#: only on its reject branch, so it is not listed here.
ARTIM_STARTS: Final[frozenset[Action]] = frozenset({_A.AE_5, _A.AE_8, _A.AR_4, _A.AA_1, _A.AA_8})

#: Actions that stop ARTIM (AA-2 "if running"; stopping a stopped timer is harmless).
ARTIM_STOPS: Final[frozenset[Action]] = frozenset({_A.AE_6, _A.AR_5, _A.AA_2, _A.AA_5})

#: Events that are primitives issued by the local user (Table 9-10 rows marked "local user").
LOCAL_USER_EVENTS: Final[frozenset[Event]] = frozenset(
    {
        _E.ASSOCIATE_REQUEST,
        _E.ASSOCIATE_ACCEPT_RESPONSE,
        _E.ASSOCIATE_REJECT_RESPONSE,
        _E.P_DATA_REQUEST,
        _E.RELEASE_REQUEST,
        _E.RELEASE_RESPONSE,
        _E.ABORT_REQUEST,
    }
)

#: Events caused by a PDU (or undecodable bytes) received from the peer.
PEER_PDU_EVENTS: Final[frozenset[Event]] = frozenset(
    {
        _E.ASSOCIATE_AC_RECEIVED,
        _E.ASSOCIATE_RJ_RECEIVED,
        _E.ASSOCIATE_RQ_RECEIVED,
        _E.P_DATA_RECEIVED,
        _E.RELEASE_RQ_RECEIVED,
        _E.RELEASE_RP_RECEIVED,
        _E.ABORT_RECEIVED,
        _E.INVALID_PDU_RECEIVED,
    }
)
