"""The service layer: handler forms, registration, the operations window both ways, C-CANCEL
of multi-response handlers, and leaving an SCU iteration early.  Both backends; the in-memory
pair (asyncdicom.testing) where scheduling must be exact, real sockets elsewhere."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio
import pytest
from pydicom.dataset import Dataset

from asyncdicom import (
    AE,
    ContextRequest,
    HookEvent,
    Status,
    StatusCategory,
    SupportedContext,
    uids,
)
from asyncdicom.config import DEFAULT_TRANSFER_SYNTAXES
from asyncdicom.protocol import messages
from asyncdicom.storage.codec import encode_dataset
from asyncdicom.storage.synthetic import make_ct_instance
from asyncdicom.testing import associated

pytestmark = pytest.mark.anyio

FIND = uids.STUDY_ROOT_QR_FIND
EXPLICIT = uids.EXPLICIT_VR_LITTLE_ENDIAN


def _find_scp(**kw: Any) -> AE:
    return AE("QRSCP", supported_contexts=(SupportedContext(FIND, (EXPLICIT,)),), **kw)


def _query() -> bytes:
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.StudyInstanceUID = ""
    return encode_dataset(ds, EXPLICIT)


def _find_rq(assoc: Any) -> messages.CFindRQ:
    return messages.CFindRQ(message_id=assoc.next_message_id(), affected_sop_class_uid=FIND)


def _match(i: int) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.StudyInstanceUID = f"1.2.3.{i}"
    return ds


# ---------------------------------------------------------------------- handler forms


async def test_async_generator_handler_streams_pending_results() -> None:
    scp = _find_scp()

    @scp.on("C-FIND", sop_class=FIND)
    async def find(request: Any) -> AsyncIterator[Any]:
        query = await request.dataset()
        assert query.QueryRetrieveLevel == "STUDY"
        for i in range(3):
            yield Status.PENDING, _match(i)

    async with associated(scp, contexts=[(FIND, [EXPLICIT])]) as assoc:
        ctx = assoc.find_context(FIND)
        assert ctx is not None
        async with assoc.invoke(ctx, _find_rq(assoc), _query()) as op:
            responses = [r async for r in op]
    assert [r.status for r in responses] == [0xFF00, 0xFF00, 0xFF00, 0x0000]
    assert [r.decode().StudyInstanceUID for r in responses[:3]] == ["1.2.3.0", "1.2.3.1", "1.2.3.2"]
    assert responses[-1].dataset is None and responses[-1].category is StatusCategory.SUCCESS
    assert op.final is responses[-1]


async def test_plain_generator_handler_runs_in_a_thread() -> None:
    scp = _find_scp()
    seen_thread: list[bool] = []

    @scp.on("C-FIND")
    def find(request: Any) -> Iterator[Any]:
        import threading

        seen_thread.append(threading.current_thread() is not threading.main_thread())
        assert request.decode().QueryRetrieveLevel == "STUDY"  # read before the call
        yield _match(1)
        yield 0xB000, None  # a final warning ends it

    async with associated(scp, contexts=[(FIND, [EXPLICIT])]) as assoc:
        ctx = assoc.find_context(FIND)
        assert ctx is not None
        async with assoc.invoke(ctx, _find_rq(assoc), _query()) as op:
            statuses = [r.status async for r in op]
    assert statuses == [0xFF00, 0xB000]
    assert seen_thread == [True]


async def test_handler_exception_maps_to_status_and_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    scp = AE("SCP")

    @scp.on_echo
    async def broken(request: Any) -> int:
        raise RuntimeError("boom in the handler")

    with caplog.at_level(logging.ERROR, logger="asyncdicom"):
        async with associated(scp) as assoc:
            response = await assoc.echo()
            assert (await assoc.echo()).status == Status.PROCESSING_FAILURE  # still usable
    assert response.status == Status.PROCESSING_FAILURE
    assert not response.ok and response.category is StatusCategory.FAILURE
    assert "handler_failed" in caplog.text and "boom in the handler" in caplog.text


async def test_a_data_set_cut_short_is_refused_with_a_warning_not_a_traceback(
    caplog: pytest.LogCaptureFixture, tmp_path: Any
) -> None:
    scp = AE("SCP", accept_any_storage=True)

    @scp.on_store
    async def save(request: Any) -> int:
        await request.save_to(tmp_path)
        return 0x0000

    ds = make_ct_instance(256)
    raw = encode_dataset(ds, EXPLICIT)
    with caplog.at_level(logging.WARNING, logger="asyncdicom"):
        async with associated(scp, contexts=[(uids.CT_IMAGE_STORAGE, [EXPLICIT])]) as assoc:
            context = assoc.find_context(uids.CT_IMAGE_STORAGE)
            assert context is not None
            rq = messages.CStoreRQ(
                message_id=assoc.next_message_id(),
                affected_sop_class_uid=uids.CT_IMAGE_STORAGE,
                affected_sop_instance_uid=ds.SOPInstanceUID,
            )
            response = await assoc.request(context, rq, raw[:-3])
            assert (await assoc.store(ds)).status == 0x0000  # the association goes on
    assert response.status == 0xC000
    refused = [r for r in caplog.records if r.getMessage().startswith("request_refused ")]
    assert len(refused) == 1 and refused[0].levelno == logging.WARNING
    assert "stops inside the value of (7FE0,0010), 3 byte(s) short" in refused[0].getMessage()
    assert refused[0].exc_info is None and "handler_failed" not in caplog.text
    assert [p.name for p in tmp_path.iterdir()] == [f"{ds.SOPInstanceUID}.dcm"]


async def test_sop_class_handler_fallback_and_association_handler() -> None:
    scp = AE("SCP", accept_any_storage=True)
    got: list[str] = []

    @scp.on_store(sop_class=uids.CT_IMAGE_STORAGE)
    async def ct(request: Any) -> int:
        got.append("ct")
        await request.discard()
        return 0x0000

    @scp.on_store
    async def others(request: Any) -> int:
        got.append("fallback")
        await request.discard()
        return 0xB007

    from asyncdicom.storage.synthetic import make_ct_instance

    ct_ds = make_ct_instance(64, seed=3)
    mr_ds = make_ct_instance(64, seed=4)
    mr_ds.SOPClassUID = uids.MR_IMAGE_STORAGE
    contexts = [(uids.CT_IMAGE_STORAGE, [EXPLICIT]), (uids.MR_IMAGE_STORAGE, [EXPLICIT])]
    async with associated(scp, contexts=contexts) as assoc:
        assert (await assoc.store(ct_ds)).status == 0x0000
        assert (await assoc.store(mr_ds)).status == 0xB007
    assert got == ["ct", "fallback"]
    assert scp.handler_for("C-STORE", uids.MR_IMAGE_STORAGE) is others
    scp.set_handler(messages.CStoreRQ, None)  # unregister the fallback
    assert scp.handler_for("C-STORE", uids.MR_IMAGE_STORAGE) is None


async def test_association_handlers_come_before_the_aes() -> None:
    # the requestor serves a C-ECHO from the acceptor with its association's own handler
    scp = AE(
        "SCP",
        supported_contexts=(
            SupportedContext(uids.VERIFICATION, DEFAULT_TRANSFER_SYNTAXES, scu_role_allowed=True),
        ),
    )
    scu = AE("SCU")
    scu.on_echo(lambda request: 0x0001)  # the AE's handler: not used on this association
    back: list[int] = []

    @scp.on_echo
    async def on_echo(request: Any) -> int:
        back.append((await request.association.echo()).status)
        return 0x0000

    verification = ContextRequest(
        uids.VERIFICATION, DEFAULT_TRANSFER_SYNTAXES, scu_role=True, scp_role=True
    )
    async with associated(scp, scu, contexts=[verification]) as assoc:

        @assoc.on("C-ECHO")
        async def local(request: Any) -> int:
            return 0xB123

        assert (await assoc.echo()).status == 0x0000
    assert back == [0xB123]


# ---------------------------------------------------------------------- operations window


async def test_operations_window_holds_both_ways() -> None:
    """Requestor -> acceptor: 4 outstanding at most; acceptor -> requestor: 2 at most.  Counted
    where the requests are performed, once every task is blocked (nothing more can arrive)."""
    scp = AE(
        "SCP",
        supported_contexts=(
            SupportedContext(uids.VERIFICATION, DEFAULT_TRANSFER_SYNTAXES, scu_role_allowed=True),
        ),
    )
    scu = AE("SCU")
    peaks = {"scp": 0, "scu": 0}
    in_flight = {"scp": 0, "scu": 0}
    gates = {"scp": anyio.Event(), "scu": anyio.Event()}
    limits = {"scp": 4, "scu": 2}

    async def count(side: str, request: Any) -> None:
        in_flight[side] += 1
        peaks[side] = max(peaks[side], in_flight[side])
        assert request.association.performing <= limits[side]
        if in_flight[side] == limits[side]:
            await anyio.wait_all_tasks_blocked()  # the invoker would have sent more by now
            assert in_flight[side] == limits[side]
            gates[side].set()
        await gates[side].wait()
        in_flight[side] -= 1

    @scu.on_echo
    async def scu_echo(request: Any) -> int:
        await count("scu", request)
        return 0

    @scp.on_echo
    async def scp_echo(request: Any) -> int:
        await count("scp", request)
        if not gates["scu"].is_set():
            assoc = request.association
            async with anyio.create_task_group() as tg:
                for _ in range(5):
                    tg.start_soon(assoc.echo)
                await anyio.wait_all_tasks_blocked()
                assert assoc.outstanding <= limits["scu"]
        return 0

    verification = ContextRequest(
        uids.VERIFICATION, DEFAULT_TRANSFER_SYNTAXES, scu_role=True, scp_role=True
    )
    async with associated(scp, scu, contexts=[verification], async_ops_window=(4, 2)) as assoc:
        assert assoc.negotiated is not None
        assert assoc.negotiated.max_operations_invoked == 4
        assert assoc.negotiated.max_operations_performed == 2
        statuses: list[int] = []

        async def one() -> None:
            statuses.append((await assoc.echo()).status)

        async with anyio.create_task_group() as tg:
            for _ in range(10):
                tg.start_soon(one)
            await anyio.wait_all_tasks_blocked()
            assert assoc.outstanding <= 4
    assert statuses == [0] * 10
    assert peaks == {"scp": 4, "scu": 2}


# ---------------------------------------------------------------------- C-CANCEL


def _long_find_scp(total: int, state: dict[str, Any]) -> AE:
    scp = _find_scp()

    @scp.on("C-FIND", sop_class=FIND)
    async def find(request: Any) -> AsyncIterator[Any]:
        await request.discard()
        try:
            for i in range(total):
                state["yielded"] = i + 1
                yield _match(i)
        finally:
            state["closed"] = True

    return scp


async def test_leaving_an_iteration_early_cancels_and_keeps_the_association() -> None:
    state: dict[str, Any] = {"yielded": 0, "closed": False}
    scp = _long_find_scp(10_000, state)
    async with (
        scp.server() as server,
        AE("SCU").associate(
            "127.0.0.1", server.port, contexts=[(FIND, [EXPLICIT]), uids.VERIFICATION]
        ) as assoc,
    ):
        ctx = assoc.find_context(FIND)
        assert ctx is not None
        received = 0
        async with assoc.invoke(ctx, _find_rq(assoc), _query()) as op:
            async for response in op:
                assert response.is_pending
                received += 1
                if received == 5:
                    break
        assert op.cancel_sent
        assert op.final is not None and op.final.status == Status.CANCEL
        assert op.final.category is StatusCategory.CANCEL
        assert assoc.outstanding == 0
        assert (await assoc.echo()).status == 0x0000  # same association, still usable
    assert state["closed"]
    assert state["yielded"] < 10_000


async def test_a_received_c_cancel_is_observed_by_the_dimse_hook() -> None:
    state: dict[str, Any] = {"yielded": 0, "closed": False}
    scp = _long_find_scp(10_000, state)
    seen: list[Any] = []
    scp.hooks.add(HookEvent.DIMSE_RECEIVED, lambda event, assoc, message: seen.append(message))
    async with associated(scp, contexts=[(FIND, [EXPLICIT])]) as assoc:
        ctx = assoc.find_context(FIND)
        assert ctx is not None
        async with assoc.invoke(ctx, _find_rq(assoc), _query()) as op:
            await op.__anext__()
            await op.cancel()
            async for _ in op:
                pass
    names = [m.NAME for m in seen]
    assert names == ["C-FIND-RQ", "C-CANCEL-RQ"]
    assert seen[1].message_id_being_responded_to == op.message_id


async def test_c_cancel_stops_the_handler_within_a_few_responses() -> None:
    """Over the in-memory pipe (bounded like a socket, scheduling exact): the generator is
    stopped a bounded number of results after the C-CANCEL-RQ."""
    state: dict[str, Any] = {"yielded": 0, "closed": False}
    scp = _long_find_scp(10_000, state)
    async with associated(scp, contexts=[(FIND, [EXPLICIT]), uids.VERIFICATION]) as assoc:
        ctx = assoc.find_context(FIND)
        assert ctx is not None
        async with assoc.invoke(ctx, _find_rq(assoc), _query()) as op:
            first = await op.__anext__()
            assert first.is_pending
            yielded_at_cancel = state["yielded"]
            await op.cancel()
            drained = [r.status async for r in op]
        assert drained[-1] == Status.CANCEL
        assert all(s == Status.PENDING for s in drained[:-1])
        assert (await assoc.echo()).status == 0
    assert state["closed"]
    # the pipe holds 64 writes each way: what was in flight, and nothing more
    assert state["yielded"] - yielded_at_cancel < 100, state


async def test_a_plain_async_handler_awaits_the_c_cancel() -> None:
    scp = _find_scp()
    started = anyio.Event()
    waits: list[bool] = []

    @scp.on("C-FIND")
    async def find(request: Any) -> int:
        started.set()
        await request.wait_cancelled()
        waits.append(request.cancel_requested)
        await request.wait_cancelled()  # returns at once once cancelled
        return 0xFE00

    async with associated(scp, contexts=[(FIND, [EXPLICIT])]) as assoc:
        ctx = assoc.find_context(FIND)
        assert ctx is not None
        with anyio.fail_after(10):
            async with assoc.invoke(ctx, _find_rq(assoc), _query()) as op:
                await started.wait()
                await op.cancel()
                statuses = [r.status async for r in op]
    assert statuses == [Status.CANCEL]
    assert waits == [True]


async def test_cancelling_a_request_that_cannot_be_cancelled_waits_for_its_answer() -> None:
    scp = AE("SCP")
    release = anyio.Event()

    @scp.on_echo
    async def slow(request: Any) -> int:
        await release.wait()
        return 0

    async with associated(scp) as assoc:
        ctx = assoc.find_context(uids.VERIFICATION)
        assert ctx is not None
        rq = messages.CEchoRQ(message_id=assoc.next_message_id())
        async with assoc.invoke(ctx, rq) as op:
            release.set()
        # C-ECHO has no C-CANCEL: leaving early waited for the final response
        assert not op.cancel_sent
        assert op.final is not None and op.final.status == 0


# ---------------------------------------------------------------------- review fixes


async def test_network_timeout_is_raised_as_network_timeout() -> None:
    from asyncdicom import Timeouts, errors

    scu = AE("SCU", timeouts=Timeouts(network=0.2))
    with pytest.raises(errors.NetworkTimeout):
        async with associated(AE("SCP"), scu) as assoc:
            with anyio.fail_after(10):
                await assoc.wait_closed()  # the peer says nothing: aborted after 0.2 s
            await assoc.echo()


async def test_hook_added_after_the_association_started_sees_transitions() -> None:
    from asyncdicom import HookEvent

    scu = AE("SCU")
    seen: list[Any] = []
    async with associated(AE("SCP"), scu) as assoc:
        scu.hooks.add(HookEvent.STATE_TRANSITION, lambda e, a, **k: seen.append(k["new_state"]))
        await assoc.echo()
    assert seen, "no transition observed"
    assert seen[-1].name == "IDLE"


async def test_server_associations_are_the_accepted_ones() -> None:
    ae = AE("BOTH")
    async with ae.server() as server, ae.associate("127.0.0.1", server.port) as outgoing:
        with anyio.fail_after(10):
            while len(server.associations) < 1:
                await anyio.wait_all_tasks_blocked()
        (accepted,) = server.associations
        assert accepted is not outgoing
        assert accepted.role.name == "ACCEPTOR"


async def test_a_result_that_makes_no_valid_response_is_answered_with_a_failure(
    caplog: pytest.LogCaptureFixture,
) -> None:
    scp = AE("SCP")
    results: list[Any] = [0xFF00, "not a status", messages.CFindRSP(1, 0x0000), 0x0000]

    @scp.on_echo
    async def on_echo(request: Any) -> Any:
        return results.pop(0)

    with caplog.at_level(logging.ERROR, logger="asyncdicom"):
        async with associated(scp) as assoc:
            statuses = [(await assoc.echo()).status for _ in range(4)]
    assert statuses == [Status.PROCESSING_FAILURE] * 3 + [0x0000]
    assert caplog.text.count("handler_result_invalid") == 3


async def test_a_generator_yielding_pending_results_for_c_echo_fails_the_operation() -> None:
    scp = AE("SCP")

    @scp.on_echo
    async def on_echo(request: Any) -> AsyncIterator[Any]:
        yield _match(1)  # C-ECHO has no Pending responses

    async with associated(scp) as assoc:
        assert (await assoc.echo()).status == Status.PROCESSING_FAILURE
        assert (await assoc.echo()).status == Status.PROCESSING_FAILURE  # still usable
