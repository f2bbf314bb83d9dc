"""A private service plugged in from outside the driver: a private SOP class answered through
N-ACTION, SCP and SCU, in about 50 lines (the "adding a service" guide in miniature)."""

from __future__ import annotations

import pytest

from asyncdicom import AE, Association, DIMSEResponse, Service, ServiceRequest, Status
from asyncdicom.protocol import messages
from asyncdicom.testing import associated

pytestmark = pytest.mark.anyio

PRIVATE_SOP_CLASS = "1.2.826.0.1.3680043.10.1234.1"  # a private SOP class (UID for the test)
PRIVATE_INSTANCE = "1.2.826.0.1.3680043.10.1234.1.1"

#: the service as data: N-ACTION on one private SOP class, accepted by any AE that has it
PRIVATE_SERVICE = Service(
    name="Private counter",
    commands=(messages.NActionRQ,),
    sop_classes=frozenset({PRIVATE_SOP_CLASS}),
    accept_by_default=True,
    no_handler_status=int(Status.NO_SUCH_ACTION),
)


class CounterSCU(Association):
    """The SCU helper: ``await assoc.increment(n)`` sends N-ACTION action type n."""

    async def increment(self, amount: int) -> DIMSEResponse:
        context = self.find_context(PRIVATE_SOP_CLASS)
        assert context is not None, "the private SOP class was not accepted"
        rq = messages.NActionRQ(
            message_id=self.next_message_id(),
            requested_sop_class_uid=PRIVATE_SOP_CLASS,
            requested_sop_instance_uid=PRIVATE_INSTANCE,
            action_type_id=amount,
        )
        return await self.request(context, rq)


async def test_private_service_through_n_action() -> None:
    scp = AE("COUNTER")
    scp.add_service(PRIVATE_SERVICE)
    total = 0

    @scp.on("N-ACTION", sop_class=PRIVATE_SOP_CLASS)
    async def on_action(request: ServiceRequest) -> int:
        nonlocal total
        total += request.message.action_type_id  # type: ignore[union-attr]
        return Status.SUCCESS

    async with associated(scp, contexts=[PRIVATE_SOP_CLASS]) as assoc:
        for amount in (1, 2, 39):
            response = await CounterSCU.increment(assoc, amount)  # type: ignore[arg-type]
            assert response.status == Status.SUCCESS
            assert isinstance(response.message, messages.NActionRSP)
            assert response.message.action_type_id == amount
    assert total == 42


async def test_private_service_default_answer_without_handler() -> None:
    scp = AE("COUNTER")
    scp.add_service(PRIVATE_SERVICE)
    async with associated(scp, contexts=[PRIVATE_SOP_CLASS]) as assoc:
        response = await CounterSCU.increment(assoc, 1)  # type: ignore[arg-type]
    assert response.status == Status.NO_SUCH_ACTION


async def test_without_the_service_the_sop_class_is_not_accepted() -> None:
    async with associated(AE("PLAIN"), contexts=[PRIVATE_SOP_CLASS]) as assoc:
        assert assoc.find_context(PRIVATE_SOP_CLASS) is None
