"""The acceptor says which presentation contexts it refused and why (log and hook event)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest

from asyncdicom import AE
from asyncdicom.hooks import HookEvent
from asyncdicom.presets import storage_commitment_scp_supported
from asyncdicom.protocol import uids
from asyncdicom.protocol.negotiation import ContextRequest, ContextResult
from asyncdicom.testing import associated

pytestmark = pytest.mark.anyio

COMMITMENT = "1.2.840.10008.1.20.1"
LE = (uids.EXPLICIT_VR_LITTLE_ENDIAN, uids.IMPLICIT_VR_LITTLE_ENDIAN)
UNKNOWN = "1.2.3.4.5.6.7"  # no such SOP class


class _Events(logging.Handler):
    """The structlog event dictionaries that reach the stdlib ``asyncdicom`` logger."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.events: list[dict[str, Any]] = []

    def emit(self, record: logging.LogRecord) -> None:
        if isinstance(record.msg, dict):
            self.events.append(dict(record.msg))


@pytest.fixture
def logs() -> Iterator[list[dict[str, Any]]]:
    logger = logging.getLogger("asyncdicom")
    saved = logger.level
    handler = _Events()
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield handler.events
    finally:
        logger.removeHandler(handler)
        logger.setLevel(saved)


async def test_refused_contexts_and_role_fallback_in_log_and_hook(
    anyio_backend: str, logs: list[dict[str, Any]]
) -> None:
    scp = AE("QRSCP", supported_contexts=storage_commitment_scp_supported())
    events: list[dict[str, Any]] = []
    scp.hooks.add(HookEvent.ASSOCIATION_ACCEPTED, lambda event, assoc, **data: events.append(data))
    contexts = [
        # "SCP only" for Storage Commitment, as pynetdicom's build_role(uid, scp_role=True)
        ContextRequest(COMMITMENT, LE, scu_role=False, scp_role=True),
        ContextRequest(UNKNOWN, LE),
        ContextRequest(uids.VERIFICATION, ("1.2.840.10008.1.2.2",)),  # big endian: not offered
    ]
    async with associated(scp, contexts=contexts) as assoc:
        assert assoc.negotiated is not None
        (accepted,) = assoc.negotiated.accepted_contexts
        # the default roles: we (the requestor) may send N-ACTION
        assert (accepted.abstract_syntax, accepted.scu_role) == (COMMITMENT, True)
        refused_here = [(c.context_id, c.result) for c in assoc.negotiated.refused_contexts]
        assert refused_here == [(3, 3), (5, 4)]

    (data,) = events
    refused = data["refused"]
    assert [(c.context_id, c.abstract_syntax, c.result) for c in refused] == [
        (3, UNKNOWN, ContextResult.ABSTRACT_SYNTAX_NOT_SUPPORTED),
        (5, uids.VERIFICATION, ContextResult.TRANSFER_SYNTAXES_NOT_SUPPORTED),
    ]
    assert "does not support the SOP class" in refused[0].reason
    assert "1.2.840.10008.1.2.2" in refused[1].reason

    (line,) = [
        entry for entry in logs if entry["event"] == "association_accepted" and "refused" in entry
    ]
    assert line["contexts"] == 1
    assert len(line["refused"]) == 2
    assert UNKNOWN in line["refused"][0] and "abstract-syntax-not-supported" in line["refused"][0]
    (fallback,) = line["default_roles"]
    assert COMMITMENT in fallback and "SCP only" in fallback


async def test_nothing_to_say_when_everything_is_accepted(
    anyio_backend: str, logs: list[dict[str, Any]]
) -> None:
    scp = AE("SCP")
    events: list[dict[str, Any]] = []
    scp.hooks.add(HookEvent.ASSOCIATION_ACCEPTED, lambda event, assoc, **data: events.append(data))
    async with associated(scp, contexts=[uids.VERIFICATION]):
        pass
    assert events == [{"refused": ()}]
    lines = [entry for entry in logs if entry["event"] == "association_accepted"]
    assert lines and all("refused" not in e and "default_roles" not in e for e in lines)
