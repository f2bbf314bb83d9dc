"""The DIMSE-N SCU helpers (PS3.7 10.1) against handlers on a private SOP class, both backends:
each of the six requests reaches its handler with the right fields and data set, the typed
response comes back (status, UIDs, Attribute Identifier List, data set), failures are returned
not raised, and N-EVENT-REPORT travels from the acceptor (the SCP of the SOP class) to the
requestor on the same association."""

from __future__ import annotations

from typing import Any

import anyio
import pytest
from pydicom.dataset import Dataset

from asyncdicom import AE, ContextRequest, Status, SupportedContext
from asyncdicom.errors import NoAcceptedContext
from asyncdicom.protocol import messages
from asyncdicom.services.normalized import attribute_tags
from asyncdicom.testing import associated

pytestmark = pytest.mark.anyio

SOP_CLASS = "1.2.826.0.1.3680043.10.1234.20"
INSTANCE = "1.2.826.0.1.3680043.10.1234.20.1"
TS = ("1.2.840.10008.1.2.1", "1.2.840.10008.1.2")


def _scp(seen: list[Any]) -> AE:
    scp = AE("NSCP", supported_contexts=(SupportedContext(SOP_CLASS, TS),))

    @scp.on("N-GET", sop_class=SOP_CLASS)
    async def n_get(request: Any) -> Any:
        seen.append(request.message)
        ds = Dataset()
        ds.PatientName = "DOE^JANE"
        ds.PatientID = "N1"
        return Status.SUCCESS, ds

    @scp.on("N-SET", sop_class=SOP_CLASS)
    async def n_set(request: Any) -> int:
        seen.append((request.message, await request.dataset()))
        return 0

    @scp.on("N-ACTION", sop_class=SOP_CLASS)
    async def n_action(request: Any) -> Any:
        info = await request.dataset() if request.has_dataset else None
        seen.append((request.message, info))
        if request.message.action_type_id == 9:
            return messages.NActionRSP(
                message_id_being_responded_to=request.message_id,
                status=0x0123,
                error_comment="no action 9",
            )
        reply = Dataset()
        reply.NumberOfCopies = 2
        return 0, reply

    @scp.on("N-CREATE", sop_class=SOP_CLASS)
    async def n_create(request: Any) -> Any:
        seen.append((request.message, await request.dataset()))
        from asyncdicom.services import make_response

        return make_response(
            request.message,
            0,
            affected_sop_instance_uid=request.message.affected_sop_instance_uid or INSTANCE + ".7",
        )

    @scp.on("N-DELETE", sop_class=SOP_CLASS)
    def n_delete(request: Any) -> int:  # a plain function: a worker thread
        seen.append(request.message)
        return 0x0112 if request.message.requested_sop_instance_uid != INSTANCE else 0

    return scp


async def test_the_six_requests_reach_their_handlers() -> None:
    seen: list[Any] = []
    scp = _scp(seen)
    with anyio.fail_after(10):
        async with associated(scp, contexts=[(SOP_CLASS, TS)]) as assoc:
            got = await assoc.n_get(SOP_CLASS, INSTANCE, ["PatientName", 0x00100020])
            assert got.status == 0 and isinstance(got.message, messages.NGetRSP)
            assert got.message.affected_sop_instance_uid == INSTANCE
            assert got.decode().PatientName == "DOE^JANE"
            assert seen[-1].attribute_identifier_list == (0x00100010, 0x00100020)

            change = Dataset()
            change.PatientName = "ROE^RICHARD"
            assert (await assoc.n_set(SOP_CLASS, INSTANCE, change)).ok
            rq, ds = seen[-1]
            assert isinstance(rq, messages.NSetRQ) and ds.PatientName == "ROE^RICHARD"

            info = Dataset()
            info.NumberOfCopies = 1
            acted = await assoc.n_action(SOP_CLASS, INSTANCE, 3, info)
            assert acted.ok and acted.message.action_type_id == 3
            assert acted.decode().NumberOfCopies == 2
            assert seen[-1][0].action_type_id == 3 and seen[-1][1].NumberOfCopies == 1
            refused = await assoc.n_action(SOP_CLASS, INSTANCE, 9)  # returned, not raised
            assert refused.status == 0x0123 and refused.error_comment == "no action 9"
            assert seen[-1][1] is None

            created = await assoc.n_create(SOP_CLASS, change)
            assert created.ok and created.message.affected_sop_instance_uid == INSTANCE + ".7"
            assert seen[-1][0].affected_sop_instance_uid is None
            chosen = await assoc.n_create(SOP_CLASS, change, sop_instance=INSTANCE + ".8")
            assert chosen.message.affected_sop_instance_uid == INSTANCE + ".8"

            assert (await assoc.n_delete(SOP_CLASS, INSTANCE)).ok
            assert (await assoc.n_delete(SOP_CLASS, INSTANCE + ".0")).status == 0x0112


async def test_n_event_report_goes_from_the_acceptor_to_the_requestor() -> None:
    scp = AE("NSCP", supported_contexts=(SupportedContext(SOP_CLASS, TS),))
    reported: list[Any] = []
    answered: list[Any] = []

    @scp.on("N-ACTION", sop_class=SOP_CLASS)
    async def n_action(request: Any) -> int:
        info = Dataset()
        info.PatientID = "EVT"
        # the SCP of the SOP class sends the report on the same association
        answered.append(await request.association.n_event_report(SOP_CLASS, INSTANCE, 5, info))
        return 0

    with anyio.fail_after(10):
        async with associated(scp, contexts=[(SOP_CLASS, TS)]) as assoc:

            @assoc.on("N-EVENT-REPORT", sop_class=SOP_CLASS)
            async def on_report(request: Any) -> int:
                reported.append((request.message, await request.dataset()))
                return 0

            assert (await assoc.n_action(SOP_CLASS, INSTANCE, 1)).ok
    ((message, info),) = reported
    assert message.event_type_id == 5 and message.affected_sop_instance_uid == INSTANCE
    assert info.PatientID == "EVT"
    assert answered[0].ok and answered[0].message.event_type_id == 5


async def test_the_requestor_cannot_send_n_event_report_without_the_scp_role() -> None:
    scp = AE("NSCP", supported_contexts=(SupportedContext(SOP_CLASS, TS),))
    async with associated(scp, contexts=[(SOP_CLASS, TS)]) as assoc:
        with pytest.raises(NoAcceptedContext, match="act as SCP"):
            await assoc.n_event_report(SOP_CLASS, INSTANCE, 1)
    # with the SCP role negotiated (SCP/SCU Role Selection), it can
    both = AE(
        "NSCP",
        supported_contexts=(
            SupportedContext(SOP_CLASS, TS, scu_role_allowed=True, scp_role_allowed=True),
        ),
    )
    got: list[Any] = []

    @both.on("N-EVENT-REPORT", sop_class=SOP_CLASS)
    async def on_report(request: Any) -> int:
        got.append(request.message.event_type_id)
        return 0

    context = ContextRequest(SOP_CLASS, TS, scu_role=True, scp_role=True)
    async with associated(both, contexts=[context]) as assoc:
        assert (await assoc.n_event_report(SOP_CLASS, INSTANCE, 4)).ok
    assert got == [4]


async def test_not_accepted_sop_class_and_keywords() -> None:
    scp = AE("NSCP")
    async with associated(scp) as assoc:
        with pytest.raises(NoAcceptedContext, match=SOP_CLASS):
            await assoc.n_get(SOP_CLASS, INSTANCE)
    assert attribute_tags(["PatientID", (0x0010, 0x0010), 0x00080018]) == (
        0x00100020,
        0x00100010,
        0x00080018,
    )
    with pytest.raises(ValueError, match="not a DICOM keyword"):
        attribute_tags(["NoSuchKeyword"])
